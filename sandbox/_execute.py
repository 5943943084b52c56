"""What happens after ``Policy.decide``, written once for both in-process enforcers.

The Python guard (``sandbox/guard``) and the fsspec filesystem (``sandbox/fs``) ask the same policy
and must then do the same thing to the same files. Each supplies a few *primitives* -- the guard
its saved original ``os`` functions (``guard/_files.ORIGINALS``), fsspec its backend's methods
(``fs/_routing.BackendFiles``) -- and this module executes a decision over them, the way fsspec's
``spec.py`` writes ``mv``/``rm``/``copy`` once over a backend's ``cp_file``/``rm_file``:

* :func:`settle` -- where a mutation's redirect really lands (``Policy.settle``, then the real
  target decided again: it must itself be allowed), or the refusal;
* :func:`removal` -- removing (or moving away) a redirected name: the run's copy, nothing to do
  (an audit capture of a host original), or refused (:data:`HOST_ONLY`, the one reason both give);
* :func:`make_parent` -- a redirect target's folder is made where the original's folder exists;
* :func:`copy_up` -- the original copied into the run folder as an overlay's copy-up does
  (content, mode, times; a symlink as a symlink);
* :func:`read_place` -- where a redirected read looks (the deepest copy that exists);
* :func:`defers_to_overlay` -- under the kernel layer's overlay, workspace redirects and captures
  are the overlay's to carry out;
* :func:`emit` -- the event record, with the run's profile, to an event log or a callback;
* the environment variable names that carry a run's policy, event log and overlay flag.

Stdlib only and cheap to import: every sandboxed interpreter loads it at start-up (the guard's
engine imports it). Layer: below ``guard/`` and ``fs/``, above the model (docs/architecture.md).
"""

from __future__ import annotations

from sandbox._denied import AccessDenied
from sandbox._record import replace
from sandbox.policy import Action, Decision, Op, overlay_maps
from sandbox.rules import ENV_EVENTS, ENV_OVERLAY, ENV_POLICY, EVENT_FIELDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from sandbox.policy import Policy

    class Files(Protocol):
        """The primitives an enforcer supplies (paths are the enforcer's own, e.g. a backend's)."""

        def lexists(self, path: str) -> bool: ...
        def isdir(self, path: str) -> bool: ...
        def makedirs(self, path: str) -> None:
            """Make ``path`` and its missing parents; an existing folder is fine."""

        def kind(self, path: str, follow: bool) -> str | None:
            """:data:`LINK`, :data:`DIR`, :data:`FILE`, :data:`OTHER`, or None when missing."""

        def copy_link(self, src: str, dst: str) -> None: ...
        def copy_dir(self, src: str, dst: str) -> None:
            """Make the folder ``dst`` with ``src``'s mode (not its entries)."""

        def copy_file(self, src: str, dst: str) -> None:
            """Copy a regular file's content and mode to the new name ``dst``."""

        def names(self, folder: str) -> list[str]: ...
        def copy_times(self, src: str, dst: str) -> None:
            """``src``'s access and modification times onto ``dst`` (a link itself, not followed)."""



ALLOW, DENY, REDIRECT = Action.ALLOW, Action.DENY, Action.REDIRECT

#: How many further copies a read follows (as ``Policy.settle`` re-decides a mutation's redirect).
READ_HOPS = 4

#: The reason of a redirect whose real target is not itself allowed.
UNSETTLED = "the redirect does not settle in the run folder"
#: The reason of a refused removal: what exists only at the original cannot be removed.
HOST_ONLY = (
    "it exists only in the host's mirror: host files are read-only, and a deletion cannot be "
    "recorded in the run folder"
)

#: What :meth:`Files.kind` says.
LINK, DIR, FILE, OTHER = "link", "dir", "file", "other"


class _NothingToDo:
    """The type of :data:`NOTHING_TO_DO`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOTHING_TO_DO"


#: :func:`removal`'s answer for an audit capture of a host original: the host is never touched,
#: and the run has no copy to remove (the event log records the capture).
NOTHING_TO_DO = _NothingToDo()



def defers_to_overlay(overlay: bool, d: Decision) -> bool:
    """Under the kernel layer's overlay (``overlay``), is ``d`` the overlay's to carry out (a
    workspace redirect, an audit capture)? Then the enforcer acts on the original path: writing
    the upper layer directly while the overlay caches lookups leaves stale negative dentries."""
    return overlay and overlay_maps(d)


def settle(policy: Policy, d: Decision, op: Op, resolve: Callable[[str], str]) -> Decision:
    """Where mutation ``op``'s redirect ``d`` really lands: a REDIRECT whose ``target`` is the real
    place, decided again and allowed, and whose ``path`` is the original (where a link the run
    planted leads, when it led on) -- or a DENY, which the enforcer raises. ``resolve`` is the
    enforcer's, with its own rule for the last component."""
    s = policy.settle(d, op, resolve)
    if s.action is REDIRECT and s.target is not None:
        if s is d:  # the target is its own real path, and allowed (Policy.settle decided it)
            return s
        target = resolve(s.target)
        if policy.decide(target, op).action is ALLOW:
            return s if target == s.target else replace(s, target=target)
        return replace(s, action=DENY, reason=UNSETTLED)
    if s.action is not DENY:
        return replace(s, action=DENY, reason=UNSETTLED)
    return s


