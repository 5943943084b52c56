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

import _io
import functools
import io
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyfakefs
import pyfakefs.fake_file
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
#: The real ``open``, for real pipe descriptors: pyfakefs wraps a pipe (subprocess's, of a
#: ``check_output``) with ``open(fd)``, which under its own patched ``open`` recurses forever.
#: In a tuple: pyfakefs replaces every module attribute that *is* ``open`` with its fake.
_REAL = (_io.open, os, io)
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


_MISSING = object()


def add_library_paths(fs: FakeFilesystem) -> None:
    """Let libraries read their own data files on the fake filesystem (matplotlib's rc file,
    pandas' timezone data...): the interpreter's library folders, read-only and read lazily."""
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = paths.get(key)
        if p and not fs.exists(p):
            try:  # pyfakefs checks the real folder itself (this module's os may be the fake one)
                fs.add_real_directory(p, read_only=True, lazy_read=True)
            except OSError:
                pass


def caller() -> tuple[str, int, str | None]:
    """``(file, line, via)``: the innermost frame of the user's own code (not the stdlib,
    site-packages, pyfakefs or tv-sandbox) -- the line that asked for the operation -- and the
    library file that performed it for that line (None when the user's code did it itself)."""
    realpath = _REAL[1].path.realpath  # the real one: this module's os may be pyfakefs's
    f: Any = sys._getframe(1)
    via: str | None = None
    fallback: tuple[str, int, str | None] | None = None
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith("<"):
            real = name if name.startswith(_LIBS) else realpath(name)
            if not real.startswith(_LIBS):
                return name, f.f_lineno, via
            if not real.startswith(_HERE) and "pyfakefs" not in real:
                via = via or name
                fallback = fallback or (name, f.f_lineno, None)
        f = f.f_back
    return fallback or ("<unknown>", 0, None)


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
        file, line, via = caller()
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
                "via": via,
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
        self._saved.append((pyfakefs.fake_file, "open", pyfakefs.fake_file.__dict__.get("open", _MISSING)))
        pyfakefs.fake_file.open = _REAL[0]  # type: ignore[attr-defined]
        # A child process is real, and so are its pipes: pyfakefs's fake pipes break
        # ``subprocess.check_output`` (matplotlib's font lookup runs one at import).
        import subprocess

        for name, real in (("os", _REAL[1]), ("io", _REAL[2])):
            self._saved.append((subprocess, name, subprocess.__dict__.get(name, _MISSING)))
            setattr(subprocess, name, real)
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
            if orig is _MISSING:
                delattr(owner, name)
            else:
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
