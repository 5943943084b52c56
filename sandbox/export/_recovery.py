"""What an export leaves beside its destination, who may touch it, and how a crash is cleaned up.

Names, in the destination's parent, for a destination ``<name>`` (``<random>`` is lowercase hex):

- ``.<name>.tvs-stage-<random>``: a stage being filled, or -- after an exchange -- the replaced
  tree awaiting removal. A leftover one is an unfinished export: :func:`recover` removes it.
- ``.<name>.tvs-old-<random>``: the previous export, moved aside by the ``--overwrite`` fallback
  (no ``RENAME_EXCHANGE``). :func:`recover` renames it back when ``<name>`` is missing (the newest
  by ctime, if several), else removes it.

Locks: a running export holds ``flock(LOCK_EX)`` on its stage (:func:`make_stage`) and on the tree
it replaces (:func:`lock_dest`); :func:`recover` takes ``LOCK_NB`` and leaves alone whatever it
cannot lock, so a concurrent export's clean-up never touches a live stage. The kernel drops the
locks when an exporter dies, which is what makes its leftovers fair game. Stdlib only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from sandbox._paths import rmtree

__all__ = [
    "DIR_FLAGS",
    "lock_dest",
    "make_stage",
    "old_name",
    "recover",
    "recover_at",
    "remove",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

_STAGE_TAG = ".tvs-stage-"
_OLD_TAG = ".tvs-old-"
_HEX = frozenset("0123456789abcdef")


def old_name(name: str, tag: str) -> str:
    """Where the ``--overwrite`` fallback moves the previous export ``name`` aside."""
    return f".{name}{_OLD_TAG}{tag}"


def _leftover(entry: str) -> tuple[str, str] | None:
    """("stage" | "old", <name>) for a name an export leaves behind, else None."""
    if not entry.startswith("."):
        return None
    for kind, tag in (("stage", _STAGE_TAG), ("old", _OLD_TAG)):
        head, sep, rand = entry.rpartition(tag)
        if sep and len(head) > 1 and rand and set(rand) <= _HEX:
            return kind, head[1:]
    return None


# -- the exporter's side of the locks -------------------------------------------------------------


def make_stage(pfd: int, name: str) -> tuple[str, str, int]:
    """A new, locked, empty stage beside ``dest``: (tag, its name, an fd on it)."""
    for _ in range(8):
        tag = os.urandom(6).hex()
        stage_name = f".{name}{_STAGE_TAG}{tag}"
        os.mkdir(stage_name, 0o700, dir_fd=pfd)
        try:  # a concurrent export's recover() may remove it before we hold the lock: try again
            sfd = os.open(stage_name, DIR_FLAGS, dir_fd=pfd)
        except FileNotFoundError:
            continue
        fcntl.flock(sfd, fcntl.LOCK_EX)
        if os.fstat(sfd).st_nlink:  # not removed by a concurrent recover() before we locked it
            return tag, stage_name, sfd
        os.close(sfd)
    raise OSError(errno.EAGAIN, "stages keep disappearing (a concurrent cleanup?)", name)


def lock_dest(pfd: int, name: str) -> int | None:
    """Lock the tree about to be replaced: waits for a concurrent export replacing it, and keeps a
    concurrent recover() off it once it is moved aside. -1: not a folder (nothing to lock); None:
    it was replaced while we waited -- look again."""
    try:
        fd = os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=pfd)
    except FileNotFoundError:
        return None
    except OSError:
        return -1  # a file or a symlink
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        if os.lstat(name, dir_fd=pfd).st_ino == os.fstat(fd).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


def remove(pfd: int, name: str) -> None:
    """Remove ``name`` (a tree, file or link) below ``pfd``; best effort -- recover() finishes it."""
    try:
        _remove_strict(pfd, name)
    except OSError:
        pass


# -- recovery -------------------------------------------------------------------------------------


def recover(parent_dir: str | os.PathLike[str]) -> list[str]:
    """Clean up after crashed exports in ``parent_dir``; one line per action taken.

    Removes unfinished stages; renames a previous export moved aside by an interrupted
    ``--overwrite`` back into place when its name is free, else removes it. Leaves alone what a
    running export holds locked.
    """
    parent = os.path.abspath(os.fspath(parent_dir))
    try:
        pfd = os.open(parent, DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        return recover_at(pfd, parent)
    finally:
        os.close(pfd)


def recover_at(pfd: int, parent: str) -> list[str]:
    """:func:`recover` in the folder open as ``pfd`` (named ``parent`` in the actions)."""
    actions: list[str] = []
    olds: dict[str, list[str]] = {}
    for entry in os.listdir(pfd):
        found = _leftover(entry)
        if found is None:
            continue
        kind, name = found
        if kind == "old":
            olds.setdefault(name, []).append(entry)
        else:
            _remove_leftover(pfd, parent, entry, "an unfinished export stage", actions)
    restored = False
    for name, entries in olds.items():
        if not os.path.lexists(os.path.join(parent, name)):
            entries.sort(key=lambda e: _ctime(pfd, e))  # the one moved aside last wins
            newest = entries.pop()
            with _Locked(pfd, newest) as ok:
                if ok:
                    try:
                        os.rename(newest, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                    except OSError as exc:  # e.g. a concurrent export took the name: leave it be
                        actions.append(f"could not restore {os.path.join(parent, name)}: {exc.strerror}")
                    else:
                        restored = True
                        actions.append(
                            f"restored {os.path.join(parent, name)} from {newest} "
                            "(an interrupted --overwrite had moved it aside)"
                        )
        for entry in entries:
            _remove_leftover(pfd, parent, entry, "a previous export already replaced", actions)
    if restored:
        os.fsync(pfd)
    return actions


def _ctime(pfd: int, name: str) -> int:
    try:
        return os.lstat(name, dir_fd=pfd).st_ctime_ns
    except OSError:
        return 0


def _remove_leftover(pfd: int, parent: str, entry: str, what: str, actions: list[str]) -> None:
    with _Locked(pfd, entry) as ok:
        if ok:
            try:
                _remove_strict(pfd, entry)
                actions.append(f"removed {os.path.join(parent, entry)} ({what})")
            except OSError as exc:
                actions.append(f"could not remove {os.path.join(parent, entry)} ({what}): {exc.strerror}")


def _remove_strict(pfd: int, name: str) -> None:
    if stat.S_ISDIR(os.lstat(name, dir_fd=pfd).st_mode):
        rmtree(name, dir_fd=pfd, strict=True)
    else:
        os.unlink(name, dir_fd=pfd)


class _Locked:
    """``with _Locked(pfd, name) as ok``: ok when ``name`` is not locked by a running export."""

    def __init__(self, pfd: int, name: str) -> None:
        self.pfd, self.name, self.fd = pfd, name, -1

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.pfd)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # not a directory: nobody locks it
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:  # still the entry we locked (not replaced between open and lock)
            return os.lstat(self.name, dir_fd=self.pfd).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
