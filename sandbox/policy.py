"""The policy model: data plus one pure function, ``Policy.decide(path, op) -> Decision``.

A :class:`PolicySpec` is a validated policy file (layout + rules), independent of any run.
:meth:`PolicySpec.bind` places it on one run -- host root, workspace, run folder, temp dirs, mode --
and gives the :class:`Policy` every enforcer asks. ``decide`` does no I/O, no logging and no
patching: callers pass the *resolved* absolute path (see :mod:`sandbox._paths`); the policy compares
it component by component, never by string prefix, and caches the answer.

How a path is decided (first match wins):

1. The path is placed in a *zone* by its longest matching root: a mount's real host target, the run
   folder's storage, the workspace, the host root (every host path is an alias of the same path in
   the workspace, so a mount's real target is exactly as protected as its workspace path), a temp
   dir, or *outside* everything. Inside the first four it gets a workspace-relative path ``rel``.
2. The policy file's rules, in order, are matched against ``rel``.
3. Built-in rules: reads are allowed (a read of the workspace looks in the run folder first:
   read-your-writes); a mutation inside the run folder or a temp dir is allowed; a mutation of the
   workspace elsewhere is redirected to ``$TV_RUN_DIR/<rel>``; a mutation of a mount with no rule is
   denied; a mutation outside everything is denied.
4. In audit mode, a denial inside the workspace (the mounts included) -- and an allowed mutation of
   a mount (development's writable lakehouse) -- becomes a copy-on-write
   redirect into ``$TV_RUN_DIR/audit/<rel>``, marked ``captured``: the host is never touched.
"""

from __future__ import annotations

import os
import posixpath

from sandbox._paths import is_within, parts
from sandbox._record import field, record, replace
from sandbox.rules import MUTATING, OP_GROUPS, Action, Decision, Op, Rule, _match

# Every sandboxed interpreter imports this module at start-up: it imports nothing beyond what the
# interpreter has already loaded (no enum, dataclasses, typing, json, hashlib or fnmatch at import).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

    from sandbox.policy_kernel import KernelPaths

__all__ = [
    "AUDIT_DIR",
    "KERNEL_SETTINGS",
    "MODES",
    "MUTATING",
    "NETWORK_SETTINGS",
    "OP_GROUPS",
    "OVERLAY_RULES",
    "PROFILES",
    "RESERVED_RULE",
    "RESERVED_RUN_FILES",
    "Action",
    "Decision",
    "Layout",
    "Op",
    "Policy",
    "PolicySpec",
    "Rule",
    "RunContext",
    "overlay_maps",
]

MODES = ("enforce", "audit")
PROFILES = ("production", "development")
KERNEL_SETTINGS = ("warn", "require", "off")
#: ``[kernel] network``: none (the default): each step in its own network namespace, loopback only;
#: host: the machine's network (a step that downloads, or talks to a Ray cluster on purpose).
NETWORK_SETTINGS = ("none", "host")
AUDIT_DIR = "audit"  # $TV_RUN_DIR/audit/<rel>: audit-mode copies of protected paths
#: The redirects the kernel layer's overlays perform by themselves (the workspace overlay's upper
#: layer is the run folder; audit mode's mount overlays capture into audit/): under them an
#: enforcer acts on the original path -- captures included -- and lets the kernel map it.
OVERLAY_RULES = frozenset({"workspace-redirect", "read-through", "audit-read-through"})


def overlay_maps(d: Decision) -> bool:
    """Would the kernel layer's overlay carry out ``d`` by itself (see :data:`OVERLAY_RULES`)?"""
    return d.captured or d.rule in OVERLAY_RULES


