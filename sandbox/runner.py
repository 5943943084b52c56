"""One sandboxed step, start to export: the piece ``tv-sandbox run`` and the orchestrator reuse.

``preflight`` checks everything that can be checked before anything is written (RUN_ID, host
layout, policy, existing export) and raises one explained error. ``execute`` builds the workspace,
launches the command through the kernel layer (when available) with the Python guard bootstrapped
from its environment, writes the report and exports the run folder atomically -- failed runs too,
marked failed.

Start-up cost is part of the contract (<= 50 ms over a bare interpreter), so the path up to the
step's ``exec`` imports only what it uses: no ``json``, ``re``, ``dataclasses``, ``threading`` or
``shutil`` here. What the run needs afterwards (the exporter, hashing, JSON) is imported while the
step runs (:func:`_meanwhile`), and the kernel layer is not probed in advance: the launch tries the
full plan and falls back, only when the kernel refuses, to Landlock alone, then to the guard alone
(or, when the kernel layer is required, refuses to run).
"""

from __future__ import annotations

import os
import sys
import time

from sandbox import report as report_mod
from sandbox import workspace as workspace_mod
from sandbox._record import field, record
from sandbox.errors import KernelUnavailable, PreflightError, UsageError
from sandbox.loader import NAME_CHARS, load_policy
from sandbox.policy import AUDIT_DIR, MODES, Op, Policy, PolicySpec, save_resolved
from sandbox.workspace import Workspace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import IO, Any

    from sandbox.kernel import Child, KernelPlan

KERNEL_CHOICES = ("auto", "off", "require")
_RUN_ID_CHARS = NAME_CHARS - {"."}
_STDERR_TAIL = 8192
POLICY_FILE = "policy.marshal"  # in the workspace's base folder: read by the step's interpreters
POLICY_RECORD = "config/policy.json"  # in the run folder: the exported record of the policy


def valid_run_id(run_id: str) -> bool:
    """``^[A-Za-z0-9_-]+$``: a RUN_ID names a folder of the host."""
    return bool(run_id) and _RUN_ID_CHARS.issuperset(run_id)


@record
class RunRequest:
    """What ``tv-sandbox run`` was asked to do."""

    host: str
    run_id: str
    argv: Sequence[str]
    profile: str = "production"
    policy_file: str | None = None
    mode: str = "enforce"
    overwrite: bool = False
    keep_workspace: bool = False
    workspace_base: str | None = None
    kernel: str = "auto"  # auto: use it when the machine supports it; off; require: fail closed
    env: Mapping[str, str] | None = None


@record
class Prepared:
    """A request that passed preflight."""

    request: RunRequest
    host: str
    spec: PolicySpec
    destination: str
    kernel: str  # the effective setting, after the policy's own
    warnings: list[str] = field(default_factory=list)


@record
class RunOutcome:
    exit_code: int
    destination: str
    report: dict[str, Any]
    workspace: str | None  # kept workspace, if asked
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds (bench/, doctor)


def _dir_problem(path: str) -> str | None:
    if os.path.islink(path) and not os.path.exists(path):
        return f"is a dangling symlink (-> {os.readlink(path)})"
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "is not readable"
    return None


