"""What a script does to a fake host: every read, write, denial and redirect, with the caller's
file:line, decided by the run's policy. Built on pyfakefs (imported here and in the pytest plugin
only; the library never imports it).

:class:`Tracer` wraps pyfakefs's own entry points (``FakeFileOpen.call`` and the mutators of
``FakeFilesystem``), so ``open``, ``os``, ``pathlib``, ``shutil`` and the libraries built on them are
all seen the same way. It only observes: the fake filesystem is throwaway, so a write the sandbox
would deny or redirect happens there, and the event says what the sandbox would have done
(``action``, ``rule``, ``target``). Native code (pyarrow's C++ writer) and child processes never
pass through pyfakefs: they reach the real disk, which the dynamic audit watches separately.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyfakefs
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_open import FakeFileOpen

from sandbox.policy import Action, Op, Policy

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the sandbox package
_LIBS = tuple(
    {
        os.path.dirname(os.path.abspath(pyfakefs.__file__)) + os.sep,
        _HERE + os.sep,
        *(
            os.path.realpath(p) + os.sep
            for k in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(k))
        ),
    }
)
_WRITE_CHARS = frozenset("wax+")
#: FakeFilesystem methods that change the tree: the op, and which positional arguments are paths.
_MUTATORS: dict[str, tuple[Op, tuple[int, ...]]] = {
    "remove": (Op.DELETE, (0,)),
    "remove_object": (Op.DELETE, (0,)),
    "rename": (Op.RENAME, (0, 1)),
    "makedir": (Op.MKDIR, (0,)),
    "makedirs": (Op.MKDIR, (0,)),
    "rmdir": (Op.RMDIR, (0,)),
    "create_symlink": (Op.LINK, (0,)),
    "link": (Op.LINK, (1,)),
    "chmod": (Op.METADATA, (0,)),
    "utime": (Op.METADATA, (0,)),
    "listdir": (Op.READ, (0,)),
}


def caller() -> tuple[str, int]:
    """The innermost frame of the user's own code (not the stdlib, site-packages, pyfakefs or
    tv-sandbox): the line that asked for the operation, through whatever library it called."""
    f = sys._getframe(1)
    fallback: tuple[str, int] | None = None
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith("<"):
            real = os.path.realpath(name) if not name.startswith(_LIBS) else name
            if not real.startswith(_LIBS):
                return name, f.f_lineno
            if fallback is None and not real.startswith(_HERE) and "pyfakefs" not in real:
                fallback = (name, f.f_lineno)
        f = f.f_back  # type: ignore[assignment]
    return fallback or ("<unknown>", 0)


class Tracer:
    """Record what happens on ``fs`` (see the module docstring). ``install`` / ``uninstall``, or
    ``with Tracer(fs, policy):``. ``events`` is a list of dicts (the JSON of the audit's events)."""

    def __init__(self, fs: FakeFilesystem, policy: Policy) -> None:
        self.fs, self.policy = fs, policy
        self.events: list[dict[str, Any]] = []
        self._depth = threading.local()
        self._saved: list[tuple[Any, str, Any]] = []

    # -- recording ----------------------------------------------------------------------------------

    def record(self, op: Op, arg: Any) -> None:
        try:
            text = os.fsdecode(os.fspath(arg))
        except TypeError:
            return  # a file descriptor: its path was seen when it was opened
        try:
            resolved = self.fs.absnormpath(self.fs.resolve_path(text))
        except (OSError, ValueError):
            resolved = self.fs.absnormpath(text)
        d = self.policy.decide(resolved, op)
        file, line = caller()
        self.events.append(
            {
                "op": op.value,
                "path": text,
                "resolved": resolved,
                "action": d.action.value,
                "rule": d.rule,
                "target": d.target,
                "reason": d.reason,
                "hint": d.hint,
                "file": file,
                "line": line,
            }
        )

    def _wrap(self, fn: Callable[..., Any], op_of: Callable[..., Iterator[tuple[Op, Any]]]) -> Any:
        depth = self._depth

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            level = getattr(depth, "n", 0)
            if level == 0:
                for op, arg in op_of(*args, **kwargs):
                    self.record(op, arg)
            depth.n = level + 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth.n = level

        return wrapper

    # -- patching -----------------------------------------------------------------------------------

    def install(self) -> Tracer:
        def open_ops(_self: Any, file_: Any, mode: str = "r", *a: Any, **kw: Any) -> Iterator[tuple[Op, Any]]:
            if isinstance(file_, int):
                return
            modes = kw.get("open_modes") or (a[6] if len(a) > 6 else None)
            if modes is not None:
                write = modes.can_write or modes.truncate or modes.append or modes.must_not_exist
            else:
                write = bool(_WRITE_CHARS.intersection(mode))
            yield (Op.WRITE if write else Op.READ), file_

        self._patch(FakeFileOpen, "call", open_ops)
        for name, (op, idx) in _MUTATORS.items():

            def ops(_self: Any, *a: Any, _op: Op = op, _idx: tuple[int, ...] = idx, **kw: Any) -> Any:
                for i in _idx:
                    if i < len(a):
                        yield _op, a[i]

            self._patch(FakeFilesystem, name, ops)
        return self

    def _patch(self, owner: Any, name: str, op_of: Callable[..., Iterator[tuple[Op, Any]]]) -> None:
        orig = owner.__dict__[name]
        fs = self.fs
        wrapped = self._wrap(orig, op_of)

        @functools.wraps(orig)
        def method(inner_self: Any, *a: Any, **kw: Any) -> Any:
            own = getattr(inner_self, "filesystem", inner_self) is fs
            return (wrapped if own else orig)(inner_self, *a, **kw)

        self._saved.append((owner, name, orig))
        setattr(owner, name, method)

    def uninstall(self) -> None:
        while self._saved:
            owner, name, orig = self._saved.pop()
            setattr(owner, name, orig)

    def __enter__(self) -> Tracer:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- views --------------------------------------------------------------------------------------

    def writes(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["op"] != Op.READ.value]

    def denials(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["action"] == Action.DENY.value]

    def redirects(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["action"] == Action.REDIRECT.value and e["op"] != Op.READ.value]
