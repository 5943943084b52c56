"""A workspace in /dev/shm (``TMPDIR=/dev/shm/...``, a common choice for speed): the step's
namespace gives it a private /dev/shm, which would hide the workspace. The run says so in words a
user can act on -- a fallback to Landlock alone with one warning line, or, when the full kernel
layer is required, one error line (125) -- instead of a mount error of the workspace's innards."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sandbox.samples import make_host

REPO = str(Path(__file__).parents[2])


def _run(host: Path, tmpdir: str, run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sandbox", "run", "--root", str(host), "--run-id", run_id, *extra, "--", "true"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TV_", "PYTHON"))}
    env.update(PYTHONPATH=REPO, TMPDIR=tmpdir)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd="/")


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this machine")
def test_a_workspace_in_dev_shm_is_said_plainly(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    shm = tempfile.mkdtemp(prefix="tvs-shm-", dir="/dev/shm")
    try:
        r = _run(host, shm, "auto")
        assert r.returncode == 0, r.stderr
        warning = [line for line in r.stderr.splitlines() if "warning" in line]
        assert len(warning) == 1 and "the workspace lies in /dev/shm" in warning[0], r.stderr
        assert "set TMPDIR (or --workspace-dir) to a folder outside /dev/shm" in warning[0]
        assert ".mountpoints" not in r.stderr and (host / "artifacts/summaries/runs/auto").is_dir()
        r = _run(host, shm, "required", "--kernel", "require")
        lines = r.stderr.splitlines()
        assert r.returncode == 125 and len(lines) == 1, r.stderr
        assert "the workspace lies in /dev/shm" in lines[0], r.stderr
        assert not (host / "artifacts/summaries/runs/required").exists()
        assert os.listdir(shm) == []  # no workspace left behind
    finally:
        subprocess.run(["rm", "-rf", shm], check=False)
