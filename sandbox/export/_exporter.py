"""Atomic export of a run folder: stage beside the destination, fsync, manifest, one rename.

The promise: a crash at any point leaves the previous state or the complete new export, never a
partial folder. How:

1. ``recover(dest.parent)`` cleans what a crashed export left there (see below).
2. The run folder is copied into ``dest.parent/.<name>.tvs-stage-<random>`` -- beside the
   destination, so the final step is a rename on one filesystem, never a copy from ``/tmp``.
   Regular files are streamed and hashed (sha256) in the same pass and fsynced; symlinks are copied
   as links (never followed); directories are fsynced once complete. Overlayfs whiteouts (character
   devices 0/0, which the kernel layer's overlays produce when the run deletes a file) are not
   copied but listed under ``"deleted"``; other special files (fifos, sockets, devices) are listed
   under ``"skipped"``. ``manifest.json`` is written last, fsynced, then the stage directory.
3. First export: one ``rename(stage, dest)``, then fsync of ``dest.parent``.
   ``overwrite=True`` over an existing ``dest``: ``renameat2(stage, dest, RENAME_EXCHANGE)`` swaps
   the two in one step, the parent is fsynced, and the old tree (now under the stage name) is
   removed. Where the kernel or filesystem has no ``RENAME_EXCHANGE`` (EINVAL/ENOSYS), the fallback
   renames ``dest`` to ``.<name>.tvs-old-<random>`` and then the stage to ``dest``: **between those
   two renames ``dest`` is absent** (the previous export is intact under the ``tvs-old`` name, and
   ``recover()`` -- run by every export, or by hand -- renames it back).

Leftovers, their names and locks, and ``recover(parent)``: :mod:`sandbox.export._recovery`. The
manifest schema, ``read_manifest`` and ``verify``: :mod:`sandbox.export.manifest`. The package
(:mod:`sandbox.export`) re-exports the public names of all three.

``_fault(point)`` is a test hook, called at: ``"recovered"``, ``"staged-file"`` (after each file),
``"staged-dir"`` (after each directory), ``"before-manifest"``, ``"before-rename"``, then
``"after-rename"`` (first export or fallback), ``"after-exchange"``, ``"after-move-old"`` (fallback,
``dest`` absent), and ``"done"``.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbox import _json as json
from sandbox._record import field, record
from sandbox.errors import ExportError, PreflightError, printable
from sandbox.export import manifest as manifest_mod
from sandbox.export._recovery import DIR_FLAGS as _DIR_FLAGS
from sandbox.export._recovery import lock_dest as _lock_dest
from sandbox.export._recovery import make_stage as _make_stage
from sandbox.export._recovery import old_name as _old_name
from sandbox.export._recovery import recover, recover_at
from sandbox.export._recovery import remove as _remove
from sandbox.export._stager import NEW_FILE as _NEW_FILE
from sandbox.export._stager import Failed as _Failed
from sandbox.export._stager import Stager as _Stager
from sandbox.export._stager import write_all as _write_all
from sandbox.export.manifest import MANIFEST_NAME, STATUSES, read_manifest, verify
from sandbox.export.manifest import SCHEMA as SCHEMA  # re-exported by the package
from sandbox.export.manifest import SCHEMA_VERSION as SCHEMA_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MANIFEST_NAME",
    "ExportResult",
    "export_run",
    "read_manifest",
    "recover",
    "verify",
]

#: The default of the policy's ``[export] max_bytes``: the sum of the sizes of a run's files.
DEFAULT_MAX_BYTES = 1 << 40
_COMMIT_TRIES = 50  # rounds of "dest changed under us" with concurrent --overwrite exports
_RENAME_EXCHANGE = 2
_RENAMEAT2_SYSCALL = {"x86_64": 316, "aarch64": 276}

if TYPE_CHECKING:
    # (olddirfd, old, newdirfd, new, flags) -> errno
    _Renameat2 = Callable[[int, bytes, int, bytes, int], int]
_renameat2_cache: list[_Renameat2 | None] = []


@record(frozen=True)
class ExportResult:
    """What :func:`export_run` did. ``recovered``: what ``recover()`` cleaned up first."""

    destination: str
    files: int
    bytes: int
    manifest: dict[str, Any]
    replaced_previous: bool
    recovered: tuple[str, ...] = field(default=())
    linked: int = 0  # files hard-linked into the export rather than copied


def _no_fault(point: str) -> None:
    pass


def export_run(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    run_id: str,
    status: str,
    exit_code: int | None,
    policy_name: str,
    policy_sha256: str,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    by_link: bool = False,
    recover: bool = True,
    before_copy: Callable[[], None] | None = None,
    _fault: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the run folder ``src`` to ``dest`` atomically, with ``dest/manifest.json``.

    ``max_bytes`` bounds the sum of the files' sizes (holes included: a huge sparse file costs
    its hashing time). ``by_link``: when ``src`` and ``dest`` share a filesystem, files are
    hard-linked into the stage rather than copied (only a file with no other link: never an
    inode something outside the run folder also names). Only for a folder no process can write
    any more -- the export would share its inodes: the launcher passes it once every step's
    PID namespace is gone; the run folder keeps its files until the
    workspace is removed, so a failed export loses nothing. Folders, links and the manifest are
    made, and everything fsynced, exactly as by a copy. ``recover``: first clean up after
    crashed exports in ``dest``'s folder (:func:`~sandbox.export.recover`, a listing of that
    folder); False when the caller just did (a launcher does it while its step runs).
    ``before_copy``: called once, before the first file's data is copied (a linked export that
    must copy after all: :func:`~sandbox.export.check_space` then); what it raises fails the
    export as a failed copy would.

    Raises :class:`PreflightError` (before writing anything) when ``dest`` exists and not
    ``overwrite``; :class:`ExportError` (one line: what failed, where, what to do) when the copy or
    the commit fails, the size limit included -- the stage is removed and the previous export,
    if any, is untouched.
    """
    fault = _fault or _no_fault
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    run = dict(extra or {})
    try:
        json.dumps(run)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra must be JSON-serialisable: {exc}") from None
    src_s = os.path.abspath(os.fspath(src))
    dest_s = os.path.abspath(os.fspath(dest))
    parent, name = os.path.split(dest_s)
    if not name:
        raise ValueError(f"cannot export to {dest_s}: the destination must be a named folder")
    if os.path.lexists(dest_s) and not overwrite:
        raise PreflightError(_exists_message(run_id, dest_s))
    if not os.path.isdir(src_s):
        raise ExportError(f"cannot export run {run_id}: its run folder {src_s} is missing or not a folder")
    _check_disjoint(run_id, src_s, dest_s)
    _make_parent(run_id, parent)

    try:
        pfd = os.open(parent, _DIR_FLAGS)
    except OSError as exc:
        failed = _Failed("opening", parent, exc)
        raise ExportError(_failure_message(run_id, dest_s, failed, False, False)) from exc
    try:
        try:
            recovered = tuple(recover_at(pfd, parent)) if recover else ()
            existed = os.path.lexists(dest_s)
            if existed and not overwrite:  # recover() put back a previous export moved aside by a crash
                raise PreflightError(_exists_message(run_id, dest_s))
            fault("recovered")
        except OSError as exc:
            failed = _Failed("cleaning up after earlier exports in", parent, exc)
            raise ExportError(
                _failure_message(run_id, dest_s, failed, os.path.lexists(dest_s), False)
            ) from exc
        header = manifest_mod.header(
            run_id=run_id,
            status=status,
            exit_code=exit_code,
            policy_name=policy_name,
            policy_sha256=policy_sha256,
        )
        manifest, replaced, linked = _stage_and_commit(
            pfd, src_s, dest_s, existed, overwrite, header, run, fault, max_bytes, by_link, before_copy
        )
    finally:
        os.close(pfd)
    totals = manifest["totals"]
    return ExportResult(dest_s, totals["files"], totals["bytes"], manifest, replaced, recovered, linked)