def preflight(req: RunRequest) -> Prepared:
    """Check a request without writing anything; raise a one-line error naming what to fix."""
    if not valid_run_id(req.run_id):
        raise UsageError(
            f"invalid RUN_ID {req.run_id!r}: use letters, digits, '_' and '-' only "
            "(it names a folder of the host)"
        )
    if req.mode not in MODES:
        raise UsageError(f"unknown mode {req.mode!r}: use one of {', '.join(MODES)}")
    if req.kernel not in KERNEL_CHOICES:
        raise UsageError(f"unknown kernel setting {req.kernel!r}: use one of {', '.join(KERNEL_CHOICES)}")
    if not req.argv:
        raise UsageError("no command to run: put it after '--', e.g. tv-sandbox run ... -- python step.py")
    problem = _dir_problem(req.host)
    if problem:
        raise PreflightError(f"host root {req.host} {problem}: pass --root with the pipeline's top folder")
    host = os.path.realpath(req.host)
    spec = load_policy(req.policy_file, profile=req.profile)
    lay = spec.layout
    for key, rel in (("lakehouse", lay.lakehouse), ("exports", lay.exports)):
        problem = _dir_problem(os.path.join(host, rel))
        if problem:
            raise PreflightError(
                f"layout folder {key} = {os.path.join(host, rel)} {problem}: "
                f"create it, or use a policy whose [layout] {key} matches this host ({spec.source})"
            )
    dest = os.path.join(host, lay.runs, req.run_id)
    if os.path.lexists(dest) and not req.overwrite:
        raise PreflightError(
            f"run {req.run_id} was already exported to {dest}: pass --overwrite to replace it "
            "atomically, or use another --run-id"
        )
    existing = os.path.join(host, lay.runs)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PreflightError(f"{existing} is not a folder, so runs cannot be exported under {lay.runs}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(
            f"the host is read-only at {existing}: the run could not be exported; "
            "make it writable or export elsewhere with --root"
        )
    if req.workspace_base is not None:
        base = os.path.realpath(req.workspace_base)
        if _dir_problem(base):
            raise PreflightError(f"--workspace-dir {req.workspace_base} {_dir_problem(base)}")
    _check_workspace_base(req.workspace_base, host, workspace_mod.mount_targets(host, lay))
    kernel = req.kernel
    if spec.kernel == "require" and kernel == "auto":
        kernel = "require"
    elif spec.kernel == "off" and kernel == "auto":
        kernel = "off"
    return Prepared(req, host, spec, dest, kernel)


def _check_workspace_base(workspace_base: str | None, host: str, targets: Mapping[str, str]) -> None:
    """The workspace (the step's writable temp dir, run storage and overlay) must lie outside the
    host and outside every mount: inside, the step's writable binds would cover the very paths
    the read-only mounts protect, and the kernel layer could not both hold. Checks
    ``--workspace-dir``, else every ``TMPDIR``, ``TEMP`` and ``TMP`` set and the temp dir the
    workspace would go to."""
    if workspace_base is not None:
        places = [("--workspace-dir", workspace_base)]
    else:
        places = [
            (f"${name}", os.environ[name]) for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)
        ]
        places.append(("the temp dir", workspace_mod.temp_root()))
    protected = [("the host", host), *((f"the {name} mount", real) for name, real in targets.items())]
    for what, path in places:
        real = os.path.realpath(path)
        for label, root in protected:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                fix = "pass --workspace-dir" if what == "--workspace-dir" else "set TMPDIR"
                raise PreflightError(
                    f"{what} {real} lies inside {label} ({root}): the workspace must be outside it; "
                    f"{fix} to a folder outside the host and its mounts"
                )


