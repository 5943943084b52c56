"""The children's side of :func:`sandbox.kernel.spawning.spawn`: the keeper, the init of the
step's PID namespace, and the command until ``exec`` (see that module for the design); and the
early keeper of :func:`sandbox.kernel._early.prefork` (:func:`run_early_keeper`).

Everything here runs in a forked copy of the launcher, before ``exec``: only code imported before
the fork, no lock another thread of the parent could hold (no logging, no ``sys.stderr``, no
imports); a failure travels back over the report pipe as one line (:func:`_fail`). The early
keeper alone imports this module after its fork: the launcher forks it while single-threaded.
"""

from __future__ import annotations

import os
import resource  # os.wait4's result type: imported before the fork, as everything here
import time

from sandbox.kernel import _libc, landlock, mounts  # loaded before the fork
from sandbox.kernel._mapper import Mapper
from sandbox.kernel._stdio import no_terminal_stdin, own_stdio, terminal_kept_safe
from sandbox.kernel.plan import (
    AppliedLayers,
    KernelPlan,
    enter,
    enter_dev,
    enter_mounts,
    enter_namespaces,
    seal,
)
from sandbox.kernel.spawning import KILL_ALL, RELAYED

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping

    #: A step as the keeper's children need it: ``(argv, env, cwd, plan, entered, keep)``.
    _Entered = tuple[bool, float, int]
    _Step = tuple[list[str], dict[str, str], str, KernelPlan | None, _Entered | None, list[int]]
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
#: The launcher's own, as realtime signals (spawning.relay_signal): signal -> what it carries.
_FROM_LAUNCHER = {signal.SIGRTMIN + 2 + i: sig for i, sig in enumerate(RELAYED)}
_WAITED = (signal.SIGCHLD, KILL_ALL, *_FROM_LAUNCHER, *_FORWARDED)
_PR_SET_DUMPABLE = 4


def run_keeper(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    plan: KernelPlan | None,
    stdio: tuple[int | None, int | None, int | None],
    keep: list[int],
    wfd: int,
    parent: int,
    ew: int,
) -> None:  # pragma: no cover - runs in the child
    """The keeper (the forked child of :func:`~sandbox.kernel.spawning.spawn`): stdio, the plan's
    namespaces and mounts, then the init (or, without a PID namespace, the command) and their
    end; never returns."""
    stage = "setup"
    try:
        _take_stdio(stdio, keep)
        # The keeper lives as long as the step: it must not hold the launcher's descriptors (other
        # steps' pipes, a Ray worker's sockets, locked files) that long.
        _libc.close_fds_except([*keep, wfd, ew])
        _reset_signals()
        entered: tuple[bool, float, int] | None = None
        if plan is not None:
            stage = "kernel"
            mapper = Mapper.fork() if plan.namespace else None
            try:
                entered = enter(plan, mapped_by_parent=mapper)
            finally:
                if mapper is not None:
                    mapper.close()
    except BaseException as e:
        _fail(wfd, stage, e)
    step = (argv, env, cwd, plan, entered, keep)
    pidns = plan is not None and entered is not None and plan.pid_namespace
    _keep(lambda: step, pidns, wfd, parent, ew)


