"""The per-user cache's upkeep (:mod:`sandbox._cache`): what it holds, and the removal of what no
longer serves -- on ``tv-sandbox cache [prune|clear]``, and at most once a day by a launcher while
its first step runs (:func:`auto`, from :func:`sandbox.finish.while_first_step`).

Why: nothing else removes an entry, and every package folder -- each clone, worktree, CI checkout,
venv -- adds its own pair of module images (~0.8 MB, :mod:`sandbox._image`) that outlives it.
:func:`prune` removes

- a module image whose package folder is gone, or that is not an image of this format (another
  layout, truncated, an older tv-sandbox's). The folder comes from the image's header alone (its
  first module's source path, less as many folders as the module's name is deep): a few kB read,
  not the image;
- any entry not used for 30 days (:data:`UNUSED_FOR`), by its ``st_atime``. ``relatime``, Linux's
  default, updates it at most once a day, which is all this needs; on a ``noatime`` mount an entry
  in use looks unused a month after it was made, and the cost is one rebuild a month -- acceptable;
- a ``*.<pid>.tmp`` file older than a day: its writer was killed between the write and the rename.

What the running package uses (its two images and its shim, :func:`in_use`) is kept whatever its
times: a step reads the guard's image and maps the shim on mounts where no atime changes.

Only regular files of this user named like an entry are removed: the cache folder's top and its
``native/`` subfolder, both opened once and every file named relative to their descriptors, never
through a link (the cache folder's own path is taken as the writers take it, a link included), and
nothing else is entered. Files of other kinds or names -- a user's notes, a link named like an
entry, another user's file in a shared folder -- are left alone. Stdlib only; best effort: what
cannot be read or removed stays as it is.
"""

from __future__ import annotations

import marshal
import os
import stat
import time

from sandbox import _cache, _image
from sandbox._lazy import IMAGE_FORMAT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "GONE",
    "NOT_AN_IMAGE",
    "TMP_AGE",
    "UNFINISHED",
    "UNUSED",
    "UNUSED_FOR",
    "Removal",
    "auto",
    "clear",
    "in_use",
    "last_pruned",
    "prune",
    "usage",
]

UNUSED_FOR = 30 * 86400.0  # seconds without a use after which any entry goes
TMP_AGE = 86400.0  # seconds after which an unfinished write's writer is surely gone
NATIVE = "native"  # the one subfolder: sandbox.native's shims

#: What one removal was (or, dry, would be): the entry's path, its size in bytes, and why.
Removal = tuple[str, int, str]
GONE = "package folder gone"
NOT_AN_IMAGE = "not an image of this version"
UNUSED = "unused for 30 days"
UNFINISHED = "unfinished write"
_UNFINISHED_LABEL = "unfinished writes"
_HEX = frozenset("0123456789abcdef")
_MAX_HEADER = 1 << 20  # an image's header is a few kB: more is not one of ours
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NOATIME: reading a header is no use of the image -- else relatime would renew its atime every
# day and no image of a live folder would ever look unused. Allowed on one's own files, the only
# ones read here.
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)


def _key(s: str) -> bool:
    """Whether ``s`` is a :func:`sandbox._cache.fingerprint` (16 hex digits, ``-`` first when the
    hash is negative; 8 in tv-sandbox's first images)."""
    digits = s[1:] if s[:1] == "-" else s
    return 0 < len(digits) <= 16 and set(digits) <= _HEX


def _image_kind(name: str) -> str | None:
    """``guard`` or ``launcher`` for an image's name, ``{kind}-{cache_tag}-{key}.marshal``."""
    if not name.endswith(".marshal"):
        return None
    kind, _, rest = name.removesuffix(".marshal").partition("-")
    tag, _, key = rest.rpartition("-")
    if tag.endswith("-"):  # a negative key
        tag, key = tag[:-1], "-" + key
    return kind if kind in _image.KINDS and tag and _key(key) else None


def _parse_kind(name: str) -> str | None:
    """The kind of a :func:`sandbox._cache.store` entry's name, ``{kind}-{key}-{len}.marshal``."""
    if not name.endswith(".marshal"):
        return None
    kind, _, rest = name.removesuffix(".marshal").partition("-")
    key, _, size = rest.rpartition("-")
    ok = kind.isalpha() and kind.islower() and kind not in _image.KINDS and _key(key) and size.isdigit()
    return kind if ok else None


