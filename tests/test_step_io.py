"""The guard's fast paths under the kernel layer (issue 14): a rewrite of an existing name the
overlay maps opens the run folder's copy directly; reads go straight to the kernel when the overlay
merges natively; a family's event lines are encoded once. Each must leave what a step sees, what
the host keeps and what the event log says exactly as the slow paths did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sandbox_run, tree_snapshot

from sandbox._record import replace
from sandbox.events import EventLog, read_events
from sandbox.guard._engine import Engine
from sandbox.loader import load_policy
from sandbox.policy import Action, Op, Rule
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"

STEP = r"""
import os, subprocess, sys
def write(p, text, mode="w"):
    with open(p, mode) as fh:
        fh.write(text if "b" not in mode else text.encode())
        name = fh.name
    return name
os.makedirs("out", exist_ok=True)
assert write("out/a.txt", "one") == "out/a.txt"          # a new name: through the overlay
assert write("out/a.txt", "two") == "out/a.txt"          # a rewrite: the run folder's copy
assert write("out/a.txt", "three", "wb") == "out/a.txt"
with open("out/a.txt", "w+") as fh:
    fh.write("four"); fh.seek(0); assert fh.read() == "four"
assert open("out/a.txt").read() == "four" and os.stat("out/a.txt").st_size == 4
assert not os.path.exists("out/new.txt")                 # the overlay looked it up, in vain
write("out/new.txt", "new")                              # so a new name must go through it
assert os.path.exists("out/new.txt") and open("out/new.txt").read() == "new"
assert sorted(os.listdir("out")) == ["a.txt", "new.txt"]
# a link in the run folder to the lakehouse: a rewrite through it (never opened in place: not a
# plain file) is the lakehouse's, refused (by the kernel: the overlay maps the link's folder)
lake = sorted(p for p in os.listdir("data/lakehouse") if p.endswith(".csv"))[0]
os.symlink(os.path.abspath("data/lakehouse/" + lake), "out/link")
for _ in range(2):
    try:
        write("out/link", "evil")
    except OSError as e:
        assert e.errno in (13, 30), e
    else:
        raise SystemExit("a write through a link to the lakehouse went through")
