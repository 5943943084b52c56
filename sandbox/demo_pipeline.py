"""``tv-sandbox demo`` (what ``make demo`` runs): the main job, the pipeline on embedded Ray.

On a generated sample host (30 symbols x 500 daily bars as parquet, the scripts of
``pipeline_scripts/``, ``configs/manifest.json``): the host runs the scans, then two meta profiles
run on one embedded Ray -- ``meta_ray_test`` (one sleeve, the whole pipeline) and
``meta_crypto_multi`` (five sleeves in parallel, two of them legacy scripts written for the shared
disk). Each sleeve is one sandboxed multi-step run exported atomically; the legacy script that
writes the lakehouse is denied with its explanation; the lakehouse is hashed before and after.
Every claim printed is checked: exit 0 only when all of them hold.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sandbox.export import verify
from sandbox.orchestrator.pipeline import PipelineRequest, PipelineResult, prepare_pipeline, run_pipeline
from sandbox.orchestrator.progress import summary_table
from sandbox.samples import DEMO_PREFIX, make_pipeline_host, run_scans, tree_digest

RUNS = (("ray-test", "meta_ray_test"), ("multi", "meta_crypto_multi"))


def _say(text: str = "") -> None:
    print(text, flush=True)


def _show_denial(result: PipelineResult) -> bool:
    """The legacy lakehouse write, denied: the event and the script's own error line."""
    hedge = next((s for s in result.sleeves if s.id == "legacy_hedge"), None)
    if hedge is None or not hedge.export:
        _say("  legacy_hedge: MISSING export")
        return False
    rep = json.loads((Path(hedge.export) / "sandbox_report.json").read_text())
    denials = rep.get("events", {}).get("denials", [])
    for e in denials[:1]:
        where = f"layer {e['layer']}, rule {e['rule']}"
        _say(f"  legacy_hedge: denied {e['op']} {e['path']} ({where}): {e['reason']}")
    err = Path(hedge.export) / "logs" / "anchors.stderr.log"
    text = err.read_text(errors="replace") if err.is_file() else ""
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    if last:
        said, _, hint = last.partition(" -- ")
        if "[resolved:" in said:  # the workspace path means nothing to a reader: it is gone
            said = said[: said.index("[resolved:")].rstrip()
        _say(f"  the script saw: {said}")
        if hint:
            _say(f"  explanation: {hint}")
    _say(f"  its run folder was exported anyway, marked {hedge.status}: {hedge.export}")
    return hedge.status == "failed" and bool(denials)


def main(directory: str | None = None, *, kernel: str = "auto") -> int:
    """Run the pipeline showcase in ``directory`` (a fresh temp folder by default)."""
    from sandbox.orchestrator.cluster import ray_session

    t0 = time.monotonic()
    base = Path(directory or tempfile.mkdtemp(prefix=DEMO_PREFIX))
    host = make_pipeline_host(base / "host")
    lake = host / "data" / "lakehouse"
    files = sorted(lake.iterdir())
    size = sum(f.stat().st_size for f in files)
    before = tree_digest(lake)
    _say(f"sample host: {host}")
    _say(f"  lakehouse: {len(files)} parquet files, {size / 1024:.0f} KiB; sha256 of the tree {before[:16]}")
    ok = True
    for run_id, _meta in RUNS:
        scans = run_scans(host, run_id)
        _say(f"\n$ python scripts/run_scans.py --run-id {run_id}    # on the host, before dispatch")
        _say(f"  {len(scans)} scanner outputs in {host / 'export' / run_id}")
    results: list[PipelineResult] = []
    interactive = sys.stdout.isatty()
    _say("\nstarting an embedded Ray (quiet: no dashboard, worker output kept in the run folders)")
    with ray_session(None, num_cpus=max(2, os.cpu_count() or 1)):
        _say(f"  Ray ready after {time.monotonic() - t0:.1f}s")
        for run_id, meta in RUNS:
            _say(f"\n$ tv-sandbox pipeline --root {host} --profile {meta} --run-id {run_id}")
            req = PipelineRequest(host=str(host), meta=meta, run_id=run_id, kernel=kernel)
            result = run_pipeline(prepare_pipeline(req), progress_mode="auto")
            results.append(result)
            summary_table(result.sleeves, stream=sys.stdout, rich=interactive)
            _say(f"  -> {result.status} (exit {result.exit_code}); summary: {result.summary}")
    ray_test, multi = results
    ok &= ray_test.status == "succeeded"
    expected = {s.id: "failed" if s.id == "legacy_hedge" else "succeeded" for s in multi.sleeves}
    ok &= {s.id: s.status for s in multi.sleeves} == expected and len(expected) >= 3
    _say("\nthe legacy script that writes the shared lakehouse (production: read-only):")
    ok &= _show_denial(multi)
    stats = next(s for s in multi.sleeves if s.id == "legacy_stats")
    rel = [p for p in ("reports/stats.json", "data/intermediate/stats.pkl") if stats.export]
    landed = all((Path(stats.export or "") / p).is_file() for p in rel)
    ok &= landed
    _say(
        "the legacy script with relative outputs: "
        + ", ".join(rel)
        + (f" landed in its run folder {stats.export}" if landed else " MISSING")
    )
    broken = [f"{s.export}: {p}" for r in results for s in r.sleeves if s.export for p in verify(s.export)]
    ok &= not broken
    n = sum(1 for r in results for s in r.sleeves if s.export)
    _say(
        f"\nevery sleeve folder is a complete run folder: {n} exports, "
        + ("each manifest.json verifies" if not broken else "BROKEN: " + "; ".join(broken[:3]))
    )
    after = tree_digest(lake)
    ok &= after == before
    _say(
        f"host lakehouse sha256 before {before[:16]}, after {after[:16]}: "
        + ("identical" if after == before else "CHANGED")
    )
    _say("\nreports:")
    for r in results:
        for s in r.sleeves:
            md = Path(s.export or "") / "reports" / "portfolio_report.md"
            if s.export and md.is_file():
                _say(f"  {md}  (+ equity_curve.png)")
    _say(
        f"\ndemo {'passed: every check held' if ok else 'FAILED'} in {time.monotonic() - t0:.0f}s "
        f"(files in {base}; remove with: rm -rf {base})"
    )
    return 0 if ok else 1