def run_early_keeper(
    network: bool, wfd: int, ew: int, pr: int, parent: int, sw: int, so: int | None = None
) -> None:  # pragma: no cover - the early keeper
    """The keeper of :func:`~sandbox.kernel._early.prefork`, forked before the launcher knows
    its step: it loads the kernel layer, says this kernel's Landlock ABI (``abi``), makes the
    namespaces (the uid map written as for :func:`run_keeper`) and forks the init, and goes on
    as :func:`run_keeper`'s keeper. The init reads the step from ``pr`` -- a ``marshal`` of
    ``(argv, env, cwd, plan, stdio, keep)`` -- and makes the plan's mounts itself (the keeper's
    mount namespace is its own): the fork and its hand-over are done before the step is known,
    not after. An empty ``pr`` (the launcher did not need us, or died) ends both quietly.
    ``sw``: the step's stderr pipe, made before the fork, and ``so`` its stdout pipe when the
    launcher relays it (the only descriptors a step may name besides our own 0, 1 and 2).

    The launcher forks it while single-threaded (``tv-sandbox run`` before its preflight), so
    importing here is safe; the point is that the imports, the namespaces and the launcher's own
    preflight and workspace then run side by side, on two cores."""
    stage = "setup"
    try:
        abi, err = landlock.query_abi()
        os.write(wfd, f"abi {abi} {err}\n".encode())
        _libc.close_fds_except([wfd, ew, pr, sw, *([] if so is None else [so])])
        _reset_signals()
        stage = "kernel"
        t0 = time.perf_counter()
        mapper = Mapper.fork()
        try:
            userns = enter_namespaces(pid_namespace=True, network_namespace=network, mapped_by_parent=mapper)
        finally:
            if mapper is not None:
                mapper.close()
        stage = "setup"
        _die_with(parent)  # after the namespaces: entering a user namespace clears the setting
    except BaseException as e:
        _fail(wfd, stage, e)

    def load() -> _Step | None:  # in the init
        enter_dev()  # while the launcher still works on the step
        os.set_blocking(pr, False)
        try:
            data = os.read(pr, 1 << 16)
        except BlockingIOError:  # the launcher still works on the step: use the wait
            data = b""
            try:
                _warm_up()
            except Exception:  # only a head start: the step is handled the same without it
                pass
        # (A step already there goes on at once: the warm-up would only delay its exec.)
        os.set_blocking(pr, True)
        while chunk := os.read(pr, 1 << 16):
            data += chunk
        os.close(pr)
        if not data:
            return None
        import marshal

        argv, env, cwd, plan_dict, stdio, keep = marshal.loads(data)
        plan = KernelPlan.from_dict(plan_dict)
        if not (
            plan.namespace
            and plan.pid_namespace
            and plan.network_namespace == network
            and plan.minimal_dev
            and plan.private_shm
        ):
            raise ValueError("the plan needs other namespaces or another /dev than this early keeper made")
        _take_stdio(tuple(stdio), list(keep))
        for fd in (sw, so):  # on 2 (and 1) now, where the step writes; the init holds no other copy
            if fd is not None and fd not in (1, 2):
                os.close(fd)
        return argv, env, cwd, plan, enter_mounts(plan, (userns, t0, 0), dev_made=True), list(keep)

    # the step's message and its stderr are the init's: the step's end must not wait for ours
    _keep(load, True, wfd, parent, ew, handed=(pr, sw))


def _warm_up() -> None:  # pragma: no cover - in an early keeper's init, waiting for its step
    """Run, before the step arrives, the pure part of what handling it runs: a plan read back
    from its message, its writable roots, the mount table, the layers' line. The init is a fork:
    its first write to each page it shares with the launcher copies the page, and with the
    reference counts of every object used that is much of the first run of any code -- better
    while the launcher still works on the step than between its arrival and its ``exec``."""
    import marshal

    plan = {  # what a step's message holds: KernelPlan.to_dict() of a plan like the runner's
        "writable": ["/tmp"],
        "overlays": [{"lower": ["/h"], "upper": "/u", "work": "/w", "target": "/t", "points": ["r/a", "l"]}],
        "binds": [
            {"src": "/a", "dst": "/b", "readonly": True},
            {"src": "/c", "dst": "/d", "readonly": False},
        ],
        "hidden": ["/r"],
        **dict.fromkeys(("readonly_root", "namespace", "pid_namespace", "private_shm", "minimal_dev"), True),
        "network_namespace": True,
    }
    message = marshal.loads(marshal.dumps(([], {}, "/", plan, [None, None, 2], [])))
    KernelPlan.from_dict(message[3]).writable_roots()
    mounts.mount_table()
    AppliedLayers(namespace=True, overlay=True).encode()


def _take_stdio(stdio: tuple[int | None, ...], keep: list[int]) -> None:  # pragma: no cover - in the keeper
    for target, fd in enumerate(stdio):
        if fd is not None and fd != target:
            os.dup2(fd, target)  # dup2 makes the copy inheritable
    for fd in keep:
        os.set_inheritable(fd, True)


def _reset_signals() -> None:  # pragma: no cover - in the keeper
    for sig in _RESTORE_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a mask survives exec: start clean


