"""``tv-sandbox demo`` (what ``make demo`` runs): the sample pipeline's two meta profiles on Ray,
here on the session's cluster. The demo checks its own claims (exit 0 only when all hold); this
test holds it to them and to what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kernel", "bogus"], "unknown kernel setting 'bogus'"),  # once the host was made, Ray started
        (["--steps", "--kernel", "bogus"], "unknown kernel setting 'bogus'"),  # after the host was made
        (["--dir", "{tmp}/a-file"], "(not a folder)"),  # an internal error (NotADirectoryError)
        (["--dir", "{tmp}/a-file/below"], "(Not a directory)"),
    ],
)
def test_a_bad_demo_option_is_one_line_before_anything_is_made(
    tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "temp").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "demo", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path / "temp")},
        check=False,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 125 and len(lines) == 1 and says in lines[0], done.stderr
    assert lines[0].startswith("tv-sandbox: error before the command ran: ") and done.stdout == ""
    assert list((tmp_path / "temp").iterdir()) == []  # no sample host, no Ray session