def kernel_plan(
    ws: Workspace, mode: str, policy: Policy | None = None, *, namespace: bool = True
) -> KernelPlan:
    """The mounts and Landlock rules of one step (see docs/architecture.md, "kernel layer").

    The step gets its own user, mount and PID namespaces (a fresh /proc, a minimal /dev with a
    private /dev/shm),
    every writable mount ``nodev,nosuid``, and no capability. The workspace becomes an overlay
    of the host whose upper layer is the run folder, the run
    folder is bound at $TV_RUN_DIR, the mounts are bound read-only over their workspace paths (in
    audit mode: overlays whose upper layer is $TV_RUN_DIR/audit/<mount>), and the whole view is
    bound over the host's own path too, so a host-absolute path behaves as its workspace path.
    Everything else is remounted read-only and Landlock allows writes only below the roots.

    ``namespace=False`` (a kernel without usable mount namespaces or overlayfs): Landlock alone.
    The workspace stays the symlink skeleton: writes are allowed below it, the run folder and the
    temp dir only, and the host is out of reach.
    """
    from sandbox.kernel import Bind, KernelPlan, Overlay

    if not namespace:
        return KernelPlan(
            writable=(ws.root, ws.run_storage, ws.tmp, "/dev/shm"),
            overlays=(),
            binds=(),
            readonly_root=False,
            landlock=True,
            namespace=False,
        )

    # A top lower layer of empty folders gives every mount point a folder in the merged view
    # without writing it into the upper layer (the run folder).
    points = os.path.join(ws.base, ".mountpoints")
    for rel in (os.path.join(ws.layout.runs, ws.run_id), *ws.layout.mounts().values()):
        os.makedirs(os.path.join(points, rel), exist_ok=True)
    overlays = [Overlay(lower=(points, ws.host), upper=ws.run_storage, work=ws.overlay_work, target=ws.root)]
    binds = [Bind(ws.run_storage, ws.run_dir, readonly=False)]
    extra_writable: list[str] = []
    for name, rel in ws.layout.mounts().items():
        target = os.path.join(ws.root, rel)
        real = ws.mount_targets[name]
        if mode == "audit":
            upper = os.path.join(ws.run_storage, AUDIT_DIR, rel)
            work = os.path.join(ws.base, f".ovl-work-{name}")
            os.makedirs(upper, exist_ok=True)
            os.makedirs(work, exist_ok=True)
            overlays.append(Overlay(lower=(real,), upper=upper, work=work, target=target))
        else:
            # The policy decides whether a mount is writable (development: the lakehouse is);
            # the kernel layer only executes that decision.
            open_ = policy is not None and not policy.decide(os.path.join(real, "x"), Op.WRITE).denied
            binds.append(Bind(real, target, readonly=not open_))
            if open_:
                extra_writable.append(target)
    binds.append(Bind(ws.root, ws.host, readonly=False))
    return KernelPlan(
        writable=(ws.root, ws.run_storage, ws.tmp, ws.host, "/dev/shm", *extra_writable),
        overlays=tuple(overlays),
        binds=tuple(binds),
        readonly_root=True,
        landlock=True,
        namespace=True,
        pid_namespace=True,
        private_shm=True,
        minimal_dev=True,
    )


