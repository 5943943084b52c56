"""``sandbox/_execute.py``, the one executor of decisions of the guard and the fsspec filesystem
(issue 12): cheap to import (every sandboxed interpreter loads it), the names it shares with the
rest, and its copy-up over a backend that is not the local disk (fsspec's memory filesystem).
What both enforcers do with it, file by file, is held by tests/test_cases.py, tests/test_drifts.py
and the agreement test (tests/test_properties.py)."""

from __future__ import annotations

import subprocess
import sys

import fsspec
import pytest

from sandbox import _execute
from sandbox.events import FIELDS
from sandbox.fs._routing import BackendFiles


def test_it_imports_only_the_model_and_the_base() -> None:
    code = (
        "import sys; before = set(sys.modules); import sandbox._execute; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert "sandbox._execute" in loaded
    ours = {m for m in loaded if m.startswith("sandbox")}
    assert ours <= {
        "sandbox",
        "sandbox._denied",
        "sandbox._execute",
        "sandbox._lazy",
        "sandbox._paths",
        "sandbox._record",
        "sandbox.errors",
        "sandbox.policy",
        "sandbox.rules",
    }, sorted(ours)
    assert loaded - ours <= {"__future__", "errno"}, sorted(loaded - ours)


def test_the_event_fields_are_the_logs() -> None:
    assert FIELDS[:2] == ("time", "pid") and FIELDS[2:] == _execute.EVENT_FIELDS


def test_the_environment_names_are_the_bootstraps() -> None:
    """``guard/bootstrap.py`` still spells them itself (it is on the launcher's path): the same."""
    from sandbox.guard import bootstrap

    assert (bootstrap.ENV_POLICY, bootstrap.ENV_EVENTS, bootstrap.ENV_OVERLAY) == (
        _execute.ENV_POLICY,
        _execute.ENV_EVENTS,
        _execute.ENV_OVERLAY,
    )


def test_nothing_to_do_is_one_sentinel() -> None:
    assert repr(_execute.NOTHING_TO_DO) == "NOTHING_TO_DO"
    assert _execute.NOTHING_TO_DO is not None and not isinstance(_execute.NOTHING_TO_DO, str)


def test_emit_gives_a_callback_the_record_with_the_profile() -> None:
    from sandbox.policy import Action, Decision, Op

    got: list[dict[str, object]] = []
    d = Decision(Action.REDIRECT, "workspace-redirect", "/ws/x", target="/run/x")
    _execute.emit(got.append, "fsspec", "production", d, Op.WRITE, "x", "/ws/x", "/run/x")
    assert got == [
        {
            "layer": "fsspec",
            "op": "write",
            "action": "redirect",
            "rule": "workspace-redirect",
            "path": "x",
            "resolved": "/ws/x",
            "target": "/run/x",
            "captured": False,
            "profile": "production",
            "reason": d.reason,
            "hint": d.hint,
        }
    ]


@pytest.fixture
def memory() -> fsspec.AbstractFileSystem:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    return fs


def test_copy_up_of_a_tree_over_a_remote_backend(memory: fsspec.AbstractFileSystem) -> None:
    memory.pipe_file("/host/a/x.txt", b"x")
    memory.pipe_file("/host/a/sub/y.txt", b"y")
    files = BackendFiles(memory, local=False)
    assert files.kind("/host/a", True) == _execute.DIR and files.kind("/host/nope", True) is None
    assert _execute.make_parent(files, "/run/a", "/host/a")  # the original's folder exists
    _execute.copy_up(files, "/host/a", "/run/a", False, tree=True)
    assert memory.cat_file("/run/a/x.txt") == b"x" and memory.cat_file("/run/a/sub/y.txt") == b"y"
    memory.pipe_file("/run/a/x.txt", b"the run's")
    _execute.copy_up(files, "/host/a/x.txt", "/run/a/x.txt", True)  # a copy that exists stays
    assert memory.cat_file("/run/a/x.txt") == b"the run's"
    assert not _execute.make_parent(files, "/run/b/new", "/host/b/new")  # neither folder exists
    assert not memory.exists("/run/b")
