"""How :class:`sandbox.fs.SandboxFileSystem` checks a call: the one route every path takes -- resolve,
decide, raise on DENY -- and the execution of a decision before the backend is called (read-your-
writes, copy-up, settling a redirect, the folder a redirect needs, removals). The execution is
:mod:`sandbox._execute`'s, the Python guard's too, over the primitives :class:`BackendFiles`
supplies (the backend's methods). A mixin, so that ``_filesystem.py`` holds the fsspec API and
this module the policy side (fsspec is imported in ``_filesystem.py`` only).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

from sandbox import _execute, _paths
from sandbox._execute import ENV_EVENTS, ENV_OVERLAY, ENV_POLICY, NOTHING_TO_DO
from sandbox.errors import AccessDenied
from sandbox.loader import policy_from_dict
from sandbox.policy import (
    Action,
    Decision,
    Op,
    Policy,
    PolicySpec,
    bind_for_library,
)
from sandbox.resolved import load_resolved

TYPE_CHECKING = False
EventSink = Callable[[dict[str, Any]], None]  # receives each deny / redirect record

LAYER = "fsspec"
__all__ = [
    "ENV_EVENTS",
    "ENV_OVERLAY",
    "ENV_POLICY",
    "LAYER",
    "BackendFiles",
    "EventSink",
    "Routing",
    "load_policy",
]


class _Route(NamedTuple):
    given: str  # the path as the caller gave it, without the protocol: what errors and listings report
    resolved: str  # what the backend would reach, and what the policy decided on
    decision: Decision


def load_policy(
    policy: Policy | PolicySpec | Mapping[str, Any] | str | os.PathLike[str] | None,
    host: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    mode: str = "enforce",
) -> Policy:
    """``policy=`` as given (a :class:`PolicySpec` bound to ``host``/``run_id``), or the resolved
    policy a sandboxed step names in ``$TV_SANDBOX_POLICY``."""
    if isinstance(policy, (Policy, PolicySpec)):
        return bind_for_library(policy, host, run_id, mode)
    if host is not None or run_id is not None:
        raise TypeError("host= and run_id= bind a PolicySpec (what sandbox.loader.load_policy returns)")
    if isinstance(policy, Mapping):
        return policy_from_dict(policy)
    src = os.fspath(policy) if policy is not None else os.environ.get(ENV_POLICY, "")
    if not src:
        raise ValueError(
            "SandboxFileSystem needs a policy: pass policy=<sandbox.policy.Policy, its to_dict(), "
            "or the path sandbox.resolved.save_resolved wrote it to (marshal; JSON for a .json path)> "
            "-- e.g. fsspec.filesystem('sandbox', policy=p) or "
            "storage_options={'policy': p} -- or run inside a sandboxed step, where "
            f"${ENV_POLICY} names the run's resolved policy"
        )
    try:
        return load_resolved(src)
    except OSError as e:
        raise ValueError(f"cannot read the policy file {src} ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{src} is not a resolved policy (see sandbox.resolved.save_resolved): {e!r}"
        ) from None


class Routing:
    """The policy side of :class:`~sandbox.fs.SandboxFileSystem` (see the module docstring)."""

    fs: Any  # the backend filesystem
    policy: Policy
    on_event: EventSink | None
    _local: bool  # the backend is the local filesystem (symlinks, the kernel's resolution)
    _overlay: bool  # the kernel layer's overlay maps workspace redirects (see _filesystem.py)
    _files: BackendFiles  # the primitives sandbox._execute works with: the backend's methods

    if TYPE_CHECKING:

        @classmethod
        def _strip_protocol(cls, path: Any) -> Any: ...

        @classmethod
        def _parent(cls, path: Any) -> str: ...

        def makedirs(self, path: Any, exist_ok: bool = False) -> None: ...

    def _resolve(self, path: str, follow: bool = True) -> str:
        """The path the backend reaches for ``path``: what the policy must decide on."""
        p = self.fs._strip_protocol(path)
        if self._local:  # LocalFileSystem's reading (file://, ~, the cwd), then the kernel's
            return _paths.resolve(p, follow=follow)
        lead = "/" if p.startswith("/") else ""
        norm = posixpath.normpath(p).lstrip("/") if p else ""
        return lead + ("" if norm == "." else norm)

    def _exists(self, path: str, follow: bool = True) -> bool:
        return bool(self.fs.exists(path) if follow else self.fs.lexists(path))

    # -- the check --------------------------------------------------------------------------------

    def _route(self, path: Any, op: Op, *, follow: bool = True) -> _Route:
        """THE check: resolve, decide, raise on DENY. Nothing reaches the backend around it."""
        given = self._strip_protocol(path)
        resolved = self._resolve(given, follow)
        d = self.policy.decide(resolved, op)
        if d.action is Action.DENY:
            raise self._deny(d, given, op)
        return _Route(given, resolved, d)

    def _deny(self, d: Decision, given: str, op: Op) -> AccessDenied:
        self._emit(d, op, given, action="deny")
        user = self.policy.user_path(d.path) if d.path.startswith("/") else d.path
        return d.error(given, op, profile=self.policy.profile, layer=LAYER, resolved=user)

    def _emit(
        self, d: Decision, op: Op, given: str, target: str | None = None, action: str | None = None
    ) -> None:
        if self.on_event is not None:
            _execute.emit(
                self.on_event, LAYER, self.policy.profile, d, op, given, d.path, target or d.target, action
            )

    def _settle(self, r: _Route, op: Op, follow: bool) -> tuple[Decision, str]:
        """(decision, real target) of a redirect. A mutation's target is decided again by
        ``Policy.settle``: a symlink planted in the run folder must not carry a redirected write
        out of it (an audit capture may redirect once more). A read only needs the real path."""
        resolve = partial(self._resolve, follow=follow)
        if op is Op.READ:
            assert r.decision.target is not None
            place = _execute.read_place(
                self.policy,
                resolve(r.decision.target),
                resolve,
                partial(self._exists, follow=follow),
                self._overlay,
            )
            return r.decision, place
        d = _execute.settle(self.policy, r.decision, op, resolve)
        if d.action is Action.DENY or d.target is None:
            raise self._deny(d, r.given, op)
        return d, d.target

    def _readable(self, path: Any, *, follow: bool = True) -> tuple[str, str]:
        """(the path as given, backend path) to read: a redirect's target when it exists, else the
        original."""
        r = self._route(path, Op.READ, follow=follow)
        if r.decision.action is Action.REDIRECT and not self._overlay_maps(r.decision):
            d, target = self._settle(r, Op.READ, follow)
            if self._exists(target, follow):
                self._emit(d, Op.READ, r.given, target)
                return r.given, target
        return r.given, r.resolved

    def _mutable(
        self,
        path: Any,
        op: Op,
        *,
        follow: bool = True,
        copy_up: bool = False,
        parents: bool | None = None,
    ) -> tuple[str, str]:
        """(the path as given, backend path) a mutation acts on. ``parents`` (default: what the
        backend does by itself, ``auto_mkdir``) creates the missing parent folders first, each one
        checked."""
        r = self._route(path, op, follow=follow)
        if parents if parents is not None else getattr(self.fs, "auto_mkdir", False):
            parent = self._parent(r.given)
            if parent != r.given:
                self.makedirs(parent, exist_ok=True)  # each folder decided (and redirected) itself
        if r.decision.action is Action.ALLOW or self._overlay_maps(r.decision):
            if r.decision.action is not Action.ALLOW:
                self._emit(r.decision, op, r.given)
            return r.given, r.resolved
        d, target = self._settle(r, op, follow)
        self._emit(d, op, r.given, target)
        # The original is the place the settled decision was made on (the resolved path, or where a
        # link the run planted leads). The run folder mirrors the workspace: the target's folder is
        # made where the original's folder exists (as the guard and the kernel's overlay do), else
        # the call fails as it would.
        files = self._files
        _execute.make_parent(files, target, d.path)
        if copy_up:
            _execute.copy_up(files, d.path, target, follow)
        return r.given, target

    def _removable(self, path: Any, op: Op, *, keep: bool = False) -> tuple[str, str | None]:
        """(the path as given, backend path) to remove or move away; None: an audit capture of a host
        original, nothing to do. ``keep``: the op moves the content on (mv): a captured original
        is copied up first (:func:`sandbox._execute.removal`)."""
        r = self._route(path, op, follow=False)
        if r.decision.action is Action.ALLOW:
            return r.given, r.resolved
        if self._overlay_maps(r.decision):
            self._emit(r.decision, op, r.given)
            return r.given, r.resolved
        d, target = self._settle(r, op, False)
        outcome = _execute.removal(self.policy, d, d.path, target, self._files, keep=keep)
        if isinstance(outcome, Decision):
            raise self._deny(outcome, r.given, op)
        self._emit(d, op, r.given, target)
        return r.given, None if outcome is NOTHING_TO_DO else target

    def _overlay_maps(self, d: Decision) -> bool:
        return _execute.defers_to_overlay(self._overlay, d)

    def _require(self, method: str) -> None:
        if not callable(getattr(self.fs, method, None)):
            raise NotImplementedError(f"{type(self.fs).__name__} has no {method}()")


class BackendFiles:
    """The primitives :mod:`sandbox._execute` executes a decision over, for the fsspec filesystem:
    the backend's own methods. On a local backend the details fsspec does not model -- a symlink
    copied as a symlink, modes and times -- are the ``os`` calls ``LocalFileSystem`` makes itself
    (in a sandboxed step, through the Python guard as any call is)."""

    __slots__ = ("fs", "local")

    def __init__(self, fs: Any, local: bool) -> None:
        self.fs, self.local = fs, local

    def lexists(self, path: str) -> bool:
        return bool(self.fs.lexists(path) if self.local else self.fs.exists(path))

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(path))

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def kind(self, path: str, follow: bool) -> str | None:
        if self.local:
            try:
                mode = (os.stat(path) if follow else os.lstat(path)).st_mode
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(mode):
                return _execute.LINK
            if stat.S_ISDIR(mode):
                return _execute.DIR
            return _execute.FILE if stat.S_ISREG(mode) else _execute.OTHER
        try:
            kind = self.fs.info(path).get("type")
        except FileNotFoundError:
            return None
        return {"directory": _execute.DIR, "file": _execute.FILE}.get(kind, _execute.OTHER)

    def copy_link(self, src: str, dst: str) -> None:
        os.symlink(os.readlink(src), dst)  # kind() says LINK on a local backend only

    def copy_dir(self, src: str, dst: str) -> None:
        if self.local:
            os.mkdir(dst, stat.S_IMODE(os.stat(src).st_mode))
        else:
            self.fs.makedirs(dst, exist_ok=True)

    def copy_file(self, src: str, dst: str) -> None:
        if self.local:
            shutil.copy2(src, dst)  # content and mode, as an overlay's copy-up keeps them
        else:
            self.fs.cp_file(src, dst)

    def names(self, folder: str) -> list[str]:
        if self.local:
            return os.listdir(folder)
        return [posixpath.basename(str(p).rstrip("/")) for p in self.fs.ls(folder, detail=False)]

    def copy_times(self, src: str, dst: str) -> None:
        if self.local:
            st = os.lstat(src) if os.path.islink(dst) else os.stat(src)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
