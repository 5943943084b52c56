"""Mount-namespace mechanics: a private mount table, bind mounts, overlays, a read-only view.

Every function here changes the mount table of the *calling process's* mount namespace, so call
them only after :func:`unshare_mount_namespace` (in practice in a forked child before ``exec``):
in the host namespace they would change what every process on the machine sees.

Read-only mounts give EROFS for every mutation -- writes, creates, deletes, renames, and also
chmod, chown, utime and xattrs, which Landlock does not cover.
"""

from __future__ import annotations

import errno
import os
import sys

from sandbox.kernel import _ffi, _libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

# <linux/sockios.h>, <net/if.h>
_AF_INET = 2
_SOCK_DGRAM = 2
_SOCK_CLOEXEC = 0o2000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFNAMSIZ = 16
_IFREQ_SIZE = 40  # struct ifreq: the name, then a 24-byte union (ifr_flags: a short at its start)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21

PR_CAPBSET_DROP = 24
CAP_SYS_ADMIN = 21

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000

#: Per-mount options a remount must repeat: inside a user namespace the kernel locks them on
#: mounts inherited from the parent namespace, and a remount that drops one fails with EPERM.
_KEEP_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}

#: Kernel interfaces that stay writable: /dev/shm holds multiprocessing semaphores, /dev/pts the
#: terminals, /proc/self the process's own knobs. Landlock still limits what may be created there.
#: /sys is not among them: a step has nothing to write there (Docker mounts it read-only too).
ALWAYS_WRITABLE = ("/proc", "/dev")

#: Below a fresh /proc, what Docker and bubblewrap keep read-only: kernel-wide knobs that a
#: process owning root's uid could otherwise write where no capability is checked.
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")


class _MountAttr(_ffi.Structure):
    _fields_ = [
        ("attr_set", _ffi.c_uint64),
        ("attr_clr", _ffi.c_uint64),
        ("propagation", _ffi.c_uint64),
        ("userns_fd", _ffi.c_uint64),
    ]


def _mount(
    src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None, *, what: str = ""
) -> None:
    enc = [None if x is None else os.fsencode(x) for x in (src, dst, fstype, data)]
    what = what or f"mount {src} on {dst}"
    _libc.check(_libc.libc().mount(enc[0], enc[1], enc[2], flags, enc[3]), what, dst)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


