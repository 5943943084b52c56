"""What the kernel layer must add to its plan to enforce a policy's rules as the Python guard does
(:class:`KernelPaths`, ``Policy.kernel_paths``), and the check that it can (:func:`kernel_compilable`,
made when a policy file is loaded). Part of the policy model: pure, decided on paths, no I/O. Apart
from ``policy.py`` because no sandboxed interpreter needs it -- only the launcher and the loader.
"""

from __future__ import annotations

import posixpath

from sandbox._paths import is_within
from sandbox._record import record, replace
from sandbox.policy import RESERVED_RULE, Policy, PolicySpec
from sandbox.rules import MUTATING, Action, Op, Rule

__all__ = ["KernelPaths", "kernel_compilable", "kernel_paths"]


@record(frozen=True)
class KernelPaths:
    """What the kernel layer must add to its plan so that it enforces a policy's rules on paths
    outside the mounts' defaults exactly as the Python guard does (``Policy.kernel_paths``).

    Paths are relative to the workspace -- and, identically, to the host -- and sorted parents
    first: bind them in this order, after the workspace overlay and the mounts' binds.
    ``readonly``: bind ``HOST/<rel>`` read-only over ``<workspace>/<rel>`` (audit mode: a capture
    overlay whose upper layer is ``$TV_RUN_DIR/audit/<rel>``, as for the mounts). ``writable``:
    bind ``HOST/<rel>`` writable there and allow it in Landlock (an ``allow`` rule writes the host,
    as development's lakehouse does). A path that does not exist on the host is skipped (nothing to
    bind: a denied name that does not exist is created, if at all, in the run folder).
    """

    readonly: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()


_WILD = ("*", "?", "[")
_RO, _RW, _REDIRECT = "read-only", "writable", "redirected"


def _kernel_refusal(rule: Rule, pattern: str, problem: str) -> ValueError:
    return ValueError(
        f"rule {rule.name!r} ({pattern}): {problem}. The kernel layer enforces a rule only on a "
        "whole folder or file named without wildcards (e.g. 'configs/**' or 'data/cache'), as a "
        "read-only or writable bind; reads are never denied by it. Name the folder, or drop the rule"
    )


def kernel_paths(policy: Policy) -> KernelPaths:
    """See :meth:`Policy.kernel_paths`; raises ``ValueError`` naming the rule the kernel cannot do."""
    enforce = policy if policy.mode == "enforce" else Policy(policy.spec, replace(policy.ctx, mode="enforce"))
    ws = enforce.ctx.workspace

    def effective(rel: tuple[str, ...]) -> str:
        a = enforce.decide(posixpath.join(ws, *rel), Op.WRITE).action
        return _RO if a is Action.DENY else _RW if a is Action.ALLOW else _REDIRECT

    opened = {name: effective((*mrel, "\x00")) == _RW for name, mrel in enforce._mount_rels.items()}

    def default(rel: tuple[str, ...]) -> str:
        if is_within(rel, enforce.run_rel):
            return _RW
        m = enforce._mount_of(rel)
        if m is None:
            return _REDIRECT
        return _RW if opened[m] else _RO

    ro: set[tuple[str, ...]] = set()
    rw: set[tuple[str, ...]] = set()
    for cr in enforce._rules:
        rule = cr.rule
        if rule is RESERVED_RULE:  # the run folder's own files: see report.set_aside_step_files
            continue
        shown = ", ".join(rule.paths)
        if Op.READ in rule.ops and rule.action is Action.DENY:
            raise _kernel_refusal(rule, shown, "it denies reads, which only the Python guard can do")
        if not rule.ops & MUTATING:
            continue
        for pat in cr.patterns:
            tree = bool(pat) and pat[-1] == "**"
            rel = pat[:-1] if tree else pat
            wild = next((i for i, c in enumerate(rel) if any(w in c for w in _WILD)), None)
            if wild is not None:  # a glob: fine only where the rule does what the kernel does anyway
                want = {Action.DENY: _RO, Action.ALLOW: _RW}.get(rule.action, _REDIRECT)
                if want != default(rel[:wild]):
                    raise _kernel_refusal(
                        rule, shown, f"{'/'.join(pat)} is a glob where the kernel layer's default differs"
                    )
                continue
            if not rel:
                raise _kernel_refusal(rule, shown, "it names the whole workspace")
            eff = effective((*rel, "\x00") if tree else rel)
            base = default(rel)
            if eff == base:
                continue
            if is_within(rel, enforce.run_rel):
                raise _kernel_refusal(rule, shown, "the run folder stays writable under the kernel layer")
            if eff == _REDIRECT:
                raise _kernel_refusal(
                    rule, shown, "a redirect inside a mount (the kernel layer binds the mounts whole)"
                )
            (ro if eff == _RO else rw).add(rel)
    order = sorted(ro | rw, key=lambda r: (len(r), r))
    return KernelPaths(
        readonly=tuple("/".join(r) for r in order if r in ro),
        writable=tuple("/".join(r) for r in order if r in rw),
    )


def kernel_compilable(spec: PolicySpec) -> KernelPaths:
    """Check that the kernel layer can enforce every rule of ``spec`` as the Python guard does
    (``Policy.kernel_paths`` of the spec placed on a sample run); :class:`~sandbox.errors.PolicyError`
    naming the rule and what the kernel layer can enforce when it cannot. Pure."""
    from sandbox.errors import PolicyError

    h = "/tv-sandbox-check/host"
    policy = spec.bind(
        host=h,
        workspace="/tv-sandbox-check/ws",
        run_id="RUN_ID",
        mount_targets={n: posixpath.join(h, r) for n, r in spec.layout.mounts().items()},
    )
    try:
        return policy.kernel_paths()
    except ValueError as e:
        raise PolicyError(spec.source, "rule", str(e)) from None
