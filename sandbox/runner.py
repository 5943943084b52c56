"""Before and at the start of a run: preflight, the kernel plan, and the launch of a step.

``preflight`` checks everything that can be checked before anything is written (RUN_ID, host
layout, policy, existing export) and raises one explained error. ``kernel_plan`` turns a
workspace and its policy into the mounts and Landlock rules of a step; ``_launch`` starts a run's
first step with the strongest layer the kernel accepts, ``start_step`` every later one. The run
itself -- workspace, steps, report, export -- is :class:`sandbox.run.Run`; ``execute`` is its
one-step case (``tv-sandbox run``).

Start-up cost is part of the contract (<= 50 ms over a bare interpreter), so the path up to the
step's ``exec`` imports only what it uses: no ``json``, ``re``, ``dataclasses``, ``threading`` or
``shutil`` here. What the run needs afterwards (the exporter, hashing, JSON) is imported while the
step runs (``sandbox.finish.while_first_step``), and the kernel layer is not probed in advance:
the launch tries the full plan and falls back, only when the kernel refuses, to Landlock alone,
then to the guard alone (or, when the kernel layer is required, refuses to run).
"""

from __future__ import annotations

import errno
import os

from sandbox import workspace as workspace_mod
from sandbox._mountinfo import MountTable, is_below
from sandbox._record import field, record
from sandbox.errors import KernelUnavailable, PreflightError, UsageError
from sandbox.events import EVENTS_NAME
from sandbox.loader import NAME_CHARS, load_policy
from sandbox.policy import AUDIT_DIR, MODES, Op, Policy, PolicySpec
from sandbox.workspace import Workspace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any

    from sandbox.kernel import Child, KernelPlan
    from sandbox.kernel._early import Early
    from sandbox.run import Interrupted, Run, StepSpec  # noqa: F401  # re-exported lazily

KERNEL_CHOICES = ("auto", "off", "require")
_RUN_ID_CHARS = NAME_CHARS - {"."}
POLICY_FILE = "policy.marshal"  # in the workspace's base folder: read by the step's interpreters
POLICY_RECORD = "config/policy.json"  # in the run folder: the exported record of the policy


#: A RUN_ID names folders that the run extends (``tv-sandbox-<ID>-<seal>``, ``.<ID>.tvs-stage-...``):
#: past 255 bytes, the run failed making its workspace (advising another --workspace-dir) and the
#: pipeline on an internal error.
MAX_RUN_ID_LEN = 100


def valid_run_id(run_id: str) -> bool:
    """``^[A-Za-z0-9_-]{1,100}$``: a RUN_ID names a folder of the host."""
    return bool(run_id) and len(run_id) <= MAX_RUN_ID_LEN and _RUN_ID_CHARS.issuperset(run_id)


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
    """How a run ended: its exit status (the last step's; 128 + N when a signal N cut it), where
    it was exported, its report, and its status (succeeded, failed, cancelled, interrupted)."""

    exit_code: int
    destination: str
    report: dict[str, Any]
    workspace: str | None  # kept workspace, if asked
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds (bench/, doctor)
    status: str = "succeeded"
    warnings: list[str] = field(default_factory=list)


def _dir_problem(path: str) -> str | None:
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"is a symlink that loops (-> {os.readlink(path)})"
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
            f"invalid RUN_ID {req.run_id!r}: use letters, digits, '_' and '-' only, at most "
            f"{MAX_RUN_ID_LEN} (it names a folder of the host)"
        )
    if req.mode not in MODES:
        raise UsageError(f"unknown mode {req.mode!r}: use one of {', '.join(MODES)}")
    if req.kernel not in KERNEL_CHOICES:
        raise UsageError(f"unknown kernel setting {req.kernel!r}: use one of {', '.join(KERNEL_CHOICES)}")
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
        problem = _dir_problem(base)
        if problem is None and not os.access(base, os.W_OK | os.X_OK):
            problem = "is not writable"
        if problem:
            raise PreflightError(
                f"--workspace-dir {req.workspace_base} {problem}: pass a writable folder outside the host"
            )
    check_workspace_base(req.workspace_base, host, workspace_mod.mount_targets(host, lay))
    kernel = req.kernel
    if spec.kernel == "require" and kernel == "off":
        # The policy's author set a floor; a flag of the caller's does not lower it.
        raise PreflightError(
            f'policy {spec.name!r} requires the kernel layer (kernel = "require"), but --kernel off '
            'turns it off: drop --kernel off, or use a policy without kernel = "require"'
        )
    if spec.kernel == "require" and kernel == "auto":
        kernel = "require"
    elif spec.kernel == "off" and kernel == "auto":
        kernel = "off"
    return Prepared(req, host, spec, dest, kernel)