_made_user_namespace = False  # set by unshare_mount_namespace: this process entered a user namespace


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one.

    True after :func:`unshare_mount_namespace` made one (an identity map of the whole range looks
    like the initial namespace's), or when the uid map is not the initial one's full map."""
    if _made_user_namespace:
        return True
    try:
        with open("/proc/self/uid_map", encoding="ascii") as fh:
            return fh.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def map_identity(proc: int) -> bool:
    """Write the identity uid/gid maps of the new user namespace of the process whose /proc folder
    is open as ``proc`` (a descriptor names that process for good; a pid may be reused once it
    is dead) -- every id this process's namespace knows, to itself, so files keep their owners --
    from outside it: mapping more than one's own id needs CAP_SETUID/CAP_SETGID in the *parent*
    namespace, which the process that just unshared does not have there: the keeper's mapper
    does it (``_keeper``), a fork made before the keeper's ``unshare``. False when we may not (the
    keeper then maps its own id only)."""

    def identity(path: str) -> bytes:
        # bytes, not a text file: a TextIOWrapper would import the ascii codec in the forked helper
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            rows = [line.split() for line in os.read(fd, 1 << 16).splitlines() if line.strip()]
        finally:
            os.close(fd)
        return b"".join(b"%s %s %s\n" % (inside, inside, count) for inside, _outside, count in rows)

    try:
        for kind in ("uid_map", "gid_map"):
            text = identity(f"/proc/self/{kind}")
            fd = os.open(kind, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
        return True
    except OSError:
        return False


def unshare_mount_namespace(
    *,
    user_namespace: bool | None = None,
    pid_namespace: bool = False,
    network_namespace: bool = False,
    mapped_by_parent: Callable[[], bool] | None = None,
) -> bool:
    """Move the calling process into a new, private mount namespace, in a new user namespace.

    A user namespace is made whoever calls (``user_namespace`` None or True), root included:
    a process in a child user namespace holds no capability of the initial one, so whatever
    root may do outside (open_by_handle_at, mknod, kill, raw I/O...) is gone for the step.
    ``user_namespace=False`` makes only the mount namespace (real root; tests and probes).

    The ids: ``mapped_by_parent`` (when given, and the caller is root) asks a process of the
    parent namespace -- the keeper's mapper (``_keeper``) -- to write an identity map of the
    whole range (:func:`map_identity`) and returns whether it did; otherwise the process maps
    itself: uid and gid ``0 <id> 1`` (root inside), ``setgroups`` denied (the kernel requires
    that before an unprivileged gid_map).
    ``pid_namespace``: also a new PID namespace for the children forked from now on, and a new
    IPC namespace (System V IPC, POSIX message queues) for this process at once.
    ``network_namespace``: also a new network namespace, for this process at once: only a loopback
    interface, down until :func:`loopback_up` (owned by the new user namespace, whose root may).
    The process must be single-threaded (the kernel refuses CLONE_NEWUSER otherwise).
    Returns whether a user namespace was created.
    """
    global _made_user_namespace
    uid, gid = os.geteuid(), os.getegid()
    userns = True if user_namespace is None else user_namespace
    lib = _libc.libc()
    flags = CLONE_NEWNS | (CLONE_NEWUSER if userns else 0)
    # The step's processes are its own, and so are their System V IPC objects and POSIX message
    # queues: without an IPC namespace a step reads and writes the machine's shared memory
    # segments by key (bubblewrap's --unshare-ipc, Docker's default).
    flags |= (CLONE_NEWPID | CLONE_NEWIPC) if pid_namespace else 0
    flags |= CLONE_NEWNET if network_namespace else 0
    rc = lib.unshare(flags)
    what = "unshare a mount namespace" + (" in a new user namespace" if userns else "")
    what += " with a PID and an IPC namespace" if pid_namespace else ""
    _libc.check(rc, what + (" and a network namespace" if network_namespace else ""))
    if userns:
        _made_user_namespace = True
        if not (uid == 0 and mapped_by_parent is not None and mapped_by_parent()):
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
    return userns


def loopback_up() -> None:
    """Bring up ``lo`` of the calling process's (new) network namespace: what ``ip link set lo up``
    does, with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls on an AF_INET datagram socket (the kernel
    gives an up loopback 127.0.0.1/8 and ::1 by itself). Through libc, not ``socket``/``fcntl``:
    nothing to import in the forked child, nothing added to the launcher's start-up. Needs
    CAP_NET_ADMIN over the namespace: call it before the capabilities are dropped."""
    lib = _libc.libc()
    fd = _libc.check(lib.socket(_AF_INET, _SOCK_DGRAM | _SOCK_CLOEXEC, 0), "a socket to bring up lo")
    try:
        req = _ffi.create_string_buffer(b"lo", _IFREQ_SIZE)
        _libc.check(lib.ioctl(fd, _SIOCGIFFLAGS, req), "read the flags of lo")
        flags = int.from_bytes(req.raw[_IFNAMSIZ : _IFNAMSIZ + 2], sys.byteorder)
        flags |= _IFF_UP
        _ffi.memmove(_ffi.addressof(req) + _IFNAMSIZ, flags.to_bytes(2, sys.byteorder), 2)
        _libc.check(lib.ioctl(fd, _SIOCSIFFLAGS, req), "bring up lo")
    finally:
        lib.close(fd)


def hide(path: str) -> bool:
    """Cover the folder ``path`` with an empty, read-only tmpfs (``nodev,nosuid,noexec``): what
    it holds -- sockets, tokens -- is out of the step's reach by path. False when ``path`` is not
    a folder (any more): nothing to hide."""
    try:
        _mount(
            "tmpfs",
            path,
            "tmpfs",
            MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "mode=0755,size=4k",
            what=f"hide {path} (an empty tmpfs over it)",
        )
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    return True


def lock_mounts() -> None:
    """Keep the command from changing the mount table it will run in.

    Root (real, or in the user namespace made above) could otherwise ``mount -o remount,rw`` the
    read-only view or unmount a bind to reveal what it covers: the mounts made here are owned by
    the process's own namespace, so the kernel does not lock them. Dropping CAP_SYS_ADMIN from the
    capability bounding set takes it away from every program ``exec``'d from now on (Landlock also
    refuses mount calls, but it may be unavailable). The caller keeps it until it execs.
    """
    _libc.check(_libc.libc().prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0), "drop CAP_SYS_ADMIN")


def make_private() -> None:
    """``mount --make-rprivate /``: nothing we mount propagates back to the host, nor theirs to us."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, what="make / private")


