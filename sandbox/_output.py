"""A step's output and the user's terminal, seen from the launcher.

:func:`pump` copies a step's output from its pipe to the user (a :class:`Delivery`: the
launcher's terminal, file, pipe or FIFO) and to its log (:class:`LogFile`); :class:`Pump` runs it
on a bare thread. :class:`TerminalState` saves the terminal's settings before a step and puts
them back after it. Nothing here raises into the run: what went wrong is a warning line
(:meth:`Pump.problems`).

Imported on the path to a step's ``exec``: stdlib only, ``select``, ``fcntl`` and ``termios`` in
the threads and calls that need them, ``_signal`` instead of ``signal``.
"""

from __future__ import annotations

import os
import time

from sandbox._process import start_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import IO, Any
else:
    import _signal as signal  # the functions and numbers of ``signal``, without its enums

STDERR_TAIL = 8192
PATIENCE_S = 1.0  # how long an interrupted run waits for a reader that takes none of its output


class Delivery:
    """Where a step's output is delivered for the user -- the launcher's stdout or stderr: a
    terminal, a file, a pipe, a FIFO -- and what became of it (:attr:`delivered` bytes,
    :attr:`error`). :meth:`write` never raises and never blocks an interrupted run for long:

    - a FIFO or a terminal is written through a descriptor of its own, non-blocking (opened anew
      through ``/proc/self/fd``: the launcher's own stays as the user handed it over), so that a
      reader that stopped reading holds an interrupted run for :data:`PATIENCE_S`, not forever;
    - a write that fails (a full disk, a reader gone) ends the delivery: :attr:`error` says why,
      and the caller keeps what was not delivered (:func:`pump`).

    It copies what :func:`pump` reads from the step's pipe: the step never holds the user's
    descriptor.
    """

    def __init__(self, target: int | IO[bytes], name: str) -> None:
        import stat

        self.name = name
        self.delivered = 0
        self.error: str | None = None
        self._file: IO[bytes] | None = None
        self._fd = -1
        if isinstance(target, int):
            fd: int | None = target
        else:
            fd = _fileno(target)
            if fd is None:  # an object of ours without a descriptor (a test's buffer)
                self._file, self.where = target, name
                return
        assert fd is not None
        try:
            self.where = os.readlink(f"/proc/self/fd/{fd}")
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
        except OSError as e:
            self.error = f"{name} is not open ({e.strerror})"
            self.where = name
            return
        if kind in (stat.S_IFIFO, stat.S_IFCHR):
            try:
                self._fd = os.open(
                    f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                )
                return
            except OSError:  # not ours to open (another user's pipe), no reader left: as it is
                pass
        self._fd = os.dup(fd)
        os.set_inheritable(self._fd, False)

    @property
    def ended(self) -> bool:
        return self.error is not None

    def write(self, data: bytes, stop: Any) -> bytes:
        """Deliver ``data``; return what was not delivered (empty when all was). ``stop()``
        says the run is ending (interrupted): a reader that takes nothing for
        :data:`PATIENCE_S` then is left."""
        if self.error is not None:
            return data
        if self._file is not None:
            try:
                self._file.write(data)
                self._file.flush()
            except (OSError, ValueError) as e:
                self.error = f"writing it failed: {e}"
                return data
            self.delivered += len(data)
            return b""
        view = memoryview(data)
        stalled = 0.0
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                if not stop():
                    stalled = 0.0
                elif not stalled:
                    stalled = time.monotonic()
                elif time.monotonic() - stalled > PATIENCE_S:
                    self.error = f"the reader of {self.where} took nothing for {PATIENCE_S:g} s"
                    self.error += " once the run was interrupted"
                    break
                _wait_writable(self._fd)
                continue
            except OSError as e:
                self.error = f"writing to {self.where} failed: [Errno {e.errno}] {e.strerror}"
                break
            view = view[n:]
            self.delivered += n
            stalled = 0.0
        return bytes(view)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fileno(f: IO[bytes]) -> int | None:
    try:
        f.flush()
        return f.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None


def _wait_writable(fd: int) -> None:
    import select

    select.select([], [fd], [], 0.1)


