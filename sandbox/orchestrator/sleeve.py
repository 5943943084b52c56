"""One sleeve: its steps as one sandboxed multi-step run, inside its own Ray actor.

:class:`SleeveWorker` is a plain class (testable without Ray); :func:`actor_class` wraps it with
``ray.remote`` as a *threaded* actor (``max_concurrency``) so that :meth:`SleeveWorker.cancel` and
:meth:`SleeveWorker.progress` run while :meth:`SleeveWorker.work` is busy in a step -- Ray does not
interrupt a running method of a threaded actor (``ray.cancel`` only sets a flag), so cancelling is
the run's own job: ``Run.cancel`` ends the running step's whole process tree and refuses the rest.

Each actor opens its own workspace (a fresh private folder per run; never Ray's ``working_dir``,
which every worker of a node shares), and its run folder is exported atomically by ``Run.close`` as
soon as the sleeve ends -- failed and cancelled sleeves too, marked so, with their logs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.errors import SandboxError
from sandbox.orchestrator.manifest import Step

CONFIG_NAME = "config/pipeline.json"  # in the run folder: what this sleeve runs (the scripts read it)
MAX_CONCURRENCY = 3  # work + cancel + progress


@dataclass(frozen=True)
class SleeveTask:
    """Everything a worker needs to run one sleeve (picklable; built on the driver)."""

    host: str
    run_id: str
    sleeve_id: str
    profile: str  # the atomic profile of the manifest
    meta: str
    destination: str  # <host>/<runs>/<RUN_ID>/<sleeve id>
    steps: tuple[Step, ...]
    settings: dict[str, Any]
    policy_profile: str = "production"  # production / development (TV_PROFILE)
    policy_file: str | None = None
    mode: str = "enforce"
    kernel: str = "auto"
    step_timeout: float | None = None  # a cap on every step's timeout_s
    workspace_base: str | None = None
    manifest_source: str = ""


@dataclass
class StepResult:
    name: str
    exit_code: int
    duration_s: float
    signal: int | None = None
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    cut: str | None = None


@dataclass
class SleeveResult:
    """What became of a sleeve; ``export`` is its exported run folder (absolute), if any."""

    id: str
    profile: str
    status: str  # succeeded / failed / cancelled / interrupted
    exit_code: int | None
    duration_s: float
    denied: int = 0
    redirected: int = 0
    export: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None  # an error of tv-sandbox itself (the run could not start or export)
    resumed: bool = False  # kept from an earlier, verified export (--resume)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_timeout(step: Step, cap: float | None) -> float | None:
    """The step's own ``timeout_s``, capped by ``--step-timeout``."""
    limits = [t for t in (step.timeout_s, cap) if t is not None]
    return min(limits) if limits else None


def _counts(report: dict[str, Any]) -> tuple[int, int]:
    by = report.get("events", {}).get("by_action", {})
    return int(by.get("deny", 0)), int(by.get("redirect", 0))


