"""The dynamic audit: run each script on a fake host and report what it did.

Each script runs as one sandboxed step (:class:`sandbox.run.Run`, audit mode, the kernel layer when
the machine has it) of a *throwaway* host -- a sample host tree (:mod:`sandbox.samples`) in a new
temp folder, removed afterwards -- so the real disk is never changed by an audit, whatever the
script does. Inside the step, :mod:`sandbox.audit._child` runs the script under pyfakefs seeded
with a copy of that host and records every read and write with its caller's file:line.

pyfakefs cannot see native code (pyarrow's C++ writer, sqlite) or child processes: their writes
reach the step's real (sandboxed) disk. They are found afterwards -- files in the exported run
folder that the sandbox did not write itself, audit captures of the mounts, changes to the
throwaway host, the step's event log -- and each is reported (TVS204), never passed silently.

``TV_AUDIT_KEEP=1`` keeps the throwaway folder (``$TMPDIR/tv-audit-*``) for debugging.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

from sandbox._paths import is_within, parts
from sandbox.audit.findings import Finding, ScriptResult, Severity, finding
from sandbox.policy import AUDIT_DIR, Action, PolicySpec

RUN_ID = "AUDIT"
TRACE = "tv_audit_trace.json"
#: What the sandbox itself writes into a run folder: not the script's.
#: How a native write refused by the kernel layer (read-only mounts, Landlock) reads in an error.
_KERNEL_REFUSALS = ("Read-only file system", "errno 30]", "Errno 30]")
_OWN = {"sandbox_report.json", "manifest.json", "config/policy.json", "reports/lakehouse_diff.json"}


def audit_dynamic(
    target: str,
    spec_file: str | None,
    profile: str,
    spec: PolicySpec,
    *,
    timeout_s: float,
    kernel: str = "auto",
    seed: str | None = None,
    run_id: str = RUN_ID,
) -> ScriptResult:
    """Run ``target`` (a script, ``script.py:func`` or ``module:func``) on a throwaway host: a copy
    of ``seed`` (a small sample of the user's host), or the built-in sample host."""
    from sandbox import samples
    from sandbox.run import Run, StepSpec
    from sandbox.runner import RunRequest, preflight

    shown = target
    result = ScriptResult(shown)
    tmp = tempfile.mkdtemp(prefix="tv-audit-")
    try:
        host = os.path.join(tmp, "host")
        if seed is not None:
            shutil.copytree(seed, host, symlinks=True)
            for rel in (spec.layout.lakehouse, spec.layout.exports, spec.layout.runs):
                os.makedirs(os.path.join(host, rel), exist_ok=True)
            shutil.rmtree(os.path.join(host, spec.layout.runs, run_id), ignore_errors=True)
        else:
            samples.make_host(host, run_id=run_id, layout=spec.layout)
        before = _snapshot(host, spec.layout.runs)
        prep = preflight(
            RunRequest(
                host=host,
                run_id=run_id,
                argv=[],
                profile=profile,
                policy_file=spec_file,
                mode="audit",
                kernel=kernel,
                workspace_base=tmp,
            )
        )
        argv = [sys.executable, "-m", "sandbox.audit._child", os.path.abspath(target) if os.path.exists(
            target) else target, TRACE]  # fmt: skip
        with Run.open(prep, echo=False) as run:
            rec = run.step(StepSpec(argv, name="audit", env={"TV_AUDIT_SEED": host}, timeout_s=timeout_s))
            outcome = run.close()
        result.notes = list(outcome.warnings)  # e.g. the kernel layer unavailable: guard only
        export = outcome.destination
        trace, unreadable = _read_trace(os.path.join(export, "logs", TRACE))
        if rec.cut == "timeout":
            result.dynamic = "timeout"
            result.findings.append(
                finding(
                    "TVS205", Severity.ERROR, shown, None,
                    f"still running after {timeout_s:g} s on the fake host; its process tree was ended",
                    source="dynamic",
                )
            )  # fmt: skip
        elif trace is None:
            result.dynamic = "error"
            tail = [ln for ln in (rec.stderr_tail or "").splitlines() if ln.strip()]
            why = unreadable or (tail[-1].strip() if tail else f"exit status {rec.exit_code}")
            result.findings.append(
                finding(
                    "TVS004",
                    Severity.ERROR,
                    shown,
                    None,
                    f"the audit's child ended early: {why}",
                    source="dynamic",
                )
            )
        else:
            result.events = trace["events"]
            result.dynamic = trace["status"]
            result.findings.extend(findings_of(trace["events"], spec, shown, run_id))
            if trace["status"] != "ok":
                error = trace["error"] or "failed"
                result.findings.append(finding("TVS206", Severity.INFO, shown, None, error, source="dynamic"))
                if any(m in error for m in _KERNEL_REFUSALS):  # pyfakefs never says these: the real disk did
                    result.findings.append(
                        finding(
                            "TVS204", Severity.ERROR, shown, None,
                            f"a write went past pyfakefs; the kernel layer refused it: {error}",
                            source="dynamic", op="write",
                        )
                    )  # fmt: skip
        result.findings.extend(_disk_writes(export, host, before, spec, shown))
    finally:
        if not os.environ.get("TV_AUDIT_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _read_trace(path: str) -> tuple[dict[str, Any] | None, str]:
    """The audit child's trace, or None and why not ("" when there is none). The script ran in that
    child and can write the file itself: a trace is used only in the shape the child writes it
    (:func:`sandbox.audit._child.write_trace`), and read as any step-written file is -- not through
    a link, no FIFO, at most :data:`MAX_TRACE_BYTES` and one line at a time, so a sparse file of
    a gigabyte (read whole, 768 MiB took 1.1 GB of memory) or a link to ``/dev/zero`` costs nothing,
    and what a line parses to is kept only when it is an event."""
    import errno
    import stat

    from sandbox.events import step_lines

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, f"its trace {TRACE} is a symbolic link {_ITS_OWN}"
        return None, f"its trace {TRACE} is unreadable ({type(e).__name__}: {e.strerror})"
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"its trace {TRACE} is not a regular file {_ITS_OWN}"
        if st.st_size > MAX_TRACE_BYTES:
            return None, f"its trace {TRACE} is larger than {MAX_TRACE_BYTES >> 20} MiB {_ITS_OWN}"
        try:
            doc = _parse_trace(step_lines(fh, max_bytes=MAX_TRACE_BYTES))
        except (OSError, ValueError, RecursionError) as e:
            return None, f"its trace {TRACE} is unreadable ({type(e).__name__}: {str(e)[:200]})"
    if doc is None:
        return None, f"its trace {TRACE} is not one the audit writes {_ITS_OWN}"
    return doc, ""


_ITS_OWN = "(the script can write that file too)"
#: The most of a trace the audit reads: an event is ~400 bytes, so some 40,000 events. Each line
#: is kept as a dict, so the cap is below the step logs' (events.MAX_LOG_BYTES): 16 MiB of the
#: smallest lines that pass as events parse to ~120 MiB in ~2 s; 64 MiB of them took 470 MiB, 8 s.
MAX_TRACE_BYTES = 16 << 20


def _parse_trace(lines: Iterable[bytes | None]) -> dict[str, Any] | None:
    """The trace of ``lines`` (its head, then one event a line), or None at the first line that is
    not what :func:`sandbox.audit._child.write_trace` writes there."""
    doc: dict[str, Any] | None = None
    for line in lines:
        if line is None:  # a line past step_lines' bounds: none the child writes
            return None
        item = json.loads(line)
        if doc is None:
            if not _is_head(item):
                return None
            doc = {"status": item["status"], "error": item["error"], "events": []}
        elif _is_event(item):
            doc["events"].append(item)
        else:
            return None
    return doc


_HEAD = {"status", "error"}
_EVENT_TEXT = ("op", "path", "resolved", "action", "rule")
_EVENT_TEXT_OR_NONE = ("target", "reason", "hint", "file", "via", "rel")


def _is_head(h: Any) -> bool:
    """``h`` is the first line :func:`sandbox.audit._child.write_trace` writes."""
    return isinstance(h, dict) and set(h) == _HEAD and all(isinstance(v, str) for v in h.values())


def _is_event(e: Any) -> bool:
    """``e`` has the shape of an event of :func:`sandbox.audit._child.trace` (what findings read)."""
    return (
        isinstance(e, dict)
        and all(isinstance(e.get(k), str) for k in _EVENT_TEXT)
        and all(e.get(k) is None or isinstance(e[k], str) for k in _EVENT_TEXT_OR_NONE)
        and (e.get("line") is None or type(e["line"]) is int)
    )


def _snapshot(root: str, skip: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    skip_parts = tuple(skip.split("/"))
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != "." and is_within(tuple(rel_dir.split(os.sep)), skip_parts):
            dirs[:] = []
            continue
        for n in files:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _area(rel: str, spec: PolicySpec) -> str:
    p = parts("/" + rel)
    for name, mrel in spec.layout.mounts().items():
        if is_within(p, parts("/" + mrel)):
            return name
    return "workspace"


def _where(e: dict[str, Any], shown: str) -> tuple[str, int | None]:
    """The caller as the user named it: the audited script as given, other files relative to cwd."""
    file = e.get("file") or "<unknown>"
    path = shown.partition(":")[0] if ":" in shown and not os.path.exists(shown) else shown
    if os.path.abspath(file) == os.path.abspath(path):
        file = shown if path == shown else path
    elif os.path.isabs(file) and file.startswith(os.getcwd() + os.sep):
        file = os.path.relpath(file)
    return file, e.get("line") or None


def findings_of(
    events: Iterable[dict[str, Any]], spec: PolicySpec, shown: str, run_id: str = RUN_ID
) -> list[Finding]:
    """The findings a recorded run's events show, one per (kind, caller line, path)."""
    out: dict[tuple[str, str, int | None, str], Finding] = {}
    exports = parts("/" + spec.layout.exports)
    for e in events:
        file, line = _where(e, shown)
        op, action, rule = e["op"], e["action"], e["rule"]
        what = f"{op} {e['path']}"
        if op == "read":
            rel = _rel_of(e, spec)
            if rel is None:
                continue
            p = parts("/" + rel)
            if p == exports or (
                is_within(p, exports) and len(p) > len(exports) and p[len(exports)] != run_id
            ):
                key = ("TVS211", file, line, rel)
                out.setdefault(key, finding(
                    "TVS211", Severity.WARNING, file, line,
                    f"{what}: the script searched the exports folder instead of reading $TV_SCAN_DIR",
                    source="dynamic", op=op, path=e["path"], rule=rule,
                ))  # fmt: skip
            continue
        if action == Action.DENY.value:
            rel = _rel_of(e, spec)
            kind = "TVS201" if rel is not None and _area(rel, spec) != "workspace" else "TVS202"
            detail = f"{what}: denied by rule '{rule}'" + (f" ({e['reason']})" if e.get("reason") else "")
            severity, fix = Severity.ERROR, e.get("hint") or ""
            if kind == "TVS202" and _library_own(e):
                # a library's own cache or config (matplotlib's ~/.config at import): in a run it is
                # denied, and libraries fall back to $TMPDIR; the user's code named no such path
                severity = Severity.INFO
                detail = f"{detail}; done by {os.path.basename(e['via'])} for this line (its own file)"
                fix = "nothing to change if the library copes (most fall back to $TMPDIR)"
            out.setdefault((kind, file, line, e["path"]), finding(
                kind, severity, file, line, detail, fix,
                source="dynamic", op=op, path=e["path"], rule=rule,
            ))  # fmt: skip
        elif action == Action.REDIRECT.value and rule == "workspace-redirect":
            out.setdefault(("TVS203", file, line, e["path"]), finding(
                "TVS203", Severity.INFO, file, line, f"{what}: redirected to {e['target']}",
                source="dynamic", op=op, path=e["path"], rule=rule,
            ))  # fmt: skip
    return list(out.values())


def _library_own(e: dict[str, Any]) -> bool:
    """Did a library write this for itself: a library did it, during an ``import`` line or in the
    user's home (``~/.cache``, ``~/.config``)?"""
    if not e.get("via"):
        return False
    import linecache

    home = os.path.expanduser("~")
    src = linecache.getline(e.get("file") or "", e.get("line") or 0).lstrip()
    return src.startswith(("import ", "from ")) or (home != "/" and e["resolved"].startswith(home + "/"))


def _rel_of(e: dict[str, Any], spec: PolicySpec) -> str | None:
    """The workspace-relative path of an event (the fake host sits at the workspace)."""
    rel = e.get("rel")
    return rel if isinstance(rel, str) else None


def _disk_writes(
    export: str, host: str, before: dict[str, tuple[int, int]], spec: PolicySpec, shown: str
) -> list[Finding]:
    """Writes that reached the (sandboxed, throwaway) real disk while the fake host was in place."""
    out: list[Finding] = []
    logs = "logs" + os.sep
    for dirpath, _dirs, files in os.walk(export):
        for n in files:
            rel = os.path.relpath(os.path.join(dirpath, n), export)
            if rel in _OWN or rel.startswith(logs):
                continue
            if rel.startswith(AUDIT_DIR + os.sep):
                orig = rel[len(AUDIT_DIR) + 1 :]
                out.append(finding(
                    "TVS204", Severity.ERROR, shown, None,
                    f"{orig} was written on the real disk, past pyfakefs (native code or a child process); "
                    f"the {_area(orig, spec)} is protected: in this audit the write was captured",
                    source="dynamic", op="write", path=orig,
                ))  # fmt: skip
            else:
                out.append(finding(
                    "TVS204", Severity.INFO, shown, None,
                    f"$TV_RUN_DIR/{rel} was written on the real disk, past pyfakefs (native code or a child "
                    "process); it landed in the run folder, which is allowed",
                    source="dynamic", op="write", path=rel,
                ))  # fmt: skip
    after = _snapshot(host, spec.layout.runs)
    for rel in sorted(set(after) | set(before)):
        if after.get(rel) != before.get(rel):
            out.append(finding(
                "TVS204", Severity.ERROR, shown, None,
                f"{rel} of the host was {'changed' if rel in after else 'removed'} on the real disk, past "
                "pyfakefs and the Python guard (native code or a child process without the kernel layer)",
                source="dynamic", op="write", path=rel,
            ))  # fmt: skip
    return out