# a host file the run has not written: a rewrite is a copy-up by the overlay, the host untouched
write("scripts/legacy_step.py", "# replaced in the run folder\n")
assert open("scripts/legacy_step.py").read() == "# replaced in the run folder\n"
subprocess.run(["sh", "-c", "echo shell > out/sh.txt"], check=True)
print("STEP-OK")
"""


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


@pytest.mark.kernel("mount_namespace", "overlay", "landlock")
def test_rewrites_under_the_overlay(host: Path, kernel_support: object) -> None:
    before = {d: tree_snapshot(host / d) for d in ("data", "scripts", "export", "configs")}
    r = sandbox_run(host, "io1", sys.executable, "-c", STEP, options=("--kernel", "require"))
    assert r.returncode == 0, r.stderr
    assert "STEP-OK" in r.stdout
    out = host / RUNS / "io1"
    assert (out / "out" / "a.txt").read_text() == "four"
    assert (out / "out" / "new.txt").read_text() == "new"
    assert (out / "out" / "sh.txt").read_text() == "shell\n"
    assert (out / "scripts" / "legacy_step.py").read_text() == "# replaced in the run folder\n"
    assert {d: tree_snapshot(host / d) for d in before} == before
    assert not (host / "out").exists()
    events = read_events(out / "logs" / "sandbox_events.jsonl")
    # every write of the script is one redirect line, as before: the direct rewrites included
    writes = [e for e in events if e["op"] == "write" and e["action"] == "redirect" and e["layer"] == "python"]
    assert [e["path"] for e in writes if e["path"] in ("out/a.txt", "out/new.txt")] == ["out/a.txt"] * 4 + [
        "out/new.txt"
    ]
    a = [e for e in writes if e["path"] == "out/a.txt"]
    # shown where the user finds them: the host's path, and where the run folder is exported
    assert all(e["resolved"] == str(host / "out" / "a.txt") and e["target"] == str(out / "out" / "a.txt") for e in a)
    assert all(e["rule"] == "workspace-redirect" for e in a)
    assert len({json.dumps({k: v for k, v in e.items() if k != "time"}) for e in a}) == 1
    # the shell's write: the explain shim's line, explained as the overlay's redirect
    assert any(e["layer"] == "overlay" and e["path"] == "out/sh.txt" for e in events)
    denials = [e for e in events if e["action"] == "deny"]
    assert {e["path"] for e in denials} == {"out/link"} and len(denials) == 2
    report = json.loads((out / "sandbox_report.json").read_text())
    assert report["layers"]["overlay"] is True


def test_native_reads_only_under_the_overlay_without_read_rules(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    spec = load_policy(profile="production")
    policy = spec.bind(host=host, run_id="R1")
    assert Engine(policy, overlay=True).native_reads
    assert not Engine(policy, overlay=False).native_reads
    # a rule about reads (even an allowing one): the guard decides every read again
    for action in (Action.DENY, Action.ALLOW):
        rule = Rule("reads", ("{lakehouse}/**",), frozenset({Op.READ}), action)
        ruled = replace(spec, rules=(rule, *spec.rules))
        assert not Engine(ruled.bind(host=host, run_id="R1"), overlay=True).native_reads


def test_event_lines_are_the_same_through_body(tmp_path: Path) -> None:
    """``emit`` and ``emit_body(body(...))`` write the same line; a forked child's lines carry its
    own pid (the line's start, time and pid, is cached per millisecond)."""
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    args = ("python", "write", "redirect", "r", "out/\u00e9\"x", "/ws/out/x", None, False, "production", "why", "")
    log.emit(*args)
    log.emit_body(log.body(*args))
    log.emit(*args[:2], "deny", *args[3:])
    log.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        log.emit_body(log.body(*args))
        log.close()
        os._exit(0)
    os.waitpid(pid, 0)
    log.close()
    evs = read_events(path)
    assert len(evs) == 4
    strip = [{k: v for k, v in e.items() if k != "time"} for e in evs]
    assert strip[0] == strip[1] and strip[0]["path"] == "out/\u00e9\"x" and strip[0]["target"] is None
    assert strip[2]["action"] == "deny"
    assert evs[0]["pid"] == os.getpid() and evs[3]["pid"] == pid


def test_rewrite_of_odd_arguments_is_open_s(tmp_path: Path) -> None:
    """The arguments ``open`` refuses before it opens anything are refused the same under the
    guard, the run folder's copy untouched (the fast path is only taken for arguments ``open``
    accepts before opening)."""
    code = r"""
import os, sys
open("out/a.txt", "w").write("keep")
for kw in ({"buffering": 0}, {"encoding": 5}, {"newline": "?"}):
    try:
        open("out/a.txt", "w", **kw)
    except (ValueError, TypeError) as e:
        print(type(e).__name__)
for kw in ({"encoding": "no-such-codec"},):
    try:
        open("out/a.txt", "w", **kw)
    except LookupError as e:
        print("LookupError")
print(open("out/a.txt").read() or "EMPTY")
"""
    host = make_host(tmp_path / "host")
    (host / "out").mkdir()
    r = sandbox_run(host, "odd", sys.executable, "-c", code, options=("--kernel", "auto"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:4] == ["ValueError", "TypeError", "ValueError", "LookupError"]
    # open() truncates before it looks the codec up: the same with or without the guard
    assert lines[4] == "EMPTY"
    bare = subprocess.run([sys.executable, "-c", code], cwd=host, capture_output=True, text=True)
    assert bare.stdout.split()[:5] == lines[:5]


@pytest.mark.kernel("mount_namespace", "overlay", "landlock")
def test_the_benchmark_runs(kernel_support: object) -> None:
    """``bench/bench_step_io.py --quick``: every variant runs as a real step and each loop gets its
    line (figures, goal, ok/MISSED) -- the figures themselves are the benchmark's business."""
    bench = Path(__file__).parents[1] / "bench" / "bench_step_io.py"
    r = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    places = ["tmpfs", "disk"] if os.geteuid() == 0 else ["disk"]
    for place in places:
        for loop in "abc":
            assert f"{place} ({loop}) kernel on / bare" in r.stdout
            assert f"{place} ({loop}) --kernel off / bare" in r.stdout
    goals = [ln for ln in r.stdout.splitlines() if ln.startswith("tmpfs (")]
    assert all(ln.endswith((" ok", " MISSED")) for ln in goals) and len(goals) == (6 if "tmpfs" in places else 0)
