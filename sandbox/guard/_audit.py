"""The audit-hook backstop: what goes around the patched names is decided anyway.

``_io.open``, ``posix.remove``, a ``from os import remove`` bound before the guard was installed,
a C extension calling ``PyFile``/``os`` APIs -- all of them raise CPython audit events. The hook
re-decides those events with the same policy and raises :class:`~sandbox.errors.AccessDenied`
(``layer="python-audit"``) for anything that is DENY, or that needs a REDIRECT of a mutation: a
redirect reaching the hook means the call went around the patched layer, which would have
rewritten it. A redirect's target (the wrappers call the original on it) is simply allowed.

The events decided (:data:`_HANDLERS`): ``open`` (a write mode or write flags), ``os.remove``,
``os.rmdir``, ``os.mkdir``, ``os.rename`` (both ends), ``os.link`` (both ends), ``os.symlink`` (its
name), ``os.chmod``, ``os.chown``, ``os.utime``, ``os.truncate``, ``os.setxattr``,
``os.removexattr`` and ``mmap.__new__`` (a writable shared map of a descriptor).

A call the wrappers already decided is recognised by identity: they put the path object they hand
to the original in ``TOKEN`` (``guard/_files``, per thread), and the hook lets exactly that object
through; while the guard itself makes a redirect target's folders or sets a copy-up's times,
``TOKEN.obj`` is ``INTERNAL`` and every path goes through.

An audit hook cannot be removed, so one is installed per process, on the first ``install``, and
does nothing while no guard is active. Its first line keeps every other event cheap. The hook also
drops the engines' cached resolutions on ``os.rename``/``os.symlink``/``os.link``/``os.remove``/
``os.rmdir`` events that may change how paths resolve, and the relative ones on ``os.chdir``,
whoever made them.

What audit events do not show: ``mkfifo``/``mknod`` (no event), ``os.open``'s ``dir_fd`` (relative
names are taken as relative to the current folder), ``follow_symlinks=False`` of chmod/chown/utime
(the link is followed, which can only be stricter). Native code that calls libc directly raises no
event at all: that is the kernel layer's part.
"""

from __future__ import annotations

import os
import sys

from sandbox._denied import AccessDenied
from sandbox._record import replace
from sandbox.guard import _engine
from sandbox.guard._engine import ALLOW, AUDIT_LAYER, DENY, INTERNAL, TOKEN, Engine
from sandbox.guard._files import structural
from sandbox.policy import Op
from sandbox.rules import ENV_EVENTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EXCL = os.O_CREAT | os.O_EXCL
_INVALIDATE = frozenset({"os.rename", "os.symlink", "os.link", "os.remove", "os.rmdir"})
_installed = False


def _fd(v: Any) -> int | None:
    return None if v is None or v == -1 else int(v)


def check(g: Engine, arg: Any, op: Op, dir_fd: int | None = None, follow: bool = True) -> None:
    """Decide one path of an event; raise unless the call may go ahead as it is."""
    if isinstance(arg, int):
        g.check_fd(arg, op, AUDIT_LAYER)
        return
    try:
        real = g._resolve_exact(_engine._to_str(arg), dir_fd, follow)
    except (TypeError, ValueError, OSError):
        return  # not a path the call itself will accept: it fails on its own
    d = g.decide(real, op)
    if d.action is ALLOW:
        return
    if d.action is not DENY:
        if op is Op.READ or g._on_original(d):
            return  # a read of the original is a read; the overlay maps this redirect itself
        d = replace(
            d,
            action=DENY,
            reason=f"this call went around the Python guard's patched functions (_io/posix, or a name "
            f"bound before the sandbox started), so its redirect to {d.target} cannot be applied",
            hint="call it through open()/os./pathlib/shutil, or write under $TV_RUN_DIR",
        )
    raise g.deny(d, arg, op, AUDIT_LAYER)


