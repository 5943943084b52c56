"""Files of the run folder that the step's own processes write -- the event log (the guard runs in
them), the explain shim's raw log (the shim runs in them), the audit's trace -- and that the launcher
reads back after the step: whatever a hostile step puts there, the run is reported and exported, and
a line that is not a record is counted and said, never fatal, never silently dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunEnv, sandbox_run

from sandbox.events import EVENTS_NAME, EventLog, load_events, read_events
from sandbox.kernel import KernelSupport
from sandbox.report import NATIVE_RAW, explain_native
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"

#: Lines that are not one JSON object each, as bytes: each is counted once.
UNREADABLE = [
    b"{",
    b"[" * 100_000,  # past the scanner's recursion limit: RecursionError, not a ValueError
    b"[]",
    b"1",
    b'"an event"',
    b"",
    b"\xff\xfe not UTF-8",
    b'{"pid": ' + b"1" * 5000 + b"}",  # more digits than int() takes from a string
    b'{"a": 1} {"b": 2}',
]
#: Well-formed forgeries of the fields the launcher reads: read as events, never a crash.
FORGED = [
    {"captured": True, "op": [], "action": "redirect", "target": 5},  # an unhashable op, in audit mode too
    {"action": "deny", "rule": {"x": 1}, "layer": None, "path": ["p"], "pid": "1", "resolved": 7},
]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def _append_step(lines_file: Path, rel: str) -> tuple[str, ...]:
    """A shell step appending ``lines_file`` to ``$TV_RUN_DIR/<rel>``: what any layer lets it do."""
    return ("sh", "-c", f'mkdir -p "$TV_RUN_DIR/logs" && cat "$1" >> "$TV_RUN_DIR/{rel}"', "sh", str(lines_file))


def _report(host: Path, run_id: str) -> dict:
    return json.loads((host / RUNS / run_id / "sandbox_report.json").read_text())


def _verifies(host: Path, run_id: str) -> bool:
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", str(host / RUNS / run_id)], capture_output=True, text=True
    )
    return r.returncode == 0


def _warned(r: subprocess.CompletedProcess[str], report: dict, name: str, n: int) -> bool:
    line = f"logs/{name}: {n} line(s) not readable as records"
    return any(w.startswith(line) for w in report["warnings"]) and f"warning: {line}" in r.stderr


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
@pytest.mark.parametrize(
    "cmd",
    [
        ("sh", "-c", 'mkdir -p logs; echo "{" > logs/sandbox_events.jsonl'),
        # without the guard (-I -S), which refuses a Python write to a reserved name
        (sys.executable, "-I", "-S", "-c", "open('logs/sandbox_events.jsonl', 'a').write('{\\n')"),
    ],
    ids=["shell", "python"],
)
def test_a_brace_in_the_event_log_is_reported_not_fatal(
    host: Path, kernel_support: KernelSupport, cmd: tuple[str, ...]
) -> None:
    """The audit's case: it was `internal error: SystemError`, exit 125, nothing exported."""
    r = sandbox_run(host, "B", *cmd)
    assert r.returncode == 0, r.stderr
    assert "internal error" not in r.stderr
    rep = _report(host, "B")
    assert rep["status"] == "succeeded" and rep["events"]["unreadable"] == 1
    assert _warned(r, rep, EVENTS_NAME, 1), (rep["warnings"], r.stderr)
    assert _verifies(host, "B")


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_any_line_in_the_event_log_is_counted_or_read(host: Path, tmp_path: Path, mode: str) -> None:
    lines = tmp_path / "lines.jsonl"
    lines.write_bytes(b"\n".join([*UNREADABLE, *(json.dumps(f).encode() for f in FORGED)]) + b"\n")
    r = sandbox_run(host, "E", *_append_step(lines, f"logs/{EVENTS_NAME}"), options=("--mode", mode))
    assert r.returncode == 0, r.stderr
    rep = _report(host, "E")
    assert rep["events"]["unreadable"] == len(UNREADABLE), rep["events"]
    assert _warned(r, rep, EVENTS_NAME, len(UNREADABLE)), (rep["warnings"], r.stderr)
    assert rep["events"]["by_action"].get("redirect", 0) >= 1  # the forged "redirect": read, as an event
    assert _verifies(host, "E")