def check_workspace_base(
    workspace_base: str | None,
    host: str,
    targets: Mapping[str, str],
    places: Sequence[tuple[str, str]] = (),
) -> None:
    """The workspace (the step's writable temp dir, run storage and overlay) must lie outside the
    host and outside every mount: inside, the step's writable binds would cover the very paths
    the read-only mounts protect, and the kernel layer could not both hold. Checks
    ``--workspace-dir``, else every ``TMPDIR``, ``TEMP`` and ``TMP`` set and the temp dir the
    workspace would go to -- or, given, only ``places`` ((what, path): a pipeline's
    ``$RAY_TMPDIR``, where an embedded Ray writes its session)."""
    if places:
        places = list(places)
    elif workspace_base is not None:
        places = [("--workspace-dir", workspace_base)]
    else:
        places = [
            (f"${name}", os.environ[name]) for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)
        ]
        places.append(("the temp dir", workspace_mod.temp_root()))
    protected = [("the host", host), *((f"the {name} mount", real) for name, real in targets.items())]
    # By path; by identity: a bind mount of the host elsewhere (/mnt/alias -> HOST) is the same
    # folder under another path, which realpath does not see through -- each folder on the way to
    # the place is compared with each protected root by (device, inode); and on the filesystem
    # itself (MountTable), which also sees a bind of a folder *below* the host (/mnt/a -> HOST/data).
    # A bind keeps the device, so the mount table is read only when the place shares one with a
    # protected root.
    ids: dict[tuple[int, int], tuple[str, str]] = {}
    for label, root in protected:
        try:
            st = os.stat(root)
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = (label, root)
    devices = {dev for dev, _ in ids}
    mounts: MountTable | None = None
    for what, path in places:
        real = os.path.realpath(path)
        inside = next(((label, root) for label, root in protected if is_below(real, root)), None)
        folder, device = real, None
        while inside is None:
            try:
                here = os.stat(folder)
                inside = ids.get((here.st_dev, here.st_ino))
                device = here.st_dev if device is None else device
            except OSError:
                pass
            if folder == os.sep:
                break
            folder = os.path.dirname(folder)
        if inside is None and device in devices:
            mounts = mounts or MountTable.read()
            inside = mounts.holder(real, protected) if mounts else None
        if inside is not None:
            label, root = inside
            fixes = {"--workspace-dir": "pass --workspace-dir", "$RAY_TMPDIR": "set RAY_TMPDIR"}
            fix = fixes.get(what, "set TMPDIR")
            raise PreflightError(
                f"{what} {real} lies inside {label} ({root}): the workspace must be outside it; "
                f"{fix} to a folder outside the host and its mounts"
            )


