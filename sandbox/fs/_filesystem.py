"""``SandboxFileSystem``: the run's policy over any fsspec filesystem (protocol ``sandbox``).

A wrapper in the manner of fsspec's ``DirFileSystem``. Every public method of
:class:`fsspec.AbstractFileSystem` either goes through :meth:`SandboxFileSystem._route` -- the one
check -- or is built by fsspec itself on methods that do (``tests/test_fs.py`` enumerates them and
proves that, under a deny-all policy, none of them reaches the wrapped filesystem). ``_route``:

1. strips ``sandbox://`` and resolves the path the way the wrapped filesystem will reach it. Local
   backend: :func:`sandbox._paths.resolve` (the cwd, ``..``, symlinks; the link itself for what
   rm/mv/link act on). Any other backend: its own normalised path with ``.``/``..`` folded, and no
   symlinks.
2. asks ``policy.decide(resolved, op)`` and the caller executes the decision:

   * DENY -- :class:`~sandbox.errors.AccessDenied` (``PermissionError``, EACCES, ``layer="fsspec"``).
   * ALLOW -- the wrapped filesystem is called on the *resolved* path: what was decided is exactly
     what is touched, whatever a symlink does in between.
   * REDIRECT of a mutation -- acts on the target, its parent folders created; the original is
     copied up first when the operation keeps its content (append, ``r+``, chmod, touch without
     truncate, the source of a hard link). Removing (rm, rmdir, the source of mv) something that
     exists only at the original is denied under the decision's rule -- except for an audit
     capture, where it is a no-op: the host is never touched either way.
   * REDIRECT of a read -- the target when it exists, else the original; a listing of a folder
     merges both (the target wins, as an overlay's upper layer does), and every name is reported
     under the path the caller used.

A redirect target is resolved and decided again (``Policy.settle``): a symlink a run plants in its
own folder cannot carry a redirected write out of it.

The policy comes from ``policy=`` (a :class:`~sandbox.policy.Policy`, its ``to_dict()``, the
path of a resolved policy as :func:`sandbox.resolved.save_resolved` writes it -- ``marshal``, or JSON
for a ``.json`` path -- or what ``sandbox.loader.load_policy`` returns with the run's ``host=`` and
``run_id=``: ``fsspec.filesystem("sandbox", policy=spec, host=H, run_id=R)``), else from
``$TV_SANDBOX_POLICY`` (set in every sandboxed step: the run's resolved policy, ``marshal``; see
:func:`sandbox.resolved.load_resolved`). With a
local backend the local side of ``get``/``put`` is the same filesystem and is checked too; with a
remote backend the local side is the caller's business (the Python guard covers it in a step).
Synchronous backends only (an async one is used through its sync API).
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Mapping
from glob import has_magic
from typing import Any

import fsspec
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import isfilelike, stringify_path, tokenize

from sandbox._execute import ENV_EVENTS, ENV_OVERLAY, ENV_POLICY
from sandbox.errors import AccessDenied
from sandbox.fs._routing import LAYER, BackendFiles, EventSink, Routing, load_policy
from sandbox.policy import Action, Op, Policy, PolicySpec

PROTOCOL = "sandbox"
__all__ = ["ENV_POLICY", "LAYER", "PROTOCOL", "SandboxFileSystem", "load_policy"]


class SandboxFileSystem(Routing, ChainedFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """Any fsspec filesystem (``fs=``, or ``target_protocol=``/``target_options=``; default
    local) with a bound policy enforced on every call. See the module docstring for the contract.

    ``on_event(record)`` receives a dict for every deny and every redirect acted on.
    """

    protocol = PROTOCOL
    root_marker = ""  # relative paths are relative to the cwd on a local backend: "" is the cwd
    # fsspec's instance cache keys on repr() of the arguments, and a Policy's repr leaves out its
    # rules and temp dirs: two different policies must never share an instance.
    cachable = False

    def __init__(
        self,
        policy: Policy | PolicySpec | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        fs: Any = None,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        on_event: EventSink | None = None,
        overlay: bool | None = None,
        fo: str | None = None,  # the path of a chained URL (sandbox::memory://...); paths come per call
        host: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        mode: str = "enforce",
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        if fs is None:
            fs = fsspec.filesystem(target_protocol or "file", **dict(target_options or {}))
        elif target_protocol is not None or target_options:
            raise ValueError("pass either fs= or target_protocol=/target_options=, not both")
        if getattr(fs, "asynchronous", False):
            raise ValueError("SandboxFileSystem is synchronous: wrap the backend with asynchronous=False")
        self.fs = fs
        self.policy = load_policy(policy, host, run_id, mode)
        self._local = isinstance(fs, LocalFileSystem)
        self._files = BackendFiles(fs, self._local)
        in_step = policy is None  # the run's own policy, from a sandboxed step's environment
        if on_event is None and in_step and os.environ.get(ENV_EVENTS):
            from sandbox.events import EventLog

            log = EventLog(os.environ[ENV_EVENTS])  # into the run's report, like the guard's
            log.to_host_path = self.policy.host_path_of
            on_event = log.write
        self.on_event = on_event
        if overlay is None:
            overlay = in_step and os.environ.get(ENV_OVERLAY) == "1"
        # As the guard does: under the kernel layer's overlay a workspace redirect (or a capture) is
        # done on the original path by the kernel; writing the upper layer directly as well would
        # leave stale lookups through the overlay. Local backends only: the overlay is local.
        self._overlay = bool(overlay) and self._local

    def __repr__(self) -> str:
        return f"SandboxFileSystem(policy={self.policy!r}, fs={self.fs!r})"

    @property
    def _fs_token(self) -> str:
        # equality and hashing (dask, pyarrow) must tell policies apart by content, not by repr
        return str(tokenize(self._fs_token_, self.policy.spec.sha256, self.policy.ctx))

    # -- paths ------------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        p = stringify_path(path)
        p = p.removeprefix(PROTOCOL + "://")
        # "/" stays "/": fsspec's default turns the root into "", which here means the cwd
        return p.rstrip("/") or ("/" if p.startswith("/") else "")

    @classmethod
    def _parent(cls, path: Any) -> str:
        return posixpath.dirname(str(cls._strip_protocol(path)))

    # -- reads ------------------------------------------------------------------------------------

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list[Any]:
        r = self._route(path, Op.READ)
        bases = [r.resolved]
        if r.decision.action is Action.REDIRECT and not self._overlay_maps(r.decision):
            d, target = self._settle(r, Op.READ, True)
            if self.fs.exists(target):
                self._emit(d, Op.READ, r.given, target)
                # an overlay's upper layer: a folder merges with a folder below; a file hides it
                merge = self.fs.isdir(target) and self.fs.isdir(r.resolved)
                bases = [target, r.resolved] if merge else [target]
        entries: dict[str, dict[str, Any]] = {}
        for base in bases:
            for e in self.fs.ls(base, detail=True, **kwargs):
                name = e["name"].rstrip("/")
                key = r.given
                if name != base.rstrip("/"):  # not the path itself (ls of a file)
                    key = posixpath.join(r.given, posixpath.basename(name))
                entries.setdefault(key, {**e, "name": key})
        out = list(entries.values())
        return out if detail else [e["name"] for e in out]

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        given, eff = self._readable(path)
        return {**self.fs.info(eff, **kwargs), "name": given}

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any) -> Any:
        return self.fs.cat_file(self._readable(path)[1], start=start, end=end, **kwargs)

    def created(self, path: Any) -> Any:
        return self.fs.created(self._readable(path)[1])

    def modified(self, path: Any) -> Any:
        return self.fs.modified(self._readable(path)[1])

    def sign(self, path: Any, expiration: int = 100, **kwargs: Any) -> Any:
        return self.fs.sign(self._readable(path)[1], expiration=expiration, **kwargs)

    def islink(self, path: Any) -> bool:
        eff = self._readable(path, follow=False)[1]
        return bool(self.fs.islink(eff)) if callable(getattr(self.fs, "islink", None)) else False

    def lexists(self, path: Any, **kwargs: Any) -> bool:
        try:
            return self._exists(self._readable(path, follow=False)[1], follow=False)
        except OSError:  # like os.path.lexists: a refused stat is "no"
            return False

    # -- open, write ------------------------------------------------------------------------------

    def _open(
        self,
        path: Any,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        if "r" in mode and "+" not in mode:
            eff = self._readable(path)[1]
        else:
            if "x" in mode and self.exists(path):  # exclusive in the merged view, not per layer
                raise FileExistsError(errno.EEXIST, "File exists", self._strip_protocol(path))
            # append and update keep what is there: copy the original up first
            eff = self._mutable(path, Op.WRITE, copy_up="a" in mode or "r" in mode)[1]
        return self.fs._open(
            eff,
            mode=mode,
            block_size=block_size,
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )

    def pipe_file(self, path: Any, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if self._intrans:  # deferred to the commit: fsspec's pipe through our (routed) open
            super().pipe_file(path, value, mode=mode, **kwargs)
            return
        if mode == "create" and self.exists(path):
            raise FileExistsError(errno.EEXIST, "File exists", self._strip_protocol(path))
        self.fs.pipe_file(self._mutable(path, Op.WRITE)[1], value, mode=mode, **kwargs)

    def touch(self, path: Any, truncate: bool = True, **kwargs: Any) -> None:
        # touching an existing file without truncating it only sets its times: metadata
        op = Op.WRITE if truncate or not self.exists(path) else Op.METADATA
        self.fs.touch(self._mutable(path, op, copy_up=not truncate)[1], truncate=truncate, **kwargs)

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        given = self._strip_protocol(path)
        if self.exists(given):
            raise FileExistsError(errno.EEXIST, "File exists", given)
        parent = self._parent(given)
        if create_parents and parent != given:
            self.makedirs(parent, exist_ok=True)
        target = self._mutable(given, Op.MKDIR, follow=False, parents=False)[1]
        self.fs.mkdir(target, create_parents=False, **kwargs)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        # one checked mkdir per missing folder, as os.makedirs does under the Python guard
        given = self._strip_protocol(path)
        if self.isdir(given):
            if exist_ok:
                return
            raise FileExistsError(errno.EEXIST, "File exists", given)
        self.mkdir(given, create_parents=True)

    def chmod(self, path: Any, mode: int) -> Any:
        self._require("chmod")
        return self.fs.chmod(self._mutable(path, Op.METADATA, copy_up=True)[1], mode)

    def symlink(self, src: Any, dst: Any, **kwargs: Any) -> Any:
        # the link's text is not checked: what is reached through it is, when it is used
        self._require("symlink")
        eff = self._mutable(dst, Op.LINK, follow=False)[1]
        return self.fs.symlink(self._strip_protocol(src), eff, **kwargs)

    def link(self, src: Any, dst: Any, **kwargs: Any) -> Any:
        # a hard link shares the inode: its source must be as writable as its new name
        self._require("link")
        d = self._mutable(dst, Op.LINK, follow=False)[1]
        # link(2) -- os.link without a dir_fd -- links a symlink source itself: decide that
        s = self._mutable(src, Op.LINK, follow=False, copy_up=True, parents=False)[1]
        return self.fs.link(s, d, **kwargs)

    # -- copy, move, remove -----------------------------------------------------------------------

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        if self.isdir(path1):  # fsspec's copy() recreates the folders it walks through
            self.makedirs(path2, exist_ok=True)
            return
        src = self._readable(path1)[1]
        self.fs.cp_file(src, self._mutable(path2, Op.WRITE)[1], **kwargs)

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any
    ) -> None:
        one = isinstance(path1, (str, os.PathLike)) and isinstance(path2, (str, os.PathLike))
        if not one or has_magic(stringify_path(path1)):
            # several sources: fsspec's copy-then-remove, every file through the check
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        s1, s2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if s1 == s2:
            return
        if self.isdir(s2):  # into an existing folder: decide on the name it will really get
            s2 = posixpath.join(s2, posixpath.basename(s1))
        # an audit capture of a host original is copied up first: the copy moves, the original stays
        src = self._removable(s1, Op.RENAME, keep=True)[1]
        assert src is not None  # (keep: never "nothing to do")
        dst = self._mutable(s2, Op.RENAME, follow=False)[1]
        if self._local and os.path.islink(dst):
            # The name decided on is a link (one the run planted, say): a rename replaces the link
            # itself, while the backend's mv (shutil.move) would move *into* the folder it points
            # to -- a place nobody decided on. Replace the name, as rename(2) would.
            os.unlink(dst)
        self.fs.mv(src, dst, recursive=recursive, **kwargs)

    def rm_file(self, path: Any) -> None:
        eff = self._removable(path, Op.DELETE)[1]
        if eff is not None:
            self.fs.rm_file(eff)

    def rmdir(self, path: Any) -> None:
        eff = self._removable(path, Op.RMDIR)[1]
        if eff is not None:
            self.fs.rmdir(eff)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        # entry by entry, each decided (as rmtree under the guard): a tree may hold protected paths
        for p in self.expand_path(path, recursive=False):
            self._rm_tree(p, recursive, maxdepth, None)

    def _rm_tree(self, path: str, recursive: bool, depth: int | None, entry: dict[str, Any] | None) -> None:
        link = entry.get("islink", False) if entry is not None else self.islink(path)
        if link or (entry or self.info(path))["type"] != "directory":
            self.rm_file(path)  # a link is removed, never followed
            return
        if recursive and (depth is None or depth > 0):
            for child in self.ls(path, detail=True):
                self._rm_tree(child["name"], True, None if depth is None else depth - 1, child)
        self.rmdir(path)

    # -- local side of get/put: the same filesystem when the backend is local ----------------------

    def get_file(
        self, rpath: Any, lpath: Any, callback: Any = DEFAULT_CALLBACK, outfile: Any = None, **kwargs: Any
    ) -> None:
        if self._local and outfile is None and not isfilelike(lpath):
            if self.isdir(rpath):
                if not self.isdir(lpath):
                    self.makedirs(lpath, exist_ok=True)
                return
            lpath = self._mutable(lpath, Op.WRITE, parents=True)[1]
        super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)

    def put_file(
        self, lpath: Any, rpath: Any, callback: Any = DEFAULT_CALLBACK, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        if self._local and not isfilelike(lpath):
            lpath = self._readable(lpath)[1]
        super().put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)

    def invalidate_cache(self, path: Any = None) -> None:
        # the backend caches under its own paths, and a redirect may have changed either of two
        self.fs.invalidate_cache()


def _trimmed(fn: Any) -> Any:
    """``fn``, re-raising a denial from its own frame: the caller's traceback shows one frame of
    the sandbox (this method), not the routing and fsspec frames below it (as the guard does)."""

    def method(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AccessDenied as e:
            raise e.with_traceback(None) from None  # tv-sandbox: denied by the policy (why: below)

    method.__name__, method.__qualname__, method.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    method.__wrapped__ = fn  # type: ignore[attr-defined]
    return method


def _trim_denials(cls: type) -> None:
    """Wrap the public methods ``cls`` defines (and ``_open``) in :func:`_trimmed`; fsspec's own
    compositions (``open``, ``cat``...) stay fsspec's and reach these."""
    import types

    for name, fn in list(vars(cls).items()):
        if (not name.startswith("_") or name == "_open") and isinstance(fn, types.FunctionType):
            setattr(cls, name, _trimmed(fn))


_trim_denials(SandboxFileSystem)
