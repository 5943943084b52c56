"""The step's standard streams and the user's terminal, made the step's own by its init (or by
a keeper that is its init) after the mounts and Landlock, just before the command starts: its
0, 1 and 2 as its own view opens them (:func:`own_stdio`), a terminal stdin replaced by
``/dev/null`` (:func:`no_terminal_stdin`), and the terminal out of its reach for input
injection (:func:`terminal_kept_safe`). Runs in a forked copy of the launcher, as
:mod:`sandbox.kernel._keeper` does: only code imported before the fork, failures as ``OSError``.
"""

from __future__ import annotations

import os

from sandbox.kernel import _libc


def own_stdio() -> None:  # pragma: no cover - in the init, after the mounts and Landlock
    """Hand the command its 0, 1 and 2 as its own view opens them, where the launcher's are a
    host inode it could otherwise change through the descriptor: ``fchmod``, ``futimens`` and
    ``fsetxattr`` need only ownership, which a root step has of root's files, and the descriptor
    carries the launcher's writable mount (``< lakehouse.csv`` made the lakehouse file 0777).

    - a device other than a terminal (``< /dev/null``): the step's own node of that device,
      same access mode (read-only bind: the host's node cannot be changed);
    - a file, folder or named FIFO open read-only (``< data/x.csv``): the same path in the
      step's view, read-only (a file at the same offset) -- what the step itself would open.
    Kept: pipes and sockets (no inode of the host's), the user's terminal, and a file open for
    writing -- the target the user redirected the output to (reopened in the step's view, its
    writes would land in the run folder's copy, or be refused; docs/security.md says what a step
    can do to it). Anything else -- a device the step's ``/dev`` lacks, a block device, a path the
    view does not have as such (deleted, hidden, or made something else by an earlier step of
    the run), a path that leads back to the launcher's own descriptor (a link to
    ``/proc/self/fd/0``: its mount is the launcher's) -- is an ``OSError``: the command is not
    started, rather than handed the launcher's descriptor."""
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # not open: nothing to hand over
        try:
            kind = st.st_mode & 0o170000
            path = os.readlink(f"/proc/self/fd/{fd}")
            if kind in (0o140000,) or path.startswith(("pipe:", "socket:", "anon_inode:")):
                continue  # a pipe or a socket: no inode of the host's
            if kind == 0o020000 and os.isatty(fd):
                continue  # the user's terminal (see terminal_kept_safe)
            with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
                info = dict(line.split(b":", 1) for line in fh.read().splitlines() if b":" in line)
            mode = int(info[b"flags"].strip(), 8) & 0o3  # O_ACCMODE
            if kind == 0o020000:  # a device: the step's own node of it, or none
                try:
                    ours = path.startswith("/dev/") and os.stat(path).st_rdev == st.st_rdev
                except OSError:
                    ours = False
                if not ours:
                    raise _stdio_error(fd, path, "device", "not in the step's /dev")
                _replace(fd, os.open(path, mode | os.O_NOCTTY | os.O_CLOEXEC))
                continue
            if kind == 0o100000 and mode != os.O_RDONLY:
                continue  # the user's output file
            what = {0o100000: "file", 0o040000: "folder", 0o010000: "FIFO"}.get(kind)
            if what is None or mode != os.O_RDONLY:
                raise _stdio_error(fd, path, what or "device", "only a file, folder or FIFO is reopened")
            try:
                # O_NONBLOCK: never wait on a FIFO (one an earlier step left at the path, too)
                new = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as e:
                raise _stdio_error(fd, path, what, e.strerror) from None
            with open(f"/proc/self/fdinfo/{new}", "rb") as fh:
                mnt = [line for line in fh.read().splitlines() if line.startswith(b"mnt_id:")]
            if os.fstat(new).st_mode & 0o170000 != kind or mnt == [b"mnt_id:" + info[b"mnt_id"]]:
                os.close(new)
                raise _stdio_error(fd, path, what, f"not its own {what} there")
            os.set_blocking(new, True)  # as the launcher's was
            if kind == 0o100000:
                os.lseek(new, int(info[b"pos"]), os.SEEK_SET)
            _replace(fd, new)
        except _StdioUnavailable:
            raise
        except (OSError, KeyError, ValueError) as e:  # an unreadable fdinfo, a vanished path
            raise _stdio_error(fd, "?", "descriptor", str(e)) from None


class _StdioUnavailable(OSError):
    pass


def _stdio_error(fd: int, path: str, what: str, why: str | None) -> OSError:  # pragma: no cover
    name = ("stdin", "stdout", "stderr")[fd]
    return _StdioUnavailable(
        9,  # EBADF: the command cannot run as asked (126), not "not found"
        f"cannot give the command its {name}: the {what} {path} is not readable in the step's view "
        f"({why}) -- pipe it in instead (cat FILE | tv-sandbox run ...)",
    )


def _replace(fd: int, new: int) -> None:  # pragma: no cover - in the init
    os.dup2(new, fd)  # inheritable, as the one it replaces
    os.close(new)


def no_terminal_stdin() -> None:  # pragma: no cover - in the init, or a keeper that is the init
    """A terminal as stdin becomes ``/dev/null`` (``docker run`` without ``-i``): the command is
    not in the terminal's foreground group (see :func:`sandbox.kernel._keeper._command`), where
    a read would stop it (SIGTTIN) until Ctrl-C. Its output still goes to the terminal."""
    try:
        if not os.isatty(0):
            return
        null = os.open("/dev/null", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    _replace(0, null)


def terminal_kept_safe() -> bool:  # pragma: no cover - in the init, or a keeper that is the init
    """Keep the step from pushing input into the launcher's terminal (``TIOCSTI``: commands typed
    into the user's shell once the run ends, bubblewrap's CVE-2017-5226); after :func:`seal`
    (``no_new_privs``). Where the machine's system calls are known, a seccomp filter refuses the
    ioctl (flatpak's way) and the command stays in the launcher's session and process group: job
    control and the terminal's signals reach it as they would without the sandbox. Elsewhere it
    gets a session of its own (bubblewrap's ``--new-session``: no controlling terminal, at the
    price of job control) -- returns True then.

    Without a terminal in reach -- no controlling terminal (CI, a scheduler, a Ray worker) and no
    terminal among the command's stdio -- nothing is done: ``TIOCSTI`` needs the caller's
    controlling terminal (or CAP_SYS_ADMIN), which a step without one can take only from a
    terminal it can open, and its view holds none but its own pseudo-terminals. The filter costs
    each of the step's interpreters ~0.4 ms (every system call through it)."""
    if not _libc.terminal_filter_supported():
        return True  # (whatever the terminal: the keeper knows the command's group by the machine)
    if _terminal_in_reach():
        _libc.deny_terminal_injection()
    return False


def _terminal_in_reach() -> bool:  # pragma: no cover - in the init, or a keeper that is the init
    if any(os.isatty(fd) for fd in (0, 1, 2)):
        return True
    try:  # the session's controlling terminal (read-only: Landlock is in force already)
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC))
    except OSError:  # ENXIO: there is none
        return False
    return True
