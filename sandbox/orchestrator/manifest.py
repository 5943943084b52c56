"""The manifest of profiles (FORMATS.md): load, validate whole, resolve a meta profile to sleeves.

Pure data and checks, no Ray: the pipeline's preflight runs on the host before Ray starts, and a
bad manifest is one line naming the file, the key and what is wrong (:class:`ManifestError`).

- A **meta profile** lists ``sleeves`` (``id``, ``profile``); each sleeve runs an **atomic
  profile**'s steps in its own worker.
- A sleeve's **steps** are its profile's ``steps``, else the manifest's ``defaults.steps``. ``run``
  is an argv list (executed directly) or a string (``sh -c``); a bare ``python`` is the interpreter
  running the pipeline (:data:`sys.executable`), an absolute path is kept. ``timeout_s`` ends the
  step's whole process tree; ``env`` adds variables but cannot override the run's (``TV_*``,
  ``CANDIDATES_*``, ``SELECTION_AUDIT``, ``TMPDIR``).
- The **scan preflight** (:func:`check_scans`): every scanner a sleeve's profile names under
  ``discovery.strategies.*.scanners`` must have written at least one JSON file under
  ``export/<RUN_ID>/`` whose ``meta.scanner`` carries its name.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox._paths import NotAFile, read_config
from sandbox.errors import PreflightError, printable
from sandbox.loader import NAME_CHARS
from sandbox.workspace import ENV_NAMES

MANIFEST_DEFAULT = "configs/manifest.json"  # relative to the host root
MAX_MANIFEST_BYTES = 16 << 20  # read whole: a device or a runaway file must not take the memory
_STEP_KEYS = frozenset({"name", "run", "timeout_s", "env", "description"})
_SLEEVE_KEYS = frozenset({"id", "profile", "run_id", "description"})
_RESERVED_ENV = frozenset(ENV_NAMES) | {"TMPDIR"}
_ID_CHARS = NAME_CHARS - {"."}  # sleeve ids and step names name folders and log files
#: ... whose names the exporter and the run extend (``.<id>.tvs-stage-<random>``,
#: ``.<step>.stderr.log``): a name past 255 bytes failed in the sleeve, after Ray started.
MAX_ID_LEN = 100


class ManifestError(PreflightError):
    """A manifest that cannot be used as a whole: ``FILE: KEY: what is wrong``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"manifest {source}: {key}: {problem}" if key else f"manifest {source}: {problem}")


@dataclass(frozen=True)
class Step:
    """One step of a sleeve, resolved: ``run`` is an argv list or an ``sh -c`` string."""

    name: str
    run: tuple[str, ...] | str
    timeout_s: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The step as a user would type it (for progress lines and reports)."""
        return self.run if isinstance(self.run, str) else shlex.join(self.run)


@dataclass(frozen=True)
class Sleeve:
    """A sleeve of a meta profile: the atomic profile it runs, its steps and its scanners."""

    id: str
    profile: str
    steps: tuple[Step, ...]
    scanners: tuple[str, ...]
    settings: Mapping[str, Any]  # the atomic profile as written (what the scripts read)


@dataclass(frozen=True)
class MetaProfile:
    name: str
    description: str
    sleeves: tuple[Sleeve, ...]


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Build it with :func:`load_manifest`."""

    source: str
    profiles: Mapping[str, Mapping[str, Any]]
    default_steps: tuple[Step, ...]
    scan_command: str | None

    def meta_profiles(self) -> list[str]:
        return sorted(n for n, p in self.profiles.items() if "sleeves" in p)

    def resolve(self, meta: str, *, python: str | None = None) -> MetaProfile:
        """The sleeves of ``meta`` with their steps; ``python`` replaces a bare ``python``."""
        prof = self.profiles.get(meta)
        if prof is None:
            raise ManifestError(
                self.source,
                f"profiles.{meta}",
                f"no such profile; meta profiles here: {', '.join(self.meta_profiles()) or 'none'}",
            )
        if "sleeves" not in prof:
            raise ManifestError(
                self.source,
                f"profiles.{meta}",
                "is an atomic profile (no 'sleeves'); pass a meta profile: "
                + (", ".join(self.meta_profiles()) or "none in this manifest"),
            )
        py = python or sys.executable
        sleeves = []
        for i, s in enumerate(prof["sleeves"]):
            atomic = self.profiles[s["profile"]]
            steps = (
                _parse_steps(self.source, f"profiles.{s['profile']}.steps", atomic["steps"])
                if "steps" in atomic
                else self.default_steps
            )
            if not steps:
                raise ManifestError(
                    self.source,
                    f"profiles.{meta}.sleeves[{i}]",
                    f"profile {s['profile']!r} has no 'steps' and the manifest has no 'defaults.steps'",
                )
            steps = tuple(_with_python(st, py) for st in steps)
            sleeves.append(Sleeve(s["id"], s["profile"], steps, tuple(_scanners(atomic)), atomic))
        return MetaProfile(meta, str(prof.get("description", "")), tuple(sleeves))


