"""Path resolution shared by the enforcers: turn what a caller passed into the path the kernel will use.

The policy decides on *resolved* absolute paths; this module is the one place that produces them
(``str``/``bytes``/``PathLike``, relative to the current directory or to a ``dir_fd``, through
symlinks and ``..``, ``/proc/self/cwd``-style aliases). Stdlib only: the guard imports it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    # Split before any normalising: in "run/to_lake/../x" the ".." climbs from where the link
    # "to_lake" points, not from "run" -- collapsing it as text would decide on another place than
    # the kernel reaches. A trailing "/" (or a last "." / "..") makes the kernel follow the end too.
    head, _, tail = p.rpartition("/")
    if tail in ("", ".", ".."):
        return _realpath(p)
    return posixpath.join(_realpath(head or "/"), tail)


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_into(folder: str, rel: str, data: bytes) -> str:
    """Write ``data`` as ``folder/rel`` in a folder a sandboxed step has had in its hands.

    For the launcher, which runs outside the sandbox, writing its own files (the report, the
    policy record, the lakehouse diff) into a run folder after the step: whatever the step left
    there is never followed. A symlink or file where a folder of ``rel`` should be becomes a real
    folder; the entry itself -- a symlink to the lakehouse, a file, a folder -- is replaced by a
    new regular file, atomically (written beside it, then renamed over it). Returns the path.
    """
    *dirs, name = [c for c in rel.split("/") if c]
    fd = os.open(folder, DIR_FLAGS)
    try:
        for comp in dirs:
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError:  # ELOOP / ENOTDIR: the step put a link or a file there
                _remove_entry(comp, fd)
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        tmp = f".{name}.tv-sandbox-{os.getpid()}"
        _remove_entry(tmp, fd)
        out = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)
        try:
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError:  # EISDIR / ENOTEMPTY: a folder of the step's under our name
            _remove_entry(name, fd)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return os.path.join(folder, *dirs, name)


class NotAFile(ValueError):
    """What :func:`read_config` refuses to read, with why (``is not a regular file ...``)."""


def read_config(path: str, limit: int) -> bytes:
    """The whole of the configuration file ``path`` (a policy, a manifest; a link to one is
    followed) when it is a regular file of at most ``limit`` bytes.

    Raises ``OSError`` as ``open`` does (``IsADirectoryError`` for a folder) and :class:`NotAFile`
    for anything else: a FIFO -- opened ``O_NONBLOCK``, never waited on (a plain ``open`` hung
    until a writer came) -- a device (``/dev/zero`` never ends: a plain ``read()`` took 10 GB of
    memory in 15 s), or a file larger than ``limit``. What is no regular file is never opened:
    opening a device acts on it (``/dev/watchdog`` arms a reboot, a tape rewinds, a terminal
    becomes the controlling one of a process without one)."""
    _regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _regular(os.fstat(fd).st_mode, path)  # (what was there when looked at, still)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotAFile(f"is larger than {limit >> 20} MiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _regular(mode: int, path: str) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(mode):
        raise NotAFile("is not a regular file (a FIFO, a device or a socket)")


def private_marker(folder: str, name: str, limit: int) -> bytes | None:
    """The bytes of the marker ``name`` in ``folder`` when both are provably this user's alone: a
    real folder with no access for others, a regular file of one link, private, at most ``limit``
    bytes, opened without following a link; else None."""
    uid = os.getuid()
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        mst = os.fstat(fd)
        if not stat.S_ISREG(mst.st_mode) or mst.st_uid != uid or mst.st_mode & 0o077:
            return None
        if mst.st_nlink != 1 or mst.st_size > limit:
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _remove_entry(name: str, dir_fd: int) -> None:
    """Remove ``name`` in ``dir_fd``, whatever it is, without following links; absent is fine."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        rmtree(name, dir_fd=dir_fd, strict=True)
    else:
        os.unlink(name, dir_fd=dir_fd)


