"""The launcher puts the user's terminal's settings back after each step (``_output.TerminalState``)
-- only when it is the terminal's foreground job: in the background of a shell, the terminal is
another program's (tests/escapes/test_privilege.py holds the foreground side) -- and that a
setting a step makes (``TOSTOP``) cannot stop a launcher in the background."""

from __future__ import annotations

import fcntl
import os
import pty
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from conftest import run_argv

from sandbox.samples import make_host

#: as a shell in a terminal: the launcher a background job (``cmd &``), then a foreground program
#: (an editor) puts the terminal in raw mode while the run goes on; the terminal's settings once
#: the launcher has ended, as a line on stdout
BACKGROUND_JOB = r"""
import os, subprocess, sys, termios, time
tty = int(sys.argv[1])
job = subprocess.Popen(sys.argv[2:], stdin=tty, stdout=tty, stderr=tty, process_group=0)
time.sleep(2)  # the step runs
attrs = termios.tcgetattr(tty)
attrs[3] &= ~(termios.ECHO | termios.ICANON)  # the editor in the foreground: raw
termios.tcsetattr(tty, termios.TCSANOW, attrs)
job.wait()
echo = termios.tcgetattr(tty)[3] & termios.ECHO
print("exit", job.returncode, "echo", "on" if echo else "off", flush=True)
"""


def _as_a_shell(shell: str, argv: list[str]) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """``shell`` (Python: the terminal's number, then ``argv``) as a session leader whose
    controlling terminal is a new pty; returns its result and what the terminal showed."""
    master, slave = pty.openpty()
    shown = bytearray()

    def read_terminal() -> None:  # the terminal's output, so that no write to it blocks
        try:
            while chunk := os.read(master, 4096):
                shown.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    try:
        r = subprocess.run(
            [sys.executable, "-c", shell, str(slave), *argv],
            preexec_fn=controlling_terminal,
            pass_fds=(slave,),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(slave)
        time.sleep(0.2)
        os.close(master)
    return r, bytes(shown)


def test_a_launcher_in_the_background_leaves_the_foreground_jobs_terminal_settings(tmp_path: Path) -> None:
    """``tv-sandbox run ... &`` in a terminal, then an editor in the foreground (raw mode: no echo,
    no line editing): when the step ended, the launcher "put back" the settings it had saved --
    with SIGTTOU blocked, so that job control did not stop it -- and the editor was left with echo
    and line editing on. A background launcher now leaves the terminal as it is."""
    host = make_host(tmp_path / "host")
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "bg", "sleep", "4", options=("--workspace-dir", str(ws)))
    shell, shown = _as_a_shell(BACKGROUND_JOB, argv)
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert shell.stdout.split() == ["exit", "0", "echo", "off"], (shell.stdout, shown[-2000:])


#: as a shell in a terminal: the launcher a background job, waited for at most 60 s
BACKGROUND_WAIT = r"""
import os, subprocess, sys, time
tty = int(sys.argv[1])
job = subprocess.Popen(sys.argv[2:], stdin=tty, stdout=tty, stderr=tty, process_group=0)
try:
    job.wait(timeout=60)
    print("exit", job.returncode, flush=True)
except subprocess.TimeoutExpired:
    with open(f"/proc/{job.pid}/stat") as fh:
        print("state", fh.read().split()[2], flush=True)
    job.kill()
    job.wait()
"""

#: in the background, SIGTTOU ignored: TOSTOP on, then a line on stderr and one on stdout
TOSTOP = r"""
import signal, sys, termios
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
attrs = termios.tcgetattr(1)
attrs[3] |= termios.TOSTOP
termios.tcsetattr(1, termios.TCSANOW, attrs)
sys.stderr.write("err-after-tostop\n")
sys.stderr.flush()
print("out-after-tostop", flush=True)
"""


def test_a_step_cannot_stop_a_background_launcher_with_tostop(tmp_path: Path) -> None:
    """``tv-sandbox run ... &`` in a terminal whose ``TOSTOP`` is off; the step ignores SIGTTOU and
    turns ``TOSTOP`` on, then writes a line on stderr: the launcher's copy of it was stopped by
    SIGTTOU (its timeout and SIGTERM unanswered until a SIGCONT, the run neither reported nor
    exported), and so were its own last lines. Its copies and its lines are now written as the
    terminal let them when the step began."""
    host = make_host(tmp_path / "host")
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "tostop", sys.executable, "-c", TOSTOP, options=("--workspace-dir", str(ws)))
    shell, shown = _as_a_shell(BACKGROUND_WAIT, argv)
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert shell.stdout.split() == ["exit", "0"], (shell.stdout, shown[-2000:])
    assert b"err-after-tostop" in shown and b"tv-sandbox: run tostop succeeded" in shown, shown[-2000:]
