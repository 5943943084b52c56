"""``tv-sandbox demo``: the pipeline showcase (:mod:`sandbox.demo_pipeline`), and with ``--steps``
the showcase of ``tv-sandbox run`` on a generated sample host, below.

Four runs of the seed's scripts, each printed with what happened and checked: a legacy step whose
relative outputs land in its exported run folder; the seed's bug (the selection audit hard-coded
into the lakehouse) denied in production with an explanation, captured in audit mode, and allowed
in development. After each production run the host lakehouse is hashed: it must not change.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sandbox.errors import UsageError
from sandbox.export import verify
from sandbox.report import summary_line
from sandbox.runner import KERNEL_CHOICES, RunRequest, execute, preflight
from sandbox.samples import DEMO_PREFIX, make_host, tree_digest


def _run(
    host: Path,
    run_id: str,
    argv: Sequence[str],
    *,
    profile: str,
    mode: str = "enforce",
    kernel: str = "auto",
) -> int:
    print(
        f"\n$ TV_PROFILE={profile} tv-sandbox run --root {host} --run-id {run_id} --mode {mode} -- {' '.join(argv)}"
    )
    sys.stdout.flush()
    req = RunRequest(
        host=str(host), run_id=run_id, argv=list(argv), profile=profile, mode=mode, kernel=kernel
    )
    prep = preflight(req)
    for w in prep.warnings:
        print(f"  warning: {w}")
    out = execute(prep, stderr=sys.stdout.buffer)
    rep = out.report
    layers = rep["layers"]
    active = (
        ["python guard"]
        + ([f"landlock abi {layers['landlock_abi']}"] if layers["landlock_abi"] else [])
        + (["mount namespace + overlay"] if layers["overlay"] else [])
    )
    problems = verify(out.destination)
    print(
        f"  -> exit {out.exit_code}, {rep['status']}; {summary_line(rep)}; layers: {', '.join(active)}\n"
        f"  -> exported to {out.destination} (manifest {'verifies' if not problems else 'BROKEN: ' + '; '.join(problems)})"
    )
    for e in rep["events"].get("denials", [])[:2]:
        print(f"  -> denied {e['op']} {e['path']} (rule {e['rule']})")
    for line in rep["explanations"]:
        print(f"  -> {line}")
    return out.exit_code


def main(directory: str | None = None, *, kernel: str = "auto", steps: bool = False) -> int:
    """The pipeline showcase (:mod:`sandbox.demo_pipeline`), or with ``steps`` the single-step
    showcases of ``tv-sandbox run``, in ``directory`` (a fresh temp folder by default). 0 when all
    checks hold. A bad ``kernel`` or ``directory`` is a :class:`UsageError` before anything is
    made: a bad --kernel was refused only once the sample host was written and Ray had started,
    a --dir that is a file was an internal error."""
    if kernel not in KERNEL_CHOICES:
        raise UsageError(f"unknown kernel setting {kernel!r}: use one of {', '.join(KERNEL_CHOICES)}")
    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            why = "not a folder" if isinstance(e, FileExistsError) else e.strerror
            raise UsageError(
                f"--dir {directory}: cannot make the sample host there ({why}): pass a folder you "
                "can write, or leave --dir out for a new temp folder"
            ) from None
    if not steps:
        from sandbox.demo_pipeline import main as pipeline_demo

        return pipeline_demo(directory, kernel=kernel)
    return steps_main(directory, kernel=kernel)


def steps_main(directory: str | None = None, *, kernel: str = "auto") -> int:
    """The single-step showcases (``tv-sandbox demo --steps``)."""
    base = Path(directory or tempfile.mkdtemp(prefix=DEMO_PREFIX))
    host = make_host(base / "host")
    lake = host / "data" / "lakehouse"
    print(f"sample host: {host}\n  lakehouse: {sorted(p.name for p in lake.iterdir())}")
    before = tree_digest(lake)
    py = sys.executable
    ok = True

    ok &= _run(host, "legacy", [py, "scripts/legacy_step.py"], profile="production", kernel=kernel) == 0
    run = host / "artifacts" / "summaries" / "runs" / "legacy"
    summary = json.loads((run / "reports" / "summary.json").read_text())
    print(f"  -> {run}/reports/summary.json: {summary}")
    ok &= (run / "data" / "intermediate" / "returns.pkl").is_file()

    ok &= (
        _run(
            host,
            "bug_prod",
            [py, "scripts/buggy_selection.py"],
            profile="production",
            kernel=kernel,
        )
        != 0
    )
    ok &= tree_digest(lake) == before
    ok &= (
        _run(
            host,
            "bug_audit",
            [py, "scripts/buggy_selection.py"],
            profile="production",
            mode="audit",
            kernel=kernel,
        )
        == 0
    )
    captured = host / "artifacts/summaries/runs/bug_audit/audit/data/lakehouse/selection_audit.json"
    print(f"  -> captured copy: {captured} ({'present' if captured.is_file() else 'MISSING'})")
    diff_file = host / "artifacts/summaries/runs/bug_audit/reports/lakehouse_diff.json"
    diff = json.loads(diff_file.read_text()) if diff_file.is_file() else {}
    changes = [f"{c['change']} {c['path']}" for c in diff.get("changes", [])]
    print(f"  -> lakehouse diff ({diff_file.name}): {', '.join(changes) or 'MISSING'}")
    ok &= captured.is_file() and tree_digest(lake) == before and bool(changes)
    print(
        f"\nlakehouse after the production and audit runs: {'byte-identical' if tree_digest(lake) == before else 'CHANGED'}"
    )

    ok &= (
        _run(
            host,
            "bug_dev",
            [py, "scripts/buggy_selection.py"],
            profile="development",
            kernel=kernel,
        )
        == 0
    )
    ok &= (lake / "selection_audit.json").is_file()
    print(f"  -> development wrote {lake / 'selection_audit.json'} (allowed by the development policy)")
    print(f"\ndemo {'passed' if ok else 'FAILED'}: every check held" if ok else "\ndemo FAILED")
    if directory is None and ok and not os.environ.get("TV_SANDBOX_KEEP_DEMO"):
        print(f"(files kept in {base}; remove with: rm -rf {base})")
    return 0 if ok else 1
