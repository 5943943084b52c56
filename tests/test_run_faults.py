"""Fault injection around a whole run, and concurrent runs.

SIGKILL of the step and of the launcher (`tv-sandbox run`) at seeded random moments: the host's
export folder is absent, or complete with a manifest that verifies -- never partial -- and the
lakehouse is unchanged. (SIGKILL of the exporter at its own points: tests/test_export_faults.py.)
The step dies with a SIGKILLed launcher (parent-death signal), with and without the kernel layer.
Eight runs at once, distinct and duplicate RUN_IDs: no files mixed; a duplicate is refused or,
with --overwrite, swapped atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_argv, tree_snapshot

from sandbox.export import verify
from sandbox.kernel import _keeper, _libc
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
    return run_argv(
        host, run_id, sys.executable, "-c", STEP, str(files), options=("--workspace-dir", str(base), *extra)
    )


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
        # a later run sweeps the workspaces the killed launchers left behind; one killed in the
        # microseconds between creating its folder and writing its marker cannot be proved ours:
        # it stays, holding nothing but (part of) the marker
        subprocess.run(_cmd(host, "after", base, files=1), check=True, capture_output=True)
        for left in base.iterdir():
            assert {p.name for p in left.iterdir()} <= {"owner"}, list(left.rglob("*"))
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
    assert dup_codes[0] == 0 and all(c in (0, 125) for c in dup_codes), codes[5:]
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


# -- the step dies with its launcher ------------------------------------------------------------

# Prints its pid, then keeps writing into its run folder for up to 30 s (an orphan would go on).
LINGER = (
    "import os, time\n"
    "print('STEP-PID', os.getpid(), flush=True)\n"
    "beat = os.path.join(os.environ['TV_RUN_DIR'], 'beat.txt')\n"
    "for i in range(3000):\n"
    "    open(beat, 'w').write(str(i))\n"
    "    time.sleep(0.01)\n"
)


def _host_pid(pid: int, marker: str) -> int:
    """The pid, in our PID namespace, of the step that reported ``pid`` from its own (the kernel
    layer gives a step a PID namespace: its ``os.getpid()`` is small there): the process whose
    command line holds ``marker`` and whose last NSpid is ``pid``."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if marker.encode() not in Path(f"/proc/{name}/cmdline").read_bytes():
                continue
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if nspid and int(nspid[-1]) == pid:
            return int(name)
    raise AssertionError(f"no process with {marker!r} and the in-namespace pid {pid}")


def _running(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (field 22 of its stat)
    and not a zombie: a reaper that never reaps must not count as a survivor."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat.rpartition(")")[2].split()  # after "(comm)": state is field 3, starttime 22
    return fields[0] not in ("Z", "X") and fields[19] == started


@pytest.mark.parametrize("kernel", [pytest.param("auto", marks=pytest.mark.kernel), "off"])
def test_step_dies_with_sigkilled_launcher(
    tmp_path: Path, request: pytest.FixtureRequest, kernel: str
) -> None:
    if kernel == "auto":
        request.getfixturevalue("kernel_support")  # the kernel layer must be used (CI: or fail)
    host = make_host(tmp_path / "host")
    base = tmp_path / "ws"
    base.mkdir()
    cmd = _cmd(host, f"orphan_{kernel}", base, "--kernel", kernel)
    cmd[cmd.index("-c") + 1 :] = [LINGER]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("STEP-PID "):
            line = proc.stdout.readline()
            if not line:  # the launcher (and the step) ended before the step said its pid
                _, err = proc.communicate(timeout=30)
                pytest.fail(f"the step never started (exit {proc.returncode}): {err}")
        pid = _host_pid(int(line.split()[1]), "beat.txt")
        started = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
        assert _running(pid, started)
        time.sleep(0.2)  # well into its writing loop
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 2.0
        while _running(pid, started) and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = _running(pid, started)
        if alive:
            os.kill(pid, signal.SIGKILL)  # leave no orphan behind, then fail
        assert not alive, f"the step (pid {pid}) outlived its SIGKILLed launcher by 2 s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_step_of_a_launcher_dead_before_prctl_exits() -> None:
    """The race the parent-death signal cannot cover: the launcher died between the fork and the
    child's prctl, so the child was re-parented and no signal will come. It must end by itself."""
    _libc.libc()  # as spawn() does: never dlopen in a forked child
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _keeper._die_with(-1)  # a parent pid getppid() cannot return: as if re-parented
        except BaseException:
            os._exit(1)
        os._exit(0)  # survived: wrong
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGKILL


# -- a step's processes that outlive its keeper cannot reach the export --------------------------

# A detached daemon keeps appending to a file of the run folder through a descriptor it holds;
# the step says READY, then waits to be killed.
DAEMON = (
    "import os, sys, time\n"
    "path = os.path.join(os.environ['TV_RUN_DIR'], 'daemon.txt')\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        fh = open(path, 'a')\n"
    "        for i in range(400):\n"
    "            fh.write(f'{i}\\n'); fh.flush(); time.sleep(0.01)\n"
    "    os._exit(0)\n"
    "time.sleep(0.3)\n"
    "print('READY', sys.argv[1], flush=True)\n"
    "time.sleep(30)\n"
)


def _with_marker(marker: str) -> list[int]:
    return [
        int(n)
        for n in os.listdir("/proc")
        if n.isdigit() and _cmdline_has(n, marker) and int(n) != os.getpid()
    ]


def _cmdline_has(pid: str, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("kernel", [pytest.param("auto", marks=pytest.mark.kernel), "off"])
def test_a_killed_keeper_leaves_a_whole_export(
    tmp_path: Path, request: pytest.FixtureRequest, kernel: str
) -> None:
    """SIGKILL of the step's keeper (the launcher's child) while a daemon of the step writes into
    the run folder. With a PID namespace the launcher waits until the namespace is gone; without
    one the daemon outlives the step -- and the export, copied rather than hard-linked, does not
    change under it: it verifies long after."""
    if kernel == "auto":
        request.getfixturevalue("kernel_support")
    host = make_host(tmp_path / "host")
    base = tmp_path / "ws"
    base.mkdir()
    marker = f"keeper-{os.getpid()}-{tmp_path.name}"
    cmd = _cmd(host, f"keeper_{kernel}", base, "--kernel", kernel)
    cmd[cmd.index("-c") + 1 :] = [DAEMON, marker]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("READY "):
            line = proc.stdout.readline()
            if not line:
                _, err = proc.communicate(timeout=30)
                pytest.fail(f"the step never said READY (exit {proc.returncode}): {err}")
        keepers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(keepers) == 1, keepers
        os.kill(int(keepers[0]), signal.SIGKILL)
        # not communicate(): a surviving daemon holds the step's stdout, our pipe, open
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
        dest = host / RUNS / f"keeper_{kernel}"
        survivors = _with_marker(marker)
        if kernel == "auto":
            assert survivors == [], "the launcher returned before the step's namespace was gone"
        else:
            assert survivors, "no daemon outlived the keeper: the test proves nothing"
        time.sleep(0.3)  # the daemon, if any, goes on writing its descriptor
        assert verify(dest) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _with_marker(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=30)
