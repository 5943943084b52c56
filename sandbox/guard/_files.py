"""The guard's own file operations, on the functions it patches as they were before: copy-up,
parent folders, the symlink scan and the "does this change resolution?" test of ``_engine``.
"""

from __future__ import annotations

import io
import os
import posix
import stat
from _thread import _local

from sandbox._execute import DIR, FILE, LINK, OTHER
from sandbox._execute import copy_up as _copy_up

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The real functions, bound before any install: what the guard itself calls.
o_open = io.open
o_FileIO = io.FileIO
o_os_open = os.open
o_close = os.close
o_read = os.read
o_write = os.write
o_stat = os.stat
o_lstat = os.lstat
o_fstat = os.fstat
o_mkdir = os.mkdir
o_symlink = os.symlink
o_rename = os.rename
o_unlink = os.unlink
o_rmdir = os.rmdir
o_readlink = os.readlink
o_scandir = os.scandir
o_utime = os.utime
o_fchmod = os.fchmod
o_exit = posix._exit

_S_ISLNK, _S_ISDIR, _S_ISREG, _S_IMODE = stat.S_ISLNK, stat.S_ISDIR, stat.S_ISREG, stat.S_IMODE


class _Token(_local):
    """Per thread: the path object a wrapper is handing to an original function right now. The audit
    hook lets exactly that object through (it was decided already); anything else it checks."""

    obj: object = None


TOKEN = _Token()
#: ``TOKEN.obj`` while the guard itself makes a redirect target's folders (the run folder, made on
#: demand -- in library use it lies in the host) or sets a copy-up's times (on a link, which the
#: hook cannot tell from the place it leads to): the hook lets every path through meanwhile.
INTERNAL: object = object()

_SCAN_MAX = 4096  # a bigger folder is taken to hold links: its followed names are lstat-ed


def lexists(path: str) -> bool:
    try:
        o_lstat(path)
    except (OSError, ValueError):
        return False
    return True


def exists(path: str) -> bool:
    try:
        o_stat(path)
    except (OSError, ValueError):
        return False
    return True


def has_links(folder: str, big: bool = True) -> bool:
    """Does ``folder`` hold a symlink (or too many entries to tell cheaply: ``big``)? Missing: no."""
    try:
        with o_scandir(folder) as it:
            for n, e in enumerate(it):
                if n >= _SCAN_MAX:
                    return big
                if e.is_symlink():
                    return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return False


def structural(path: Any, dir_fd: int | None = None) -> bool:
    """Would removing or moving ``path`` change how other paths resolve (a folder, a link)?"""
    try:
        mode = o_lstat(path, dir_fd=dir_fd).st_mode
    except (OSError, TypeError, ValueError):
        return False
    return not _S_ISREG(mode)


def isdir(path: str) -> bool:
    try:
        return _S_ISDIR(o_stat(path).st_mode)
    except (OSError, ValueError):
        return False


def makedirs(path: str) -> None:
    try:
        o_mkdir(path, 0o777)
    except FileNotFoundError:
        head = path.rpartition("/")[0]
        if not head or head == path:
            raise
        makedirs(head)
        o_mkdir(path, 0o777)
    except FileExistsError:
        pass


def copy_up_path(src: str, dst: str, follow: bool, *, tree: bool = False) -> None:
    """Copy ``src`` to ``dst`` as an overlay's copy-up does (:func:`sandbox._execute.copy_up`: content,
    mode, times; a folder without its entries unless ``tree``; a link as a link) unless ``dst``
    exists; the original functions only."""
    _copy_up(ORIGINALS, src, dst, follow, tree=tree)


class Originals:
    """The primitives :mod:`sandbox._execute` executes a decision over, for the guard: the original
    functions (a patched one would decide the guard's own calls again)."""

    __slots__ = ()

    lexists = staticmethod(lexists)
    isdir = staticmethod(isdir)

    @staticmethod
    def makedirs(path: str) -> None:
        before, TOKEN.obj = TOKEN.obj, INTERNAL
        try:
            makedirs(path)
        finally:
            TOKEN.obj = before

    @staticmethod
    def kind(path: str, follow: bool) -> str | None:
        try:
            mode = (o_stat(path) if follow else o_lstat(path)).st_mode
        except FileNotFoundError:
            return None
        if _S_ISLNK(mode):
            return LINK
        if _S_ISDIR(mode):
            return DIR
        return FILE if _S_ISREG(mode) else OTHER

    @staticmethod
    def copy_link(src: str, dst: str) -> None:
        o_symlink(o_readlink(src), dst)

    @staticmethod
    def copy_dir(src: str, dst: str) -> None:
        o_mkdir(dst, _S_IMODE(o_stat(src).st_mode))

    @staticmethod
    def copy_file(src: str, dst: str) -> None:
        fin = o_os_open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fout = o_os_open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                while chunk := o_read(fin, 1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[o_write(fout, view) :]
                o_fchmod(fout, _S_IMODE(o_fstat(fin).st_mode))
            finally:
                o_close(fout)
        finally:
            o_close(fin)

    @staticmethod
    def names(folder: str) -> list[str]:
        with o_scandir(folder) as it:
            return [e.name for e in it]

    @staticmethod
    def copy_times(src: str, dst: str) -> None:
        st = o_lstat(dst)  # what was made: a link, or the followed original's kind
        st = o_lstat(src) if _S_ISLNK(st.st_mode) else o_stat(src)
        # (the audit event of utime does not say follow_symlinks=False: the hook would decide
        # where a copied link leads, a host path, instead of the run's new entry)
        before, TOKEN.obj = TOKEN.obj, INTERNAL
        try:
            o_utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        finally:
            TOKEN.obj = before


#: The guard's primitives (see :class:`Originals`).
ORIGINALS = Originals()


def at(path: Any, dir_fd: int | None) -> Any:
    """``path`` relative to ``dir_fd`` as one path (through ``/proc/self/fd``), for the calls below."""
    if dir_fd is None or os.path.isabs(os.fsdecode(path)):
        return path
    return f"/proc/self/fd/{dir_fd}/{os.fsdecode(path)}"


def move_across(src: Any, dst: Any) -> None:
    """What ``mv`` does when ``rename(2)`` says EXDEV: copy ``src`` (a file, a link, a tree) beside
    ``dst``, rename the copy over ``dst``, remove ``src``. Under the kernel layer the workspace
    overlay, ``$TV_RUN_DIR`` (a bind mount), the temp dir and, in audit mode, each mount's capture
    overlay are separate mounts: a rename between them, one disk on the host, would fail where the
    script never failed before. The original functions only; both ends were decided already."""
    src, dst = os.fsdecode(src), os.fsdecode(dst)
    tmp = f"{dst}.tv-sandbox-move-{os.urandom(6).hex()}"  # new: copy_up_path keeps what exists
    copy_up_path(src, tmp, False, tree=True)
    try:
        o_rename(tmp, dst)
    except BaseException:
        remove_tree(tmp)
        raise
    remove_tree(src)


def remove_tree(path: str) -> None:
    """Remove ``path`` -- a file, a link, or a folder with everything in it -- never following links."""
    if _S_ISDIR(o_lstat(path).st_mode):
        with o_scandir(path) as it:
            entries = [e.path for e in it]
        for e in entries:
            remove_tree(e)
        o_rmdir(path)
    else:
        o_unlink(path)