def _open(g: Engine, a: tuple[Any, ...]) -> None:
    path, _mode, flags = a
    if isinstance(path, int):
        return  # an open descriptor: checked when it was opened
    flags = flags or 0
    if not flags & _WRITE_FLAGS:
        if g.read_rules:
            check(g, path, Op.READ, None, True)
        return
    if flags & _APPEND_ONLY == os.O_APPEND and _is_event_log(path):
        return  # an EventLog (fsspec's, in a step) appending to the run's log: a reserved name
    check(g, path, Op.WRITE, None, (flags & _EXCL) != _EXCL and not flags & os.O_NOFOLLOW)


_APPEND_ONLY = os.O_APPEND | os.O_TRUNC


def _is_event_log(path: Any) -> bool:
    """Is ``path`` the run's event log (``TV_SANDBOX_EVENTS``), as :class:`EventLog` opens it?"""
    log = os.environ.get(ENV_EVENTS)
    try:
        return bool(log) and _engine._to_str(path) == log
    except (TypeError, ValueError):
        return False


def _mmap(g: Engine, a: tuple[Any, ...]) -> None:
    fileno, _length, access, _offset = a
    if fileno == -1 or access in (1, 3):  # anonymous; ACCESS_READ; ACCESS_COPY (private)
        return
    import fcntl  # only when a file is mapped: not at start-up

    try:
        if fcntl.fcntl(fileno, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            return  # a read-only descriptor cannot be mapped writable-shared
    except OSError:
        return
    g.check_fd(fileno, Op.WRITE, AUDIT_LAYER)


def _rename(g: Engine, a: tuple[Any, ...]) -> None:
    check(g, a[0], Op.RENAME, _fd(a[2]), False)
    check(g, a[1], Op.RENAME, _fd(a[3]), False)


def _link(g: Engine, a: tuple[Any, ...]) -> None:
    check(g, a[1], Op.LINK, _fd(a[3]), False)
    check(g, a[0], Op.LINK, _fd(a[2]), True)


_HANDLERS: dict[str, Callable[[Engine, tuple[Any, ...]], None]] = {
    "open": _open,
    "os.remove": lambda g, a: check(g, a[0], Op.DELETE, _fd(a[1]), False),
    "os.rmdir": lambda g, a: check(g, a[0], Op.RMDIR, _fd(a[1]), False),
    "os.mkdir": lambda g, a: check(g, a[0], Op.MKDIR, _fd(a[2]), False),
    "os.rename": _rename,
    "os.link": _link,
    "os.symlink": lambda g, a: check(g, a[1], Op.LINK, _fd(a[2]), False),
    "os.chmod": lambda g, a: check(g, a[0], Op.METADATA, _fd(a[2])),
    "os.chown": lambda g, a: check(g, a[0], Op.METADATA, _fd(a[3])),
    "os.utime": lambda g, a: check(g, a[0], Op.METADATA, _fd(a[3])),
    "os.truncate": lambda g, a: check(g, a[0], Op.WRITE),
    "os.setxattr": lambda g, a: check(g, a[0], Op.METADATA),
    "os.removexattr": lambda g, a: check(g, a[0], Op.METADATA),
    "os.chdir": lambda g, a: None,
    "mmap.__new__": _mmap,
}
_EVENTS = frozenset(_HANDLERS)


def _changes_resolution(event: str, a: tuple[Any, ...]) -> bool:
    """Made around the wrappers: may it change how paths resolve (see ``_engine``)?"""
    if event in ("os.symlink", "os.link", "os.rmdir"):
        return True
    if event == "os.remove":
        return structural(a[0], _fd(a[1]))
    return structural(a[0], _fd(a[2])) or structural(a[1], _fd(a[3]))  # os.rename


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in _EVENTS:
        return
    g = _engine.CURRENT
    if g is None:
        return
    tok = TOKEN.obj
    if tok is not None and (args[0] is tok or tok is INTERNAL):
        return  # decided by a wrapper, which also keeps the caches right
    if event in _INVALIDATE:
        if _changes_resolution(event, args):
            _engine.invalidate_all()
    elif event == "os.chdir":
        _engine.invalidate_all(cwd=True)
    try:
        _HANDLERS[event](g, args)
    except AccessDenied as e:
        raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)


def ensure_hook() -> None:
    """Add the hook to this process, once (``sys.addaudithook`` has no undo)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
