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
from sandbox._digest import sha256
from sandbox._record import field, record
from sandbox.errors import ExportError, PreflightError
from sandbox.export import manifest as manifest_mod
from sandbox.export._recovery import DIR_FLAGS as _DIR_FLAGS
from sandbox.export._recovery import lock_dest as _lock_dest
from sandbox.export._recovery import make_stage as _make_stage
from sandbox.export._recovery import old_name as _old_name
from sandbox.export._recovery import recover, recover_at
from sandbox.export._recovery import remove as _remove
from sandbox.export.manifest import MANIFEST_NAME, STATUSES, read_manifest, verify
from sandbox.export.manifest import SCHEMA as SCHEMA  # re-exported by the package
from sandbox.export.manifest import SCHEMA_VERSION as SCHEMA_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
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

_CHUNK = 1 << 18
#: The default of the policy's ``[export] max_bytes``: the sum of the sizes of a run's files.
DEFAULT_MAX_BYTES = 1 << 40
_COMMIT_TRIES = 50  # rounds of "dest changed under us" with concurrent --overwrite exports
_MAX_PENDING = 128  # open staged files and folders awaiting their fsync
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
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


class _Failed(Exception):
    """An OSError with what we were doing and the path that a user can act on."""

    def __init__(self, doing: str, path: str, err: OSError) -> None:
        super().__init__(doing, path, err)
        self.doing, self.path, self.err = doing, path, err


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
    made, and everything fsynced, exactly as by a copy.

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
            recovered = tuple(recover_at(pfd, parent))
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
            pfd, src_s, dest_s, existed, overwrite, header, run, fault, max_bytes, by_link
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
) -> tuple[dict[str, Any], bool, int]:
    parent, name = os.path.split(dest)
    run_id = header["run_id"]
    try:
        tag, stage_name, sfd = _make_stage(pfd, name)
    except OSError as exc:
        failed = _Failed("creating a stage beside", dest, exc)
        raise ExportError(_failure_message(run_id, dest, failed, existed, False)) from exc
    stage = os.path.join(parent, stage_name)
    old_name = _old_name(name, tag)
    moved_old = committed = replaced = False
    dfd: int | None = None
    stager = _Stager(fault, max_bytes=max_bytes, link=False)
    rfd = -1
    try:
        try:
            rfd = os.open(src, _DIR_FLAGS | os.O_NOFOLLOW)
            st = os.fstat(rfd)
        except OSError as exc:
            raise _Failed("reading", src, exc) from None
        root_mode = stat.S_IMODE(st.st_mode) & 0o777
        # The same filesystem: link the files into the stage instead of copying their data.
        stager.link = by_link and st.st_dev == os.fstat(sfd).st_dev
        stager.tree(rfd, sfd, src, stage, "")
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
        where = os.path.join(stage, MANIFEST_NAME)
        try:
            mfd = os.open(MANIFEST_NAME, _NEW_FILE, 0o644, dir_fd=sfd)
            try:
                _write_all(mfd, memoryview(data))
                os.fsync(mfd)
            finally:
                os.close(mfd)
            os.fchmod(sfd, root_mode)
            os.fsync(sfd)
        except OSError as exc:
            raise _Failed("writing", where, exc) from None
        fault("before-rename")

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
                committed = True
                fault("after-rename")
                break
            if not overwrite:
                raise ExportError(_raced_message(run_id, dest))
            dfd = _lock_dest(pfd, name)
            if dfd is None:
                continue  # replaced by a concurrent export while we waited for it
            replaced = True
            if _exchange(pfd, stage_name, name):
                committed = True
                fault("after-exchange")
                break
            os.rename(name, old_name, src_dir_fd=pfd, dst_dir_fd=pfd)
            moved_old = True
            fault("after-move-old")
            try:
                os.rename(stage_name, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # a concurrent export filled the gap: the tree we moved aside is superseded by it,
                # and ours replaces it in the next round
                _remove(pfd, old_name)
                moved_old = False
                if dfd >= 0:
                    os.close(dfd)
                dfd = None
                continue
            committed = True
            fault("after-rename")
            break
        else:
            raise OSError(errno.EAGAIN, "the destination keeps changing under concurrent exports", dest)
        os.fsync(pfd)
        if replaced:  # the old tree: under the stage name after an exchange, else under the old name
            _remove(pfd, old_name if moved_old else stage_name)
        fault("done")
        return manifest, replaced, stager.linked
    except BaseException as exc:
        stager.discard()
        if moved_old and not committed:
            try:
                os.rename(old_name, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                moved_old = False
            except OSError:
                pass  # recover() will put it back
        if not committed:
            _remove(pfd, stage_name)
        elif replaced:
            _remove(pfd, old_name if moved_old else stage_name)
        had = existed or replaced
        if isinstance(exc, _Failed):
            if exc.path.startswith(stage + os.sep):  # name the file as it would be in the export
                exc.path = f"{exc.path[len(stage) + 1 :]} (staged beside it)"
            raise ExportError(_failure_message(run_id, dest, exc, had, committed)) from exc.err
        if isinstance(exc, OSError):
            failed = _Failed("committing", exc.filename or dest, exc)
            raise ExportError(_failure_message(run_id, dest, failed, had, committed)) from exc
        raise
    finally:
        os.close(sfd)
        if rfd >= 0:
            os.close(rfd)
        if dfd is not None and dfd >= 0:
            os.close(dfd)


class _Stager:
    """Copies (or links) a tree into the stage, recording what the manifest lists.

    It walks the run folder by directory descriptors, never by path: every entry is looked at
    with ``fstatat(AT_SYMLINK_NOFOLLOW)`` and opened relative to its folder's descriptor with
    ``O_NOFOLLOW`` -- a link is copied as a link and never followed, so a folder swapped for a
    link to elsewhere cannot pull an outside file in, and the mode recorded is the entry's own
    (from ``fstat`` of what was opened). A file is opened ``O_NONBLOCK`` and kept only if
    ``fstat`` says regular, so a FIFO swapped in cannot block the export; fifos, sockets and
    devices are never opened, only listed under ``"skipped"``.
    """

    def __init__(self, fault: Callable[[str], None], *, max_bytes: int, link: bool) -> None:
        self.fault = fault
        self.max_bytes = max_bytes
        self.link = link  # same filesystem: hard-link files into the stage instead of copying them
        self.linked = 0
        self.files: list[dict[str, Any]] = []
        self.symlinks: list[dict[str, Any]] = []
        self.dirs: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.skipped: list[dict[str, Any]] = []
        self.bytes = 0
        self.view = memoryview(bytearray(_CHUNK))
        self.zeros = bytes(_CHUNK)
        self.pending: list[tuple[int, str]] = []  # written, writeback started, not yet fsynced

    def flush(self) -> None:
        """fsync what is pending, in creation order (a folder after its entries).

        Deferring the fsyncs after starting writeback of every file lets one journal commit cover
        many files: 200 files of 20 kB export in half the time of a fsync per file.
        """
        pending, self.pending = self.pending, []
        try:
            for fd, path in pending:
                try:
                    os.fsync(fd)  # ENOSPC/EDQUOT of delayed allocation shows here
                except OSError as exc:
                    raise _Failed("writing", path, exc) from None
        finally:
            for fd, _ in pending:
                os.close(fd)

    def discard(self) -> None:
        for fd, _ in self.pending:
            os.close(fd)
        self.pending.clear()

    def _defer(self, fd: int, path: str) -> None:
        if len(self.pending) >= _MAX_PENDING:
            try:
                self.flush()
            except BaseException:
                os.close(fd)
                raise
        self.pending.append((fd, path))

    def tree(self, sfd: int, dfd: int, src: str, dst: str, rel: str) -> None:
        """Stage the entries of the folder open at ``sfd`` (path ``src``, for messages) into the
        one open at ``dfd`` (``dst``)."""
        try:
            names = os.listdir(sfd)
        except OSError as exc:
            raise _Failed("reading", src, exc) from None
        for name in names:
            r = rel + name
            here = os.path.join(src, name)
            d = os.path.join(dst, name)
            if not rel and name == MANIFEST_NAME:
                self.skipped.append({"path": r, "kind": "reserved name"})
                continue
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except OSError as exc:
                raise _Failed("reading", here, exc) from None
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                self._dir(sfd, dfd, name, here, d, r)
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(name, dir_fd=sfd)
                except OSError as exc:
                    raise _Failed("reading", here, exc) from None
                try:
                    os.symlink(target, name, dir_fd=dfd)
                except OSError as exc:
                    raise _Failed("writing", d, exc) from None
                self.symlinks.append({"path": r, "target": os.fsdecode(target)})
            elif stat.S_ISREG(mode):
                self._file(sfd, dfd, name, here, d, r)
            elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                self.deleted.append(r)  # an overlayfs whiteout (char device 0/0): the run deleted this
            else:
                self.skipped.append({"path": r, "kind": _kind(mode)})

    def _dir(self, sfd: int, dfd: int, name: str, here: str, d: str, r: str) -> None:
        try:
            cfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=sfd)
        except OSError as exc:
            raise _Failed("reading", here, exc) from None
        try:
            mode = stat.S_IMODE(os.fstat(cfd).st_mode) & 0o777
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
                nfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError as exc:
                raise _Failed("writing", d, exc) from None
            try:
                self.tree(cfd, nfd, here, d, r + "/")
                os.fchmod(nfd, mode)
            except OSError as exc:
                os.close(nfd)
                raise _Failed("writing", d, exc) from None
            except BaseException:
                os.close(nfd)
                raise
            self._defer(nfd, d)
        finally:
            os.close(cfd)
        self.dirs.append({"path": r, "mode": mode})
        self.fault("staged-dir")

    def _file(self, sfd: int, dfd: int, name: str, here: str, d: str, r: str) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
        except OSError as exc:
            raise _Failed("reading", here, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped since the fstatat: never read from it
                self.skipped.append({"path": r, "kind": _kind(st.st_mode)})
                return
            size = st.st_size
            if self.bytes + size > self.max_bytes:
                err = OSError(
                    errno.EFBIG,
                    f"the run folder holds more than the export limit of {self.max_bytes} bytes",
                )
                raise _Failed("exporting", here, err)
            mode = stat.S_IMODE(st.st_mode) & 0o777  # setuid/setgid/sticky never exported
            if self.link and st.st_nlink == 1 and self._link(sfd, dfd, name):
                digest = self._hash(fd, here, size)
                self.linked += 1
                try:
                    os.fchmod(fd, mode)
                except OSError as exc:
                    raise _Failed("writing", d, exc) from None
                self._defer(fd, d)  # the data the step wrote must be durable: fsync the inode
                fd = -1
            else:
                digest = self._copy(fd, dfd, name, here, d, size, mode)
        finally:
            if fd >= 0:
                os.close(fd)
        self.files.append({"path": r, "size": size, "sha256": digest, "mode": mode})
        self.bytes += size
        self.fault("staged-file")

    def _link(self, sfd: int, dfd: int, name: str) -> bool:
        """Hard-link the entry itself (never what a link names) into the stage; False where the
        filesystem refuses (the caller copies)."""
        try:
            os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            return True
        except OSError:
            self.link = False  # one refusal (EXDEV, EPERM, EMLINK...): copy the rest
            return False

    def _segments(self, fd: int, here: str, size: int) -> Iterator[tuple[int, int]]:
        """``(offset, length)`` of the data of a file, its holes left out (SEEK_DATA/SEEK_HOLE;
        one segment where the filesystem does not tell)."""
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole after pos
                    return
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    yield pos, size - pos
                    return
                raise _Failed("reading", here, exc) from None
            end = min(end, size)
            if end > start:
                yield start, end - start
            pos = end

    def _read(self, fd: int, here: str, offset: int, length: int) -> Iterator[memoryview]:
        view = self.view
        while length > 0:
            want = min(length, len(view))
            try:
                n = os.preadv(fd, [view[:want]], offset)
            except OSError as exc:
                raise _Failed("reading", here, exc) from None
            if not n:
                return  # shrank meanwhile: the hash and size say what was there
            yield view[:n]
            offset += n
            length -= n

    def _hash_zeros(self, digest: Any, n: int) -> None:
        zeros = self.zeros
        while n > 0:
            k = min(n, len(zeros))
            digest.update(zeros[:k] if k < len(zeros) else zeros)
            n -= k

    def _hash(self, fd: int, here: str, size: int) -> str:
        digest = sha256(size)
        pos = 0
        for offset, length in self._segments(fd, here, size):
            self._hash_zeros(digest, offset - pos)
            for chunk in self._read(fd, here, offset, length):
                digest.update(chunk)
            pos = offset + length
        self._hash_zeros(digest, size - pos)
        return digest.hexdigest()

    def _copy(self, sfd: int, dfd: int, name: str, here: str, d: str, size: int, mode: int) -> str:
        """Copy the data of a regular file, holes left as holes, hashing it in the same pass."""
        try:
            out = os.open(name, _NEW_FILE, 0o600, dir_fd=dfd)
        except OSError as exc:
            raise _Failed("writing", d, exc) from None
        self._defer(out, d)
        digest = sha256(size)
        pos = 0
        try:
            for offset, length in self._segments(sfd, here, size):
                self._hash_zeros(digest, offset - pos)
                at = offset
                for chunk in self._read(sfd, here, offset, length):
                    digest.update(chunk)
                    _pwrite_all(out, chunk, at)
                    at += len(chunk)
                pos = offset + length
            self._hash_zeros(digest, size - pos)
            os.ftruncate(out, size)  # the trailing hole, if any
            os.fchmod(out, mode)
            if size:  # start writeback now; flush() waits for it
                os.posix_fadvise(out, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise _Failed("writing", d, exc) from None
        return digest.hexdigest()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def write_error(run_id: str, dest: str | os.PathLike[str], path: str, exc: OSError) -> ExportError:
    """The one-line :class:`ExportError` for a launcher's own write into the run folder that
    failed before the export (the policy record, the report: ENOSPC of a full run-folder
    filesystem shows there first). Nothing was exported by then; a previous export is intact."""
    dest_s = os.path.abspath(os.fspath(dest))
    failed = _Failed("writing", path, exc)
    return ExportError(_failure_message(run_id, dest_s, failed, os.path.lexists(dest_s), False))


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "unknown"


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
    line = f"export of run {run_id} to {dest} failed: {what} {failed.doing} {failed.path}: {todo}; {state}"
    return " ".join(line.splitlines())
