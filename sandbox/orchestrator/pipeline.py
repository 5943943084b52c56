"""``tv-sandbox pipeline``: a meta profile's sleeves on Ray, each one sandboxed multi-step run.

:func:`prepare_pipeline` is the host's preflight, before Ray starts and without writing anything:
RUN_ID, host layout and policy, manifest (whole), meta profile and every sleeve's profile, the
scanners' outputs under ``export/<RUN_ID>/``, and the existing exports (``--overwrite``,
``--resume``). :func:`run_pipeline` then dispatches one actor per sleeve (at most
``max_parallel`` at once), shows progress, and writes the summary last.

Folder layout of a pipeline run on the host (``<runs>`` is the policy's, by default
``artifacts/summaries/runs``)::

    <runs>/<RUN_ID>/
        <sleeve id>/               a complete run folder, exported atomically when the sleeve ended:
            manifest.json          its own verifying manifest (status succeeded/failed/cancelled)
            sandbox_report.json    steps, denials, redirects, layers
            config/ data/ reports/ logs/ ...
        pipeline_summary.json      written last: every sleeve's status, durations, counts, export
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from sandbox import workspace as workspace_mod
from sandbox.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    PreflightError,
    UsageError,
    printable,
)
from sandbox.orchestrator.manifest import (
    MANIFEST_DEFAULT,
    Manifest,
    MetaProfile,
    Sleeve,
    check_scans,
    load_manifest,
)
from sandbox.orchestrator.sleeve import SleeveResult, SleeveTask, StepResult

SUMMARY_NAME = "pipeline_summary.json"
_CANCEL_WAIT_S = 60.0  # how long a cancelled sleeve may take to end its steps and export


@dataclass
class PipelineRequest:
    """What ``tv-sandbox pipeline`` was asked to do."""

    host: str
    meta: str
    run_id: str
    manifest: str | None = None  # default: HOST/configs/manifest.json
    address: str | None = None  # attach to this Ray cluster instead of starting one
    max_parallel: int | None = None  # default: the machine's CPU count
    step_timeout: float | None = None
    mode: str = "enforce"
    kernel: str = "auto"
    overwrite: bool = False
    resume: bool = False
    policy_profile: str = "production"
    policy_file: str | None = None
    workspace_base: str | None = None


@dataclass
class PreparedPipeline:
    request: PipelineRequest
    host: str
    manifest: Manifest
    meta: MetaProfile
    root: str  # <host>/<runs>/<RUN_ID>
    to_run: list[Sleeve]
    kept: list[SleeveResult] = field(default_factory=list)  # --resume: verified earlier exports
    warnings: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    run_id: str
    meta: str
    status: str  # succeeded / failed / cancelled
    exit_code: int
    sleeves: list[SleeveResult]
    summary: str | None  # the summary file, when written
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        """The document ``--json`` prints (and nothing else on stdout)."""
        keys = ("id", "status", "exit_code", "duration_s", "denied", "redirected", "export")
        return {
            "run_id": self.run_id,
            "status": self.status,
            "sleeves": [{k: getattr(s, k) for k in keys} for s in self.sleeves],
        }


def _kept_result(sleeve: Sleeve, dest: str) -> SleeveResult | None:
    """The result of an earlier export of ``sleeve`` when it succeeded and still verifies."""
    from sandbox.export import verify
    from sandbox.export.manifest import read_manifest

    try:
        man = read_manifest(dest)
    except (OSError, ValueError):
        return None
    if man.get("status") != "succeeded" or verify(dest):
        return None
    try:
        with open(os.path.join(dest, "sandbox_report.json"), encoding="utf-8") as fh:
            rep = json.load(fh)
    except (OSError, ValueError):
        rep = {}
    by = rep.get("events", {}).get("by_action", {})
    steps = [
        StepResult(str(s.get("name", "")), int(s.get("exit_code", 0)), float(s.get("duration_s", 0.0)))
        for s in rep.get("steps", [])
    ]
    return SleeveResult(
        sleeve.id,
        sleeve.profile,
        "succeeded",
        int(man.get("exit_code") or 0),
        round(sum(s.duration_s for s in steps), 3),
        int(by.get("deny", 0)),
        int(by.get("redirect", 0)),
        dest,
        steps,
        resumed=True,
    )


def prepare_pipeline(req: PipelineRequest) -> PreparedPipeline:
    """The host's preflight: everything checked before Ray starts; nothing written."""
    from sandbox.policy import MODES
    from sandbox.runner import (
        KERNEL_CHOICES,
        MAX_RUN_ID_LEN,
        RunRequest,
        check_workspace_base,
        preflight,
        valid_run_id,
    )

    if not valid_run_id(req.run_id):
        raise UsageError(
            f"invalid RUN_ID {req.run_id!r}: use letters, digits, '_' and '-' only, at most {MAX_RUN_ID_LEN}"
        )
    if req.mode not in MODES:
        raise UsageError(f"unknown mode {req.mode!r}: use one of {', '.join(MODES)}")
    if req.kernel not in KERNEL_CHOICES:
        raise UsageError(f"unknown kernel setting {req.kernel!r}: use one of {', '.join(KERNEL_CHOICES)}")
    if req.max_parallel is not None and req.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, not {req.max_parallel}")
    if req.step_timeout is not None and not req.step_timeout > 0:
        raise UsageError(f"--step-timeout must be a positive number of seconds, not {req.step_timeout}")
    if req.overwrite and req.resume:
        raise UsageError(
            "--overwrite reruns every sleeve, --resume only the missing or failed ones: pick one"
        )
    # the host, its layout and the policy, as every sleeve's run will see them
    prep = preflight(
        RunRequest(
            host=req.host,
            run_id=req.run_id,
            argv=[],
            profile=req.policy_profile,
            policy_file=req.policy_file,
            mode=req.mode,
            kernel=req.kernel,
            overwrite=True,  # the pipeline's own folder is checked below
            workspace_base=req.workspace_base,
        )
    )
    host = prep.host
    ray_tmp = os.environ.get("RAY_TMPDIR")
    if req.address is None and ray_tmp:  # an embedded Ray's session goes there: never into the host
        check_workspace_base(
            None, host, workspace_mod.mount_targets(host, prep.spec.layout), [("$RAY_TMPDIR", ray_tmp)]
        )
    workspace_mod.check_makeable(req.workspace_base)  # each sleeve makes its own, in its worker
    manifest = load_manifest(req.manifest or os.path.join(host, MANIFEST_DEFAULT))
    meta = manifest.resolve(req.meta)
    layout = prep.spec.layout
    check_scans(
        meta, os.path.join(host, layout.exports, req.run_id), req.run_id, manifest.scan_command, host=host
    )
    root = os.path.join(host, layout.runs, req.run_id)
    if os.path.lexists(root) and not os.path.isdir(root):
        raise PreflightError(f"{root} exists and is not a folder: use another --run-id")
    if os.path.isfile(os.path.join(root, "manifest.json")):
        raise PreflightError(
            f"{root} is the export of a single `tv-sandbox run`, not of a pipeline: use another --run-id"
        )
    to_run: list[Sleeve] = []
    kept: list[SleeveResult] = []
    existing = [s.id for s in meta.sleeves if os.path.lexists(os.path.join(root, s.id))]
    if existing and not (req.overwrite or req.resume):
        raise PreflightError(
            f"run {req.run_id} already has exported sleeves in {root} ({', '.join(existing)}): pass --resume "
            "to rerun only the missing or failed ones, --overwrite to rerun all, or use another --run-id"
        )
    for s in meta.sleeves:
        done = _kept_result(s, os.path.join(root, s.id)) if req.resume else None
        if done is None:
            to_run.append(s)
        else:
            kept.append(done)
    return PreparedPipeline(req, host, manifest, meta, root, to_run, kept, list(prep.warnings))


