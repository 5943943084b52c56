"""Ctrl-C and SIGTERM through the real CLI (README, "Ctrl-C and SIGTERM"): the step gets the signal
once and ends as it would without the sandbox, the run is exported marked interrupted with the
step's own last lines, the launcher prints one line and exits 130/143, and a repeated signal --
``timeout`` signals the launcher and then its whole group -- loses nothing."""

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


def clean_up(sig: str) -> str:
    """A step with a clean-up of its own on ``sig``: after a moment, it says how many times the
    signal reached it and exits 3."""
    return (
        "import signal, sys, time\n"
        "got = []\n"
        f"signal.signal(signal.{sig}, lambda n, f: got.append(n))\n"
        "print('ready', flush=True)\n"
        "while not got:\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.5)  # its clean-up, as a step's handler of the signal does\n"
        "print(f'cleaned up after {len(got)} signal(s)', file=sys.stderr, flush=True)\n"
        "raise SystemExit(3)\n"
    )


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def _start(host: Path, tmp_path: Path, run_id: str, script: str, *options: str) -> subprocess.Popen[bytes]:
    """The launcher in a session of its own, as in a terminal (``kill -INT -PGID`` is then the
    terminal's Ctrl-C), once its step is ready."""
    (host / "scripts" / f"{run_id}.py").write_text(script)
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    argv = run_argv(
        host, run_id, sys.executable, f"scripts/{run_id}.py", options=("--workspace-dir", str(ws), *options)
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != b"ready\n":
        proc.kill()
        pytest.fail(f"the step never started: {line!r} {proc.communicate()[1].decode()[-3000:]}")
    return proc


def _end(proc: subprocess.Popen[bytes]) -> str:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the launcher did not end after the signal")
    return err.decode()


def _report(host: Path, run_id: str) -> dict[str, object]:
    path = host / RUNS / run_id / "sandbox_report.json"
    assert path.exists(), "the run was not exported"
    rep: dict[str, object] = json.loads(path.read_text())
    return rep


def _one_line(err: str) -> None:
    """The launcher's stderr holds one line of its own (warnings aside), and no traceback of it."""
    ours = [ln for ln in err.splitlines() if ln.startswith("tv-sandbox:") and "warning:" not in ln]
    assert "Exception ignored" not in err and "Error in sys.excepthook" not in err, err
    assert "/sandbox/" not in err, err  # no frame of the sandbox's own code
    assert len(ours) == 1 and "interrupted" in ours[0], err


@pytest.mark.parametrize("repeat", [1, 3])
def test_a_repeated_sigterm_loses_nothing(host: Path, tmp_path: Path, repeat: int) -> None:
    """``kill -TERM $L; kill -TERM $L``: the run is ending already; the repeats change nothing."""
    proc = _start(host, tmp_path, "term", clean_up("SIGTERM"))
    proc.send_signal(signal.SIGTERM)
    for _ in range(repeat - 1):
        time.sleep(0.1)  # while the launcher waits for the step's own clean-up
        proc.send_signal(signal.SIGTERM)
    err = _end(proc)
    assert proc.returncode == 143, err
    _one_line(err)
    rep = _report(host, "term")
    step = rep["steps"][0]  # type: ignore[index]
    assert rep["status"] == "interrupted" and rep["cut"] == {"status": "interrupted", "why": "SIGTERM"}
    # the step's own end -- not the keeper's, cut by the launcher's interrupted wait (SIGPIPE)
    assert (step["exit_code"], step["signal"]) == (3, None), step
    assert step["stderr_tail"].endswith("cleaned up after 1 signal(s)\n"), step
    assert list((tmp_path / "ws").iterdir()) == []


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_ctrl_c_reaches_the_step_once_and_lets_it_end_as_it_would(
    host: Path, tmp_path: Path, kernel: str
) -> None:
    """A terminal's Ctrl-C signals the launcher's whole group, the step included: neither the
    launcher nor the keeper may signal it again (a second SIGINT cuts a Python step's handling of
    the first) or SIGTERM it in the middle of its clean-up."""
    proc = _start(host, tmp_path, "int", clean_up("SIGINT"), "--kernel", kernel)
    os.killpg(proc.pid, signal.SIGINT)
    err = _end(proc)
    assert proc.returncode == 130, err
    _one_line(err)
    assert "cleaned up after 1 signal(s)" in err
    rep = _report(host, "int")
    step = rep["steps"][0]  # type: ignore[index]
    assert rep["status"] == "interrupted" and rep["cut"] == {"status": "interrupted", "why": "SIGINT"}
    assert (step["exit_code"], step["signal"]) == (3, None), step
    assert step["stderr_tail"].endswith("cleaned up after 1 signal(s)\n"), step


def test_ctrl_c_keeps_the_steps_own_traceback(host: Path, tmp_path: Path) -> None:
    """A Python step interrupted by Ctrl-C prints its KeyboardInterrupt traceback, whole, on the
    terminal and in the report, nothing of the sandbox's own, and ends by SIGINT, as Python does."""
    script = "import time\nprint('ready', flush=True)\n\ndef work():\n    time.sleep(30)\n\nwork()\n"
    proc = _start(host, tmp_path, "tb", script)
    os.killpg(proc.pid, signal.SIGINT)
    err = _end(proc)
    assert proc.returncode == 130, err
    _one_line(err)
    rep = _report(host, "tb")
    step = rep["steps"][0]  # type: ignore[index]
    assert step["signal"] == signal.SIGINT, step  # Python's own end on an uncaught KeyboardInterrupt
    tail = step["stderr_tail"]
    assert tail.startswith("Traceback (most recent call last):\n"), tail
    assert tail.endswith("KeyboardInterrupt\n"), tail
    assert f'File "{host}/scripts/tb.py", line ' in tail and tail in err  # the host's path, as always


def test_ctrl_c_reaches_a_python_step_wrapped_in_a_shell(host: Path, tmp_path: Path) -> None:
    """``sh -c 'python report.py; echo after'`` (a StepSpec's string command is one): the terminal's
    Ctrl-C reaches the whole foreground group -- the shell's children too, as without the sandbox.
    In a session of its own, the step got only the launcher's signal, passed to the shell alone,
    and its Python child was SIGKILLed after the grace, with no traceback."""
    script = "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"
    (host / "scripts" / "inner.py").write_text(script)
    ws = tmp_path / "ws"
    ws.mkdir()
    inner = f"{sys.executable} scripts/inner.py; echo after-python >&2"
    argv = run_argv(host, "sh", "sh", "-c", inner, options=("--workspace-dir", str(ws)))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    os.killpg(proc.pid, signal.SIGINT)
    err = _end(proc)
    assert proc.returncode == 130, err
    step = _report(host, "sh")["steps"][0]  # type: ignore[index]
    assert "KeyboardInterrupt" in step["stderr_tail"], step
    assert step["signal"] != signal.SIGKILL, step


NATIVE_FLOOD = r"""
import json, os, sys
line = json.dumps({"op": "write", "errno": 0, "pid": os.getpid(), "path": "data/x.txt", "dir": "/"})
with open(os.path.join(os.environ["TV_RUN_DIR"], "logs", "sandbox_native.jsonl"), "a") as fh:
    fh.write((line + "\n") * 200_000)
print("ready", flush=True)
"""


def test_ctrl_c_while_a_huge_raw_log_is_explained_ends_the_run_at_once(host: Path, tmp_path: Path) -> None:
    """A step left 200,000 records of the explain shim's (~110 us each to explain): a signal held
    while they were explained waited tens of seconds, and the launcher then said only
    "interrupted". The explanations stop at the held signal; the run is exported, said as usual."""
    (tmp_path / "ws").mkdir()
    argv = run_argv(
        host, "flood", sys.executable, "-I", "-S", "-c", NATIVE_FLOOD, options=("--workspace-dir", str(tmp_path / "ws"))
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    time.sleep(1.0)  # the step has ended; its records are being explained
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    err = _end(proc)
    assert time.monotonic() - t0 < 10, err
    assert proc.returncode == 130, err
    _one_line(err)
    assert "exported, marked interrupted, to" in err, err
    assert _report(host, "flood")["status"] == "interrupted"


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_a_closed_terminal_or_ctrl_backslash_ends_the_run_like_ctrl_c(host: Path, tmp_path: Path, sig: int) -> None:
    """SIGHUP (the terminal closed) and SIGQUIT (Ctrl-\\\\) killed the launcher: nothing exported,
    the workspace left for the next run's sweep. They end the run as Ctrl-C does, 128 + N."""
    name = signal.Signals(sig).name
    proc = _start(host, tmp_path, "hq", clean_up(name))
    proc.send_signal(sig)
    err = _end(proc)
    assert proc.returncode == 128 + sig, err
    _one_line(err)
    rep = _report(host, "hq")
    assert rep["status"] == "interrupted" and rep["cut"] == {"status": "interrupted", "why": name}
    assert rep["steps"][0]["stderr_tail"].endswith("cleaned up after 1 signal(s)\n")  # type: ignore[index]
    assert list((tmp_path / "ws").iterdir()) == []
