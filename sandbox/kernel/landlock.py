"""Landlock: deny filesystem writes outside a set of writable roots, for a process and all its children.

What a ruleset from :func:`restrict_writes` covers, once the process is restricted: opening a file
for writing, truncating it (ABI >= 3), creating, removing and renaming entries (files, folders,
symlinks, fifos, sockets, device nodes), and linking or moving entries between folders (ABI >= 2)
-- anywhere outside the writable roots, whatever the program (a shell, a native library, ``python
-I``). Reads, execution and device ioctls are *not* handled, so they stay unrestricted.

What it does not cover, by the kernel's design: ``chmod``, ``chown``, ``utime`` and extended
attributes (the read-only mounts of :mod:`sandbox.kernel.mounts` give EROFS for those); files that
were already open before the restriction; and other threads of the process (see
:func:`restrict_writes`). A restriction can never be lifted, only narrowed further.

With ABI 1 (Linux 5.13-5.18) REFER cannot be handled, so the kernel refuses *every* link or
rename into another folder, even inside the writable roots; with ABI < 3 ``truncate(2)`` on an
existing file outside the roots is not checked.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbox.kernel import _ffi, _libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1

ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
#: ABI 6 (Linux 6.12): the restricted process may not signal a process outside its Landlock
#: domain -- kill(2), tgkill, sigqueue, and a SIGIO/SIGURG owner set with fcntl(F_SETOWN)
SCOPE_SIGNAL = 1 << 1

_WRITE_ABI1 = (
    ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_CHAR
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_BLOCK
    | ACCESS_FS_MAKE_SYM
)
#: The rights a rule on a non-directory may carry; the others only make sense on a folder.
_FILE_RIGHTS = ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE
#: Handled but granted nowhere: no writable root lets the step make a device node (the
#: overlay's whiteouts are made by overlayfs with the mounter's credentials, not the step's).
NEVER_GRANTED = ACCESS_FS_MAKE_CHAR | ACCESS_FS_MAKE_BLOCK


class _RulesetAttr(_ffi.Structure):
    # Only the first field of struct landlock_ruleset_attr: the kernel takes a shorter struct and
    # treats the later fields (handled_access_net, ABI 4; scoped, ABI 6) as 0 -- not handled.
    _fields_ = [("handled_access_fs", _ffi.c_uint64)]


class _ScopedRulesetAttr(_ffi.Structure):
    # The whole struct (ABI >= 6): networking stays unrestricted (handled_access_net 0 -- the
    # network namespace is the step's limit there), signals are scoped (SCOPE_SIGNAL), abstract
    # unix sockets are not (a step's own servers use them; the network namespace cuts the host's).
    _fields_ = [
        ("handled_access_fs", _ffi.c_uint64),
        ("handled_access_net", _ffi.c_uint64),
        ("scoped", _ffi.c_uint64),
    ]


class _PathBeneathAttr(_ffi.Structure):
    _pack_ = 1  # __attribute__((packed)) in the uapi header: 12 bytes
    _fields_ = [("allowed_access", _ffi.c_uint64), ("parent_fd", _ffi.c_int32)]


def abi_version() -> int:
    """The Landlock ABI the running kernel offers: 0 when it has none or Landlock is disabled.

    Never raises: ENOSYS (old kernel, or a seccomp filter), EOPNOTSUPP (built but not enabled
    with ``lsm=``) and anything else mean "unavailable".
    """
    return query_abi()[0]


def query_abi() -> tuple[int, int]:
    """``(abi, errno)``: the ABI, or 0 and why not (0 when the reason is unknown). Never raises."""
    try:
        v = _libc.syscall(_libc.SYS_LANDLOCK_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
        return (v, 0) if v > 0 else (0, _ffi.get_errno())
    except Exception:
        return 0, 0


def unavailable_reason(err: int) -> str:
    """Why Landlock is unavailable, from the errno :func:`query_abi` gave, for people."""
    if err == errno.EOPNOTSUPP:
        return "Landlock is built into the kernel but disabled: add 'landlock' to the lsm= boot parameter"
    if err == errno.ENOSYS:
        return "the kernel has no Landlock system calls (needs Linux 5.13+, or a seccomp filter blocks them)"
    return f"Landlock is unavailable ({os.strerror(err) if err else 'unknown reason'})"


def handled_rights(abi: int) -> int:
    """The write-class rights a ruleset handles under ``abi`` (0 when ``abi`` < 1)."""
    if abi < 1:
        return 0
    rights = _WRITE_ABI1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    return rights


def restrict_writes(writable: Sequence[str], *, abi: int | None = None) -> None:
    """Restrict the calling thread, and every process it starts later, to writing below ``writable``
    and, where the kernel can (ABI >= 6), to signalling only processes of its own Landlock domain
    (:data:`SCOPE_SIGNAL`: not the launcher, a Ray raylet or driver, another run -- which a
    process without a PID namespace of its own could otherwise signal as their user).

    Each path gets a rule granting every handled right beneath it but MAKE_CHAR and MAKE_BLOCK
    (device nodes are refused everywhere) (a folder), or only
    WRITE_FILE|TRUNCATE (a file or device such as ``/dev/null``). Paths are resolved now: a rule
    binds to the inode found, so mounts made later at those paths are not covered -- call this
    after the mount namespace is set up. Sets ``PR_SET_NO_NEW_PRIVS`` (required, and it keeps a
    setuid program from shedding the restriction).

    Call it in a single-threaded process, in practice a forked child before ``exec``: Landlock
    restricts only the calling thread and its future children; threads that already exist keep
    writing freely. A running Ray worker therefore never restricts itself; its step processes do.

    ``abi`` defaults to :func:`abi_version`. Raises ``OSError`` naming the step that failed;
    when Landlock is unavailable, ``OSError(ENOSYS)``.
    """
    if abi is None:
        abi = abi_version()
    if abi < 1:
        raise OSError(errno.ENOSYS, "landlock: not supported by this kernel (ABI 0)")
    handled = handled_rights(abi)
    lib = _libc.libc()
    attr: _ffi.Structure = (
        _ScopedRulesetAttr(handled_access_fs=handled, handled_access_net=0, scoped=SCOPE_SIGNAL)
        if abi >= 6
        else _RulesetAttr(handled_access_fs=handled)
    )
    ruleset = _libc.check(
        _libc.syscall(_libc.SYS_LANDLOCK_CREATE_RULESET, _ffi.byref(attr), _ffi.sizeof(attr), 0),
        "landlock_create_ruleset",
    )
    try:
        for path in dict.fromkeys(writable):  # keep order, drop repeats
            _add_rule(ruleset, path, handled)
        _libc.check(lib.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _libc.check(_libc.syscall(_libc.SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _add_rule(ruleset: int, path: str, handled: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(
            e.errno, f"landlock: writable root {path} cannot be opened: {e.strerror}", path
        ) from None
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        granted = handled & ~NEVER_GRANTED
        rule = _PathBeneathAttr(allowed_access=granted if is_dir else granted & _FILE_RIGHTS, parent_fd=fd)
        _libc.check(
            _libc.syscall(_libc.SYS_LANDLOCK_ADD_RULE, ruleset, RULE_PATH_BENEATH, _ffi.byref(rule), 0),
            f"landlock_add_rule({path})",
            path,
        )
    finally:
        os.close(fd)
