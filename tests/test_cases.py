"""Every case of tests/cases.py through each in-process enforcer -- the Python guard (in process)
and the fsspec filesystem (``SandboxFileSystem`` over the local filesystem) -- in enforce and audit
mode, held to the same expectations (tests/cases.py) by the same checks. The kernel layer meets the
same table through real runs in tests/escapes and tests/kernel."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fs_adapter
import guard_adapter
import pytest
from cases import CASES, VERBS, Case, prepare
from conftest import RunEnv, tree_snapshot

from sandbox.events import EventLog, read_events
from sandbox.fs import SandboxFileSystem
from sandbox.guard import install

FOLLOW_NOT = {"delete", "rmdir", "rename_from", "rename_to", "symlink", "hardlink"}
ENFORCERS = ("python", "fsspec")  # the layer each names in its errors and events


def test_every_verb_has_a_python_form() -> None:
    assert set(guard_adapter.VERBS) == set(VERBS)


def _resolved(env: RunEnv, case: Case) -> str:
    p = env.abspath(case.path)
    if case.verb in FOLLOW_NOT:
        head, tail = posixpath.split(posixpath.normpath(p))
        return posixpath.join(os.path.realpath(head), tail)
    return os.path.realpath(p)


def _audit_location(env: RunEnv, case: Case) -> str:
    """$TV_RUN_DIR/audit/<rel>, with <rel> worked out from the real path, independently of the
    policy: a mount's real target counts as its workspace path."""
    real = _resolved(env, case)
    rel = None
    for name, target in env.ws.mount_targets.items():
        if Path(real).is_relative_to(target):
            rel = posixpath.join(env.ws.layout.mounts()[name], os.path.relpath(real, target))
    for root in (str(env.host), env.ws.root):
        if rel is None and Path(real).is_relative_to(root):
            rel = os.path.relpath(real, root)
    assert rel is not None, real
    return posixpath.join(env.ws.run_storage, "audit", rel)


def _check_effect(
    layer: str, case: Case, props: Any, where: str, outcome: str, got: Any, before: bytes | None
) -> None:
    content = guard_adapter.CONTENT if layer == "python" else fs_adapter.CONTENT
    v = case.verb
    if v == "write":
        assert Path(where).read_bytes() == content
    elif v == "append":
        assert Path(where).read_bytes() == (before or b"") + content
    elif v == "truncate":
        assert Path(where).read_bytes() == b""
    elif v in ("delete", "rmdir"):
        if outcome != "captured":
            assert not os.path.lexists(where)
    elif v == "mkdir":
        assert os.path.isdir(where)
    elif v == "rename_from":
        assert os.path.lexists(props.dst)
        if outcome == "allow":
            assert not os.path.lexists(where)
    elif v == "rename_to":
        assert os.path.lexists(where) and not os.path.lexists(props.src)
    elif v == "symlink":
        assert os.path.islink(where)
    elif v == "hardlink":
        assert os.path.samefile(where, os.path.realpath(props.src))
    elif v == "hardlink_from":  # one inode, two names (a symlink's link is a symlink: not followed)
        assert os.lstat(props.dst).st_ino == os.lstat(where).st_ino
    elif v == "chmod":
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o600
    elif v == "utime":
        assert Path(where).read_bytes() == before
        if layer == "python":  # fsspec's touch sets "now", not a given time
            assert os.stat(where).st_mtime == guard_adapter.UTIME
    elif v == "read":
        assert got == before
    else:
        raise AssertionError(v)


def _runner(
    layer: str, env: RunEnv, tmp_path: Path
) -> tuple[Callable[[Case, Any], Any], Callable[[], list[Any]]]:
    """(perform(case, props), events()) through the enforcer named ``layer``."""
    if layer == "fsspec":
        events: list[dict[str, Any]] = []
        fs = SandboxFileSystem(policy=env.policy, on_event=events.append)
        return (lambda case, props: fs_adapter.perform(fs, env, case, props)), lambda: events
    log_path = tmp_path / "events.jsonl"

    def perform(case: Case, props: Any) -> Any:
        with EventLog(log_path) as log, install(env.policy, events=log):
            return guard_adapter.perform(env, case, props)

    return perform, lambda: read_events(log_path) if log_path.exists() else []


@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize("layer", ENFORCERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(
    make_run_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: Case, layer: str, mode: str
) -> None:
    env = make_run_env(mode)
    monkeypatch.chdir(env.ws.root)  # the steps' cwd (and what /proc/self/cwd resolves to)
    props = prepare(env, case)
    perform, events = _runner(layer, env, tmp_path)
    expect, rule = case.expect_in(mode), case.rule
    try:
        before: bytes | None = Path(_resolved(env, case)).read_bytes()
    except OSError:
        before = None
    protected = env.protected_snapshot()
    run_before = tree_snapshot(env.ws.run_storage)

    if expect == "deny":
        with pytest.raises(PermissionError) as ei:
            perform(case, props)
        assert ei.value.errno == errno.EACCES
        assert getattr(ei.value, "layer", None) == layer
        if rule is not None:
            assert ei.value.rule == rule  # type: ignore[attr-defined]
        assert tree_snapshot(env.ws.run_storage) == run_before, "a denied call left something"
        assert any(e["action"] == "deny" for e in events())
    else:
        got = perform(case, props)
        where = {
            "allow": env.abspath(case.path),
            "redirect": env.redirected(case.lands or case.path),
            "captured": _audit_location(env, case) if expect == "captured" else "",
        }[expect]
        _check_effect(layer, case, props, where, expect, got, before)
        if expect == "captured" and case.verb not in ("delete", "rmdir", "rename_from"):
            # (a captured removal leaves the host's file and is recorded in the event log only)
            audit = Path(env.ws.run_storage) / "audit"
            assert audit.is_dir() and any(audit.iterdir()), "nothing landed under $TV_RUN_DIR/audit"
        if expect in ("redirect", "captured") and case.verb != "read":
            hits = [e for e in events() if e["action"] == "redirect" and e["op"] != "read"]
            assert hits and hits[0]["captured"] == (expect == "captured") and hits[0]["layer"] == layer
            if rule is not None and expect == "redirect":
                assert hits[0]["rule"] == rule
        if expect == "allow":
            assert not [e for e in events() if e["action"] == "deny"]
    assert env.protected_snapshot() == protected, "the host (or outside) changed"
