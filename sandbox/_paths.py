"""Path resolution shared by the enforcers: turn what a caller passed into the path the kernel will use.

The policy decides on *resolved* absolute paths; this module is the one place that produces them
(``str``/``bytes``/``PathLike``, relative to the current directory or to a ``dir_fd``, through
symlinks and ``..``, ``/proc/self/cwd``-style aliases). Stdlib only: the guard imports it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Any

_fspath = os.fspath
_getcwd = os.getcwd
_lstat = os.lstat
_readlink = os.readlink
_fsdecode = os.fsdecode


def _realpath(path: str) -> str:
    """``os.path.realpath(path)`` (non-strict) for a ``str``, with ``lstat``/``readlink`` bound here.

    The Python guard patches ``os.lstat`` and ``os.readlink`` (read-your-writes), and
    ``posixpath.realpath`` looks them up on the ``os`` module at every call: resolving through it
    would re-enter the guard. This is CPython 3.11's algorithm with the functions bound at import.
    """
    resolved, _ok = _join_real("", path, {})
    return posixpath.normpath(resolved if resolved.startswith("/") else posixpath.join(_getcwd(), resolved))


def _join_real(path: str, rest: str, seen: dict[str, str | None]) -> tuple[str, bool]:
    if rest.startswith("/"):
        rest, path = rest[1:], "/"
    while rest:
        name, _, rest = rest.partition("/")
        if not name or name == ".":
            continue
        if name == "..":
            if path:
                path, name = posixpath.split(path)
                if name == "..":
                    path = posixpath.join(path, "..", "..")
            else:
                path = ".."
            continue
        newpath = posixpath.join(path, name)
        try:
            is_link = stat.S_ISLNK(_lstat(newpath).st_mode)
        except OSError:
            is_link = False
        if not is_link:
            path = newpath
            continue
        if newpath in seen:  # a link met before: its value, or a loop
            cached = seen[newpath]
            if cached is not None:
                path = cached
                continue
            return posixpath.join(newpath, rest), False
        seen[newpath] = None
        path, ok = _join_real(path, _readlink(newpath), seen)
        if not ok:
            return posixpath.join(path, rest), False
        seen[newpath] = path
    return path, True


def to_str(path: Any) -> str:
    """``str`` form of a path argument (``str``, ``bytes`` or ``os.PathLike``); raises TypeError."""
    p: str | bytes = _fspath(path)
    if isinstance(p, bytes):
        return _fsdecode(p)
    return p


def parts(path: str) -> tuple[str, ...]:
    """Components of an absolute normalised path, without the root: ``/a/b`` -> ``("a", "b")``."""
    return tuple(c for c in path.split("/") if c)


def is_within(child: tuple[str, ...], parent: tuple[str, ...]) -> bool:
    """True when ``child`` is ``parent`` or below it, compared component by component."""
    return len(child) >= len(parent) and child[: len(parent)] == parent


def absolute(path: str, dir_fd: int | None = None) -> str:
    """Lexically absolute form of ``path``: joined to ``dir_fd``'s folder or the current directory."""
    if path.startswith("/"):
        return path
    base = _readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else _getcwd()
    return posixpath.join(base, path)


def resolve(path: Any, *, dir_fd: int | None = None, follow: bool = True) -> str:
    """The real absolute path an operation on ``path`` reaches.

    ``follow=False`` resolves every component but the last (``lstat``, ``unlink``, ``rename``, the
    name a ``symlink`` creates): the operation acts on the link itself, so the link's own folder is
    what must be allowed. ``..`` after a symlink is resolved the way the kernel does, through the
    link, because ``os.path.realpath`` walks component by component.
    """
    p = absolute(to_str(path), dir_fd)
    if follow:
        return _realpath(p)
    head, tail = posixpath.split(posixpath.normpath(p))
    if tail in ("", ".", ".."):
        return _realpath(p)
    return posixpath.join(_realpath(head), tail)
