"""``tv-sandbox audit``: find what scripts would do to shared paths, before they run in a sandbox.

- static (:mod:`~sandbox.audit.static`): the AST, never executed; literal paths decided by the
  policy (:mod:`~sandbox.audit.judge`);
- dynamic (:mod:`~sandbox.audit.dynamic`): each script run on a throwaway fake host, every read and
  write recorded with its caller's file:line (:mod:`~sandbox.audit.trace`, built on pyfakefs);
- findings (:mod:`~sandbox.audit.findings`) with stable ids, rendered as text, Markdown or JSON
  (:mod:`~sandbox.audit.render`).

:func:`audit_paths` is the whole audit; the CLI only parses, prints and maps errors to statuses.
pyfakefs is imported by the dynamic part only (the ``audit`` extra).
"""

from __future__ import annotations

import importlib.util
import os

from sandbox.audit.findings import (
    CATALOGUE,
    SCHEMA,
    SCHEMA_VERSION,
    AuditReport,
    Finding,
    ScriptResult,
    Severity,
    finding,
)
from sandbox.errors import SandboxError, UsageError
from sandbox.policy import PolicySpec

__all__ = [
    "CATALOGUE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "AuditReport",
    "Finding",
    "ScriptResult",
    "Severity",
    "audit_paths",
    "collect",
]

#: In a script: not audited at all (a host-side tool, a generator of inputs).
SKIP_FILE = "# tvs: skip-file"
#: On a line: its findings are silenced (all, or the ids in brackets: ``# tvs: ignore[TVS102]``).
IGNORE = "# tvs: ignore"
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
DEFAULT_TIMEOUT_S = 60.0


def _split_target(arg: str) -> tuple[str, str]:
    """``(file, function)`` of a PATH argument: ``script.py``, ``script.py:func`` or ``module:func``."""
    if os.path.lexists(arg) or ":" not in arg:
        return arg, ""
    where, _, func = arg.rpartition(":")
    if not func.isidentifier():
        raise UsageError(f"{arg!r}: after ':' comes a function name (script.py:main or package.module:main)")
    if os.path.lexists(where):
        return where, func
    try:
        spec = importlib.util.find_spec(where) if all(p.isidentifier() for p in where.split(".")) else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise UsageError(
            f"{where!r}: no such file, folder or importable module; check the path or PYTHONPATH"
        )
    return spec.origin, func


def collect(paths: list[str]) -> list[tuple[str, str]]:
    """The scripts named by ``paths``: ``(shown name, dynamic target)`` each, folders walked for
    ``*.py`` in name order. :class:`UsageError` for a missing path or a folder without scripts."""
    if not paths:
        raise UsageError("name at least one script or folder to audit (tv-sandbox audit PATH...)")
    out: list[tuple[str, str]] = []
    for arg in paths:
        if not arg:
            raise UsageError("an empty PATH: name a script or a folder")
        where, func = _split_target(arg)
        if func:
            out.append((where, f"{where}:{func}" if os.path.lexists(arg.rpartition(":")[0]) else arg))
            continue
        if not os.path.lexists(where):
            raise UsageError(f"{where}: no such file or folder; pass scripts or folders of scripts")
        if os.path.isdir(where):
            found = []
            for dirpath, dirs, files in os.walk(where):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
                found += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".py")]
            if not found:
                raise UsageError(f"{where}: no Python scripts (*.py) in this folder")
            out += [(f, f) for f in found]
        else:
            out.append((where, where))
    return out