def _task(pp: PreparedPipeline, sleeve: Sleeve) -> SleeveTask:
    req = pp.request
    return SleeveTask(
        host=pp.host,
        run_id=req.run_id,
        sleeve_id=sleeve.id,
        profile=sleeve.profile,
        meta=pp.meta.name,
        destination=os.path.join(pp.root, sleeve.id),
        steps=sleeve.steps,
        settings=dict(sleeve.settings),
        policy_profile=req.policy_profile,
        policy_file=req.policy_file,
        mode=req.mode,
        kernel=req.kernel,
        step_timeout=req.step_timeout,
        workspace_base=req.workspace_base,
        manifest_source=pp.manifest.source,
    )


class _Terminated(BaseException):
    """SIGTERM on the driver: handled as Ctrl-C, exit 143."""


class _SigtermFlag:
    """SIGTERM, noted by the handler and raised by the dispatch loop as :class:`_Terminated`.

    Raising from the handler itself is not safe here: the signal usually lands while the main
    thread is inside Ray's Cython calls (``ray.wait``), which then fail with a ``SystemError``.
    """

    def __init__(self) -> None:
        self.count = 0
        self.seen = 0

    def handler(self, signum: int, frame: Any) -> None:
        self.count += 1

    def check(self) -> None:
        if self.count > self.seen:
            self.seen = self.count
            raise _Terminated()


