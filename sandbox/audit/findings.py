"""What an audit reports: :class:`Finding` (stable id, severity, evidence, fix) and the catalogue
of ids. The JSON form (:meth:`AuditReport.to_dict`) is a documented, stable contract (README,
"Audit"): fields are only ever added, ids never change meaning.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

#: Version of the JSON document ``tv-sandbox audit --format json`` prints.
SCHEMA = "tv-sandbox-audit"
SCHEMA_VERSION = 1


class Severity(enum.IntEnum):
    """Ordered: ``--fail-on warning`` fails on warnings and errors."""

    INFO = 1
    WARNING = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def named(cls, name: str) -> Severity:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(name) from None


@dataclasses.dataclass(frozen=True)
class Kind:
    """One entry of the catalogue: the id, its title and the usual fix."""

    id: str
    title: str
    fix: str


def _kinds(*rows: tuple[str, str, str]) -> dict[str, Kind]:
    return {r[0]: Kind(*r) for r in rows}


#: Every finding id. 0xx: the input itself; 1xx: static (read from the source); 2xx: dynamic
#: (observed while the script ran on a fake host).
CATALOGUE: dict[str, Kind] = _kinds(
    ("TVS001", "script cannot be read", "check the file's permissions"),
    ("TVS002", "not a Python source file", "audit .py files (text, UTF-8)"),
    ("TVS003", "syntax error", "fix the syntax; the audit reads the script without running it"),
    ("TVS004", "dynamic audit could not run", "see the detail; the static findings still hold"),
    (
        "TVS101",
        "hard-coded lakehouse write",
        "write under $TV_RUN_DIR/data/ (or the standard variable for this output, e.g. $SELECTION_AUDIT)",
    ),
    ("TVS102", "hard-coded write into the scanner exports", "read exports only; write under $TV_RUN_DIR"),
    (
        "TVS103",
        "hard-coded path in the runs folder",
        "use $TV_RUN_DIR (this run's folder) instead of spelling the runs folder",
    ),
    (
        "TVS104",
        "write to an absolute path outside the writable roots",
        "write under $TV_RUN_DIR or $TMPDIR; take the path from an argument or variable",
    ),
    (
        "TVS105",
        "relative write, redirected into the run folder",
        "fine inside the sandbox; derive it from $TV_RUN_DIR to say so in the code",
    ),
    (
        "TVS107",
        "standard variable read with a hard-coded shared default",
        "default to a path under $TV_RUN_DIR, or fail when the variable is unset",
    ),
    (
        "TVS111",
        "input looked up in the exports folder, ignoring $TV_SCAN_DIR",
        "read $TV_SCAN_DIR (accept --scan-dir); fall back to export/<RUN_ID> only outside the sandbox",
    ),
    (
        "TVS121",
        "shell command (shell=True, os.system, os.popen)",
        "the Python guard cannot see a shell's writes: run with the kernel layer (--kernel require)",
    ),
    (
        "TVS122",
        "subprocess of a non-Python program (make, sh, ...)",
        "the Python guard cannot see its writes: run with the kernel layer (--kernel require)",
    ),
    (
        "TVS131",
        "native writer on a literal path",
        "pyarrow/numpy/sqlite write in C, past the Python guard: take the path from $TV_RUN_DIR",
    ),
    ("TVS201", "write into a read-only mount observed", "write under $TV_RUN_DIR/data/ instead"),
    (
        "TVS202",
        "write outside the writable roots observed",
        "write under $TV_RUN_DIR or $TMPDIR",
    ),
    (
        "TVS203",
        "write redirected into the run folder observed",
        "fine inside the sandbox; derive the path from $TV_RUN_DIR to say so in the code",
    ),
    (
        "TVS204",
        "write reached the real disk during the faked run (native code or a child process)",
        "run such steps with the kernel layer; take the path from $TV_RUN_DIR",
    ),
    ("TVS205", "script did not finish within the audit's time limit", "raise --timeout, or fix the loop"),
    (
        "TVS206",
        "script failed on the fake host",
        "the dynamic audit saw only what ran before the failure; see the detail",
    ),
    (
        "TVS211",
        "exports folder listed: input looked up without $TV_SCAN_DIR",
        "read $TV_SCAN_DIR (accept --scan-dir) instead of searching the exports folder",
    ),
)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One issue in one script: what (``id``, ``title``), where (``file``, ``line``, or the
    operation and path observed), why (``detail``), what to do (``fix``), how bad (``severity``)."""

    id: str
    severity: Severity
    file: str
    line: int | None
    detail: str
    fix: str = ""
    source: str = "static"  # static | dynamic
    op: str | None = None
    path: str | None = None
    rule: str | None = None

    @property
    def title(self) -> str:
        return CATALOGUE[self.id].title

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "severity": self.severity.label,
            "source": self.source,
            "file": self.file,
            "line": self.line,
            "detail": self.detail,
            "fix": self.fix or CATALOGUE[self.id].fix,
            "op": self.op,
            "path": self.path,
            "rule": self.rule,
        }


def finding(
    id: str, severity: Severity, file: str, line: int | None, detail: str, fix: str = "", **kw: Any
) -> Finding:
    """A :class:`Finding` whose ``fix`` defaults to the catalogue's."""
    return Finding(id, severity, file, line, detail, fix or CATALOGUE[id].fix, **kw)


@dataclasses.dataclass
class ScriptResult:
    """The audit of one script: its findings and, for the dynamic audit, what it did."""

    file: str
    findings: list[Finding] = dataclasses.field(default_factory=list)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dynamic: str = "skipped"  # skipped | ok | failed | timeout | error
    suppressed: int = 0  # findings silenced by a ``# tvs: ignore[...]`` comment on their line
    skipped: str = ""  # why the script was not audited (``# tvs: skip-file``)
    notes: list[str] = dataclasses.field(default_factory=list)  # the sandboxed run's warnings

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)


@dataclasses.dataclass
class AuditReport:
    """All scripts of one ``tv-sandbox audit``."""

    profile: str
    policy: str
    static_only: bool
    scripts: list[ScriptResult] = dataclasses.field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.scripts for f in s.findings]

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in Severity}
        for f in self.findings:
            out[f.severity.label] += 1
        return out

    def fails(self, at: Severity) -> bool:
        return any(f.severity >= at for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "profile": self.profile,
            "policy": self.policy,
            "static_only": self.static_only,
            "counts": self.counts(),
            "scripts": [
                {
                    "file": s.file,
                    "dynamic": s.dynamic,
                    "suppressed": s.suppressed,
                    "skipped": s.skipped,
                    "notes": s.notes,
                    "findings": [f.to_dict() for f in s.findings],
                    "events": s.events,
                }
                for s in self.scripts
            ],
        }
