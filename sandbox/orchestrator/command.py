"""``tv-sandbox pipeline``: the command line's side of :mod:`sandbox.orchestrator.pipeline`.

``sandbox.cli`` parses the options and calls :func:`main`; this prints progress, the summary table
(or, with ``--json``, exactly one JSON document on stdout and everything else on stderr) and
returns the exit status: 0 every sleeve succeeded, 1 any failed, 125 for an error of tv-sandbox
itself (before dispatch), 130 on Ctrl-C (143 on SIGTERM).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from sandbox.errors import SandboxError

PROG = "tv-sandbox"


def request_from(opts: Mapping[str, Any]) -> Any:
    """A :class:`~sandbox.orchestrator.pipeline.PipelineRequest` from the parsed options."""
    from sandbox.loader import resolve_profile
    from sandbox.orchestrator.pipeline import PipelineRequest

    return PipelineRequest(
        host=opts["root"],
        meta=opts["profile"],
        run_id=opts["run_id"],
        manifest=opts.get("manifest"),
        address=opts.get("address"),
        max_parallel=opts.get("max_parallel"),
        step_timeout=opts.get("step_timeout"),
        mode=opts.get("mode") or "enforce",
        kernel=opts.get("kernel") or "auto",
        overwrite=bool(opts.get("overwrite")),
        resume=bool(opts.get("resume")),
        policy_profile=resolve_profile(None),  # TV_PROFILE: production unless 'development'
        workspace_base=opts.get("workspace_dir"),
    )


def main(opts: Mapping[str, Any]) -> int:
    from sandbox.orchestrator.pipeline import prepare_pipeline, run_pipeline
    from sandbox.orchestrator.progress import summary_table

    as_json = bool(opts.get("json"))
    out = sys.stderr if as_json else sys.stdout  # with --json, stdout holds the document only
    try:
        pp = prepare_pipeline(request_from(opts))
        for w in pp.warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        if pp.kept:
            kept = ", ".join(s.id for s in pp.kept)
            print(f"{PROG}: --resume: keeping the verified exports of {kept}", file=out)
        # Ray's own start can be refused too (its temp dir, an --address that answers nothing)
        result = run_pipeline(pp, progress_mode=opts.get("progress") or "auto", stream=out)
    except SandboxError as e:
        if not as_json:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        doc = {"run_id": opts["run_id"], "status": "error", "error": str(e), "sleeves": []}
        print(json.dumps(doc))
        return e.exit_status
    if as_json:
        print(json.dumps(result.to_json()))
        sys.stdout.flush()
    else:
        summary_table(result.sleeves, stream=out, rich=out.isatty())
    ok = sum(s.status == "succeeded" for s in result.sleeves)
    print(
        f"{PROG}: pipeline {result.run_id} ({result.meta}) {result.status}: {ok}/{len(result.sleeves)} "
        f"sleeves succeeded in {result.duration_s:.1f}s; summary {result.summary}",
        file=sys.stderr if as_json else out,
    )
    return result.exit_code