def _read(file: str) -> tuple[str | None, Finding | None]:
    """The source of ``file``, or the finding that says why it cannot be audited."""
    import stat

    try:
        st = os.stat(file)
        if not stat.S_ISREG(st.st_mode):
            return None, finding(
                "TVS001", Severity.ERROR, file, None, "not a regular file (a FIFO, device or socket)"
            )
        with open(file, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None, finding("TVS001", Severity.ERROR, file, None, "no such file (a dangling symlink?)")
    except OSError as e:
        return None, finding("TVS001", Severity.ERROR, file, None, f"cannot be read ({e.strerror})")
    if b"\0" in raw:
        return None, finding("TVS002", Severity.ERROR, file, None, "a binary file, not Python source")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, finding("TVS002", Severity.ERROR, file, None, f"not UTF-8 text (byte {e.start})")


def audit_paths(
    paths: list[str],
    *,
    profile: str = "production",
    policy_file: str | None = None,
    static_only: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    kernel: str = "auto",
    host: str | None = None,
    run_id: str = "AUDIT",
) -> AuditReport:
    """Audit the scripts ``paths`` name (see the package docstring). Raises :class:`UsageError` /
    :class:`~sandbox.errors.PolicyError` for bad arguments; a script that cannot be audited is a
    finding (TVS001-TVS004), never an exception."""
    from sandbox.audit.judge import Judge
    from sandbox.audit.static import audit_source
    from sandbox.loader import load_policy
    from sandbox.runner import MAX_RUN_ID_LEN, valid_run_id

    spec = load_policy(policy_file, profile=profile)
    if not valid_run_id(run_id):
        raise UsageError(
            f"--run-id {run_id!r}: use letters, digits, '_' and '-' only, at most {MAX_RUN_ID_LEN}"
        )
    if host is not None and not os.path.isdir(host):
        raise UsageError(f"--host {host}: not a folder; pass a small copy of a host tree to run on")
    targets = collect(paths)
    judge = Judge(spec)
    report = AuditReport(profile, spec.name, static_only)
    for file, target in targets:
        result = ScriptResult(file)
        source, problem = _read(file)
        if problem is not None:
            result.findings.append(problem)
            report.scripts.append(result)
            continue
        assert source is not None
        if SKIP_FILE in source:
            result.skipped = f"marked {SKIP_FILE!r} (e.g. a host-side tool that runs outside the sandbox)"
            report.scripts.append(result)
            continue
        try:
            result.findings += audit_source(source, file, judge)
        except SyntaxError as e:
            result.findings.append(
                finding("TVS003", Severity.ERROR, file, e.lineno, f"line {e.lineno}: {e.msg}")
            )
            report.scripts.append(result)
            continue
        except (RecursionError, ValueError, MemoryError) as e:
            result.findings.append(
                finding("TVS003", Severity.ERROR, file, None, f"cannot be parsed ({type(e).__name__})")
            )
            report.scripts.append(result)
            continue
        if not static_only:
            _dynamic(result, target, spec, policy_file, profile, timeout_s, kernel, host, run_id)
        _suppress(result, source)
        report.scripts.append(result)
    return report


def _dynamic(
    result: ScriptResult,
    target: str,
    spec: PolicySpec,
    policy_file: str | None,
    profile: str,
    timeout_s: float,
    kernel: str,
    host: str | None,
    run_id: str,
) -> None:
    from sandbox.audit.dynamic import audit_dynamic

    if importlib.util.find_spec("pyfakefs") is None:
        result.findings.append(
            finding(
                "TVS004", Severity.WARNING, result.file, None,
                "the dynamic audit needs pyfakefs: install tv-sandbox[audit], or pass --static-only",
                source="dynamic",
            )
        )  # fmt: skip
        return
    try:
        dyn = audit_dynamic(
            target, policy_file, profile, spec, timeout_s=timeout_s, kernel=kernel, seed=host, run_id=run_id
        )
    except (SandboxError, OSError) as e:
        why = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        result.findings.append(finding("TVS004", Severity.ERROR, result.file, None, why, source="dynamic"))
        result.dynamic = "error"
        return
    mine = os.path.abspath(result.file)
    result.findings += [  # the script as the user named it, in static and dynamic findings alike
        _renamed(f, result.file) if f.file == dyn.file or os.path.abspath(f.file) == mine else f
        for f in dyn.findings
    ]
    result.events, result.dynamic, result.notes = dyn.events, dyn.dynamic, dyn.notes


def _suppress(result: ScriptResult, source: str) -> None:
    """Drop the findings whose line (in this script) carries ``# tvs: ignore`` (see IGNORE)."""
    lines = source.splitlines()
    kept = []
    for f in result.findings:
        text = lines[f.line - 1] if f.file == result.file and f.line and f.line <= len(lines) else ""
        at = text.find(IGNORE)
        if at >= 0:
            rest = text[at + len(IGNORE) :]
            ids = rest[1 : rest.find("]")].replace(" ", "").split(",") if rest.startswith("[") else []
            if not ids or f.id in ids:
                result.suppressed += 1
                continue
        kept.append(f)
    result.findings = kept


def _renamed(f: Finding, file: str) -> Finding:
    import dataclasses

    return dataclasses.replace(f, file=file)
