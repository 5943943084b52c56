"""The audit's three outputs: ``text`` (one header line per finding, for terminals and editors:
``file:line: severity ID title``), ``md`` (a review: per script, each finding with its evidence and
fix) and ``json`` (the stable document of :meth:`~sandbox.audit.findings.AuditReport.to_dict`)."""

from __future__ import annotations

import json

from sandbox.audit.findings import AuditReport, Finding, ScriptResult, Severity

FORMATS = ("text", "md", "json")


def _summary(report: AuditReport) -> str:
    c = report.counts()
    n = len(report.scripts)
    parts = [
        f"{c['error']} error{'s' * (c['error'] != 1)}",
        f"{c['warning']} warning{'s' * (c['warning'] != 1)}",
    ]
    parts.append(f"{c['info']} info")
    how = "static only" if report.static_only else "static and dynamic"
    return (
        f"{n} script{'s' * (n != 1)} audited ({how}; profile {report.profile}, policy {report.policy}): "
        + ", ".join(parts)
    )


def _ordered(s: ScriptResult) -> list[Finding]:
    return sorted(s.findings, key=lambda f: (f.source != "static", f.line or 0, f.id))


#: Findings about the input itself (unreadable, not Python, no parse, no run, timed out): one line.
_ONE_LINE = {"TVS001", "TVS002", "TVS003", "TVS004", "TVS205", "TVS206"}


def text(report: AuditReport) -> str:
    lines: list[str] = []
    for s in report.scripts:
        if s.skipped:
            lines.append(f"{s.file}: skipped: {s.skipped}")
        lines += [f"{s.file}: note (the audit's own sandboxed run): {n}" for n in s.notes]
        for f in _ordered(s):
            if f.id in _ONE_LINE:
                lines.append(f"{f.where}: {f.severity.label} {f.id} {f.title}: {f.detail}")
                continue
            lines.append(f"{f.where}: {f.severity.label} {f.id} {f.title} [{f.source}]")
            lines.append(f"    {f.detail}")
            if f.fix:
                lines.append(f"    fix: {f.fix}")
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def markdown(report: AuditReport) -> str:
    out = ["# tv-sandbox audit", "", _summary(report) + ".", ""]
    for s in report.scripts:
        worst = s.worst()
        verdict = "clean" if worst is None else f"worst: {worst.label}"
        out += [f"## `{s.file}` ({verdict})", ""]
        if report.static_only is False:
            out += [f"Dynamic audit: {s.dynamic}; {len(s.events)} file operations recorded.", ""]
        out += [f"Note: {n}" for n in s.notes] + ([""] if s.notes else [])
        if s.skipped:
            out += [f"Skipped: {s.skipped}.", ""]
        elif not s.findings:
            out += ["Nothing found: the script respects the run's layout.", ""]
        if s.suppressed:
            out += [f"{s.suppressed} finding(s) silenced by `# tvs: ignore` comments.", ""]
        seen = _confirmations(s.findings)
        for f in _ordered(s):
            if any(f is d for d in seen.values()):
                continue  # said under the static finding it confirms
            mark = {Severity.ERROR: "**error**", Severity.WARNING: "**warning**", Severity.INFO: "info"}[
                f.severity
            ]
            out.append(f"- {mark} `{f.id}` {f.title} -- `{f.where}` ({f.source})")
            out.append(f"  - Evidence: {f.detail}")
            confirmed = seen.get(id(f))
            if confirmed is not None:
                out.append(f"  - Seen when it ran (`{confirmed.id}`): {confirmed.detail}")
            if f.fix:
                out.append(f"  - Fix: {f.fix}")
        out.append("")
    return "\n".join(out)


#: A static finding and the dynamic one that shows the same thing happening.
_SAME_ISSUE = {
    "TVS101": "TVS201",
    "TVS102": "TVS201",
    "TVS104": "TVS202",
    "TVS105": "TVS203",
    "TVS111": "TVS211",
}


def _confirmations(findings: list[Finding]) -> dict[int, Finding]:
    """``id(static finding) -> the dynamic finding on the same line that confirms it``."""
    out: dict[int, Finding] = {}
    dynamic = [f for f in findings if f.source == "dynamic"]
    for f in findings:
        want = _SAME_ISSUE.get(f.id)
        if f.source != "static" or want is None:
            continue
        match = next(
            (
                d
                for d in dynamic
                if d.id == want and d.file == f.file and d.line == f.line and d not in out.values()
            ),
            None,
        )
        if match is not None:
            out[id(f)] = match
    return out


def as_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=1) + "\n"


def render(report: AuditReport, fmt: str) -> str:
    if fmt == "json":
        return as_json(report)
    if fmt == "md":
        return markdown(report)
    return text(report)
