"""The per-user cache's upkeep (:mod:`sandbox._cache`): what it holds, and the removal of what no
longer serves -- on ``tv-sandbox cache [prune|clear]``, and at most once a day by a launcher while
its first step runs (:func:`auto`, from :func:`sandbox.finish.while_first_step`).

Why: nothing else removes an entry, and every package folder -- each clone, worktree, CI checkout,
venv -- adds its own pair of module images (~0.8 MB, :mod:`sandbox._image`) that outlives it.
:func:`prune` removes

- a module image whose package folder is gone. The folder comes from the image's header alone (its
  first module's source path, less as many folders as the module's name is deep), read by hand
  (:func:`_first_key`): a few kB, not the image, and never through ``marshal``;
- any entry not used for 30 days (:data:`UNUSED_FOR`), by its ``st_atime`` -- an image this version
  cannot read too (another installed version sharing the cache may use it). ``relatime``, Linux's
  default, updates it at most once a day, which is all this needs; on a ``noatime`` mount an entry
  in use looks unused a month after it was made, and the cost is one rebuild a month -- acceptable;
- a ``*.<pid>.tmp`` file older than a day: its writer was killed between the write and the rename.

What the running package uses (its two images and its shim, :func:`in_use`) is kept whatever its
times: a step reads the guard's image and maps the shim on mounts where no atime changes.

Only in a cache folder of this user's alone (:class:`Shared` otherwise: nothing in it is used
either), and only regular files of this user with one link, named exactly like an entry: in the
cache folder's top and its ``native/`` subfolder, both opened once and every file named relative
to their descriptors, never through a link (the cache folder's own path is taken as the writers
take it, a link included), and nothing else is entered. Files of other kinds or names -- a user's
notes, a link named like an entry, a hard link to a file elsewhere -- are left alone. Stdlib only;
best effort: what cannot be read or removed stays as it is.
"""

from __future__ import annotations

import os
import stat
import time

from sandbox import _cache, _image
from sandbox._lazy import IMAGE_FORMAT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Sequence

__all__ = [
    "GONE",
    "TMP_AGE",
    "UNFINISHED",
    "UNUSED",
    "UNUSED_FOR",
    "Removal",
    "Shared",
    "auto",
    "clear",
    "describe",
    "in_use",
    "last_pruned",
    "prune",
    "show",
    "usage",
]

UNUSED_FOR = 30 * 86400.0  # seconds without a use after which any entry goes
TMP_AGE = 86400.0  # seconds after which an unfinished write's writer is surely gone
NATIVE = "native"  # the one subfolder: sandbox.native's shims

#: What one removal was (or, dry, would be): the entry's path, its size in bytes, and why.
Removal = tuple[str, int, str]
GONE = "package folder gone"
UNUSED = "unused for 30 days"
UNFINISHED = "unfinished write"
_UNFINISHED_LABEL = "unfinished writes"
_HEX = frozenset("0123456789abcdef")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NOATIME: reading a header is no use of the image -- else relatime would renew its atime every
# day and no image of a live folder would ever look unused. Allowed on one's own files, the only
# ones read here.
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)


def _key(s: str) -> bool:
    """Whether ``s`` is a :func:`sandbox._cache.fingerprint` exactly: 16 hex digits, or ``-`` and
    15 when the hash is negative (8 and 7 in tv-sandbox's first images)."""
    digits = s[1:] if s[:1] == "-" else s
    return len(s) in (8, 16) and len(digits) > 0 and set(digits) <= _HEX


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _image_kind(name: str) -> str | None:
    """``guard`` or ``launcher`` for an image's name, ``{kind}-{cache_tag}-{key}.marshal``."""
    if not name.endswith(".marshal"):
        return None
    kind, _, rest = name.removesuffix(".marshal").partition("-")
    tag, _, key = rest.rpartition("-")
    if tag.endswith("-"):  # a negative key
        tag, key = tag[:-1], "-" + key
    return kind if kind in _image.KINDS and _tag(tag) and _key(key) else None


def _tag(tag: str) -> bool:
    """Whether ``tag`` is shaped like ``sys.implementation.cache_tag`` (``cpython-311``)."""
    impl, _, version = tag.partition("-")
    return impl.isascii() and impl.isalpha() and impl.islower() and _digits(version)


