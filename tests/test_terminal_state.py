"""The launcher puts the user's terminal's settings back after each step (``_process.TerminalState``)
-- only when it is the terminal's foreground job: in the background of a shell, the terminal is
another program's (tests/escapes/test_privilege.py holds the foreground side)."""

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


def test_a_launcher_in_the_background_leaves_the_foreground_jobs_terminal_settings(tmp_path: Path) -> None:
    """``tv-sandbox run ... &`` in a terminal, then an editor in the foreground (raw mode: no echo,
    no line editing): when the step ended, the launcher "put back" the settings it had saved --
    with SIGTTOU blocked, so that job control did not stop it -- and the editor was left with echo
    and line editing on. A background launcher now leaves the terminal as it is."""
    host = make_host(tmp_path / "host")
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = run_argv(host, "bg", "sleep", "4", options=("--workspace-dir", str(ws)))
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
        shell = subprocess.run(
            [sys.executable, "-c", BACKGROUND_JOB, str(slave), *argv],
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
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert shell.stdout.split() == ["exit", "0", "echo", "off"], (shell.stdout, bytes(shown)[-2000:])