def _decode(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as ``\ooo`` octal."""
    if "\\" not in field:
        return field
    out, i = bytearray(), 0
    raw = field.encode()
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit() and len(raw[i + 1 : i + 4]) == 3:
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


MountTable = list[tuple[str, frozenset[str]]]  # (mount point, per-mount options), in mount order


def mount_table() -> MountTable:
    """``(mount point, per-mount options)`` of every mount of this namespace, in mount order."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        rows = [line.split(" ", 6) for line in fh]
    return [(_decode(r[4]), frozenset(r[5].split(","))) for r in rows if len(r) > 5]


def _set_readonly(path: str, *, recursive: bool) -> None:
    """Make the mount at ``path`` (and, if ``recursive``, every mount below it) read-only."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    # mount_setattr (5.12+) changes only the read-only bit, so locked flags need no care.
    rc = _libc.syscall(_libc.SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), flags, _ffi.byref(attr), 32)
    if rc == 0:
        return
    if _ffi.get_errno() != errno.ENOSYS:
        _libc.check(rc, f"make {path} read-only", path)
    for point, opts in _topmost(mount_table()):
        if point == path or (recursive and _below(point, path)):
            _remount_readonly(point, opts)


def _remount_readonly(path: str, options: frozenset[str]) -> None:
    """The pre-5.12 way: a bind remount that repeats the mount's locked flags."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for name, bit in _KEEP_FLAGS.items():
        if name in options:
            flags |= bit
    _mount(None, path, None, flags, what=f"remount {path} read-only")


def _below(path: str, root: str) -> bool:
    """``path`` is ``root`` or inside it, compared by components (``/a/bc`` is not below ``/a/b``)."""
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


def bind(src: str, dst: str, *, readonly: bool, recursive: bool = True) -> None:
    """Bind ``src`` onto ``dst`` (both must exist, of the same kind: folder or file).

    ``recursive`` brings the mounts below ``src`` along (required in a user namespace whenever
    ``src`` has locked submounts: hiding them would reveal what they cover). ``readonly`` makes
    the new mount, and every mount below it, read-only.
    """
    try:
        _mount(src, dst, None, MS_BIND | (MS_REC if recursive else 0))
    except OSError as e:
        missing = [p for p in (src, dst) if not os.path.lexists(p)]
        if e.errno == errno.ENOENT and missing:
            raise OSError(e.errno, f"{e.strerror} ({', '.join(missing)}: does not exist)", dst) from None
        raise
    if readonly:
        _set_readonly(os.path.realpath(dst), recursive=True)


def _escape(path: str) -> str:
    # overlayfs splits its options on ',' and lowerdir on ':'; a backslash escapes either.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def scaffold(path: str, folders: Sequence[str]) -> None:
    """A fresh tmpfs on ``path`` (``nodev,nosuid,noexec``) holding the empty ``folders`` (relative
    paths): an overlay's top lower layer of mount points (:class:`~sandbox.kernel.plan.Overlay`'s
    ``points``), in the namespace's memory instead of on the workspace's disk. The read-only pass
    makes it read-only with everything else that is not a writable root."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mount("tmpfs", path, "tmpfs", flags, "mode=0755,size=64k", what=f"a tmpfs on {path}")
    for rel in folders:
        os.makedirs(os.path.join(path, rel), mode=0o755, exist_ok=True)


def overlay(lower: Sequence[str], upper: str, work: str, target: str) -> None:
    """Mount an overlay on ``target``: reads see ``upper`` over ``lower`` (first = topmost), every
    write, create or delete lands in ``upper`` (deletes as whiteouts: char devices 0/0).

    ``work`` must be an empty folder on the same filesystem as ``upper``. As real root the
    overlay keeps its metadata in ``trusted.*`` xattrs; in a user namespace those are forbidden
    and it needs ``userxattr`` (``user.overlay.*``, Linux 5.11+). The other variant is tried when
    the first fails, so either way the first error is the one reported.
    """
    if not lower:
        raise ValueError("overlay needs at least one lower folder")
    base = f"lowerdir={':'.join(_escape(p) for p in lower)},upperdir={_escape(upper)},workdir={_escape(work)}"
    variants = [base, base + ",userxattr"]
    if in_user_namespace():
        variants.reverse()
    try:
        _mount("overlay", target, "overlay", 0, variants[0], what=f"overlay on {target}")
    except OSError as first:
        try:
            _mount("overlay", target, "overlay", 0, variants[1], what=f"overlay on {target}")
        except OSError:
            missing = [p for p in (*lower, upper, work, target) if not os.path.isdir(p)]
            why = f" ({', '.join(missing)}: no such folder)" if missing else ""
            raise OSError(first.errno, f"{first.strerror}{why}", target) from None


def _set_attrs(path: str, attrs: int, *, recursive: bool) -> None:
    """``mount_setattr`` of ``attrs`` on the mount at ``path``; before 5.12, a bind remount that
    repeats the read-only state and the locked flags."""
    attr = _MountAttr(attr_set=attrs)
    flags = AT_RECURSIVE if recursive else 0
    rc = _libc.syscall(_libc.SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), flags, _ffi.byref(attr), 32)
    if rc == 0:
        return
    if _ffi.get_errno() != errno.ENOSYS:
        _libc.check(rc, f"set mount options of {path}", path)
    extra = (MS_NOSUID if attrs & MOUNT_ATTR_NOSUID else 0) | (MS_NODEV if attrs & MOUNT_ATTR_NODEV else 0)
    for point, opts in _topmost(mount_table()):
        if point == path or (recursive and _below(point, path)):
            flags = MS_REMOUNT | MS_BIND | extra | (MS_RDONLY if "ro" in opts else 0)
            for name, bit in _KEEP_FLAGS.items():
                if name in opts:
                    flags |= bit
            _mount(None, point, None, flags, what=f"remount {point} nodev,nosuid")


def seal_writable(paths: Sequence[str], table: MountTable | None = None) -> None:
    """Make every writable place of the step ``nodev,nosuid`` (and the mounts below it): a device
    node made or brought there opens nothing, a set-user-ID file there raises nothing. A path
    that is not a mount point is first bound onto itself, so the options are its own. Paths
    below /proc and /dev are left alone (/dev/shm gets its own mount: :func:`private_shm`).
    ``table``: the mount table as it is now (what :func:`remount_all_readonly` returns), else
    read here."""
    if table is None:
        table = mount_table()
    for path in dict.fromkeys(os.path.realpath(p) for p in paths):
        if any(_below(path, k) for k in ALWAYS_WRITABLE) or not os.path.isdir(path):
            continue
        if not _is_mount_point(path, table):
            _mount(path, path, None, MS_BIND | MS_REC, what=f"seal {path} (bind it onto itself)")
            table = mount_table()
        _set_attrs(path, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)


def private_shm(path: str = "/dev/shm") -> bool:
    """A fresh tmpfs on ``path`` (``nodev,nosuid,noexec``, sticky and world-writable as
    /dev/shm is): the step's POSIX shared memory and semaphores, gone with its namespace; the
    host's /dev/shm stays out of its reach. False when there is no such folder."""
    if not os.path.isdir(path):
        return False
    _mount(
        "tmpfs",
        path,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777",
        what=f"a private tmpfs on {path}",
    )
    return True


#: The device nodes of a minimal /dev, bound from the host's (what bubblewrap's ``--dev`` and
#: Docker give a container); pseudo-terminals come from a new devpts instance.
MINIMAL_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def minimal_dev() -> None:
    """Replace /dev with a tmpfs holding only :data:`MINIMAL_DEVICES` (bound from the host's
    nodes), a new devpts instance on /dev/pts (``ptmx`` links into it: the step's terminals are its
    own), an empty /dev/shm, and the ``fd``/``stdin``/``stdout``/``stderr`` links. The nodes'
    binds are read-only (their modes and times are the host's). Raw disks,
    ``kmsg``, ``mem`` and every other node of the host's /dev are gone from the step's view."""
    fds = {}
    try:
        for name in MINIMAL_DEVICES:
            try:  # kept open across the cover: the host's nodes are hidden once /dev is
                fds[name] = os.open("/dev/" + name, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
        _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755", what="a tmpfs on /dev")
        for name, fd in fds.items():
            os.close(os.open("/dev/" + name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            _mount(f"/proc/self/fd/{fd}", "/dev/" + name, None, MS_BIND, what=f"bind /dev/{name}")
    finally:
        for fd in fds.values():
            os.close(fd)
    os.mkdir("/dev/pts", 0o755)
    os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    os.chmod("/dev/shm", 0o1777)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, "/dev/" + name)
    # Read-only, the tmpfs and every node's bind at once (one call: each costs ~0.1 ms): a node
    # is the host's own inode, and a root step owns it -- chmod or utime through a writable bind
    # changed the host's /dev/null. Reads and writes *to the device* still work: a read-only mount
    # refuses only changes of the inode. The terminals' devpts and /dev/shm are mounted after.
    _set_readonly("/dev", recursive=True)
    _mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
        what="a new devpts instance on /dev/pts",
    )


def mount_proc() -> None:
    """A fresh /proc for the calling process's PID namespace (call it from that namespace's
    PID 1): the step sees its own processes only. The kernel-wide knobs of :data:`PROC_READONLY`
    are bound read-only over themselves, and no user namespace may be made inside ours. Once:
    nothing when /proc already is this namespace's (:func:`proc_is_ours`)."""
    if proc_is_ours():
        return
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, what="mount a fresh /proc")
    # No user namespace inside the step's (bubblewrap's --disable-userns, Docker's seccomp
    # profile): less kernel for it to reach. The limit is our namespace's own; only
    # CAP_SYS_RESOURCE in it could raise it again, and the step keeps no capability.
    try:
        _write("/proc/sys/user/max_user_namespaces", "0")
    except OSError as e:
        raise OSError(e.errno, f"cannot forbid nested user namespaces: {e.strerror}") from None
    for name in PROC_READONLY:
        p = "/proc/" + name
        if os.path.lexists(p):
            _mount(p, p, None, MS_BIND | MS_REC, what=f"bind {p} onto itself")
            _set_readonly(p, recursive=True)


def proc_is_ours() -> bool:
    """Whether /proc is the calling process's PID namespace's: its ``self`` names our pid as
    that namespace numbers it (the host's /proc names the host's pid). Only :func:`mount_proc`
    mounts one, whole or not at all (a failure ends the process)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _is_mount_point(path: str, table: Sequence[tuple[str, frozenset[str]]]) -> bool:
    return any(point == path for point, _ in table)


def remount_all_readonly(keep_writable: Sequence[str]) -> MountTable:
    """Make every mount of this namespace read-only, except the ``keep_writable`` paths (and the
    mounts below them) and the kernel interfaces below /proc, /sys and /dev.

    A writable path that is not a mount point is first bound onto itself, so that its read-only
    flag is its own and not its parent's. Mounts already read-only stay so, wherever they are.
    Mounts hidden under another mount (their path now shows something else) are left alone: no
    path reaches them. Raises ``OSError`` naming the mount that could not be made read-only.
    Returns the mount table it worked from: the mounts are still those (their options not), for
    :func:`seal_writable` (each read of the table is ~0.1 ms of the step's start-up).
    """
    keep = [os.path.realpath(p) for p in dict.fromkeys(keep_writable)]
    table = mount_table()
    bound = False
    for path in keep:
        if any(_below(path, k) for k in ALWAYS_WRITABLE):
            continue
        if not _is_mount_point(path, table):
            _mount(path, path, None, MS_BIND | MS_REC, what=f"keep {path} writable (bind it onto itself)")
            bound = True
    if bound:
        table = mount_table()
    for point, opts in _topmost(table):
        if "ro" in opts or any(_below(point, k) for k in (*ALWAYS_WRITABLE, *keep)):
            continue
        try:
            _set_readonly(point, recursive=False)
        except OSError as e:
            # Gone, or no longer the root of a mount: covered by a later mount, which is
            # handled on its own; nothing reaches the covered one by path.
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL):
                continue
            raise
    return table


def _topmost(table: Sequence[tuple[str, frozenset[str]]]) -> Iterator[tuple[str, frozenset[str]]]:
    """One entry per mount point: the last mounted, which is the one a path reaches."""
    last: dict[str, frozenset[str]] = {}
    for point, opts in table:
        last.pop(point, None)
        last[point] = opts
    return iter(last.items())
