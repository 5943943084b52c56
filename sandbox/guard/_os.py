"""The patched mutators: ``open``/``io.open``/``io.FileIO``, ``os.open`` and the ``os`` functions
that change the filesystem, each routed through :class:`~sandbox.guard._engine.Engine`.

Every wrapper starts with ``g = _engine.CURRENT``; None (no guard, or paused) calls the original
untouched. ``os.makedirs``, ``os.removedirs``, ``os.renames``, ``shutil``, ``tempfile`` and
``pathlib`` (3.11) call these through the ``os`` module's attributes, so they are covered without
wrappers of their own. A wrapper puts the path object it hands to the original in
``_engine.TOKEN`` so the audit hook does not decide the same call twice.
"""

from __future__ import annotations

import errno
import os
from abc import ABCMeta

from sandbox._denied import AccessDenied
from sandbox._execute import NOTHING_TO_DO
from sandbox.guard import _engine
from sandbox.guard._engine import TOKEN, Upper
from sandbox.guard._files import (
    at,
    copy_up_path,
    lexists,
    move_across,
    o_exit,
    o_FileIO,
    o_open,
    o_os_open,
    structural,
)
from sandbox.policy import Op

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_O_NOFOLLOW = os.O_NOFOLLOW
#: A truncating open of the run folder's existing copy (``Engine.write_target(upper=True)``): never
#: creates, never follows a link at the last name.
_REWRITE = os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
#: The modes a rewrite in place serves (text ones; binary ones: ``_REWRITE_BINARY``).
_REWRITE_TEXT = {"w": os.O_WRONLY, "wt": os.O_WRONLY, "w+": os.O_RDWR, "w+t": os.O_RDWR, "wt+": os.O_RDWR}
_REWRITE_BINARY = {"wb": os.O_WRONLY, "w+b": os.O_RDWR, "wb+": os.O_RDWR}
_REWRITE_PLAIN = {**_REWRITE_TEXT, **_REWRITE_BINARY}
_STR_OR_NONE = (str, type(None))


def _rewrite_flags(
    mode: str, buffering: int, encoding: Any, errors: Any, newline: Any, closefd: bool, opener: Any
) -> int | None:
    """The open flags of a rewrite in place, for arguments ``open`` accepts before it opens
    anything (any error of ``open`` then comes after, and closes the descriptor); else None."""
    if opener is not None or closefd is not True or type(buffering) is not int:
        return None
    flags = _REWRITE_TEXT.get(mode)
    if flags is not None:
        ok = buffering != 0 and type(encoding) in _STR_OR_NONE and type(errors) in _STR_OR_NONE
        return flags if ok and type(newline) in _STR_OR_NONE else None
    if encoding is None and errors is None and newline is None:
        return _REWRITE_BINARY.get(mode)
    return None


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# open() modes: 0 read, 1 write (truncating or creating), 2 write keeping content (copy-up), 3 create
_MODES: dict[str, int] = {}


def _mode_kind(mode: str) -> int:
    kind = _MODES.get(mode)
    if kind is None:
        if "x" in mode:
            kind = 3
        elif "w" in mode:
            kind = 1
        elif "a" in mode or "+" in mode:
            kind = 2
        else:
            kind = 0
        if len(_MODES) < 64:
            _MODES[mode] = kind
    return kind


def _show_as(f: Any, name: Any) -> None:
    """A redirected file keeps the caller's name (``f.name``), as a file of an overlay would."""
    raw = getattr(f, "buffer", f)
    raw = getattr(raw, "raw", raw)
    try:
        raw.name = name
    except (AttributeError, TypeError):
        pass


def guarded_open(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Callable[[str, int], int] | None = None,
) -> Any:
    """``open`` under the guard (``builtins.open`` and ``io.open``)."""
    g = _engine.CURRENT
    if g is None or isinstance(file, int):
        return o_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    kind = _MODES.get(mode)
    if kind is None:
        kind = _mode_kind(mode) if type(mode) is str else 0
    if kind == 0:
        if g.native_reads:
            return o_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        try:
            t = g.read_target(file)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        if t is not None:
            try:
                f = o_open(t, mode, buffering, encoding, errors, newline, closefd, opener)
            except (FileNotFoundError, NotADirectoryError):
                pass
            else:
                _show_as(f, file)
                return f
        return o_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    try:
        target = g.write_target(
            file, Op.WRITE, follow=kind != 3, copy_up=kind == 2, excl=kind == 3, upper=kind == 1
        )
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    if type(target) is Upper:
        plain = encoding is None and errors is None and newline is None and opener is None
        if plain and closefd is True and buffering == -1 and type(buffering) is int:
            flags = _REWRITE_PLAIN.get(mode)  # open(p, "w"): the common case
        else:
            flags = _rewrite_flags(mode, buffering, encoding, errors, newline, closefd, opener)
        done = None if flags is None else _rewrite(target, flags, mode, buffering, encoding, errors, newline)
        if done is not None:
            _show_as(done, file)
            return done
        target = None  # a new name, or not a plain file: through the overlay, as the caller wrote it
    path = TOKEN.obj = file if target is None else target
    try:
        f = o_open(path, mode, buffering, encoding, errors, newline, closefd, opener)
    finally:
        TOKEN.obj = None
    if target is not None:
        _show_as(f, file)
    return f


