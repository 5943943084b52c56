"""The helper a root keeper forks before its ``unshare`` to write the identity map of its new user
namespace (:class:`Mapper`): only a process of the parent user namespace may map more ids than its
own. Runs in forked children of the launcher, as :mod:`sandbox.kernel._keeper` (whose rules hold
here: only code imported before the fork, no locks, no imports)."""

from __future__ import annotations

import os

from sandbox.kernel import _libc, mounts

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # see sandbox.kernel._keeper


class Mapper:
    """For a root keeper: a helper forked before its ``unshare``, still of the parent user
    namespace, that writes the identity map of the keeper's new one when asked
    (:func:`sandbox.kernel.mounts.map_identity`: only a process outside may map more than its own
    id). Calling it asks, waits for the answer and reaps the helper; :meth:`close` reaps it
    unasked (the end of its pipe ends it). A keeper that dies first ends it (its parent-death
    signal), and it writes only to the keeper it was forked by (a descriptor of its /proc folder).

    The keeper's own helper rather than the launcher: the keeper asks as soon as it has
    unshared, and the launcher is busy then with its preflight and workspace -- its answer
    would wait for them, and take their time."""

    def __init__(self, helper: int, ask: int, answer: int) -> None:
        self.helper, self.ask, self.answer = helper, ask, answer

    @classmethod
    def fork(cls) -> Mapper | None:
        """The helper of a root keeper; None for any other (it maps its own id) or when the
        fork fails (then the keeper maps its own id too)."""
        if os.geteuid() != 0:
            return None
        keeper = os.getpid()
        ar, aw = os.pipe()  # the keeper's "map me now"
        br, bw = os.pipe()  # the helper's answer
        try:
            helper = os.fork()
        except OSError:
            for fd in (ar, aw, br, bw):
                os.close(fd)
            return None
        if helper == 0:  # pragma: no cover - the helper
            ok = False
            try:
                # It dies with the keeper from here on, and holds nothing of it but its two pipe
                # ends and the keeper's /proc folder: a folder descriptor names that process for
                # good, so a keeper killed meanwhile, its pid reused, never gets another process
                # a map (the folder's files answer ESRCH then). A ^C ends the keeper, and so us.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _libc.set_parent_death_signal(signal.SIGKILL)
                proc = os.open(f"/proc/{keeper}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                if os.getppid() != keeper:  # died before the prctl: no signal will come
                    os._exit(1)
                _libc.close_fds_except([ar, bw, proc])
                os.closerange(0, 3)  # nor its stdio (the step's stderr pipe: its end of file)
                ok = os.read(ar, 1) == b"m" and mounts.map_identity(proc)
                os.write(bw, b"1" if ok else b"0")
            finally:
                os._exit(0 if ok else 1)
        os.close(ar)
        os.close(bw)
        return cls(helper, aw, br)

    def __call__(self) -> bool:
        # SIGPIPE is the default in the keeper (for the step's exec): a helper gone before it read
        # our byte (killed from outside) makes this a refusal, not the keeper's silent death.
        old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            os.write(self.ask, b"m")
            return os.read(self.answer, 1) == b"1"
        except BrokenPipeError:
            return False
        finally:
            signal.signal(signal.SIGPIPE, old)
            self.close()

    def close(self) -> None:
        if self.helper:
            os.close(self.ask)
            os.close(self.answer)
            os.waitpid(self.helper, 0)
            self.helper = 0