class _Clock:
    """Phase timings of a run (``TV_SANDBOX_TIMINGS=1`` prints them): where the start-up goes."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._t
        self._t = now


def _tee(src: int, dst: IO[bytes], log: IO[bytes], tail: bytearray, done: Any, running: Any = None) -> None:
    """Copy a step's stderr to ours and to its log file, keeping the tail for the report.

    Stops at end of file, or -- when ``running`` (a lock held while the step runs) is given --
    once the step has ended and what it wrote is drained: every process of the step is gone by
    then (see :class:`sandbox.kernel.Child`), and a descriptor it passed to a process outside
    its run must not hold the run open.
    """
    import select  # in the tee's thread, after the step's exec: off the start-up path

    poller = select.poll()
    poller.register(src, select.POLLIN | select.POLLHUP)
    try:
        while True:
            ended = running is not None and not running.locked()
            if not poller.poll(0 if ended else 100):
                if ended:
                    break
                continue
            chunk = os.read(src, 65536)
            if not chunk:
                break
            dst.write(chunk)
            dst.flush()
            log.write(chunk)
            tail.extend(chunk)
            del tail[:-_STDERR_TAIL]
    finally:
        os.close(src)
        done.release()


def _launch(
    prep: Prepared, ws: Workspace, policy: Policy, base_env: dict[str, str], stderr: int
) -> tuple[Child, KernelPlan | None]:
    """Start the step with the strongest kernel layer this machine accepts.

    Tried in order, each only when the one before was refused by the kernel (``KernelUnavailable``
    from the forked child, before ``exec``): user + mount + PID namespaces, overlay, read-only
    binds and Landlock; Landlock alone; the Python guard alone. Every fallback is a warning line
    (and :func:`_missing` names what is missing in the report). When the kernel layer is required
    (``--kernel require``, or the policy's ``kernel = "require"``) only the full layer will do:
    anything less refuses to run (exit 125, before the command ran).
    """
    from sandbox.guard.bootstrap import child_env
    from sandbox.kernel import spawn

    req = prep.request
    policy_file = os.path.join(ws.base, POLICY_FILE)
    events_file = os.path.join(ws.run_storage, "logs", report_mod.EVENTS_NAME)

    def start(plan: KernelPlan | None) -> Child:
        env = child_env(
            base_env, policy_file=policy_file, events_file=events_file, overlay=bool(plan and plan.overlays)
        )
        return spawn(list(req.argv), env=env, cwd=ws.root, plan=plan, stderr=stderr)

    if prep.kernel == "off":
        return start(None), None
    from sandbox.kernel import landlock

    required = prep.kernel == "require"
    refusals: list[str] = []
    abi, err = landlock.query_abi()
    if abi == 0:
        refusals.append(landlock.unavailable_reason(err))
    for namespace in (True, False):
        if required and refusals:
            break  # only the full layer will do
        if not namespace:
            ws.mirror()  # without the overlay, the workspace is the symlink skeleton
            if abi == 0:
                break
        plan = kernel_plan(ws, req.mode, policy, namespace=namespace)
        try:
            child = start(plan)
        except KernelUnavailable as e:
            refusals.append(str(e))
            continue
        if refusals:
            what = "only Landlock and the Python guard are active" if not namespace else "no Landlock"
            prep.warnings.append(f"kernel layer incomplete ({'; '.join(refusals)}); {what}")
        return child, plan
    why = "; ".join(refusals)
    if required:
        raise KernelUnavailable(
            f"the full kernel layer is required (policy {prep.spec.name}) but unavailable ({why}); "
            'run `tv-sandbox doctor`, or use a policy with kernel = "warn"'
        )
    prep.warnings.append(f"kernel layer unavailable ({why}); only the Python guard is active")
    return start(None), None


def _missing(child: Child, prep: Prepared) -> dict[str, str]:
    """The report's ``layers.missing``: each part of the full kernel layer the step ran without."""
    from sandbox.kernel import missing_layers

    why = "; ".join(prep.warnings)
    if prep.kernel == "off":
        why = "turned off"
    return missing_layers(getattr(child, "applied", None), why)


def _export_limit(prep: Prepared) -> int:
    """``max_bytes`` for :func:`sandbox.export.export_run`: the policy's ``[export] max_bytes``,
    else the exporter's default."""
    from sandbox.export import DEFAULT_MAX_BYTES
    from sandbox.loader import export_max_bytes

    limit = export_max_bytes(prep.spec.data, prep.spec.source)
    return DEFAULT_MAX_BYTES if limit is None else limit


def _meanwhile(req: RunRequest) -> None:
    """What the launcher does while its step runs: load what the end of the run needs (off the
    start-up path, on the other core) and sweep what launchers killed before us left behind."""
    import hashlib  # noqa: F401
    import json  # noqa: F401

    from sandbox import export, report  # noqa: F401
    from sandbox.events import read_events  # noqa: F401

    workspace_mod.sweep(req.workspace_base)


def execute(prep: Prepared, *, stderr: IO[bytes] | None = None) -> RunOutcome:
    """Run a prepared request: workspace, step, report, export. Returns the command's status."""
    from _thread import allocate_lock, start_new_thread

    req = prep.request
    clock = _Clock()
    ws = workspace_mod.create(
        prep.host, req.run_id, prep.spec.layout, base_dir=req.workspace_base, mirror=prep.kernel == "off"
    )
    clock.lap("workspace")
    try:
        policy = ws.bind(prep.spec, mode=req.mode, profile=req.profile)
        logs = os.path.join(ws.run_storage, "logs")
        os.makedirs(logs, exist_ok=True)
        save_resolved(policy, os.path.join(ws.base, POLICY_FILE))
        events_file = os.path.join(logs, report_mod.EVENTS_NAME)
        base_env = {k: v for k, v in (req.env or os.environ).items() if not k.startswith("TV_SANDBOX_")}
        base_env.update(ws.env(req.profile))
        rfd, wfd = os.pipe()
        tail = bytearray()
        out = stderr or sys.stderr.buffer
        with open(os.path.join(logs, "step.stderr.log"), "wb") as log:
            try:
                child, _plan = _launch(prep, ws, policy, base_env, wfd)
            except BaseException:
                os.close(rfd)
                raise
            finally:
                os.close(wfd)
            # A bare thread: ``threading`` costs an import on the start-up path, and this one
            # needs no more than a lock to be joined.
            pumped, running = allocate_lock(), allocate_lock()
            pumped.acquire()
            running.acquire()
            start_new_thread(_tee, (rfd, out, log, tail, pumped, running))
            clock.lap("launch")
            try:
                _meanwhile(req)
            finally:
                result = child.wait()
                running.release()
                pumped.acquire()
            clock.lap("step")
        import json

        from sandbox._paths import write_into
        from sandbox.events import read_events, summarise
        from sandbox.export import export_run
        from sandbox.export import write_error as export_write_error

        # After the step, and never through what the step left there: the record is the launcher's.
        try:  # a full run-folder filesystem fails here first: an export error, in one line
            write_into(ws.run_storage, POLICY_RECORD, json.dumps(policy.to_dict(), indent=1).encode())
        except OSError as e:
            raise export_write_error(req.run_id, prep.destination, POLICY_RECORD, e) from e
        applied = getattr(child, "applied", None)
        layers = report_mod.Layers(
            python_guard=True,
            landlock_abi=getattr(applied, "landlock_abi", 0) if applied else 0,
            mount_namespace=bool(getattr(applied, "namespace", False)) if applied else False,
            overlay=bool(getattr(applied, "overlay", False)) if applied else False,
            readonly_mounts=bool(getattr(applied, "readonly_root", False)) if applied else False,
            missing=_missing(child, prep),
        )
        step = report_mod.StepRecord(
            argv=list(req.argv),
            exit_code=result.exit_code,
            signal=result.signal,
            duration_s=round(result.duration_s, 6),
            peak_rss_bytes=result.peak_rss_bytes,
            stderr_tail=tail.decode("utf-8", "replace")[-4000:],
        )
        events = read_events(events_file) if os.path.exists(events_file) else []
        protected = {name: os.path.join(ws.host, rel) for name, rel in prep.spec.layout.mounts().items()}
        lake_diff = None
        if req.mode == "audit":  # what the run changed in the mounts; before the export: in the manifest
            from sandbox import lakediff

            mounts = {name: (rel, ws.mount_targets[name]) for name, rel in ws.layout.mounts().items()}
            lake_diff = lakediff.write(
                ws.run_storage,
                report_mod.LAKEHOUSE_DIFF,
                mounts,
                events,
                run_id=req.run_id,
                run_dirs=[ws.run_dir],  # $TV_RUN_DIR as the event log's targets name it
            )
        rep = report_mod.build(
            run_id=req.run_id,
            profile=req.profile,
            mode=req.mode,
            policy_name=prep.spec.name,
            policy_sha256=prep.spec.sha256,
            policy_source=prep.spec.source,
            layers=layers,
            steps=[step],
            events=events,
            event_summary=summarise(events),
            scattered=report_mod.scattered_artifacts(ws.run_storage, prep.spec.layout.run_folders),
            protected=protected,
            warnings=prep.warnings,
            lakehouse_diff=lake_diff,
        )
        try:
            report_mod.write(ws.run_storage, rep)
        except OSError as e:
            raise export_write_error(req.run_id, prep.destination, report_mod.REPORT_NAME, e) from e
        clock.lap("report")
        export_run(
            ws.run_storage,
            prep.destination,
            run_id=req.run_id,
            status=rep["status"],
            exit_code=result.exit_code,
            policy_name=prep.spec.name,
            policy_sha256=prep.spec.sha256,
            overwrite=req.overwrite,
            extra={"profile": req.profile, "mode": req.mode, "layers": rep["layers"]},
            max_bytes=_export_limit(prep),
        )
        clock.lap("export")
        kept = ws.base if req.keep_workspace else None
        if kept:  # a kept workspace is the user's now: never swept as a dead launcher's leftover
            os.unlink(os.path.join(ws.base, workspace_mod.OWNER_FILE))
            with open(os.path.join(ws.base, workspace_mod.KEPT_FILE), "w"):
                pass
        return RunOutcome(result.exit_code, prep.destination, rep, kept, clock.laps)
    finally:
        if not req.keep_workspace:
            ws.remove()
        clock.lap("cleanup")
