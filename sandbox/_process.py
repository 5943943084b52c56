"""The processes of a running step, seen from its launcher: its stderr, its memory, its end.

:class:`StepTree`
samples the memory of the step's whole process tree and ends it (through
:class:`sandbox.kernel.Child`, whose end is its whole tree's end); :class:`Interrupted` and
:func:`install_interrupt_handlers` turn Ctrl-C and SIGTERM into one exception the run handles --
the first only (:func:`ending`); :class:`deferred_interrupts` holds them back while the launcher
must not be cut (an export).

Imported on the path to a step's ``exec``: stdlib only, ``psutil`` and ``select`` in the threads
that need them, ``_signal`` instead of ``signal`` (whose enums cost milliseconds).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any

    from sandbox.kernel import Child
else:
    import _signal as signal  # the functions and numbers of ``signal``, without its enums

def start_thread(fn: Any, args: tuple[Any, ...] = ()) -> None:
    """Start a bare thread (``threading`` costs an import on the start-up path) with SIGINT and
    SIGTERM blocked in it: the kernel then delivers them to the main thread, whose blocking
    ``wait4`` they interrupt. A signal that lands on another thread only sets Python's flag, and
    the main thread would wait on for the step -- forever, for a step that sleeps."""
    from _thread import start_new_thread

    old = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        start_new_thread(fn, args)  # the new thread inherits the blocked mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Background:
    """``fn(*args)`` on a bare thread (:func:`start_thread`), for work the launcher does beside
    another; :meth:`join` waits for it and returns its result -- None when it raised: what such
    work only prepares is done again where it is needed."""

    def __init__(self, fn: Any, *args: Any) -> None:
        from _thread import allocate_lock

        self.result: Any = None
        self._done = allocate_lock()
        self._done.acquire()
        start_thread(self._run, (fn, args))

    def _run(self, fn: Any, args: tuple[Any, ...]) -> None:
        try:
            self.result = fn(*args)
        except Exception:
            pass
        finally:
            self._done.release()

    def join(self) -> Any:
        with self._done:
            return self.result


GRACE_S = 2.0  # between SIGTERM and SIGKILL when a step is ended
_SAMPLE_S = 0.1  # how often the process tree's memory is sampled while a step runs
SIGHUP, SIGINT, SIGQUIT, SIGTERM = 1, 2, 3, 15
#: What ends a run as an interruption (exported, marked so, exit 128 + N): Ctrl-C, SIGTERM (a
#: scheduler, ``timeout``), SIGHUP (the terminal closed) and Ctrl-\ (SIGQUIT).
INTERRUPTS = (SIGINT, SIGTERM, SIGHUP, SIGQUIT)


class Interrupted(KeyboardInterrupt):
    """The launcher was asked to stop (Ctrl-C: SIGINT, or SIGTERM): the run is ended, exported
    marked ``interrupted``, and the CLI exits ``128 + signum`` (130, 143)."""

    def __init__(self, signum: int = SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupting() -> bool:
    """Whether the run is ending because of an interrupt (:func:`ending`)."""
    return bool(_ENDING)


class StepTree:
    """The processes of a running step, seen from outside: memory sampling and ending them."""

    def __init__(self, child: Child) -> None:
        from _thread import allocate_lock

        self.child = child
        self.peak_rss = 0
        self.finished = False  # the step was reaped by the thread waiting for it
        # Held while the step runs; the sampler waits on it between samples, so that it ends as
        # soon as the step does (:meth:`stop`) instead of sleeping on: a thread still asleep when
        # the launcher exits costs its exit a wake-up on the other core (~0.4 ms of start-up).
        self._running = allocate_lock()
        self._running.acquire()

    def sample(self) -> None:
        """Sum the resident memory of every process of the step, every ``_SAMPLE_S``, until the
        step ends (runs in its own thread). A step shorter than half a period is never sampled
        (its ``ru_maxrss`` stands). The tree is read from ``/proc`` (each task's ``children``,
        each process's ``statm``): no import, and no scan of every process of the machine per
        sample, as ``psutil``'s ``children()`` does -- psutil only where the kernel lacks
        ``/proc/PID/task/TID/children`` (CONFIG_PROC_CHILDREN)."""
        if self._running.acquire(timeout=_SAMPLE_S / 2):
            return
        pid = self.child.pid
        measure = _tree_rss
        me = os.getpid()
        if not os.path.exists(f"/proc/{me}/task/{me}/children"):  # this kernel has none
            try:
                import psutil
            except ImportError:  # an interpreter without it (a system python): ru_maxrss stands
                return

            def measure(pid: int) -> int:
                try:
                    top = psutil.Process(pid)
                    procs = [top, *top.children(recursive=True)]
                except psutil.Error:
                    return 0
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                return total

        while True:
            self.peak_rss = max(self.peak_rss, measure(pid))
            if self._running.acquire(timeout=_SAMPLE_S):
                return

    def stop(self) -> None:
        """The step has ended: the sampler returns now. Idempotent."""
        self.finished = True
        if self._running.locked():
            try:
                self._running.release()
            except RuntimeError:  # released by a concurrent stop()
                pass

    def end(self, grace: float = GRACE_S, *, reap: bool = False, signum: int = SIGTERM) -> None:
        """Signal the step's command (SIGTERM, or ``signum``: the launcher's own interrupt, passed
        on as Docker's CLI does), then end every process of the step (SIGKILL) if it has not
        ended after ``grace``. The kernel layer makes the step's end its whole tree's end (a PID
        namespace, or its keeper as a subreaper), so this signals through :class:`Child` only;
        its keeper does not pass on a signal the step's process group got already.
        ``reap``: this thread is the only one waiting for the step, so it may reap it."""
        self.child.kill(signum)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.finished or (reap and self.child.poll() is not None):
                return
            time.sleep(0.02)
        self.child.kill()


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 for what ended meanwhile)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * _PAGE
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def signame(signum: int) -> str:
    names = {SIGINT: "SIGINT", SIGTERM: "SIGTERM", SIGHUP: "SIGHUP", SIGQUIT: "SIGQUIT"}
    return names.get(signum, f"signal {signum}")


class deferred_interrupts:
    """Hold SIGINT and SIGTERM back for the duration (only the main thread gets signals; elsewhere
    this does nothing) and deliver them -- as the handlers in force would -- afterwards, or, with
    ``redeliver=False``, leave them in :attr:`held` for the caller to act on."""

    def __init__(self, *, redeliver: bool = True) -> None:
        self.redeliver = redeliver
        self.held: list[int] = []

    def __enter__(self) -> deferred_interrupts:
        self._held = self.held
        self._old: dict[int, Any] = {}
        for sig in INTERRUPTS:
            try:
                self._old[sig] = signal.signal(sig, lambda n, _f: self._held.append(n))
            except ValueError:  # not the main thread: signals are not ours to handle here
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self.redeliver:
            for sig in self._held[:1]:
                signal.raise_signal(sig)


#: The signal the run is ending for, once one was taken (:func:`ending`): the handlers of
#: :func:`install_interrupt_handlers` raise no other.
_ENDING: list[int] = []


def ending(signum: int) -> Interrupted:
    """The run ends because of ``signum``: from now on the handlers of
    :func:`install_interrupt_handlers` ignore SIGINT and SIGTERM. Returns the exception to raise."""
    if not _ENDING:
        _ENDING.append(signum)
    return Interrupted(signum)


def install_interrupt_handlers() -> None:
    """Make SIGTERM, SIGHUP and SIGQUIT end a run like Ctrl-C does (an :class:`Interrupted` in the
    main thread), so the CLI exports it marked interrupted and exits 128 + N (143, 129, 131).
    Call from the main thread.

    Only the first signal interrupts. Once the launcher is ending the run because of one, later
    SIGINTs and SIGTERMs are ignored: raised in the middle of the step's end, the report, the
    export or the clean-up, they would abandon the run -- and ``timeout`` signals the launcher,
    then its whole process group, the launcher again. The end is bounded (the step's processes
    are killed after :data:`GRACE_S`; the export is short), and SIGKILL remains the hard stop
    (the next run's sweep removes the workspace it leaves)."""
    del _ENDING[:]

    def on_signal(signum: int, _frame: object) -> None:
        if not _ENDING:
            raise ending(signum)

    for sig in INTERRUPTS:
        signal.signal(sig, on_signal)
