"""The run report: ``$TV_RUN_DIR/sandbox_report.json``, what a user reads after a run.

It gathers what each layer recorded -- every deny and redirect (from the event log), the steps
(exit code, time, peak memory), which layers were active, the files a run wrote outside its
standard folders (scattered artifacts, now in the run folder), and, when a step failed on a
read-only or denied path under the kernel layer, an explanation with the tail of its stderr.
In audit mode it also summarises the lakehouse diff (:mod:`sandbox.lakediff`): how many files the
run created, modified and deleted in the mounts, and where the diff itself is.
"""

from __future__ import annotations

import os

from sandbox._paths import write_into
from sandbox._record import asdict, field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

REPORT_NAME = "sandbox_report.json"
EVENTS_NAME = "sandbox_events.jsonl"  # in $TV_RUN_DIR/logs/
LAKEHOUSE_DIFF = "reports/lakehouse_diff.json"  # audit mode: written by sandbox.lakediff

# Fragments of the messages libc/Python print for EROFS and EACCES (strerror), for explanations.
_KERNEL_DENIAL_MARKERS = ("Read-only file system", "Permission denied", "Operation not permitted")


@record
class StepRecord:
    """One sandboxed step: its command, how it ended, and what its whole process tree cost.

    ``cpu_s`` is the user + system time of every process of the step; ``peak_rss_bytes`` the
    highest total resident memory of its process tree seen while it ran (at least the largest
    single process's). ``cut`` says why tv-sandbox ended the step, when it did: ``"timeout"``,
    ``"cancelled"`` or ``"interrupted"`` (None: it ended by itself); ``cut_reason`` in words.
    ``denied``/``redirected`` count the step's own events.
    """

    argv: list[str]
    exit_code: int
    signal: int | None
    duration_s: float
    peak_rss_bytes: int
    stderr_tail: str = ""
    name: str = "step"
    cpu_s: float = 0.0
    denied: int = 0
    redirected: int = 0
    cut: str | None = None
    cut_reason: str = ""


@record
class Layers:
    """Which enforcement layers were active for a run, and why one was not."""

    python_guard: bool = True
    landlock_abi: int = 0
    mount_namespace: bool = False
    overlay: bool = False
    readonly_mounts: bool = False
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def kernel(self) -> bool:
        return self.landlock_abi > 0 or self.mount_namespace


def scattered_artifacts(run_storage: str, run_folders: Sequence[str]) -> list[str]:
    """Files a run wrote outside its standard folders (relative outputs redirected to the run
    folder's top level, e.g. ``reports/x.csv`` when ``reports`` is not a run folder)."""
    known = set(run_folders) | {"audit", REPORT_NAME}
    ours = {LAKEHOUSE_DIFF}  # the sandbox's, wherever its folder is: not a step's stray output
    out: list[str] = []
    for name in sorted(os.listdir(run_storage)):
        if name in known:
            continue
        top = os.path.join(run_storage, name)
        if os.path.isdir(top) and not os.path.islink(top):
            for dirpath, _dirs, files in os.walk(top):
                out.extend(os.path.relpath(os.path.join(dirpath, f), run_storage) for f in files)
        else:
            out.append(name)
    return sorted(p for p in out if p not in ours)


def explain_failure(step: StepRecord, layers: Layers, protected: Mapping[str, str]) -> str | None:
    """A few lines telling a kernel-layer denial from a bug, or None when nothing points to one."""
    if step.exit_code == 0 or not layers.kernel:
        return None
    hits = [m for m in _KERNEL_DENIAL_MARKERS if m in step.stderr_tail]
    if not hits:
        return None
    mounts = ", ".join(f"{name} ({path})" for name, path in protected.items())
    return (
        f"the step exited {step.exit_code} after the kernel refused a write ({'; '.join(hits)}). "
        f"Read-only in this run: {mounts}, and everything outside the workspace, the run folder "
        "and the temp dir. If the failing path is one of these, it is a policy denial: write under "
        "$TV_RUN_DIR (relative paths land there); otherwise it is a bug in the step. "
        "The tail of its stderr is in steps[].stderr_tail."
    )


def build(
    *,
    run_id: str,
    profile: str,
    mode: str,
    policy_name: str,
    policy_sha256: str,
    policy_source: str,
    layers: Layers,
    steps: Sequence[StepRecord],
    events: Sequence[Mapping[str, Any]],
    event_summary: Mapping[str, Any],
    scattered: Sequence[str],
    protected: Mapping[str, str],
    warnings: Sequence[str] = (),
    lakehouse_diff: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The report. ``lakehouse_diff``: the summary :func:`sandbox.lakediff.write` returns (audit
    mode; None -- shown as null -- in enforce mode, which makes no diff). ``status`` defaults to
    ``succeeded`` when every step exited 0, else ``failed``."""
    explanations = [e for s in steps if (e := explain_failure(s, layers, protected))]
    if status is None:
        status = "succeeded" if steps and all(s.exit_code == 0 for s in steps) else "failed"
    return {
        "schema": "tv-sandbox-report",
        "schema_version": 1,
        "run_id": run_id,
        "status": status,
        "profile": profile,
        "mode": mode,
        "policy": {"name": policy_name, "sha256": policy_sha256, "source": policy_source},
        "layers": {**asdict(layers), "kernel": layers.kernel},
        "steps": [asdict(s) for s in steps],
        "events": dict(event_summary),
        "event_count": len(events),
        "scattered_artifacts": list(scattered),
        "protected_mounts": dict(protected),
        "explanations": explanations,
        "warnings": list(warnings),
        "lakehouse_diff": dict(lakehouse_diff) if lakehouse_diff is not None else None,
    }


def write(run_storage: str, report: Mapping[str, Any]) -> str:
    """Write the report at the top of the run folder -- replacing, never following, whatever
    the step left under that name (a symlink to the lakehouse, say)."""
    import json

    return write_into(run_storage, REPORT_NAME, (json.dumps(report, indent=1) + "\n").encode())
