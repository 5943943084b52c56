"""A kernel plan: the mounts and Landlock rules of one step, as data, and :func:`apply` to enact it.

The plan says *what* (which folders stay writable, which overlays and binds make the step's view);
the runner decides it from the policy and the workspace. ``apply`` only executes it, in the
calling process, in a fixed order::

    unshare the mount namespace -> make it private -> overlays -> binds
        -> everything else read-only -> lock the mounts -> Landlock

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
    from collections.abc import Mapping, Sequence
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


def _absolute(what: str, path: str) -> str:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ValueError(f"{what} must be an absolute path, not {path!r}")
    return path


@record(frozen=True)
class Overlay:
    """An overlay mounted on ``target``: ``upper`` over ``lower`` (first = topmost); writes land in
    ``upper``; ``work`` is overlayfs's scratch folder, on ``upper``'s filesystem."""

    lower: tuple[str, ...]
    upper: str
    work: str
    target: str

    def __post_init__(self) -> None:
        lower = (self.lower,) if isinstance(self.lower, str) else tuple(self.lower)
        object.__setattr__(self, "lower", tuple(_absolute("overlay lower", p) for p in lower))
        if not self.lower:
            raise ValueError("an overlay needs at least one lower folder")
        for name in ("upper", "work", "target"):
            _absolute(f"overlay {name}", getattr(self, name))


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
    """

    writable: tuple[str, ...] = ()
    overlays: tuple[Overlay, ...] = ()
    binds: tuple[Bind, ...] = ()
    readonly_root: bool = False
    landlock: bool = True
    namespace: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "writable", tuple(_absolute("writable path", p) for p in self.writable))
        object.__setattr__(self, "overlays", tuple(self.overlays))
        object.__setattr__(self, "binds", tuple(self.binds))
        if (self.overlays or self.binds or self.readonly_root) and not self.namespace:
            raise ValueError(
                "overlays, binds and readonly_root need namespace=True: "
                "without a private mount namespace they would change the host's mounts"
            )

    def writable_roots(self) -> tuple[str, ...]:
        """Everything that stays writable: ``writable``, overlay targets, writable bind targets."""
        roots = [*self.writable, *(o.target for o in self.overlays)]
        roots += [b.dst for b in self.binds if not b.readonly]
        return tuple(dict.fromkeys(roots))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["writable"] = list(self.writable)
        for o in d["overlays"]:
            o["lower"] = list(o["lower"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KernelPlan:
        """The inverse of :meth:`to_dict`; unknown keys are an error (a plan is never half-read)."""
        known = {"writable", "overlays", "binds", "readonly_root", "landlock", "namespace"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown kernel plan keys: {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}"
            )
        return cls(
            writable=tuple(d.get("writable", ())),
            overlays=tuple(
                Overlay(tuple(o["lower"]), o["upper"], o["work"], o["target"]) for o in d.get("overlays", ())
            ),
            binds=tuple(Bind(b["src"], b["dst"], bool(b.get("readonly", True))) for b in d.get("binds", ())),
            readonly_root=bool(d.get("readonly_root", False)),
            landlock=bool(d.get("landlock", True)),
            namespace=bool(d.get("namespace", False)),
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
            seconds=float(kv["seconds"]),
        )


def apply(plan: KernelPlan, *, extra_writable: Sequence[str] = DEVICE_PATHS) -> AppliedLayers:
    """Enact ``plan`` on the calling process, irrevocably. Call it in a forked, single-threaded
    child before ``exec`` (see :func:`sandbox.kernel.spawn`), never in a long-lived process.

    ``extra_writable`` (the device nodes by default) join the Landlock rules when they exist.
    Raises ``OSError`` whose message names the step that failed; the process is then in an
    undefined state and must exit.
    """
    # Here, not at the top: a plan is data the runner builds without loading ctypes. spawn()
    # imports both before it forks, so in its child this is a dictionary lookup.
    from sandbox.kernel import landlock, mounts

    t0 = time.perf_counter()
    userns = False
    if plan.namespace:
        userns = mounts.unshare_mount_namespace()
        mounts.make_private()
    for o in plan.overlays:
        mounts.overlay(o.lower, o.upper, o.work, o.target)
    for b in plan.binds:
        mounts.bind(b.src, b.dst, readonly=b.readonly)
    roots = plan.writable_roots()
    if plan.readonly_root:
        mounts.remount_all_readonly(roots)
    if plan.namespace:
        mounts.lock_mounts()
    abi = landlock.abi_version() if plan.landlock else 0
    if abi > 0:
        landlock.restrict_writes([*roots, *(p for p in extra_writable if os.path.exists(p))], abi=abi)
    return AppliedLayers(
        landlock_abi=abi,
        namespace=plan.namespace,
        user_namespace=userns,
        overlay=bool(plan.overlays),
        readonly_root=plan.readonly_root,
        readonly_binds=sum(1 for b in plan.binds if b.readonly),
        seconds=time.perf_counter() - t0,
    )