def _parse_kind(name: str) -> str | None:
    """The kind of a :func:`sandbox._cache.store` entry's name, ``{kind}-{key}-{len}.marshal``."""
    if not name.endswith(".marshal"):
        return None
    kind, _, rest = name.removesuffix(".marshal").partition("-")
    key, _, size = rest.rpartition("-")
    return kind if kind in _cache.KINDS and _key(key) and _digits(size) else None


def _is_shim(name: str) -> bool:
    """Whether ``name`` is a shim's (:func:`sandbox.native.library`): ``shim-{key}-{len}-{machine}.so``."""
    if not (name.startswith("shim-") and name.endswith(".so")):
        return False
    rest, _, machine = name[5:-3].rpartition("-")
    key, _, size = rest.rpartition("-")
    return bool(machine) and machine.isascii() and _key(key) and _digits(size)


#: What :func:`usage` calls the entries of each of :data:`sandbox._cache.KINDS`.
_PARSE_LABELS = {"toml": "parsed policy files", "policy": "validated policy files"}


def _label(name: str, native: bool) -> str | None:
    """What the file ``name`` of the cache folder (``native``: of its ``native/``) holds, as
    :func:`usage` counts it; None when it is not named like an entry of ours."""
    if name.endswith(".tmp"):  # an unfinished write: "{entry}.{pid}.tmp"
        base, _, pid = name[:-4].rpartition(".")
        return _UNFINISHED_LABEL if _digits(pid) and _label(base, native) else None
    if native:
        return "native shims" if _is_shim(name) else None
    kind = _image_kind(name)
    if kind is not None:
        return f"module images ({kind})"
    return _PARSE_LABELS.get(_parse_kind(name) or "")


class Shared(OSError):
    """The cache folder is not this user's alone: others can write entries into it (see
    :func:`sandbox._cache.owned_alone`); nothing there is used, and nothing is removed."""


def _open(d: str) -> list[tuple[int, str]]:
    """Descriptors of the cache folder and of its ``native/`` when that is a real folder of this
    user's alone, each with the path it stands for. Raises ``OSError`` when the cache folder
    cannot be opened, :class:`Shared` when others may write it."""
    top = os.open(d, _DIR)
    out = [(top, d)]
    try:
        st = os.fstat(top)
        if not _cache.alone(st):
            raise Shared(
                f"the per-user cache {d} is not this user's alone (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}): tv-sandbox neither uses nor prunes it"
            )
        try:
            sub = os.open(NATIVE, _DIR | os.O_NOFOLLOW, dir_fd=top)
        except OSError:
            return out
        if _cache.alone(os.fstat(sub)):
            out.append((sub, os.path.join(d, NATIVE)))
        else:
            os.close(sub)
    except BaseException:
        _close(out)
        raise
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
        # one link only: a name hard-linked to a file elsewhere is not an entry of ours
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_nlink == 1:
            out.append((name, label, st))
    return out


def _walk(d: str) -> Iterator[tuple[int, str, str, str, os.stat_result]]:
    """``(folder descriptor, name, path, label, lstat)`` of each entry of the cache folder ``d``
    and its ``native/`` (:func:`_entries`), the folders closed after. Raises as :func:`_open`."""
    folders = _open(d)
    try:
        for fd, where in folders:
            for name, label, st in _entries(fd, where != d):
                yield fd, name, os.path.join(where, name), label, st
    finally:
        _close(folders)


def _package(name: object, origin: object, is_pkg: object) -> str | None:
    """The package folder of a module ``name`` whose source is ``origin``: ``sandbox.kernel.plan``
    at ``P/kernel/plan.py`` and ``sandbox.kernel`` at ``P/kernel/__init__.py`` are both of ``P``."""
    if not (isinstance(name, str) and isinstance(origin, str) and os.path.isabs(origin)):
        return None
    if "\0" in origin or not origin.isprintable():  # a path the system could not have given
        return None
    parts = name.split(".")
    folder = origin
    for _ in range(len(parts) - 1 + bool(is_pkg)):
        folder = os.path.dirname(folder)
    return folder if os.path.basename(folder) == parts[0] else None