def _keep(
    load: Callable[[], _Step | None],
    pidns: bool,
    wfd: int,
    parent: int,
    ew: int,
    handed: tuple[int, ...] = (),
) -> None:  # pragma: no cover - in the keeper, once its namespaces (and mounts) are made
    """The rest of :func:`run_keeper`: the init (with ``pidns``; or the command) and their end;
    never returns. ``load()``: the step -- in the init, which may wait for it there (None: there
    is none, end quietly); ``handed``: descriptors that are the init's alone once it is forked."""
    stage = "setup"
    try:
        _die_with(parent)
        # Blocked before any fork: a child's end or a signal to forward is never missed.
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        if pidns:
            sr, sw = os.pipe()
            gr, gw = os.pipe()  # "go" to the init, once the launcher has been told its pid
            init = os.fork()
            if init == 0:
                os.close(sr)
                os.close(gw)
                os.close(ew)
                _init(load, wfd, sw, gr)
            os.close(sw)
            os.close(gr)
            for fd in handed:
                os.close(fd)
            # The launcher learns the init's pid before anything of the step runs: a step whose
            # pid it never heard of never ran, and one it heard of it can wait out (a pidfd).
            os.write(wfd, f"init {init}\n".encode())
            os.write(gw, b"1")  # gw stays open while we live: its end tells the init we died
            os.close(wfd)
            # The step's output is the init's and its children's to hold, not ours: the launcher
            # reads it to its end, which then comes with the step's, not with our own exit.
            for fd in (0, 1, 2):
                try:
                    os.close(fd)
                except OSError:  # not open (the launcher's own was closed): nothing to hold
                    pass
            status, usage = _reap(init, keeper=parent)  # the namespace is empty once init is reaped
            told = os.read(sr, 64).split()
            status = int(told[0]) if told else status
            # The launcher goes on from here, not from our exit (the namespaces' teardown, ~2 ms
            # on the start-up path): how the step ended and what it used, the init's rusage.
            os.write(ew, f"end {status} {usage.ru_utime!r} {usage.ru_stime!r} {usage.ru_maxrss}\n".encode())
            _end_as(status)
        os.close(ew)  # without a PID namespace the launcher waits for our exit
        step = load()
        assert step is not None  # a keeper without a PID namespace is handed its step
        argv, env, cwd, plan, entered, keep = step
        own_session = False
        if plan is not None and entered is not None:
            stage = "kernel"
            applied = seal(plan, entered)
            own_session = terminal_kept_safe()
            os.write(wfd, f"applied {applied.encode()}\n".encode())
            stage = "setup"
        _libc.set_child_subreaper()
        _untraceable()
        no_terminal_stdin()
        main = _command(argv, env, cwd, keep, wfd, own_session)
        os.write(wfd, f"init {main}\n".encode())
        os.close(wfd)
        status, _ = _reap(main, keeper=parent, to_group=True)
        _end_descendants()
        _end_as(status)
    except BaseException as e:
        _fail(wfd, stage, e)


