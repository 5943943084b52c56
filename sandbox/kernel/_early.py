"""The early keeper: the keeper of ``tv-sandbox run``'s step, started before the launcher knows
its step (:func:`prefork`), and what :func:`~sandbox.kernel.spawning.spawn` needs of it
(:class:`Early`). The keeper's side is :func:`sandbox.kernel._keeper.run_early_keeper`; the
design is in docs/architecture.md ("a run's life", launch)."""

from __future__ import annotations

import os
import time

from sandbox.kernel.spawning import _Report

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Sequence

    from sandbox.kernel.plan import KernelPlan
else:
    import _signal as signal  # see _keeper


class Early:
    """A keeper forked before its step is known (:func:`prefork`). It holds the report and end
    pipes :func:`spawn` would make, plus ``pw``, where spawn writes the step, and the
    step's stderr pipe, made before the fork so that the keeper has it (``stderr``: ``(read,
    write)``; the caller reads the read end, as it would its own pipe's), and its stdout pipe
    when the launcher's stdout is not to be handed over (``stdout``; see
    :func:`~sandbox.kernel.spawning.needs_relay`), else None."""

    def __init__(
        self,
        pid: int,
        rfd: int,
        er: int,
        pw: int,
        stderr: tuple[int, int],
        network: bool,
        stdout: tuple[int, int] | None = None,
    ) -> None:
        self.pid, self.rfd, self.er, self.pw = pid, rfd, er, pw
        self.stderr = stderr
        self.stdout = stdout
        self.network = network
        self.started = time.monotonic()
        self.report = _Report(rfd, pid, pidns=True)
        self._used = False
        self._stderr_taken = False

    def take_stderr(self) -> tuple[int, int]:
        """The step's stderr pipe ``(read, write)``, and its stdout pipe (or None), now the
        caller's to close (as its own)."""
        self._stderr_taken = True
        return self.stderr

    def take_stdout(self) -> tuple[int, int] | None:
        """The step's stdout pipe ``(read, write)`` when it has one (see :attr:`stdout`), taken
        with :meth:`take_stderr`."""
        return self.stdout

    def abi(self) -> tuple[int, int] | None:
        """This kernel's Landlock ABI (0 when unavailable) and the errno why, as
        :func:`sandbox.kernel.landlock.query_abi` answers it, asked of the keeper: the launcher
        needs no ctypes for it. None when the keeper ended without saying (or was discarded
        before it said)."""
        if not self._used:
            self.report.read(until="abi")
        return self.report.abi

    def fits(self, plan: KernelPlan | None, stdio: tuple[int | None, ...], keep: Sequence[int]) -> bool:
        """Whether this keeper can run a step under ``plan`` with these descriptors: its namespaces
        are the plan's (user, mount, PID; the network's as made), its /dev the minimal one with a
        private /dev/shm (made before the step arrives), and every descriptor was open
        at the fork (only the stderr pipe: nothing else of ours reaches the keeper). A keeper that
        ended before it said its Landlock ABI (killed, or its imports failed) fits nothing: spawn
        forks its own."""
        return (
            not self._used
            and self.abi() is not None
            and plan is not None
            and plan.namespace
            and plan.pid_namespace
            and plan.network_namespace == self.network
            and plan.minimal_dev
            and plan.private_shm
            and not keep
            and stdio[0] is None
            and stdio[1] == (self.stdout[1] if self.stdout is not None else None)
            and stdio[2] == self.stderr[1]
        )

    def send(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        plan: KernelPlan,
        stdio: tuple[int | None, ...],
        keep: list[int],
    ) -> None:
        """Hand the keeper its step (once). A keeper that died meanwhile is found by spawn: the
        report pipe ends without an ``init``."""
        import marshal

        self._used = True
        data = marshal.dumps((argv, env, cwd, plan.to_dict(), list(stdio), keep))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.pw, view) :]
        except BrokenPipeError:
            pass
        finally:
            os.close(self.pw)
            self.pw = -1

    def discard(self) -> None:
        """End a keeper that will not be used: SIGKILLed, its pipes closed (the stderr pipe
        unless taken: then it is the taker's), and reaped by a thread of its own -- the teardown
        of its namespaces takes a few milliseconds the launcher need not wait for."""
        if self._used:
            return
        self._used = True
        pipes = (*self.stderr, *(self.stdout or ()))
        for fd in (self.pw, self.rfd, self.er, *(() if self._stderr_taken else pipes)):
            if fd >= 0:
                os.close(fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        from _thread import start_new_thread

        start_new_thread(_reap_quietly, (self.pid,))


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by someone else (a waitpid(-1) of the caller's)
        pass


def prefork(*, network: bool) -> Early | None:
    """Fork the keeper of a run's first step now, before the launcher's preflight, workspace
    and plan: it loads the kernel layer and makes the step's namespaces (user, mount, PID, and
    the network's when ``network``) on the other core meanwhile, then waits for the step
    (``spawn(..., early=...)``). Saves the launcher ctypes and 3-4 ms of start-up on two cores
    (docs/benchmarks.md; the fork and its copy-on-write faults cost ~2 ms of what it overlaps).

    Only from a single-threaded process (the keeper imports after the fork), and only for a
    step whose stdin is the caller's own, whose stderr is :attr:`Early.stderr` and whose stdout
    is :attr:`Early.stdout` -- a pipe made here when the caller's must not be handed over
    (:func:`~sandbox.kernel.spawning.needs_relay`) -- or else the caller's own.
    None when the fork failed (then spawn works as always)."""
    from sandbox.kernel.spawning import needs_relay

    rfd, wfd = os.pipe()
    er, ew = os.pipe()
    pr, pw = os.pipe()
    sr, sw = os.pipe()
    out = os.pipe() if needs_relay(1) else None
    ours = (rfd, wfd, er, ew, pr, pw, sr, sw, *(out or ()))
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        for fd in ours:
            os.close(fd)
        return None
    if pid == 0:  # pragma: no cover - the early keeper
        for fd in (rfd, er, pw, sr, *(out[:1] if out else ())):
            os.close(fd)
        try:
            from sandbox.kernel._keeper import run_early_keeper
        except BaseException:
            os._exit(127)
        run_early_keeper(network, wfd, ew, pr, parent, sw, out[1] if out else None)
    for fd in (wfd, ew, pr):
        os.close(fd)
    return Early(pid, rfd, er, pw, (sr, sw), network, out)