def _image_problem(fd: int, name: str) -> str | None:
    """:data:`GONE` when the image ``name`` of the folder ``fd`` is of a package folder that no
    longer exists, else None. Reads the start of its header only (the layout of
    :func:`sandbox._lazy.parse_image`: its length in 8 bytes, then the header), and does not
    unmarshal it: an entry's bytes are anyone's who could write the file, and ``marshal`` trusts
    the counts it reads (13 bytes can ask it for gigabytes). An image it cannot read -- another
    layout, truncated -- is left to the rule of disuse."""
    try:
        f = os.open(name, _READ, dir_fd=fd)
    except OSError:
        return None  # gone meanwhile, or a link put in its place: left as it is
    try:
        head = os.pread(f, 8 + _HEAD_READ, 0)
    except OSError:
        return None
    finally:
        os.close(f)
    first = _first_key(head[8:8 + int.from_bytes(head[:8], "little")]) if len(head) > 8 else None
    package = _package(*first) if first is not None else None
    if package is None:
        return None
    try:
        os.stat(os.path.join(package, "__init__.py"))
    except (FileNotFoundError, NotADirectoryError):
        return GONE
    except (OSError, ValueError):
        pass  # cannot tell (a folder this user may not search): kept
    return None


_HEAD_READ = 4096  # the header's start: its format, the version and the first module's key
_REF = 0x80  # marshal's FLAG_REF bit on a type code


def _first_key(data: bytes) -> tuple[str, str, bool] | None:
    """``(name, origin, is_pkg)`` of the first module of an image's header ``data`` -- a marshal of
    ``(IMAGE_FORMAT, sys.version, ((name, origin, is_pkg, ...), ...))`` -- read by hand, every
    count checked against the bytes there are; None when ``data`` is not that, of this format."""
    pos = 0

    def code() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ValueError
        pos += 1
        return data[pos - 1] & ~_REF

    def count(width: int) -> int:
        nonlocal pos
        if pos + width > len(data):
            raise ValueError
        pos += width
        return int.from_bytes(data[pos - width : pos], "little", signed=width == 4)

    def tuple_of(least: int) -> None:
        c = code()
        n = count(4) if c == ord("(") else count(1) if c == ord(")") else -1
        if n < least:
            raise ValueError

    def text() -> str:
        nonlocal pos
        c = code()
        if c in (ord("z"), ord("Z")):  # short ASCII
            n = count(1)
        elif c in (ord("u"), ord("t"), ord("a"), ord("A")):
            n = count(4)
        else:
            raise ValueError
        if not 0 <= n <= len(data) - pos:
            raise ValueError
        pos += n
        return data[pos - n : pos].decode("utf-8")

    try:
        tuple_of(3)
        if code() != ord("i") or count(4) != IMAGE_FORMAT:
            return None
        text()  # the version
        tuple_of(1)  # the modules
        tuple_of(3)  # the first one's key
        name, origin = text(), text()
        flag = code()
        if flag not in (ord("T"), ord("F")):
            return None
        return name, origin, flag == ord("T")
    except (ValueError, UnicodeDecodeError):
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


def _unlink(fd: int, name: str, path: str, size: int, failed: list[Removal] | None) -> bool:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:  # removed meanwhile (another launcher's prune)
        return False
    except OSError as e:
        if failed is not None:
            failed.append((path, size, e.strerror or type(e).__name__))
        return False
    return True


def prune(
    d: str,
    *,
    keep: Collection[str] = (),
    now: float | None = None,
    dry_run: bool = False,
    failed: list[Removal] | None = None,
) -> list[Removal]:
    """Remove from the cache folder ``d`` what no longer serves (the rules in the module's
    docstring), but the paths in ``keep``; with ``dry_run``, only say what. Returns what was
    removed; what could not be removed goes to ``failed`` (its reason: the error). Raises
    ``OSError`` only when ``d`` itself cannot be opened (``FileNotFoundError``: there is no cache
    yet; :class:`Shared`: others may write it); an entry that cannot be read is left as it is."""
    when = time.time() if now is None else now
    removed: list[Removal] = []
    for fd, name, path, label, st in _walk(d):
        if path in keep:
            continue
        try:  # one odd entry never stops the rest
            why = _why(fd, name, label, st, when)
        except Exception:
            continue
        if why is not None and (dry_run or _unlink(fd, name, path, st.st_size, failed)):
            removed.append((path, st.st_size, why))
    return removed


