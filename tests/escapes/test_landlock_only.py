"""An unprivileged launcher where no user namespace can be made: Landlock alone, for real.

The machines where this happens (a kernel or distribution refusing unprivileged user namespaces)
are the fallback users really hit. The launcher runs as nobody inside a namespace whose own limit
forbids user namespaces (``no_userns.py``: the machine's settings are untouched), so the step gets
Landlock, the Python guard and no capability -- not a mount namespace. A shell step that deletes
the lakehouse's files (``make clean``) must be refused by Landlock, explained and counted; what it
writes into the workspace must be gathered into the run folder; the host must be unchanged.

Before the fix the Landlock plan failed on the bounding set (``PR_CAPBSET_DROP`` needs
CAP_SETPCAP, which no unprivileged process holds), the run fell back to the Python guard alone, and
the lakehouse's CSVs were deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_privilege import NOBODY, REPO, RUNS, Box

from sandbox.kernel import landlock

NO_USERNS = str(Path(__file__).with_name("no_userns.py"))
REQUIRE = os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1"

STEP = r"""
rm -f data/lakehouse/*.csv
grep -E '^(CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs):' /proc/self/status
mkdir -p data && echo native > data/native.txt
"""


@pytest.fixture
def box() -> Iterator[Box]:
    b = Box("unprivileged")  # skips (fails in CI) where the CLI cannot run as nobody
    try:
        yield b
    finally:
        b.close()


def _run(box: Box, run_id: str, step: str = STEP, **env_vars: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        NO_USERNS,
        *box.launcher(run_id),  # setpriv to nobody, the CLI
        "--",
        "sh",
        "-c",
        step,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TV_", "PYTHON"))}
    env.update(PYTHONPATH=REPO, HOME=str(box.root), TMPDIR=str(box.ws), **env_vars)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd="/")


def _landlock_alone(box: Box, r: subprocess.CompletedProcess[str], abi: int = 1) -> None:
    """Skip (fail in CI) where this machine cannot give the test Landlock alone of ``abi``."""
    why = ""
    if landlock.abi_version() < abi:
        why = f"Landlock ABI {abi} is unavailable here (Linux 6.12+ for 6)"
    elif r.returncode == 125 and r.stderr.startswith("no_userns:"):
        why = f"cannot make the test's user namespace: {r.stderr.strip()}"
    if why:
        if REQUIRE:
            pytest.fail(f"in CI: {why}")
        pytest.skip(reason=why)


def test_landlock_alone_refuses_a_shell_step_and_keeps_its_outputs(box: Box) -> None:
    if not landlock.abi_version():
        if REQUIRE:
            pytest.fail("Landlock unavailable in CI")
        pytest.skip(reason="Landlock is unavailable here")
    before = box.snapshot()
    r = _run(box, "ll1")
    if r.returncode == 125 and r.stderr.startswith("no_userns:"):
        if REQUIRE:
            pytest.fail(f"cannot make the test's user namespace in CI: {r.stderr}")
        pytest.skip(reason=r.stderr.strip())
    assert r.returncode == 0, r.stderr
    rep = json.loads((box.host / RUNS / "ll1" / "sandbox_report.json").read_text())
    layers = rep["layers"]
    assert layers["landlock_abi"], (layers, r.stderr)
    # the fallback says so: no mount namespace, and why
    assert not layers["mount_namespace"] and "mount_namespace" in layers["missing"], layers
    assert "only Landlock and the Python guard are active" in r.stderr, r.stderr
    # the step holds no capability (the bounding set is moot: no uid 0, no_new_privs)
    got = dict(line.split(":\t", 1) for line in r.stdout.splitlines())
    for k in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert got[k] == "0000000000000000", (k, got)
    assert got["NoNewPrivs"] == "1", got
    # refused by Landlock, explained and counted; the host as it was
    assert "3 denied" in r.stderr, r.stderr
    assert box.snapshot() == before
    # what the step wrote into the workspace is in the run folder
    assert (box.host / RUNS / "ll1" / "data" / "native.txt").read_text() == "native\n"


SIGNAL_STEP = 'kill -TERM "$VICTIM" 2>/dev/null && echo SIGNALLED || echo REFUSED'


def test_landlock_alone_keeps_the_step_from_signalling_processes_outside_its_run(box: Box) -> None:
    """Without a PID namespace a step could signal every process of its user: the launcher, a Ray
    raylet, another run (kill -TERM of a sleep of nobody's, outside the run, ended it). With
    Landlock's signal scoping (ABI 6) it can signal only processes of its own domain."""
    victim = subprocess.Popen([*box.prefix(), "sleep", "60"], cwd="/")
    try:
        r = _run(box, "ll2", SIGNAL_STEP, VICTIM=str(victim.pid))
        _landlock_alone(box, r, abi=6)
        assert r.returncode == 0, r.stderr
        assert "REFUSED" in r.stdout and victim.poll() is None, (r.stdout, victim.poll())
    finally:
        victim.kill()
        victim.wait()


HISTORY_STEP = r"""
R=artifacts/summaries/runs
cat $R/old1/data/x.csv
python3 -I -c 'print(open("artifacts/summaries/runs/old1/data/x.csv").read().strip())'
ls $R | grep -c '^old' || true
echo own > $R/$TV_RUN_ID/data/own.txt && echo OWN-OK
(echo bad > $R/old1/data/x.csv) 2>/dev/null && echo OLD-WRITTEN || echo OLD-REFUSED
(mkdir -p $R/new && echo n > $R/new/y) 2>/dev/null && echo NEW-WRITTEN || echo NEW-REFUSED
ln -s /tmp $R/planted 2>/dev/null && echo PLANTED || echo PLANT-REFUSED
"""


def test_landlock_alone_reads_past_runs_and_writes_only_its_own(box: Box) -> None:
    """The runs folder's view (workspace.py: a link per past run, reused from run to run) is read
    natively and through Python; the run's own folder is written; the view itself and the past
    runs are not writable -- so no step can plant a link a later run would follow."""
    old = box.host / RUNS / "old1" / "data"
    old.mkdir(parents=True)
    (old / "x.csv").write_text("a,b\n")
    for d in (box.host / RUNS / "old1", old, old / "x.csv"):
        os.lchown(d, NOBODY, NOBODY)
    before = box.snapshot()
    for run_id in ("h1", "h2"):  # the second takes the view the first gave back
        r = _run(box, run_id, HISTORY_STEP)
        _landlock_alone(box, r)
        assert r.returncode == 0, r.stderr
        out = r.stdout.split()
        assert out[:2] == ["a,b", "a,b"], r.stdout
        assert out[2] == "1", r.stdout
        assert "OWN-OK" in out and "OLD-REFUSED" in out, r.stdout
        assert "NEW-REFUSED" in out and "PLANT-REFUSED" in out, r.stdout
        assert (box.host / RUNS / run_id / "data" / "own.txt").read_text() == "own\n"
        assert box.snapshot() == before
        assert (old / "x.csv").read_text() == "a,b\n"
    assert sorted(os.listdir(box.host / RUNS)) == ["h1", "h2", "old1"]


SHM_STEP = r"""
echo own > $TV_RUN_DIR/data/own.txt && echo OWN-OK
(echo x > "$PARENT/planted") 2>/dev/null && echo PARENT-WRITTEN || echo PARENT-REFUSED
(echo x > "$OTHER/data/late.txt") 2>/dev/null && echo OTHER-WRITTEN || echo OTHER-REFUSED
"""


def test_landlock_alone_with_the_workspace_in_dev_shm_keeps_the_step_in_its_own(box: Box) -> None:
    """TMPDIR=/dev/shm: the full layer's private /dev/shm hides the workspace, so the run falls
    back to Landlock alone -- which granted the machine's /dev/shm whole: the step wrote beside
    its workspace (another run's run folder, the pool of views later runs take)."""
    import tempfile

    shm = Path(tempfile.mkdtemp(prefix="tvs-shm-", dir="/dev/shm"))
    try:
        os.chown(shm, NOBODY, NOBODY)
        box.ws = shm
        other = shm / "other-run" / "data"  # as another run's run folder there would be
        other.mkdir(parents=True)
        for d in (other.parent, other):
            os.chown(d, NOBODY, NOBODY)
        r = _run(box, "shm1", SHM_STEP, PARENT=str(shm), OTHER=str(other.parent))
        _landlock_alone(box, r)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["OWN-OK", "PARENT-REFUSED", "OTHER-REFUSED"], r.stdout
        assert not (shm / "planted").exists() and os.listdir(other) == []
        assert (box.host / RUNS / "shm1" / "data" / "own.txt").read_text() == "own\n"
    finally:
        subprocess.run(["rm", "-rf", str(shm)], check=False)
