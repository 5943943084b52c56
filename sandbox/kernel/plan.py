"""A kernel plan: the mounts and Landlock rules of one step, as data, and :func:`apply` to enact it.

The plan says *what* (which folders stay writable, which overlays and binds make the step's view);
the runner decides it from the policy and the workspace. ``apply`` only executes it, in the
calling process, in a fixed order::

    unshare user + mount (+ PID, + network) namespaces -> lo up -> make it private -> overlays
        -> binds -> hidden folders (empty read-only tmpfs) -> everything else read-only
        -> writable places nodev,nosuid -> private /dev/shm
        -> [PID 1 of the new PID namespace: a fresh /proc] -> Landlock -> drop every capability

:func:`enter` is the part before the PID namespace's first process exists, :func:`seal` the part
that process (or, without a PID namespace, the launcher's child itself) does; :func:`apply` both.

Mounts come before Landlock because a Landlock rule binds to the inode its path reaches when the
rule is added (and a Landlocked process may not mount). The read-only pass comes after the binds
so a writable bind keeps its own, writable, mount.
"""

from __future__ import annotations

import os
import time

from sandbox._record import asdict, field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

#: Devices a step may always write (the policy's device rule): what ``> /dev/null``, a terminal,
#: multiprocessing semaphores (/dev/shm) and pseudo-terminals need. Missing ones are skipped.
DEVICE_PATHS = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/shm",
    "/dev/pts",
)


def devices_beside(roots: Sequence[str], devices: Sequence[str] = DEVICE_PATHS) -> list[str]:
    """The ``devices`` that exist and hold none of ``roots``. A workspace in ``/dev/shm``
    (``TMPDIR=/dev/shm``; the full layer's private ``/dev/shm`` hides it, so such a run falls back
    to Landlock alone) must not make the machine's whole ``/dev/shm`` writable: the step's own
    workspace base, every other run's workspace and run folder there, the pool of views later
    runs take."""
    out = []
    for p in devices:
        if not os.path.exists(p):
            continue
        real = os.path.realpath(p) if os.path.islink(p) else p
        inside = real.rstrip("/") + "/"
        if not any(r == real or r.startswith(inside) for r in roots):
            out.append(p)
    return out


def _absolute(what: str, path: str) -> str:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"{what} must be an absolute path, not {path!r}")
    return path


@record(frozen=True)
class Overlay:
    """An overlay mounted on ``target``: ``upper`` over ``lower`` (first = topmost); writes land in
    ``upper``; ``work`` is overlayfs's scratch folder, on ``upper``'s filesystem. ``points``:
    folders (relative paths) made on a fresh tmpfs mounted on the first lower folder just before
    the overlay -- mount points that show in the merged view without a write to the upper layer,
    nor to the disk (an inode on this VM's ``/tmp`` costs ~50 µs before the step starts)."""

    lower: tuple[str, ...]
    upper: str
    work: str
    target: str
    points: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        lower = (self.lower,) if isinstance(self.lower, str) else tuple(self.lower)
        object.__setattr__(self, "lower", tuple(_absolute("overlay lower", p) for p in lower))
        if not self.lower:
            raise ValueError("an overlay needs at least one lower folder")
        for name in ("upper", "work", "target"):
            _absolute(f"overlay {name}", getattr(self, name))
        object.__setattr__(self, "points", tuple(self.points))
        for rel in self.points:
            if not rel or os.path.isabs(rel) or os.path.normpath(rel) != rel or rel.split("/")[0] == "..":
                raise ValueError(f"overlay mount point must be a plain relative path, not {rel!r}")


@record(frozen=True)
class Bind:
    """``src`` bound onto ``dst`` with the mounts below it; read-only (every mount in it) unless
    ``readonly`` is False."""

    src: str
    dst: str
    readonly: bool = True

    def __post_init__(self) -> None:
        _absolute("bind source", self.src)
        _absolute("bind destination", self.dst)


