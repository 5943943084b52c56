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

The keeper exits with the command's status (or dies of its signal) once the init is gone, i.e.
once *every* process of the step is gone: waiting for the keeper is waiting for the whole step,
and the step's stderr pipe is at end of file then. Without a PID namespace (a plan without one,
Landlock alone, or no plan) the keeper is itself the init: a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so orphans of the command -- double-forked daemons included --
are re-parented to it, and when the command ends it SIGKILLs its children until none is left.

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
from sandbox.kernel import _libc, landlock, mounts  # noqa: F401  # loaded before fork: see _child
from sandbox.kernel.plan import AppliedLayers, KernelPlan, enter, seal

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping, Sequence
else:
    # ``_signal``, not ``signal``: the wrapper builds enums (importing ``enum``, ``functools``...),
    # milliseconds of every launch; these are the same functions and numbers.
    import _signal as signal

# Python ignores SIGPIPE (and SIGXFSZ); an ignored signal stays ignored across exec, so a shell
# pipeline like `yes | head` would see EPIPE errors instead of dying quietly. Restore them.
_RESTORE_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n))

#: What the keeper and the init wait for (blocked, taken with sigwaitinfo): a child's end, and
#: the signals they forward to the command.
_FORWARDED = tuple(
    getattr(signal, n)
    for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, n)
)
#: Sent to the keeper by :meth:`Child.kill`: SIGKILL the whole step (SIGKILL itself cannot be
#: caught, and killing the keeper would let the launcher's wait return before the step is gone).
KILL_ALL = signal.SIGALRM
_WAITED = (signal.SIGCHLD, KILL_ALL, *_FORWARDED)
#: si_code of a signal the kernel sent, e.g. the terminal's ^C to the foreground process group:
#: the command, in that group too, got it already; forwarding it would deliver it twice.
_SI_KERNEL = 0x80
_PR_SET_DUMPABLE = 4


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
        calls return the same result)."""
        if self._result is None:
            _, status, rusage = os.wait4(self.pid, 0)
            self._reaped(status, rusage)
            self._init_gone()
        assert self._result is not None
        return self._result

    def poll(self) -> ChildResult | None:
        """The result if the step has ended, else None, without blocking (long: a keeper killed
        from outside leaves its init a moment to end)."""
        if self._result is None:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self._reaped(status, rusage)
            self._init_gone()
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
            os.close(self._pidfd)
            self._pidfd = -1

    def __del__(self) -> None:
        if getattr(self, "_pidfd", -1) >= 0:
            os.close(self._pidfd)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL (the default) ends the whole step now: the keeper SIGKILLs the init (the kernel
        then kills every process of the namespace), or without a PID namespace the command and
        then the rest. Another signal is forwarded to the command. Nothing once the step has
        been reaped; :meth:`wait` as usual after it."""
        if self._result is None:
            os.kill(self.pid, KILL_ALL if sig == signal.SIGKILL else sig)

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

    A root launcher writes the identity uid/gid map of the step's user namespace (the keeper
    asks for it over the report pipe: only a process of the parent namespace may map more than
    its own id), so files keep their owners inside.

    ``meanwhile`` runs here once the keeper is forked (and, for a root launcher, its map
    written), while it sets the step up: the launcher's own work that needs no answer from it
    (errors in it are ignored: it may only prepare).

    The step is SIGKILLed when the *thread* calling ``spawn`` exits (Linux ties the
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
    rfd, wfd = os.pipe()  # both close-on-exec; the child's report
    gor, gow = os.pipe()  # our answer to its request for a uid map
    started = time.monotonic()
    try:
        pid = os.fork()
    except BaseException:
        for fd in (rfd, wfd, gor, gow):
            os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        os.close(rfd)
        os.close(gow)
        _keeper(args, env, cwd, plan, (stdin, stdout, stderr), keep, wfd, gor, parent)
    os.close(wfd)
    os.close(gor)
    report = _Report(rfd, gow, pid, pidns=plan is not None and plan.pid_namespace)
    try:
        # A root launcher's keeper asks for its uid map as soon as it has unshared: answer that
        # first (the keeper waits for it), then do our own work while it builds the rest.
        if plan is not None and plan.namespace and os.geteuid() == 0:
            report.read(until="userns")
        if meanwhile is not None:
            try:
                meanwhile()
            except Exception:  # only a head start: whatever it prepares is done again when needed
                pass
        report.read()
    finally:
        os.close(rfd)
        os.close(gow)
    r = report
    if r.failure is not None:
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
    return Child(pid, r.applied, started, r.launcher_rss, r.init_pid, pidfd=r.pidfd, contained=contained)


class _Report:
    """What the keeper (and the init) say on the report pipe, a line each: ``userns`` (a root
    keeper asks for its uid map: answered at once), ``applied``, ``rss``, ``init`` (a pidfd of
    it opened at once, while the init waits for its go), or the failure of a stage."""

    def __init__(self, rfd: int, gow: int, keeper: int, *, pidns: bool) -> None:
        self.rfd, self.gow, self.keeper, self.pidns = rfd, gow, keeper, pidns
        self.applied: AppliedLayers | None = None
        self.launcher_rss = 0
        self.init_pid: int | None = None
        self.pidfd, self.init_gone = -1, False
        self.failure: tuple[str, str] | None = None
        self._pending = b""

    def read(self, until: str | None = None) -> None:
        """Handle lines until a line of stage ``until`` (or a failure) was handled, else to the
        end of the pipe."""
        while chunk := os.read(self.rfd, 4096):
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            stop = False
            for raw in lines:
                stage, _, rest = raw.decode("utf-8", "replace").partition(" ")
                self._handle(stage, rest)
                stop = stop or (until is not None and (stage == until or stage in _FAILED))
            if stop:
                return

    def _handle(self, stage: str, rest: str) -> None:
        if stage == "userns":
            try:
                os.write(self.gow, b"1" if _map_identity(self.keeper) else b"0")
            except BrokenPipeError:  # the keeper was killed: the end of the pipe says the rest
                pass
        elif stage == "applied":
            self.applied = AppliedLayers.decode(rest)
        elif stage == "rss":
            self.launcher_rss = int(rest)
        elif stage == "init" and self.init_pid is None:
            self.init_pid = int(rest)
            self.pidfd, self.init_gone = _open_pidfd(self.init_pid, self.keeper, ns_init=self.pidns)
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


def _map_identity(pid: int) -> bool:
    """Write the identity uid/gid maps of ``pid``'s new user namespace; False when we may not
    (the child then maps its own id only)."""
    try:
        uid_map, gid_map = mounts.identity_maps()
        mounts.write_maps(pid, uid_map, gid_map)
        return True
    except OSError:
        return False


def _keeper(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    plan: KernelPlan | None,
    stdio: tuple[int | None, int | None, int | None],
    keep: list[int],
    wfd: int,
    gor: int,
    parent: int,
) -> None:  # pragma: no cover - runs in the child
    stage = "setup"
    try:
        for target, fd in enumerate(stdio):
            if fd is not None and fd != target:
                os.dup2(fd, target)  # dup2 makes the copy inheritable
        for fd in keep:
            os.set_inheritable(fd, True)
        # The keeper lives as long as the step: it must not hold the launcher's descriptors (other
        # steps' pipes, a Ray worker's sockets, locked files) that long.
        _close_fds_except([*keep, wfd, gor])
        for sig in _RESTORE_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a mask survives exec: start clean
        entered: tuple[bool, float, int] | None = None
        if plan is not None:
            stage = "kernel"

            def mapped_by_parent() -> bool:
                os.write(wfd, b"userns\n")
                return os.read(gor, 1) == b"1"

            entered = enter(plan, mapped_by_parent=mapped_by_parent)
        stage = "setup"
        os.close(gor)
        _die_with(parent)
        # Blocked before any fork: a child's end or a signal to forward is never missed.
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        if plan is not None and entered is not None and plan.pid_namespace:
            sr, sw = os.pipe()
            gr, gw = os.pipe()  # "go" to the init, once the launcher has been told its pid
            init = os.fork()
            if init == 0:
                os.close(sr)
                os.close(gw)
                _init(argv, env, cwd, plan, entered, keep, wfd, sw, gr)
            os.close(sw)
            os.close(gr)
            # The launcher learns the init's pid before anything of the step runs: a step whose
            # pid it never heard of never ran, and one it heard of it can wait out (a pidfd).
            os.write(wfd, f"init {init}\n".encode())
            os.write(gw, b"1")  # gw stays open while we live: its end tells the init we died
            os.close(wfd)
            status = _reap(init, keeper=True)  # every process of the namespace is gone once init is
            told = os.read(sr, 64).split()
            _end_as(int(told[0]) if told else status)
        if plan is not None and entered is not None:
            stage = "kernel"
            applied = seal(plan, entered)
            os.write(wfd, f"applied {applied.encode()}\n".encode())
            stage = "setup"
        _libc.set_child_subreaper()
        main = _command(argv, env, cwd, keep, wfd)
        os.write(wfd, f"init {main}\n".encode())
        os.close(wfd)
        status = _reap(main, keeper=True)
        _end_descendants()
        _end_as(status)
    except BaseException as e:
        _fail(wfd, stage, e)


def _init(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    plan: KernelPlan,
    entered: tuple[bool, float, int],
    keep: list[int],
    wfd: int,
    sw: int,
    go: int,
) -> None:  # pragma: no cover - PID 1 of the step's namespace
    stage = "kernel"
    try:
        _libc.set_parent_death_signal(signal.SIGKILL)  # the keeper's death ends the namespace
        # getppid() is 0 in a new PID namespace: the keeper's life is the go pipe's write end.
        # Its go byte says the launcher knows our pid; an end of file after it (the keeper died
        # before our prctl, so no parent-death signal will come) is checked after the prctl.
        if os.read(go, 1) != b"1":
            os._exit(1)
        os.set_blocking(go, False)
        try:
            os.read(go, 1)  # b"": the keeper is gone
            os._exit(1)
        except BlockingIOError:  # alive: from now on its death is our parent-death signal
            os.close(go)
        applied = seal(plan, entered)
        os.write(wfd, f"applied {applied.encode()}\n".encode())
        # The command with posix_spawn (vfork + exec: no copy of this image's page tables, the
        # fork that costs). Nothing must happen between the two in the child: the namespace's
        # death already ends the command with us, so it needs no parent-death signal.
        stage = "exec"
        try:
            os.chdir(cwd)
        except OSError as e:
            raise OSError(e.errno, f"cannot enter the working folder {cwd}: {e.strerror}") from None
        os.write(wfd, f"rss {_peak_rss()}\n".encode())
        _close_fds_except([*keep, wfd, sw])  # wfd and sw are close-on-exec
        try:
            main = os.posix_spawn(_which(argv[0], env), argv, env, setsigmask=(), setsigdef=_RESTORE_SIGNALS)
        except OSError as e:
            raise OSError(e.errno, f"cannot execute {argv[0]!r}: {e.strerror}") from None
        stage = "setup"
        os.close(wfd)
        status = _reap(main)
        os.write(sw, f"{status}\n".encode())
        # Returning would unwind into the launcher's code; exiting ends the namespace: the
        # kernel SIGKILLs every process left in it and reaps them before we are gone.
        os._exit(0)
    except BaseException as e:
        _fail(wfd, stage, e)


def _command(argv: list[str], env: dict[str, str], cwd: str, keep: list[int], wfd: int) -> int:
    """Fork the command: it unblocks the signals, dies with us, enters ``cwd`` and execs."""
    me = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    stage = "setup"  # pragma: no cover - the command's process until exec
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        _die_with(me)
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
        _fail(wfd, stage, e)
    raise AssertionError("unreachable")


def _which(name: str, env: Mapping[str, str]) -> str:  # pragma: no cover - in the init
    """What ``execvpe`` would run for ``name`` with ``env["PATH"]``: ``posix_spawnp`` would search
    the caller's own PATH instead. Raises the ``OSError`` ``execvpe`` would."""
    if "/" in name:
        return name
    err: OSError = FileNotFoundError(2, "No such file or directory")
    for d in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        path = os.path.join(d or ".", name)
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno not in (2, 20):  # ENOENT, ENOTDIR: keep looking, as execvp does
                err = e
            continue
        if (st.st_mode & 0o170000) == 0o100000 and os.access(path, os.X_OK):
            return path
        err = PermissionError(13, "Permission denied")
    raise err


def _fail(wfd: int, stage: str, e: BaseException) -> None:  # pragma: no cover - in a child
    err = getattr(e, "errno", None) or 0
    text = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
    msg = " ".join(text.split())  # one line, whatever the message held
    try:
        os.write(wfd, f"{stage} {err} {msg}\n".encode())
    finally:
        os._exit(127)


def _reap(main: int, *, keeper: bool = False) -> int:  # pragma: no cover - keeper or init
    """Reap every child that ends and forward the signals of :data:`_FORWARDED` to ``main``
    until ``main`` ends; return its wait status. The signals must be blocked already. In the
    keeper, :data:`KILL_ALL` SIGKILLs ``main`` (the init ends its namespace with it); the init
    leaves it blocked: a process of the step cannot use it."""
    status: int | None = None
    waited = _WAITED if keeper else (signal.SIGCHLD, *_FORWARDED)
    while status is None:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            while True:
                try:
                    pid, st = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == main:
                    status = st
        elif info.si_code != _SI_KERNEL or info.si_signo == KILL_ALL:
            try:
                os.kill(main, signal.SIGKILL if info.si_signo == KILL_ALL else info.si_signo)
            except ProcessLookupError:
                pass
    return status


def _end_descendants() -> None:  # pragma: no cover - in the keeper, without a PID namespace
    """SIGKILL our children until none is left. As a subreaper we inherit every orphan of the
    step, so this reaches double-forked daemons too; each round re-reads who our children are
    (a killed one's children were just re-parented to us)."""
    me = str(os.getpid())
    while True:
        try:  # the usual end: no child left, no /proc to read
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        for pid in _children(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)


def _children(ppid: str) -> list[int]:  # pragma: no cover - in the keeper
    """Pids whose parent is ``ppid`` (single-threaded): its ``/proc/<pid>/task/<pid>/children``,
    else -- a kernel without CONFIG_PROC_CHILDREN -- a scan of every process's stat."""
    try:
        with open(f"/proc/{ppid}/task/{ppid}/children", "rb") as fh:
            return [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        pass
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1].decode() == ppid:
            found.append(int(name))
    return found


def _end_as(status: int) -> None:  # pragma: no cover - in the keeper
    """Exit as the command did: with its code, or killed by its signal (without a core dump)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        _libc.libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (sig,))
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child
    """Have the kernel SIGKILL this process when ``parent`` (the forking thread) exits.

    After the plan's namespaces: a change of credentials clears the setting. If the parent died
    before the prctl, no signal will come, but we were re-parented, so ``getppid()`` no longer
    names it: end now, as the signal would have.
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
