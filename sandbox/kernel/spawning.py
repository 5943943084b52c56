"""Start a command with the kernel layer applied between ``fork`` and ``exec``.

The child of :func:`spawn` is a copy of the caller until ``exec``; it applies the
:class:`~sandbox.kernel.plan.KernelPlan` (which only a single-threaded process may do: Landlock
restricts the calling thread, ``unshare(CLONE_NEWUSER)`` refuses threaded callers -- the forked
child has one thread whatever the parent has), changes directory, and replaces itself with the
command. Until then it runs only code imported before the fork and touches no lock another thread
of the parent could hold (no logging, no ``sys.stderr``, no imports).

A failure before ``exec`` travels back over a close-on-exec pipe as one line; end of file on it
means ``exec`` succeeded.

The command dies with its launcher: the child asks for SIGKILL on parent death
(``PR_SET_PDEATHSIG``) just before ``exec``, so a SIGKILLed ``tv-sandbox run`` leaves no step
writing into its run folder. That covers the direct child only: processes the command starts
itself outlive it (no PID namespace is unshared; the next run's sweep removes the workspace).
"""

from __future__ import annotations

import os
import time

from sandbox._record import record
from sandbox.errors import KernelUnavailable, UsageError
from sandbox.kernel import _libc, landlock, mounts  # noqa: F401  # loaded before fork: see _child
from sandbox.kernel.plan import AppliedLayers, KernelPlan, apply

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Mapping, Sequence
else:
    # ``_signal``, not ``signal``: the wrapper builds enums (importing ``enum``, ``functools``...),
    # milliseconds of every launch; these are the same functions and numbers.
    import _signal as signal

# Python ignores SIGPIPE (and SIGXFSZ); an ignored signal stays ignored across exec, so a shell
# pipeline like `yes | head` would see EPIPE errors instead of dying quietly. Restore them.
_RESTORE_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n))


@record(frozen=True)
class ChildResult:
    """How a child ended. ``exit_code`` follows the shell: 128 + N when killed by signal N.

    ``peak_rss_bytes`` (``ru_maxrss`` of ``wait4``) is an upper bound: the kernel carries the
    high-water mark of the pre-``exec`` image -- a fork of the launcher, ``launcher_rss_bytes``
    -- into the command's (``subprocess``'s vfork has the same artifact). When the peak exceeds
    the launcher's, it is the command's own; :attr:`command_peak_rss_bytes` says so.
    """

    exit_code: int
    signal: int | None
    duration_s: float
    peak_rss_bytes: int
    launcher_rss_bytes: int = 0
    cpu_s: float = 0.0  # user + system time of the command and every descendant it waited for

    @property
    def command_peak_rss_bytes(self) -> int | None:
        """The command's own peak, or None when it stayed below the launcher's (then unknown)."""
        return self.peak_rss_bytes if self.peak_rss_bytes > self.launcher_rss_bytes else None


