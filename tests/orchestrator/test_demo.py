"""``tv-sandbox demo`` (what ``make demo`` runs): the sample pipeline's two meta profiles on Ray,
here on the session's cluster. The demo checks its own claims (exit 0 only when all hold); this
test holds it to them and to what it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow", reason="the sample pipeline needs the [pipeline] extra")

from sandbox.demo_pipeline import main as demo

pytestmark = pytest.mark.slow


def test_demo_runs_the_pipeline_and_every_check_holds(ray_cluster: str, tmp_path: Path, capsys: Any) -> None:
    code = demo(str(tmp_path / "demo"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "legacy_hedge: denied write data/lakehouse/hedge_anchors.json" in out
    assert "each manifest.json verifies" in out and "identical" in out
    runs = tmp_path / "demo" / "host" / "artifacts" / "summaries" / "runs"
    reports = sorted(runs.glob("*/*/reports/portfolio_report.md"))
    assert len(reports) == 4 and all((r.parent / "equity_curve.png").is_file() for r in reports)
    assert sorted(p.name for p in runs.iterdir()) == ["multi", "ray-test"]