@record(frozen=True)
class KernelPlan:
    """What the kernel layer does for one step.

    ``writable``: folders (or files) that stay writable -- Landlock rules, and kept out of the
    read-only pass. Overlay targets and the destinations of writable binds are writable too,
    without being listed. ``binds`` are applied after ``overlays``, in order, so a bind can sit on
    an overlay's merged tree. ``readonly_root`` makes every other mount read-only (EROFS for every
    mutation, chmod and utime included). ``landlock``: restrict writes with Landlock when the
    kernel offers it (:class:`AppliedLayers` says whether it did). ``namespace``: a private mount
    namespace; required by overlays, binds and ``readonly_root``, which would otherwise change the
    host's own mount table. With a namespace, the command runs without CAP_SYS_ADMIN, so it cannot
    undo the mounts (see :func:`sandbox.kernel.mounts.lock_mounts`).

    ``pid_namespace``: the step runs in its own PID namespace under a small init (see
    :func:`sandbox.kernel.spawn`), with a fresh /proc; needs ``namespace``. ``private_shm``: a
    fresh tmpfs on /dev/shm; needs ``namespace``. ``minimal_dev``: /dev holds only null, zero,
    full, random, urandom, tty, its own pseudo-terminals and /dev/shm
    (:func:`sandbox.kernel.mounts.minimal_dev`); needs ``namespace``. ``nodev_nosuid``: with a
    namespace, every writable root becomes a ``nodev,nosuid`` mount. ``drop_capabilities``: the command runs
    with empty capability sets (bounding, ambient, inheritable, permitted) and no_new_privs.

    ``network_namespace``: the step gets its own network namespace (``--unshare-net``, Docker's
    ``--network none``): only a loopback interface, brought up; no route to any other host or to
    this machine's listeners, and abstract unix sockets are per namespace, so those of the host
    are out of reach too (pathname unix sockets are files: ``hidden`` is for those). Needs
    ``namespace``. ``hidden``: folders covered by an empty read-only tmpfs after the binds (Ray's
    temp dir: its sockets and session); one that does not exist is skipped. Needs ``namespace``.
    """

    writable: tuple[str, ...] = ()
    overlays: tuple[Overlay, ...] = ()
    binds: tuple[Bind, ...] = ()
    readonly_root: bool = False
    landlock: bool = True
    namespace: bool = False
    pid_namespace: bool = False
    private_shm: bool = False
    minimal_dev: bool = False
    nodev_nosuid: bool = True
    drop_capabilities: bool = True
    network_namespace: bool = False
    hidden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "writable", tuple(_absolute("writable path", p) for p in self.writable))
        object.__setattr__(self, "hidden", tuple(_absolute("hidden path", p) for p in self.hidden))
        object.__setattr__(self, "overlays", tuple(self.overlays))
        object.__setattr__(self, "binds", tuple(self.binds))
        if (self.overlays or self.binds or self.readonly_root) and not self.namespace:
            raise ValueError(
                "overlays, binds and readonly_root need namespace=True: "
                "without a private mount namespace they would change the host's mounts"
            )
        needs = (self.pid_namespace, self.private_shm, self.minimal_dev, self.network_namespace, self.hidden)
        if any(needs) and not self.namespace:
            raise ValueError(
                "pid_namespace, private_shm, minimal_dev, network_namespace and hidden need namespace=True"
            )

    def writable_roots(self) -> tuple[str, ...]:
        """Everything that stays writable: ``writable``, overlay targets, writable bind targets."""
        roots = [*self.writable, *(o.target for o in self.overlays)]
        roots += [b.dst for b in self.binds if not b.readonly]
        return tuple(dict.fromkeys(roots))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["writable"] = list(self.writable)
        d["hidden"] = list(self.hidden)
        for o in d["overlays"]:
            o["lower"] = list(o["lower"])
            o["points"] = list(o["points"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KernelPlan:
        """The inverse of :meth:`to_dict`; unknown keys are an error (a plan is never half-read)."""
        known = {"writable", "overlays", "binds", "readonly_root", "landlock", "namespace", "hidden", *_FLAGS}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown kernel plan keys: {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}"
            )
        return cls(
            writable=tuple(d.get("writable", ())),
            overlays=tuple(
                Overlay(tuple(o["lower"]), o["upper"], o["work"], o["target"], tuple(o.get("points", ())))
                for o in d.get("overlays", ())
            ),
            binds=tuple(Bind(b["src"], b["dst"], bool(b.get("readonly", True))) for b in d.get("binds", ())),
            readonly_root=bool(d.get("readonly_root", False)),
            landlock=bool(d.get("landlock", True)),
            namespace=bool(d.get("namespace", False)),
            hidden=tuple(d.get("hidden", ())),
            **{k: bool(d[k]) for k in _FLAGS if k in d},
        )


_FLAGS = (
    "pid_namespace",
    "private_shm",
    "minimal_dev",
    "nodev_nosuid",
    "drop_capabilities",
    "network_namespace",
)


@record(frozen=True)
class AppliedLayers:
    """Which layers :func:`apply` put in place; ``seconds`` is how long it took."""

    landlock_abi: int = 0  # 0: Landlock not applied
    namespace: bool = False
    user_namespace: bool = False
    overlay: bool = False
    readonly_root: bool = False
    readonly_binds: int = 0
    pid_namespace: bool = False
    private_shm: bool = False
    minimal_dev: bool = False
    nodev_nosuid: bool = False
    capabilities_dropped: bool = False
    network_namespace: bool = False
    hidden: int = 0  # folders covered by an empty tmpfs (KernelPlan.hidden that existed)
    seconds: float = field(default=0.0, compare=False)

    def encode(self) -> str:
        """One line of ``key=value`` (no json: the child of a fork imports nothing)."""
        return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in asdict(self).items())

    @classmethod
    def decode(cls, line: str) -> AppliedLayers:
        kv = dict(item.split("=", 1) for item in line.split())
        return cls(
            landlock_abi=int(kv["landlock_abi"]),
            namespace=kv["namespace"] == "1",
            user_namespace=kv["user_namespace"] == "1",
            overlay=kv["overlay"] == "1",
            readonly_root=kv["readonly_root"] == "1",
            readonly_binds=int(kv["readonly_binds"]),
            pid_namespace=kv.get("pid_namespace") == "1",
            private_shm=kv.get("private_shm") == "1",
            minimal_dev=kv.get("minimal_dev") == "1",
            nodev_nosuid=kv.get("nodev_nosuid") == "1",
            capabilities_dropped=kv.get("capabilities_dropped") == "1",
            network_namespace=kv.get("network_namespace") == "1",
            hidden=int(kv.get("hidden", 0)),
            seconds=float(kv["seconds"]),
        )


