"""The guard's executor: resolve what a call names, ask the policy, carry out its answer.

The guard never decides: :class:`Engine` turns a path argument into the resolved path the kernel
would reach (:func:`sandbox._paths.resolve`), asks ``Policy.decide`` and executes the decision --
with :mod:`sandbox._execute`, which the fsspec filesystem executes its decisions with too, over the
guard's original functions (``_files.ORIGINALS``):

* ALLOW: the caller's own arguments go to the original function, unchanged.
* DENY: :class:`~sandbox.errors.AccessDenied`, logged.
* REDIRECT of a mutation: the target's real path (``Policy.settle``: a target must itself be
  allowed), its parent folders made where the workspace has them, a copy-up of the original when
  the operation keeps content, the operation done there, logged. A removal of what exists only at
  the original (the host's mirror) is refused: the guard cannot record a deletion (an overlay would
  write a whiteout); an audit capture of one is a no-op.
* REDIRECT of a read: the target first, then the original (read-your-writes). Not logged.

With ``overlay=True`` (the kernel layer made the workspace an overlay whose upper layer is the run
folder, and overlaid the mounts in audit mode) workspace redirects and audit captures execute on the
*original* path and the overlay maps them; they are still logged as redirects. Writing the upper
layer directly while the overlay caches lookups would leave stale negative dentries -- for a *new*
name. A truncating ``open`` of a name the run folder already holds as a plain file is the one
exception (``write_target(upper=True)``, :class:`Upper`): that file is the inode the overlay shows,
so it is opened there (no ``O_CREAT``, ``O_NOFOLLOW``), skipping the overlay's lookups and the
explain shim's record of the call. Reads under the overlay, with no rule about reads, are not
decided at all (``native_reads``): each is allowed or mapped by the overlay itself.

Speed: a write loop creates thousands of new names, and both resolving (``realpath``: an ``lstat``
per component) and deciding cost more than the write. So the engine works per *folder*: the real
path of a call's folder is cached by the folder string as written (relative ones per current
directory), and ``Policy.decide_children`` answers once for every entry of a folder whose entries
are all decided alike.

The last component needs care: it may be a symlink, and an op that follows it acts where it leads.
An ``lstat`` per call would cost as much as the rest of the guard (a failed one raises), and an
``O_NOFOLLOW`` opener nearly as much. So when a folder's family is built, the folder (and a
redirect's target folder) is scanned once for symlinks: where there are none, a followed last
component cannot be one and needs nothing; where there are (or the folder is too big to scan), it
is ``lstat``-ed and, when it is a link, the call takes the slow, exact path (``realpath`` + decide
+ settle). Ops on the link itself (unlink, rename, lstat, symlink's name) need nothing.

The caches hold only what this process has seen, so they are dropped whenever that changes: every
symlink, hard link and rmdir, and every remove or rename of a folder or a link (a regular file
changes no resolution) -- from the wrappers, and from the audit hook for calls that went around
them -- and the relative ones on ``chdir``. A link or folder swapped by *another* process after a
scan is not seen: stopping that (and native code) is the kernel layer's part.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from sandbox import _execute, _paths
from sandbox._denied import AccessDenied
from sandbox._execute import NOTHING_TO_DO, defers_to_overlay
from sandbox._record import replace
from sandbox.guard._files import (
    INTERNAL,
    ORIGINALS,
    TOKEN,
    copy_up_path,
    exists,
    has_links,
    lexists,
    o_lstat,
    o_readlink,
)
from sandbox.policy import Action, Decision, Op, Policy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbox.events import EventLog

ALLOW, DENY, REDIRECT = Action.ALLOW, Action.DENY, Action.REDIRECT
READ, WRITE = Op.READ, Op.WRITE
LAYER = "python"
AUDIT_LAYER = "python-audit"


#: The innermost active engine (None: no guard, or paused); the stack of installs.
CURRENT: Engine | None = None
STACK: list[Engine | None] = []

_CACHE_MAX = 4096
_to_str = _paths.to_str
_fsencode = os.fsencode
_S_ISLNK = stat.S_ISLNK
_UNSTABLE = ("/proc/", "/dev/fd/")  # what these name changes with the open descriptors
_MISS: Any = object()


class FolderRule:
    """What every entry of one folder gets for one op: the folder's real path, where entries go
    (a redirect's settled real target folder; None: execute on the caller's path), the policy's
    answer for the folder (its ``path``/``target`` are the folder's; an entry appends its name),
    and whether the folder / the target folder held a symlink when scanned (then a followed last
    component is ``lstat``-ed; otherwise it cannot be a link: see the module docstring)."""

    __slots__ = ("action", "d", "dest", "lines", "links_dst", "links_src", "real", "upper")

    def __init__(
        self,
        action: Action,
        real: str,
        dest: str | None,
        d: Decision,
        links_src: bool = True,
        links_dst: bool = True,
    ) -> None:
        self.action, self.real, self.dest, self.d = action, real, dest, d
        self.links_src, self.links_dst = links_src, links_dst
        # the overlay maps this redirect into the run folder, upper layer of the workspace
        self.upper = d.rule == "workspace-redirect" and not d.captured and d.action is REDIRECT
        # per name: its event line and (overlay-mapped) run folder copy (Engine._overlay_entry)
        self.lines: dict[str, tuple[str, Upper | None]] = {}


class Upper(str):
    """What :meth:`Engine.write_target` returns (asked with ``upper=True``) for a write the
    kernel layer's overlay maps into the run folder: the run folder's copy of the name. The caller
    may rewrite that copy directly when it exists -- the same inode the overlay shows -- and
    otherwise calls the original function on its own path (see :meth:`Engine.write_target`)."""

    __slots__ = ()


def display_path(arg: Any) -> str:
    """A path argument as the event log and messages show it."""
    if type(arg) is str:
        return arg
    if isinstance(arg, int):
        return f"<fd {arg}>"
    try:
        return _to_str(arg)
    except TypeError:
        return repr(arg)


def in_type_of(arg: Any, path: str) -> Any:
    """``path`` in the type of ``arg``: a bytes call gets bytes back (``listdir(b'.')``)."""
    return _fsencode(path) if isinstance(arg, bytes) else path


def invalidate_all(cwd: bool = False) -> None:
    """Forget cached resolutions in every engine (a folder, link or the current directory changed)."""
    for eng in STACK:
        if eng is not None:
            eng.invalidate(cwd)


class Engine:
    """One installed guard: a policy, where its events go, and its caches."""

    def __init__(self, policy: Policy, events: EventLog | None = None, overlay: bool = False) -> None:
        self.policy = policy
        self.decide = policy.decide
        self.events = events
        self.overlay = overlay
        self.profile = policy.profile
        # A policy may deny or redirect some reads: then reads resolve their last component too.
        self.read_rules = any(Op.READ in r.ops and r.action is not ALLOW for r in policy.spec.rules)
        # Under the kernel overlay, with no rule about reads, every read is allowed or one the
        # overlay maps itself (read-through, audit-read-through): the read wrappers then call the
        # original at once -- the kernel merges the run folder over the workspace natively.
        self.native_reads = overlay and not any(Op.READ in r.ops for r in policy.spec.rules)
        self._fams: dict[Op, dict[str, FolderRule | None]] = {op: {} for op in Op}
        self._rfams = self._fams[READ]
        self._heads: dict[str, str] = {}
        self._rel_heads: dict[str, str] = {}
        self._dirs: set[str] = set()  # target folders known to exist
        self._plain: set[str] = set()  # read targets' folders that lead nowhere else (_read_place)
        self._files = ORIGINALS  # the primitives sandbox._execute works with

    def __repr__(self) -> str:
        return f"Engine({self.policy!r}, overlay={self.overlay})"

    # -- caches -----------------------------------------------------------------------------------

    def invalidate(self, cwd: bool = False) -> None:
        for fams in self._fams.values():
            fams.clear()  # keyed by the folder as written: relative ones too
        self._rel_heads.clear()
        if not cwd:
            self._heads.clear()
            self._dirs.clear()
            self._plain.clear()

    def head_real(self, head: str) -> str:
        """The real path of a folder as written (``""``: the current one), cached."""
        rel = not head.startswith("/")
        cache = self._rel_heads if rel else self._heads
        real = cache.get(head)
        if real is None:
            real = _paths.resolve(head or ".")
            if rel or not head.startswith(_UNSTABLE):  # /proc/self/fd/N: never the same twice
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[head] = real
        return real

    def family(self, head: str, sep: str, op: Op) -> FolderRule | None:
        """The :class:`FolderRule` of the folder ``head`` (``sep`` empty: the current folder), or None
        when its entries are not all alike (the slow path decides each one)."""
        fams = self._fams[op]
        key = head + sep  # "a/" for "a/x", "" for "x" (the current folder), "/" for "/x"
        try:
            return fams[key]
        except KeyError:
            pass
        fam = self._family(head if sep and head else ("/" if sep else ""), op)
        if len(fams) >= _CACHE_MAX:
            fams.clear()
        fams[key] = fam
        return fam

    def _family(self, head: str, op: Op) -> FolderRule | None:
        if head.startswith(_UNSTABLE) and not head.startswith("/proc/self/cwd"):
            return None
        real = self.head_real(head)
        d = self.policy.decide_children(real, op)
        if d is None:
            return None
        reads = op is READ
        if d.action is not REDIRECT or d.target is None or self._on_original(d):
            return FolderRule(d.action, real, None, d, not reads and d.action is ALLOW and has_links(real))
        dest = self.head_real(d.target)
        if reads:
            # the copy's folder leads on (a link the run planted, to a host path): the exact path.
            # A link as the last name does too (``_read_place``); a folder too big to scan is taken
            # to hold none: an lstat per read of a 20,000-file folder would cost every read.
            again = self.policy.decide_children(dest, READ)
            if again is None or again.action is not ALLOW:
                return None
            return FolderRule(d.action, real, dest, d, False, has_links(dest, big=False))
        again = self.policy.decide_children(dest, op)  # settle: every entry there must be allowed
        if again is None or again.action is not ALLOW:
            return None
        return FolderRule(d.action, real, dest, d, has_links(real), has_links(dest))

    def _on_original(self, d: Decision) -> bool:
        """Under the kernel overlay, workspace redirects and captures are the overlay's to map."""
        return defers_to_overlay(self.overlay, d)

    # -- events and errors --------------------------------------------------------------------------

    def log(
        self,
        d: Decision,
        op: Op,
        arg: Any,
        resolved: str | None,
        target: str | None,
        action: str | None = None,
        layer: str = LAYER,
    ) -> None:
        if self.events is not None:
            _emit(self.events, layer, self.profile, d, op, display_path(arg), resolved, target, action)

    def _log_fam(self, fam: FolderRule, op: Op, arg: Any, real: str, target: str | None) -> None:
        """:meth:`log` of an entry of a family (``real``, ``target``: its paths), each line encoded
        once per name: a loop rewriting the same names pays only the time stamp."""
        ev = self.events
        if ev is None:
            return
        if type(arg) is not str:
            self.log(fam.d, op, arg, real, target)
            return
        hit = fam.lines.get(arg)
        if hit is None:
            d = fam.d
            body = ev.body(
                LAYER, op, d.action, d.rule, arg, real, target, d.captured, self.profile, d.reason, d.hint
            )
            if len(fam.lines) >= _CACHE_MAX:
                fam.lines.clear()
            hit = fam.lines[arg] = (body, None)
        ev.emit_body(hit[0])

    def _overlay_entry(self, fam: FolderRule, op: Op, arg: Any, tail: str) -> Upper | None:
        """An entry of a family whose redirect the overlay maps: log it (as :meth:`_log_fam`) and
        return the run folder's copy (None when the overlay's upper layer is not the run folder).
        Both are kept per name (``fam.lines``): a loop rewriting the same names pays a lookup and
        the time stamp."""
        ev, d = self.events, fam.d
        if ev is None or type(arg) is not str:
            t = d.target and d.target + "/" + tail
            self.log(d, op, arg, _join(fam.real, tail), t)
            return Upper(t) if fam.upper and t else None
        hit = fam.lines.get(arg)
        if hit is None:
            t = d.target and d.target + "/" + tail
            real = _join(fam.real, tail)
            body = ev.body(
                LAYER, op, d.action, d.rule, arg, real, t, d.captured, self.profile, d.reason, d.hint
            )
            if len(fam.lines) >= _CACHE_MAX:
                fam.lines.clear()
            hit = fam.lines[arg] = (body, Upper(t) if fam.upper and t else None)
        ev.emit_body(hit[0])
        return hit[1]

    def deny(self, d: Decision, arg: Any, op: Op, layer: str = LAYER) -> AccessDenied:
        """Log a denial and return the error to raise (``d`` is a DENY, or a refusal made of one)."""
        self.log(d, op, arg, d.path, None, "deny", layer)
        user_path = self.policy.user_path(d.path) if d.path.startswith("/") else d.path
        return d.error(arg, op, profile=self.profile, layer=layer, resolved=user_path)

    # -- reads --------------------------------------------------------------------------------------

    def read_target(self, arg: Any, dir_fd: int | None = None, follow: bool = True) -> Any:
        """Where a read of ``arg`` looks first: a redirect's target (in ``arg``'s type), or None for
        the path as given. Raises AccessDenied when the policy denies the read."""
        p = arg if type(arg) is str else _to_str(arg)
        if dir_fd is None and (not follow or not self.read_rules):
            head, sep, tail = p.rpartition("/")
            fam = self._rfams.get(head + sep, _MISS)  # family(), inlined: this is the hot path
            if fam is _MISS:
                fam = self.family(head, sep, READ)
            if tail and tail != "." and tail != ".." and fam is not None:
                if fam.action is ALLOW:
                    return None
                if fam.action is REDIRECT:
                    if fam.dest is None:
                        return None
                    t = fam.dest + "/" + tail if fam.dest != "/" else "/" + tail
                    if not (follow and fam.links_dst and self._is_link(t)):
                        return t if type(arg) is str else in_type_of(arg, t)
        real = self._resolve_exact(p, dir_fd, follow)
        d = self.decide(real, READ)
        if d.action is ALLOW:
            return None
        if d.action is DENY:
            raise self.deny(d, arg, READ)
        if d.target is None or self._on_original(d):
            return None
        return in_type_of(arg, self._read_place(d.target, follow))

    def _read_place(self, t: str, follow: bool) -> str:
        """Where a read redirected to ``t`` (the run folder's copy) looks. The copy may lead --
        through a link the run planted -- to a host path: an alias of the workspace path, whose
        reads look in the run folder first too (the kernel layer shows the workspace at the host's
        path). So the redirect is followed as ``Policy.settle`` follows a mutation's, and the
        deepest copy that exists wins (an overlay's upper layer); none: ``t``, as before."""
        head = t.rpartition("/")[0] or "/"
        if head in self._plain:  # the common case: a folder of the run folder's, no link in it
            return t
        real_head = self.head_real(head)
        d = self.policy.decide_children(real_head, READ)
        if d is not None and d.action is ALLOW and not has_links(real_head, big=False):
            if len(self._plain) >= _CACHE_MAX:
                self._plain.clear()
            self._plain.add(head)
            return t
        return _execute.read_place(
            self.policy,
            t,
            lambda path: _paths.resolve(path, follow=follow),
            exists if follow else lexists,
            self.overlay,
        )

    def _resolve_exact(self, p: str, dir_fd: int | None, follow: bool) -> str:
        if dir_fd is None:
            head, sep, tail = p.rpartition("/")
            if tail in ("", "."):  # the folder itself: "." and "dir/" are common, and cached
                return self.head_real(p.rstrip("/") or ("/" if p.startswith("/") else ""))
            if tail != ".." and not head.startswith(_UNSTABLE):
                real_head = self.head_real(head if sep else "") if head or not sep else "/"
                full = real_head + "/" + tail if real_head != "/" else "/" + tail
                if not follow or not self._is_link(full):
                    return full
                return _paths.resolve(full)
        return _paths.resolve(p, dir_fd=dir_fd, follow=follow)

    @staticmethod
    def _is_link(path: str) -> bool:
        try:
            return _S_ISLNK(o_lstat(path).st_mode)
        except (OSError, ValueError):
            return False

    # -- mutations ----------------------------------------------------------------------------------

    def write_target(
        self,
        arg: Any,
        op: Op,
        *,
        dir_fd: int | None = None,
        follow: bool = True,
        copy_up: bool = False,
        excl: bool = False,
        upper: bool = False,
    ) -> str | None:
        """Carry out the decision for mutation ``op`` on ``arg``, up to the call itself.

        Returns None to call the original function with the caller's arguments, or the real target
        to call it on instead. ``follow``: the op follows a link at the last component.
        ``copy_up``: the op keeps the content (append, r+, chmod); ``excl``: it must create the name.

        ``upper`` (a truncating open): where the kernel overlay maps the write into the run folder,
        return the run folder's copy as an :class:`Upper` -- logged as the redirect it is. The
        caller opens it without ``O_CREAT``, ``O_NOFOLLOW``: an existing regular file there *is*
        the file the overlay shows (same inode), rewritten without the overlay's lookups and
        without the explain shim's record of a workspace write; anything else (a new name, a link)
        fails, and the caller calls the original on its own path, through the overlay. A new name
        is never made behind the overlay's back (it could hold a negative dentry for it).
        """
        p = arg if type(arg) is str else _to_str(arg)
        if dir_fd is None:
            head, sep, tail = p.rpartition("/")
            fam = self._fams[op].get(head + sep, _MISS)  # family(), inlined: this is the hot path
            if fam is _MISS:
                fam = self.family(head, sep, op)
            if fam is not None and tail and tail != "." and tail != "..":
                action = fam.action
                if action is ALLOW and not (follow and fam.links_src):
                    return None
                links = follow and fam.links_src
                if action is not DENY and not (links and self._is_link(_join(fam.real, tail))):
                    if action is ALLOW:
                        return None
                    if fam.dest is None:  # the overlay maps it
                        entry = self._overlay_entry(fam, op, arg, tail)
                        return entry if upper else None
                    # (``_join``, inlined: this is the hot path of every redirected open)
                    real = fam.real + "/" + tail if fam.real != "/" else "/" + tail
                    target = fam.dest + "/" + tail if fam.dest != "/" else "/" + tail
                    if not (follow and fam.links_dst and self._is_link(target)):
                        return self._redirect(fam.d, arg, op, real, target, follow, copy_up, excl, fam)
        got = self._decided(p, dir_fd, follow, op, arg, excl)
        if got is None:
            return None
        d, real, target = got
        return self._redirect(d, arg, op, real, target, follow, copy_up, excl)

    def _decided(
        self, p: str, dir_fd: int | None, follow: bool, op: Op, arg: Any, excl: bool = False
    ) -> tuple[Decision, str, str] | None:
        """The path decided one by one (no folder family): ``None`` when the call goes ahead on
        the caller's path (allowed, or the overlay maps it); (decision, real path, settled target)
        for a redirect. Raises :class:`AccessDenied` on a denial -- or, for an op that must create
        the name (``excl``), ``FileExistsError`` when it exists: the kernel's order (EEXIST before
        EROFS/EACCES), and nothing changes either way."""
        real = _paths.resolve(p, dir_fd=dir_fd, follow=follow)
        d = self.decide(real, op)
        if d.action is ALLOW:
            return None
        if d.action is DENY:
            if excl and lexists(real):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), arg)
            raise self.deny(d, arg, op)
        if self._on_original(d):
            self.log(d, op, arg, real, d.target)
            return None
        d, target = self.settle(d, arg, op, follow)
        # The original is the place the settled decision was made on: the caller's path, or -- when
        # the redirect led on through a link the run planted (say to the lakehouse, captured in
        # audit mode) -- where that link leads: its content is copied up, its folder mirrored.
        return d, d.path, target

    def settle(self, d: Decision, arg: Any, op: Op, follow: bool) -> tuple[Decision, str]:
        """(decision, real target) of a mutation's redirect, decided again where it lands
        (:func:`sandbox._execute.settle`); raises :class:`AccessDenied` when it does not settle."""
        s = _execute.settle(self.policy, d, op, lambda path: _paths.resolve(path, follow=follow))
        if s.action is DENY or s.target is None:
            raise self.deny(s, arg, op)
        return s, s.target

    def _redirect(
        self,
        d: Decision,
        arg: Any,
        op: Op,
        real: str,
        target: str,
        follow: bool,
        copy_up: bool,
        excl: bool,
        fam: FolderRule | None = None,
    ) -> str:
        if excl and lexists(real) and not lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), arg)
        self.make_parent(target, real)
        if copy_up:
            copy_up_path(real, target, follow)
        if fam is not None:
            self._log_fam(fam, op, arg, real, target)
        else:
            self.log(d, op, arg, real, target)
        return target

    def removable(self, arg: Any, op: Op, dir_fd: int | None = None, *, keep: bool = False) -> Any:
        """Like :meth:`write_target` for what removes a name (unlink, rmdir, the source of a
        rename): None -- as given; a path -- the run's own copy; :data:`NOTHING_TO_DO` -- an audit
        capture of a host original (the host is never touched). ``keep``: the op moves the
        content on (rename), so a captured original is copied up first instead of skipped
        (:func:`sandbox._execute.removal`). Raises :class:`AccessDenied` when refused."""
        p = arg if type(arg) is str else _to_str(arg)
        fam = None
        if dir_fd is None:
            head, sep, tail = p.rpartition("/")
            if tail and tail != "." and tail != "..":
                fam = self.family(head, sep, op)
        if fam is not None and fam.action is not DENY:
            if fam.action is ALLOW:
                return None
            real = _join(fam.real, tail)
            if fam.dest is None:
                self.log(fam.d, op, arg, real, fam.d.target and fam.d.target + "/" + tail)
                return None
            d = fam.d
            target = _join(fam.dest, tail)
        else:
            got = self._decided(p, dir_fd, False, op, arg)
            if got is None:
                return None
            d, real, target = got
        outcome = _execute.removal(self.policy, d, real, target, self._files, keep=keep)
        if isinstance(outcome, Decision):
            raise self.deny(outcome, arg, op)
        self.log(d, op, arg, real, target)  # the run's copy, nothing anywhere (ENOENT), a capture
        return outcome

    def check_fd(self, fd: int, op: Op, layer: str = LAYER) -> None:
        """An operation on an open descriptor (fchmod, ftruncate, a writable mmap): allowed only
        where the file it names is. A descriptor cannot be redirected: one opened around the guard
        on a redirected path is refused."""
        try:
            real = o_readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return  # not an open descriptor: the call fails by itself
        if not real.startswith("/"):
            return  # a pipe, socket or anonymous inode
        d = self.decide(real, op)
        if d.action is ALLOW or self._on_original(d):
            return
        if d.action is REDIRECT:
            d = replace(
                d,
                action=DENY,
                reason="an open file of a redirected place was opened around the guard and cannot be "
                "redirected now",
                hint="open it again through open()/os.open: writes then land in $TV_RUN_DIR",
            )
        raise self.deny(d, fd, op, layer)

    def make_parent(self, target: str, real: str) -> None:
        """Make the target's folder where the original's folder exists
        (:func:`sandbox._execute.make_parent`), remembering the folders known to exist."""
        parent = target.rpartition("/")[0] or "/"
        if parent in self._dirs:
            return
        if not _execute.make_parent(self._files, target, real):
            return
        if len(self._dirs) >= _CACHE_MAX:
            self._dirs.clear()
        self._dirs.add(parent)


_emit = _execute.emit


def _join(folder: str, name: str) -> str:
    return folder + "/" + name if folder != "/" else "/" + name


def flush_events() -> None:
    """Write out every buffered event of this process (before ``os._exit``, which skips ``atexit``):
    every engine's log, and every other :class:`~sandbox.events.EventLog` (the fsspec filesystem's
    in a step): a redirect of either must not be lost because the process ended by ``os._exit``."""
    for eng in STACK:
        if eng is not None and eng.events is not None:
            try:
                eng.events.flush()
            except OSError:  # a full disk must not turn an exit into a crash
                pass
    events = sys.modules.get("sandbox.events")  # not imported: no log is open (and none to import)
    if events is not None:
        events.flush_all()


__all__ = [
    "CURRENT",
    "INTERNAL",
    "NOTHING_TO_DO",
    "STACK",
    "TOKEN",
    "Engine",
    "FolderRule",
    "Upper",
    "display_path",
    "in_type_of",
    "invalidate_all",
]