class LogFile:
    """A log of the launcher's for a step's output (``path``, opened with ``flags``): opened now,
    or with ``lazy`` on its first write (a step's stdout kept only when it could not be
    delivered). :meth:`write` never raises: a log that cannot be written (a full disk) says why
    in :attr:`error`, and what follows is dropped -- the step is never held up by its log."""

    def __init__(self, path: str, flags: int, *, lazy: bool = False) -> None:
        self.path, self._flags = path, flags
        self.error: str | None = None
        self._fh: IO[bytes] | None = None
        if not lazy:
            self._open()

    @property
    def used(self) -> bool:
        """Whether the file exists (was opened)."""
        return self._fh is not None

    def _open(self) -> IO[bytes]:
        self._fh = open(os.open(self.path, self._flags, 0o644), "wb", buffering=0)  # noqa: SIM115 - kept open
        return self._fh

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            (self._fh or self._open()).write(data)
        except (OSError, ValueError) as e:
            self.error = f"{e}"

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def pump(
    src: int,
    sink: Delivery | None,
    log: LogFile,
    tail: bytearray | None,
    done: Any,
    running: Any,
    stop: Any,
    unstoppable: bool = False,
) -> None:
    """Copy a step's output from the pipe ``src`` to the user (``sink``) and to ``log``.

    With a ``tail`` (stderr) the log gets every byte and ``tail`` the last :data:`STDERR_TAIL`;
    a sink that failed is left, and the log goes on. Without (stdout, when it is a file or a FIFO
    the step must not hold: :func:`~sandbox.kernel.spawning.needs_relay`) the log gets only what
    the sink did not take: once a write fails, the step's own writes fail too -- this end is
    closed (EPIPE), as its write to the file would have failed -- and what it had written until
    then is kept in the log; when the run is interrupted and the reader stalls, the rest is
    drained into the log.

    Stops at end of file, or once the step has ended (``running``, a lock held while it runs, is
    released) and the pipe is empty -- at most its capacity more: every process of the step is
    gone by then (see :class:`sandbox.kernel.Child`), and a writer outside the run (a descriptor
    passed out, a daemon where no PID namespace holds the step) must not hold the run open.
    Runs on a bare thread (:func:`start_thread`): never raises; what went wrong is in the
    sink's and the log's ``error``.

    ``unstoppable``: SIGTTOU is blocked in this thread, so that a write to the terminal from a
    launcher in the background is not stopped by it -- the user's terminal had ``TOSTOP`` off
    when the step began (:attr:`TerminalState.tostop`): a step that turns it on (SIGTTOU
    ignored) stopped the launcher at its next line of the step's output, its timeout and
    SIGTERM unanswered until a SIGCONT."""
    import fcntl
    import select

    if unstoppable:
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTTOU,))
    try:
        poller = select.poll()
        poller.register(src, select.POLLIN | select.POLLHUP)
        ended = False
        room = 0
        while True:
            if not ended and not running.locked():
                ended = True
                # what the pipe holds at most, asked now: the step may have grown it (F_SETPIPE_SZ)
                try:
                    room = fcntl.fcntl(src, 1032)  # F_GETPIPE_SZ
                except OSError:
                    room = 1 << 20
            if not poller.poll(0 if ended else 100):
                if ended:
                    break
                continue
            chunk = os.read(src, 65536)
            if not chunk:
                break
            if tail is not None:  # stderr: all of it logged, then shown
                log.write(chunk)
                tail.extend(chunk)
                del tail[:-STDERR_TAIL]
                if sink is not None:
                    sink.write(chunk, stop)
            else:
                delivering = sink is not None and not sink.ended
                rest = sink.write(chunk, stop) if sink is not None else chunk
                if rest:
                    log.write(rest)
                if delivering and sink is not None and sink.ended and not ended:
                    # the step runs on: what is in the pipe now it wrote; kept, then its
                    # further writes refused, as the file would have refused them
                    os.set_blocking(src, False)
                    try:
                        while more := os.read(src, 65536):
                            log.write(more)
                    except BlockingIOError:
                        pass
                    break
            if ended:
                room -= len(chunk)
                if room <= 0:
                    break
    except BaseException as e:  # pragma: no cover - a bug of ours: said in the run's warnings
        log.error = log.error or f"copying the step's output failed: {e!r}"
    finally:
        os.close(src)
        if sink is not None:
            sink.close()
        done.release()