def _init(
    load: Callable[[], _Step | None], wfd: int, sw: int, go: int
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
        step = load()  # the early keeper's init waits here for its step, and makes its mounts
        if step is None:
            os._exit(0)
        argv, env, cwd, plan, entered, keep = step
        assert plan is not None and entered is not None  # an init exists for a PID namespace's plan
        applied = seal(plan, entered)
        own_session = terminal_kept_safe()
        os.write(wfd, f"applied {applied.encode()}\n".encode())
        _untraceable()
        stage = "exec"  # what fails from here fails the step's command (126), not the kernel layer
        no_terminal_stdin()
        if plan.namespace:
            own_stdio()
        # The command with posix_spawn (vfork + exec: no copy of this image's page tables, the
        # fork that costs). Nothing must happen between the two in the child: the namespace's
        # death already ends the command with us, so it needs no parent-death signal. In a
        # process group of its own (see _command).
        _ready_to_exec(cwd, wfd, [*keep, wfd, sw])  # wfd and sw are close-on-exec
        try:
            path = _which(argv[0], env)
            if own_session:
                main = os.posix_spawn(path, argv, env, setsigmask=(), setsigdef=_RESTORE_SIGNALS, setsid=True)
            else:
                main = os.posix_spawn(path, argv, env, setsigmask=(), setsigdef=_RESTORE_SIGNALS, setpgroup=0)
        except OSError as e:
            raise OSError(e.errno, f"cannot execute {argv[0]!r}: {e.strerror}") from None
        stage = "setup"
        os.close(wfd)
        try:
            # Out of the launcher's process group too: what is sent to it (a terminal's Ctrl-C,
            # `kill -INT -PGID`, `timeout`) is the launcher's to pass on; we forward what the
            # keeper sends.
            os.setpgid(0, 0)
        except OSError:
            pass
        status, _ = _reap(main, to_group=True)
        os.write(sw, f"{status}\n".encode())
        # Returning would unwind into the launcher's code; exiting ends the namespace: the
        # kernel SIGKILLs every process left in it and reaps them before we are gone.
        os._exit(0)
    except BaseException as e:
        _fail(wfd, stage, e)


def _ready_to_exec(cwd: str, wfd: int, keep: list[int]) -> None:  # pragma: no cover - in the child
    """The last steps before the command's ``exec``: enter ``cwd``, tell the launcher this forked
    image's peak memory (which the step's ``ru_maxrss`` will include), close all but ``keep``."""
    try:
        os.chdir(cwd)
    except OSError as e:
        raise OSError(e.errno, f"cannot enter the working folder {cwd}: {e.strerror}") from None
    os.write(wfd, f"rss {_peak_rss()}\n".encode())
    _libc.close_fds_except(keep)


def _command(
    argv: list[str], env: dict[str, str], cwd: str, keep: list[int], wfd: int, own_session: bool
) -> int:
    """Fork the command: it unblocks the signals, dies with us, enters ``cwd`` and execs -- in a
    process group of its own (a session of its own with ``own_session``, see
    :func:`~sandbox.kernel._stdio.terminal_kept_safe`). Its own group: ``kill(0, sig)`` -- a
    shell's ``kill 0`` -- reaches the step's processes, not the launcher's group (the script
    that started it, a pipeline's shell, a Ray worker's), which a PID namespace does not cover:
    a process group is signalled whole, wherever its members live. So the terminal's signals
    reach the launcher, which passes them on (Docker's signal proxy), and the step is never the
    terminal's foreground: its stdin is not the terminal
    (:func:`~sandbox.kernel._stdio.no_terminal_stdin`)."""
    me = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    stage = "setup"  # pragma: no cover - the command's process until exec
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        _die_with(me)
        if own_session:
            os.setsid()
        else:
            os.setpgid(0, 0)
        stage = "exec"
        _ready_to_exec(cwd, wfd, [*keep, wfd])
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


def _reap(
    main: int, *, keeper: int = 0, to_group: bool = False
) -> tuple[int, resource.struct_rusage]:  # pragma: no cover
    """Reap every child that ends and forward the signals of :data:`_FORWARDED` to ``main`` (to
    its process group with ``to_group``: the command's, a shell's children included) until
    ``main`` ends; return its wait status and resource usage (its own and that of every
    descendant it reaped). The signals must be blocked already.

    In the keeper (``keeper``: the launcher's pid), :data:`KILL_ALL` SIGKILLs ``main`` (the init
    ends its namespace with it); the init leaves it blocked: a process of the step cannot use it.
    The keeper forwards only what the launcher sends, as realtime signals (:data:`_FROM_LAUNCHER`):
    a plain one was sent to the launcher's process group (a terminal's Ctrl-C, ``kill -INT
    -PGID``, ``timeout``), which the keeper is in and the command is not; the launcher,
    interrupted by it, passes it on once."""
    status: int | None = None
    usage: resource.struct_rusage | None = None
    waited = _WAITED if keeper else (signal.SIGCHLD, *_FORWARDED)
    while status is None or usage is None:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            while True:
                try:
                    pid, st, ru = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == main:
                    status, usage = st, ru
        elif keeper and info.si_signo not in _FROM_LAUNCHER and info.si_signo != KILL_ALL:
            continue  # a plain one: sent to the launcher's process group, the launcher's to pass on
        elif info.si_signo == KILL_ALL:
            try:
                os.kill(main, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            sig = _FROM_LAUNCHER.get(info.si_signo, info.si_signo)
            try:
                (os.killpg if to_group else os.kill)(main, sig)
            except ProcessLookupError:
                pass
    return status, usage


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


def _untraceable() -> None:  # pragma: no cover - in the init, or a keeper that is the init
    """Not dumpable: the step's processes, of the same uid and without CAP_SYS_PTRACE, can then
    neither ptrace the process that waits for their command (a stopped init holds the run open)
    nor open its ``/proc/PID/fd`` -- where the pipe that tells the launcher the command's status
    is, so a step could forge its own exit status. Our own ``exec`` would reset it; there is none
    (the command is spawned, and ``capset`` dropping capabilities keeps it)."""
    _libc.libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


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
