"""`tv-sandbox audit` and the pytest plugin on the repository's own pipeline_scripts/: the legacy
scripts' lakehouse writes are reported; the refactored ones have nothing at warning level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import samples

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline_scripts"
#: Run on the host before a pipeline run (they write the scanner exports / the sample host by
#: design), not as sandboxed steps: the audit rightly flags their export writes; they are checked
#: for that, not held to the steps' rule.
HOST_SIDE = {"run_scans.py", "make_sample_host.py"}


@pytest.fixture(scope="module")
def audit_doc() -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", str(PIPELINE), "--format", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 1 and r.stderr == "", (
        r.stderr
    )  # the legacy errors fail it (--fail-on error)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _scripts(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(Path(s["file"]).relative_to(PIPELINE)): s for s in doc["scripts"]}  # type: ignore[attr-defined,index]


def test_legacy_lakehouse_writes_are_reported(audit_doc: dict[str, object]) -> None:
    scripts = _scripts(audit_doc)
    hedge = scripts["legacy/detect_hedge_anchors.py"]
    found = {(f["id"], f["source"], f["path"]) for f in hedge["findings"]}  # type: ignore[index,union-attr]
    assert ("TVS101", "static", "data/lakehouse/hedge_anchors.json") in found
    assert ("TVS201", "dynamic", "data/lakehouse/hedge_anchors.json") in found
    assert all(
        f["severity"] == "error"
        for f in hedge["findings"]
        if f["id"] in ("TVS101", "TVS201")
    )  # type: ignore[index,union-attr]
    stats = scripts[
        "legacy/compute_sleeve_stats.py"
    ]  # relative writes: redirected, said as info
    assert {f["id"] for f in stats["findings"]} >= {"TVS105", "TVS203"}  # type: ignore[union-attr]


def test_refactored_scripts_have_nothing_at_warning(
    audit_doc: dict[str, object],
) -> None:
    scripts = _scripts(audit_doc)
    refactored = {
        k: v
        for k, v in scripts.items()
        if not k.startswith("legacy/") and k not in HOST_SIDE
    }
    assert (
        "select_top_universe.py" in refactored and "optimize_portfolio.py" in refactored
    )
    worse = {
        k: [(f["id"], f["line"]) for f in s["findings"] if f["severity"] != "info"]  # type: ignore[union-attr]
        for k, s in refactored.items()
    }
    assert worse == {k: [] for k in refactored}
    # the scanner is a host-side tool that writes the exports: the policy says so and the audit
    # reports it -- unless the script says it is host-side (`# tvs: skip-file`)
    scans = scripts["run_scans.py"]
    assert scans["skipped"] or {f["id"] for f in scans["findings"]} >= {"TVS102"}  # type: ignore[union-attr]


# -- the pytest plugin on the pipeline's own scripts (what a user writes for theirs) -------------


@pytest.fixture(scope="module")
def pipeline_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's sample host with the scans of run TEST (made on the real disk, before any fake)."""
    pytest.importorskip(
        "pyarrow", reason="the sample pipeline's bars are parquet (the pipeline extra)"
    )
    host = samples.make_pipeline_host(tmp_path_factory.mktemp("pipeline") / "host")
    samples.run_scans(host, "TEST")
    return host


def test_plugin_selection_writes_only_under_the_run_dir(
    sandbox_host, sandbox_run, pipeline_host
) -> None:  # type: ignore[no-untyped-def]
    sandbox_host.copy_from(pipeline_host)
    result = sandbox_run(str(PIPELINE / "select_top_universe.py"), "--mode", "selected")
    assert result.exit_code == 0, result.events
    result.assert_only_run_dir_writes()
    assert {
        "data/portfolio_candidates_raw.json",
        "data/portfolio_candidates.json",
        "data/selection_audit.json",
    } <= set(result.files)
    assert result.denials == [] and result.native_writes == []


def test_plugin_legacy_hedge_anchors_is_denied(
    sandbox_host, sandbox_run, pipeline_host
) -> None:  # type: ignore[no-untyped-def]
    sandbox_host.copy_from(pipeline_host)
    result = sandbox_run(str(PIPELINE / "legacy" / "detect_hedge_anchors.py"))
    (denial,) = result.denials
    assert (
        denial["path"] == "data/lakehouse/hedge_anchors.json"
        and denial["rule"] == "lakehouse-read-only"
    )
    assert (Path(denial["file"]).name, denial["line"]) == (
        "detect_hedge_anchors.py",
        20,
    )
    with pytest.raises(AssertionError, match=r"hedge_anchors\.json"):
        result.assert_only_run_dir_writes()
