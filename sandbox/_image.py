"""Module images: the compiled modules an interpreter of ours is known to load, in one file per
kind, so that its start-up reads one file instead of finding and reading each module.

Why: finding a module on ``sys.path`` -- a ``stat`` per entry and folder, the ``__pycache__``
lookup, an open and a read per module -- costs ~60 us a module on a small machine, and both
interpreters on a step's start-up path load dozens: every Python interpreter of a step installs
the guard before the user's first line (``guard/boot/sitecustomize.py``: ~1.1 ms of its ~8), and
``tv-sandbox run`` loads the policy model, the runner, the kernel layer and the exporter
(~1.5 ms; ``bench/bench_start.py``).

Two kinds: ``guard`` (:data:`GUARD`) and ``launcher`` (:data:`LAUNCHER`, the keeper's modules
included: it is a fork of the launcher). Each is a ``marshal`` file in the per-user cache
(:mod:`sandbox._cache`) of two objects: a header -- for each module its name, source path,
whether it is a package, the source's ``mtime_ns`` and size -- then the modules' code (compiled
from the sources, :func:`_code`), in the same order. The launcher builds
both while its first step runs (:func:`refresh`, off the start-up path). A step finds its
image in its environment (``TV_SANDBOX_GUARD_IMAGE``, by :func:`current`), the launcher its own
by :func:`path` (:func:`install`); each is used only when every source still has the recorded
time and size (:func:`sandbox._lazy.load_image`) -- otherwise, or when the file is missing or
unreadable, the modules load from the package as always. Each package folder (a clone, a
worktree, a venv) has its own pair, which :mod:`sandbox._cache_prune` removes once the folder is
gone -- found from the header's first source path, so the header stays a list of absolute paths.

A step cannot write the cache (it is outside every writable root). Under ``--kernel off`` a
step's native writers can -- as they can the package's own ``__pycache__``, with the same
effect on the next launcher (docs/security.md); a step that points its own children at another
guard image only changes how its children load their guard, which ``python -S`` already skips.
"""

import marshal
import os
import sys
from _thread import allocate_lock

from sandbox._cache import cache_dir, fingerprint, owned_alone
from sandbox._lazy import IMAGE_FORMAT as FORMAT
from sandbox._lazy import load_image, parse_image

__all__ = ["FORMAT", "GUARD", "LAUNCHER", "current", "install", "path", "refresh"]