#: How deep :func:`rmtree` descends before it moves a folder up to the top of the tree: a run folder
#: is the step's, which can nest folders thousands deep (a recursion per level overflowed Python's
#: stack, and a descriptor per level the process's limit), so the walk stays this shallow.
RMTREE_DEPTH = 64
#: how deep the walk goes when a folder past :data:`RMTREE_DEPTH` cannot be moved up: left there
_RMTREE_LIMIT = 4 * RMTREE_DEPTH


def rmtree(path: str, *, dir_fd: int | None = None, strict: bool = False) -> None:
    """Remove the folder ``path`` (relative to ``dir_fd``) and everything below it, never
    following a link: ``shutil.rmtree``'s descriptor-based walk, without importing ``shutil``
    (``bz2``, ``lzma``, ``fnmatch`` and ``re``: milliseconds on every run's critical path).
    ``strict``: raise the first ``OSError``; otherwise remove what can be removed. A folder we may
    not enter (overlayfs leaves ``work/work`` with mode 000) is opened up first: it is ours.
    However deep the tree, the walk goes no deeper than :data:`RMTREE_DEPTH` levels: a folder
    found there is renamed to the top of the tree and removed from there afterwards."""
    try:
        fd = open_dir(path, dir_fd)
        try:
            hoisted: list[str] = []
            _empty(fd, strict, 0, fd, hoisted)
            while hoisted:
                _remove_dir(hoisted.pop(), fd, strict, 1, fd, hoisted)
        finally:
            os.close(fd)
        os.rmdir(path, dir_fd=dir_fd)
    except OSError:
        if strict:
            raise


def _remove_dir(name: str, dir_fd: int, strict: bool, depth: int, top: int, hoisted: list[str]) -> None:
    fd = open_dir(name, dir_fd)
    try:
        _empty(fd, strict, depth, top, hoisted)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def open_dir(name: str, dir_fd: int | None) -> int:
    """A descriptor of the folder ``name`` (never through a link), opened up for its owner first
    when it was closed to them."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, stat.S_IRWXU, dir_fd=dir_fd, follow_symlinks=False)
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def _empty(fd: int, strict: bool, depth: int, top: int, hoisted: list[str]) -> None:
    mode = os.fstat(fd).st_mode
    if mode & 0o700 != 0o700:  # a folder closed to its owner (chmod 555): ours, opened up
        try:
            os.fchmod(fd, stat.S_IMODE(mode) | 0o700)
        except OSError:
            pass  # not ours: what cannot be removed stays (strict: raised below)
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        try:
            if is_dir and depth >= RMTREE_DEPTH and _hoist(name, fd, top, hoisted):
                continue
            if is_dir and depth >= _RMTREE_LIMIT:  # could not move up either: never a RecursionError
                raise OSError(errno.ELOOP, "too deeply nested to remove", name)
            if is_dir:
                _remove_dir(name, fd, strict, depth + 1, top, hoisted)
            else:
                os.unlink(name, dir_fd=fd)
        except OSError:
            if strict:
                raise


def _hoist(name: str, fd: int, top: int, hoisted: list[str]) -> bool:
    """Rename the folder ``name`` of ``fd`` to a new name in ``top`` (appended to ``hoisted``);
    False when it cannot move (another file system, a folder we may not write): removed in place."""
    up = f".tv-sandbox-rm-{os.getpid()}-{len(hoisted)}-{os.urandom(6).hex()}"
    try:
        try:
            os.rename(name, up, src_dir_fd=fd, dst_dir_fd=top)
        except PermissionError:  # a folder moves only when its owner may write it (its ``..``)
            os.chmod(name, stat.S_IRWXU, dir_fd=fd, follow_symlinks=False)
            os.rename(name, up, src_dir_fd=fd, dst_dir_fd=top)
    except OSError:
        return False
    hoisted.append(up)
    return True