def _with_python(step: Step, python: str) -> Step:
    if isinstance(step.run, tuple) and step.run[0] == "python":
        return Step(step.name, (python, *step.run[1:]), step.timeout_s, step.env)
    return step


def _scanners(profile: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for strategy in profile.get("discovery", {}).get("strategies", {}).values():
        out.extend(s for s in strategy.get("scanners", []) if s not in out)
    return out


def _check_id(source: str, key: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not value or not _ID_CHARS.issuperset(value) or len(value) > MAX_ID_LEN:
        shown = (
            value
            if not isinstance(value, str) or len(value) <= MAX_ID_LEN
            else f"{value[:20]}... ({len(value)})"
        )
        raise ManifestError(
            source,
            key,
            f"{what} must be a non-empty string of letters, digits, '_' or '-', at most {MAX_ID_LEN} "
            f"characters, not {shown!r}",
        )
    return value


def _parse_step(source: str, key: str, raw: object) -> Step:
    if not isinstance(raw, dict):
        raise ManifestError(source, key, f"a step must be an object with 'name' and 'run', not {raw!r}")
    unknown = sorted(set(raw) - _STEP_KEYS)
    if unknown:
        raise ManifestError(
            source, f"{key}.{unknown[0]}", f"unknown key; a step has {', '.join(sorted(_STEP_KEYS))}"
        )
    name = _check_id(source, f"{key}.name", raw.get("name"), "a step's name")
    run = raw.get("run")
    if isinstance(run, str) and run.strip():
        cmd: tuple[str, ...] | str = run
    elif isinstance(run, list) and run and all(isinstance(a, str) for a in run) and run[0]:
        cmd = tuple(run)
    else:
        raise ManifestError(
            source, f"{key}.run", f"must be a non-empty argv list of strings or a shell string, not {run!r}"
        )
    # NUL cannot pass exec: the step failed with 126 once its sleeve was running
    if "\0" in (cmd if isinstance(cmd, str) else "".join(cmd)):
        raise ManifestError(
            source, f"{key}.run", "holds a NUL character (\\u0000), which no command can take"
        )
    timeout = raw.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf  # NaN, Infinity and 1e400 (json's inf) too
    ):
        raise ManifestError(
            source, f"{key}.timeout_s", f"must be a positive number of seconds, not {timeout!r}"
        )
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ManifestError(source, f"{key}.env", "must be an object of string names to string values")
    for k, v in env.items():
        # what execve cannot pass: the step failed with 126 ("illegal environment variable name")
        # once its sleeve was running, the name not said
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ManifestError(
                source,
                f"{key}.env.{printable(k)}",
                "a variable's name must be non-empty, without '=' or NUL, and its value without NUL",
            )
        if k.startswith("TV_") or k in _RESERVED_ENV:
            raise ManifestError(
                source,
                f"{key}.env.{k}",
                "cannot override the run's variables (TV_*, CANDIDATES_RAW, CANDIDATES_SELECTED, "
                "SELECTION_AUDIT, TMPDIR): the sandbox sets them; use another name",
            )
    return Step(name, cmd, float(timeout) if timeout is not None else None, dict(env))


def _parse_steps(source: str, key: str, raw: object) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise ManifestError(source, key, "must be a non-empty list of steps")
    steps = tuple(_parse_step(source, f"{key}[{i}]", s) for i, s in enumerate(raw))
    seen: set[str] = set()
    for i, st in enumerate(steps):
        if st.name in seen:
            raise ManifestError(source, f"{key}[{i}].name", f"step name {st.name!r} is used twice")
        seen.add(st.name)
    return steps


def _check_profile(source: str, name: str, prof: object, profiles: Mapping[str, Any]) -> None:
    key = f"profiles.{name}"
    if not isinstance(prof, dict):
        raise ManifestError(source, key, f"a profile must be an object, not {type(prof).__name__}")
    if "sleeves" in prof:
        sleeves = prof["sleeves"]
        if not isinstance(sleeves, list) or not sleeves:
            raise ManifestError(source, f"{key}.sleeves", 'must be a non-empty list of {"id", "profile"}')
        ids: set[str] = set()
        for i, s in enumerate(sleeves):
            sk = f"{key}.sleeves[{i}]"
            if not isinstance(s, dict):
                raise ManifestError(source, sk, "a sleeve must be an object with 'id' and 'profile'")
            unknown = sorted(set(s) - _SLEEVE_KEYS)
            if unknown:
                raise ManifestError(
                    source,
                    f"{sk}.{unknown[0]}",
                    f"unknown key; a sleeve has {', '.join(sorted(_SLEEVE_KEYS))}",
                )
            sid = _check_id(source, f"{sk}.id", s.get("id"), "a sleeve's id")
            if sid in ids:
                raise ManifestError(source, f"{sk}.id", f"sleeve id {sid!r} is used twice in {name}")
            ids.add(sid)
            target = s.get("profile")
            if not isinstance(target, str) or target not in profiles:
                raise ManifestError(source, f"{sk}.profile", f"no profile {target!r} in this manifest")
            if isinstance(profiles[target], dict) and "sleeves" in profiles[target]:
                raise ManifestError(
                    source, f"{sk}.profile", f"{target!r} is a meta profile; a sleeve runs an atomic one"
                )
        return
    if "steps" in prof:
        _parse_steps(source, f"{key}.steps", prof["steps"])
    disc = prof.get("discovery", {})
    strategies = disc.get("strategies", {}) if isinstance(disc, dict) else None
    if not isinstance(strategies, dict):
        raise ManifestError(source, f"{key}.discovery", 'must be an object {"strategies": {NAME: {...}}}')
    for sname, strat in strategies.items():
        scanners = strat.get("scanners", []) if isinstance(strat, dict) else None
        if not isinstance(scanners, list) or not all(isinstance(x, str) and x for x in scanners):
            raise ManifestError(
                source, f"{key}.discovery.strategies.{sname}.scanners", "must be a list of scanner names"
            )


def _check_scan_command(source: str, scan: str) -> None:
    """Only ``{run_id}`` and ``{scanner}`` (``{{``/``}}`` for braces): a format string that needs
    anything else fails here, in one line, not in the scan preflight's message."""
    import string

    try:
        parsed = list(string.Formatter().parse(scan))
    except ValueError as e:
        raise ManifestError(source, "defaults.scan_command", f"not a format string: {e}") from None
    allowed = ("run_id", "scanner")
    if any(f is not None and (f not in allowed or spec or conv) for _t, f, spec, conv in parsed):
        raise ManifestError(
            source,
            "defaults.scan_command",
            "only {run_id} and {scanner} may be filled in (write {{ and }} for braces), "
            f"not {scan!r}",
        )


def parse_manifest(data: object, source: str) -> Manifest:
    """Validate a decoded manifest as a whole; raise :class:`ManifestError` at the first problem."""
    if not isinstance(data, dict):
        raise ManifestError(source, "", f"the top level must be an object, not {type(data).__name__}")
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ManifestError(source, "profiles", "missing or empty: the manifest needs an object of profiles")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ManifestError(source, "defaults", "must be an object")
    steps = _parse_steps(source, "defaults.steps", defaults["steps"]) if "steps" in defaults else ()
    scan = defaults.get("scan_command")
    if scan is not None and not isinstance(scan, str):
        raise ManifestError(source, "defaults.scan_command", "must be a string (with {run_id} and {scanner})")
    if scan is not None:
        _check_scan_command(source, scan)
    for name, prof in profiles.items():
        _check_profile(source, name, prof, profiles)
    return Manifest(source, profiles, steps, scan)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``path`` as a whole (one :class:`ManifestError` line otherwise)."""
    source = os.fspath(path)
    try:
        text = read_config(source, MAX_MANIFEST_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(
            source, "", "no such file: pass --manifest FILE or create configs/manifest.json in the host"
        ) from None
    except NotAFile as e:
        raise ManifestError(source, "", f"{e}: pass --manifest with a JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(source, "", f"cannot be read ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(
            source, "", f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except RecursionError:
        raise ManifestError(source, "", "nested too deeply to be a manifest") from None
    except ValueError as e:  # an integer past sys.get_int_max_str_digits(): an internal error before
        raise ManifestError(source, "", f"not a manifest: {e}") from None
    return parse_manifest(data, source)


def scanners_found(scan_dir: str | os.PathLike[str]) -> set[str]:
    """Every ``meta.scanner`` named by a JSON file under ``scan_dir`` (unreadable files count for
    nothing: they would not feed a selection either)."""
    found: set[str] = set()
    root = Path(scan_dir)
    if not root.is_dir():
        return found
    for path in root.rglob("*.json"):
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("meta"), dict):
            name = doc["meta"].get("scanner")
            if isinstance(name, str):
                found.add(name)
    return found


def check_scans(
    meta: MetaProfile, scan_dir: str, run_id: str, scan_command: str | None, *, host: str | None = None
) -> None:
    """Raise one :class:`PreflightError` listing each missing scanner, its sleeves and the command
    that produces it, when a sleeve's scanners have no output under ``scan_dir``."""
    found = scanners_found(scan_dir)
    missing: dict[str, list[str]] = {}
    for s in meta.sleeves:
        for sc in s.scanners:
            if sc not in found:
                missing.setdefault(sc, []).append(s.id)
    if not missing:
        return
    where = scan_dir if os.path.isdir(scan_dir) else f"{scan_dir} (which does not exist)"
    parts = []
    for sc, sleeves in missing.items():
        cmd = (scan_command or "run the scanner").format(run_id=run_id, scanner=sc)
        label = "sleeve" if len(sleeves) == 1 else "sleeves"
        parts.append(f"{sc} for {label} {', '.join(sleeves)} (produce it with: {cmd})")
    in_host = f" in {host}" if host and scan_command else ""
    raise PreflightError(
        f"run {run_id}: no scanner output under {where} for {'; '.join(parts)}; run the scans{in_host} "
        "first, nothing was dispatched"
    )