def _stage_and_commit(
    pfd: int,
    src: str,
    dest: str,
    existed: bool,
    overwrite: bool,
    header: dict[str, Any],
    run: dict[str, Any],
    fault: Callable[[str], None],
    max_bytes: int,
    by_link: bool,
    before_copy: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], bool, int]:
    """Stage ``src`` beside ``dest`` with its manifest (:func:`_stage`), then put the stage in place
    (:class:`_Commit`); on any failure undo both (``rollback()``) and raise one :class:`ExportError`
    line. Returns (manifest, whether a previous export was replaced, files hard-linked)."""
    parent, name = os.path.split(dest)
    run_id = header["run_id"]
    try:
        tag, stage_name, sfd = _make_stage(pfd, name)
    except OSError as exc:
        failed = _Failed("creating a stage beside", dest, exc)
        raise ExportError(_failure_message(run_id, dest, failed, existed, False)) from exc
    stage = os.path.join(parent, stage_name)
    stager = _Stager(fault, max_bytes=max_bytes, link=False, before_copy=before_copy)
    commit = _Commit(pfd, name, stage_name, _old_name(name, tag))
    try:
        manifest = _stage(stager, sfd, src, stage, header, run, by_link, fault)
        fault("before-rename")
        commit.put_in_place(run_id, dest, overwrite, fault)
        commit.finish()
        fault("done")
        return manifest, commit.replaced, stager.linked
    except BaseException as exc:
        stager.discard()
        commit.rollback()
        had = existed or commit.replaced
        if isinstance(exc, _Failed):
            if exc.path.startswith(stage + os.sep):  # name the file as it would be in the export
                exc.path = f"{exc.path[len(stage) + 1 :]} (staged beside it)"
            raise ExportError(_failure_message(run_id, dest, exc, had, commit.committed)) from exc.err
        if isinstance(exc, OSError):
            failed = _Failed("committing", exc.filename or dest, exc)
            raise ExportError(_failure_message(run_id, dest, failed, had, commit.committed)) from exc
        raise
    finally:
        os.close(sfd)
        commit.close()


