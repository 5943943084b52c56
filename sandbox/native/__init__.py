"""The explain shim: an ``LD_PRELOAD`` library that records the writes the kernel layer refused to a
native or shell program (``shim.c``), so that they are explained and counted like the guard's.

It explains, it never enforces: the kernel layer stays the enforcer, and a step without the shim
is exactly as contained -- only its native denials stay unexplained (counted as such in the report).

- :func:`shim_path` -- the compiled library, built lazily with the system C compiler (``cc``) into
  the per-user cache (``sandbox._cache.cache_dir()``/``native/``) on first use, then reused; None
  (never an error) when there is no compiler, the cache is off, ``TV_SANDBOX_SHIM=off``, or the
  build fails -- :func:`unavailable_reason` says which.
- :func:`child_env` -- a step's environment with the shim preloaded and its raw log named
  (``TV_SANDBOX_NATIVE_EVENTS``).

After the step, :func:`sandbox.events.explain_native` maps the raw lines to explained events
(policy rule and hint, the user's path) in the run's event log.

Not seen by the shim (documented in docs/security.md): static binaries, programs that make system
calls themselves (Go), and libc-internal calls that bypass its exported names.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ENV_NATIVE_EVENTS = "TV_SANDBOX_NATIVE_EVENTS"
ENV_WATCH = "TV_SANDBOX_NATIVE_WATCH"  # ':'-separated: successful writes below these are recorded...
ENV_SKIP = "TV_SANDBOX_NATIVE_SKIP"  # ...unless below one of these
ENV_SHIM = "TV_SANDBOX_SHIM"  # "off": never preload it
NATIVE_EVENTS_NAME = "sandbox_native.jsonl"  # raw lines, in $TV_RUN_DIR/logs/ (reserved)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.c")

_reason: str | None = None


def unavailable_reason() -> str | None:
    """Why the last :func:`shim_path` returned None (None when it did not)."""
    return _reason


def _compiler() -> str | None:
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        for name in ("cc", "gcc", "clang"):
            p = os.path.join(d or ".", name)
            if os.access(p, os.X_OK) and not os.path.isdir(p):
                return p
    return None


def shim_path(*, build: bool = True) -> str | None:
    """The compiled shim for this source, building it when missing and ``build``; None when it
    cannot be had (see :func:`unavailable_reason`). Cheap when built: one read, one stat."""
    global _reason
    _reason = None
    if os.environ.get(ENV_SHIM) == "off":
        _reason = f"{ENV_SHIM}=off"
        return None
    from sandbox import _cache

    d = _cache.cache_dir()
    if d is None:
        _reason = "the per-user cache is off (TV_SANDBOX_CACHE_DIR=off): nowhere to keep the built shim"
        return None
    try:
        lib = library(d)
    except OSError as e:
        _reason = f"the shim's source {SOURCE} is missing ({e.strerror})"
        return None
    if os.path.exists(lib):
        if not _cache.owned_alone(lib):  # a library every step preloads: only one no other user wrote
            _reason = f"the shim {lib} or its folder is not this user's alone: writable by other users"
            return None
        return lib
    if not build:
        _reason = "not built yet"
        return None
    folder = os.path.dirname(lib)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        shared = not (_cache.alone(os.stat(d)) and _cache.alone(os.stat(folder)))
    except OSError as e:
        _reason = f"cannot make the shim's folder {folder} ({e.strerror})"
        return None
    if shared:
        _reason = f"the per-user cache {d} is writable by other users: no shim is built or taken there"
        return None
    return _build(lib)


def library(cache: str) -> str:
    """Where the shim for this source and machine lives in the cache folder ``cache``, built or
    not (named by the source's bytes: an edited ``shim.c`` is a new library). Raises ``OSError``
    when the source cannot be read. No side effect, unlike :func:`shim_path` (which records why
    it returned None): the cache's upkeep asks it which shim is in use."""
    from sandbox._cache import fingerprint

    with open(SOURCE, "rb") as fh:
        src = fh.read()
    return os.path.join(cache, "native", f"shim-{fingerprint(src)}-{len(src)}-{os.uname().machine}.so")


def _build(lib: str) -> str | None:
    global _reason
    cc = _compiler()
    if cc is None:
        _reason = "no C compiler (cc) on PATH to build the shim"
        return None
    import subprocess

    tmp = f"{lib}.{os.getpid()}.tmp"
    try:
        r = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-o", tmp, SOURCE, "-ldl"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            _reason = f"building the shim failed: {last}"
            return None
        os.replace(tmp, lib)  # atomic: concurrent launchers each build, one wins, all are whole
    except (OSError, subprocess.SubprocessError) as e:
        _reason = f"building the shim failed: {e}"
        return None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return lib


def child_env(
    env: Mapping[str, str],
    native_events: str,
    lib: str | None,
    *,
    watch: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> dict[str, str]:
    """``env`` with the shim ``lib`` preloaded (after any ``LD_PRELOAD`` the user set) and its raw
    log at ``native_events``; ``env`` unchanged (but copied) when ``lib`` is None.

    Refused writes are always recorded; successful ones only below a ``watch`` folder and not below
    a ``skip`` one -- the workspace as the step sees it (its path and the host's, which the kernel
    layer binds over it), minus ``$TV_RUN_DIR``: writes there are the overlay's redirects (or, on
    a mount the policy opens, changes of the host), which no other layer records.
    """
    out = dict(env)
    for name in (ENV_NATIVE_EVENTS, ENV_WATCH, ENV_SKIP):
        out.pop(name, None)  # a step's environment never chooses where the shim writes
    if lib is None:
        return out
    pre = [p for p in out.get("LD_PRELOAD", "").replace(":", " ").split() if p and p != lib]
    out["LD_PRELOAD"] = " ".join([*pre, lib])
    out[ENV_NATIVE_EVENTS] = native_events
    if watch:
        out[ENV_WATCH] = ":".join(watch)
    if skip:
        out[ENV_SKIP] = ":".join(skip)
    return out