class Child:
    """A started command. ``applied`` says which kernel layers it runs under (None: no plan)."""

    def __init__(
        self, pid: int, applied: AppliedLayers | None, started: float, launcher_rss: int = 0
    ) -> None:
        self.pid = pid
        self.applied = applied
        self._started = started
        self._launcher_rss = launcher_rss
        self._result: ChildResult | None = None

    def _reaped(self, status: int, rusage: object) -> ChildResult:
        code = os.waitstatus_to_exitcode(status)
        sig = -code if code < 0 else None
        self._result = ChildResult(
            exit_code=128 + sig if sig is not None else code,
            signal=sig,
            duration_s=time.monotonic() - self._started,
            peak_rss_bytes=int(rusage.ru_maxrss) * 1024,  # type: ignore[attr-defined]  # KiB on Linux
            launcher_rss_bytes=self._launcher_rss,
            cpu_s=float(rusage.ru_utime + rusage.ru_stime),  # type: ignore[attr-defined]
        )
        return self._result

    def wait(self) -> ChildResult:
        """Wait for the command to end (once; later calls return the same result)."""
        if self._result is None:
            _, status, rusage = os.wait4(self.pid, 0)
            self._reaped(status, rusage)
        assert self._result is not None
        return self._result

    def poll(self) -> ChildResult | None:
        """The result if the command has ended, else None, without blocking."""
        if self._result is None:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self._reaped(status, rusage)
        return self._result

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the command; nothing once it has been reaped (its pid may be reused)."""
        if self._result is None:
            os.kill(self.pid, sig)

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, applied={self.applied!r}, result={self._result!r})"


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    plan: KernelPlan | None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    pass_fds: Sequence[int] = (),
) -> Child:
    """Run ``argv`` (looked up on ``env["PATH"]``) in ``cwd`` with ``plan`` applied first.

    ``stdin``/``stdout``/``stderr`` are descriptors duplicated onto 0/1/2 (None: inherit ours).
    Every other descriptor is closed in the child except ``pass_fds``: an inherited descriptor
    open for writing on a host file would bypass both Landlock and the read-only mounts.
    ``cwd`` is entered after the mounts, so it may be an overlay's target.

    Raises :class:`~sandbox.errors.KernelUnavailable` when the plan could not be applied, and
    :class:`~sandbox.errors.UsageError` when the command cannot be executed (not found, not
    executable) or ``cwd`` cannot be entered -- both after the child has been reaped, both one
    line; the original ``OSError`` is the ``__cause__``.

    The command is SIGKILLed when the *thread* calling ``spawn`` exits (Linux ties the
    parent-death signal to the forking thread, not the process): call it from the main thread
    (``tv-sandbox run`` and the demo do), or from a thread that outlives the command -- one
    that goes on to :meth:`Child.wait`, as :func:`sandbox.runner.execute` does.
    """
    if not argv:
        raise ValueError("spawn needs a command")
    args = [os.fsdecode(a) for a in argv]
    env = dict(env)
    _libc.libc()  # load libc now (prctl, the plan): the child must not dlopen (or import) anything
    parent = os.getpid()  # the child compares getppid() to it: did we die before its prctl?
    keep = sorted({int(fd) for fd in pass_fds if int(fd) > 2})
    rfd, wfd = os.pipe()  # both close-on-exec
    started = time.monotonic()
    try:
        pid = os.fork()
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        _child(args, env, cwd, plan, (stdin, stdout, stderr), keep, wfd, parent)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        report = fh.read().decode("utf-8", "replace").splitlines()
    applied: AppliedLayers | None = None
    launcher_rss = 0
    for line in report:
        stage, _, rest = line.partition(" ")
        if stage == "applied":
            applied = AppliedLayers.decode(rest)
        elif stage == "rss":
            launcher_rss = int(rest)
        elif stage in ("setup", "kernel", "exec"):
            os.waitpid(pid, 0)
            errno_text, _, message = rest.partition(" ")
            cause = OSError(int(errno_text), message)
            if stage == "kernel":
                raise KernelUnavailable(f"kernel layer could not be applied: {message}") from cause
            if stage == "exec":
                raise UsageError(message) from cause
            raise cause  # a bad descriptor: the caller's bug, as the OSError it is
    return Child(pid, applied, started, launcher_rss)


def _child(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    plan: KernelPlan | None,
    stdio: tuple[int | None, int | None, int | None],
    keep: list[int],
    wfd: int,
    parent: int,
) -> None:  # pragma: no cover - runs in the child
    stage = "setup"
    try:
        for target, fd in enumerate(stdio):
            if fd is not None and fd != target:
                os.dup2(fd, target)  # dup2 makes the copy inheritable
        for fd in keep:
            os.set_inheritable(fd, True)
        for sig in _RESTORE_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a mask survives exec: start clean
        if plan is not None:
            stage = "kernel"
            applied = apply(plan)
            os.write(wfd, f"applied {applied.encode()}\n".encode())
        stage = "setup"
        _die_with(parent)
        stage = "exec"
        try:
            os.chdir(cwd)
        except OSError as e:
            raise OSError(e.errno, f"cannot enter the working folder {cwd}: {e.strerror}") from None
        os.write(wfd, f"rss {_peak_rss()}\n".encode())
        _close_fds_except([*keep, wfd])
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            raise OSError(e.errno, f"cannot execute {argv[0]!r}: {e.strerror}") from None
    except BaseException as e:
        err = getattr(e, "errno", None) or 0
        text = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
        msg = " ".join(text.split())  # one line, whatever the message held
        try:
            os.write(wfd, f"{stage} {err} {msg}\n".encode())
        finally:
            os._exit(127)


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child
    """Have the kernel SIGKILL this process when ``parent`` (the launcher's forking thread) exits.

    After the plan: a change of credentials clears the setting, and whatever a plan does to ours
    (a user namespace) is then behind us. If the launcher died before the prctl -- between the
    fork and here, the plan included -- no signal will come, but we were re-parented (to init or
    a subreaper), so ``getppid()`` no longer names it: end now, as the signal would have.
    """
    _libc.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)


def _peak_rss() -> int:  # pragma: no cover - runs in the child
    """VmHWM of this (forked) image, in bytes: what ``ru_maxrss`` will report at least."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _close_fds_except(keep: list[int]) -> None:  # pragma: no cover - runs in the child
    # os.closerange is one close_range(2) call on Linux 5.9+, however high the limit.
    lo = 3
    for fd in sorted(keep):
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 0x7FFFFFFF)
