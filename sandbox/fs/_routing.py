"""How :class:`sandbox.fs.SandboxFileSystem` checks a call: the one route every path takes -- resolve,
decide, raise on DENY -- and the execution of a decision before the backend is called (read-your-
writes, copy-up, settling a redirect, the folder a redirect needs). A mixin, so that
``_filesystem.py`` holds the fsspec API and this module the policy side; neither imports the
other's concerns (fsspec is imported in ``_filesystem.py`` only).
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

from sandbox import _paths
from sandbox._record import replace
from sandbox.errors import AccessDenied
from sandbox.loader import load_resolved, policy_from_dict
from sandbox.policy import (
    Action,
    Decision,
    Op,
    Policy,
    PolicySpec,
    bind_for_library,
    overlay_maps,
)

TYPE_CHECKING = False
EventSink = Callable[[dict[str, Any]], None]  # receives each deny / redirect record

ENV_POLICY = "TV_SANDBOX_POLICY"
ENV_EVENTS = "TV_SANDBOX_EVENTS"  # the run's event log (see sandbox.guard.bootstrap)
ENV_OVERLAY = "TV_SANDBOX_OVERLAY"  # "1": the kernel layer's overlay maps the workspace
LAYER = "fsspec"
READ_HOPS = 4  # how many further copies a read follows (see Routing._read_place)


class _Route(NamedTuple):
    shown: str  # the caller's path without the protocol: what errors and listings report
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
            "or the path of that dict as JSON> -- e.g. fsspec.filesystem('sandbox', policy=p) or "
            "storage_options={'policy': p} -- or run inside a sandboxed step, where "
            f"${ENV_POLICY} names the run's resolved policy"
        )
    try:
        return load_resolved(src)
    except OSError as e:
        raise ValueError(f"cannot read the policy file {src} ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{src} is not a resolved policy (see sandbox.loader.save_resolved): {e!r}"
        ) from None


class Routing:
    """The policy side of :class:`~sandbox.fs.SandboxFileSystem` (see the module docstring)."""

    fs: Any  # the backend filesystem
    policy: Policy
    on_event: EventSink | None
    _local: bool  # the backend is the local filesystem (symlinks, the kernel's resolution)
    _overlay: bool  # the kernel layer's overlay maps workspace redirects (see _filesystem.py)

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
        shown = self._strip_protocol(path)
        resolved = self._resolve(shown, follow)
        d = self.policy.decide(resolved, op)
        if d.action is Action.DENY:
            raise self._deny(d, shown, op)
        return _Route(shown, resolved, d)

    def _deny(self, d: Decision, shown: str, op: Op) -> AccessDenied:
        self._emit(d, op, shown)
        user = self.policy.user_path(d.path) if d.path.startswith("/") else d.path
        return d.error(shown, op, profile=self.policy.profile, layer=LAYER, resolved=user)

    def _emit(self, d: Decision, op: Op, shown: str, target: str | None = None) -> None:
        if self.on_event is not None:
            self.on_event(
                {
                    "layer": LAYER,
                    "action": str(d.action),
                    "op": str(op),
                    "rule": d.rule,
                    "path": shown,
                    "resolved": d.path,
                    "target": target or d.target,
                    "captured": d.captured,
                    "profile": self.policy.profile,
                    "reason": d.reason,
                    "hint": d.hint,
                }
            )

    def _settle(self, r: _Route, op: Op, follow: bool) -> tuple[Decision, str]:
        """(decision, real target) of a redirect. A mutation's target is decided again by
        ``Policy.settle``: a symlink planted in the run folder must not carry a redirected write
        out of it (an audit capture may redirect once more). A read only needs the real path."""
        resolve = partial(self._resolve, follow=follow)
        if op is Op.READ:
            assert r.decision.target is not None
            return r.decision, self._read_place(resolve(r.decision.target), follow)
        d = self.policy.settle(r.decision, op, resolve)
        if d.action is Action.REDIRECT and d.target is not None:
            real = resolve(d.target)
            if self.policy.decide(real, op).action is Action.ALLOW:  # act only on what is allowed
                return d, real
            d = replace(d, action=Action.DENY, reason="the redirect does not settle in the run folder")
        raise self._deny(d, r.shown, op)

    def _read_place(self, real: str, follow: bool) -> str:
        """Where a read redirected to the run folder's copy (``real``, resolved) looks. The copy
        may lead -- through a link the run planted -- to a host path: an alias of the workspace
        path, whose reads look in the run folder first too (the kernel layer shows the workspace
        at the host's path). So the redirect is followed as ``Policy.settle`` follows a
        mutation's, and the deepest copy that exists wins (an overlay's upper layer); none:
        ``real``, as before. The guard follows as far (``sandbox.guard._engine.READ_HOPS``)."""
        chain = [real]
        for _ in range(READ_HOPS):
            d = self.policy.decide(chain[-1], Op.READ)
            if d.action is not Action.REDIRECT or d.target is None or self._overlay_maps(d):
                break
            chain.append(self._resolve(d.target, follow))
        for place in reversed(chain[1:]):
            if self._exists(place, follow):
                return place
        return real

    def _readable(self, path: Any, *, follow: bool = True) -> tuple[str, str]:
        """(shown, backend path) to read: a redirect's target when it exists, else the original."""
        r = self._route(path, Op.READ, follow=follow)
        if r.decision.action is Action.REDIRECT and not self._overlay_maps(r.decision):
            d, target = self._settle(r, Op.READ, follow)
            if self._exists(target, follow):
                self._emit(d, Op.READ, r.shown, target)
                return r.shown, target
        return r.shown, r.resolved

    def _mutable(
        self,
        path: Any,
        op: Op,
        *,
        follow: bool = True,
        copy_up: bool = False,
        parents: bool | None = None,
    ) -> tuple[str, str]:
        """(shown, backend path) a mutation acts on. ``parents`` (default: what the backend does
        by itself, ``auto_mkdir``) creates the missing parent folders first, each one checked."""
        r = self._route(path, op, follow=follow)
        if parents if parents is not None else getattr(self.fs, "auto_mkdir", False):
            parent = self._parent(r.shown)
            if parent != r.shown:
                self.makedirs(parent, exist_ok=True)  # each folder decided (and redirected) itself
        if r.decision.action is Action.ALLOW or self._overlay_maps(r.decision):
            if r.decision.action is not Action.ALLOW:
                self._emit(r.decision, op, r.shown)
            return r.shown, r.resolved
        d, target = self._settle(r, op, follow)
        self._emit(d, op, r.shown, target)
        # The original is the place the settled decision was made on (the resolved path, or where a
        # link the run planted leads). The run folder mirrors the workspace: the target's folder is
        # made where the original's folder exists (as the guard and the kernel's overlay do), else
        # the call fails as it would.
        original = d.path
        folder = posixpath.dirname(target)
        if not self.fs.isdir(folder) and self.fs.isdir(posixpath.dirname(original)):
            self.fs.makedirs(folder, exist_ok=True)
        if copy_up and not self._exists(target, follow) and self._exists(original, follow):
            if self._local and not follow and os.path.islink(original):
                # a link as a link (link(2) links a symlink source itself), as the guard copies up
                shutil.copy2(original, target, follow_symlinks=False)
            elif self.fs.isdir(original):
                self.fs.makedirs(target, exist_ok=True)
            elif self._local:
                shutil.copy2(original, target)  # keeps the mode, as an overlay's copy-up does
            else:
                self.fs.cp_file(original, target)
        return r.shown, target

    def _removable(self, path: Any, op: Op) -> tuple[str, str | None]:
        """(shown, backend path) to remove or move away; None: an audit capture, nothing to do."""
        r = self._route(path, op, follow=False)
        if r.decision.action is Action.ALLOW:
            return r.shown, r.resolved
        if self._overlay_maps(r.decision):
            self._emit(r.decision, op, r.shown)
            return r.shown, r.resolved
        d, target = self._settle(r, op, False)
        if self._exists(target, False) or not self._exists(d.path, False):
            # the run's own copy; or nothing anywhere, and the backend says FileNotFoundError
            self._emit(d, op, r.shown, target)
            return r.shown, target
        if d.captured:
            self._emit(d, op, r.shown, target)
            return r.shown, None
        d = replace(
            d,
            action=Action.DENY,
            reason="it exists only in the host's mirror, and a run cannot remove the host's files",
            hint=f"only what this run wrote (under {self.policy.run_dir}) can be removed",
        )
        raise self._deny(d, r.shown, op)

    def _overlay_maps(self, d: Decision) -> bool:
        return self._overlay and overlay_maps(d)

    def _require(self, method: str) -> None:
        if not callable(getattr(self.fs, method, None)):
            raise NotImplementedError(f"{type(self.fs).__name__} has no {method}()")