#: The sandbox's own files in a run folder (relative to ``$TV_RUN_DIR``; ``*`` within one name):
#: the report, the export's manifest, the record of the policy, the event log, the steps' logs and
#: audit mode's lakehouse diff. A step's mutation of one is denied by the built-in rule
#: ``sandbox-reserved-name`` (before the policy file's rules: no policy can allow it), so a
#: step's file is never silently replaced by the sandbox's. Documented in README.md.
RESERVED_RUN_FILES: tuple[str, ...] = (
    "sandbox_report.json",
    "manifest.json",
    "config/policy.json",
    "logs/sandbox_events.jsonl",
    "logs/sandbox_native.jsonl",
    "logs/*.stderr.log",
    "logs/*.stdout.log",
    "reports/lakehouse_diff.json",
)
#: The same names as paths below the workspace's root: what a write there lands on when the
#: workspace's writes are redirected into the run folder (``manifest.json`` from the step's
#: working folder is ``$TV_RUN_DIR/manifest.json``) -- denied by the same rule, at that decision.
_RESERVED_RELS = tuple(tuple(n.split("/")) for n in RESERVED_RUN_FILES)
RESERVED_RULE = Rule(
    "sandbox-reserved-name",
    tuple("{run_dir}/" + n for n in RESERVED_RUN_FILES),
    MUTATING,
    Action.DENY,
    "this name in the run folder is tv-sandbox's own (report, manifest, policy record, event log, "
    "step logs, lakehouse diff)",
    "write your file under another name, e.g. in $TV_RUN_DIR/reports/ or $TV_RUN_DIR/data/",
)


@record(frozen=True)
class Layout:
    """Where things live, relative to the host root (and, identically, to the workspace)."""

    lakehouse: str = "data/lakehouse"
    exports: str = "export"
    runs: str = "artifacts/summaries/runs"
    run_folders: tuple[str, ...] = ("data", "reports", "config", "logs")

    def placeholders(self, run_id: str) -> dict[str, str]:
        return {
            "lakehouse": self.lakehouse,
            "exports": self.exports,
            "runs": self.runs,
            "run_id": run_id,
            "run_dir": f"{self.runs}/{run_id}",
            "scan_dir": f"{self.exports}/{run_id}",
        }

    def mounts(self) -> dict[str, str]:
        """The read-only mounts of the host every workspace links in, by name."""
        return {"lakehouse": self.lakehouse, "exports": self.exports}


_SETTLE_HOPS = 4  # redirects Policy.settle follows through the run's own links


@record(frozen=True)
class PolicySpec:
    """A validated policy file. Build it with :func:`sandbox.loader.load_policy`."""

    name: str
    profile: str
    layout: Layout
    rules: tuple[Rule, ...]
    description: str = ""
    kernel: str = "warn"
    source: str = "<memory>"
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    network: str = "none"  # [kernel] network: NETWORK_SETTINGS

    @property
    def sha256(self) -> str:
        """Hash of the policy's content (not its file name): recorded in every manifest."""
        known: str | None = self.__dict__.get("_sha256")
        if known is None:  # computed once (the report and the manifest both ask)
            from sandbox import _json
            from sandbox._digest import sha256_hex

            known = sha256_hex(_json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode())
            object.__setattr__(self, "_sha256", known)
        return known

    def bind(
        self,
        *,
        host: str | os.PathLike[str],
        run_id: str,
        workspace: str | None = None,
        mode: str = "enforce",
        temp_dirs: Sequence[str] = (),
        run_storage: str | None = None,
        mount_targets: Mapping[str, str] | None = None,
        profile: str | None = None,
        runs_view: str | None = None,
    ) -> Policy:
        """Place this policy on one run.

        The launcher passes every path absolute and already real (realpath). A library user passes
        ``host`` and ``run_id`` only (``load_policy("production").bind(host=..., run_id=...)``):
        then the host is its own workspace -- a relative or host path is redirected to
        ``HOST/<runs>/<run_id>/<rel>``, the run folder, made on the first write -- and ``host`` and
        the mounts' real targets are resolved here.
        """
        if workspace is None:
            host = os.path.realpath(host)
            workspace = host
            if mount_targets is None:
                mount_targets = {
                    n: os.path.realpath(os.path.join(host, r)) for n, r in self.layout.mounts().items()
                }
        host = os.fspath(host)
        return Policy(
            self,
            RunContext(
                host=host,
                workspace=workspace,
                run_id=run_id,
                mode=mode,
                profile=profile or self.profile,
                temp_dirs=tuple(temp_dirs),
                run_storage=run_storage,
                mount_targets=dict(mount_targets or {}),
                runs_view=runs_view,
            ),
        )


