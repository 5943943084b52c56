"""The resolved policy: how a launcher hands a run's policy to the interpreters of its step.

:func:`save_resolved` writes ``Policy.to_dict()`` -- the policy file's document, its source and the
run it is bound to -- as ``marshal`` (reading it imports nothing; ``json`` would cost milliseconds
in every sandboxed interpreter's start-up), or as JSON for a ``.json`` path (for people and other
tools). The ``marshal`` form also holds the spec as the launcher validated it (``built``: its
fields in order, plain tuples and strings), which :func:`load_resolved` turns back into the same
:class:`~sandbox.policy.PolicySpec` with a check of each field's type and closed set of values --
not the policy file's whole validation (:func:`sandbox.loader.spec_from_mapping`), which the
launcher ran once and which every Python interpreter of a step would otherwise load and run again
(~0.4 ms of each one's start-up: docs/benchmarks.md). A file without that form (JSON, or from an
earlier version) is validated as a policy file is.

Either way a malformed file raises (``ValueError``, ``KeyError``, ``TypeError``): the guard then
refuses to start (fails closed), it never runs under a policy half read. The file is outside every
writable root of a step (docs/security.md).
"""

from __future__ import annotations

from sandbox.policy import KERNEL_SETTINGS, NETWORK_SETTINGS, PROFILES, Layout, Policy, PolicySpec, RunContext
from sandbox.rules import Action, Op, Rule

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["load_resolved", "save_resolved"]

#: The key of the validated spec in the ``marshal`` form, and that form's version: a reader that
#: finds another version validates the document instead.
BUILT = "built"
BUILT_FORMAT = 1


def save_resolved(policy: Policy, path: str) -> None:
    """Write ``policy`` where :func:`load_resolved` reads it: ``marshal``, with the validated spec
    (see the module's docstring); a ``.json`` path gets ``policy.to_dict()`` as JSON."""
    data: dict[str, Any] = policy.to_dict()
    if path.endswith(".json"):
        import json

        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        return
    import marshal

    data[BUILT] = (BUILT_FORMAT, built(policy.spec))
    with open(path, "wb") as fh:
        marshal.dump(data, fh)


def load_resolved(path: str) -> Policy:
    """The policy :func:`save_resolved` wrote. ``OSError`` when unreadable; ``ValueError`` (or
    ``KeyError``, ``TypeError``) when it is not a resolved policy."""
    if path.endswith(".json"):
        import json

        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    else:
        import marshal

        with open(path, "rb") as fh:
            try:
                data = marshal.loads(fh.read())  # one read: load() reads piecemeal (~0.15 ms)
            except (EOFError, TypeError) as e:
                raise ValueError(f"not a resolved policy ({e})") from None
    if not isinstance(data, dict):
        raise ValueError("not a resolved policy (not a mapping)")
    form = data.get(BUILT)
    if isinstance(form, tuple) and len(form) == 2 and form[0] == BUILT_FORMAT:
        spec = from_built(form[1], data["spec"], data.get("source", "<resolved>"))
        return Policy(spec, RunContext.from_dict(data["run"]))
    from sandbox.loader import policy_from_dict  # validated as a policy file is

    return policy_from_dict(data)


def built(spec: PolicySpec) -> tuple[Any, ...]:
    """The fields of a validated ``spec`` (but its document and source), as plain values."""
    lay = spec.layout
    rules = tuple(
        (r.name, tuple(r.paths), tuple(sorted(op.value for op in r.ops)), r.action.value, r.reason, r.hint)
        for r in spec.rules
    )
    return (
        spec.name,
        spec.profile,
        (lay.lakehouse, lay.exports, lay.runs, tuple(lay.run_folders)),
        rules,
        spec.description,
        spec.kernel,
        spec.network,
    )


def from_built(form: Any, data: Any, source: Any) -> PolicySpec:
    """The :class:`PolicySpec` of :func:`built`; ``ValueError`` when a field has another type or a
    value outside its closed set."""
    name, profile, layout, rules, description, kernel, network = _tuple(form, 7)
    _strs(name, profile, description, kernel, network, source)
    if profile not in PROFILES or kernel not in KERNEL_SETTINGS or network not in NETWORK_SETTINGS:
        raise ValueError("not a resolved policy (a setting outside its values)")
    lakehouse, exports, runs, folders = _tuple(layout, 4)
    _strs(lakehouse, exports, runs, *_tuple(folders))
    out = []
    for r in _tuple(rules):
        rname, paths, ops, action, reason, hint = _tuple(r, 6)
        _strs(rname, *_tuple(paths), *_tuple(ops), action, reason, hint)
        try:
            ops_, action_ = frozenset(Op.named(o) for o in ops), Action.named(action)
        except ValueError as e:
            raise ValueError(f"not a resolved policy ({e})") from None
        out.append(Rule(rname, paths, ops_, action_, reason, hint))
    if not isinstance(data, dict):
        raise ValueError("not a resolved policy (its document is not a mapping)")
    lay = Layout(lakehouse, exports, runs, folders)
    return PolicySpec(name, profile, lay, tuple(out), description, kernel, source, data, network)


def _tuple(value: Any, n: int | None = None) -> tuple[Any, ...]:
    if type(value) is not tuple:
        raise ValueError(f"not a resolved policy (a {type(value).__name__} where a tuple belongs)")
    if n is not None and len(value) != n:
        raise ValueError(f"not a resolved policy ({len(value)} fields where {n} belong)")
    return value


def _strs(*values: Any) -> None:
    for v in values:
        if type(v) is not str:
            raise ValueError(f"not a resolved policy (a {type(v).__name__} where a string belongs)")

