"""Where the guard and the fsspec filesystem once executed the same decision differently (issue 12):
each drift found by review, held as a regression test on both enforcers.

1. A hard link of a host-side symlink: ``link(2)`` links the symlink itself, so the copy-up of
   its source must copy the link as a link (the guard did; fsspec followed it with ``copy2``).
2. Every event names the run's profile (fsspec logged ``"profile": ""``).
3. ``os._exit`` (how multiprocessing's children end) flushes every event log of the process, the
   fsspec filesystem's too, not only the guard's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RunEnv

from sandbox.events import EventLog, read_events
from sandbox.fs import SandboxFileSystem
from sandbox.guard import install
from sandbox.loader import save_resolved

ENFORCERS = ("python", "fsspec")


def _link(layer: str, env: RunEnv, src: str, dst: str, log: EventLog | None = None) -> None:
    if layer == "fsspec":
        fs = SandboxFileSystem(policy=env.policy, on_event=None if log is None else log.write)
        fs.link(env.abspath(src), env.abspath(dst))
        return
    with install(env.policy, events=log):
        os.link(src, dst)


@pytest.mark.parametrize("layer", ENFORCERS)
def test_hard_link_of_a_host_symlink_is_a_link(
    run_env: RunEnv, monkeypatch: pytest.MonkeyPatch, layer: str
) -> None:
    env = run_env
    alias = env.host / "scripts" / "alias.py"
    os.symlink("legacy_step.py", alias)
    monkeypatch.chdir(env.ws.root)
    before = env.protected_snapshot()

    _link(layer, env, "scripts/alias.py", "scripts/hard.py")

    copied, hard = env.redirected("scripts/alias.py"), env.redirected("scripts/hard.py")
    for p in (copied, hard):
        assert os.path.islink(p), f"{layer}: {p} is not a link (the copy-up followed the link)"
        assert os.readlink(p) == "legacy_step.py"
    assert os.lstat(copied).st_ino == os.lstat(hard).st_ino  # one link, two names, as link(2) makes
    assert env.protected_snapshot() == before


@pytest.mark.parametrize("layer", ENFORCERS)
def test_events_name_the_profile(
    run_env: RunEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, layer: str
) -> None:
    env = run_env
    monkeypatch.chdir(env.ws.root)
    path = tmp_path / "events.jsonl"
    with EventLog(path) as log:
        _link(layer, env, "scripts/legacy_step.py", "scripts/hard.py", log)
    events = read_events(path)
    assert events and all(e["layer"] == layer for e in events)
    assert {e["profile"] for e in events} == {"production"}


CHILD = """
import os, sys
import fsspec.implementations.local  # before the guard: what the child imports is not the point
from sandbox.events import EventLog
from sandbox.fs import SandboxFileSystem
from sandbox.guard import install
from sandbox.loader import load_resolved

policy = load_resolved(sys.argv[1])
install(policy, events=EventLog(sys.argv[2]))  # as a sandboxed interpreter boots (bootstrap.boot)
fs = SandboxFileSystem(policy=policy, on_event=EventLog(sys.argv[2]).write)  # as in a step
fs.pipe_file(sys.argv[3], b"redirected, and the event still buffered\\n")
os._exit(0)  # past atexit, as a multiprocessing child ends
"""


def test_os_exit_flushes_the_fsspec_log(run_env: RunEnv, tmp_path: Path) -> None:
    env = run_env
    resolved = str(tmp_path / "policy.marshal")
    events = Path(env.ws.run_storage) / "logs" / "sandbox_events.jsonl"  # where a step's log is
    events.parent.mkdir(exist_ok=True)
    save_resolved(env.policy, resolved)
    target = env.abspath("reports/from_child.csv")
    child_env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("TV_SANDBOX")}
    child_env["TV_SANDBOX_EVENTS"] = str(events)  # the run's log, as in a step (the guard lets it open)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, resolved, str(events), target],
        cwd=env.ws.root,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Path(env.redirected("reports/from_child.csv")).is_file()
    got = read_events(events) if events.exists() else []
    fs_events = [(e["action"], e["op"], e["path"]) for e in got if e["layer"] == "fsspec"]
    assert fs_events == [("redirect", "write", target)]


def test_the_step_environment_is_named_once() -> None:
    """The variables a sandboxed step's interpreters read were spelled in four modules (bootstrap,
    the executor, the audit hook, the audit's child): now only in ``sandbox.rules``, and in the
    one file that runs before the package can be imported (the guard's ``sitecustomize``)."""
    import ast

    from sandbox import rules

    names = {rules.ENV_POLICY, rules.ENV_EVENTS, rules.ENV_OVERLAY, rules.ENV_IMAGE}
    package = Path(rules.__file__).parent
    spelled: dict[str, set[str]] = {}
    for src in package.rglob("*.py"):
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.setdefault(str(src.relative_to(package)), set()).add(node.value)
    assert spelled == {"rules.py": names, "guard/boot/sitecustomize.py": {rules.ENV_IMAGE}}, spelled