def apply(plan: KernelPlan, *, extra_writable: Sequence[str] = DEVICE_PATHS) -> AppliedLayers:
    """Enact ``plan`` on the calling process, irrevocably: :func:`enter` then :func:`seal`. Call
    it in a forked, single-threaded child before ``exec`` (see :func:`sandbox.kernel.spawn`),
    never in a long-lived process. A PID namespace needs the fork between the two that
    :func:`sandbox.kernel.spawn` does; here its fresh /proc is mounted only if we are its PID 1.

    ``extra_writable`` (the device nodes by default) join the Landlock rules when they exist.
    Raises ``OSError`` whose message names the step that failed; the process is then in an
    undefined state and must exit.
    """
    entered = enter(plan)
    return seal(plan, entered, extra_writable=extra_writable)


def enter(plan: KernelPlan, *, mapped_by_parent: Callable[[], bool] | None = None) -> tuple[bool, float, int]:
    """The namespaces and mounts of ``plan``; returns ``(user namespace made, start time, folders
    hidden)`` for :func:`seal`. ``mapped_by_parent``: see
    :func:`sandbox.kernel.mounts.unshare_mount_namespace`."""
    t0 = time.perf_counter()
    userns = False
    if plan.namespace:
        userns = enter_namespaces(
            pid_namespace=plan.pid_namespace,
            network_namespace=plan.network_namespace,
            mapped_by_parent=mapped_by_parent,
        )
    return enter_mounts(plan, (userns, t0, 0))


def enter_namespaces(
    *, pid_namespace: bool, network_namespace: bool, mapped_by_parent: Callable[[], bool] | None = None
) -> bool:
    """The first half of :func:`enter` for a plan with ``namespace``: a user and a mount namespace
    (private propagation), the PID and network namespaces asked for, ``lo`` up. None of it
    depends on the plan's paths, so an early keeper does it before the plan is known
    (:func:`sandbox.kernel._early.prefork`). Returns whether a user namespace was made."""
    # Here, not at the top: a plan is data the runner builds without loading ctypes. spawn()
    # imports both before it forks, so in its child this is a dictionary lookup.
    from sandbox.kernel import mounts

    userns = mounts.unshare_mount_namespace(
        pid_namespace=pid_namespace, network_namespace=network_namespace, mapped_by_parent=mapped_by_parent
    )
    if network_namespace:
        mounts.loopback_up()
    mounts.make_private()
    return userns


def enter_dev() -> None:
    """The minimal /dev and the private /dev/shm of every namespace plan (``minimal_dev`` and
    ``private_shm``), and, in PID 1 of a PID namespace, its fresh /proc, made before the plan is
    known: they depend on nothing of it, and the read-only remount and the ``nodev,nosuid`` seal
    of :func:`enter_mounts` leave /dev and /proc alone. (An early keeper's init, waiting for its
    step; :func:`enter_mounts` then skips /dev, :func:`seal` finds /proc made.)"""
    from sandbox.kernel import mounts

    mounts.minimal_dev()
    mounts.private_shm()
    if os.getpid() == 1:
        mounts.mount_proc()


def enter_mounts(
    plan: KernelPlan, entered: tuple[bool, float, int], *, dev_made: bool = False
) -> tuple[bool, float, int]:
    """The second half of :func:`enter`: the plan's mounts, in the namespaces that
    :func:`enter_namespaces` made (``entered``: its answer, the start time, 0); ``dev_made``:
    :func:`enter_dev` made /dev and /dev/shm already."""
    from sandbox.kernel import mounts

    userns, t0, _ = entered
    for o in plan.overlays:
        if o.points:
            mounts.scaffold(o.lower[0], o.points)
        mounts.overlay(o.lower, o.upper, o.work, o.target)
    for b in plan.binds:
        mounts.bind(b.src, b.dst, readonly=b.readonly)
    hidden = sum(1 for p in plan.hidden if mounts.hide(p))
    table = mounts.remount_all_readonly(plan.writable_roots()) if plan.readonly_root else None
    if plan.namespace and plan.nodev_nosuid:
        mounts.seal_writable(plan.writable_roots(), table)
    if plan.minimal_dev and not dev_made:
        mounts.minimal_dev()
    if plan.private_shm and not dev_made:
        mounts.private_shm()
    return userns, t0, hidden