def kernel_plan(
    ws: Workspace, mode: str, policy: Policy | None = None, *, namespace: bool = True, network: bool = True
) -> KernelPlan:
    """The mounts and Landlock rules of one step (see docs/architecture.md, "kernel layer").

    The step gets its own user, mount and PID namespaces (a fresh /proc, a minimal /dev with a
    private /dev/shm) and, unless its policy says ``[kernel] network = "host"``, its own network
    namespace (loopback only), with Ray's folders hidden (:func:`ray_folders`); every writable
    mount ``nodev,nosuid``, and no capability. The workspace becomes an overlay
    of the host whose upper layer is the run folder, the run
    folder is bound at $TV_RUN_DIR, the mounts are bound read-only over their workspace paths (in
    audit mode: overlays whose upper layer is $TV_RUN_DIR/audit/<mount>), and the whole view is
    bound over the host's own path too, so a host-absolute path behaves as its workspace path.
    Everything else is remounted read-only and Landlock allows writes only below the roots.

    ``network=False``: no network namespace even when the policy wants one (a kernel that refuses
    it; Ray's folders are still hidden).
    ``namespace=False`` (a kernel without usable mount namespaces or overlayfs): Landlock alone.
    The workspace stays the symlink skeleton: writes are allowed below it, the run folder and the
    temp dir only, and the host is out of reach.
    """
    from sandbox.kernel import Bind, KernelPlan, Overlay

    if not namespace:
        # an allow rule outside the mounts writes the host there (the skeleton links to it)
        opened = [os.path.join(ws.host, r) for r in (policy.kernel_paths().writable if policy else ())]
        # The machine's /dev/shm (no private one without a mount namespace) -- but not when the
        # workspace lies in it (TMPDIR=/dev/shm, where the full layer's private /dev/shm hides it
        # and the run falls back here): that would open to the step its own base, every other
        # run's workspace and run folder there, and the pool of views later runs take.
        shm = () if is_below(os.path.realpath(ws.base), os.path.realpath("/dev/shm")) else ("/dev/shm",)
        return KernelPlan(
            writable=(ws.root, ws.run_storage, ws.tmp, *shm, *(p for p in opened if os.path.isdir(p))),
            overlays=(),
            binds=(),
            readonly_root=False,
            landlock=True,
            namespace=False,
        )

    # A top lower layer of empty folders gives every mount point a folder in the merged view
    # without writing it into the upper layer (the run folder); the keeper makes them on a tmpfs
    # over this one folder (Overlay.points), not on the disk.
    points = os.path.join(ws.base, ".mountpoints")
    os.makedirs(points, exist_ok=True)
    overlays = [
        Overlay(
            lower=(points, ws.host),
            upper=ws.run_storage,
            work=ws.overlay_work,
            target=ws.root,
            points=(os.path.join(ws.layout.runs, ws.run_id), *ws.layout.mounts().values()),
        )
    ]
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
    # The policy's own rules on host folders outside the mounts: the same answer on every layer
    # (Policy.kernel_paths; a rule the kernel layer cannot enforce alike was refused at load).
    if policy is not None:
        extra = policy.kernel_paths()
        for rel in extra.readonly:
            src, target = os.path.join(ws.host, rel), os.path.join(ws.root, rel)
            if not os.path.lexists(src):
                continue
            if mode == "audit" and os.path.isdir(src):
                upper = os.path.join(ws.run_storage, AUDIT_DIR, rel)
                work = os.path.join(ws.base, ".ovl-work-" + rel.replace("/", "_"))
                os.makedirs(upper, exist_ok=True)
                os.makedirs(work, exist_ok=True)
                overlays.append(Overlay(lower=(src,), upper=upper, work=work, target=target))
            else:
                binds.append(Bind(src, target, readonly=True))
        for rel in extra.writable:
            src, target = os.path.join(ws.host, rel), os.path.join(ws.root, rel)
            if os.path.isdir(src):
                binds.append(Bind(src, target, readonly=False))
                extra_writable.append(target)
    binds.append(Bind(ws.root, ws.host, readonly=False))
    writable = (ws.root, ws.run_storage, ws.tmp, ws.host, "/dev/shm", *extra_writable)
    isolate = network_isolated(policy)
    return KernelPlan(
        writable=writable,
        overlays=tuple(overlays),
        binds=tuple(binds),
        readonly_root=True,
        landlock=True,
        namespace=True,
        pid_namespace=True,
        private_shm=True,
        minimal_dev=True,
        network_namespace=isolate and network,
        hidden=ray_folders((ws.base, ws.host, *writable)) if isolate else (),
    )


def network_isolated(policy: Policy | None) -> bool:
    """Whether a step gets its own network namespace: unless its policy says
    ``[kernel] network = "host"``."""
    return policy is None or policy.spec.network != "host"