@record(frozen=True)
class RunContext:
    """The run a policy is bound to. Serialisable, so child interpreters rebuild the same policy."""

    host: str
    workspace: str
    run_id: str
    mode: str = "enforce"
    profile: str = "production"
    temp_dirs: tuple[str, ...] = ()
    run_storage: str | None = None  # where the run folder really lives, when not in the workspace
    mount_targets: dict[str, str] = field(default_factory=dict)  # mount name -> real host path
    # Without the overlay, the real folder ``ws/<runs>`` links to (``Workspace.runs_view``): a
    # path there is the workspace's ``<runs>/...``.
    runs_view: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "workspace": self.workspace,
            "run_id": self.run_id,
            "mode": self.mode,
            "profile": self.profile,
            "temp_dirs": list(self.temp_dirs),
            "run_storage": self.run_storage,
            "mount_targets": dict(self.mount_targets),
            "runs_view": self.runs_view,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunContext:
        return cls(
            host=d["host"],
            workspace=d["workspace"],
            run_id=d["run_id"],
            mode=d.get("mode", "enforce"),
            profile=d.get("profile", "production"),
            temp_dirs=tuple(d.get("temp_dirs", ())),
            run_storage=d.get("run_storage"),
            mount_targets=dict(d.get("mount_targets", {})),
            runs_view=d.get("runs_view"),
        )


#: Character devices every process may write to (the kernel layer keeps them writable too:
#: ``sandbox.kernel.plan.DEVICE_PATHS``); ``ptmx`` opens a new pseudo-terminal.
_DEVICES = frozenset(
    ("dev", n) for n in ("null", "zero", "full", "tty", "ptmx", "random", "urandom", "stdout", "stderr")
)


def _is_device(p: tuple[str, ...], op: Op) -> bool:
    """Writing to a terminal, /dev/null or an already-open descriptor changes no file of anyone."""
    if op is not Op.WRITE:
        return False
    if p in _DEVICES or (len(p) == 3 and p[:2] == ("dev", "pts")):
        return True
    # /proc/<pid>/fd/N and /dev/fd/N resolve to "pipe:[..]" / "socket:[..]" when not a file.
    return len(p) >= 3 and p[0] in ("proc", "dev") and ":[" in p[-1]


_STRUCTURE_OPS = frozenset({Op.DELETE, Op.RENAME, Op.RMDIR})

# Zones a resolved path can fall in; see the module docstring.
_MOUNT, _RUNSTORE, _WORKSPACE, _HOST, _TEMP, _OUTSIDE = range(6)