def seal(
    plan: KernelPlan, entered: tuple[bool, float, int], *, extra_writable: Sequence[str] = DEVICE_PATHS
) -> AppliedLayers:
    """The rest of ``plan``, in the process that will fork (or be) the command: a fresh /proc
    when it is PID 1 of the plan's PID namespace, Landlock, then no capability left."""
    from sandbox.kernel import _libc, landlock, mounts

    userns, t0, hidden = entered
    pidns = plan.pid_namespace and os.getpid() == 1
    if pidns:
        mounts.mount_proc()
    roots = plan.writable_roots()
    abi = landlock.abi_version() if plan.landlock else 0
    if abi > 0:
        landlock.restrict_writes([*roots, *devices_beside(roots, extra_writable)], abi=abi)
    if plan.drop_capabilities:
        _libc.drop_all_capabilities()
    elif plan.namespace:
        mounts.lock_mounts()
    return AppliedLayers(
        landlock_abi=abi,
        namespace=plan.namespace,
        user_namespace=userns,
        overlay=bool(plan.overlays),
        readonly_root=plan.readonly_root,
        readonly_binds=sum(1 for b in plan.binds if b.readonly),
        pid_namespace=pidns,
        private_shm=plan.private_shm,
        minimal_dev=plan.minimal_dev,
        nodev_nosuid=plan.namespace and plan.nodev_nosuid,
        capabilities_dropped=plan.drop_capabilities,
        network_namespace=plan.namespace and plan.network_namespace,
        hidden=hidden,
        seconds=time.perf_counter() - t0,
    )


#: What a step lacks when a part of the full kernel layer is missing, for the report's ``missing``.
_CONSEQUENCES = {
    "landlock": "no Landlock: writes outside the run folder are stopped only by the read-only "
    "mounts and the Python guard",
    "user_namespace": "no user namespace: the step's uid is the launcher's own in the initial "
    "namespace (its capabilities are still dropped)",
    "mount_namespace": "no mount namespace, so no overlay and no read-only mounts: chmod, chown, "
    "utime and xattrs of host files are not refused by the kernel",
    "pid_namespace": "no PID namespace: the step can see and signal processes of its uid outside "
    "its run; its leftover processes are SIGKILLed by the launcher's keeper (a child subreaper) "
    "when the command ends",
    "ipc_namespace": "no IPC namespace: the step reaches the machine's System V shared memory, "
    "semaphores and message queues by key, and its POSIX message queues, as their modes allow",
    "private_shm": "no private /dev/shm: the step shares the host's",
    "minimal_dev": "the host's /dev: the step reads the device nodes its uid may (raw disks, for root)",
    "capabilities": "capabilities not dropped",
    "network_namespace": "no network namespace: the step has the machine's network -- it can "
    "connect to any host and to this machine's listeners (a Ray cluster's GCS and raylet, whose "
    "tasks run unsandboxed) and to abstract unix sockets",
}


def missing_layers(
    applied: AppliedLayers | None, why: str = "", *, network_opt_out: str = ""
) -> dict[str, str]:
    """Each part of the full kernel layer that ``applied`` lacks -> what that leaves open (and
    ``why``, the kernel's refusal, when given). ``applied`` None: the whole layer is missing.
    ``network_opt_out``: why the step was given the machine's network on purpose (the policy's
    ``[kernel] network = "host"``), said instead of ``why`` for that part."""
    if applied is None:
        return {"kernel": why or "turned off"}
    have = {
        "landlock": applied.landlock_abi > 0,
        "user_namespace": applied.user_namespace,
        "mount_namespace": applied.namespace,
        "pid_namespace": applied.pid_namespace,
        "ipc_namespace": applied.pid_namespace,  # made with it (mounts.unshare_mount_namespace)
        "private_shm": applied.private_shm,
        "minimal_dev": applied.minimal_dev,
        "capabilities": applied.capabilities_dropped,
        "network_namespace": applied.network_namespace,
    }
    suffix = f" ({why})" if why else ""
    out = {k: _CONSEQUENCES[k] + suffix for k, ok in have.items() if not ok}
    if network_opt_out and "network_namespace" in out:
        out["network_namespace"] = f"{_CONSEQUENCES['network_namespace']} ({network_opt_out})"
    return out