def _is_shim(name: str) -> bool:
    """Whether ``name`` is a shim's (:func:`sandbox.native.library`): ``shim-{key}-{len}-{machine}.so``."""
    if not (name.startswith("shim-") and name.endswith(".so")):
        return False
    rest, _, machine = name[5:-3].rpartition("-")
    key, _, size = rest.rpartition("-")
    return bool(machine) and _key(key) and size.isdigit()


def _label(name: str, native: bool) -> str | None:
    """What the file ``name`` of the cache folder (``native``: of its ``native/``) holds, as
    :func:`usage` counts it; None when it is not named like an entry of ours."""
    if name.endswith(".tmp"):  # an unfinished write: "{entry}.{pid}.tmp"
        base, _, pid = name[:-4].rpartition(".")
        return _UNFINISHED_LABEL if pid.isdigit() and _label(base, native) else None
    if native:
        return "native shims" if _is_shim(name) else None
    kind = _image_kind(name)
    if kind is not None:
        return f"module images ({kind})"
    kind = _parse_kind(name)
    if kind is None:
        return None
    return "parsed policy files" if kind == "toml" else f"{kind} entries"


def _open(d: str) -> list[tuple[int, str]]:
    """Descriptors of the cache folder and of its ``native/`` when that is a real folder, each
    with the path it stands for. Raises ``OSError`` when the cache folder cannot be opened."""
    top = os.open(d, _DIR)
    out = [(top, d)]
    try:
        out.append((os.open(NATIVE, _DIR | os.O_NOFOLLOW, dir_fd=top), os.path.join(d, NATIVE)))
    except OSError:
        pass
    return out


def _close(folders: list[tuple[int, str]]) -> None:
    for fd, _ in folders:
        os.close(fd)


def _entries(fd: int, native: bool) -> list[tuple[str, str, os.stat_result]]:
    """The entries of the folder ``fd``: (name, label, ``lstat``) of each regular file of this
    user named like one."""
    out: list[tuple[str, str, os.stat_result]] = []
    uid = os.geteuid()
    try:
        names = os.listdir(fd)
    except OSError:
        return out
    for name in names:
        label = _label(name, native)
        if label is None:
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
            out.append((name, label, st))
    return out


def _package(name: object, origin: object, is_pkg: object) -> str | None:
    """The package folder of a module ``name`` whose source is ``origin``: ``sandbox.kernel.plan``
    at ``P/kernel/plan.py`` and ``sandbox.kernel`` at ``P/kernel/__init__.py`` are both of ``P``."""
    if not (isinstance(name, str) and isinstance(origin, str) and os.path.isabs(origin)):
        return None
    parts = name.split(".")
    folder = origin
    for _ in range(len(parts) - 1 + bool(is_pkg)):
        folder = os.path.dirname(folder)
    return folder if os.path.basename(folder) == parts[0] else None


def _image_problem(fd: int, name: str) -> str | None:
    """Why the image ``name`` of the folder ``fd`` serves no package any more (:data:`GONE`,
    :data:`NOT_AN_IMAGE`), or None. Reads its header only (the layout of
    :func:`sandbox._lazy.parse_image`: its length in 8 bytes, then the header)."""
    try:
        f = os.open(name, _READ, dir_fd=fd)
    except OSError:
        return None  # gone meanwhile, or a link put in its place: left as it is
    try:
        head = os.read(f, 8)
        n = int.from_bytes(head, "little")
        if len(head) < 8 or not 0 < n <= _MAX_HEADER:
            return NOT_AN_IMAGE
        fmt, _version, keys = marshal.loads(os.pread(f, n, 8))
        package = _package(*keys[0][:3]) if fmt == IMAGE_FORMAT else None
    except Exception:  # truncated, not marshal, another layout
        return NOT_AN_IMAGE
    finally:
        os.close(f)
    if package is None:
        return NOT_AN_IMAGE
    try:
        os.stat(os.path.join(package, "__init__.py"))
    except (FileNotFoundError, NotADirectoryError):
        return GONE
    except OSError:
        pass  # cannot tell (a folder this user may not search): kept
    return None


