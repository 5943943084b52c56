"""Load and validate policy files; resolve the profile. A policy is applied whole or not at all.

Every error names the file, the key and the allowed values (:class:`sandbox.errors.PolicyError`).
The schema is documented in ``policies/README.md``.
"""

from __future__ import annotations

import os

from sandbox._paths import NotAFile, read_config
from sandbox.errors import PolicyError, UsageError
from sandbox.policy import (
    KERNEL_SETTINGS,
    NETWORK_SETTINGS,
    OP_GROUPS,
    PROFILES,
    Action,
    Layout,
    Op,
    Policy,
    PolicySpec,
    Rule,
    RunContext,
)
from sandbox.resolved import built, from_built

# their home before sandbox.resolved: still importable from here
from sandbox.resolved import load_resolved as load_resolved
from sandbox.resolved import save_resolved as save_resolved

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_TOP_KEYS = {"policy", "layout", "rule", "export", "kernel"}
_KERNEL_KEYS = {"network"}
_EXPORT_KEYS = {"max_bytes"}
_POLICY_KEYS = {"name", "profile", "description", "kernel"}
_LAYOUT_KEYS = {"lakehouse", "exports", "runs", "run_folders"}
_RULE_KEYS = {"name", "paths", "ops", "action", "reason", "hint"}
_PLACEHOLDERS = {"lakehouse", "exports", "runs", "run_id", "run_dir", "scan_dir"}
#: The characters of a name (rule, run folder; a RUN_ID is the same without "."), as a set: a
#: ``re`` pattern would cost an import on the start-up path.
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
#: A policy file is read whole; the bundled ones are ~2 KiB (``cli.isolates_network`` reads as much).
MAX_POLICY_BYTES = 1 << 20


def _is_name(s: str) -> bool:
    """``^[A-Za-z0-9_.-]+$`` (without importing ``re``: this module is on every start-up path)."""
    return bool(s) and NAME_CHARS.issuperset(s)


def policies_dir() -> str:
    """The built-in policies: packaged in the wheel, or the repository's ``policies/``."""
    here = os.path.dirname(os.path.realpath(__file__))
    packaged = os.path.join(here, "policies")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here), "policies")


def built_in_names() -> list[str]:
    """The names ``--policy NAME`` accepts: the built-in policy files, without ``.toml``."""
    try:
        return sorted(n[:-5] for n in os.listdir(policies_dir()) if n.endswith(".toml"))
    except OSError:
        return []


