"""The sample pipeline's scripts, run directly (no sandbox): the formats of FORMATS.md, the errors,
determinism. Each test works on a copy of one session host in its own temp folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="the sample pipeline needs the [pipeline] extra")

from sandbox.samples import PIPELINE_BARS, PIPELINE_SYMBOLS, make_pipeline_host, run_scans

RUN_ID = "R1"


@pytest.fixture(scope="module")
def base_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = make_pipeline_host(tmp_path_factory.mktemp("pipeline") / "host")
    run_scans(host, RUN_ID)
    return host


@pytest.fixture
def host(base_host: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "host"
    shutil.copytree(base_host, dst, symlinks=True)
    return dst


def run_env(host: Path, run_dir: Path, profile: str | None = None) -> dict[str, str]:
    data = run_dir / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TV_", "CANDIDATES_", "PIPELINE_"))}
    env.update(
        TV_RUN_DIR=str(run_dir),
        TV_RUN_ID=RUN_ID,
        TV_SCAN_DIR=str(host / "export" / RUN_ID),
        CANDIDATES_RAW=str(data / "portfolio_candidates_raw.json"),
        CANDIDATES_SELECTED=str(data / "portfolio_candidates.json"),
        SELECTION_AUDIT=str(data / "selection_audit.json"),
    )
    if profile:
        env["PIPELINE_PROFILE"] = profile
    return env


def script(host: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=host, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_host_is_small_deterministic_and_complete(base_host: Path, tmp_path: Path) -> None:
    lake = base_host / "data" / "lakehouse"
    files = sorted(lake.glob("*_1d.parquet"))
    assert len(files) == len(PIPELINE_SYMBOLS) == 30
    assert sum(f.stat().st_size for f in files) < 2 * 1024 * 1024
    import pandas as pd

    bars = pd.read_parquet(files[0])
    assert list(bars.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    assert len(bars) == PIPELINE_BARS and (bars["high"] >= bars["low"]).all()
    again = make_pipeline_host(tmp_path / "again")
    run_scans(again, RUN_ID)
    assert digest(lake) == digest(again / "data" / "lakehouse")
    assert digest(base_host / "export") == digest(again / "export")
    manifest = json.loads((base_host / "configs" / "manifest.json").read_text())
    assert "meta_ray_test" in manifest["profiles"] and (base_host / "scripts" / "legacy").is_dir()


def test_scans_carry_meta_scanner(base_host: Path) -> None:
    docs = [json.loads(p.read_text()) for p in sorted((base_host / "export" / RUN_ID).glob("*.json"))]
    scanners = {d["meta"]["scanner"] for d in docs}
    assert "scanners/crypto/ratings/binance_spot_rating_ma_long" in scanners
    for d in docs:
        assert d["meta"]["run_id"] == RUN_ID and d["data"], d["meta"]
        assert {"symbol", "close", "Value.Traded", "Recommend.MA", "Recommend.All"} <= set(d["data"][0])


@pytest.mark.parametrize(
    ("profile", "method"),
    [("binance_spot_rating_ma_long", "inverse_vol"), ("multi_venue_trend_long", "equal_risk")],
)
def test_full_chain_writes_only_the_run_folder(host: Path, tmp_path: Path, profile: str, method: str) -> None:
    run_dir = tmp_path / "run"
    env = run_env(host, run_dir, profile)
    before = digest(host)
    for args in (
        ["scripts/select_top_universe.py", "--mode", "selected"],
        ["scripts/prepare_portfolio_data.py"],
        ["scripts/optimize_portfolio.py"],
        ["scripts/generate_report.py"],
    ):
        done = script(host, env, *args)
        assert done.returncode == 0, (args, done.stderr)
    data = run_dir / "data"
    selected = json.loads((data / "portfolio_candidates.json").read_text())
    raw = json.loads((data / "portfolio_candidates_raw.json").read_text())
    assert selected and len(selected) <= len(raw)
    assert {
        "symbol",
        "atom_id",
        "physical_symbol",
        "identity",
        "logic",
        "direction",
        "alpha_score",
        "implementation_alternatives",
    } <= set(selected[0])
    audit = json.loads((data / "selection_audit.json").read_text())
    assert {"timestamp", "discovery", "merging", "final_selection"} <= set(audit)
    weights = json.loads((data / "portfolio_weights.json").read_text())
    assert weights["method"] == method and abs(sum(weights["weights"].values()) - 1.0) < 1e-6
    assert (run_dir / "reports" / "equity_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| atom | weight |" in (run_dir / "reports" / "portfolio_report.md").read_text()
    assert digest(host) == before  # a well-behaved step writes its run folder only


def test_multi_venue_selection_merges_venues(host: Path, tmp_path: Path) -> None:
    env = run_env(host, tmp_path / "run", "multi_venue_trend_long")
    assert script(host, env, "scripts/select_top_universe.py").returncode == 0
    raw = json.loads(Path(env["CANDIDATES_RAW"]).read_text())
    assert any(c["implementation_alternatives"] for c in raw)
    assert len({(c["identity"], c["logic"], c["direction"]) for c in raw}) == len(raw)


def test_selection_without_scanner_files_fails_naming_folder_and_patterns(host: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_scans"
    empty.mkdir()
    env = run_env(host, tmp_path / "run", "binance_spot_rating_ma_long")
    done = script(host, env, "scripts/select_top_universe.py", "--scan-dir", str(empty))
    assert done.returncode != 0
    assert str(empty) in done.stderr and "strategy_alpha_*.json" in done.stderr
    assert "binance_spot_rating_ma_long" in done.stderr
    assert not (tmp_path / "run").exists()
    env["TV_SCAN_DIR"] = str(empty)  # the same from the environment
    assert script(host, env, "scripts/select_top_universe.py").returncode != 0


def test_selection_needs_its_outputs_named(host: Path, tmp_path: Path) -> None:
    env = run_env(host, tmp_path / "run")
    del env["SELECTION_AUDIT"]
    done = script(host, env, "scripts/select_top_universe.py")
    assert done.returncode == 2 and "SELECTION_AUDIT is not set" in done.stderr


def test_legacy_scripts_write_the_shared_disk_as_written(host: Path, tmp_path: Path) -> None:
    env = run_env(host, tmp_path / "run")
    done = script(host, env, "scripts/legacy/detect_hedge_anchors.py")
    assert done.returncode == 0, done.stderr
    anchors = json.loads((host / "data" / "lakehouse" / "hedge_anchors.json").read_text())
    assert len(anchors["anchors"]) == 3
    done = script(host, env, "scripts/legacy/compute_sleeve_stats.py")
    assert done.returncode == 0, done.stderr
    assert (host / "reports" / "stats.json").is_file() and (
        host / "data" / "intermediate" / "stats.pkl"
    ).is_file()
