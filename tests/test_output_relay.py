"""A step's stdout redirected to a file or a named FIFO (``tv-sandbox run ... > out.log``) through
the real CLI. The step gets a pipe, which the launcher copies (``_output.pump``): it never holds
the launcher's descriptor of a host inode (tests/escapes/test_privilege.py holds that side). Here:
the copy loses nothing and hides nothing -- a full disk and a reader that closes are said in one
warning line, the step's further writes fail as its own would have, and what it wrote is kept in
``logs/<step>.stdout.log``; an interrupted run does not wait for a reader that stopped reading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_argv

from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
LINES = 20000
#: prints LINES numbered lines, then says on stderr how its stdout fared
PRINTER = (
    "import sys\n"
    "try:\n"
    f"    for i in range({LINES}):\n"
    "        sys.stdout.write('line %06d ' % i + 'x' * 50 + '\\n')\n"
    "    sys.stdout.flush()\n"
    "except BrokenPipeError:\n"
    "    sys.stderr.write('refused at %d\\n' % i)\n"
    "    sys.stdout = None\n"
    "    raise SystemExit(5)\n"
    "sys.stderr.write('all written\\n')\n"
)
EXPECTED = "".join(f"line {i:06d} " + "x" * 50 + "\n" for i in range(LINES))


@pytest.fixture
def host(tmp_path: Path) -> Path:
    h = make_host(tmp_path / "host")
    (h / "scripts" / "printer.py").write_text(PRINTER)
    return h


def _argv(host: Path, tmp_path: Path, run_id: str) -> list[str]:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return run_argv(host, run_id, sys.executable, "scripts/printer.py", options=("--workspace-dir", str(ws)))


def _export(host: Path, run_id: str) -> tuple[dict[str, object], Path]:
    export = host / RUNS / run_id
    rep: dict[str, object] = json.loads((export / "sandbox_report.json").read_text())
    return rep, export


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("tv-sandbox: warning:")]


def test_a_file_and_a_named_fifo_as_stdout_get_everything(host: Path, tmp_path: Path) -> None:
    """``> out.log`` and ``>> out.log`` get the step's whole output at the file's offset; ``> fifo``
    works (the step was refused a FIFO for its stdout: 126), and no log of it is left."""
    out = tmp_path / "out.log"
    out.write_text("kept\n")
    with open(out, "ab") as fh:
        r = subprocess.run(_argv(host, tmp_path, "append"), stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0 and "all written" in r.stderr, r.stderr[-2000:]
    assert out.read_text() == "kept\n" + EXPECTED
    assert not _warnings(r.stderr)
    _, export = _export(host, "append")
    assert not (export / "logs" / "step.stdout.log").exists()

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = tmp_path / "got"
    reader = subprocess.Popen(["sh", "-c", f"exec cat {fifo} > {got}"])
    with open(fifo, "wb") as fh:
        r = subprocess.run(_argv(host, tmp_path, "fifo"), stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120)
    reader.wait(timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert got.read_text() == EXPECTED


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root; CI runs as root)")
def test_a_full_disk_is_said_and_nothing_of_the_output_is_lost(host: Path, tmp_path: Path) -> None:
    """stdout on a full filesystem: the launcher swallowed the error (and capped its copy in time);
    now one warning line says where the rest is, the step's next write fails (EPIPE) as its own
    write to the file would have, and the file plus the kept log are what the step wrote."""
    small = tmp_path / "small"
    small.mkdir()
    argv = _argv(host, tmp_path, "full")
    # a tmpfs of 64 KiB in a mount namespace of this test's own: nothing of it outlives the test
    script = f'mount -t tmpfs -o size=64k tvs-full "$1" && shift && exec "$@" > {small}/out.log'
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(small), *argv],
        stderr=subprocess.PIPE, text=True, timeout=120,
    )
    rep, export = _export(host, "full")
    assert r.returncode == 5 and "refused at" in r.stderr, r.stderr[-2000:]
    (line,) = _warnings(r.stderr)
    assert "No space left on device" in line and "logs/step.stdout.log" in line, line
    assert line.removeprefix("tv-sandbox: warning: ") in rep["warnings"]  # type: ignore[operator]
    kept = (export / "logs" / "step.stdout.log").read_text()
    delivered = int(line.split("(")[-1].split(" bytes")[0])
    assert 0 < delivered <= 64 * 1024 and kept
    # what reached the file is gone with the tmpfs; its size is in the line, and the log goes on
    # from there: every line the step wrote, none twice
    assert EXPECTED[delivered:].startswith(kept), kept[:200]


def test_an_interrupted_run_does_not_wait_for_a_reader_that_stopped(host: Path, tmp_path: Path) -> None:
    """``tv-sandbox run ... > fifo`` whose reader holds the FIFO open and reads nothing; Ctrl-C:
    the run waited for the reader forever (SIGINT held while the step's output drained). Now it
    ends within the patience of a second or so, exported, the undelivered rest kept. (A stderr
    whose reader stops holds the launcher at its own last line, as it holds any program:
    docs/security.md.)"""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (host / "scripts" / "loud.py").write_text(
        "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "while True:\n    sys.stdout.write('y' * 4096)\n"
    )
    reader = subprocess.Popen(["sh", "-c", f"exec 3<{fifo}; exec sleep 120"])  # holds it, reads nothing
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "stall", sys.executable, "scripts/loud.py", options=("--workspace-dir", str(ws)))
    try:
        with open(fifo, "wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, start_new_session=True)
            time.sleep(3)  # the FIFO full, the step blocked on its pipe
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail("the launcher waited for a reader that reads nothing")
        took = time.monotonic() - t0
    finally:
        reader.kill()
        reader.wait()
    assert proc.returncode == 130 and took < 10, (proc.returncode, took)
    rep, export = _export(host, "stall")
    assert rep["status"] == "interrupted"
    (warning,) = [w for w in rep["warnings"] if "took nothing" in w]  # type: ignore[attr-defined]
    assert "logs/step.stdout.log" in warning, warning
    assert (export / "logs" / "step.stdout.log").stat().st_size > 0
    assert list(ws.iterdir()) == []


def test_a_pipe_the_step_grew_is_drained_whole(host: Path, tmp_path: Path) -> None:
    """The step grows its stdout pipe to 1 MiB (F_SETPIPE_SZ), fills it while the reader of the
    FIFO waits, and ends: the launcher drained at most the pipe's size as it was at the start,
    64 KiB, and the rest was lost without a word. Now it asks the size once the step has ended."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    size = 900 * 1024
    (host / "scripts" / "grow.py").write_text(
        "import fcntl, os\n"
        "fcntl.fcntl(1, 1031, 1 << 20)  # F_SETPIPE_SZ\n"
        f"data = b''.join(b'%09d\\n' % i for i in range({size} // 10))\n"
        "view = memoryview(data)\n"
        "while view:\n"
        "    view = view[os.write(1, view):]\n"
    )
    got = tmp_path / "got"
    reader = subprocess.Popen(["sh", "-c", f"exec 3<{fifo}; sleep 3; exec cat <&3 > {got}"])
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "grow", sys.executable, "scripts/grow.py", options=("--workspace-dir", str(ws)))
    with open(fifo, "wb") as sink:
        r = subprocess.run(argv, stdout=sink, stderr=subprocess.PIPE, text=True, timeout=120)
    reader.wait(timeout=60)
    assert r.returncode == 0 and not _warnings(r.stderr), r.stderr[-2000:]
    assert got.read_bytes() == b"".join(b"%09d\n" % i for i in range(size // 10))


@pytest.mark.parametrize("closed", [">&-", "2>&-", "<&-"])
def test_a_closed_stdio_keeps_the_steps_status_and_no_traceback(host: Path, tmp_path: Path, closed: str) -> None:
    """``tv-sandbox run ... >&-`` (or ``2>&-``, ``<&-``): the launcher's and its keeper's own pipes
    took the free number -- the keeper's status pipe broke, the step's status was lost (the
    run said 127 whatever the command's) and the launcher ended on a traceback (exit 1; 125 with
    ``2>&-``). Now the number is held by ``/dev/null`` opened the other way: the step's reads
    or writes of it fail as of a closed one, and its status is the run's."""
    ws = tmp_path / "ws"
    ws.mkdir()
    step = 'echo out; echo "stdout $?" >&2; read x; echo "stdin $?" >&2; exit 3'
    argv = run_argv(host, "closed", "sh", "-c", step, options=("--workspace-dir", str(ws)))
    r = subprocess.run(
        ["sh", "-c", f'exec "$@" {closed}', "sh", *argv],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 3, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout and "internal error" not in r.stderr + r.stdout
    rep, export = _export(host, "closed")
    assert rep["steps"][0]["exit_code"] == 3  # type: ignore[index]
    err = (export / "logs" / "step.stderr.log").read_text()
    if closed == ">&-":
        assert "stdout 0" not in err and "stdout " in err, err  # its write failed, as to a closed one
    if closed == "<&-":
        assert "stdin 0" not in err and "stdin " in err, err
    assert list(ws.iterdir()) == []


def test_a_stderr_whose_reader_is_gone_keeps_the_steps_exit_status(host: Path, tmp_path: Path) -> None:
    """``tv-sandbox run ... 2>&1 | head -0``: the launcher's own last lines hit a closed pipe and
    it ended with 1 and a traceback, the step's status lost. Now the lines are lost, not the
    status; the step's stderr is in its log, and the report says why it was not shown."""
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "gone", "sh", "-c", "echo said >&2; exit 3", options=("--workspace-dir", str(ws)))
    r, w = os.pipe()
    os.close(r)  # nobody reads the launcher's stderr
    try:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=w, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 3
    rep, export = _export(host, "gone")
    assert (export / "logs" / "step.stderr.log").read_text() == "said\n"
    assert any("Broken pipe" in w for w in rep["warnings"]), rep["warnings"]  # type: ignore[attr-defined]


def test_the_launchers_line_never_sticks_to_a_steps_unfinished_line(host: Path, tmp_path: Path) -> None:
    """A step's stderr ending mid-line (a progress bar, a traceback cut by Ctrl-C): the summary was
    glued to it (``50%tv-sandbox: run ... failed``), where a user's eye and a CI log's grep look."""
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "midline", "sh", "-c", "printf 50%% >&2; exit 2", options=("--workspace-dir", str(ws)))
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2
    assert "50%\ntv-sandbox: run midline failed (exit 2)" in r.stderr, r.stderr