def ray_folders(keep: Sequence[str], environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The folders of Ray on this machine a step must not reach: Ray's temp dir (the session's
    pathname unix sockets -- raylet, object store --, its ports and token files), where Ray puts
    it (``$RAY_TMPDIR/ray``, ``$TMPDIR/ray``, ``/tmp/ray``), and ``~/.ray`` (the cluster's auth
    token). Only those that exist, and none that holds or lies inside one of ``keep`` (the
    workspace, the host, the writable roots): hiding those would hide the step's own view.
    A cluster started with another ``--temp-dir`` is not found (docs/security.md)."""
    env = os.environ if environ is None else environ
    found = [os.path.join(env[k], "ray") for k in ("RAY_TMPDIR", "TMPDIR") if env.get(k)]
    found += ["/tmp/ray", os.path.join(env.get("HOME") or os.path.expanduser("~"), ".ray")]
    kept = [os.path.realpath(p) for p in keep]
    out: list[str] = []
    for path in dict.fromkeys(os.path.realpath(p) for p in found if os.path.isabs(p)):
        if not os.path.isdir(path) or path == "/":
            continue
        if any(_overlaps(path, k) for k in kept):
            continue
        out.append(path)
    return tuple(out)


def _overlaps(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same folder or one lies inside the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def start_step(
    ws: Workspace,
    env: Mapping[str, str],
    argv: Sequence[str],
    plan: KernelPlan | None,
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    meanwhile: Callable[[], None] | None = None,
    early: Early | None = None,
) -> Child:
    """Start one step under ``plan`` (None: the Python guard alone) with the guard bootstrapped
    from its environment; ``env`` is the run environment of the step. ``meanwhile`` and
    ``early``: see :func:`sandbox.kernel.spawn`."""
    from sandbox import _image
    from sandbox.guard.bootstrap import child_env
    from sandbox.kernel import spawn

    policy_file = os.path.join(ws.base, POLICY_FILE)
    events_file = os.path.join(ws.run_storage, "logs", EVENTS_NAME)
    full = child_env(
        env,
        policy_file=policy_file,
        events_file=events_file,
        overlay=bool(plan and plan.overlays),
        image=_image.current(),
    )
    return spawn(
        list(argv),
        env=full,
        cwd=ws.root,
        plan=plan,
        stdout=stdout,
        stderr=stderr,
        meanwhile=meanwhile,
        early=early,
    )


@record
class Launched:
    """A started first step, and what the launch settled for the whole run."""

    child: Child
    plan: KernelPlan | None  # the kernel plan every step of the run gets (None: guard alone)
    missing: dict[str, str]  # layer -> why it is not active (empty: every layer is)
    warnings: list[str]


def _launch(
    prep: Prepared,
    ws: Workspace,
    policy: Policy,
    env: Mapping[str, str],
    argv: Sequence[str],
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    meanwhile: Callable[[], None] | None = None,
    early: Early | None = None,
) -> Launched:
    """Start a run's first step with the strongest kernel layer this machine accepts.

    Tried in order, each only when the one before was refused by the kernel (``KernelUnavailable``
    from the forked child, before ``exec``): user + mount + PID namespaces, overlay, read-only
    binds and Landlock; Landlock alone; the Python guard alone. Every fallback is a warning line,
    and ``missing`` names each part of the full layer the step runs without. When the kernel layer
    is required (``--kernel require``, or the policy's ``kernel = "require"``) only the full layer
    will do: anything less refuses to run (exit 125, before the command ran). The plan it settles
    on is the one every later step of the run gets. ``meanwhile`` runs once, during the first
    attempt (see :func:`sandbox.kernel.spawn`); ``early`` (a keeper forked before the preflight)
    is offered to the first attempt, and says this kernel's Landlock ABI without ctypes here.
    """
    pending = [meanwhile] if meanwhile is not None else []
    offered = [early] if early is not None else []

    def start(plan: KernelPlan | None) -> Child:
        once = pending.pop() if pending else None
        keeper = offered.pop() if offered else None
        if keeper is not None and plan is None:
            keeper.discard()
            keeper = None
        return start_step(ws, env, argv, plan, stdout=stdout, stderr=stderr, meanwhile=once, early=keeper)

    try:
        return _attempts(prep, ws, policy, start, early)
    finally:
        for keeper in offered:  # not taken: no attempt wanted a namespace
            keeper.discard()


def _attempts(
    prep: Prepared,
    ws: Workspace,
    policy: Policy,
    start: Callable[[KernelPlan | None], Child],
    early: Early | None,
) -> Launched:
    """The attempts of :func:`_launch`, strongest first."""
    from sandbox.kernel import missing_layers

    req = prep.request
    if prep.kernel == "off":
        why = 'turned off (--kernel off, or the policy\'s kernel = "off")'
        return Launched(
            start(None),
            None,
            missing_layers(None, why),
            [
                f"the kernel layer is {why}: only the Python guard protects the host, so native writers "
                "(pyarrow, sqlite), shell commands and non-Python children can change it"
            ],
        )
    required = prep.kernel == "require"
    refusals: list[str] = []
    said = early.abi() if early is not None else None
    if said is not None:
        abi, err = said
    else:
        from sandbox.kernel import landlock

        abi, err = landlock.query_abi()
    if abi == 0:
        from sandbox.kernel import landlock

        refusals.append(landlock.unavailable_reason(err))
    # The namespaces with the network's, without it (a kernel that refuses only CLONE_NEWNET),
    # then Landlock alone.
    attempts: tuple[tuple[bool, bool], ...] = (
        ((True, True), (True, False), (False, False))
        if network_isolated(policy)
        else ((True, False), (False, False))
    )
    shm = os.path.realpath("/dev/shm")
    if is_below(os.path.realpath(ws.base), shm):
        # The namespaces give the step a private /dev/shm: the workspace would vanish under it.
        refusals.append(
            f"the workspace lies in {shm} ({ws.base}), which the step's namespace replaces with a "
            "private tmpfs: set TMPDIR (or --workspace-dir) to a folder outside /dev/shm"
        )
        attempts = tuple(a for a in attempts if not a[0])
    for namespace, network in attempts:
        if required and refusals:
            break  # only the full layer will do
        if not namespace:
            ws.mirror()  # without the overlay, the workspace is the symlink skeleton
            if abi == 0:
                break
        plan = kernel_plan(ws, req.mode, policy, namespace=namespace, network=network)
        try:
            child = start(plan)
        except KernelUnavailable as e:
            refusals.append(str(e))
            continue
        why = "; ".join(refusals)
        opt_out = "" if network_isolated(policy) else f'[kernel] network = "host" in {prep.spec.source}'
        missing = missing_layers(child.applied, why, network_opt_out=opt_out)
        warnings = []
        if refusals:
            what = (
                "missing: " + ", ".join(missing)
                if namespace
                else "only Landlock and the Python guard are active; what the step writes into the "
                "workspace is gathered into the run folder after each step"
            )
            warnings.append(f"kernel layer incomplete ({why}); {what}")
        return Launched(child, plan, missing, warnings)
    why = "; ".join(refusals)
    if required:
        raise KernelUnavailable(
            f"the full kernel layer is required (policy {prep.spec.name}) but unavailable ({why}); "
            'run `tv-sandbox doctor`, or use a policy with kernel = "warn"'
        )
    return Launched(
        start(None),
        None,
        missing_layers(None, why),
        [f"kernel layer unavailable ({why}); only the Python guard is active"],
    )


def export_limit(prep: Prepared) -> int:
    """``max_bytes`` for :func:`sandbox.export.export_run`: the policy's ``[export] max_bytes``,
    else the exporter's default."""
    from sandbox.export import DEFAULT_MAX_BYTES
    from sandbox.loader import export_max_bytes

    limit = export_max_bytes(prep.spec.data, prep.spec.source)
    return DEFAULT_MAX_BYTES if limit is None else limit


def execute(prep: Prepared, *, stderr: IO[bytes] | None = None, early: Early | None = None) -> RunOutcome:
    """Run a prepared one-step request: workspace, step, report, export (``tv-sandbox run``).

    Returns the outcome; its ``exit_code`` is the command's status. A run of several steps is a
    :class:`sandbox.run.Run`; this is the one-step case of it. ``early``: a keeper forked
    before the preflight (:func:`sandbox.kernel._early.prefork`), for the step.
    """
    from sandbox.run import Run, StepSpec

    if not prep.request.argv:
        raise UsageError("no command to run: put it after '--', e.g. tv-sandbox run ... -- python step.py")

    with Run.open(prep, stderr=stderr, early=early) as run:
        run.step(StepSpec(argv=list(prep.request.argv), name="step"))
        return run.close()


def __getattr__(name: str) -> Any:
    # ``from sandbox.runner import Run, StepSpec``: the multi-step run lives in sandbox.run, which
    # imports this module; resolved lazily so neither import is paid before it is used.
    if name in ("Run", "StepSpec", "Interrupted"):
        from sandbox import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
