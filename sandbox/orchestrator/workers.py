"""Sandboxed Ray workers: code that runs *inside* an actor or task, held like a step.

::

    with sandboxed_run(root=HOST, run_id="R7") as run:
        actor = Sleeve.options(runtime_env=run.runtime_env).remote()
        ray.get(actor.work.remote())
    print(run.outcome.status, run.outcome.destination)   # exported atomically on exit

Landlock and ``unshare`` cannot be applied to a running worker (it has threads), so the sandbox
is applied by the command that *starts* it: ``runtime_env["py_executable"]`` is
``tv-sandbox worker --run-state FILE -- <python>`` (:mod:`sandbox.worker_launch`), which joins the
run's mount namespace and Landlocks the process before ``exec``'ing the interpreter, from its first
instruction. What lives where:

- **driver** (this module): preflight, the run's workspace, the bound policy, the kernel layer
  decided once (with the same fall-back as ``tv-sandbox run``), a *holder* process that keeps the
  run's mount namespace (overlay of the host, run folder as upper layer, read-only mounts), the
  run state file, and on exit: end the run's actors and workers, report, export;
- **launcher** (in the worker's process, before ``exec``): join the namespace, Landlock;
- **setup hook** (in the worker, after Ray connected it): the Python guard with the run's policy.

What Ray itself writes from inside a worker (measured with strace, Ray 2.60, see README "Ray"):
its session's ``logs/`` folder (``python-core-worker-*.log``, ``worker-*.out|err``, ``events/``,
``export_events/``: created by the worker) -- writable; and a ``chmod 0777`` of the Ray temp dir,
the session dir and its ``sockets``, ``logs``, ``logs/old``, ``runtime_resources`` folders -- so
the Ray temp dir (``/tmp/ray``) stays on a writable *mount*, but Landlock allows no write in it
outside ``logs/``. Sockets are only connected to, the object store is shared memory passed as
descriptors (memfd), spilling is done by Ray's own IO workers (not sandboxed). Everything else --
the host's lakehouse and exports, every other host path -- is read-only.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sandbox import report as report_mod
from sandbox import workspace as workspace_mod
from sandbox.errors import KernelUnavailable
from sandbox.events import EVENTS_NAME
from sandbox.guard.bootstrap import ENV_EVENTS, ENV_OVERLAY, ENV_POLICY
from sandbox.kernel.plan import KernelPlan, devices_beside
from sandbox.orchestrator._leftovers import _end_namespace, _hold_namespaces
from sandbox.policy import Policy
from sandbox.resolved import save_resolved
from sandbox.runner import (
    POLICY_FILE,
    Prepared,
    RunOutcome,
    RunRequest,
    kernel_plan,
    preflight,
)
from sandbox.worker_launch import ENV_RAY_SETUP_HOOK, SETUP_HOOK, WORKERS_DIR, start_time, write_state
from sandbox.workspace import Workspace

__all__ = ["SETUP_HOOK", "SandboxedRun", "sandboxed_run"]

STATE_FILE = "worker_state.marshal"  # in the workspace base, outside every writable root
_CRASH_REASONS = {"WORKER_DIED", "NODE_DIED", "OWNER_DIED"}
#: The report's ``missing`` for the workers' network (docs/security.md).
_WORKERS_NETWORK = (
    "sandboxed Ray workers keep the machine's network: they talk to their cluster (and can submit "
    "tasks to it, which run unsandboxed)"
)


@dataclass
class _Kernel:
    kind: str  # namespace | landlock | off
    landlock: list[str] = field(default_factory=list)  # the workers' Landlock writable roots
    holder: Any = None  # sandbox.kernel.Child keeping the run's mount namespace
    holder_stdin: int | None = None  # closing it ends the holder
    #: (st_dev, st_ino) of the run's mount namespace and, when it has one, of its user namespace:
    #: what makes a process one of the run's when it left the workers' process groups
    namespaces: tuple[tuple[int, int], tuple[int, int] | None] | None = None
    #: descriptors of those namespaces, held until the close has ended their processes: a freed
    #: namespace's number is the kernel's to give to the next one made on the machine (another
    #: run's, a container's), whose processes the close would then SIGKILL as the run's
    namespace_fds: list[int] = field(default_factory=list)
    layers: report_mod.Layers = field(default_factory=report_mod.Layers)


class SandboxedRun:
    """One run whose Ray workers are sandboxed. Build it with :func:`sandboxed_run`."""

    def __init__(
        self,
        prep: Prepared,
        ws: Workspace,
        policy: Policy,
        kernel: _Kernel,
        env: dict[str, str],
        ray_dirs: dict[str, str],
        node_id: str,
    ) -> None:
        self.prep = prep
        self.workspace = ws
        self.policy = policy
        self.run_id = prep.request.run_id
        self.destination = prep.destination
        self.warnings = prep.warnings
        self.env = env
        self.ray_dirs = ray_dirs
        self.node_id = node_id
        self.outcome: RunOutcome | None = None  # status, destination, report... after the run
        self.opened = time.monotonic()
        self._kernel = kernel
        self._state_file = os.path.join(ws.base, STATE_FILE)
        self._workers_dir = os.path.join(ws.base, WORKERS_DIR)
        launcher = os.path.join(os.path.dirname(sys.executable), "tv-sandbox")
        cmd = [launcher] if os.access(launcher, os.X_OK) else [sys.executable, "-m", "sandbox"]
        cmd += ["worker", "--run-state", self._state_file, "--", sys.executable]
        self._py_executable = " ".join(shlex.quote(c) for c in cmd)  # Ray puts it in a bash command

    @property
    def runtime_env(self) -> dict[str, Any]:
        """For ``.options(runtime_env=...)``: a fresh dict each time (Ray edits the one it gets)."""
        return {
            "py_executable": self._py_executable,
            "worker_process_setup_hook": SETUP_HOOK,
            # what ray.init does with a job's hook; the launcher sets it again in any case
            "env_vars": {**self.env, ENV_RAY_SETUP_HOOK: SETUP_HOOK},
        }

    @property
    def options(self) -> dict[str, Any]:
        """``runtime_env`` plus a hard affinity to the driver's node, where the run folder is."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {
            "runtime_env": self.runtime_env,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=self.node_id, soft=False),
        }

    @property
    def run_storage(self) -> str:
        """Where the run folder is while the run is open (what is exported on exit)."""
        return self.workspace.run_storage

    @property
    def layers(self) -> report_mod.Layers:
        return self._kernel.layers

    def worker_pids(self) -> list[int]:
        """The live workers started for this run (pid and start time both match)."""
        pids = []
        try:
            names = os.listdir(self._workers_dir)
        except OSError:
            return []
        for name in names:
            try:
                with open(os.path.join(self._workers_dir, name)) as fh:
                    pid_s, start = fh.read().split()
            except (OSError, ValueError):
                continue
            if start_time(int(pid_s)) == start:
                pids.append(int(pid_s))
        return sorted(pids)

    def _started_pids(self) -> set[int]:
        try:
            return {int(n) for n in os.listdir(self._workers_dir) if n.isdigit()}
        except OSError:
            return set()

    def _actors(self) -> list[dict[str, Any]]:
        """The GCS's record of every actor whose worker this run started."""
        import ray

        ours = self._started_pids()
        table = ray._private.state.actors()  # the GCS actor table (works without the dashboard)
        return [a for a in table.values() if a.get("Pid") in ours and a["Address"]["NodeID"] == self.node_id]

    def end_workers(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """End every actor and worker of this run; return the actors' records, each with its
        ``crashed`` verdict (taken before anything is ended here).

        Actors are killed as ``ray.kill(actor, no_restart=True)`` does (by id: handles may be
        anywhere); then every worker process still alive -- idle task workers included -- gets
        SIGKILL on its process group, as the raylet itself ends a worker, so what a task started
        in the background goes with it.
        """
        from ray._raylet import ActorID

        records = []
        for a in self._actors():
            crashed, why = _crash(a)
            records.append(
                {
                    "actor_id": a["ActorID"],
                    "class": a["ActorClassName"],
                    "pid": a["Pid"],
                    "state": a["State"],
                    "crashed": crashed,
                    "death": why,
                }
            )
            if a["State"] != "DEAD":
                with contextlib.suppress(Exception):  # already gone between the read and the kill
                    _driver().core_worker.kill_actor(ActorID.from_hex(a["ActorID"]), True)
        killed = {a["pid"] for a in records if a["state"] != "DEAD"}
        deadline = time.monotonic() + timeout_s
        grace = time.monotonic() + min(3.0, timeout_s / 2)
        while killed & set(self.worker_pids()) and time.monotonic() < grace:
            time.sleep(0.02)  # the raylet ends a killed actor's worker itself: let it, quietly
        pids = self.worker_pids()
        for pid in pids:
            try:  # Ray starts each worker in its own process group: end the group
                pgid = os.getpgid(pid)
                if pgid == pid:
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while pids and time.monotonic() < deadline:
            pids = self.worker_pids()
            if pids:
                time.sleep(0.02)
        if pids:
            raise RuntimeError(f"workers {pids} of run {self.run_id} did not end within {timeout_s:.0f} s")
        return records


def _driver() -> Any:
    """Ray's driver-side worker object (private API, typed loosely on purpose)."""
    import ray

    return ray._private.worker.global_worker


def _crash(actor: dict[str, Any]) -> tuple[bool, str]:
    """Did the actor's worker die of something other than an intended end (ray.kill, scope)?"""
    cause = actor.get("DeathCause")
    if actor.get("State") != "DEAD" or cause is None:
        return False, ""
    which = cause.WhichOneof("context")
    if which is None:
        return False, ""
    ctx = getattr(cause, which)
    if which == "actor_died_error_context":
        from ray.core.generated import common_pb2

        reason = getattr(common_pb2, "ActorDiedErrorContext").Reason.Name(ctx.reason)  # noqa: B009  # untyped
        return reason in _CRASH_REASONS, f"{reason}: {ctx.error_message}"[:500]
    return True, f"{which}: {getattr(ctx, 'error_message', '')}"[:500]


def _ray_dirs() -> tuple[dict[str, str], str]:
    import ray

    if not ray.is_initialized():
        ray.init()  # what Ray does on the first .remote(); call ray.init yourself to configure it
    node = _driver().node
    dirs = {
        "temp": os.path.realpath(node.get_temp_dir_path()),
        "session": os.path.realpath(node.get_session_dir_path()),
        "logs": os.path.realpath(node.get_logs_dir_path()),
    }
    return dirs, ray.get_runtime_context().get_node_id()


def _probe_true() -> list[str]:
    for p in ("/bin/true", "/usr/bin/true"):
        if os.access(p, os.X_OK):
            return [p]
    return [sys.executable, "-S", "-c", "pass"]


def _open_kernel(prep: Prepared, ws: Workspace, policy: Policy, ray_dirs: dict[str, str]) -> _Kernel:
    """Decide the run's kernel layer once, as ``tv-sandbox run`` does for a step: the namespace
    plan (a holder process keeps it), else Landlock alone, else the guard alone with a warning --
    or, when the kernel layer is required, refuse."""
    from sandbox.kernel import landlock, spawn

    if prep.kernel == "off":
        ws.mirror()
        return _Kernel("off", layers=report_mod.Layers(missing={"kernel": "turned off"}))
    refusals: list[str] = []
    plan = kernel_plan(ws, prep.request.mode, policy, namespace=True)
    # The holder keeps the view; Ray's temp dir stays a writable *mount* there (Ray chmods its
    # folders at start-up), writes in it are left to the workers' Landlock (logs/ only).
    holder_plan = KernelPlan(
        writable=(*plan.writable, ray_dirs["temp"]),
        overlays=plan.overlays,
        binds=plan.binds,
        readonly_root=True,
        landlock=False,
        namespace=True,
    )
    # The holder is `cat` reading a pipe only we write to: it ends when the run closes it (or
    # when the thread that opened the run dies: spawn's parent-death signal).
    rfd, wfd = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        holder = spawn(["cat"], env={"PATH": os.defpath}, cwd="/", plan=holder_plan, stdin=rfd, stdout=null)
    except KernelUnavailable as e:
        os.close(wfd)
        refusals.append(str(e))
    except BaseException:
        os.close(wfd)
        raise
    else:
        applied = holder.applied
        k = _Kernel("namespace", holder=holder, holder_stdin=wfd)
        try:
            userns = bool(applied and applied.user_namespace)
            k.namespaces, k.namespace_fds = _hold_namespaces(holder.pid, userns)
            abi = landlock.abi_version()
            roots = [*plan.writable_roots(), ray_dirs["logs"]]
            k.landlock = [*roots, *devices_beside(roots)]
            k.layers = report_mod.Layers(
                landlock_abi=abi,
                mount_namespace=True,
                overlay=bool(applied and applied.overlay),
                readonly_mounts=bool(applied and applied.readonly_root),
                missing={
                    # A worker must reach its raylet and the GCS: no network namespace for it.
                    "network_namespace": _WORKERS_NETWORK,
                    **({} if abi else {"landlock": landlock.unavailable_reason(landlock.query_abi()[1])}),
                },
            )
        except BaseException:  # the holder (and its namespaces) must not outlive a run never opened
            _release_kernel(k)
            raise
        return k
    finally:
        os.close(rfd)
        os.close(null)
    ws.mirror()
    abi, err = landlock.query_abi()
    if abi > 0:
        ll_plan = kernel_plan(ws, prep.request.mode, policy, namespace=False)
        roots = [*ll_plan.writable_roots(), ray_dirs["logs"]]
        roots += devices_beside(roots)  # not /dev/shm whole when the workspace is in it
        try:
            spawn(
                _probe_true(), env={}, cwd="/", plan=KernelPlan(writable=tuple(roots), landlock=True)
            ).wait()
        except KernelUnavailable as e:
            refusals.append(str(e))
        else:
            return _Kernel(
                "landlock",
                landlock=roots,
                layers=report_mod.Layers(
                    landlock_abi=abi,
                    missing={"mount_namespace": "; ".join(refusals), "network_namespace": _WORKERS_NETWORK},
                ),
            )
    else:
        refusals.append(landlock.unavailable_reason(err))
    why = "; ".join(refusals)
    if prep.kernel == "require":
        raise KernelUnavailable(
            f"the kernel layer is required (policy {prep.spec.name}) but unavailable ({why}); "
            'run `tv-sandbox doctor`, or use a policy with kernel = "warn"'
        )
    message = f"kernel layer unavailable ({why}); only the Python guard is active in the Ray workers"
    prep.warnings.append(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    return _Kernel("off", layers=report_mod.Layers(missing={"kernel": message}))


def _release_kernel(k: _Kernel) -> None:
    """End what :func:`_open_kernel` started, once: the holder (its stdin closed, then waited
    for), then every process still in the run's namespaces, then the descriptors that held them."""
    if k.holder is not None:
        if k.holder_stdin is not None:
            os.close(k.holder_stdin)
            k.holder_stdin = None
        k.holder.wait()
        k.holder.release()
    if k.namespaces is not None:
        # a worker's daemon in a session of its own is in none of the process groups the close
        # ended: without a PID namespace it would outlive the run -- and rewrite the report
        # between its writing and the export's copy. Every process still in the run's
        # namespaces goes before the report is written. Their descriptors, held until now,
        # keep their numbers from naming another namespace meanwhile.
        try:
            _end_namespace(*k.namespaces)
        finally:
            for fd in k.namespace_fds:
                os.close(fd)
            k.namespace_fds.clear()
            k.namespaces = None


def _open(
    root: str | os.PathLike[str],
    run_id: str,
    *,
    profile: str,
    mode: str,
    policy: str | None,
    kernel: str,
    overwrite: bool,
    workspace_base: str | None,
) -> SandboxedRun:
    ray_dirs, node_id = _ray_dirs()
    # argv is a placeholder until runner's multi-step Run API (preflight accepts an empty argv) lands
    req = RunRequest(
        host=os.fspath(root),
        run_id=run_id,
        argv=["<ray workers>"],
        profile=profile,
        policy_file=policy,
        mode=mode,
        kernel=kernel,
        overwrite=overwrite,
        workspace_base=workspace_base,
    )
    prep = preflight(req)
    ws = workspace_mod.create(prep.host, run_id, prep.spec.layout, base_dir=workspace_base, mirror=False)
    k: _Kernel | None = None
    try:
        for key in ("temp", "session"):
            if ray_dirs[key] == ws.host or ray_dirs[key].startswith(ws.host + os.sep):
                raise KernelUnavailable(f"Ray's {key} dir {ray_dirs[key]} lies inside the host {ws.host}")
        pol = prep.spec.bind(
            host=ws.host,
            workspace=ws.root,
            run_id=run_id,
            mode=mode,
            temp_dirs=(ws.tmp, ray_dirs["logs"]),  # what Ray writes itself: as the kernel allows it
            run_storage=ws.run_storage,
            mount_targets=ws.mount_targets,
            profile=profile,
            runs_view=ws.runs_view,  # without the overlay, what ws/<runs> links to
        )
        os.makedirs(os.path.join(ws.run_storage, "logs"), exist_ok=True)
        os.mkdir(os.path.join(ws.base, WORKERS_DIR))
        save_resolved(pol, os.path.join(ws.base, POLICY_FILE))
        k = _open_kernel(prep, ws, pol, ray_dirs)
        env = dict(ws.env(profile))
        env[ENV_POLICY] = os.path.join(ws.base, POLICY_FILE)
        env[ENV_EVENTS] = os.path.join(ws.run_storage, "logs", EVENTS_NAME)
        env[ENV_OVERLAY] = "1" if k.kind == "namespace" else "0"
        run = SandboxedRun(prep, ws, pol, k, env, ray_dirs, node_id)
        write_state(
            run._state_file,
            {
                "run_id": run_id,
                "kernel": k.kind,
                "landlock": k.landlock,
                "landlock_required": k.layers.landlock_abi > 0,
                "holder_pid": k.holder.pid if k.holder else 0,
                "holder_start": start_time(k.holder.pid) if k.holder else None,
                "userns": bool(k.holder and k.holder.applied and k.holder.applied.user_namespace),
                "cwd": ws.root,
                "workers_dir": run._workers_dir,
            },
        )
        return run
    except BaseException:
        if k is not None:  # a failure after the holder started: it and its namespaces go first
            _release_kernel(k)
        ws.remove()
        raise


def _close(run: SandboxedRun, status: str) -> RunOutcome:
    """End the run's workers, then report and export it as :meth:`sandbox.run.Run.close` does."""
    from sandbox.finish import report_and_export

    ws, prep = run.workspace, run.prep
    with contextlib.suppress(FileNotFoundError):
        os.unlink(run._state_file)  # no new worker of this run from now on
    try:
        actors = run.end_workers()
    finally:
        _release_kernel(run._kernel)
    crashed = [a for a in actors if a["crashed"]]
    if crashed and status == "succeeded":
        status = "failed"
    code = {"succeeded": 0, "interrupted": 130}.get(status, 1)
    warnings = list(prep.warnings)
    step = report_mod.StepRecord(
        argv=["<ray workers>", *sorted({a["class"] for a in actors})],
        exit_code=code,
        signal=None,
        duration_s=round(time.monotonic() - run.opened, 6),
        peak_rss_bytes=0,
        stderr_tail="\n".join(f"{a['class']} (pid {a['pid']}): {a['death']}" for a in crashed),
    )
    ray_record = {"actors": actors, "workers_started": len(run._started_pids()), "dirs": run.ray_dirs}
    rep = report_and_export(
        prep,
        ws,
        run.policy,
        layers=run.layers,
        steps=[step],
        warnings=warnings,
        status=status,
        exit_code=code,
        events_file=run.env[ENV_EVENTS],
        extra={"ray": ray_record},
    )
    return RunOutcome(code, prep.destination, rep, None, status=status, warnings=warnings)


@contextlib.contextmanager
def sandboxed_run(
    root: str | os.PathLike[str],
    run_id: str,
    *,
    profile: str = "production",
    mode: str = "enforce",
    policy: str | None = None,
    kernel: str = "auto",
    overwrite: bool = False,
    workspace_base: str | None = None,
) -> Iterator[SandboxedRun]:
    """Open a run of ``root`` whose Ray workers are sandboxed; on exit (an exception and Ctrl-C
    included) end its actors and workers, report and export it atomically to
    ``<root>/<runs>/<run_id>`` -- failed runs marked failed. ``run.outcome`` says how it ended.

    ``policy`` is a policy file (default: the built-in one of ``profile``); ``kernel`` is
    ``auto``, ``off`` or ``require``, as for ``tv-sandbox run``. Ray is initialised if it is not.
    Raises the preflight's one-line errors (``UsageError``, ``PreflightError``,
    ``KernelUnavailable``) before anything is written.
    """
    run = _open(
        root,
        run_id,
        profile=profile,
        mode=mode,
        policy=policy,
        kernel=kernel,
        overwrite=overwrite,
        workspace_base=workspace_base,
    )
    status = "failed"
    try:
        try:
            yield run
            status = "succeeded"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            run.outcome = _close(run, status)
    finally:
        run.workspace.remove()
