"""The manifest of profiles and the scan preflight: pure checks, no Ray. Every bad input is one
line naming the file, the key and what is wrong."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import PreflightError
from sandbox.orchestrator.manifest import ManifestError, check_scans, load_manifest, parse_manifest
from sandbox.samples import pipeline_scripts_dir

SAMPLE = json.loads((pipeline_scripts_dir() / "configs" / "manifest.json").read_text())


def write(tmp_path: Path, data: Any) -> Path:
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def test_sample_manifest_resolves() -> None:
    m = parse_manifest(SAMPLE, "sample")
    meta = m.resolve("meta_ray_test")
    (sleeve,) = meta.sleeves
    assert sleeve.id == "binance_spot_rating_ma_long"
    assert [s.name for s in sleeve.steps] == ["select", "prepare", "optimize", "report"]
    assert sleeve.steps[0].run[0] == sys.executable  # a bare `python`: the pipeline's interpreter
    assert isinstance(sleeve.steps[3].run, str)  # a shell string stays a string
    assert sleeve.scanners == ("scanners/crypto/ratings/binance_spot_rating_ma_long",)
    multi = m.resolve("meta_crypto_multi", python="/opt/py/bin/python3")
    assert len(multi.sleeves) >= 3
    legacy = {s.id: s for s in multi.sleeves}["legacy_hedge"]
    assert [s.name for s in legacy.steps] == ["anchors"] and legacy.steps[0].run[0] == "/opt/py/bin/python3"
    assert m.meta_profiles() == ["meta_crypto_multi", "meta_ray_test"]


def test_absolute_interpreter_is_kept() -> None:
    data = copy.deepcopy(SAMPLE)
    data["profiles"]["legacy_stats"]["steps"][0]["run"] = ["/usr/bin/python3", "x.py"]
    meta = parse_manifest(data, "m").resolve("meta_crypto_multi")
    assert {s.id: s for s in meta.sleeves}["legacy_stats"].steps[0].run == ("/usr/bin/python3", "x.py")


def _bad(mutate: Any) -> dict[str, Any]:
    data = copy.deepcopy(SAMPLE)
    mutate(data)
    return data


BAD = [
    ("[1, 2]", "", "top level must be an object"),
    ('{"profiles": ', "", "not valid JSON"),
    (_bad(lambda d: d.pop("profiles")), "profiles", "missing or empty"),
    (
        _bad(lambda d: d["profiles"]["meta_ray_test"].update(sleeves=[])),
        "profiles.meta_ray_test.sleeves",
        "non-empty list",
    ),
    (
        _bad(lambda d: d["profiles"]["meta_ray_test"]["sleeves"][0].update(profile="nope")),
        "profiles.meta_ray_test.sleeves[0].profile",
        "no profile 'nope'",
    ),
    (
        _bad(lambda d: d["profiles"]["meta_ray_test"]["sleeves"][0].update(profile="meta_crypto_multi")),
        "profiles.meta_ray_test.sleeves[0].profile",
        "is a meta profile",
    ),
    (
        _bad(lambda d: d["profiles"]["meta_ray_test"]["sleeves"][0].update(id="a/b")),
        "profiles.meta_ray_test.sleeves[0].id",
        "letters, digits",
    ),
    (
        _bad(lambda d: d["profiles"]["meta_crypto_multi"]["sleeves"][1].update(id="ma_long")),
        "profiles.meta_crypto_multi.sleeves[1].id",
        "used twice",
    ),
    (
        _bad(lambda d: d["profiles"]["meta_ray_test"]["sleeves"][0].update(profle="x")),
        "profiles.meta_ray_test.sleeves[0].profle",
        "unknown key",
    ),
    (
        _bad(lambda d: d["defaults"]["steps"][0].update(run=[])),
        "defaults.steps[0].run",
        "non-empty argv list",
    ),
    (
        _bad(lambda d: d["defaults"]["steps"][1].update(timeout_s=-1)),
        "defaults.steps[1].timeout_s",
        "positive number",
    ),
    (
        _bad(lambda d: d["defaults"]["steps"][1].update(timeout_s=True)),
        "defaults.steps[1].timeout_s",
        "positive number",
    ),
    (
        _bad(lambda d: d["defaults"]["steps"][0].update(env={"TV_RUN_DIR": "/tmp"})),
        "defaults.steps[0].env.TV_RUN_DIR",
        "cannot override the run's variables",
    ),
    (
        _bad(lambda d: d["defaults"]["steps"][0].update(env={"SELECTION_AUDIT": "/x"})),
        "defaults.steps[0].env.SELECTION_AUDIT",
        "cannot override",
    ),
    (
        _bad(lambda d: d["defaults"]["steps"][0].update(env={"A": 1})),
        "defaults.steps[0].env",
        "string names to string values",
    ),
    (_bad(lambda d: d["defaults"]["steps"][0].update(timeout=3)), "defaults.steps[0].timeout", "unknown key"),
    (_bad(lambda d: d["defaults"]["steps"][1].update(name="select")), "defaults.steps[1].name", "used twice"),
    (
        _bad(lambda d: d["profiles"]["legacy_hedge"].update(steps="python x.py")),
        "profiles.legacy_hedge.steps",
        "non-empty list",
    ),
    (
        _bad(lambda d: d["profiles"]["legacy_hedge"]["discovery"]["strategies"]["base"].update(scanners="s")),
        "profiles.legacy_hedge.discovery.strategies.base.scanners",
        "list of scanner names",
    ),
    # the review's internal errors (KeyError, ValueError, IndexError in the scan preflight)
    (_bad(lambda d: d["defaults"].update(scan_command="scan {x}")), "defaults.scan_command", "only {run_id}"),
    (_bad(lambda d: d["defaults"].update(scan_command="scan {0}")), "defaults.scan_command", "only {run_id}"),
    (
        _bad(lambda d: d["defaults"].update(scan_command="scan {run_id.__class__}")),
        "defaults.scan_command",
        "only {run_id}",
    ),
    (_bad(lambda d: d["defaults"].update(scan_command="scan {")), "defaults.scan_command", "not a format"),
]


def test_a_manifest_nested_past_the_recursion_limit_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json: an internal error before
    with pytest.raises(ManifestError, match="nested too deeply"):
        load_manifest(path)


@pytest.mark.parametrize(("data", "key", "problem"), BAD)
def test_bad_manifest_is_one_line_naming_file_and_key(
    tmp_path: Path, data: Any, key: str, problem: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and problem in msg
    assert err.value.key == key
    assert isinstance(err.value, PreflightError)  # the CLI's status for an error before dispatch


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file: pass --manifest"):
        load_manifest(tmp_path / "none.json")


def test_unknown_or_atomic_meta_profile(tmp_path: Path) -> None:
    m = parse_manifest(SAMPLE, "sample")
    with pytest.raises(
        ManifestError, match="no such profile; meta profiles here: meta_crypto_multi, meta_ray_test"
    ):
        m.resolve("meta_nope")
    with pytest.raises(ManifestError, match="is an atomic profile"):
        m.resolve("legacy_hedge")


def test_profile_without_steps_and_no_defaults() -> None:
    data = copy.deepcopy(SAMPLE)
    del data["defaults"]["steps"]
    m = parse_manifest(data, "m")
    with pytest.raises(ManifestError, match=r"has no 'steps' and the manifest has no 'defaults\.steps'"):
        m.resolve("meta_ray_test")


def _scan(dir_: Path, name: str, scanner: str | None, bare: bool = False) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    doc: Any = [{"symbol": "X"}] if bare else {"meta": {"scanner": scanner} if scanner else {}, "data": []}
    (dir_ / name).write_text(json.dumps(doc))


def test_scan_preflight(tmp_path: Path) -> None:
    m = parse_manifest(SAMPLE, "sample")
    meta = m.resolve("meta_crypto_multi")
    scans = tmp_path / "export" / "R1"
    with pytest.raises(PreflightError) as err:
        check_scans(meta, str(scans), "R1", m.scan_command)
    msg = str(err.value)
    assert "\n" not in msg and "which does not exist" in msg
    assert "scanners/crypto/base/binance_universe for sleeves legacy_stats, legacy_hedge" in msg
    assert "python scripts/run_scans.py --run-id R1 --scanner scanners/crypto/base/binance_universe" in msg
    # the file-name convention is informative: only meta.scanner counts; bare lists and broken files don't
    _scan(scans, "strategy_alpha_whatever.json", "scanners/crypto/ratings/binance_spot_rating_ma_long")
    _scan(scans / "sub", "anything.json", "scanners/crypto/ratings/binance_spot_rating_all_short")
    _scan(scans, "strategy_alpha_trend_long_1.json", None, bare=True)
    (scans / "universe_foundation_binance_universe_1.json").write_text("{broken")
    with pytest.raises(PreflightError) as err:
        check_scans(meta, str(scans), "R1", m.scan_command)
    msg = str(err.value)
    assert "binance_spot_rating_ma_long for" not in msg and "binance_spot_rating_all_short for" not in msg
    assert "scanners/crypto/trend/multi_venue_trend_long for sleeve trend_long" in msg
    _scan(scans, "a.json", "scanners/crypto/trend/multi_venue_trend_long")
    _scan(scans, "b.json", "scanners/crypto/base/binance_universe")
    check_scans(meta, str(scans), "R1", m.scan_command)  # complete: no error
