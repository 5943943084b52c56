"""Fault injection around a whole run, and concurrent runs.

SIGKILL of the step and of the launcher (`tv-sandbox run`) at seeded random moments: the host's
export folder is absent, or complete with a manifest that verifies -- never partial -- and the
lakehouse is unchanged. (SIGKILL of the exporter at its own points: tests/test_export_faults.py.)
Eight runs at once, distinct and duplicate RUN_IDs: no files mixed; a duplicate is refused or,
with --overwrite, swapped atomically.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tree_snapshot

from sandbox.export import verify
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
STEP = (
    "import os, sys, time\n"
    "rid = os.environ['TV_RUN_ID']\n"
    "os.makedirs('reports', exist_ok=True)\n"
    "for i in range(int(sys.argv[1])):\n"
    "    open(f'reports/{i}.txt', 'w').write(rid * 50)\n"
    "    time.sleep(0.002)\n"
)


def _cmd(host: Path, run_id: str, base: Path, *extra: str, files: int = 40) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sandbox",
        "run",
        "--root",
        str(host),
        "--run-id",
        run_id,
        "--workspace-dir",
        str(base),
        *extra,
        "--",
        sys.executable,
        "-c",
        STEP,
        str(files),
    ]


def _export_state(dest: Path) -> str:
    if not dest.exists():
        return "absent"
    problems = verify(dest)
    assert problems == [], f"partial export at {dest}: {problems}"
    return "complete"


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["launcher", "step"])
def test_sigkill_at_random_moments(tmp_path: Path, victim: str) -> None:
    host = make_host(tmp_path / "host")
    base = tmp_path / "ws"
    base.mkdir()
    lake = tree_snapshot(host / "data" / "lakehouse")
    rng = random.Random(20261126 + (victim == "step"))
    states = []
    for trial in range(20):
        run_id = f"{victim}{trial}"
        proc = subprocess.Popen(_cmd(host, run_id, base), stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, 0.5))
        if victim == "launcher":
            proc.kill()
        else:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            pids = kids.read_text().split() if kids.exists() else []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.communicate(timeout=60)
        state = _export_state(host / RUNS / run_id)
        if victim == "step" and state == "complete":
            manifest = json.loads((host / RUNS / run_id / "manifest.json").read_text())
            assert manifest["exit_code"] in (0, 137), manifest["exit_code"]
            assert manifest["status"] == ("succeeded" if manifest["exit_code"] == 0 else "failed")
        states.append(state)
        assert tree_snapshot(host / "data" / "lakehouse") == lake
    if victim == "launcher":
        assert {"absent", "complete"} <= set(states) or len(set(states)) == 1, states
        # a later run sweeps the workspaces the killed launchers left behind (one killed while
        # creating its folder has no record yet: swept once it is a few seconds old)
        time.sleep(2.5)
        subprocess.run(_cmd(host, "after", base, files=1), check=True, capture_output=True)
        assert [p.name for p in base.iterdir()] == []
    else:
        assert all(s == "complete" for s in states), states  # the launcher survives its step


@pytest.mark.slow
def test_eight_concurrent_runs(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    base = tmp_path / "ws"
    base.mkdir()
    lake = tree_snapshot(host / "data" / "lakehouse")
    ids = ["c0", "c1", "c2", "c3", "c4", "dup", "dup", "dup"]
    procs = [
        subprocess.Popen(_cmd(host, rid, base, files=20), stderr=subprocess.PIPE, text=True) for rid in ids
    ]
    codes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    for rid, (code, err) in zip(ids[:5], codes[:5], strict=True):
        assert code == 0, err
        out = host / RUNS / rid
        assert verify(out) == []
        for f in (out / "reports").iterdir():
            assert f.read_text() == rid * 50  # nothing mixed between runs
    dup_codes = sorted(c for c, _ in codes[5:])
    assert dup_codes[0] == 0 and all(c in (0, 2, 3) for c in dup_codes), codes[5:]
    assert dup_codes.count(0) == 1, "exactly one duplicate RUN_ID may be exported without --overwrite"
    assert verify(host / RUNS / "dup") == []
    assert tree_snapshot(host / "data" / "lakehouse") == lake


@pytest.mark.slow
def test_concurrent_overwrites_swap_atomically(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    base = tmp_path / "ws"
    base.mkdir()
    procs = [
        subprocess.Popen(_cmd(host, "same", base, "--overwrite", files=10), stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert verify(host / RUNS / "same") == []
    assert not [p for p in (host / RUNS).iterdir() if p.name != "same"]  # no stage left behind
