"""The event log: JSON lines appended atomically by many processes, and its summary."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

import pytest

from sandbox.events import FIELDS, EventLog, read_events, summarise


def _emit(log: EventLog, action: str = "redirect", path: str = "reports/x.csv", **kw: object) -> None:
    log.emit(
        "python",
        "write",
        action,
        str(kw.get("rule", "workspace-redirect")),
        path,
        "/ws/" + path,
        kw.get("target", "/run/" + path),
        bool(kw.get("captured", False)),  # type: ignore[arg-type]
        "production",
        "why",
    )


def test_lines_have_every_field_and_parse(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    with EventLog(p) as log:
        _emit(log, path='odd "name"\n\u00e9.csv', captured=True)
        _emit(log, "deny", target=None, rule="lakehouse-read-only")
    lines = p.read_text().splitlines()
    assert len(lines) == 2 and '"captured": true' in lines[0]
    ev = [json.loads(x) for x in lines]
    assert tuple(ev[0]) == FIELDS
    assert ev[0]["path"] == 'odd "name"\n\u00e9.csv' and ev[0]["pid"] == os.getpid()
    assert ev[1]["target"] is None and ev[1]["action"] == "deny"
    assert isinstance(ev[0]["time"], float) and read_events(p) == ev


def test_a_denial_is_written_at_once_redirects_in_batches(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    log = EventLog(p, batch=3, max_delay=3600)
    _emit(log)
    _emit(log)
    assert p.read_text() == ""  # waiting for the batch
    _emit(log, "deny")
    assert len(read_events(p)) == 3  # a denial flushes what waits with it
    _emit(log)
    _emit(log)
    _emit(log)
    assert len(read_events(p)) == 6  # a full batch goes out
    _emit(log)
    log.close()
    assert len(read_events(p)) == 7
    log.close()  # idempotent


def test_write_takes_another_layers_record(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    with EventLog(p) as log:
        log.write(
            {
                "layer": "fsspec",
                "action": "deny",
                "op": "delete",
                "rule": "r",
                "path": "a",
                "resolved": "/a",
                "captured": False,
                "reason": "no",
            }
        )
    (ev,) = read_events(p)
    assert ev["layer"] == "fsspec" and ev["target"] is None and ev["profile"] == ""


def _writer(path: str, n: int) -> None:
    log = EventLog(path, batch=7)
    for i in range(n):
        _emit(log, path=f"reports/{os.getpid()}/{i}" + "x" * 300)
    log.close()


def test_many_processes_append_whole_lines(tmp_path: Path) -> None:
    p = str(tmp_path / "e.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(p, 500)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    raw = Path(p).read_text().splitlines()
    assert len(raw) == 2000 and len(read_events(p)) == 2000  # no torn or merged line


def test_a_fork_does_not_repeat_what_the_parent_had_waiting(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    log = EventLog(p, batch=100, max_delay=3600)
    _emit(log, path="before-fork")
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        _emit(log, path="child")
        log.close()
        os._exit(0)
    os.waitpid(pid, 0)
    log.close()
    paths = sorted(e["path"] for e in read_events(p))
    assert paths == ["before-fork", "child"]


def test_read_events_skips_a_torn_line(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    with EventLog(p) as log:
        _emit(log, "deny")
    with open(p, "a") as fh:
        fh.write('{"time": 1, "pid"')
    assert len(read_events(p)) == 1


def test_summarise_counts_and_trims() -> None:
    events = [
        {"action": "deny", "rule": "lakehouse-read-only", "layer": "python", "op": "write", "captured": False}
        for _ in range(250)
    ] + [
        {
            "action": "redirect",
            "rule": "workspace-redirect",
            "layer": "fsspec",
            "op": "mkdir",
            "captured": True,
        }
    ]
    s = summarise(events)
    assert s["count"] == 251 and s["by_action"] == {"deny": 250, "redirect": 1}
    assert s["by_rule"]["lakehouse-read-only"] == 250 and s["by_layer"] == {"python": 250, "fsspec": 1}
    assert s["by_op"] == {"write": 250, "mkdir": 1} and s["captured"] == 1
    assert len(s["denials"]) == 200 and len(s["redirects"]) == 1 and s["truncated"]
    assert summarise([])["count"] == 0 and not summarise([])["truncated"]


def test_the_fallback_string_encoder_writes_what_json_writes() -> None:
    """py_encode is what an interpreter that can no longer import (a denial during its
    finalization) writes with: the same bytes as json's C encoder, surrogates included."""
    import random
    from json.encoder import encode_basestring_ascii as c_encode

    from sandbox.events import py_encode

    rng = random.Random(7)
    samples = [
        "",
        'quote " backslash \\ controls \n\r\t\b\f \x00\x1f\x7f',
        "é € 😀 \U0010ffff",
        "/data/\udcff\udc80.csv",  # an undecodable file name, as os.fsdecode gives it
        "".join(chr(rng.randrange(0, 0x110000)) for _ in range(5000)),
    ]
    for s in samples:
        assert py_encode(s) == c_encode(s)


def test_a_step_loads_no_json_encoder_until_its_first_event(tmp_path: Path) -> None:
    """Loading json's C module costs every sandboxed interpreter's start-up; the guard's event log
    loads it with the first event, and writes that event whole."""
    import subprocess
    import sys

    log = tmp_path / "ev.jsonl"
    code = (
        "import sys\n"
        "from sandbox.events import EventLog\n"
        "assert '_json' not in sys.modules\n"
        f"ev = EventLog({str(log)!r})\n"
        "ev.write({'layer': 'python', 'op': 'write', 'path': '/x\"y', 'action': 'deny', 'rule': 'r'})\n"
        "ev.close()\n"
        "assert '_json' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    (line,) = read_events(log)
    assert line["path"] == '/x"y'


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_every_layers_events_show_paths_where_the_user_finds_them(tmp_path: Path, kernel: str) -> None:
    """Python- and fsspec-layer events put the deleted workspace (``/tmp/tv-sandbox-.../ws/...``)
    in ``resolved`` and ``target`` where the kernel layer's showed host paths; without the overlay
    a native redirect was labelled ``overlay``. Now every layer shows the host's path and, for a
    redirect, where the run folder is exported; a native write gathered from the workspace says so."""
    from conftest import sandbox_run

    from sandbox.samples import make_host

    host = make_host(tmp_path / "host")
    step = (
        "import subprocess\n"
        "try:\n"
        "    open('data/lakehouse/sel.json', 'w')\n"
        "except PermissionError:\n"
        "    pass\n"
        "open('data/py.txt', 'w').write('x')\n"
        "subprocess.run(['sh', '-c', 'echo y > data/sh.txt'])\n"
    )
    r = sandbox_run(host, "EV", sys.executable, "-c", step, options=("--kernel", kernel))
    assert r.returncode == 0, r.stderr
    export = host / "artifacts" / "summaries" / "runs" / "EV"
    events = [json.loads(x) for x in (export / "logs" / "sandbox_events.jsonl").read_text().splitlines()]
    by_path = {e["path"]: e for e in events}
    assert by_path["data/lakehouse/sel.json"]["resolved"] == str(host / "data" / "lakehouse" / "sel.json")
    for name in ("py.txt", "sh.txt"):
        e = by_path[f"data/{name}"]
        assert e["action"] == "redirect", e
        assert e["resolved"] == str(host / "data" / name) and e["target"] == str(export / "data" / name), e
    assert by_path["data/sh.txt"]["layer"] == ("overlay" if kernel == "auto" else "workspace")
    assert not any("tv-sandbox-" in str(e.get(k)) for e in events for k in ("resolved", "target")), events