class Pump:
    """:func:`pump` on a bare thread (:func:`start_thread`): :meth:`join` waits for it, and
    :meth:`problems` says what went wrong, as the run's warning lines."""

    def __init__(
        self,
        src: int,
        sink: Delivery | None,
        log: LogFile,
        tail: bytearray | None,
        running: Any,
        stop: Any,
        unstoppable: bool = False,
    ) -> None:
        from _thread import allocate_lock

        self.sink, self.log = sink, log
        self.stream = "stderr" if tail is not None else "stdout"
        self._done = allocate_lock()
        self._done.acquire()
        start_thread(pump, (src, sink, log, tail, self._done, running, stop, unstoppable))

    def join(self) -> None:
        with self._done:
            pass

    def problems(self, step: str) -> list[str]:
        rel = f"logs/{step}.{self.stream}.log"
        out = []
        if self.sink is not None and self.sink.error is not None:
            if self.stream == "stderr":
                kept = f"all of it is in {rel}"
            elif self.log.used:
                kept = f"what it wrote from then on is in {rel}"
            else:
                kept = "nothing of it was left"
            delivered = f"{self.sink.delivered} bytes delivered"
            out.append(f"the {self.stream} of step {step!r}: {self.sink.error} ({delivered}); {kept}")
        if self.log.error is not None:
            why = f"{rel} could not be written ({self.log.error})"
            out.append(f"the {self.stream} of step {step!r}: {why}: it is not all there")
        return out


class TerminalState:
    """The settings of the user's terminal (the first of our stdin, stdout and stderr that is one,
    else the controlling terminal), saved before a step and put back after it (:meth:`restore`):
    a step can change them as any program run in a terminal can -- echo, ``ISIG``, ``IXON`` left
    off -- and the user's shell would inherit them (zsh's ``ttyctl -f`` does the same). ``termios``
    is imported only where there is a terminal."""

    def __init__(self, fd: int, attrs: list[Any], own: bool) -> None:
        self.fd, self.attrs, self._own = fd, attrs, own

    @property
    def tostop(self) -> bool:
        """Whether the terminal stopped a background job's writes (``TOSTOP``) when saved."""
        return bool(self.attrs[3] & 0o400)  # termios.TOSTOP

    @classmethod
    def save(cls) -> TerminalState | None:
        own = False
        for fd in (0, 1, 2):
            if os.isatty(fd):
                break
        else:
            try:
                fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # no controlling terminal
                return None
            own = True
        import termios

        try:
            return cls(fd, termios.tcgetattr(fd), own)
        except termios.error:
            if own:
                os.close(fd)
            return None

    def restore(self) -> None:
        """Put the settings back if they changed, only when the launcher is the terminal's
        foreground job; never raises. A launcher in the background of its shell leaves them: the
        terminal is the foreground job's (an editor the user started meanwhile in raw mode),
        whose settings ours would overwrite -- job control forbids a background job that
        (SIGTTOU), and a shell restores its own on taking the terminal back. SIGTTOU is blocked
        around the ``tcsetattr`` still: a launcher sent to the background in between is not
        stopped by it. A ``TOSTOP`` the step turned on is left too, but SIGTTOU stays blocked in
        the calling thread from then on: the launcher's own last lines (the run's summary) are
        not stopped by a setting the step made (a step's keeper starts with no signal blocked)."""
        import termios

        try:
            if os.tcgetpgrp(self.fd) != os.getpgrp():  # a background job: not ours to change
                if not self.tostop and termios.tcgetattr(self.fd)[3] & termios.TOSTOP:
                    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTTOU,))
                return
            if termios.tcgetattr(self.fd) == self.attrs:
                return
            old = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTTOU,))
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, self.attrs)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except (termios.error, OSError):
            pass

    def close(self) -> None:
        if self._own:
            os.close(self.fd)
            self._own = False