def clear(d: str, *, keep: Collection[str] = (), failed: list[Removal] | None = None) -> list[Removal]:
    """Remove every entry from the cache folder ``d`` (each reason: ``"cleared"``) but the paths
    in ``keep`` (what a run of this installation may be using: :func:`in_use`), the prune stamp
    and an empty ``native/`` too when they are this user's; anything else stays. Raises and
    reports as :func:`prune`."""
    removed: list[Removal] = []
    for fd, name, path, _label, st in _walk(d):
        if path not in keep and _unlink(fd, name, path, st.st_size, failed):
            removed.append((path, st.st_size, "cleared"))
    folders = _open(d)
    try:
        top = folders[0][0]
        try:
            st = os.stat(_cache.PRUNE_STAMP, dir_fd=top, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1:
                os.unlink(_cache.PRUNE_STAMP, dir_fd=top)
        except OSError:
            pass
        if len(folders) > 1:  # native/, a folder of this user's alone (_open)
            try:
                os.rmdir(NATIVE, dir_fd=top)
            except OSError:  # not empty: a shim in use, or a file not ours
                pass
    finally:
        _close(folders)
    return removed


def usage(d: str) -> dict[str, tuple[int, int]]:
    """What the cache folder ``d`` holds: for each kind of entry, their number and bytes (only
    the kinds it holds). Raises as :func:`prune`."""
    out: dict[str, tuple[int, int]] = {}
    for _fd, _name, _path, label, st in _walk(d):
        count, size = out.get(label, (0, 0))
        out[label] = (count + 1, size + st.st_size)
    return dict(sorted(out.items()))


def show(d: str, prog: str) -> list[str]:
    """The lines of ``tv-sandbox cache`` (``prog``): what the cache folder ``d`` holds, when a run
    last pruned it, what a prune would remove now. Raises as :func:`prune`."""
    held = usage(d)
    lines = [f"cache: {d}"]
    lines += [f"  {count:5d} {_size(size):>10}  {label}" for label, (count, size) in held.items()]
    total = sum(c for c, _ in held.values()), sum(b for _, b in held.values())
    lines.append(f"  {total[0]:5d} {_size(total[1]):>10}  in all")
    last = last_pruned(d)
    when = "never" if last is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(last))
    stale = prune(d, keep=in_use(), dry_run=True)
    lines.append(
        f"pruned by `{prog} run` once a day (last: {when}); "
        f"`{prog} cache prune` would remove {describe(stale, ' now')}"
    )
    return lines


def describe(removals: Sequence[Removal], between: str = "") -> str:
    """``N entries (size)<between>: k <reason>; ...``: what a prune or a clear removed (or could
    not)."""
    n = len(removals)
    counts: dict[str, int] = {}
    for _, _, why in removals:
        counts[why] = counts.get(why, 0) + 1
    reasons = "".join(f"{'; ' if i else ': '}{k} {why}" for i, (why, k) in enumerate(sorted(counts.items())))
    amount = f"{n} {'entry' if n == 1 else 'entries'} ({_size(sum(size for _, size, _ in removals))})"
    return f"{amount}{between}{reasons}"


def _size(n: int) -> str:
    value, unit = float(n), 0
    while value >= 1024 and unit < 3:
        value, unit = value / 1024, unit + 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {('KiB', 'MiB', 'GiB')[unit - 1]}"


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
        folders = _open(d)  # Shared: a folder others may write is neither stamped nor pruned
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            f = os.open(_cache.PRUNE_STAMP, flags, 0o600, dir_fd=folders[0][0])
            try:
                st = os.fstat(f)
                if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1):
                    return False  # a stamp not ours alone: its times are not ours to set
                os.utime(f, (when, when))
            finally:
                os.close(f)
        finally:
            _close(folders)
        prune(d, keep=in_use(), now=when)
    except Exception:
        return False
    return True