def profile_warning(cli_profile: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """One line to print when ``TV_PROFILE`` holds a value that is no profile (``developement``):
    the run falls back to production, and a typo must not pass silently. None otherwise."""
    if cli_profile is not None:
        return None
    env = os.environ if environ is None else environ
    value = env.get("TV_PROFILE")
    if value is None or value in PROFILES or value == "":
        return None
    return (
        f"TV_PROFILE={value!r} is not a profile ({', '.join(PROFILES)}); running as production "
        "-- set TV_PROFILE=development or pass --profile"
    )


def resolve_profile(cli_profile: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--profile``, else ``TV_PROFILE``; anything but ``development`` -- unset included -- is
    production (:func:`profile_warning` words the warning for an unknown value). An explicit
    ``--profile`` must name a known profile."""
    if cli_profile is not None:
        if cli_profile not in PROFILES:
            raise UsageError(
                f"unknown profile {cli_profile!r}: use one of {', '.join(PROFILES)} "
                "(or leave it out: TV_PROFILE decides, production unless 'development')"
            )
        return cli_profile
    env = os.environ if environ is None else environ
    return "development" if env.get("TV_PROFILE") == "development" else "production"


def _built_in(name: str) -> str | None:
    """The file of the built-in policy ``name`` (``source-layout``), when ``name`` is one."""
    if not _is_name(name) or name.endswith(".toml") or name.startswith("."):
        return None
    path = os.path.join(policies_dir(), f"{name}.toml")
    return path if os.path.isfile(path) else None


def load_policy(path: str | os.PathLike[str] | None = None, *, profile: str = "production") -> PolicySpec:
    """Load ``path`` -- a policy file, or the name of a built-in policy (``source-layout``) -- or,
    when None, the built-in policy of ``profile``, and validate all of it: its syntax and schema,
    its profile, and that every layer can enforce each rule alike
    (:func:`sandbox.policy_kernel.kernel_compilable`)."""
    if path is None:
        path = os.path.join(policies_dir(), f"{profile}.toml")
    src = os.fspath(path)
    if not os.path.exists(src):
        src = _built_in(src) or src
    try:
        raw = read_config(src, MAX_POLICY_BYTES)
    except NotAFile as e:
        raise PolicyError(src, "", f"{e}: a policy is a TOML file of a few KiB; pass its path") from None
    except FileNotFoundError:
        raise PolicyError(
            src,
            "",
            "no such policy file or built-in policy; pass --policy with an existing file or one of "
            + ", ".join(built_in_names()),
        ) from None
    except IsADirectoryError:
        raise PolicyError(src, "", "is a folder, not a policy file") from None
    except OSError as e:
        raise PolicyError(src, "", f"cannot be read ({e.strerror}); check its permissions") from None
    stamp = _code_stamp()
    spec = _checked_before(raw, src, stamp)
    checked = spec is not None
    if spec is None:
        spec = spec_from_mapping(_parse_toml(raw, src), src)
    if spec.profile != profile:
        raise PolicyError(
            src,
            "policy.profile",
            f"this policy is for profile {spec.profile!r} but the run's profile is {profile!r}; "
            f"pass --profile {spec.profile} or a policy written for {profile}",
        )
    if not checked:
        from sandbox import _cache
        from sandbox.policy_kernel import kernel_compilable  # the launcher's, not a step's: not at the top

        kernel_compilable(spec)
        if stamp is not None:
            _cache.store("policy", raw, (stamp, spec.data, built(spec)))
    return spec


#: The modules whose code decides whether a policy file is valid (:func:`_code_stamp`).
_VALIDATORS = ("loader", "policy", "rules", "policy_kernel", "resolved", "_paths", "_record")


def _code_stamp() -> tuple[tuple[int, int], ...] | None:
    """The validating code as it is now: each of :data:`_VALIDATORS`' source's ``mtime_ns`` and
    size (what a ``.pyc`` is checked by); None when one cannot be read."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return tuple((st.st_mtime_ns, st.st_size) for st in (os.stat(f"{here}/{m}.py") for m in _VALIDATORS))
    except OSError:
        return None


def _checked_before(raw: bytes, src: str, stamp: tuple[tuple[int, int], ...] | None) -> PolicySpec | None:
    """The spec of ``raw`` when this very code (``stamp``) validated these exact bytes whole
    before, the kernel layer's check included (the per-user cache's ``policy`` entries: the stamp,
    the document, :func:`sandbox.resolved.built`); else None. The validation and the check cost
    every launch ~0.6 ms of its start-up; an entry is trusted as the cache is (``owned_alone``)."""
    if stamp is None:
        return None
    from sandbox import _cache

    hit = _cache.lookup("policy", raw)
    if not (isinstance(hit, tuple) and len(hit) == 3 and hit[0] == stamp):
        return None
    try:
        return from_built(hit[2], hit[1], src)
    except ValueError:  # not what this code stores: validated afresh
        return None


def _placeholders(s: str) -> list[str]:
    """The names of the ``{name}`` placeholders in ``s`` (``re.findall(r"\\{([^}]*)\\}", s)``)."""
    out: list[str] = []
    start = s.find("{")
    while start != -1:
        end = s.find("}", start + 1)
        if end == -1:
            break
        out.append(s[start + 1 : end])
        start = s.find("{", end + 1)
    return out


def _parse_toml(raw: bytes, src: str) -> dict[str, Any]:
    """The TOML document ``raw``, through the parse cache when it holds these exact bytes.

    ``tomllib`` costs ~10 ms to import on a small machine -- a fifth of a sandboxed start-up -- so a
    successful parse is kept (see :mod:`sandbox._cache`); the validation below always runs.
    """
    from sandbox import _cache

    hit = _cache.lookup("toml", raw)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(src, "", "is not UTF-8 text; a policy file is TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(src, "", f"TOML syntax error: {e}") from None
    _cache.store("toml", raw, data)
    return data


def _need(table: Mapping[str, Any], key: str, kind: type, src: str, where: str) -> Any:
    if key not in table:
        raise PolicyError(src, f"{where}.{key}", "is required")
    return _typed(table[key], kind, src, f"{where}.{key}")


def _typed(value: Any, kind: type, src: str, key: str) -> Any:
    if not isinstance(value, kind) or (kind is str and not value):
        names: dict[type, str] = {str: "a non-empty string", list: "a list", dict: "a table"}
        what = names.get(kind, kind.__name__)
        raise PolicyError(src, key, f"must be {what}, not {value!r}")
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], src: str, where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise PolicyError(
            src,
            f"{where}.{extra[0]}" if where else extra[0],
            f"unknown key; allowed: {', '.join(sorted(allowed))}",
        )


def _rel_path(value: Any, src: str, key: str, *, pattern: bool = False) -> str:
    s = _typed(value, str, src, key)
    comps = s.split("/")
    if s.startswith("/") or s.startswith("~"):
        raise PolicyError(src, key, f"{s!r} must be relative to the workspace, not absolute")
    if ".." in comps:
        raise PolicyError(src, key, f"{s!r} escapes the workspace with '..'")
    if not pattern and any(ch in s for ch in "*?[{"):
        raise PolicyError(src, key, f"{s!r} must be a plain path, without wildcards")
    if pattern:
        for name in _placeholders(s):
            if name not in _PLACEHOLDERS:
                raise PolicyError(
                    src,
                    key,
                    f"unknown placeholder {{{name}}}; allowed: "
                    + ", ".join("{" + p + "}" for p in sorted(_PLACEHOLDERS)),
                )
    return str(s).strip("/")


def spec_from_mapping(data: Mapping[str, Any], src: str = "<memory>") -> PolicySpec:
    """Validate a parsed policy file (a TOML document as a dict) into a :class:`PolicySpec`: the
    document's keys, then one validator per table, in this order (the first problem is the one
    reported): ``[policy]``, ``[kernel]``, ``[export]``, ``[layout]``, ``[[rule]]``."""
    _typed(data, dict, src, "")
    _unknown(data, _TOP_KEYS, src, "")
    name, profile, kernel, description = _policy_table(data, src)
    network = _network(data, src)
    export_max_bytes(data, src)  # [export]: read by the exporter's caller, validated here
    layout = _layout_table(data, src)
    rules = _rule_tables(data, src)
    return PolicySpec(name, profile, layout, rules, description, kernel, src, data, network)


def _policy_table(data: Mapping[str, Any], src: str) -> tuple[str, str, str, str]:
    """``[policy]``: (name, profile, kernel setting, description)."""
    pol = _typed(data.get("policy", None) or _missing(src, "policy"), dict, src, "policy")
    _unknown(pol, _POLICY_KEYS, src, "policy")
    name = _need(pol, "name", str, src, "policy")
    profile = _need(pol, "profile", str, src, "policy")
    if profile not in PROFILES:
        raise PolicyError(
            src, "policy.profile", f"{profile!r} is not a profile; allowed: {', '.join(PROFILES)}"
        )
    kernel = pol.get("kernel", "warn")
    if kernel not in KERNEL_SETTINGS:
        raise PolicyError(
            src,
            "policy.kernel",
            f"{kernel!r} is not allowed; allowed: {', '.join(KERNEL_SETTINGS)}",
        )
    description = pol.get("description", "")
    if not isinstance(description, str):  # false, 0, [] too: a step's interpreters refuse them
        raise PolicyError(src, "policy.description", f"must be a string, not {description!r}")
    return name, profile, kernel, description


def _layout_table(data: Mapping[str, Any], src: str) -> Layout:
    """``[layout]``: the mounts' and the runs' folders (separate, relative, plain) and the run
    folder's own folders."""
    lay = _typed(data.get("layout", None) or _missing(src, "layout"), dict, src, "layout")
    _unknown(lay, _LAYOUT_KEYS, src, "layout")
    dirs = {
        k: _rel_path(_need(lay, k, str, src, "layout"), src, f"layout.{k}")
        for k in ("lakehouse", "exports", "runs")
    }
    for a in dirs:
        for b in dirs:
            pa, pb = dirs[a].split("/"), dirs[b].split("/")
            if a != b and pa[: len(pb)] == pb:
                raise PolicyError(
                    src,
                    f"layout.{a}",
                    f"{dirs[a]!r} lies inside layout.{b} ({dirs[b]!r}); they must be separate folders",
                )
    folders = lay.get("run_folders", ["data", "reports", "config", "logs"])
    _typed(folders, list, src, "layout.run_folders")
    for i, f in enumerate(folders):
        if not isinstance(f, str) or not _is_name(f) or f in (".", ".."):
            raise PolicyError(
                src,
                f"layout.run_folders[{i}]",
                f"{f!r} must be a single folder name ([A-Za-z0-9_.-])",
            )
    return Layout(dirs["lakehouse"], dirs["exports"], dirs["runs"], tuple(folders))


def _rule_tables(data: Mapping[str, Any], src: str) -> tuple[Rule, ...]:
    """``[[rule]]``: each rule (:func:`_rule`), names unique, in the file's order."""
    rules_raw = data.get("rule", [])
    _typed(rules_raw, list, src, "rule")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(rules_raw):
        rule = _rule(r, f"rule[{i}]", src)
        if rule.name in seen:
            raise PolicyError(
                src, f"rule[{i}].name", f"duplicate rule name {rule.name!r}; rule names must be unique"
            )
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule(r: Any, where: str, src: str) -> Rule:
    """One ``[[rule]]`` table: name, path patterns, operations, action, reason and hint."""
    _typed(r, dict, src, where)
    _unknown(r, _RULE_KEYS, src, where)
    rname = _need(r, "name", str, src, where)
    if not _is_name(rname):
        raise PolicyError(src, f"{where}.name", f"{rname!r} may only use letters, digits, '_', '.', '-'")
    paths = _need(r, "paths", list, src, where)
    if not paths:
        raise PolicyError(src, f"{where}.paths", "must list at least one path pattern")
    pats = tuple(_rel_path(p, src, f"{where}.paths[{j}]", pattern=True) for j, p in enumerate(paths))
    ops_raw = _need(r, "ops", list, src, where)
    ops: set[Op] = set()
    for j, o in enumerate(ops_raw):
        if o not in OP_GROUPS:
            raise PolicyError(
                src,
                f"{where}.ops[{j}]",
                f"unknown operation {o!r}; allowed: {', '.join(OP_GROUPS)}",
            )
        ops |= OP_GROUPS[o]
    if not ops:
        raise PolicyError(src, f"{where}.ops", "must list at least one operation")
    action = _need(r, "action", str, src, where)
    if action not in set(Action):
        raise PolicyError(
            src, f"{where}.action", f"unknown action {action!r}; allowed: allow, deny, redirect"
        )
    reason = r.get("reason", "")
    hint = r.get("hint", "")
    if action == "deny" and not reason:
        raise PolicyError(src, f"{where}.reason", "a deny rule must say why (the user sees it)")
    for k, v in (("reason", reason), ("hint", hint)):
        if not isinstance(v, str):
            raise PolicyError(src, f"{where}.{k}", f"must be a string, not {v!r}")
    return Rule(rname, pats, frozenset(ops), Action.named(action), reason, hint)


def _network(data: Mapping[str, Any], src: str) -> str:
    """``[kernel] network``: "none" (the default: a network namespace of its own per step) or
    "host" (the machine's network)."""
    table = data.get("kernel")
    if table is None:
        return "none"
    _typed(table, dict, src, "kernel")
    _unknown(table, _KERNEL_KEYS, src, "kernel")
    value = table.get("network", "none")
    if value not in NETWORK_SETTINGS:
        raise PolicyError(
            src,
            "kernel.network",
            f"{value!r} is not allowed; allowed: {', '.join(NETWORK_SETTINGS)} "
            '("none": the step has loopback only; "host": the machine\'s network)',
        )
    return str(value)


def export_max_bytes(data: Mapping[str, Any], src: str = "<memory>") -> int | None:
    """``[export] max_bytes`` of a policy document (None: the exporter's default): the most a
    run's files may add up to. A positive integer."""
    table = data.get("export")
    if table is None:
        return None
    _typed(table, dict, src, "export")
    _unknown(table, _EXPORT_KEYS, src, "export")
    value = table.get("max_bytes")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PolicyError(src, "export.max_bytes", f"must be a positive number of bytes, not {value!r}")
    return value


def _missing(src: str, table: str) -> Any:
    raise PolicyError(src, table, f"the [{table}] table is required")


# -- the resolved policy (sandbox.resolved) as a policy file is read: validated whole --------------


def policy_from_dict(d: Mapping[str, Any]) -> Policy:
    """The :class:`Policy` of ``Policy.to_dict()``, its spec validated again (as a file is)."""
    return Policy(spec_from_mapping(d["spec"], d.get("source", "<resolved>")), RunContext.from_dict(d["run"]))
