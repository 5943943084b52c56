"""The few libc entry points the kernel layer needs, through :mod:`sandbox.kernel._ffi` (the
part of ctypes we use; Python 3.11 has no ``os.unshare`` or ``os.mount``). Loaded on first use:
only a process that applies or probes the kernel layer pays for it."""

from __future__ import annotations

import errno
import os

from sandbox.kernel import _ffi

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Syscall numbers from the generic table: Landlock and mount_setattr were added after the
# architectures were unified, so x86_64 and aarch64 share them.
SYS_MOUNT_SETATTR = 442
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522

_lib: Any = None


def libc() -> Any:
    """The process's C library with ``errno`` captured after every call (``use_errno``)."""
    global _lib
    if _lib is None:
        lib = _ffi.libc()  # the libc Python itself is linked against
        lib.syscall.restype = _ffi.c_long
        lib.mount.argtypes = [
            _ffi.c_char_p,
            _ffi.c_char_p,
            _ffi.c_char_p,
            _ffi.c_ulong,
            _ffi.c_char_p,
        ]
        lib.mount.restype = _ffi.c_int
        lib.unshare.argtypes = [_ffi.c_int]
        lib.unshare.restype = _ffi.c_int
        lib.prctl.argtypes = [_ffi.c_int, _ffi.c_ulong, _ffi.c_ulong, _ffi.c_ulong, _ffi.c_ulong]
        lib.prctl.restype = _ffi.c_int
        lib.capset.argtypes = [_ffi.c_void_p, _ffi.c_void_p]
        lib.capset.restype = _ffi.c_int
        # loopback_up: looked up here, before any fork (the child must not dlsym)
        lib.socket.argtypes = [_ffi.c_int, _ffi.c_int, _ffi.c_int]
        lib.socket.restype = _ffi.c_int
        lib.ioctl.argtypes = [_ffi.c_int, _ffi.c_ulong, _ffi.c_char_p]
        lib.ioctl.restype = _ffi.c_int
        lib.close.argtypes = [_ffi.c_int]
        lib.close.restype = _ffi.c_int
        _lib = lib
    return _lib


def syscall(nr: int, *args: Any) -> int:
    """``syscall(nr, ...)`` with integer arguments widened to ``long``: the call is variadic, so
    ctypes would otherwise pass a Python int as a 32-bit ``int`` and leave the register's top half
    undefined."""
    conv = [_ffi.c_long(a) if isinstance(a, int) else a for a in args]
    return int(libc().syscall(_ffi.c_long(nr), *conv))


