"""The processes of a running step, seen from its launcher: its stderr, its memory, its end.

:func:`tee` copies a step's stderr to the launcher's and to the step's log; :class:`StepTree`
samples the memory of the step's whole process tree and ends it (through
:class:`sandbox.kernel.Child`, whose end is its whole tree's end); :class:`Interrupted` and
:func:`install_interrupt_handlers` turn Ctrl-C and SIGTERM into one exception the run handles;
:class:`deferred_interrupts` holds them back while the launcher must not be cut (an export).

Imported on the path to a step's ``exec``: stdlib only, ``psutil`` and ``select`` in the threads
that need them, ``_signal`` instead of ``signal`` (whose enums cost milliseconds).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import IO, Any

    from sandbox.kernel import Child
else:
    import _signal as signal  # the functions and numbers of ``signal``, without its enums

STDERR_TAIL = 8192
GRACE_S = 2.0  # between SIGTERM and SIGKILL when a step is ended
_SAMPLE_S = 0.1  # how often the process tree's memory is sampled while a step runs
SIGINT, SIGTERM = 2, 15


class Interrupted(KeyboardInterrupt):
    """The launcher was asked to stop (Ctrl-C: SIGINT, or SIGTERM): the run is ended, exported
    marked ``interrupted``, and the CLI exits ``128 + signum`` (130, 143)."""

    def __init__(self, signum: int = SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def tee(src: int, dst: IO[bytes] | None, log: IO[bytes], tail: bytearray, done: Any, running: Any) -> None:
    """Copy a step's stderr to ours (``dst``, when echoing) and to its log file, keeping the tail
    for the report.

    Stops at end of file, or once the step has ended (``running``, a lock held while it runs, is
    released) and what it wrote is drained: every process of the step is gone by then (see
    :class:`sandbox.kernel.Child`), and a descriptor it passed to a process outside its run must
    not hold the run open.
    """
    import select  # in the tee's thread, after the step's exec: off the start-up path

    poller = select.poll()
    poller.register(src, select.POLLIN | select.POLLHUP)
    try:
        while True:
            ended = not running.locked()
            if not poller.poll(0 if ended else 100):
                if ended:
                    break
                continue
            chunk = os.read(src, 65536)
            if not chunk:
                break
            if dst is not None:
                try:
                    dst.write(chunk)
                    dst.flush()
                except (OSError, ValueError):  # our stderr is gone (a closed terminal): keep logging
                    dst = None
            log.write(chunk)
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]
    finally:
        os.close(src)
        done.release()


class StepTree:
    """The processes of a running step, seen from outside: memory sampling and ending them."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.peak_rss = 0
        self._stop = False
        self.finished = False  # the step was reaped by the thread waiting for it

    def _procs(self) -> list[Any]:
        import psutil

        try:
            top = psutil.Process(self.child.pid)
            return [top, *top.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        """Sum the resident memory of every process of the step, every ``_SAMPLE_S``, until the
        step ends (runs in its own thread). A step shorter than one period is never sampled (its
        ``ru_maxrss`` stands) and costs no ``psutil`` import."""
        time.sleep(_SAMPLE_S / 2)
        if self._stop:
            return
        import psutil

        while not self._stop:
            total = 0
            for p in self._procs():
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, total)
            time.sleep(_SAMPLE_S)

    def end(self, grace: float = GRACE_S, *, reap: bool = False) -> None:
        """SIGTERM the step's command, then end every process of the step (SIGKILL) if it has not
        ended after ``grace``. The kernel layer makes the step's end its whole tree's end (a PID
        namespace, or its keeper as a subreaper), so this signals through :class:`Child` only.
        ``reap``: this thread is the only one waiting for the step, so it may reap it."""
        self.child.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.finished or (reap and self.child.poll() is not None):
                return
            time.sleep(0.02)
        self.child.kill()


def signame(signum: int) -> str:
    return {SIGINT: "SIGINT", SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")


class deferred_interrupts:
    """Hold SIGINT and SIGTERM back for the duration (only the main thread gets signals; elsewhere
    this does nothing) and deliver them -- as the handlers in force would -- afterwards."""

    def __enter__(self) -> None:
        self._held: list[int] = []
        self._old: dict[int, Any] = {}
        for sig in (SIGINT, SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, lambda n, _f: self._held.append(n))
            except ValueError:  # not the main thread: signals are not ours to handle here
                break

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        for sig in self._held[:1]:
            signal.raise_signal(sig)


def install_interrupt_handlers() -> None:
    """Make SIGTERM end a run like Ctrl-C does (an :class:`Interrupted` in the main thread), so the
    CLI exports it marked interrupted and exits 143. Call from the main thread."""

    def on_term(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    def on_int(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    signal.signal(SIGTERM, on_term)
    signal.signal(SIGINT, on_int)