class SleeveWorker:
    """The body of a sleeve actor. ``work`` runs once; ``cancel`` and ``progress`` from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: Any = None
        self._cancelled: str | None = None
        self._step: str | None = None
        self._index = 0
        self._of = 0
        self._t0 = time.monotonic()
        self._step_t0 = self._t0

    def pid(self) -> int:
        return os.getpid()

    def progress(self) -> dict[str, Any]:
        """The running step (name, 1-based index, count) and elapsed seconds."""
        now = time.monotonic()
        return {
            "step": self._step,
            "index": self._index,
            "of": self._of,
            "elapsed": now - self._t0,
            "step_elapsed": now - self._step_t0 if self._step else 0.0,
            "cancelled": self._cancelled is not None,
        }

    def cancel(self, reason: str = "cancelled") -> None:
        """End the running step's process tree and refuse the next steps (thread-safe, idempotent)."""
        with self._lock:
            if self._cancelled is None:
                self._cancelled = reason
            run = self._run
        if run is not None:
            run.cancel(reason)

    def work(self, task: SleeveTask) -> SleeveResult:
        from sandbox._paths import write_into
        from sandbox._record import replace
        from sandbox.run import Run, RunClosed, StepSpec
        from sandbox.runner import RunRequest, preflight

        self._t0 = time.monotonic()
        self._of = len(task.steps)
        result = SleeveResult(task.sleeve_id, task.profile, "failed", None, 0.0)
        try:
            prep = preflight(
                RunRequest(
                    host=task.host,
                    run_id=task.run_id,
                    argv=[],
                    profile=task.policy_profile,
                    policy_file=task.policy_file,
                    mode=task.mode,
                    kernel=task.kernel,
                    overwrite=True,  # the driver's preflight decided (--overwrite / --resume)
                    workspace_base=task.workspace_base,
                )
            )
            prep = replace(prep, destination=task.destination)
            with self._lock:
                if self._cancelled is not None:  # cancelled before it started: nothing to export
                    result.status = "cancelled"
                    return result
                # echo=False: the steps' output stays in the run's logs/, not in Ray's worker logs
                run = Run.open(prep, echo=False)
                self._run = run
        except SandboxError as e:
            result.error = str(e)
            result.duration_s = round(time.monotonic() - self._t0, 3)
            return result
        status: str | None = None
        try:
            run_dir = run.env["TV_RUN_DIR"]
            config = {
                "meta": task.meta,
                "sleeve": task.sleeve_id,
                "profile": task.profile,
                "run_id": task.run_id,
                "manifest": task.manifest_source,
                "settings": task.settings,
                "steps": [{"name": s.name, "run": s.command, "timeout_s": s.timeout_s} for s in task.steps],
            }
            write_into(run.ws.run_storage, CONFIG_NAME, json.dumps(config, indent=1).encode())
            path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
            for i, step in enumerate(task.steps, 1):
                if self._cancelled is not None:
                    status = "cancelled"
                    break
                self._step, self._index, self._step_t0 = step.name, i, time.monotonic()
                env = {
                    "PATH": path,  # a bare `python` in a shell step: the pipeline's interpreter
                    **step.env,
                    "PIPELINE_CONFIG": os.path.join(run_dir, CONFIG_NAME),
                    "PIPELINE_SLEEVE": task.sleeve_id,
                    "PIPELINE_PROFILE": task.profile,
                }
                run_arg: list[str] | str = step.run if isinstance(step.run, str) else list(step.run)
                spec = StepSpec(
                    run_arg, name=step.name, env=env, timeout_s=step_timeout(step, task.step_timeout)
                )
                try:
                    rec = run.step(spec)
                except RunClosed:  # cancelled between two steps
                    status = "cancelled"
                    break
                result.steps.append(
                    StepResult(
                        name=step.name,
                        exit_code=rec.exit_code,
                        duration_s=round(rec.duration_s, 3),
                        signal=rec.signal,
                        cpu_s=round(rec.cpu_s, 3),
                        peak_rss_bytes=rec.peak_rss_bytes,
                        cut=rec.cut,
                    )
                )
                if rec.exit_code != 0 or rec.cut:
                    result.failed_step = step.name
                    break
        except SandboxError as e:  # a step could not start (kernel layer required but refused...)
            result.error = str(e)
            status = "failed"
        except BaseException:
            run.close(status="failed")  # exported, marked failed, with its logs
            raise
        finally:
            self._step = None
        try:
            outcome = run.close(status=status)
        except SandboxError as e:  # the export failed: the run folder is not on the host
            result.error = str(e)
            result.duration_s = round(time.monotonic() - self._t0, 3)
            return result
        result.status = outcome.status
        result.exit_code = outcome.exit_code
        result.export = outcome.destination
        result.denied, result.redirected = _counts(outcome.report)
        result.duration_s = round(time.monotonic() - self._t0, 3)
        return result


def actor_class() -> Any:
    """:class:`SleeveWorker` as a Ray actor class (imports ray)."""
    import ray

    remote: Any = ray.remote  # its overloads do not type the actor options
    return remote(max_concurrency=MAX_CONCURRENCY)(SleeveWorker)