@contextmanager
def _sigterm_noted() -> Iterator[_SigtermFlag]:
    flag = _SigtermFlag()
    try:
        previous = signal.signal(signal.SIGTERM, flag.handler)
    except ValueError:  # not the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_summary(pp: PreparedPipeline, result: PipelineResult, started: float) -> str:
    """``<runs>/<RUN_ID>/pipeline_summary.json``, atomically (temp file, fsync, rename), last."""
    doc = {
        "schema": "tv-sandbox-pipeline",
        "schema_version": 1,
        "run_id": result.run_id,
        "meta_profile": result.meta,
        "manifest": pp.manifest.source,
        "status": result.status,
        "exit_code": result.exit_code,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": result.duration_s,
        "mode": pp.request.mode,
        "policy_profile": pp.request.policy_profile,
        "sleeves": [
            {**s.to_dict(), "export": os.path.relpath(s.export, pp.root) if s.export else None}
            for s in result.sleeves
        ],
    }
    os.makedirs(pp.root, exist_ok=True)
    path = os.path.join(pp.root, SUMMARY_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(pp.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def _crashed(sleeve: Sleeve, error: BaseException, t0: float) -> SleeveResult:
    text = str(error).strip().splitlines()
    return SleeveResult(
        sleeve.id,
        sleeve.profile,
        "failed",
        None,
        round(time.monotonic() - t0, 3),
        error=f"the sleeve's worker failed: {text[-1] if text else type(error).__name__}",
    )


def _dispatch(
    pp: PreparedPipeline, progress: Any, max_parallel: int, sigterm: _SigtermFlag
) -> tuple[list[SleeveResult], str | None]:
    """Run the sleeves; return their results and how the run was cut (None, "cancelled", "terminated")."""
    import ray

    from sandbox.orchestrator.sleeve import actor_class

    worker_cls = actor_class()
    pending = deque(pp.to_run)
    running: dict[Any, tuple[Sleeve, Any, float]] = {}  # work ref -> sleeve, actor, start
    results: dict[str, SleeveResult] = {}
    cut: str | None = None

    def collect(ref: Any) -> None:
        sleeve, actor, t0 = running[ref]
        try:
            res = ray.get(ref)
        except Exception as e:  # the actor died (worker crash, OOM kill): no export from it
            res = _crashed(sleeve, e, t0)
        if res.error:  # may name a file of the sleeve's steps: shown on the terminal, one line
            res.error = printable(res.error)
        del running[ref]  # only now: a Ctrl-C during the get leaves it to be cancelled
        results[sleeve.id] = res
        progress.done(res)
        ray.kill(actor, no_restart=True)

    try:
        while pending or running:
            sigterm.check()
            while pending and len(running) < max_parallel:
                sleeve = pending.popleft()
                actor = worker_cls.options(name=None, num_cpus=1).remote()
                running[actor.work.remote(_task(pp, sleeve))] = (sleeve, actor, time.monotonic())
                progress.started(sleeve.id)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                collect(ref)
            polls = {ref: running[ref][1].progress.remote() for ref in running}
            for ref, poll in polls.items():
                try:
                    info = ray.get(poll, timeout=2.0)
                except Exception:  # busy or gone: the next round or collect() will tell
                    continue
                progress.update(running[ref][0].id, info)
    except (KeyboardInterrupt, _Terminated) as e:
        cut = "terminated" if isinstance(e, _Terminated) else "cancelled"
        progress.note(f"{'SIGTERM' if cut == 'terminated' else 'Ctrl-C'}: cancelling the running sleeves...")
        for _sleeve, actor, _t0 in running.values():
            # not ray.cancel(): a threaded actor's running method is not interrupted by it, and its
            # result -- the exported, cancelled run -- would be lost to TaskCancelledError
            actor.cancel.remote("cancelled" if cut == "cancelled" else "interrupted")
        deadline = time.monotonic() + _CANCEL_WAIT_S
        try:
            while running and time.monotonic() < deadline:
                sigterm.check()  # a second signal: end the workers now
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    collect(ref)
        except (KeyboardInterrupt, _Terminated):
            progress.note("interrupted again: ending the workers now")
        for ref, (sleeve, actor, t0) in list(running.items()):
            ray.kill(actor, no_restart=True)  # the steps die with their launcher (parent-death signal)
            results[sleeve.id] = SleeveResult(
                sleeve.id,
                sleeve.profile,
                "cancelled",
                None,
                round(time.monotonic() - t0, 3),
                error="ended before its export",
            )
            running.pop(ref)
        for sleeve in pending:
            results[sleeve.id] = SleeveResult(
                sleeve.id, sleeve.profile, "cancelled", None, 0.0, error="not started"
            )
    order = [s.id for s in pp.meta.sleeves]
    return [results[i] for i in order if i in results], cut


def run_pipeline(
    pp: PreparedPipeline, *, progress_mode: str = "auto", stream: IO[str] | None = None
) -> PipelineResult:
    """Dispatch the prepared sleeves on Ray, write the summary last, return the result.

    ``progress_mode``: ``auto`` (rich on a terminal, else plain lines), ``rich``, ``plain``, ``none``.
    Ctrl-C (and SIGTERM) cancels: every running step tree is ended, finished sleeves stay exported,
    running ones are exported marked cancelled, unstarted ones are absent; exit 130 (143).
    """
    from sandbox.orchestrator.cluster import ray_session
    from sandbox.orchestrator.progress import make_progress

    req = pp.request
    out = stream or sys.stdout
    started = time.time()
    t0 = time.monotonic()
    max_parallel = req.max_parallel or max(1, os.cpu_count() or 1)
    cut: str | None = None
    ran: list[SleeveResult] = []
    try:
        # the handler goes in after ray.init, which installs its own (log, exit 1) in the driver
        with (
            ray_session(req.address, num_cpus=max(max_parallel, os.cpu_count() or 1)),
            _sigterm_noted() as sigterm,
            make_progress([s.id for s in pp.to_run], mode=progress_mode, stream=out) as progress,
        ):
            if pp.to_run:
                ran, cut = _dispatch(pp, progress, max_parallel, sigterm)
    except (KeyboardInterrupt, _Terminated) as e:  # during Ray's start or shutdown
        cut = cut or ("terminated" if isinstance(e, _Terminated) else "cancelled")
    by_id = {r.id: r for r in [*pp.kept, *ran]}
    sleeves = [by_id[s.id] for s in pp.meta.sleeves if s.id in by_id]
    for s in pp.meta.sleeves:  # cut before dispatch: never started
        if s.id not in by_id:
            sleeves.append(SleeveResult(s.id, s.profile, "cancelled", None, 0.0, error="not started"))
    if cut:
        status, code = "cancelled", EXIT_TERMINATED if cut == "terminated" else EXIT_INTERRUPTED
    elif all(s.status == "succeeded" for s in sleeves):
        status, code = "succeeded", EXIT_OK
    else:
        status, code = "failed", EXIT_FAILED  # the pipeline ran; a sleeve did not succeed
    result = PipelineResult(
        req.run_id, pp.meta.name, status, code, sleeves, None, round(time.monotonic() - t0, 3)
    )
    result.summary = _write_summary(pp, result, started)
    return result