def _rewrite(
    upper: str,
    flags: int,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> Any:
    """Open the run folder's existing copy ``upper`` as ``open(upper, mode)`` would, but without
    creating it or following a link at its last name: None when that fails (the caller then opens
    its own path through the overlay, which creates or follows as the kernel does)."""
    TOKEN.obj = upper
    try:
        fd = o_os_open(upper, flags | _REWRITE)
    except OSError:
        return None
    finally:
        TOKEN.obj = None
    return o_open(fd, mode, buffering, encoding, errors, newline, True, None)  # closes fd if it fails


class _FileIOType(ABCMeta):
    # ``isinstance(open(p, "rb", buffering=0), io.FileIO)`` stays true under the guard
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, o_FileIO)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, o_FileIO)


class GuardedFileIO(o_FileIO, metaclass=_FileIOType):
    """``io.FileIO`` under the guard: the check happens in ``__init__``."""

    def __init__(
        self,
        file: Any,
        mode: str = "r",
        closefd: bool = True,
        opener: Callable[[str, int], int] | None = None,
    ) -> None:
        g = _engine.CURRENT
        if g is None or isinstance(file, int):
            super().__init__(file, mode, closefd, opener)
            return
        kind = _mode_kind(mode) if type(mode) is str else 0
        target: Any
        if kind == 0 and g.native_reads:
            super().__init__(file, mode, closefd, opener)
            return
        if kind == 0:
            try:
                target = g.read_target(file)
            except AccessDenied as e:
                raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
            if target is not None:
                try:
                    super().__init__(target, mode, closefd, opener)
                except (FileNotFoundError, NotADirectoryError):
                    pass
                else:
                    self.name = file
                    return
            super().__init__(file, mode, closefd, opener)
            return
        try:
            target = g.write_target(file, Op.WRITE, copy_up=kind == 2, excl=kind == 3)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        TOKEN.obj = path = file if target is None else target
        try:
            super().__init__(path, mode, closefd, opener)
        finally:
            TOKEN.obj = None
        if target is not None:
            self.name = file


def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
    g = _engine.CURRENT
    if g is None:
        return o_os_open(path, flags, mode, dir_fd=dir_fd)
    if not flags & _WRITE_FLAGS:
        if g.native_reads:
            return o_os_open(path, flags, mode, dir_fd=dir_fd)
        try:
            t = g.read_target(path, dir_fd, not flags & _O_NOFOLLOW)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        if t is not None:
            try:
                return o_os_open(t, flags, mode)
            except (FileNotFoundError, NotADirectoryError):
                pass
        return o_os_open(path, flags, mode, dir_fd=dir_fd)
    excl = bool(flags & os.O_CREAT and flags & os.O_EXCL)
    follow = not excl and not flags & _O_NOFOLLOW
    keep = not excl and not flags & os.O_TRUNC
    try:
        target = g.write_target(path, Op.WRITE, dir_fd=dir_fd, follow=follow, copy_up=keep, excl=excl)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    TOKEN.obj = p = path if target is None else target
    try:
        return o_os_open(p, flags, mode, dir_fd=dir_fd if target is None else None)
    finally:
        TOKEN.obj = None


# -- the os mutators --------------------------------------------------------------------------------


