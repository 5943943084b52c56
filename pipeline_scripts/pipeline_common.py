"""Helpers shared by the sample pipeline's scripts: where things are, the sleeve's settings.

The scripts are ordinary pipeline code: they read the run environment a sandboxed run sets
(``TV_RUN_DIR``, ``TV_SCAN_DIR``, ``CANDIDATES_RAW``, ...), and fall back to the host's own
configuration when run by hand. Every failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

LAKEHOUSE = Path(os.environ.get("LAKEHOUSE_DIR", "data/lakehouse"))
MANIFEST = Path("configs/manifest.json")


def fail(script: str, message: str, code: int = 2) -> NoReturn:
    print(f"{script}: error: {message}", file=sys.stderr)
    sys.exit(code)


def need_env(script: str, name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        fail(script, f"{name} is not set: run this step with `tv-sandbox run` or set {name}")
    return Path(value)


def run_dir(script: str) -> Path:
    return need_env(script, "TV_RUN_DIR")


def settings(script: str) -> dict[str, Any]:
    """The atomic profile this sleeve runs: ``$PIPELINE_CONFIG`` (written by the orchestrator into
    the run folder), else ``configs/manifest.json`` at ``$PIPELINE_PROFILE``."""
    cfg = os.environ.get("PIPELINE_CONFIG")
    if cfg:
        data = json.loads(Path(cfg).read_text())
        return dict(data.get("settings", {}))
    name = os.environ.get("PIPELINE_PROFILE")
    if not name:
        return {}
    if not MANIFEST.is_file():
        fail(
            script, f"PIPELINE_PROFILE={name} but {MANIFEST} does not exist (run from the host's top folder)"
        )
    profiles = json.loads(MANIFEST.read_text()).get("profiles", {})
    if name not in profiles:
        fail(script, f"profile {name!r} is not in {MANIFEST} (known: {', '.join(sorted(profiles))})")
    return dict(profiles[name])


def bars_file(physical_symbol: str) -> Path:
    """``BINANCE:BTCUSDT`` -> ``data/lakehouse/BINANCE_BTCUSDT_1d.parquet``."""
    exchange, _, symbol = physical_symbol.partition(":")
    return LAKEHOUSE / f"{exchange}_{symbol}_1d.parquet"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