def set_parent_death_signal(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` to the calling process when the
    *thread* that forked it exits (the whole parent process dying included). Not inherited by
    children; kept across ``exec`` except of a set-user-ID/set-group-ID or file-capability binary
    (which no_new_privs neutralises), and cleared by a change of effective or filesystem ids.
    Safe in a forked child once :func:`libc` was loaded before the fork (no ``dlsym`` here)."""
    check(libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def drop_all_capabilities() -> None:
    """Leave the calling process, and everything it ``exec``s, without any capability.

    What bubblewrap's ``drop_all_caps`` + ``drop_cap_bounding_set`` do: every capability leaves
    the bounding set (so no ``exec``, of a set-user-ID-root or file-capability binary or of
    anything as uid 0, can regain it), the ambient set is cleared, then ``capset`` empties the
    effective, permitted and inheritable sets. ``no_new_privs`` is set too. Needs CAP_SETPCAP
    for the bounding set: call it while the process still holds it (root of its user
    namespace). Capabilities the kernel does not know (EINVAL) are skipped.

    Without CAP_SETPCAP (an unprivileged launcher where no user namespace can be made: Landlock
    alone) the bounding set cannot shrink -- and need not, when no user id of the process is 0:
    with ``no_new_privs`` an ``exec`` grants nothing through a set-user-ID or file-capability
    binary, and a non-root ``exec`` gains no capability but from the ambient and inheritable
    sets, both emptied here. A process with a user id 0 that cannot drop the bounding set is an
    error all the same -- ``no_new_privs`` already stops root's ``exec`` from gaining what it does
    not hold, but the bounding set is then the one thing of the kind left to trust, and a root
    launcher always can drop it (bubblewrap drops it whenever it can).
    """
    lib = libc()
    last = _last_cap()
    for cap in range(last + 1):
        if lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 and _ffi.get_errno() != errno.EINVAL:
            if _ffi.get_errno() == errno.EPERM and 0 not in os.getresuid():
                break  # no CAP_SETPCAP, nothing to regain it with: see above
            check(-1, f"drop capability {cap} from the bounding set")
    if (
        lib.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == -1
        and _ffi.get_errno() != errno.EINVAL
    ):
        check(-1, "clear the ambient capabilities")
    check(lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    header = (_ffi.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (_ffi.c_uint32 * 6)()  # two {effective, permitted, inheritable}: all zero
    check(lib.capset(header, data), "capset (clear every capability)")


# -- a seccomp filter refusing the terminal's input injection ---------------------------------------

_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
#: The terminal requests the filter refuses (see :func:`deny_terminal_injection`), the same number
#: on x86-64 and aarch64 (asm-generic/ioctls.h).
REFUSED_TERMINAL_IOCTLS = {
    "TIOCSTI": 0x5412,
    "TIOCLINUX": 0x541C,
    "TIOCSPGRP": 0x5410,
    "TCXONC": 0x540A,
    "TIOCSETD": 0x5423,
    "TIOCEXCL": 0x540C,
}
_NEVER = 0xFFFFFFFF  # no syscall number
#: machine -> (its audit arch, its ioctl, x32's two ioctls, the compat audit arch, compat's ioctl)
_IOCTL = {
    "x86_64": (0xC000003E, 16, 0x40000000 | 514, 0x40000000 | 16, 0x40000003, 54),
    "aarch64": (0xC00000B7, 29, _NEVER, _NEVER, 0x40000028, 54),
}


def terminal_filter_supported() -> bool:
    """Whether :func:`deny_terminal_injection` knows this machine's system calls."""
    return os.uname().machine in _IOCTL


def deny_terminal_injection() -> None:
    """Refuse, for this process and everything it will ``exec``, the ``ioctl`` requests that push
    input into a terminal, take it over or stall it for everyone (:data:`REFUSED_TERMINAL_IOCTLS`):
    ``TIOCSTI`` (a character into the input queue: commands typed into the user's shell once the
    step has ended, bubblewrap's CVE-2017-5226), ``TIOCLINUX`` (its console's selection pasted
    back) -- EPERM, as flatpak's seccomp filter answers -- ``TIOCSPGRP`` (``tcsetpgrp``: the step,
    never the terminal's foreground, would make itself so and read what is typed for the shell),
    ``TCXONC`` (``tcflow(TCOOFF)``: the terminal's output stopped, so the launcher's next write to
    it never returned -- no report, no export, deaf to SIGTERM -- and the user's shell hung),
    ``TIOCSETD`` (another line discipline: ``N_NULL`` fails every read and write of the terminal,
    the user's shell's included, after the run) and ``TIOCEXCL`` (every later open of the
    terminal, ``/dev/tty`` by ``ssh``, ``sudo`` or ``less``, refused with EBUSY). None is needed by
    a pipeline step (serial-line tools); a background process may make any of them with SIGTTOU
    ignored, the way the step reaches its settings (``tcsetattr``), which stay allowed.
    The step keeps its terminal's output.
    Needs ``no_new_privs`` (set by :func:`drop_all_capabilities`);
    raises ``OSError`` when the kernel refuses the filter; only for the machines of
    :func:`terminal_filter_supported` (``KeyError`` otherwise). The ioctl is caught under every
    system call ABI the kernel offers a process here (x86-64's x32 and i386, aarch64's arm32)."""
    native, ioctl, x32, x32_64, compat, compat_ioctl = _IOCTL[os.uname().machine]
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    requests = tuple(REFUSED_TERMINAL_IOCTLS.values())
    n = len(requests)
    request, allow = 9, 10 + n  # the instructions' indexes: the request's load, the two returns
    deny = allow + 1

    def to(target: int, at: int) -> int:  # a jump's offset from instruction ``at``
        return target - at - 1

    program = [  # (code, jump if true, jump if false, k); offsets of seccomp_data: nr 0, arch 4, args[1] 24
        (ld, 0, 0, 4),  # 0: the arch
        (jeq, 0, to(6, 1), native),  # 1: native: 2, else 6
        (ld, 0, 0, 0),  # 2: the system call
        (jeq, to(request, 3), 0, ioctl),  # 3
        (jeq, to(request, 4), 0, x32),  # 4
        (jeq, to(request, 5), to(allow, 5), x32_64),  # 5
        (jeq, 0, to(allow, 6), compat),  # 6: compat: 7
        (ld, 0, 0, 0),  # 7
        (jeq, 0, to(allow, 8), compat_ioctl),  # 8
        (ld, 0, 0, 24),  # 9: the request (the low word of args[1]: an unsigned int)
        *((jeq, to(deny, 10 + i), 0, r) for i, r in enumerate(requests)),
        (ret, 0, 0, _RET_ALLOW),
        (ret, 0, 0, _RET_EPERM),
    ]
    code = b"".join(
        op.to_bytes(2, "little") + bytes((jt, jf)) + (k & 0xFFFFFFFF).to_bytes(4, "little")
        for op, jt, jf, k in program
    )
    filters = _ffi.create_string_buffer(code, len(code))
    # struct sock_fprog: an unsigned short, padding, then the pointer (64-bit machines only here)
    fprog = _ffi.create_string_buffer(
        len(program).to_bytes(2, "little") + bytes(6) + _ffi.addressof(filters).to_bytes(8, "little"), 16
    )
    rc = libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _ffi.addressof(fprog), 0, 0)
    check(rc, "install a seccomp filter")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 63  # every bit a 64-bit set can hold; the kernel answers EINVAL past its last


def set_child_subreaper() -> None:
    """``prctl(PR_SET_CHILD_SUBREAPER)``: orphaned descendants are re-parented to this process
    (not to init), so it can find and end them."""
    check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def check(result: int, what: str, filename: str | None = None) -> int:
    """Raise ``OSError(errno, "<what>: <strerror>", filename)`` when a libc call returned -1."""
    if result == -1:
        err = _ffi.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", filename)
    return result


def close_fds_except(keep: list[int]) -> None:  # pragma: no cover - runs in a forked child
    """Close every descriptor from 3 up but those in ``keep`` (a forked child of the kernel
    layer, before it waits or execs: it holds nothing of the launcher's it was not handed).
    ``os.closerange`` is one close_range(2) call on Linux 5.9+, however high the limit."""
    lo = 3
    for fd in sorted(keep):
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 0x7FFFFFFF)