def _named_as(orig: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` with ``orig``'s name and doc (``functools.wraps`` without importing functools
    at start-up)."""
    wrapper.__name__ = wrapper.__qualname__ = orig.__name__
    wrapper.__doc__ = orig.__doc__
    return wrapper


def _call(orig: Callable[..., Any], path: Any, target: str | None, *args: Any, **kw: Any) -> Any:
    """``orig`` on the caller's path, or on the redirect target (whose ``dir_fd`` no longer applies)."""
    if target is not None:
        path = target
        if "dir_fd" in kw:
            kw["dir_fd"] = None
    TOKEN.obj = path
    try:
        return orig(path, *args, **kw)
    finally:
        TOKEN.obj = None


def _metadata(
    orig: Callable[..., Any], op: Op = Op.METADATA, *, copy_up: bool = True, follow_default: bool = True
) -> Callable[..., Any]:
    """A wrapper for ``orig(path, *args, [dir_fd=], [follow_symlinks=])``; an int path is a
    descriptor (fchmod, ftruncate...), checked where it points."""

    def wrapper(path: Any, *args: Any, **kw: Any) -> Any:
        g = _engine.CURRENT
        if g is None:
            return orig(path, *args, **kw)
        if isinstance(path, int):
            try:
                g.check_fd(path, op)
            except AccessDenied as e:
                raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
            return orig(path, *args, **kw)
        follow = kw.get("follow_symlinks", follow_default)
        try:
            target = g.write_target(path, op, dir_fd=kw.get("dir_fd"), follow=follow, copy_up=copy_up)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        return _call(orig, path, target, *args, **kw)

    return _named_as(orig, wrapper)


def _fd_only(orig: Callable[..., Any], op: Op) -> Callable[..., Any]:
    def wrapper(fd: int, *args: Any) -> Any:
        g = _engine.CURRENT
        if g is not None:
            try:
                g.check_fd(fd, op)
            except AccessDenied as e:
                raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        return orig(fd, *args)

    return _named_as(orig, wrapper)


def _creator(orig: Callable[..., Any], op: Op) -> Callable[..., Any]:
    """mkdir, mkfifo, mknod: create a name; in the merged view it must not exist."""

    def wrapper(path: Any, *args: Any, dir_fd: int | None = None) -> Any:
        g = _engine.CURRENT
        if g is None:
            return orig(path, *args, dir_fd=dir_fd)
        try:
            target = g.write_target(path, op, dir_fd=dir_fd, follow=False, excl=True)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        return _call(orig, path, target, *args, dir_fd=dir_fd)

    return _named_as(orig, wrapper)


def _remover(orig: Callable[..., Any], op: Op) -> Callable[..., Any]:
    """remove, unlink, rmdir: a redirected name is removed from the run folder."""

    def wrapper(path: Any, *, dir_fd: int | None = None) -> None:
        g = _engine.CURRENT
        if g is None:
            return orig(path, dir_fd=dir_fd)  # type: ignore[no-any-return]
        try:
            target = g.removable(path, op, dir_fd)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        if target is NOTHING_TO_DO:
            return None
        # a folder or a link going away changes how paths resolve; a file does not
        changes = op is Op.RMDIR or (structural(path, dir_fd) if target is None else structural(target))
        try:
            _call(orig, path, target, dir_fd=dir_fd)
        finally:
            if changes:
                _engine.invalidate_all()
        return None

    return _named_as(orig, wrapper)


def _mover(orig: Callable[..., Any]) -> Callable[..., Any]:
    """rename, replace: both ends decided (Op.RENAME); the source as a removal that moves on."""

    def wrapper(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        g = _engine.CURRENT
        if g is None:
            return orig(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)  # type: ignore[no-any-return]
        try:
            s = g.removable(src, Op.RENAME, src_dir_fd, keep=True)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        try:
            d = g.write_target(dst, Op.RENAME, dir_fd=dst_dir_fd, follow=False)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        s_arg, s_fd = (src, src_dir_fd) if s is None else (s, None)
        d_arg, d_fd = (dst, dst_dir_fd) if d is None else (d, None)
        changes = structural(s_arg, s_fd) or structural(d_arg, d_fd)  # a folder or link moves/goes
        TOKEN.obj = s_arg
        try:
            orig(s_arg, d_arg, src_dir_fd=s_fd, dst_dir_fd=d_fd)
        except OSError as e:
            if e.errno != errno.EXDEV or not g.overlay:
                raise
            move_across(at(s_arg, s_fd), at(d_arg, d_fd))  # two of the kernel layer's mounts
        finally:
            TOKEN.obj = None
            if changes:
                _engine.invalidate_all()
        return None

    return _named_as(orig, wrapper)


def _link(
    src: Any,
    dst: Any,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
    follow_symlinks: bool = True,
) -> None:
    """``os.link``: the new name is decided, and so is the source (Op.LINK): a hard link shares the
    inode, so a link to a protected file would let later writes reach it."""
    g = _engine.CURRENT
    if g is None:
        return _o_link(
            src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks
        )
    # CPython calls link(2) -- which does not follow a symlink source on Linux -- unless a dir_fd is
    # given (then linkat(2), following as asked): decide what the kernel will really link.
    follow = follow_symlinks and (src_dir_fd is not None or dst_dir_fd is not None)
    try:
        d = g.write_target(dst, Op.LINK, dir_fd=dst_dir_fd, follow=False)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    try:
        s = g.write_target(src, Op.LINK, dir_fd=src_dir_fd, follow=follow, copy_up=True)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    TOKEN.obj = s_arg = src if s is None else s
    d_arg, s_fd, d_fd = (
        dst if d is None else d,
        src_dir_fd if s is None else None,
        dst_dir_fd if d is None else None,
    )
    try:
        _o_link(s_arg, d_arg, src_dir_fd=s_fd, dst_dir_fd=d_fd, follow_symlinks=follow_symlinks)
    except OSError as e:
        # Two of the kernel layer's mounts (see move_across): a copy stands in for the link -- the
        # content is the same, later writes to one no longer reach the other.
        if e.errno != errno.EXDEV or not g.overlay:
            raise
        if lexists(at(d_arg, d_fd)):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        copy_up_path(os.fsdecode(at(s_arg, s_fd)), os.fsdecode(at(d_arg, d_fd)), follow)
    finally:
        TOKEN.obj = None
        _engine.invalidate_all()  # linking a symlink makes a symlink: folders' link scans are stale
    return None


def _symlink(src: Any, dst: Any, target_is_directory: bool = False, *, dir_fd: int | None = None) -> None:
    """``os.symlink``: the link's *name* is decided; its text is not (what it reaches is, when used)."""
    g = _engine.CURRENT
    if g is None:
        return _o_symlink(src, dst, target_is_directory, dir_fd=dir_fd)
    try:
        d = g.write_target(dst, Op.LINK, dir_fd=dir_fd, follow=False)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    TOKEN.obj = src
    try:
        _o_symlink(src, dst if d is None else d, target_is_directory, dir_fd=dir_fd if d is None else None)
    finally:
        TOKEN.obj = None
        _engine.invalidate_all()
    return None


def _truncate(path: Any, length: int) -> None:
    g = _engine.CURRENT
    if g is None:
        return _o_truncate(path, length)
    if isinstance(path, int):
        try:
            g.check_fd(path, Op.WRITE)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
        return _o_truncate(path, length)
    try:
        target = g.write_target(path, Op.WRITE, copy_up=True)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)
    _call(_o_truncate, path, target, length)
    return None


def _exit(status: int) -> None:
    """``os._exit``: multiprocessing's children end this way, past ``atexit``: flush the record."""
    _engine.flush_events()
    o_exit(status)


_o_link, _o_symlink, _o_truncate = os.link, os.symlink, os.truncate


def os_wrappers() -> dict[str, Callable[..., Any]]:
    """Name -> wrapper for every ``os`` mutator of this platform (``lchmod`` is not on Linux)."""
    w: dict[str, Callable[..., Any]] = {
        "open": os_open,
        "remove": _remover(os.remove, Op.DELETE),
        "unlink": _remover(os.unlink, Op.DELETE),
        "rmdir": _remover(os.rmdir, Op.RMDIR),
        "rename": _mover(os.rename),
        "replace": _mover(os.replace),
        "mkdir": _creator(os.mkdir, Op.MKDIR),
        "mkfifo": _creator(os.mkfifo, Op.WRITE),
        "mknod": _creator(os.mknod, Op.WRITE),
        "link": _link,
        "symlink": _symlink,
        "chmod": _metadata(os.chmod),
        "chown": _metadata(os.chown, copy_up=True),
        "lchown": _metadata(os.lchown, follow_default=False),
        "utime": _metadata(os.utime),
        "truncate": _truncate,
        "fchmod": _fd_only(os.fchmod, Op.METADATA),
        "fchown": _fd_only(os.fchown, Op.METADATA),
        "ftruncate": _fd_only(os.ftruncate, Op.WRITE),
        "_exit": _exit,
    }
    if hasattr(os, "lchmod"):
        w["lchmod"] = _metadata(os.lchmod, follow_default=False)
    for name in ("setxattr", "removexattr"):
        if hasattr(os, name):
            w[name] = _metadata(getattr(os, name))
    return w
