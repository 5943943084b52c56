"""Start a command with the kernel layer applied between ``fork`` and ``exec``.

The child of :func:`spawn` is a copy of the caller until ``exec``; it applies the
:class:`~sandbox.kernel.plan.KernelPlan` (which only a single-threaded process may do: Landlock
restricts the calling thread, ``unshare(CLONE_NEWUSER)`` refuses threaded callers -- the forked
child has one thread whatever the parent has), changes directory, and replaces itself with the
command. Until then it runs only code imported before the fork and touches no lock another thread
of the parent could hold (no logging, no ``sys.stderr``, no imports).

A failure before ``exec`` travels back over a close-on-exec pipe as one line; end of file on it
means ``exec`` succeeded.

The processes of a step (the design of bubblewrap's ``do_init`` and of tini)::

    launcher
      `- keeper            the forked child: applies the plan's namespaces and mounts, then waits
           `- init         PID 1 of the step's PID namespace: a fresh /proc, Landlock, no
                `- command  capability left; forks the command, reaps orphans, forwards
                             SIGTERM/SIGINT/... to it, and exits when it ends -- the kernel then
                             kills every other process of the namespace.

The init leaves the launcher's process group, the command stays in it: what is sent to the group
(a terminal's Ctrl-C) reaches the command directly, once; the keeper forwards only what the
launcher sends (see ``_keeper._reap``).

The keeper exits with the command's status (or dies of its signal) once the init is gone, i.e.
once *every* process of the step is gone: waiting for the keeper is waiting for the whole step,
and the step's stderr pipe is at end of file then. Without a PID namespace (a plan without one,
Landlock alone, or no plan) the keeper is itself the init: a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so orphans of the command -- double-forked daemons included --
are re-parented to it, and when the command ends it SIGKILLs its children until none is left.

The children's side -- keeper, init, command until ``exec`` -- is :mod:`sandbox.kernel._keeper`;
this module is the launcher's: :func:`spawn`, the report pipe, :class:`Child`.

The step dies with its launcher: the keeper asks for SIGKILL on its parent's death
(``PR_SET_PDEATHSIG``), the init on the keeper's, the command on the init's. With a PID
namespace, the init's death ends every process of the step; without one, the command's
descendants outlive a SIGKILLed launcher (the next run's sweep removes the workspace).
"""

from __future__ import annotations

import os
import time

from sandbox._record import record
from sandbox.errors import KernelUnavailable, UsageError
from sandbox.kernel.plan import AppliedLayers, KernelPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping, Sequence

    from sandbox.kernel._early import Early
else:
    import _signal as signal  # see _keeper

#: Sent to the keeper by :meth:`Child.kill`: SIGKILL the whole step (SIGKILL itself cannot be
#: caught, and killing the keeper would let the launcher's wait return before the step is gone).
#: The launcher's signals to the keeper are realtime signals: each is queued and delivered, never
#: merged with the same signal sent meanwhile to the launcher's process group -- a terminal's
#: Ctrl-C reaches the keeper too, which leaves it to the launcher (a plain SIGINT pending from
#: the group would swallow the launcher's SIGINT: one siginfo, the group's sender).
KILL_ALL = signal.SIGRTMIN + 1
#: The signals the keeper passes on to the command, each sent to it as ``SIGRTMIN + 2 + i``.
RELAYED = tuple(
    getattr(signal, n)
    for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, n)
)


def relay_signal(sig: int) -> int:
    """The realtime signal that carries ``sig`` (one of :data:`RELAYED`) to the keeper."""
    return signal.SIGRTMIN + 2 + RELAYED.index(sig) if sig in RELAYED else sig


def needs_relay(fd: int) -> bool:
    """Whether the output descriptor ``fd`` (the launcher's stdout) must not be handed to a step:
    a file or a named FIFO is a host inode the step could change through it -- ``fchmod``,
    ``futimens`` and ``fsetxattr`` need only ownership, which a root step has of root's files
    (``> out.log`` made setuid root) -- and neither can be reopened in the step's view for
    writing. The launcher gives the step a pipe instead and copies it
    (:func:`sandbox._output.pump`). A pipe, a socket, a terminal or another device is handed
    over as it is (or reopened in the step's own ``/dev``: ``_stdio.own_stdio``)."""
    try:
        kind = os.fstat(fd).st_mode & 0o170000
        if kind == 0o010000:  # a FIFO: named, or a pipe (no inode of the host's)
            return not os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        return kind == 0o100000
    except OSError:
        return False


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


