"""Reads that see the run's writes: ``stat``/``lstat``/``access``/``readlink`` look at a redirect's
target first; ``listdir``/``scandir`` of a redirected folder MERGE the original folder's entries
with the target folder's (deduplicated; the target's entry wins, as an overlay's upper layer does);
a folder that exists only in the run folder exists, lists and can be entered (``chdir``).

``os.path.exists/isfile/isdir/getsize/islink/lexists``, ``os.walk``, ``glob`` and ``pathlib``'s
``exists/iterdir/glob/is_dir`` call these through the ``os`` module, so they see the same view.
"""

from __future__ import annotations

import os

from sandbox._denied import AccessDenied
from sandbox.guard import _engine
from sandbox.guard._engine import Engine
from sandbox.policy import Op

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

o_stat, o_lstat, o_access = os.stat, os.lstat, os.access
o_listdir, o_scandir, o_readlink = os.listdir, os.scandir, os.readlink
o_chdir, o_fchdir = os.chdir, os.fchdir
_MISSING = (FileNotFoundError, NotADirectoryError)


def stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
    g = _engine.CURRENT
    if g is not None and not g.native_reads and not isinstance(path, int):
        try:
            t = g.read_target(path, dir_fd, follow_symlinks)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        if t is not None:
            try:
                return o_stat(t, follow_symlinks=follow_symlinks)
            except _MISSING:
                pass
    if dir_fd is None and follow_symlinks:
        return o_stat(path)
    return o_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)


def lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
    g = _engine.CURRENT
    if g is not None and not g.native_reads:
        try:
            t = g.read_target(path, dir_fd, False)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        if t is not None:
            try:
                return o_lstat(t)
            except _MISSING:
                pass
    return o_lstat(path, dir_fd=dir_fd)


def access(
    path: Any,
    mode: int,
    *,
    dir_fd: int | None = None,
    effective_ids: bool = False,
    follow_symlinks: bool = True,
) -> bool:
    g = _engine.CURRENT
    if g is None or isinstance(path, int) or (g.native_reads and not mode & os.W_OK):
        return o_access(
            path, mode, dir_fd=dir_fd, effective_ids=effective_ids, follow_symlinks=follow_symlinks
        )
    try:
        t = None if g.native_reads else g.read_target(path, dir_fd, follow_symlinks)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    ok = False
    if t is not None:
        ok = o_access(t, mode, effective_ids=effective_ids, follow_symlinks=follow_symlinks)
    if not ok:
        ok = o_access(path, mode, dir_fd=dir_fd, effective_ids=effective_ids, follow_symlinks=follow_symlinks)
    if ok and mode & os.W_OK:  # writable as far as the file's bits go; is it for the policy?
        try:
            try:
                g.write_target(path, Op.WRITE, dir_fd=dir_fd, follow=follow_symlinks, copy_up=False)
            except AccessDenied as e:
                raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        except PermissionError:
            return False
    return ok


def readlink(path: Any, *, dir_fd: int | None = None) -> Any:
    g = _engine.CURRENT
    if g is not None and not g.native_reads:
        try:
            t = g.read_target(path, dir_fd, False)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        if t is not None:
            try:
                return o_readlink(t)
            except _MISSING:
                pass
    return o_readlink(path, dir_fd=dir_fd)


def _upper(g: Engine, path: Any) -> Any:
    """The run folder's copy of a folder to list, when the read is redirected and it exists."""
    try:
        return g.read_target(path)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)


def listdir(path: Any = None) -> list[Any]:
    g = _engine.CURRENT
    if g is None or g.native_reads or isinstance(path, int):
        return o_listdir(path)
    arg = "." if path is None else path
    t = _upper(g, arg)
    if t is None:
        return o_listdir(arg)
    try:
        upper = o_listdir(t)
    except FileNotFoundError:
        return o_listdir(arg)
    try:
        lower = o_listdir(arg)
    except _MISSING:
        return upper
    seen = set(lower)
    return lower + [n for n in upper if n not in seen]


class _Entry:
    """A target folder's ``os.DirEntry`` shown under the path the caller listed."""

    __slots__ = ("_e", "name", "path")

    def __init__(self, entry: os.DirEntry[Any], path: Any) -> None:
        self._e, self.name, self.path = entry, entry.name, path

    def inode(self) -> int:
        return self._e.inode()

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._e.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._e.is_file(follow_symlinks=follow_symlinks)

    def is_symlink(self) -> bool:
        return self._e.is_symlink()

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self._e.stat(follow_symlinks=follow_symlinks)

    def is_junction(self) -> bool:
        return False

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class _Merged:
    """``scandir`` of a redirected folder: the target's entries, then the original's not hidden."""

    def __init__(self, upper: list[_Entry], lower: Any) -> None:
        self._upper, self._lower = upper, lower
        self._it = self._entries()

    def _entries(self) -> Iterator[Any]:
        hidden = {e.name for e in self._upper}
        yield from self._upper
        if self._lower is not None:
            for e in self._lower:
                if e.name not in hidden:
                    yield e

    def __iter__(self) -> _Merged:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        if self._lower is not None:
            self._lower.close()

    def __enter__(self) -> _Merged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scandir(path: Any = None) -> Any:
    g = _engine.CURRENT
    if g is None or g.native_reads or isinstance(path, int):
        return o_scandir(path)
    arg = "." if path is None else path
    t = _upper(g, arg)
    if t is None:
        return o_scandir(arg)
    try:
        with o_scandir(t) as it:
            base = os.fspath(arg)
            sep: Any = b"/" if isinstance(base, bytes) else "/"
            prefix = base if base.endswith(sep) else base + sep  # as os.scandir joins them
            upper = [_Entry(e, prefix + e.name) for e in it]
    except FileNotFoundError:
        return o_scandir(arg)
    try:
        lower = o_scandir(arg)
    except _MISSING:
        lower = None
    return _Merged(upper, lower)


def chdir(path: Any) -> None:
    """``os.chdir``: a folder that exists only in the run folder can be entered (its copy there)."""
    g = _engine.CURRENT
    try:
        try:
            o_chdir(path)
        except FileNotFoundError:
            try:
                t = g.read_target(path) if g is not None and not isinstance(path, int) else None
            except AccessDenied as e:
                raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
            if t is None:
                raise
            o_chdir(t)
    finally:
        _engine.invalidate_all(cwd=True)


def fchdir(fd: int) -> None:
    try:
        o_fchdir(fd)
    finally:
        _engine.invalidate_all(cwd=True)


def read_wrappers() -> dict[str, Any]:
    return {
        "stat": stat,
        "lstat": lstat,
        "access": access,
        "readlink": readlink,
        "listdir": listdir,
        "scandir": scandir,
        "chdir": chdir,
        "fchdir": fchdir,
    }
