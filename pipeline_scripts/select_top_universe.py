"""Universe selection: scanner outputs of this run -> candidates (one per identity, logic, direction).

    python scripts/select_top_universe.py [--mode raw|selected] [--scan-dir DIR] [--top-n N]

Reads the scanner files of ``--scan-dir`` (default ``$TV_SCAN_DIR``: ``export/<RUN_ID>``, read-only),
keeps the files of the scanners the profile names (``discovery.strategies.*.scanners``), merges the
venues of one identity by ``Value.Traded`` and writes ``$CANDIDATES_RAW`` (every candidate above the
threshold) and, in ``selected`` mode, ``$CANDIDATES_SELECTED`` (the top N by alpha score), with the
audit in ``$SELECTION_AUDIT``. No matching scanner file is an error naming the folder and the
patterns -- never an empty universe with exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipeline_common import fail, need_env, settings, write_json

SCRIPT = "select_top_universe"
KINDS = ("universe_selector", "strategy_selector", "strategy_alpha", "universe_foundation")
QUOTES = ("USDT", "USDC", "USD", "BUSD")


def identity(symbol: str) -> str:
    """``BINANCE:BTCUSDT`` / ``BYBIT:BTCUSDT.P`` -> ``BTC``."""
    ticker = symbol.partition(":")[2].split(".")[0]
    for q in QUOTES:
        if ticker.endswith(q) and len(ticker) > len(q):
            return ticker[: -len(q)]
    return ticker


def wanted_scanners(cfg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for strategy in cfg.get("discovery", {}).get("strategies", {}).values():
        out.extend(strategy.get("scanners", []))
    return out


def scanner_files(
    scan_dir: Path, scanners: list[str]
) -> tuple[list[tuple[dict[str, Any], list[Any]]], list[str]]:
    patterns = [f"{k}_*.json" for k in KINDS]
    found: list[tuple[dict[str, Any], list[Any]]] = []
    for pattern in patterns:
        for path in sorted(scan_dir.glob(pattern)):
            doc = json.loads(path.read_text())
            meta, rows = (doc.get("meta", {}), doc.get("data", [])) if isinstance(doc, dict) else ({}, doc)
            if scanners and meta.get("scanner") not in scanners:
                continue
            meta = {**meta, "_file": path.name}
            found.append((meta, rows))
    return found, patterns


def logic_of(meta: dict[str, Any]) -> str:
    name = str(meta.get("export_symbol", "scan"))
    for prefix in ("spot_", "perp_"):
        name = name.removeprefix(prefix)
    for suffix in ("_long", "_short"):
        name = name.removesuffix(suffix)
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("raw", "selected"), default="raw")
    p.add_argument("--scan-dir", default=os.environ.get("TV_SCAN_DIR"))
    p.add_argument("--top-n", type=int)
    p.add_argument("--threshold", type=float)
    a = p.parse_args(argv)
    cfg = settings(SCRIPT)
    sel = cfg.get("selection", {})
    top_n = a.top_n if a.top_n is not None else int(sel.get("top_n", 15))
    threshold = a.threshold if a.threshold is not None else float(sel.get("threshold", 0.0))
    if not a.scan_dir:
        fail(SCRIPT, "no scanner folder: pass --scan-dir or set TV_SCAN_DIR (export/<RUN_ID>)")
    scan_dir = Path(a.scan_dir)
    if not scan_dir.is_dir():
        fail(SCRIPT, f"scanner folder {scan_dir} does not exist: run the scans of this run id first")
    raw_out = need_env(SCRIPT, "CANDIDATES_RAW")
    audit_out = need_env(SCRIPT, "SELECTION_AUDIT")
    scanners = wanted_scanners(cfg)
    files, patterns = scanner_files(scan_dir, scanners)
    if not files:
        which = f" written by {', '.join(scanners)}" if scanners else ""
        fail(SCRIPT, f"no scanner file in {scan_dir} matches {', '.join(patterns)}{which}", 3)

    atoms: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    symbols = 0
    for meta, rows in files:
        direction = str(meta.get("direction", "LONG"))
        logic = logic_of(meta)
        for row in rows:
            symbols += 1
            score = float(
                row.get("Recommend.MA", 0.0) if direction == "LONG" else -row.get("Recommend.All", 0.0)
            )
            cand = {
                "symbol": row["symbol"],
                "physical_symbol": row["symbol"],
                "market": str(meta.get("data_category", "strategy_alpha")).upper(),
                "asset_class": str(meta.get("product", "CRYPTO")),
                "identity": identity(row["symbol"]),
                "value_traded": float(row.get("Value.Traded", 0.0)),
                "recommend_ma": float(row.get("Recommend.MA", 0.0)),
                "logic": logic,
                "direction": direction,
                "alpha_score": round(score, 4),
            }
            atoms.setdefault((cand["identity"], logic, direction), []).append(cand)
    candidates: list[dict[str, Any]] = []
    merged = 0
    for (ident, logic, direction), venues in sorted(atoms.items()):
        venues.sort(key=lambda c: (-c["value_traded"], c["symbol"]))
        best = dict(venues[0])
        merged += len(venues) - 1
        best["atom_id"] = f"{ident}_{logic}_{direction}"
        best["implementation_alternatives"] = [v["symbol"] for v in venues[1:]]
        if best["alpha_score"] >= threshold:
            candidates.append(best)
    candidates.sort(key=lambda c: (-c["alpha_score"], -c["value_traded"], c["atom_id"]))
    write_json(raw_out, candidates)
    final = candidates
    if a.mode == "selected":
        final = candidates[:top_n]
        write_json(need_env(SCRIPT, "CANDIDATES_SELECTED"), final)
    by_class: dict[str, int] = {}
    for c in final:
        by_class[c["asset_class"]] = by_class.get(c["asset_class"], 0) + 1
    write_json(
        audit_out,
        {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "discovery": {
                "scan_dir": str(scan_dir),
                "files_scanned": [m["_file"] for m, _ in files],
                "symbols_found": symbols,
            },
            "merging": {"unique_atoms": len(atoms), "venues_merged": merged},
            "final_selection": {
                "mode": a.mode,
                "count": len(final),
                "threshold": threshold,
                "top_n": top_n,
                "by_asset_class": by_class,
            },
        },
    )
    print(
        f"{SCRIPT}: {len(files)} scanner file(s), {symbols} rows, {len(atoms)} atoms -> {len(final)} {a.mode}"
    )
    if not final:
        fail(SCRIPT, f"no candidate above threshold {threshold} in {scan_dir}: nothing to trade", 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
