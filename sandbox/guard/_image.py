"""The guard's image: the compiled modules a sandboxed interpreter loads to install the guard,
in one file, so that its start-up reads one file instead of finding and reading eighteen.

Why: every Python interpreter of a step installs the guard before the user's first line
(``boot/sitecustomize.py``), and finding each module on ``sys.path`` -- a ``stat`` per entry
and folder, the ``__pycache__`` lookup, an open and a read per module, through the overlay and
Landlock -- costs ~2.5 ms of the ~8 ms that boot takes (``bench/bench_start.py``).

The image is a ``marshal`` file in the per-user cache (:mod:`sandbox._cache`) of two objects: a
header -- for each module of :data:`MODULES` its name, source path, whether it is a package,
the source's ``mtime_ns`` and size -- then the modules' code (the ``__pycache__`` bytecode when
fresh, else compiled here), in the same order. The
launcher builds it while its first step is set up (:func:`refresh`, off the start-up path) and
names it in the step's environment (:data:`ENV_IMAGE`, by :func:`current`); the step's
``sitecustomize`` uses it only when every source still has the recorded time and size --
otherwise, or when the file is missing or unreadable, the modules load from the package as
always. A step cannot write the cache (it is outside every writable root); a step that points
its own children at another file only changes how its children load their guard, which
``python -S`` already skips (the kernel layer holds either way; docs/security.md).
"""

from __future__ import annotations

import marshal
import os
import sys

from sandbox._cache import cache_dir, fingerprint
from sandbox.guard.bootstrap import ENV_IMAGE

__all__ = ["ENV_IMAGE", "MODULES", "current", "path", "refresh"]

FORMAT = 2  # boot/sitecustomize.py reads this format (2: code names its source by its absolute path)

#: What ``sitecustomize`` imports from the package to install the guard (tests/test_guard_image.py
#: checks it against a real step's ``sys.modules``), in import order.
MODULES = (
    "sandbox",
    "sandbox._lazy",
    "sandbox.guard",
    "sandbox.errors",
    "sandbox._paths",
    "sandbox._record",
    "sandbox.rules",
    "sandbox.policy",
    "sandbox.loader",
    "sandbox.guard.bootstrap",
    "sandbox.events",
    "sandbox._execute",
    "sandbox.guard._files",
    "sandbox.guard._engine",
    "sandbox.guard._audit",
    "sandbox.guard._listing",
    "sandbox.guard._os",
    "sandbox.guard._install",
)

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGES = {"sandbox", "sandbox.guard"}


def path() -> str | None:
    """Where this package's image lives (one per package folder and interpreter version), or
    None when the cache is off."""
    d = cache_dir()
    if d is None:
        return None
    key = fingerprint(os.fsencode(_PACKAGE))
    return os.path.join(d, f"guard-{sys.implementation.cache_tag}-{key}.marshal")


def current() -> str | None:
    """The image to name in a step's environment: its path when it exists, else None."""
    p = path()
    return p if p is not None and os.path.isfile(p) else None


def _source(name: str) -> str:
    parts = name.split(".")[1:]
    if name in _PACKAGES:
        return os.path.join(_PACKAGE, *parts, "__init__.py")
    return os.path.join(_PACKAGE, *parts) + ".py"


def _fresh(p: str) -> bool:
    """Whether the image at ``p`` answers for the sources as they are now (its header only)."""
    try:
        with open(p, "rb") as fh:
            fmt, version, keys = marshal.load(fh)
        if fmt != FORMAT or version != sys.version or [k[0] for k in keys] != list(MODULES):
            return False
        for _name, origin, _pkg, mtime_ns, size in keys:
            st = os.stat(origin)
            if (st.st_mtime_ns, st.st_size) != (mtime_ns, size):
                return False
    except (OSError, EOFError, ValueError, TypeError):
        return False
    return True


def _code(origin: str, st: os.stat_result) -> bytes:
    """The module's marshalled code: its ``__pycache__`` file when that matches the source
    (what the import system would load), else compiled from the source."""
    from _frozen_importlib_external import MAGIC_NUMBER, cache_from_source

    try:
        with open(cache_from_source(origin), "rb") as fh:
            data = fh.read()
        header = (
            MAGIC_NUMBER
            + (0).to_bytes(4, "little")
            + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
            + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        )
        if data[:16] == header:
            # as the import system does: the code names the source where it is now (compileall
            # may have recorded a relative or another path), for tracebacks and linecache
            import _imp

            code = marshal.loads(data[16:])
            _imp._fix_co_filename(code, origin)  # type: ignore[attr-defined]
            return marshal.dumps(code)
    except OSError:
        pass
    with open(origin, "rb") as fh:
        source = fh.read()
    return marshal.dumps(compile(source, origin, "exec", dont_inherit=True))


def refresh() -> bool:
    """Build the image unless it is fresh; True when one is in place afterwards. Best effort: a
    cache that cannot be written leaves the steps to load their modules as always."""
    p = path()
    if p is None:
        return False
    if _fresh(p):
        return True
    keys, codes = [], []
    try:
        for name in MODULES:
            origin = _source(name)
            st = os.stat(origin)
            code = _code(origin, st)
            if os.stat(origin).st_mtime_ns != st.st_mtime_ns:  # edited meanwhile: next time
                return False
            keys.append((name, origin, name in _PACKAGES, st.st_mtime_ns, st.st_size))
            codes.append(code)
        os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
        tmp = f"{p}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                # two objects: the header alone answers _fresh()
                marshal.dump((FORMAT, sys.version, tuple(keys)), fh)
                marshal.dump(tuple(codes), fh)
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except (OSError, SyntaxError, ValueError):
        return False
    return True
