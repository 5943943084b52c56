"""The processes a sandboxed Ray run leaves, told by the namespaces they are in: a worker has no
PID namespace (the raylet needs its pid), so a daemon of its in a session of its own -- or in a
nested user namespace -- is in none of the process groups the close ends. :func:`_end_namespace`
SIGKILLs every process still in the run's mount or user namespace (nested ones included), each
through a pidfd and checked again once held; :func:`_hold_namespaces` keeps the namespaces open
until then, so that their numbers name no other namespace meanwhile (the kernel reuses a freed
one's number). Used by :mod:`sandbox.orchestrator.workers`' close."""

from __future__ import annotations

import os
import signal
import time

_NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2), linux/nsfs.h


def _ns_id(pid: int, kind: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{kind}")
    return st.st_dev, st.st_ino


def _hold_namespaces(
    pid: int, user: bool
) -> tuple[tuple[tuple[int, int], tuple[int, int] | None], list[int]]:
    """The ids of ``pid``'s mount namespace and (with ``user``) user namespace, and descriptors
    that keep them -- and so their numbers -- alive until closed."""
    fds: list[int] = []
    try:
        ids: list[tuple[int, int]] = []
        for kind in ("mnt", "user") if user else ("mnt",):
            fds.append(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC))
            st = os.fstat(fds[-1])
            ids.append((st.st_dev, st.st_ino))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return (ids[0], ids[1] if user else None), fds


def _in_user_ns(pid: int, userns: tuple[int, int]) -> bool:
    """Is ``pid``'s user namespace ``userns`` or one made inside it (``unshare -U``)?"""
    import fcntl

    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for _ in range(64):  # the kernel nests at most 32 deep
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == userns:
                return True
            try:
                parent = fcntl.ioctl(fd, _NS_GET_PARENT)
            except OSError:  # the initial namespace (EPERM): not ours
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def _of_run(pid: int, mntns: tuple[int, int], userns: tuple[int, int] | None) -> bool:
    """Is ``pid`` in the run's mount namespace, or in its user namespace (nested ones included)?"""
    try:
        if _ns_id(pid, "mnt") == mntns:
            return True
    except OSError:  # gone, or a kernel thread
        return False
    return userns is not None and _in_user_ns(pid, userns)


def _namespace_pids(mntns: tuple[int, int], userns: tuple[int, int] | None) -> list[int]:
    me = os.getpid()
    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and int(name) != me and _of_run(int(name), mntns, userns)
    ]


def _kill_if_of_run(pid: int, mntns: tuple[int, int], userns: tuple[int, int] | None) -> None:
    """SIGKILL ``pid`` through a pidfd, once it is checked again to be the run's: a pid that ended
    since it was listed and was reused by a process of the machine is never signalled (the
    pidfd names the process that held the pid when it was opened, the one checked)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone
        return
    try:
        if _of_run(pid, mntns, userns):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:  # ended meanwhile
        pass
    finally:
        os.close(fd)


def _end_namespace(
    mntns: tuple[int, int], userns: tuple[int, int] | None, timeout_s: float = 10.0
) -> None:
    """SIGKILL every process in the run's mount namespace or in its user namespace (nested ones
    included), until none is left; a process forking meanwhile is caught by the next round."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = _namespace_pids(mntns, userns)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of the run did not end within {timeout_s:.0f} s")
        for pid in pids:
            _kill_if_of_run(pid, mntns, userns)
        time.sleep(0.01)
