"""Every case of tests/cases.py through the fsspec enforcer (``SandboxFileSystem`` over the local
filesystem), in enforce and audit mode, with the expectations stated in tests/cases.py."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

import pytest
from cases import CASES, Case
from conftest import RunEnv, tree_snapshot
from fs_adapter import CONTENT, Props, perform, prepare

from sandbox.fs import SandboxFileSystem

FOLLOW_NOT = {"delete", "rmdir", "rename_from", "rename_to", "symlink", "hardlink"}


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


def _original_bytes(env: RunEnv, case: Case) -> bytes:
    with open(_resolved(env, case), "rb") as fh:
        return fh.read()


def _check_effect(
    env: RunEnv, case: Case, props: Props, where: str, outcome: str, got: Any, before: bytes | None
) -> None:
    v = case.verb
    real = lambda p: os.path.realpath(p)  # noqa: E731  (a prop given through the workspace)
    if v == "write":
        assert Path(where).read_bytes() == CONTENT
    elif v == "append":
        assert Path(where).read_bytes() == (before or b"") + CONTENT
    elif v == "truncate":
        assert Path(where).read_bytes() == b""
    elif v in ("delete", "rmdir"):
        if outcome == "allow":
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
        assert os.path.samefile(where, real(props.src))
    elif v == "hardlink_from":
        assert os.path.samefile(props.dst, where)
    elif v == "chmod":
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o600
    elif v == "utime":
        assert Path(where).read_bytes() == before
    elif v == "read":
        assert got == before
    else:
        raise AssertionError(v)


@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(make_run_env: Any, monkeypatch: pytest.MonkeyPatch, case: Case, mode: str) -> None:
    env = make_run_env(mode)
    monkeypatch.chdir(env.ws.root)  # the steps' cwd (and what /proc/self/cwd resolves to)
    events: list[dict[str, Any]] = []
    fs = SandboxFileSystem(policy=env.policy, on_event=events.append)
    props = prepare(env, case)
    expect, rule = case.expect_in(mode), case.rule
    try:
        before: bytes | None = _original_bytes(env, case)
    except OSError:
        before = None
    protected = env.protected_snapshot()
    run_before = tree_snapshot(env.ws.run_storage)

    if expect == "deny":
        with pytest.raises(PermissionError) as ei:
            perform(fs, env, case, props)
        assert ei.value.errno == errno.EACCES
        assert getattr(ei.value, "layer", None) == "fsspec"
        if rule is not None:
            assert ei.value.rule == rule  # type: ignore[attr-defined]
        assert tree_snapshot(env.ws.run_storage) == run_before, "a denied call left something"
        assert any(e["action"] == "deny" for e in events)
    else:
        got = perform(fs, env, case, props)
        where = {
            "allow": env.abspath(case.path),
            "redirect": env.redirected(case.path),
            "captured": _audit_location(env, case) if expect == "captured" else "",
        }[expect]
        _check_effect(env, case, props, where, expect, got, before)
        if expect in ("redirect", "captured") and case.verb != "read":
            hits = [e for e in events if e["action"] == "redirect" and e["op"] != "read"]
            assert hits and hits[0]["captured"] == (expect == "captured")
            if rule is not None and expect == "redirect":
                assert hits[0]["rule"] == rule
    assert env.protected_snapshot() == protected, "the host (or outside) changed"
