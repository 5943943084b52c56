"""Every case of tests/cases.py through the Python guard, in process, in enforce and audit mode,
with the expectations stated in tests/cases.py (the same checks as tests/test_fs_cases.py)."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

import pytest
from cases import CASES, VERBS, Case
from conftest import RunEnv, tree_snapshot
from guard_adapter import CONTENT, UTIME, Props, perform, prepare
from guard_adapter import VERBS as ADAPTED

from sandbox.events import EventLog, read_events
from sandbox.guard import guarded

FOLLOW_NOT = {"delete", "rmdir", "rename_from", "rename_to", "symlink", "hardlink"}


def test_every_verb_has_a_python_form() -> None:
    assert set(ADAPTED) == set(VERBS)


def _resolved(env: RunEnv, case: Case) -> str:
    p = env.abspath(case.path)
    if case.verb in FOLLOW_NOT:
        head, tail = posixpath.split(posixpath.normpath(p))
        return posixpath.join(os.path.realpath(head), tail)
    return os.path.realpath(p)


def _audit_location(env: RunEnv, case: Case) -> str:
    """$TV_RUN_DIR/audit/<rel>, worked out from the real path independently of the policy."""
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
    env: RunEnv, case: Case, props: Props, where: str, outcome: str, got: Any, before: bytes | None
) -> None:
    v = case.verb
    if v == "write":
        assert Path(where).read_bytes() == CONTENT
    elif v == "append":
        assert Path(where).read_bytes() == (before or b"") + CONTENT
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
    elif v == "hardlink_from":
        assert os.path.samefile(props.dst, where)
    elif v == "chmod":
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o600
    elif v == "utime":
        assert os.stat(where).st_mtime == UTIME and Path(where).read_bytes() == before
    elif v == "read":
        assert got == before
    else:
        raise AssertionError(v)


@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(
    make_run_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: Case, mode: str
) -> None:
    env = make_run_env(mode)
    monkeypatch.chdir(env.ws.root)  # the steps' cwd (and what /proc/self/cwd resolves to)
    props = prepare(env, case)
    expect, rule = case.expect_in(mode), case.rule
    try:
        before: bytes | None = Path(_resolved(env, case)).read_bytes()
    except OSError:
        before = None
    protected = env.protected_snapshot()
    run_before = tree_snapshot(env.ws.run_storage)
    log_path = tmp_path / "events.jsonl"

    with EventLog(log_path) as log, guarded(env.policy, events=log):
        if expect == "deny":
            with pytest.raises(PermissionError) as ei:
                perform(env, case, props)
            got = None
        else:
            got = perform(env, case, props)
    events = read_events(log_path)

    if expect == "deny":
        assert ei.value.errno == errno.EACCES
        assert getattr(ei.value, "layer", None) == "python"
        if rule is not None:
            assert ei.value.rule == rule  # type: ignore[attr-defined]
        assert tree_snapshot(env.ws.run_storage) == run_before, "a denied call left something"
        assert any(e["action"] == "deny" for e in events)
    else:
        where = {
            "allow": env.abspath(case.path),
            "redirect": env.redirected(case.path),
            "captured": _audit_location(env, case) if expect == "captured" else "",
        }[expect]
        _check_effect(env, case, props, where, expect, got, before)
        if expect == "captured":
            audit = Path(env.ws.run_storage) / "audit"
            assert audit.is_dir() and any(audit.iterdir()), "nothing landed under $TV_RUN_DIR/audit"
        if expect in ("redirect", "captured") and case.verb != "read":
            hits = [e for e in events if e["action"] == "redirect" and e["op"] != "read"]
            assert hits and hits[0]["captured"] == (expect == "captured")
            assert hits[0]["layer"] == "python" and hits[0]["profile"] == "production"
            if rule is not None and expect == "redirect":
                assert hits[0]["rule"] == rule
        if expect == "allow":
            assert not [e for e in events if e["action"] == "deny"]
    assert env.protected_snapshot() == protected, "the host (or outside) changed"
