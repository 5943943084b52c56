"""The stage of an export: a run folder copied (or hard-linked) beside its destination, walked by
directory descriptors with ``O_NOFOLLOW``, every file hashed in the same pass and everything
fsynced (see :mod:`sandbox.export._exporter` for the whole export and its promise)."""

from __future__ import annotations

import errno
import os
import stat

from sandbox._digest import sha256
from sandbox.export._recovery import DIR_FLAGS as _DIR_FLAGS
from sandbox.export.manifest import MANIFEST_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

_CHUNK = 1 << 18
_MAX_PENDING = 128  # open staged files and folders awaiting their fsync
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class Failed(Exception):
    """An OSError with what we were doing and the path that a user can act on."""

    def __init__(self, doing: str, path: str, err: OSError) -> None:
        super().__init__(doing, path, err)
        self.doing, self.path, self.err = doing, path, err


class Stager:
    """Copies (or links) a tree into the stage, recording what the manifest lists.

    It walks the run folder by directory descriptors, never by path: every entry is looked at
    with ``fstatat(AT_SYMLINK_NOFOLLOW)`` and opened relative to its folder's descriptor with
    ``O_NOFOLLOW`` -- a link is copied as a link and never followed, so a folder swapped for a
    link to elsewhere cannot pull an outside file in, and the mode recorded is the entry's own
    (from ``fstat`` of what was opened). A file is opened ``O_NONBLOCK`` and kept only if
    ``fstat`` says regular, so a FIFO swapped in cannot block the export; fifos, sockets and
    devices are never opened, only listed under ``"skipped"``.
    """

    def __init__(
        self,
        fault: Callable[[str], None],
        *,
        max_bytes: int,
        link: bool,
        before_copy: Callable[[], None] | None = None,
    ) -> None:
        self.fault = fault
        self.before_copy = before_copy  # called once, before the first copy of a file's data
        self.max_bytes = max_bytes
        self.link = link  # same filesystem: hard-link files into the stage instead of copying them
        self.linked = 0
        self.files: list[dict[str, Any]] = []
        self.symlinks: list[dict[str, Any]] = []
        self.dirs: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.skipped: list[dict[str, Any]] = []
        self.bytes = 0
        # The read buffer grows to what the files need, up to _CHUNK: zeroing all of it up front
        # is 64 page faults of every export, most of whose files are a few kB.
        self.view = memoryview(bytearray(0))
        self.zeros = bytes(_CHUNK)  # calloc'ed: its pages are only mapped where read
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
                    raise Failed("writing", path, exc) from None
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
            raise Failed("reading", src, exc) from None
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
                raise Failed("reading", here, exc) from None
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                self._dir(sfd, dfd, name, here, d, r)
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(name, dir_fd=sfd)
                except OSError as exc:
                    raise Failed("reading", here, exc) from None
                try:
                    os.symlink(target, name, dir_fd=dfd)
                except OSError as exc:
                    raise Failed("writing", d, exc) from None
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
            raise Failed("reading", here, exc) from None
        try:
            mode = stat.S_IMODE(os.fstat(cfd).st_mode) & 0o777
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
                nfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError as exc:
                raise Failed("writing", d, exc) from None
            try:
                self.tree(cfd, nfd, here, d, r + "/")
                os.fchmod(nfd, mode)
            except OSError as exc:
                os.close(nfd)
                raise Failed("writing", d, exc) from None
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
            raise Failed("reading", here, exc) from None
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
                raise Failed("exporting", here, err)
            mode = stat.S_IMODE(st.st_mode) & 0o777  # setuid/setgid/sticky never exported
            if self.link and st.st_nlink == 1 and self._link(sfd, dfd, name):
                digest = self._hash(fd, here, size)
                self.linked += 1
                try:
                    os.fchmod(fd, mode)
                except OSError as exc:
                    raise Failed("writing", d, exc) from None
                self._defer(fd, d)  # the data the step wrote must be durable: fsync the inode
                fd = -1
            else:
                if self.before_copy is not None:
                    check, self.before_copy = self.before_copy, None
                    check()
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
                raise Failed("reading", here, exc) from None
            end = min(end, size)
            if end > start:
                yield start, end - start
            pos = end

    def _read(self, fd: int, here: str, offset: int, length: int) -> Iterator[memoryview]:
        if len(self.view) < min(length, _CHUNK):
            self.view = memoryview(bytearray(min(max(length, 1 << 12), _CHUNK)))
        view = self.view
        while length > 0:
            want = min(length, len(view))
            try:
                n = os.preadv(fd, [view[:want]], offset)
            except OSError as exc:
                raise Failed("reading", here, exc) from None
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
            out = os.open(name, NEW_FILE, 0o600, dir_fd=dfd)
        except OSError as exc:
            raise Failed("writing", d, exc) from None
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
            raise Failed("writing", d, exc) from None
        return digest.hexdigest()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def write_all(fd: int, data: memoryview) -> None:
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
