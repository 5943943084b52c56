"""Host side, before a pipeline run: the scanners' outputs of one run id, from the lakehouse.

    python scripts/run_scans.py --run-id R1 [--scanner NAME ...] [--list]

Writes ``export/<RUN_ID>/<kind>_<export_symbol>_<YYYYmmdd-HHMMSS>.json`` (FORMATS.md: ``meta`` with
``meta.scanner`` naming the scanner, ``data`` the rows). The time stamp is the last bar's day, not
the clock: the same lakehouse gives the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SCANNERS: dict[str, dict[str, object]] = {
    "scanners/crypto/ratings/binance_spot_rating_ma_long": {
        "kind": "strategy_alpha",
        "export_symbol": "spot_rating_ma_long",
        "exchanges": ["BINANCE"],
        "direction": "LONG",
        "where": lambda r: r["Recommend.MA"] > 0.0,
    },
    "scanners/crypto/ratings/binance_spot_rating_all_short": {
        "kind": "strategy_alpha",
        "export_symbol": "spot_rating_all_short",
        "exchanges": ["BINANCE"],
        "direction": "SHORT",
        "where": lambda r: r["Recommend.All"] < 0.0,
    },
    "scanners/crypto/trend/multi_venue_trend_long": {
        "kind": "strategy_alpha",
        "export_symbol": "trend_long",
        "exchanges": ["BINANCE", "BYBIT"],
        "direction": "LONG",
        "where": lambda r: r["Perf.1M"] > 0.0,
    },
    "scanners/crypto/base/binance_universe": {
        "kind": "universe_foundation",
        "export_symbol": "binance_universe",
        "exchanges": ["BINANCE"],
        "direction": "LONG",
        "where": lambda r: True,
    },
}


def indicators(symbol: str, bars: pd.DataFrame) -> dict[str, float | str]:
    close = bars["close"].to_numpy()
    high, low, vol = bars["high"].to_numpy(), bars["low"].to_numpy(), bars["volume"].to_numpy()
    last = float(close[-1])
    votes = [np.sign(last - close[-n:].mean()) for n in (10, 20, 50, 100, 200)]
    rec_ma = float(np.mean(votes))
    delta = np.diff(close[-15:])
    gain, loss = delta[delta > 0].sum(), -delta[delta < 0].sum()
    rsi = 100.0 * gain / (gain + loss) if gain + loss else 50.0
    osc = float(np.clip((rsi - 50.0) / 25.0, -1.0, 1.0))
    rets = np.diff(np.log(close[-15:]))
    adx = float(100.0 * abs(rets.mean()) / (rets.std() + 1e-12))
    return {
        "symbol": symbol,
        "close": round(last, 6),
        "volume": round(float(vol[-1]), 3),
        "Value.Traded": round(float((close[-20:] * vol[-20:]).mean()), 2),
        "Recommend.MA": round(rec_ma, 4),
        "Recommend.All": round((rec_ma + osc) / 2.0, 4),
        "ADX": round(min(adx, 100.0), 3),
        "ATR": round(float((high[-14:] - low[-14:]).mean()), 6),
        "Perf.W": round(100.0 * (last / close[-6] - 1.0), 3),
        "Perf.1M": round(100.0 * (last / close[-22] - 1.0), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-id", required=False)
    p.add_argument("--root", default=".", help="the host's top folder (default: .)")
    p.add_argument("--scanner", action="append", help="only this scanner (repeatable)")
    p.add_argument("--list", action="store_true", help="list the scanners and exit")
    a = p.parse_args(argv)
    if a.list:
        print("\n".join(SCANNERS))
        return 0
    if not a.run_id:
        p.error("--run-id is required")
    unknown = sorted(set(a.scanner or ()) - set(SCANNERS))
    if unknown:
        print(f"run_scans: error: unknown scanner(s) {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    root = Path(a.root)
    lake = root / "data" / "lakehouse"
    files = sorted(lake.glob("*_1d.parquet"))
    if not files:
        print(f"run_scans: error: no *_1d.parquet bars in {lake}", file=sys.stderr)
        return 2
    bars = {}
    for f in files:
        exchange, _, rest = f.name.partition("_")
        bars[f"{exchange}:{rest[: -len('_1d.parquet')]}"] = pd.read_parquet(f)
    stamp = int(max(int(b["timestamp"].iloc[-1]) for b in bars.values()))
    when = time.strftime("%Y%m%d-%H%M%S", time.gmtime(stamp))
    out = root / "export" / a.run_id
    out.mkdir(parents=True, exist_ok=True)
    for name in a.scanner or SCANNERS:
        spec = SCANNERS[name]
        exchanges = list(spec["exchanges"])  # type: ignore[call-overload]
        where = spec["where"]
        rows = [indicators(s, b) for s, b in sorted(bars.items()) if s.split(":")[0] in exchanges]
        rows = [r for r in rows if where(r)]  # type: ignore[operator]
        rows.sort(key=lambda r: (-float(r["Value.Traded"]), str(r["symbol"])))
        meta = {
            "schema": "universe_selector_export",
            "schema_version": 1,
            "run_id": a.run_id,
            "scanner": name,
            "data_category": spec["kind"],
            "export_symbol": spec["export_symbol"],
            "direction": spec["direction"],
            "product": "CRYPTO",
            "exchanges": exchanges,
        }
        path = out / f"{spec['kind']}_{spec['export_symbol']}_{when}.json"
        path.write_text(json.dumps({"meta": meta, "data": rows}, indent=1) + "\n")
        print(f"{name}: {len(rows)} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