#: What ``sitecustomize`` imports from the package to install the guard, the package itself first
#: (tests/test_image.py checks it against a real step's ``sys.modules``), in import order.
GUARD = (
    "sandbox",
    "sandbox._lazy",
    "sandbox.guard",
    "sandbox._denied",
    "sandbox._paths",
    "sandbox._record",
    "sandbox.rules",
    "sandbox.policy",
    "sandbox.resolved",
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

#: What ``tv-sandbox run`` imports from the package once :func:`install` has put its image in
#: place (``sandbox``, ``_lazy``, ``errors``, ``_denied``, ``cli``, this module and ``_cache`` load before),
#: the early keeper's kernel layer included (tests/test_image.py checks it against a real run).
LAUNCHER = (
    "sandbox._record",
    "sandbox.kernel",
    "sandbox.kernel.plan",
    "sandbox.kernel.spawning",
    "sandbox.kernel._early",
    "sandbox.kernel._ffi",
    "sandbox.kernel._libc",
    "sandbox.kernel.landlock",
    "sandbox.kernel.mounts",
    "sandbox.kernel._mapper",
    "sandbox.kernel._stdio",
    "sandbox.kernel._keeper",
    "sandbox._paths",
    "sandbox._mountinfo",
    "sandbox.rules",
    "sandbox.policy",
    "sandbox.loader",
    "sandbox.resolved",
    "sandbox.report",
    "sandbox.runs_view",
    "sandbox.workspace",
    "sandbox.runner",
    "sandbox.policy_kernel",
    "sandbox._process",
    "sandbox._output",
    "sandbox.events",
    "sandbox.run",
    "sandbox.native",
    "sandbox.guard",
    "sandbox.guard.bootstrap",
    "sandbox.export",
    "sandbox._json",
    "sandbox._digest",
    "sandbox.export.manifest",
    "sandbox.export._recovery",
    "sandbox.export._stager",
    "sandbox.export._exporter",
    "sandbox.export._space",
    "sandbox.finish",
)

KINDS = {"guard": GUARD, "launcher": LAUNCHER}

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def path(kind: str = "guard") -> str | None:
    """Where this package's image of ``kind`` lives (one per package folder and interpreter
    version), or None when the cache is off."""
    d = cache_dir()
    if d is None:
        return None
    key = fingerprint(os.fsencode(_PACKAGE))
    return os.path.join(d, f"{kind}-{sys.implementation.cache_tag}-{key}.marshal")


def current() -> str | None:
    """The guard's image to name in a step's environment: its path when it exists in a cache folder
    of this user's alone (:func:`sandbox._cache.owned_alone`), else None."""
    p = path()
    return p if p is not None and os.path.isfile(p) and owned_alone(p) else None


def install() -> bool:
    """Put the launcher's image first on ``sys.meta_path`` when it answers for the package as it
    is now (:func:`sandbox._lazy.load_image`); True when it did. For ``tv-sandbox run``, a
    process that lives for one run: the image stays in place (and serves the keeper it forks)."""
    global _installed
    p = path("launcher")
    if p is None or not owned_alone(p):
        return False
    image = load_image(p, _PACKAGE)
    if image is None:
        return False
    sys.meta_path.insert(0, image)
    _installed = p
    return True


_installed: str | None = None  # the launcher's image this process runs from: fresh by that fact
_refreshing = allocate_lock()


def _source(name: str) -> str:
    parts = os.path.join(_PACKAGE, *name.split(".")[1:])
    return os.path.join(parts, "__init__.py") if os.path.isdir(parts) else parts + ".py"


def _fresh(p: str, modules: tuple[str, ...]) -> bool:
    """Whether the image at ``p`` answers for the sources as they are now, whole."""
    try:
        with open(p, "rb") as fh:
            fmt, version, keys, block = parse_image(fh.read())
        if fmt != FORMAT or version != sys.version or [k[0] for k in keys] != list(modules):
            return False
        if sum(k[6] for k in keys) != len(block):  # truncated, or more than its modules
            return False
        for _name, origin, _pkg, mtime_ns, size, _start, _length, _cached in keys:
            st = os.stat(origin)
            if (st.st_mtime_ns, st.st_size) != (mtime_ns, size):
                return False
    except Exception:  # unreadable, truncated, another layout: stale, so built anew
        return False
    return True


def _code(origin: str) -> bytes:
    """The module's marshalled code, compiled from its source as the import system would, but
    for what no interpreter of ours reads and each would pay to load (only for images, built off
    the start-up path; the code names the source by its absolute path):

    - ``from __future__ import annotations`` becomes the compiler flag it stands for. As a
      statement it also runs at load time -- an import of the stdlib's ``__future__`` module,
      found on ``sys.path`` and read: ~0.25 ms of each interpreter's start-up.
    - Docstrings are left out, as ``python -OO`` leaves them (``assert`` statements stay): a
      fifth of the code's bytes, ~0.3 ms of every sandboxed interpreter's start-up. ``help()``
      on the package's objects shows them where the package loads as usual (outside steps)."""
    import __future__

    import ast

    with open(origin, "rb") as fh:
        tree = ast.parse(fh.read(), origin)
    flags = 0
    body = tree.body
    for i, node in enumerate(body[:2]):  # after the docstring, if any, as the language requires
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            if [a.name for a in node.names] == ["annotations"] and node.names[0].asname is None:
                del body[i]
                flags = __future__.annotations.compiler_flag
            break
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = scope.body[0] if scope.body else None
        value = first.value if isinstance(first, ast.Expr) else None
        if first is not None and isinstance(value, ast.Constant) and isinstance(value.value, str):
            scope.body[0] = ast.copy_location(ast.Pass(), first)  # a docstring; a body is never empty
    return marshal.dumps(compile(tree, origin, "exec", flags=flags, dont_inherit=True))


def refresh(kind: str = "guard") -> bool:
    """Build the image of ``kind`` unless it is fresh; True when one is in place afterwards. Best
    effort: a cache that cannot be written leaves the modules to load from the package as always."""
    p = path(kind)
    if p is None:
        return False
    if p == _installed:
        return True
    with _refreshing:  # two runs of one process (threads) never write one file at once
        return _refresh(p, KINDS[kind])


def _refresh(p: str, modules: tuple[str, ...]) -> bool:
    if _fresh(p, modules):
        return True
    from _frozen_importlib_external import cache_from_source

    keys, block = [], bytearray()
    try:
        for name in modules:
            origin = _source(name)
            st = os.stat(origin)
            code = _code(origin)
            if os.stat(origin).st_mtime_ns != st.st_mtime_ns:  # edited meanwhile: next time
                return False
            is_pkg = origin.endswith("__init__.py")
            cached = cache_from_source(origin)
            keys.append((name, origin, is_pkg, st.st_mtime_ns, st.st_size, len(block), len(code), cached))
            block += code
        header = marshal.dumps((FORMAT, sys.version, tuple(keys)))
        os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
        tmp = f"{p}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as fh:  # the layout sandbox._lazy.parse_image reads
                fh.write(len(header).to_bytes(8, "little"))
                fh.write(header)
                fh.write(block)
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
