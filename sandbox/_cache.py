"""A small per-user cache of derived data, so a start-up does not redo (or re-import) what it did last time.

What is kept is a pure function of some input bytes -- today the parse of a policy file -- stored
beside a copy of those bytes: an entry answers only for exactly the same input, and whatever reads
it validates the result as if freshly made. Where: ``$TV_SANDBOX_CACHE_DIR``, else
``$XDG_CACHE_HOME/tv-sandbox``, else ``~/.cache/tv-sandbox``; ``TV_SANDBOX_CACHE_DIR=off`` turns it
off. Entries are ``marshal`` files written atomically; a cache that cannot be read or written is
silently not used, nor one other users may write (:func:`owned_alone`). A sandboxed step can never
write here (it is outside every writable root), and nothing in a step reads it.

Nothing here removes an entry: :mod:`sandbox._cache_prune` does, for every kind of entry the cache
holds (these, the module images, the explain shim) -- at most once a day, by a launcher while its
first step runs (:func:`prune_due` says when), and on ``tv-sandbox cache prune``.
"""

import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_FORMAT = 1
ENV_DIR = "TV_SANDBOX_CACHE_DIR"
#: The kinds of :func:`store`'s entries (``{kind}-{key}-{len}.marshal``): the parse of a policy file,
#: and a policy file validated whole (``sandbox.loader.load_policy``).
KINDS = ("toml", "policy")
#: The file in the cache folder whose mtime is when it was last pruned automatically.
PRUNE_STAMP = "last-prune"
PRUNE_EVERY = 86400.0  # seconds: a launcher prunes at most once a day


def cache_dir() -> str | None:
    """Where entries live, or ``None`` when the cache is off."""
    d = os.environ.get(ENV_DIR)
    if d is not None:
        return None if d in ("", "off") else d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tv-sandbox")


def alone(st: os.stat_result) -> bool:
    """Whether what ``st`` describes belongs to this user and no other user may write it."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def owned_alone(p: str) -> bool:
    """Whether the file ``p`` and its folder are this user's alone (:func:`alone`). What the cache
    holds is trusted -- code the launcher runs unsandboxed (as root, in CI), the shim a step
    preloads, a policy's parse -- only from a folder no other user can write entries into, as
    ``.pyc`` files never are: a ``TV_SANDBOX_CACHE_DIR`` or ``XDG_CACHE_HOME`` shared with others
    feeds the runs nothing (they parse, compile and build as without a cache)."""
    try:
        return alone(os.stat(p)) and alone(os.stat(os.path.dirname(p)))
    except OSError:
        return False


def fingerprint(raw: bytes) -> str:
    """A short name for ``raw`` (16 hex digits), the same in every process and run: the hash of
    the integer its bytes spell (``int`` hashing is not salted, unlike that of ``bytes``), so
    naming a cache entry loads neither ``zlib`` nor ``hashlib`` (each a shared library to map on
    the start-up path). Not a digest: whatever is found under the name is checked against
    ``raw``, or named with ``len(raw)`` beside it where it cannot be."""
    return f"{hash(int.from_bytes(raw, 'little')):016x}"


def _entry(kind: str, raw: bytes) -> str | None:
    d = cache_dir()
    if d is None:
        return None
    return os.path.join(d, f"{kind}-{fingerprint(raw)}-{len(raw)}.marshal")


def lookup(kind: str, raw: bytes) -> "Any":
    """What :func:`store` kept for ``(kind, raw)``, or ``None``."""
    path = _entry(kind, raw)
    if path is None or not owned_alone(path):
        return None
    try:
        with open(path, "rb") as fh:
            fmt, version, key, value = marshal.loads(fh.read())  # one read: load() reads piecemeal
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if fmt != _FORMAT or version != sys.version or key != raw:
        return None
    return value


def store(kind: str, raw: bytes, value: "Any") -> None:
    """Keep ``value`` (plain data: dicts, lists, str, numbers) for ``(kind, raw)``; best effort."""
    path = _entry(kind, raw)
    if path is None:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "wb") as fh:
            marshal.dump((_FORMAT, sys.version, raw, value), fh)
        os.replace(tmp, path)
    except (OSError, ValueError):  # ValueError: not marshal-able (a datetime in the TOML)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def prune_due(now: float | None = None) -> bool:
    """Whether the cache folder exists and was not pruned in the last day (:data:`PRUNE_STAMP`):
    one ``stat`` on most runs, so that a launcher loads :mod:`sandbox._cache_prune` only when it
    has work to do. A stamp dated a day or more in the future (a clock set back) is due too."""
    d = cache_dir()
    if d is None:
        return False
    try:
        st = os.stat(os.path.join(d, PRUNE_STAMP))
    except FileNotFoundError:
        try:
            return alone(os.stat(d))  # a folder others may write is not pruned (nor used)
        except OSError:
            return False
    except OSError:
        return False
    if st.st_uid != os.geteuid():
        return False  # another user's stamp: a folder shared with them, not pruned
    stamp = st.st_mtime
    if now is None:
        import time

        now = time.time()
    return abs(now - stamp) >= PRUNE_EVERY
