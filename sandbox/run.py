"""A run: opened once, several steps in one workspace and one run folder, closed once.

::

    prep = preflight(RunRequest(host=HOST, run_id="R7", argv=[]))
    with Run.open(prep) as run:                        # workspace, bound policy, logs/
        run.step(StepSpec(["python", "select.py"], name="select"))
        run.step(StepSpec("python report.py > reports/report.log", name="report", timeout_s=600))
        outcome = run.close()                          # report, atomic export, workspace removed

Step 2 reads what step 1 wrote: both run in the same workspace, with the same run folder, under
the same kernel plan (decided by the first launch, see :func:`sandbox.runner._launch`). Each step
is one record of the report: its command, exit status, wall and CPU time, the peak memory of its
whole process tree, its own denials and redirects, and -- when tv-sandbox ended it -- why.

Ending a step ends its whole process tree: a timeout, :meth:`Run.cancel` (from any thread: a Ray
actor's cancel method, say) and an interrupt (Ctrl-C, SIGTERM: :class:`Interrupted`) each
terminate every process of the step, then kill what is left after a grace period, before the
report and the export. Whatever happens, :meth:`Run.close` (or leaving the ``with``) exports the
run folder -- failed, cancelled and interrupted runs too, marked so -- and removes the workspace.

Start-up is a budget here too (``tv-sandbox run`` goes through this module before the step's
``exec``): no ``json``, ``threading``, ``signal`` or ``psutil`` until the step is running.
"""

from __future__ import annotations

import os
import sys
import time

