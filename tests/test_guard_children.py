"""Python children get the guard from their environment: subprocess, os.system, multiprocessing
spawn and forkserver, for real; a user's sitecustomize still runs; a broken bootstrap fails closed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import RunEnv

from sandbox.events import read_events
from sandbox.guard import BOOT_DIR, ENV_EVENTS, ENV_OVERLAY, ENV_POLICY, child_env

LAKE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"

# What every child does: a relative write (redirected), a lakehouse write (denied), a read back.
STEP = """
import os, pathlib
def step(tag):
    pathlib.Path(f"reports/{tag}.txt").write_text(tag)
    try:
        open("data/lakehouse/BINANCE_BTCUSDT_1d.csv", "a")
    except PermissionError as e:
        assert e.rule == "lakehouse-read-only", e
    else:
        raise SystemExit(f"{tag}: the lakehouse write was not denied")
    assert pathlib.Path(f"reports/{tag}.txt").read_text() == tag
"""


def _env(env: RunEnv, *, overlay: bool = False) -> dict[str, str]:
    policy_file = Path(env.ws.run_storage, "config", "policy.json")
    policy_file.write_text(json.dumps(env.policy.to_dict()))
    base = {k: v for k, v in os.environ.items() if not k.startswith("TV_SANDBOX_")}
    events = os.path.join(env.ws.run_storage, "logs", "events.jsonl")
    return child_env(base, policy_file=str(policy_file), events_file=events, overlay=overlay)


def _run(env: RunEnv, code: str, child: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(env.ws.tmp, "child_main.py")
    script.write_text(STEP + textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        env=child or _env(env),
        cwd=env.ws.root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _landed(env: RunEnv, *tags: str) -> None:
    for tag in tags:
        assert Path(env.ws.run_storage, "reports", f"{tag}.txt").read_text() == tag
    events = read_events(os.path.join(env.ws.run_storage, "logs", "events.jsonl"))
    assert sum(e["action"] == "deny" and e["rule"] == "lakehouse-read-only" for e in events) >= len(tags)


def test_child_env_sets_the_three_variables_and_pythonpath() -> None:
    out = child_env(
        {"PYTHONPATH": f"/a{os.pathsep}{BOOT_DIR}", "X": "1"},
        policy_file="/p.json",
        events_file=None,
        overlay=True,
    )
    assert out["PYTHONPATH"] == f"{BOOT_DIR}{os.pathsep}/a" and out["X"] == "1"
    assert out[ENV_POLICY] == "/p.json" and ENV_EVENTS not in out and out[ENV_OVERLAY] == "1"
    assert os.listdir(BOOT_DIR) == ["sitecustomize.py"] or set(os.listdir(BOOT_DIR)) == {
        "sitecustomize.py",
        "__pycache__",
    }


def test_subprocess_child(run_env: RunEnv) -> None:
    before = run_env.protected_snapshot()
    r = _run(run_env, "step('subprocess')")
    assert r.returncode == 0, r.stderr
    _landed(run_env, "subprocess")
    assert run_env.protected_snapshot() == before


def test_os_system_grandchild(run_env: RunEnv) -> None:
    inner = Path(run_env.ws.tmp, "inner.py")
    inner.write_text(STEP + "step('system')\n")
    r = _run(
        run_env,
        f"""
        import os, sys
        status = os.system(f"{{sys.executable}} {inner}")
        raise SystemExit(os.waitstatus_to_exitcode(status))
    """,
    )
    assert r.returncode == 0, r.stderr
    _landed(run_env, "system")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_children(run_env: RunEnv, method: str) -> None:
    # The step's $TMPDIR, as the runner sets it, through a short link: the forkserver's socket
    # path must fit in sun_path (108 bytes), and pytest's folders are deep.
    short = tempfile.mkdtemp(prefix="tvs-")
    os.rmdir(short)
    os.symlink(run_env.ws.tmp, short)
    env = {**_env(run_env), "TMPDIR": short}
    try:
        r = _run(
            run_env,
            f"""
        import multiprocessing as mp
        if __name__ == "__main__":
            ctx = mp.get_context("{method}")
            p = ctx.Process(target=step, args=("{method}",))
            p.start()
            p.join()
            raise SystemExit(p.exitcode)
        """,
            env,
        )
    finally:
        os.unlink(short)
    assert r.returncode == 0, r.stderr
    _landed(run_env, method)


@pytest.mark.parametrize("alias", [False, True], ids=["plain", "boot-dir-alias"])
def test_a_user_sitecustomize_still_runs(run_env: RunEnv, tmp_path: Path, alias: bool) -> None:
    user = tmp_path / "usersite"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import builtins\nbuiltins.USER_SITECUSTOMIZE = True\n")
    env = _env(run_env)
    if alias:  # the guard's own folder again, spelled through a symlink: skipped, not re-run
        os.symlink(BOOT_DIR, tmp_path / "boot-alias")
        env["PYTHONPATH"] += os.pathsep + str(tmp_path / "boot-alias")
    env["PYTHONPATH"] += os.pathsep + str(user)
    r = _run(
        run_env,
        """
        import builtins, sys
        import sandbox.guard
        assert getattr(builtins, "USER_SITECUSTOMIZE", False), "the user's sitecustomize did not run"
        assert sandbox.guard.active() is not None, "the guard is not active"
        assert sys.modules["sitecustomize"].__file__.startswith(USER_DIR)
        step("composed")
    """.replace("USER_DIR", repr(str(user))),
        env,
    )
    assert r.returncode == 0, r.stderr
    _landed(run_env, "composed")


def test_a_broken_policy_fails_closed_with_one_line(run_env: RunEnv) -> None:
    env = _env(run_env)
    Path(env[ENV_POLICY]).write_text("{not json")
    r = subprocess.run(
        [sys.executable, "-c", "print('user code ran')"],
        env=env,
        cwd=run_env.ws.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tv-sandbox: the Python guard could not start")
    assert "refusing to run unguarded" in lines[0] and "policy.json" in lines[0]


def test_a_missing_policy_variable_fails_closed(run_env: RunEnv) -> None:
    env = _env(run_env)
    del env[ENV_POLICY]
    r = subprocess.run(
        [sys.executable, "-c", "print('user code ran')"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and r.stdout == "" and ENV_POLICY in r.stderr


def test_overlay_flag_reaches_the_child(run_env: RunEnv) -> None:
    r = _run(
        run_env,
        """
        import sandbox.guard
        assert sandbox.guard.active().engine.overlay
    """,
        _env(run_env, overlay=True),
    )
    assert r.returncode == 0, r.stderr