def _why(fd: int, name: str, label: str, st: os.stat_result, now: float) -> str | None:
    """Why :func:`prune` removes the entry, or None."""
    if label == _UNFINISHED_LABEL:
        return UNFINISHED if now - st.st_mtime > TMP_AGE else None
    # Its last use: the atime; the mtime when later (an entry just made on a noatime mount).
    if now - max(st.st_atime, st.st_mtime) > UNUSED_FOR:
        return UNUSED
    if _image_kind(name) is not None:
        return _image_problem(fd, name)
    return None


def _unlink(fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        return False
    return True


def prune(
    d: str, *, keep: Collection[str] = (), now: float | None = None, dry_run: bool = False
) -> list[Removal]:
    """Remove from the cache folder ``d`` what no longer serves (the rules in the module's
    docstring), but the paths in ``keep``; with ``dry_run``, only say what. Returns what was
    removed. Raises ``OSError`` only when ``d`` itself cannot be opened (``FileNotFoundError``:
    there is no cache yet); a file that cannot be read or removed is left as it is."""
    when = time.time() if now is None else now
    removed: list[Removal] = []
    folders = _open(d)
    try:
        for fd, where in folders:
            for name, label, st in _entries(fd, where != d):
                path = os.path.join(where, name)
                if path in keep:
                    continue
                why = _why(fd, name, label, st, when)
                if why is not None and (dry_run or _unlink(fd, name)):
                    removed.append((path, st.st_size, why))
    finally:
        _close(folders)
    return removed


def clear(d: str) -> list[Removal]:
    """Remove every entry from the cache folder ``d`` (each reason: ``"cleared"``), the prune
    stamp and an empty ``native/`` too; anything else stays. Raises as :func:`prune`."""
    removed: list[Removal] = []
    folders = _open(d)
    try:
        for fd, where in folders:
            for name, _label, st in _entries(fd, where != d):
                if _unlink(fd, name):
                    removed.append((os.path.join(where, name), st.st_size, "cleared"))
        top = folders[0][0]
        try:
            if stat.S_ISREG(os.stat(_cache.PRUNE_STAMP, dir_fd=top, follow_symlinks=False).st_mode):
                os.unlink(_cache.PRUNE_STAMP, dir_fd=top)
        except OSError:
            pass
        if len(folders) > 1:
            try:
                os.rmdir(NATIVE, dir_fd=top)
            except OSError:  # not empty: a file not ours
                pass
    finally:
        _close(folders)
    return removed


def usage(d: str) -> dict[str, tuple[int, int]]:
    """What the cache folder ``d`` holds: for each kind of entry, their number and bytes (only
    the kinds it holds). Raises as :func:`prune`."""
    out: dict[str, tuple[int, int]] = {}
    folders = _open(d)
    try:
        for fd, where in folders:
            for _name, label, st in _entries(fd, where != d):
                count, size = out.get(label, (0, 0))
                out[label] = (count + 1, size + st.st_size)
    finally:
        _close(folders)
    return dict(sorted(out.items()))


def last_pruned(d: str) -> float | None:
    """When :func:`auto` last pruned the cache folder ``d`` (seconds since the epoch), or None."""
    try:
        return os.stat(os.path.join(d, _cache.PRUNE_STAMP)).st_mtime
    except OSError:
        return None


def in_use() -> set[str]:
    """The paths of the entries the running package uses: its module images, its explain shim."""
    from sandbox import native

    d = _cache.cache_dir()
    out = {p for p in map(_image.path, _image.KINDS) if p is not None}
    if d is not None:
        try:
            out.add(native.library(d))
        except OSError:
            pass
    return out


def auto(now: float | None = None) -> bool:
    """Prune the cache (keeping :func:`in_use`) when :func:`sandbox._cache.prune_due` says so,
    after dating the stamp: a launcher's, while its first step runs. True when it pruned. Never
    raises: a cache that cannot be pruned -- or stamped, so as not to try on every run -- is left
    as it is."""
    d = _cache.cache_dir()
    if d is None or not _cache.prune_due(now):
        return False
    when = time.time() if now is None else now
    try:
        folders = _open(d)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            f = os.open(_cache.PRUNE_STAMP, flags, 0o600, dir_fd=folders[0][0])
            try:
                os.utime(f, (when, when))
            finally:
                os.close(f)
        finally:
            _close(folders)
        prune(d, keep=in_use(), now=when)
    except Exception:
        return False
    return True