def _stage(
    stager: _Stager,
    sfd: int,
    src: str,
    stage: str,
    header: dict[str, Any],
    run: dict[str, Any],
    by_link: bool,
    fault: Callable[[str], None],
) -> dict[str, Any]:
    """Copy (or link) the run folder ``src`` into the stage folder ``stage`` (open as ``sfd``),
    everything fsynced, then its ``manifest.json``, the stage's mode and its own fsync. Returns
    the manifest. Raises :class:`_Failed` naming what failed where; the stage is the caller's."""
    try:
        rfd = os.open(src, _DIR_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        raise _Failed("reading", src, exc) from None
    try:
        try:
            st = os.fstat(rfd)
        except OSError as exc:
            raise _Failed("reading", src, exc) from None
        # The same filesystem: link the files into the stage instead of copying their data.
        stager.link = by_link and st.st_dev == os.fstat(sfd).st_dev
        stager.tree(rfd, sfd, src, stage, "")
    finally:
        os.close(rfd)
    stager.flush()
    fault("before-manifest")
    manifest = manifest_mod.build(
        header,
        files=stager.files,
        symlinks=stager.symlinks,
        dirs=stager.dirs,
        deleted=stager.deleted,
        skipped=stager.skipped,
        total_bytes=stager.bytes,
        run=run,
    )
    data = manifest_mod.encode(manifest)
    try:
        mfd = os.open(MANIFEST_NAME, _NEW_FILE, 0o644, dir_fd=sfd)
        try:
            _write_all(mfd, memoryview(data))
            os.fsync(mfd)
        finally:
            os.close(mfd)
        os.fchmod(sfd, stat.S_IMODE(st.st_mode) & 0o777)  # the run folder's own mode
        os.fsync(sfd)
    except OSError as exc:
        raise _Failed("writing", os.path.join(stage, MANIFEST_NAME), exc) from None
    return manifest


class _Commit:
    """Putting a complete stage in place of the destination, and how far that got -- the shape of
    fsspec's ``Transaction``: the work, then either the end (:meth:`finish`) or :meth:`rollback`.

    ``committed``: the stage has the destination's name; ``replaced``: a previous export was
    there; ``moved_old``: that export is aside under ``old_name`` (the fallback without
    ``RENAME_EXCHANGE``; after an exchange it is under the stage's name)."""

    def __init__(self, pfd: int, name: str, stage_name: str, old_name: str) -> None:
        self.pfd, self.name, self.stage_name, self.old_name = pfd, name, stage_name, old_name
        self.committed = self.replaced = self.moved_old = False
        self._dfd: int | None = None  # the previous export, locked (see _recovery.lock_dest)

    def put_in_place(self, run_id: str, dest: str, overwrite: bool, fault: Callable[[str], None]) -> None:
        """One ``rename`` (first export), else -- ``overwrite`` -- an atomic exchange with the
        previous export, else its move aside and a rename; again while concurrent exports race."""
        pfd, name, stage_name = self.pfd, self.name, self.stage_name
        for _ in range(_COMMIT_TRIES):
            if not os.path.lexists(dest):
                try:
                    os.rename(stage_name, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    if not overwrite:
                        raise ExportError(_raced_message(run_id, dest)) from None
                    continue  # a concurrent export got there first: replace it
                self.committed = True
                fault("after-rename")
                return
            if not overwrite:
                raise ExportError(_raced_message(run_id, dest))
            self._dfd = _lock_dest(pfd, name)
            if self._dfd is None:
                continue  # replaced by a concurrent export while we waited for it
            self.replaced = True
            if _exchange(pfd, stage_name, name):
                self.committed = True
                fault("after-exchange")
                return
            os.rename(name, self.old_name, src_dir_fd=pfd, dst_dir_fd=pfd)
            self.moved_old = True
            fault("after-move-old")
            try:
                os.rename(stage_name, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # a concurrent export filled the gap: the tree we moved aside is superseded by it,
                # and ours replaces it in the next round
                _remove(pfd, self.old_name)
                self.moved_old = False
                self._close_dest()
                continue
            self.committed = True
            fault("after-rename")
            return
        raise OSError(errno.EAGAIN, "the destination keeps changing under concurrent exports", dest)

    def finish(self) -> None:
        """Make the new name durable, then remove the previous export's tree."""
        os.fsync(self.pfd)
        self._remove_old()

    def rollback(self) -> None:
        """Undo what did not complete: a previous export moved aside goes back (else ``recover()``
        puts it back), a stage not in place is removed; once committed, only the previous
        export's tree is left to remove. Never raises an ``OSError``."""
        if self.moved_old and not self.committed:
            try:
                os.rename(self.old_name, self.name, src_dir_fd=self.pfd, dst_dir_fd=self.pfd)
                self.moved_old = False
            except OSError:
                pass  # recover() will put it back
        if not self.committed:
            _remove(self.pfd, self.stage_name)
        else:
            self._remove_old()

    def _remove_old(self) -> None:
        if self.replaced:  # after an exchange under the stage's name, else under the old name
            _remove(self.pfd, self.old_name if self.moved_old else self.stage_name)

    def _close_dest(self) -> None:
        if self._dfd is not None and self._dfd >= 0:
            os.close(self._dfd)
        self._dfd = None

    def close(self) -> None:
        self._close_dest()


def write_error(run_id: str, dest: str | os.PathLike[str], path: str, exc: OSError) -> ExportError:
    """The one-line :class:`ExportError` for a launcher's own write into the run folder that
    failed before the export (the policy record, the report: ENOSPC of a full run-folder
    filesystem shows there first). Nothing was exported by then; a previous export is intact."""
    dest_s = os.path.abspath(os.fspath(dest))
    failed = _Failed("writing", path, exc)
    return ExportError(_failure_message(run_id, dest_s, failed, os.path.lexists(dest_s), False))


def _exists_message(run_id: str, dest: str) -> str:
    return (
        f"run {run_id} was already exported to {dest}: pass --overwrite to replace it atomically, "
        "or use another --run-id"
    )


def _check_disjoint(run_id: str, src: str, dest: str) -> None:
    rs, rd = os.path.realpath(src), os.path.realpath(dest)
    if os.path.commonpath([rs, rd]) in (rs, rd):
        raise ExportError(
            f"cannot export run {run_id} from {src} to {dest}: one folder contains the other; "
            "export to a folder outside the run folder"
        )


def _make_parent(run_id: str, parent: str) -> None:
    """Create the missing folders above ``dest``, each made durable in its own parent."""
    missing: list[str] = []
    p = parent
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d)
            _fsync_dir(os.path.dirname(d))
        except FileExistsError:
            pass  # created concurrently
        except OSError as exc:
            raise ExportError(
                f"cannot export run {run_id}: creating {d} failed: {exc.strerror}; "
                "create it (writable) and re-run"
            ) from exc


def _fsync_dir(path: str) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raced_message(run_id: str, dest: str) -> str:
    return (
        f"run {run_id} was exported to {dest} by another process while this export was staged: "
        "pass --overwrite to replace it, or use another --run-id"
    )


def _exchange(pfd: int, a: str, b: str) -> bool:
    """Swap names ``a`` and ``b`` in one step; False when the kernel or filesystem cannot."""
    fn = _load_renameat2()
    if fn is None:
        return False
    err = fn(pfd, os.fsencode(a), pfd, os.fsencode(b), _RENAME_EXCHANGE)
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    if err:
        raise OSError(err, os.strerror(err), b)
    return True


def _load_renameat2() -> _Renameat2 | None:
    """libc ``renameat2`` (glibc >= 2.28), else the raw syscall; None where neither exists."""
    if _renameat2_cache:
        return _renameat2_cache[0]
    import ctypes  # only on --overwrite: ~2 ms to import

    fn: _Renameat2 | None = None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        c_fn = getattr(libc, "renameat2", None)
        if c_fn is not None:
            c_fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            c_fn.restype = ctypes.c_int

            def via_libc(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
                return 0 if c_fn(olddir, old, newdir, new, flags) == 0 else ctypes.get_errno()

            fn = via_libc

        elif os.uname().machine in _RENAMEAT2_SYSCALL:
            nr = _RENAMEAT2_SYSCALL[os.uname().machine]
            syscall = libc.syscall
            syscall.restype = ctypes.c_long

            def via_syscall(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
                r = syscall(
                    ctypes.c_long(nr),
                    ctypes.c_int(olddir),
                    ctypes.c_char_p(old),
                    ctypes.c_int(newdir),
                    ctypes.c_char_p(new),
                    ctypes.c_uint(flags),
                )
                return 0 if r == 0 else ctypes.get_errno()

            fn = via_syscall

    except OSError:
        fn = None
    _renameat2_cache.append(fn)
    return fn


def _failure_message(run_id: str, dest: str, failed: _Failed, existed: bool, committed: bool) -> str:
    err = failed.err
    code = err.errno
    if code == errno.ENOSPC:
        what, todo = "no space left on device", "free space on that filesystem and re-run"
    elif code == errno.EFBIG and failed.doing == "exporting":
        what = err.strerror or "too large"
        todo = "raise [export] max_bytes in the policy, or have the step write less"
    elif code == errno.EDQUOT:
        what, todo = "disk quota exceeded", "free space or raise the quota and re-run"
    elif code in (errno.EACCES, errno.EPERM) and failed.doing == "reading":
        what, todo = "permission denied", "make it readable by this user and re-run"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, todo = err.strerror or "permission denied", f"make {os.path.dirname(dest)} writable and re-run"
    else:
        what, todo = err.strerror or type(err).__name__, "fix the cause and re-run"
    if committed:
        state = f"the new export is in place at {dest} but may not survive a power loss"
    elif existed:
        state = "the previous export is intact"
    else:
        state = "nothing was exported"
    # the path is the step's choice of name: never its escape sequences or undecodable bytes
    line = (
        f"export of run {run_id} to {dest} failed: {what} {failed.doing} {printable(str(failed.path))}: "
        f"{todo}; {state}"
    )
    return " ".join(line.splitlines())