def removal(
    policy: Policy, d: Decision, real: str, target: str, files: Files, *, keep: bool = False
) -> str | _NothingToDo | Decision:
    """What removing (unlink, rmdir, rm, the source of a rename) the redirected name ``real``
    does, its settled redirect ``d`` aimed at ``target``:

    * ``target`` -- act on the run's own copy; also when the name exists nowhere (the call then
      fails there as it would, ENOENT);
    * :data:`NOTHING_TO_DO` -- an audit capture of what exists only at the original: the host is
      never touched (an overlay would write a whiteout; the event log records the capture);
      with ``keep`` (the op moves the content on: a rename) the original is copied up first and
      the answer is ``target``;
    * a DENY decision (reason :data:`HOST_ONLY`) -- anything else that exists only at the original:
      host files are read-only, and an in-process enforcer cannot record a deletion.
    """
    if files.lexists(target) or not files.lexists(real):
        return target
    if d.captured:
        make_parent(files, target, real)
        if keep:
            copy_up(files, real, target, False, tree=True)
            return target
        return NOTHING_TO_DO
    return replace(
        d,
        action=DENY,
        path=real,
        reason=HOST_ONLY,
        hint=f"only what this run wrote (under {policy.run_dir}) can be removed or moved",
    )


def parent_of(path: str) -> str:
    """The folder of ``path`` as written (``/`` for a top-level absolute name, ``""`` for a
    relative one)."""
    head = path.rpartition("/")[0]
    return head or ("/" if path.startswith("/") else "")


def make_parent(files: Files, target: str, original: str) -> bool:
    """Make the folder of a redirect's ``target`` where the ``original``'s folder exists: the run
    folder mirrors the workspace. Where neither exists nothing is made, and the operation fails
    as it would have. True when the target's folder exists (now)."""
    parent = parent_of(target)
    if files.isdir(parent):
        return True
    if not files.isdir(parent_of(original)):
        return False
    files.makedirs(parent)
    return True


def copy_up(files: Files, src: str, dst: str, follow: bool, *, tree: bool = False) -> None:
    """Copy ``src`` to ``dst`` as an overlay's copy-up does, unless ``dst`` exists (or ``src`` does
    not): a file's content, mode and times; a folder with its mode and times (its entries too
    with ``tree``, links never followed); a symlink as a symlink when it is not ``follow``-ed
    (``link(2)`` links a symlink source itself). Anything else is refused."""
    if files.lexists(dst):
        return
    kind = files.kind(src, follow)
    if kind is None:
        return
    if kind == LINK:
        files.copy_link(src, dst)
    elif kind == DIR:
        files.copy_dir(src, dst)
        if tree:
            for name in files.names(src):
                copy_up(files, src + "/" + name, dst + "/" + name, False, tree=True)
    elif kind == FILE:
        files.copy_file(src, dst)
    else:
        raise AccessDenied(
            src,
            op="copy-up",
            rule="copy-up",
            reason="only files, folders and links can be copied into the run folder",
            resolved=src,
        )
    files.copy_times(src, dst)


def read_place(
    policy: Policy,
    target: str,
    resolve: Callable[[str], str],
    exists: Callable[[str], bool],
    overlay: bool,
) -> str:
    """Where a read redirected to ``target`` (the run folder's copy) looks. The copy may lead --
    through a link the run planted -- to a host path: an alias of the workspace path, whose reads
    look in the run folder first too (the kernel layer shows the workspace at the host's path).
    So the redirect is followed as ``Policy.settle`` follows a mutation's, at most
    :data:`READ_HOPS` times, and the deepest copy that exists wins (an overlay's upper layer);
    none: ``target``."""
    chain = [target]
    real = resolve(target)
    for _ in range(READ_HOPS):
        d = policy.decide(real, Op.READ)
        if d.action is not REDIRECT or d.target is None or defers_to_overlay(overlay, d):
            break
        real = resolve(d.target)
        chain.append(real)
    for place in reversed(chain[1:]):
        if exists(place):
            return place
    return target


def emit(
    sink: Any,
    layer: str,
    profile: str,
    d: Decision,
    op: str,
    path: str,
    resolved: str | None,
    target: str | None = None,
    action: str | None = None,
) -> None:
    """Record one event: ``d`` (its rule, reason, hint, whether captured) for ``op`` on ``path`` as
    the caller wrote it, ``resolved`` what was decided on, ``target`` where a redirect acted,
    ``action`` (default ``d.action``; "deny" for a refusal made of a redirect) -- under the run's
    ``profile``. ``sink``: an :class:`~sandbox.events.EventLog` (anything with its ``emit``), or a
    callable that receives the record as a dict with the keys :data:`EVENT_FIELDS`."""
    put = getattr(sink, "emit", None)
    if put is not None:  # (positional, without a tuple between: the guard's hot path)
        put(
            layer,
            op,
            action or d.action,
            d.rule,
            path,
            resolved,
            target,
            d.captured,
            profile,
            d.reason,
            d.hint,
        )
        return
    fields = (
        layer,
        op,
        action or d.action,
        d.rule,
        path,
        resolved,
        target,
        d.captured,
        profile,
        d.reason,
        d.hint,
    )
    sink(dict(zip(EVENT_FIELDS, fields, strict=True)))


__all__ = [
    "DIR",
    "ENV_EVENTS",
    "ENV_OVERLAY",
    "ENV_POLICY",
    "EVENT_FIELDS",
    "FILE",
    "HOST_ONLY",
    "LINK",
    "NOTHING_TO_DO",
    "OTHER",
    "READ_HOPS",
    "UNSETTLED",
    "copy_up",
    "defers_to_overlay",
    "emit",
    "make_parent",
    "parent_of",
    "read_place",
    "removal",
    "settle",
]
