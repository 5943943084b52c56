"""Installing the guard: undoable, nestable, pausable (pyfakefs' way).

The patches are made once, by the first :func:`install`: every change is recorded (owner, name,
previous value; or a set it was added to) and undone in reverse when the last guard goes, so every
patched name is restored exactly (``is``-identical). Installs stack: the wrappers ask the innermost
active :class:`~sandbox.guard._engine.Engine`; ``Guard.uninstall`` takes one off. ``paused()``
stacks a "no guard" over them for a while. Patching and the stack are under a lock; deciding is pure,
so threads (a Ray actor's) share one guard safely. Pausing, like the patches, is process-wide.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
from _thread import allocate_lock

from sandbox.guard import _audit, _engine
from sandbox.guard._engine import Engine
from sandbox.guard._files import o_open
from sandbox.guard._listing import read_wrappers
from sandbox.guard._os import GuardedFileIO, guarded_open, os_wrappers
from sandbox.policy import Policy, PolicySpec, bind_for_library

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_LOCK = allocate_lock()
_SUPPORTS = ("supports_dir_fd", "supports_fd", "supports_follow_symlinks", "supports_effective_ids")
#: Modules known to bind ``open`` at import (``from builtins import open as bltn_open``).
_BOUND_OPEN = (("tarfile", "bltn_open"),)


class _Patches:
    """Recorded changes, undone in reverse."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def setattr(self, owner: Any, name: str, value: Any) -> None:
        old = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))

    def add(self, members: set[Any], value: Any) -> None:
        if value not in members:
            members.add(value)
            self._undo.append(lambda: members.discard(value))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


_patches: _Patches | None = None


def _patch_all() -> _Patches:
    p = _Patches()
    p.setattr(builtins, "open", guarded_open)
    p.setattr(io, "open", guarded_open)
    p.setattr(io, "FileIO", GuardedFileIO)
    for name, wrapper in {**os_wrappers(), **read_wrappers()}.items():
        orig = getattr(os, name)
        p.setattr(os, name, wrapper)
        # shutil.rmtree and friends pick their code path by these sets: keep the answers true
        for sname in _SUPPORTS:
            members = getattr(os, sname, None)
            if isinstance(members, set) and orig in members:
                p.add(members, wrapper)
    for modname, attr in _BOUND_OPEN:
        mod = sys.modules.get(modname)
        if mod is not None and getattr(mod, attr, None) is o_open:
            p.setattr(mod, attr, guarded_open)
    return p


def _refresh() -> None:
    _engine.CURRENT = _engine.STACK[-1] if _engine.STACK else None


class Guard:
    """One installed guard. ``uninstall()`` (idempotent) or use it as a context manager."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    @property
    def active(self) -> bool:
        return self.engine in _engine.STACK

    def uninstall(self) -> None:
        global _patches
        with _LOCK:
            stack = _engine.STACK
            if self.engine not in stack:
                return
            del stack[len(stack) - 1 - stack[::-1].index(self.engine)]
            if not any(e is not None for e in stack):
                stack.clear()
                if _patches is not None:
                    _patches.undo()
                    _patches = None
            _refresh()
        if self.engine.events is not None:
            self.engine.events.flush()

    def paused(self) -> _Paused:
        """Context manager: the guard (every guard: patches are process-wide) does nothing inside."""
        return _Paused()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        return f"Guard({self.engine.policy!r}, active={self.active})"


class _Paused:
    def __enter__(self) -> None:
        with _LOCK:
            _engine.STACK.append(None)
            _refresh()

    def __exit__(self, *exc: object) -> None:
        with _LOCK:
            stack = _engine.STACK
            if None in stack:
                del stack[len(stack) - 1 - stack[::-1].index(None)]
            _refresh()


def install(
    policy: Policy | PolicySpec,
    *,
    events: Any = None,
    overlay: bool = False,
    host: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    mode: str = "enforce",
) -> Guard:
    """Install the Python guard for ``policy`` in this process and return it (see the package doc).

    ``policy``: a bound :class:`~sandbox.policy.Policy`, or what ``load_policy`` returns (a
    :class:`~sandbox.policy.PolicySpec`) with the run it applies to -- ``host`` and ``run_id``
    (and ``mode``) -- bound here as ``PolicySpec.bind(host=..., run_id=...)`` does.
    ``events``: an :class:`~sandbox.events.EventLog` every deny and redirect is appended to.
    ``overlay``: the kernel layer's overlay is active (workspace redirects run on the original path).
    The :class:`Guard` is a context manager: ``with install(policy): ...`` uninstalls it at the end.
    """
    global _patches
    eng = Engine(bind_for_library(policy, host, run_id, mode), events, overlay)
    with _LOCK:
        if _patches is None:
            _patches = _patch_all()
        _audit.ensure_hook()
        _engine.STACK.append(eng)
        _refresh()
    return Guard(eng)



def active() -> Guard | None:
    """The innermost installed guard of this process (None when there is none or it is paused)."""
    eng = _engine.CURRENT
    return Guard(eng) if eng is not None else None