def test_any_line_in_the_shims_raw_log_is_counted_or_explained(host: Path, tmp_path: Path) -> None:
    forged = [
        {"op": "write", "errno": 0, "pid": 1, "path": "a\0b", "dir": "/"},  # no shim writes a NUL
        {"op": ["write"], "errno": 0, "pid": 1, "path": "x"},
        {"op": "write", "errno": "13", "pid": 1, "path": "x"},
        {"op": "write", "errno": 13, "pid": 1},
        {"op": "chmod", "errno": 13, "pid": 1, "path": "x"},
    ]
    lines = tmp_path / "raw.jsonl"
    lines.write_bytes(b"\n".join([*UNREADABLE, *(json.dumps(f).encode() for f in forged)]) + b"\n")
    r = sandbox_run(host, "N", *_append_step(lines, f"logs/{NATIVE_RAW}"))
    assert r.returncode == 0, r.stderr
    rep = _report(host, "N")
    assert _warned(r, rep, NATIVE_RAW, len(UNREADABLE) + len(forged)), (rep["warnings"], r.stderr)
    assert rep["events"]["unreadable"] == 0  # the event log itself is intact
    assert not (host / RUNS / "N" / "logs" / NATIVE_RAW).exists()  # consumed, as always
    assert _verifies(host, "N")


def test_explain_native_counts_what_it_cannot_read(run_env: RunEnv) -> None:
    logs = Path(run_env.ws.run_storage) / "logs"
    logs.mkdir(exist_ok=True)
    events_file = logs / EVENTS_NAME
    lake = os.path.join(run_env.ws.root, "data", "lakehouse", "x.csv")
    real = {"time": 1.0, "pid": 7, "call": "open", "op": "write", "errno": 30, "path": lake, "dir": ""}
    (logs / NATIVE_RAW).write_bytes(b"\n".join([b"{", b"[]", json.dumps(real).encode(), b"\xff"]) + b"\n")
    counts = explain_native(run_env.ws.run_storage, run_env.policy, str(events_file))
    assert (counts.unreadable, counts.denied) == (3, 1)
    (deny,) = read_events(events_file)
    assert deny["action"] == "deny" and deny["path"] == "data/lakehouse/x.csv"


def test_load_events_counts_the_lines_it_leaves_out(tmp_path: Path) -> None:
    p = tmp_path / EVENTS_NAME
    with EventLog(p) as log:
        log.emit("python", "write", "deny", "r", "a", None)
    with open(p, "ab") as fh:
        fh.write(b"\n".join(UNREADABLE) + b"\n")
    with EventLog(p) as log:
        log.emit("python", "write", "redirect", "r", "b", None)
    events, unreadable = load_events(p)
    assert [e["path"] for e in events] == ["a", "b"] and unreadable == len(UNREADABLE)
    assert load_events(p, skip=1 + len(UNREADABLE)) == (events[1:], 0)
    assert load_events(tmp_path / "none") == ([], 0)


SPARSE = r"""
import os
for name in ("sandbox_events.jsonl", "sandbox_native.jsonl"):
    fd = os.open(os.path.join(os.environ["TV_RUN_DIR"], "logs", name), os.O_WRONLY | os.O_CREAT, 0o644)
    os.lseek(fd, 1 << 30, os.SEEK_END)  # a gibibyte of hole: a few KiB on disk, one line read back
    os.write(fd, b"x")
    os.close(fd)
"""


def test_a_gibibyte_line_in_a_step_written_log_is_not_read_whole(host: Path) -> None:
    """The step's sparse logs -- 1 GiB, no newline -- took the launcher 2 GiB of memory and 4 s
    (one ``readline``); a larger hole could push the machine into the OOM killer. Past
    ``MAX_LINE_BYTES`` a line is unreadable, past ``MAX_LOG_BYTES`` the rest is left unread."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = sandbox_run(host, "S", sys.executable, "-I", "-S", "-c", SPARSE)  # native writes: no guard
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert r.returncode == 0, r.stderr
    assert "not readable as records" in r.stderr, r.stderr
    assert max(peak_kib, before) < 400 * 1024 or peak_kib == before, peak_kib
    assert _report(host, "S")["events"]["unreadable"] >= 1