@record(frozen=True)
class _Usage:
    """The part of ``struct rusage`` a :class:`ChildResult` reads, as the keeper reports it."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int


class Child:
    """A started step. ``applied`` says which kernel layers it runs under (None: no plan).

    ``pid`` is the launcher's child, the *keeper*: it lives until every process of the step is
    gone, so :meth:`wait` returns only then (and a descriptor the step held, such as its stderr,
    is closed by then). Signals go to the keeper only -- our own child, whose pid cannot be
    reused before we reap it -- which passes them on: a forwarded one to the command (through
    the init of its PID namespace), :data:`KILL_ALL` as a SIGKILL of the whole step.
    ``init_pid`` is, for information, the keeper's child: the init of the PID namespace, or the
    command itself when there is none.
    """

    def __init__(
        self,
        pid: int,
        applied: AppliedLayers | None,
        started: float,
        launcher_rss: int = 0,
        init_pid: int | None = None,
        *,
        pidfd: int = -1,
        contained: bool = False,
        endfd: int = -1,
    ) -> None:
        self.pid = pid
        self.applied = applied
        self.init_pid = init_pid
        #: True when :meth:`wait` returns only once no process of the step is left, whatever
        #: killed the keeper: a PID namespace whose init we hold a pidfd of (or know gone, or
        #: never started). False without one: a process the step detached may outlive it.
        self.contained = contained
        self._started = started
        self._launcher_rss = launcher_rss
        self._result: ChildResult | None = None
        self._pidfd = pidfd
        self._endfd = endfd  # the keeper's "end" line: see wait()
        self._keeper_waited = False

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
        """Wait until the command has ended and every process it started is gone (once; later
        calls return the same result).

        With a PID namespace the keeper says so itself, once it has reaped the namespace's init
        (the kernel ends every other process of the namespace before its init): a line on the
        end pipe with the status and the init's resource usage. The keeper's own exit -- the
        teardown of the step's namespaces -- then goes on beside the launcher's report and
        export; :meth:`release` reaps it. Without that line (no PID namespace, or a keeper
        killed from outside) the keeper's exit is waited for, as its status says the same."""
        if self._result is None:
            end = self._read_end()
            if end is not None:
                status, utime, stime, maxrss = end
                self._reaped(status, _Usage(utime, stime, maxrss))
                self._close_pidfd()  # its init was reaped: the namespace is empty
                return self._wait_result()
            _, status, rusage = os.wait4(self.pid, 0)
            self._keeper_waited = True
            self._reaped(status, rusage)
            self._init_gone()
        return self._wait_result()

    def _wait_result(self) -> ChildResult:
        assert self._result is not None
        return self._result

    def _read_end(self) -> tuple[int, float, float, int] | None:
        """The keeper's ``end STATUS UTIME STIME MAXRSS`` line, or None at the pipe's end
        without one."""
        if self._endfd < 0:
            return None
        data = b""
        # Closed only once read: a wait cut by an interrupt (Ctrl-C) is resumed, and the keeper,
        # writing its line into a closed pipe, would die of SIGPIPE -- its status taken for the step's.
        while not data.endswith(b"\n") and (chunk := os.read(self._endfd, 256)):
            data += chunk
        os.close(self._endfd)
        self._endfd = -1
        parts = data.split()
        if len(parts) != 5 or parts[0] != b"end":
            return None
        return int(parts[1]), float(parts[2]), float(parts[3]), int(parts[4])

    def release(self) -> None:
        """Reap the keeper once it has exited after its "end" line (it exits right after; the
        step's result is known already). Nothing when :meth:`wait` reaped it."""
        if self._result is not None and not self._keeper_waited:
            self._keeper_waited = True
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass

    def poll(self) -> ChildResult | None:
        """The result if the step has ended, else None, without blocking (long: a keeper killed
        from outside leaves its init a moment to end)."""
        if self._result is None:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self._keeper_waited = True
            self._reaped(status, rusage)
            self._init_gone()
            if self._endfd >= 0:
                os.close(self._endfd)
                self._endfd = -1
        return self._result

    def _init_gone(self) -> None:
        """Block until the keeper's child has ended too. The keeper reaps it before it exits, so
        this returns at once -- unless the keeper was killed from outside (the OOM killer, a
        stray SIGKILL): its init then dies of its parent-death signal, and the kernel ends the
        PID namespace with it; a pidfd of a namespace's init polls readable only once every
        process of the namespace is gone. Without a PID namespace, the command (also killed by
        its parent-death signal) is waited for; what it started may outlive it."""
        if self._pidfd < 0:
            return
        import select  # after the step: off the start-up path

        try:
            select.select([self._pidfd], [], [])
        finally:
            self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __del__(self) -> None:
        for name in ("_pidfd", "_endfd"):
            if getattr(self, name, -1) >= 0:
                os.close(getattr(self, name))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL (the default) ends the whole step now: the keeper SIGKILLs the init (the kernel
        then kills every process of the namespace), or without a PID namespace the command and
        then the rest. Another signal is forwarded to the command. Nothing once the step has
        been reaped; :meth:`wait` as usual after it."""
        if self._result is None:
            os.kill(self.pid, KILL_ALL if sig == signal.SIGKILL else relay_signal(sig))

    def terminate(self) -> None:
        """SIGTERM to the command (forwarded by the keeper and the init)."""
        self.kill(signal.SIGTERM)

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
    meanwhile: Callable[[], None] | None = None,
    early: Early | None = None,
) -> Child:
    """Run ``argv`` (looked up on ``env["PATH"]``) in ``cwd`` with ``plan`` applied first.

    ``stdin``/``stdout``/``stderr`` are descriptors duplicated onto 0/1/2 (None: inherit ours).
    Every other descriptor is closed in the command except ``pass_fds``: an inherited descriptor
    open for writing on a host file would bypass both Landlock and the read-only mounts.
    ``cwd`` is entered after the mounts, so it may be an overlay's target.

    Raises :class:`~sandbox.errors.KernelUnavailable` when the plan could not be applied, and
    :class:`~sandbox.errors.UsageError` when the command cannot be executed (not found, not
    executable) or ``cwd`` cannot be entered -- both after the step's processes have been
    reaped, both one line; the original ``OSError`` is the ``__cause__``.

    A root launcher's step gets the identity uid/gid map in its user namespace, so files keep
    their owners inside: the keeper has a helper of its own write it (see ``_keeper``).

    ``meanwhile`` runs here once the keeper is forked, while it sets the step up: the launcher's
    own work that needs no answer from it (errors in it are ignored: it may only prepare).

    ``early``: the keeper :func:`~sandbox.kernel._early.prefork` made, which takes this step if it
    :meth:`~sandbox.kernel._early.Early.fits`
    it; it is used up either way.

    The step is SIGKILLed when the *thread* calling ``spawn`` exits (Linux ties the
    parent-death signal to the forking thread, not the process): call it from the main thread
    (``tv-sandbox run`` and the demo do), or from a thread that outlives the command -- one
    that goes on to :meth:`Child.wait`, as :func:`sandbox.runner.execute` does.
    """
    if not argv:
        raise ValueError("spawn needs a command")
    args = [os.fsdecode(a) for a in argv]
    env = dict(env)
    keep = sorted({int(fd) for fd in pass_fds if int(fd) > 2})
    stdio = (stdin, stdout, stderr)
    if early is not None and not early.fits(plan, stdio, keep):
        early.discard()
        early = None
    if early is not None:
        pid, rfd, er, started = early.pid, early.rfd, early.er, early.started
        report = early.report
        early.send(args, env, cwd, plan, stdio, keep)  # type: ignore[arg-type]  # fits(): a plan
    else:
        from sandbox.kernel import _libc
        from sandbox.kernel._keeper import run_keeper

        _libc.libc()  # load libc now (prctl, the plan): the child must not dlopen (or import) anything
        parent = os.getpid()  # the child compares getppid() to it: did we die before its prctl?
        rfd, wfd = os.pipe()  # both close-on-exec; the child's report
        er, ew = os.pipe()  # the step's end, from a keeper with a PID namespace (see Child.wait)
        started = time.monotonic()
        try:
            pid = os.fork()
        except BaseException:
            for fd in (rfd, wfd, er, ew):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            os.close(rfd)
            os.close(er)
            run_keeper(args, env, cwd, plan, stdio, keep, wfd, parent, ew)
        os.close(wfd)
        os.close(ew)
        report = _Report(rfd, pid, pidns=plan is not None and plan.pid_namespace)
    try:
        if meanwhile is not None:
            try:
                meanwhile()
            except Exception:  # only a head start: whatever it prepares is done again when needed
                pass
        report.read()
    finally:
        os.close(rfd)
    r = report
    if r.failure is not None:
        os.close(er)
        if r.pidfd >= 0:
            os.close(r.pidfd)
        os.waitpid(pid, 0)
        stage, rest = r.failure
        errno_text, _, message = rest.partition(" ")
        cause = OSError(int(errno_text), message)
        if stage == "kernel":
            raise KernelUnavailable(f"kernel layer could not be applied: {message}") from cause
        if stage == "exec":
            raise UsageError(message) from cause
        raise cause  # a bad descriptor: the caller's bug, as the OSError it is
    # No init pid heard of in a PID namespace: the keeper died before its go, nothing ran.
    contained = r.pidns and (r.init_pid is None or r.pidfd >= 0 or r.init_gone)
    return Child(
        pid, r.applied, started, r.launcher_rss, r.init_pid, pidfd=r.pidfd, contained=contained, endfd=er
    )


class _Report:
    """What the keeper (and the init) say on the report pipe, a line each: ``abi`` (an early
    keeper's), ``applied``, ``rss``, ``init`` (a pidfd of it opened at once, while the init waits
    for its go), or the failure of a stage."""

    def __init__(self, rfd: int, keeper: int, *, pidns: bool) -> None:
        self.rfd, self.keeper, self.pidns = rfd, keeper, pidns
        self.applied: AppliedLayers | None = None
        self.launcher_rss = 0
        self.init_pid: int | None = None
        self.pidfd, self.init_gone = -1, False
        self.failure: tuple[str, str] | None = None
        self.abi: tuple[int, int] | None = None  # an early keeper's Landlock ABI and errno
        self.seen: set[str] = set()
        self._pending = b""

    def read(self, until: str | None = None) -> None:
        """Handle lines until a line of stage ``until`` (or a failure) was handled -- now or
        before -- else to the end of the pipe."""
        if until is not None and (until in self.seen or self.failure is not None):
            return
        while chunk := os.read(self.rfd, 4096):
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            stop = False
            for raw in lines:
                stage, _, rest = raw.decode("utf-8", "replace").partition(" ")
                self._handle(stage, rest)
                self.seen.add(stage)
                stop = stop or (until is not None and (stage == until or stage in _FAILED))
            if stop:
                return

    def _handle(self, stage: str, rest: str) -> None:
        if stage == "applied":
            self.applied = AppliedLayers.decode(rest)
        elif stage == "rss":
            self.launcher_rss = int(rest)
        elif stage == "init" and self.init_pid is None:
            self.init_pid = int(rest)
            self.pidfd, self.init_gone = _open_pidfd(self.init_pid, self.keeper, ns_init=self.pidns)
        elif stage == "abi":
            abi, _, err = rest.partition(" ")
            self.abi = (int(abi), int(err or 0))
        elif stage in _FAILED and self.failure is None:
            self.failure = (stage, rest)


_FAILED = ("setup", "kernel", "exec")


def _open_pidfd(pid: int, keeper: int, *, ns_init: bool) -> tuple[int, bool]:
    """``(pidfd, gone)`` of the keeper's child ``pid``: ``(-1, True)`` when it is provably gone,
    ``(-1, False)`` when this kernel cannot tell (no pidfd_open). Checked after opening, since a
    reaped pid may already name another process: a namespace's init (``ns_init``) must still be
    PID 1 of a namespace of its own -- the keeper may have died, orphaning it -- otherwise the
    process must be the keeper's child."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return -1, True
    except OSError:
        return -1, False
    try:
        if ns_init:
            with open(f"/proc/{pid}/status", "rb") as fh:
                nspid = next((ln.split()[1:] for ln in fh if ln.startswith(b"NSpid:")), [])
            ours = len(nspid) > 1 and nspid[-1] == b"1"
        else:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                ours = int(fh.read().rpartition(b")")[2].split()[1]) == keeper
    except (OSError, ValueError, IndexError):  # no /proc to tell: neither waited for nor proved
        os.close(fd)
        return -1, False
    if not ours:  # ours was reaped, and a namespace's init only once its namespace is gone
        os.close(fd)
        return -1, ns_init
    return fd, False