from sandbox import workspace as workspace_mod
from sandbox._output import Delivery, LogFile, Pump, TerminalState
from sandbox._process import (
    SIGINT,
    Background,
    Interrupted,
    StepTree,
    deferred_interrupts,
    ending,
    install_interrupt_handlers,
    interrupting,
    signame,
    start_thread,
)
from sandbox._record import record
from sandbox.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, UsageError
from sandbox.events import EVENTS_NAME, count_events, read_events
from sandbox.resolved import save_resolved
from sandbox.runner import (
    POLICY_FILE,
    Launched,
    RunOutcome,
    _launch,
    start_step,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType
    from typing import IO, Any

    from sandbox.kernel import Child, ChildResult, KernelPlan
    from sandbox.kernel._early import Early
    from sandbox.policy import Policy
    from sandbox.report import StepRecord
    from sandbox.runner import Prepared
    from sandbox.workspace import Workspace

# the launcher's own logs in the run folder: never through a link, never blocking on a FIFO
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

__all__ = ["Interrupted", "Run", "RunClosed", "StepSpec", "install_interrupt_handlers"]


class RunClosed(RuntimeError):
    """A step was asked of a run that was cancelled, interrupted or closed."""


@record
class StepSpec:
    """One step of a run. ``argv``: a command (run directly, looked up on PATH) or a string (run
    with ``sh -c``). ``env``: extra environment; it cannot override the run's own variables.
    ``timeout_s``: the step's whole process tree is ended after that many seconds."""

    argv: Sequence[str] | str
    name: str = "step"
    env: Mapping[str, str] | None = None
    timeout_s: float | None = None

    def command(self) -> list[str]:
        if isinstance(self.argv, str):
            return ["sh", "-c", self.argv]
        return [os.fsdecode(a) for a in self.argv]


class _Clock:
    """Phase timings of a run (``TV_SANDBOX_TIMINGS=1`` prints them): where the start-up goes."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


class Run:
    """An open run: a workspace with its bound policy, steps run one after another, closed once.

    Make one with :meth:`open`. ``echo=True`` (the CLI) passes the steps' stdout through and
    copies their stderr to ours; ``echo=False`` (a Ray actor) keeps both in the run's logs only:
    ``logs/<step>.stdout.log`` and ``logs/<step>.stderr.log`` (stderr is logged either way).
    """

    def __init__(
        self, prep: Prepared, ws: Workspace, policy: Policy, *, echo: bool, stderr: IO[bytes] | None
    ) -> None:
        self.prep = prep
        self.ws = ws
        self.policy = policy
        self.steps: list[StepRecord] = []
        self.warnings: list[str] = list(prep.warnings)
        self.missing: dict[str, str] = {}
        self.interrupted: int | None = None  # the signal that interrupted the run
        self.cancelled: str | None = None  # why the run was cancelled
        self._echo = echo
        self._stderr = stderr
        self._launched: Launched | None = None
        self._staged_logs: list[tuple[str, str]] = []  # (beside the workspace, its name in the run folder)
        self._stop_explaining: Callable[[], bool] | None = None  # an interrupt is held: cut them short
        self._plan: KernelPlan | None = None
        self._tree: StepTree | None = None
        self._ended: list[Child] = []  # steps whose keepers Child.release reaps at the close
        self._early: Early | None = None
        # Every step so far ended provably whole (a PID namespace waited out): only then may the
        # export hard-link the run folder's files -- a process that outlived its step could go on
        # writing an inode the export shares.
        self._contained = True
        self._closed: RunOutcome | None = None
        # what the launcher does while its first step runs (finish.while_first_step), on a thread:
        # its result is the policy's record
        self._first: Background | None = None
        self._recovery: Background | None = None  # the destination's folder, cleaned up meanwhile
        self._ran = False  # a step of this run was started (its processes may have written)
        self._clock = _Clock()
        self._lock: Any = None
        req = prep.request
        env = {k: v for k, v in (req.env or os.environ).items() if not k.startswith("TV_SANDBOX_")}
        env.update(ws.env(req.profile))
        # the explain shim (sandbox.native) rides along when this machine can build it
        self.env: dict[str, str] = ws.native_env(env)
        self.carried: list[str] = []  # what consolidation moved from the workspace into the run folder
        self.policy_file = os.path.join(ws.base, POLICY_FILE)
        self.events_file = os.path.join(ws.run_storage, "logs", EVENTS_NAME)

    @classmethod
    def open(
        cls, prep: Prepared, *, echo: bool = True, stderr: IO[bytes] | None = None, early: Early | None = None
    ) -> Run:
        """Build the workspace and place the policy on it; nothing runs yet. ``early``: a keeper
        forked before the preflight (:func:`sandbox.kernel._early.prefork`), offered to the
        first step; the run discards it if that step does not take it."""
        from _thread import allocate_lock

        req = prep.request
        clock = _Clock()
        ws = workspace_mod.create(
            prep.host, req.run_id, prep.spec.layout, base_dir=req.workspace_base, mirror=prep.kernel == "off"
        )
        try:
            policy = ws.bind(prep.spec, mode=req.mode, profile=req.profile)
            os.makedirs(os.path.join(ws.run_storage, "logs"), exist_ok=True)
            save_resolved(policy, os.path.join(ws.base, POLICY_FILE))
            run = cls(prep, ws, policy, echo=echo, stderr=stderr)
        except BaseException:
            ws.remove()
            raise
        run._early = early if echo else None  # its step's stdout must be ours (see Early.fits)
        if early is not None and run._early is None:
            early.discard()
        run._lock = allocate_lock()
        run._clock = clock
        clock.lap("workspace")
        return run

    # -- steps ---------------------------------------------------------------------------------

    def _step_name(self, name: str) -> str:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "step"
        taken = {s.name for s in self.steps}
        out, n = base, 2
        while out in taken:
            out, n = f"{base}-{n}", n + 1
        return out

    def _step_env(self, spec: StepSpec) -> dict[str, str]:
        extra = dict(spec.env or {})
        clash = sorted(k for k in extra if k in self.env and k in self.ws.env(self.prep.request.profile))
        clash += sorted(k for k in extra if k.startswith("TV_SANDBOX_"))
        if clash:
            raise UsageError(
                f"step {spec.name!r}: env cannot override the run's own variables ({', '.join(clash)}); "
                "remove them from the step's env"
            )
        return {**self.env, **extra}

    def step(self, spec: StepSpec) -> StepRecord:
        """Run one step to its end (or its timeout, or a cancel) and return its record.

        Raises :class:`RunClosed` when the run was cancelled or interrupted before the step
        began; :class:`~sandbox.errors.KernelUnavailable` / :class:`~sandbox.errors.UsageError`
        when it could not start (kernel layer required but refused; command not found).
        """
        if self._closed is not None or self.cancelled or self.interrupted:
            raise RunClosed(
                f"run {self.prep.request.run_id} is {self._state()}: step {spec.name!r} not started"
            )
        from _thread import allocate_lock

        name = self._step_name(spec.name)
        argv = spec.command()
        env = self._step_env(spec)
        # What the previous step left is hostile: the launcher opens nothing there by a name the
        # step could have turned into a link or a FIFO. (Before the first, nothing wrote there
        # but the launcher: the report's module loads while that step runs, off its start-up.)
        if self._ran:
            from sandbox import report as report_mod

            self.warnings.extend(report_mod.secure_logs(self.ws.run_storage))
        n_events = count_events(self.events_file)
        early, self._early = self._early, None
        # the early keeper's pipes were made before its fork: it can hand this step only those
        rfd, wfd = early.take_stderr() if early is not None else os.pipe()
        # A stdout that is a file or a named FIFO is never the step's to hold (needs_relay): it
        # gets a pipe, copied by the launcher like its stderr.
        relay: tuple[int, int] | None = None
        if self._echo:
            from sandbox.kernel.spawning import needs_relay

            relay = early.take_stdout() if early is not None else (os.pipe() if needs_relay(1) else None)
        tail = bytearray()
        # The step's logs are written beside the workspace, out of the step's reach (the run
        # folder is its to write: a native write to logs/<step>.stderr.log interleaved with ours),
        # and placed in logs/ once every process of the step is gone (_place_logs).
        staged = {
            kind: (os.path.join(self.ws.base, f".{name}.{kind}.log"), f"logs/{name}.{kind}.log")
            for kind in ("stderr", "stdout")
        }
        self._staged_logs = [staged["stderr"]]
        out_fd: int | None = relay[1] if relay is not None else None
        if not self._echo:
            out_fd = os.open(staged["stdout"][0], _LOG_FLAGS, 0o644)
            self._staged_logs.append(staged["stdout"])
        echo_to = (self._stderr or sys.stderr.buffer) if self._echo else None
        log = LogFile(staged["stderr"][0], _LOG_FLAGS)
        terminal = TerminalState.save() if self._echo else None  # put back after the step
        try:
            launching = deferred_interrupts(redeliver=False)  # a launch is never cut in half
            try:
                with launching:
                    self._ran = True
                    child = self._start(argv, env, out_fd, wfd, early)
            except UsageError as e:  # the command could not be executed: its step failed, as in a shell
                for fd in (rfd, *(relay[:1] if relay else ())):
                    os.close(fd)
                rec = self._not_started(name, argv, e, log, echo_to)
                log.close()
                self._place_logs()
                return rec
            except BaseException:
                for fd in (rfd, *(relay[:1] if relay else ())):
                    os.close(fd)
                raise
            finally:
                os.close(wfd)
                if out_fd is not None:
                    os.close(out_fd)
            # From the step's end to its record, an interrupt waits: raised in between, it found
            # a run without the record of a step that ran, which is discarded, not exported.
            # Delivered once the record is kept, it ends the run as an interrupt does (exported).
            recording = deferred_interrupts()

            def stop() -> bool:  # a reader that stalls may be left: the run is ending
                return bool(recording.held) or interrupting()

            running = allocate_lock()
            running.acquire()
            # Bare threads: ``threading`` costs an import on the start-up path; these need no more
            # than a lock to be joined.
            stderr_to = Delivery(echo_to, "stderr") if echo_to is not None else None
            # the step's TOSTOP must not stop the launcher's copy (see pump)
            unstoppable = terminal is not None and not terminal.tostop
            pumps = [Pump(rfd, stderr_to, log, tail, running, stop, unstoppable)]
            if relay is not None:
                spill = LogFile(staged["stdout"][0], _LOG_FLAGS, lazy=True)
                pumps.append(Pump(relay[0], Delivery(1, "stdout"), spill, None, running, stop, unstoppable))
            if self._recovery is None:  # the first step runs: the export's clean-up, meanwhile
                from sandbox.finish import prepare_destination

                self._recovery = Background(prepare_destination, self.prep)
            self._clock.lap("launch")
            try:
                result, cut, why = self._wait(
                    child, spec.timeout_s, pending=launching.held
                )
                recording.__enter__()
            finally:
                running.release()
                for p in pumps:
                    p.join()  # what the step wrote is delivered, or kept
        finally:
            log.close()
            if terminal is not None:
                terminal.restore()
                terminal.close()
        for p in pumps:
            self.warnings.extend(p.problems(name))
            if p.log is not log and p.log.used:
                self._staged_logs.append(staged["stdout"])
        try:
            # explaining a huge raw log of the shim's must not hold a Ctrl-C for minutes
            self._stop_explaining = lambda: bool(recording.held)
            rec = self._record(name, argv, result, cut, why, tail, n_events)
        finally:
            self._stop_explaining = None
            recording.__exit__(None, None, None)
        return rec

    def _record(
        self,
        name: str,
        argv: list[str],
        result: ChildResult,
        cut: str | None,
        why: str,
        tail: bytearray,
        n_events: int,
    ) -> StepRecord:
        """Gather what the ended step left (:meth:`_after_step`) and keep its record."""
        self._clock.lap("step")
        self._after_step()
        events = read_events(self.events_file, skip=n_events)
        tree = self._tree
        self._tree = None
        if tree is not None:
            self._ended.append(tree.child)
        from sandbox import report as report_mod

        rec = report_mod.StepRecord(
            argv=argv,
            exit_code=result.exit_code,
            signal=result.signal,
            duration_s=round(result.duration_s, 6),
            peak_rss_bytes=max(result.peak_rss_bytes, tree.peak_rss if tree else 0),
            stderr_tail=tail.decode("utf-8", "replace")[-4000:],
            name=name,
            cpu_s=round(result.cpu_s, 6),
            denied=sum(1 for e in events if e.get("action") == "deny"),
            redirected=sum(1 for e in events if e.get("action") == "redirect"),
            cut=cut,
            cut_reason=why,
        )
        self.steps.append(rec)
        return rec

    def _not_started(
        self, name: str, argv: list[str], err: UsageError, log: LogFile, echo_to: IO[bytes] | None
    ) -> StepRecord:
        """A step whose command could not be executed: 127 when it was not found, else 126 (what
        a shell and ``docker run`` answer), its message in the step's stderr log."""
        import errno

        cause = err.__cause__
        code = (
            EXIT_NOT_FOUND
            if isinstance(cause, OSError) and cause.errno == errno.ENOENT
            else EXIT_CANNOT_EXECUTE
        )
        line = f"tv-sandbox: {err}\n".encode()
        log.write(line)
        if echo_to is not None:
            echo_to.write(line)
            echo_to.flush()
        from sandbox import report as report_mod

        rec = report_mod.StepRecord(
            argv=argv,
            exit_code=code,
            signal=None,
            duration_s=0.0,
            peak_rss_bytes=0,
            stderr_tail=line.decode(),
            name=name,
        )
        self.steps.append(rec)
        return rec

    def _after_step(self) -> None:
        """What a step leaves for the launcher to gather, once every process of it is gone: without
        the overlay, its writes into the workspace skeleton (moved into the run folder: no output
        lost in a fallback); the explain shim's raw lines (decided by the policy: every native
        denial and overlay redirect explained and counted)."""
        from sandbox import report as report_mod

        self.warnings.extend(report_mod.secure_logs(self.ws.run_storage))  # every process of it is gone
        plan = self._plan
        if plan is None or not plan.overlays:
            carried = workspace_mod.consolidate(self.ws, view=plan is None)  # Landlock: not writable
            if carried:
                self.carried.extend(carried)
        native = report_mod.explain_native(
            self.ws.run_storage,
            self.policy,
            self.events_file,
            kernel=plan is not None,
            overlay=plan is not None and bool(plan.overlays),
            stop=self._stop_explaining,
        )
        if native.cut:
            self.warnings.append(
                f"the explanations of logs/{report_mod.NATIVE_RAW} were cut short by an interrupt: "
                f"{native.cut} raw line(s) left unexplained"
            )
        if native.unreadable:
            raw = f"logs/{report_mod.NATIVE_RAW}"
            self.warnings.append(report_mod.unreadable_warning(raw, native.unreadable, "the explanations"))
        if native.unenforced:
            self.warnings.append(
                f"{native.unenforced} write(s) the policy denies reached the host: no kernel layer stopped "
                "them (see host_changes in the report)"
            )
        self._place_logs()

    def _place_logs(self) -> None:
        """Move the step's logs from beside the workspace to their names in ``logs/`` (after
        :func:`~sandbox.report.secure_logs`: a real folder). A file the step left at such a name
        is kept aside as ``<name>.from-step``, with a warning: never silently replaced."""
        from sandbox import report as report_mod

        staged, self._staged_logs = self._staged_logs, []
        for path, rel in staged:
            dest = os.path.join(self.ws.run_storage, rel)
            if os.path.lexists(dest):
                kept = report_mod.move_aside(self.ws.run_storage, rel)
                self.warnings.append(
                    f"a step wrote {rel}, a name reserved for tv-sandbox's own file: kept as {kept}"
                )
            os.rename(path, dest)

    def _start(
        self, argv: list[str], env: dict[str, str], out_fd: int | None, err_fd: int, early: Early | None
    ) -> Child:
        if self._launched is None:

            def meanwhile() -> None:
                # On a thread, once the keeper has the step: the step's output, its timeout and
                # Ctrl-C are watched from its start however long this takes -- the first run
                # after an upgrade builds the module images (~0.5 s), the day's first prunes the
                # cache. (Before the step is handed over it would take the interpreter's lock
                # from the launcher's own work.)
                if self._first is None:  # once a run (a first step not found launches again)
                    self._first = Background(_while_first_step, self.prep, self.policy)

            launched = _launch(
                self.prep,
                self.ws,
                self.policy,
                env,
                argv,
                stdout=out_fd,
                stderr=err_fd,
                meanwhile=meanwhile,
                early=early,
            )
            self._launched, self._plan = launched, launched.plan
            self.missing.update(launched.missing)
            self.warnings.extend(launched.warnings)
            child = launched.child
        else:
            if early is not None:
                early.discard()
            child = start_step(self.ws, env, argv, self._plan, stdout=out_fd, stderr=err_fd)
        with self._lock:
            self._tree = StepTree(child)
        self._contained = self._contained and child.contained
        return child

    def _wait(
        self, child: Child, timeout: float | None, *, pending: Sequence[int] = ()
    ) -> tuple[ChildResult, str | None, str]:
        """Wait for the step; end its tree on a timeout or an interrupt. Returns the result and
        why tv-sandbox cut it (None, ``"timeout"``, ``"interrupted"``; a cancel says itself)."""
        from _thread import allocate_lock

        tree = self._tree
        assert tree is not None
        cut: str | None = None
        why = ""
        ended = allocate_lock()
        ended.acquire()
        timed_out: list[bool] = []

        def watchdog() -> None:
            if timeout is not None and not ended.acquire(timeout=max(timeout, 0.0)):
                timed_out.append(True)
                tree.end()

        try:
            if pending:  # interrupted while the step was being launched: now it can be ended
                raise ending(pending[0])
            start_thread(tree.sample)
            start_thread(watchdog)
            result = child.wait()
        except KeyboardInterrupt as e:  # Ctrl-C (SIGINT) or Interrupted (SIGTERM, our handler)
            self.interrupted = getattr(e, "signum", SIGINT)
            cut = "interrupted"
            why = (
                f"tv-sandbox was interrupted ({signame(self.interrupted)}); the step's processes were ended"
            )
            # A repeated signal changes nothing: the step is being ended already (and without
            # install_interrupt_handlers, raised after this block it would lose the step's record).
            with deferred_interrupts(redeliver=False):
                tree.end(reap=True, signum=self.interrupted)
                result = child.wait()
        finally:
            tree.stop()
            ended.release()
        if cut is None and timed_out:
            cut, why = (
                "timeout",
                f"the step ran longer than its timeout of {timeout:g} s; its processes were ended",
            )
        elif cut is None and self.cancelled:
            cut, why = (
                "cancelled",
                f"the run was cancelled ({self.cancelled}); the step's processes were ended",
            )
        return result, cut, why

    def cancel(self, why: str = "cancelled") -> None:
        """End the running step's whole process tree and refuse later steps. Thread-safe;
        idempotent. The run is exported marked ``cancelled`` when closed."""
        with self._lock:
            if self.cancelled is None:
                self.cancelled = why or "cancelled"
            tree = self._tree
        if tree is not None:
            tree.end()

    def _state(self) -> str:
        if self.interrupted:
            return "interrupted"
        if self.cancelled:
            return "cancelled"
        return "closed" if self._closed is not None else "open"

    # -- the end ---------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """What the run would be exported as now."""
        if self.interrupted:
            return "interrupted"
        if self.cancelled:
            return "cancelled"
        return "succeeded" if self.steps and all(s.exit_code == 0 for s in self.steps) else "failed"

    @property
    def exit_code(self) -> int:
        """The last step's status; 128 + N when signal N interrupted the run."""
        if self.interrupted:
            return 128 + self.interrupted
        return self.steps[-1].exit_code if self.steps else 1

    def close(self, *, status: str | None = None) -> RunOutcome:
        """Report and export the run (once; later calls return the same outcome), then remove the
        workspace. ``status`` overrides the computed one (``failed`` for a run that raised)."""
        if self._closed is not None:
            return self._closed
        with deferred_interrupts():  # an export is short and must not be cut in half by Ctrl-C
            keep = self.prep.request.keep_workspace
            scratch: list[Background] = []

            def clear_scratch() -> None:
                # What no report or export reads goes on another thread during the export: its
                # unlinks and rmdirs wait on the disk, and so do the export's fsyncs -- each
                # thread runs while the other waits. (Beside the report, whose Python holds the
                # lock of the interpreter between short calls, the two would take turns.) What
                # it leaves, Workspace.remove removes below.
                if not keep and self.steps and not scratch:
                    scratch.append(Background(self.ws.remove_scratch))

            try:
                outcome = self._report_and_export(status or self.status, before_export=clear_scratch)
            finally:
                for job in scratch:
                    job.join()
                for child in self._ended:  # their keepers exited meanwhile: reap them
                    child.release()
                if not keep:
                    self.ws.remove()
                self._clock.lap("cleanup")
            self._closed = outcome  # before a signal held meanwhile is delivered: closed once
        return outcome

    def discard(self) -> None:
        """Remove the workspace without reporting or exporting: for a run refused before any of
        its commands ran (an error of tv-sandbox itself writes nothing to the host)."""
        if self._first is not None:  # nothing may be half-written when the launcher exits
            with deferred_interrupts():
                self._first.join()
        if self._closed is None and not self.prep.request.keep_workspace:
            self.ws.remove()
        self._closed = RunOutcome(125, self.prep.destination, {}, None, status="failed")

    def _report_and_export(self, status: str, *, before_export: Callable[[], None]) -> RunOutcome:
        applied = self._launched.child.applied if self._launched else None
        from sandbox import report as report_mod

        if self._staged_logs:  # a step cut short by an error of ours: its logs still go in
            self.warnings.extend(report_mod.secure_logs(self.ws.run_storage))
            self._place_logs()
        layers = report_mod.Layers(
            python_guard=True,
            landlock_abi=getattr(applied, "landlock_abi", 0) if applied else 0,
            mount_namespace=bool(getattr(applied, "namespace", False)) if applied else False,
            overlay=bool(getattr(applied, "overlay", False)) if applied else False,
            readonly_mounts=bool(getattr(applied, "readonly_root", False)) if applied else False,
            missing=dict(self.missing),
        )
        extra: dict[str, Any] = {"gathered_from_workspace": list(self.carried)}  # no overlay: moved in
        if self.interrupted or self.cancelled:
            extra["cut"] = {"status": status, "why": self.cancelled or signame(self.interrupted or 0)}
        exit_code = self.exit_code
        recovered = self._recovery.join() if self._recovery is not None else None
        self.warnings.extend(recovered or ())
        from sandbox.finish import report_and_export

        rep = report_and_export(
            self.prep,
            self.ws,
            self.policy,
            layers=layers,
            steps=self.steps,
            warnings=self.warnings,
            status=status,
            exit_code=exit_code,
            events_file=self.events_file,
            extra=extra,
            clock=self._clock,
            by_link=self._contained,
            record=self._first.join() if self._first is not None else None,
            recovered=recovered is not None,
            before_export=before_export,
        )
        req, ws = self.prep.request, self.ws
        kept = ws.base if req.keep_workspace else None
        if kept:  # a kept workspace is the user's now: never swept as a dead launcher's leftover
            workspace_mod.keep(ws)
        return RunOutcome(
            exit_code,
            self.prep.destination,
            rep,
            kept,
            self._clock.laps,
            status=status,
            warnings=list(self.warnings),
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closed is not None:
            return
        if exc is None:
            self.close()
            return
        if not self.steps:
            # refused or broken before any command ran (kernel layer required, a launch that failed,
            # an interrupt): an error of tv-sandbox itself writes nothing to the host
            self.discard()
            return
        if isinstance(exc, KeyboardInterrupt) and not self.interrupted:
            self.interrupted = getattr(exc, "signum", SIGINT)
        try:
            outcome = self.close(status=None if (self.interrupted or self.cancelled) else "failed")
        except Exception as e:  # the original error matters more; the export's is attached
            exc.add_note(f"tv-sandbox: the run could not be exported either: {e}")
            return
        if isinstance(exc, KeyboardInterrupt):  # the caller says where the run went (the CLI does)
            exc.outcome = outcome  # type: ignore[attr-defined]


def _while_first_step(prep: Prepared, policy: Policy) -> bytes:
    from sandbox.finish import while_first_step

    return while_first_step(prep, policy)