class Policy:
    """A policy bound to one run. ``decide`` is pure and cached; everything else is derived data."""

    _CACHE_MAX = 8192

    def __init__(self, spec: PolicySpec, ctx: RunContext) -> None:
        if ctx.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {ctx.mode!r}")
        self.spec, self.ctx = spec, ctx
        lay = spec.layout
        ph = lay.placeholders(ctx.run_id)
        self._rules = tuple(r.compile(ph) for r in (RESERVED_RULE, *spec.rules))
        self.workspace = ctx.workspace
        self.run_rel: tuple[str, ...] = tuple(c for c in ph["run_dir"].split("/") if c)
        self.run_dir = posixpath.join(ctx.workspace, *self.run_rel)
        self._mount_rels = {n: tuple(c for c in p.split("/") if c) for n, p in lay.mounts().items()}
        roots: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = []
        for name, target in ctx.mount_targets.items():
            roots.append((parts(target), _MOUNT, self._mount_rels[name]))
        if ctx.run_storage:
            roots.append((parts(ctx.run_storage), _RUNSTORE, self.run_rel))
        if ctx.runs_view:
            roots.append((parts(ctx.runs_view), _WORKSPACE, self.run_rel[:-1]))
        roots.append((parts(ctx.workspace), _WORKSPACE, ()))
        roots.append((parts(ctx.host), _HOST, ()))
        roots.extend((parts(t), _TEMP, ()) for t in ctx.temp_dirs)
        # Longest root first: the workspace may sit in /tmp, the host may sit in /tmp (tests do).
        self._roots = sorted(roots, key=lambda r: len(r[0]), reverse=True)
        self._cache: dict[tuple[str, Op], Decision] = {}
        self._family_cache: dict[tuple[str, Op], Decision | None] = {}

    # -- derived paths ----------------------------------------------------------------------------

    def workspace_path(self, rel: Iterable[str]) -> str:
        return posixpath.join(self.ctx.workspace, *rel)

    def run_path(self, rel: Iterable[str]) -> str:
        """``$TV_RUN_DIR/<rel>``: where a redirected workspace path lands."""
        return posixpath.join(self.run_dir, *rel)

    @property
    def profile(self) -> str:
        return self.ctx.profile

    @property
    def mode(self) -> str:
        return self.ctx.mode

    def to_dict(self) -> dict[str, Any]:
        """The resolved policy: what a child interpreter needs to rebuild it (see
        :mod:`sandbox.resolved`)."""
        return {"spec": dict(self.spec.data), "source": self.spec.source, "run": self.ctx.to_dict()}

    def __repr__(self) -> str:
        c = self.ctx
        return (
            f"Policy({self.spec.name!r}, profile={c.profile!r}, mode={c.mode!r}, "
            f"workspace={c.workspace!r}, run_dir={self.run_dir!r}, host={c.host!r})"
        )

    def user_path(self, path: str) -> str:
        """A resolved ``path`` as the user knows it, for messages and event logs: relative to the
        workspace (which is the host's layout) when it lies in the workspace, the host, a mount's
        real target or the run folder's storage -- ``data/lakehouse/x``, never the temporary
        ``/tmp/tv-sandbox-.../ws/data/lakehouse/x`` -- else unchanged."""
        zone, rel = self._locate(parts(path))
        if zone in (_OUTSIDE, _TEMP):
            return path
        return "/".join(rel) or "."

    def host_path_of(self, path: str) -> str:
        """A resolved ``path`` where the user finds it, for event logs: on the host -- a path of
        the workspace, the host or a mount is the host's path of the same name, one of the run
        folder's storage where the run is exported (``HOST/<runs>/<RUN_ID>/...``) -- else (the temp
        dir, outside) unchanged. What every layer's events show in ``resolved`` and ``target``."""
        user = self.user_path(path)
        if user.startswith("/"):
            return user
        return self.ctx.host if user == "." else posixpath.join(self.ctx.host, user)

    def kernel_paths(self) -> KernelPaths:
        """The host paths the kernel layer must bind read-only or writable, beyond the mounts, so
        that every layer enforces this policy's rules the same way (see :class:`KernelPaths`).

        A rule on a folder outside the mounts (``deny configs/**``, ``allow data/cache/**``) is a
        bind; a rule that only restates the kernel layer's default (a file of a read-only mount)
        needs none. ``ValueError`` names a rule the kernel layer cannot enforce alike: a glob where
        the default differs, a read denial, a redirect inside a mount, a denial inside the run
        folder. Pure: decided on paths, no I/O.
        """
        from sandbox.policy_kernel import kernel_paths

        return kernel_paths(self)

    # -- the decision -----------------------------------------------------------------------------

    def decide(self, path: str, op: Op) -> Decision:
        """Decide ``op`` on ``path``, an absolute, normalised and *resolved* path."""
        key = (path, op)
        d = self._cache.get(key)
        if d is None:
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            d = self._cache[key] = self._decide(path, op)
        return d

    def decide_children(self, folder: str, op: Op) -> Decision | None:
        """What ``decide(folder + "/" + name, op)`` is for *every* name, when the name does not matter.

        An enforcer that meets many new files in one folder (a write loop) decides once per folder:
        the answer's ``path`` is ``folder`` and its ``target`` the folder's target, each entry
        ``name`` getting ``path/name`` and ``target/name``. ``None`` when names matter: a rule
        names some entries (``{lakehouse}/selection_audit.json``), a root, a mount or the run folder
        is an entry of the folder, or devices live there. ``folder`` is resolved, like ``decide``'s
        path; pure and cached.
        """
        key = (folder, op)
        if key in self._family_cache:
            return self._family_cache[key]
        if len(self._family_cache) >= self._CACHE_MAX:
            self._family_cache.clear()
        d = self._family_cache[key] = self._decide_children(folder, op)
        return d

    def _decide_children(self, folder: str, op: Op) -> Decision | None:
        p = parts(folder)
        if any(len(root) == len(p) + 1 and root[:-1] == p for root, _z, _r in self._roots):
            return None  # an entry is a root of its own (the workspace, the run storage, a mount)
        zone, rel = self._locate(p)
        if zone == _OUTSIDE and p[:1] in (("dev",), ("proc",)):
            return None  # devices and /proc/<pid>/fd links are told apart by name
        if zone not in (_OUTSIDE, _TEMP):
            specials = [self.run_rel, *self._mount_rels.values()]
            if any(len(s) == len(rel) + 1 and s[:-1] == rel for s in specials):
                return None  # the run folder or a mount is an entry of this folder
            if any(cr.matches_child(rel, op) is None for cr in self._rules):
                return None  # a rule names some entries and not others
            if op is not Op.READ and any(
                len(pat) == len(rel) + 1 and pat[:-1] == rel for pat in _RESERVED_RELS
            ):
                return None  # a write redirected into the run folder may land on a reserved name
        probe = "\x00"  # no entry has this name; every name is decided alike (checked above)
        d = self._decide(posixpath.join(folder, probe), op)
        target = posixpath.dirname(d.target) if d.target is not None else None
        return replace(d, path=folder, target=target)

    def settle(self, d: Decision, op: Op, resolve: Callable[[str], str], _depth: int = 0) -> Decision:
        """Decide where a REDIRECT of a mutation really lands, before an enforcer executes it.

        A redirect's target may lead elsewhere: the run folder can hold a symlink the step made
        (``$TV_RUN_DIR/x -> the lakehouse``), and ``chmod x`` redirected there would follow it.
        ``resolve`` (the enforcer's, with its own follow rule) gives the target's real path, which
        is decided again: ALLOW returns ``d`` aimed at that real path; anything else returns the
        target's own decision (a DENY, or an audit capture). Pure apart from ``resolve``.
        """
        if d.action is not Action.REDIRECT or d.target is None or op is Op.READ:
            return d
        real = resolve(d.target)
        again = self.decide(real, op)
        if again.action is Action.ALLOW:
            return d if real == d.target else replace(d, target=real)
        if again.action is Action.REDIRECT and again.target != d.target:
            if _depth < _SETTLE_HOPS:
                return self.settle(again, op, resolve, _depth + 1)
            # A chain of the run's links longer than we follow: fail closed, as the kernel's ELOOP
            # does, never act on a target whose real place is still unknown.
            return Decision(
                Action.DENY,
                "redirect-link-chain",
                d.path,
                reason=f"the redirect's target leads through more than {_SETTLE_HOPS} of the run's links",
                hint="write to the real path instead of through chains of links",
            )
        return again

    def _locate(self, p: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
        for root, zone, prefix in self._roots:
            if is_within(p, root):
                return zone, prefix + p[len(root) :]
        return _OUTSIDE, ()

    def _decide(self, path: str, op: Op) -> Decision:
        p = parts(path)
        zone, rel = self._locate(p)
        if zone == _OUTSIDE:
            if op is Op.READ:
                return Decision(Action.ALLOW, "read", path)
            if _is_device(p, op):
                return Decision(Action.ALLOW, "device", path)
            return Decision(
                Action.DENY,
                "outside-writable-roots",
                path,
                reason="only the run folder and the temp dir are writable",
                hint=f"write under $TV_RUN_DIR ({self.run_dir}) or use a relative path",
            )
        if zone == _TEMP:
            return Decision(Action.ALLOW, "temp-dir", path)
        d = self._decide_rel(path, rel, op, zone)
        if self.ctx.mode == "audit" and op is not Op.READ and d.action is not Action.REDIRECT:
            # Audit mode never touches the host: a denial is captured, and so is a mutation of a
            # mount the profile allows (development's writable lakehouse) -- as the kernel layer's
            # capture overlays do.
            if d.action is Action.ALLOW and self._mount_of(rel) is None:
                return d
            return Decision(
                Action.REDIRECT,
                d.rule,
                path,
                target=self.run_path((AUDIT_DIR, *rel)),
                reason=d.reason,
                hint=d.hint,
                captured=True,
            )
        return d

    def _mount_of(self, rel: tuple[str, ...]) -> str | None:
        for name, mrel in self._mount_rels.items():
            if is_within(rel, mrel):
                return name
        return None

    def _decide_rel(self, path: str, rel: tuple[str, ...], op: Op, zone: int) -> Decision:
        in_run = is_within(rel, self.run_rel)
        if op in _STRUCTURE_OPS and (rel == self.run_rel or not rel):
            return Decision(
                Action.DENY,
                "workspace-structure",
                path,
                reason="the workspace and the run folder themselves cannot be removed or renamed",
                hint="remove or rename what is inside $TV_RUN_DIR instead",
            )
        # What an ALLOW executes on: a host alias of a non-mount path is the workspace copy of it
        # (the host's own run-export folder must not be written before the atomic export).
        alias_target = self.workspace_path(rel) if zone == _HOST else None
        mount = self._mount_of(rel)
        if zone == _MOUNT or mount is not None:
            alias_target = None  # a mount is the host's own data: allowed means allowed there
        for cr in self._rules:
            if cr.matches(rel, op):
                r = cr.rule
                if r.action is Action.REDIRECT:
                    if self._lands_on_reserved(rel):
                        return self._reserved(path, rel)
                    return Decision(Action.REDIRECT, r.name, path, self.run_path(rel), r.reason, r.hint)
                if r.action is Action.ALLOW and alias_target is not None:
                    return Decision(Action.REDIRECT, r.name, path, alias_target, r.reason, r.hint)
                return Decision(r.action, r.name, path, None, r.reason, r.hint)
        if op is Op.READ:
            if self.ctx.mode == "audit" and mount is not None:
                return Decision(Action.REDIRECT, "audit-read-through", path, self.run_path((AUDIT_DIR, *rel)))
            if mount is not None:
                return Decision(Action.ALLOW, "read", path)
            if in_run:
                if alias_target is not None:
                    return Decision(Action.REDIRECT, "read-through", path, alias_target)
                return Decision(Action.ALLOW, "read", path)
            return Decision(Action.REDIRECT, "read-through", path, self.run_path(rel))
        if in_run:
            if alias_target is not None:
                return Decision(Action.REDIRECT, "run-folder", path, alias_target)
            return Decision(Action.ALLOW, "run-folder", path)
        if mount is not None:
            return Decision(
                Action.DENY,
                f"{mount}-read-only",
                path,
                reason=f"the {mount} mount is read-only",
                hint=f"write under $TV_RUN_DIR/data/ ({self.run_path(('data',))}) instead",
            )
        if self._lands_on_reserved(rel):
            return self._reserved(path, rel)
        return Decision(
            Action.REDIRECT,
            "workspace-redirect",
            path,
            self.run_path(rel),
            reason="outputs of a run land in its run folder",
        )

    @staticmethod
    def _lands_on_reserved(rel: tuple[str, ...]) -> bool:
        """Would a write to ``rel``, redirected to ``$TV_RUN_DIR/<rel>``, land on a reserved name?"""
        return any(len(pat) == len(rel) and _match(pat, rel) for pat in _RESERVED_RELS)

    def _reserved(self, path: str, rel: tuple[str, ...]) -> Decision:
        r = RESERVED_RULE
        where = "/".join(rel)
        return Decision(
            Action.DENY,
            r.name,
            path,
            reason=f"{where} lands at $TV_RUN_DIR/{where}, a name in the run folder that is "
            "tv-sandbox's own (report, manifest, policy record, event log, step logs, lakehouse diff)",
            hint=r.hint,
        )


def bind_for_library(
    policy: Policy | PolicySpec,
    host: str | os.PathLike[str] | None,
    run_id: str | None,
    mode: str = "enforce",
) -> Policy:
    """``policy`` bound to a run: as it is when already bound (then ``host``/``run_id`` must be
    None), else ``policy.bind(host=host, run_id=run_id, mode=mode)``. What the guard and the fsspec
    filesystem do with ``policy=`` (one explained ``TypeError`` for what they cannot use)."""
    if isinstance(policy, Policy):
        if host is not None or run_id is not None:
            raise TypeError("host= and run_id= bind a PolicySpec; this policy is already bound to its run")
        return policy
    if isinstance(policy, PolicySpec):
        if host is None or run_id is None:
            raise TypeError(
                f"policy {policy.name!r} is not bound to a run yet: pass host= and run_id= too, or "
                "bind it first: load_policy(...).bind(host=HOST, run_id=RUN_ID)"
            )
        return policy.bind(host=host, run_id=run_id, mode=mode)
    raise TypeError(
        f"policy must be a Policy (bound) or a PolicySpec (from load_policy), not {type(policy).__name__}"
    )
