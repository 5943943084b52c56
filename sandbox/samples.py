"""A small but realistic host tree in the seed's layout, for the demo, the docs and the tests.

It is what a user's shared disk looks like: a lakehouse of daily bars, the scanner exports of one
run, legacy scripts and configs. Stdlib only (the parquet-free bars are CSV; a ``.parquet`` file is
written only when pyarrow is importable).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sandbox.policy import Layout

#: Where ``tv-sandbox demo`` makes its sample host in the temp dir: a name no sweep looks at (a
#: workspace is ``tv-sandbox-<ID>-<seal>``, and only a proven one is ever removed).
DEMO_PREFIX = "tvsb-demo-host-"

SYMBOLS = ("BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT")

LEGACY_SCRIPT = '''\
"""A legacy pipeline step, written for one shared disk: relative outputs, pickle, logging, glob."""
import glob, json, logging, os, pickle

os.makedirs("reports", exist_ok=True)
os.makedirs("data/intermediate", exist_ok=True)
logging.basicConfig(filename="reports/step.log", level=logging.INFO, force=True)
log = logging.getLogger("legacy")

bars = {}
for path in sorted(glob.glob("data/lakehouse/*_1d.csv")):
    with open(path) as fh:
        rows = [line.strip().split(",") for line in fh.readlines()[1:]]
    bars[os.path.basename(path)] = [float(r[4]) for r in rows]
    log.info("read %s (%d bars)", path, len(rows))

with open("data/intermediate/returns.pkl", "wb") as fh:
    pickle.dump({k: [b / a - 1 for a, b in zip(v, v[1:])] for k, v in bars.items()}, fh)
with open("data/intermediate/returns.pkl", "rb") as fh:
    returns = pickle.load(fh)
with open("reports/summary.json", "w") as fh:
    json.dump({k: round(sum(v), 6) for k, v in returns.items()}, fh, indent=1)
print("outputs:", sorted(glob.glob("reports/*")), sorted(os.listdir("data/intermediate")))
'''

BUGGY_SCRIPT = '''\
"""The seed's bug: the selection audit hard-coded into the lakehouse."""
import json
with open("data/lakehouse/selection_audit.json", "w") as fh:
    json.dump({"final_selection": {"mode": "raw", "count": 3}}, fh)
print("selection audit written")
'''


def make_host(root: str | os.PathLike[str], *, run_id: str = "R1", layout: Layout | None = None) -> Path:
    """Write a sample host tree under ``root`` and return its path."""
    lay = layout or Layout()
    host = Path(root)
    lake = host / lay.lakehouse
    scans = host / lay.exports / run_id
    for d in (lake, scans, host / lay.runs, host / "scripts", host / "configs"):
        d.mkdir(parents=True, exist_ok=True)
    for n, sym in enumerate(SYMBOLS):
        exch, pair = sym.split(":")
        lines = ["timestamp,open,high,low,close,volume"]
        price = 100.0 * (n + 1)
        for day in range(30):
            price *= 1.0 + ((day * 7 + n) % 11 - 5) / 500
            lines.append(
                f"{1767225600 + day * 86400},{price:.4f},{price * 1.01:.4f},"
                f"{price * 0.99:.4f},{price:.4f},{1000 + day}"
            )
        (lake / f"{exch}_{pair}_1d.csv").write_text("\n".join(lines) + "\n")
    _maybe_parquet(lake / "BINANCE_BTCUSDT_1d.parquet")
    rows = [
        {
            "symbol": s,
            "close": 100.0 * (i + 1),
            "volume": 1e4,
            "Value.Traded": 1e9 / (i + 1),
            "Recommend.MA": 0.8 - i / 10,
            "Recommend.All": 0.5,
        }
        for i, s in enumerate(SYMBOLS)
    ]
    meta = {
        "schema": "universe_selector_export",
        "schema_version": 1,
        "run_id": run_id,
        "data_category": "strategy_alpha",
        "export_symbol": "spot_rating_ma_long",
        "direction": "LONG",
        "product": "CRYPTO",
        "exchanges": ["BINANCE"],
    }
    (scans / "strategy_alpha_spot_rating_ma_long_20260101-120000.json").write_text(
        json.dumps({"meta": meta, "data": rows}, indent=1)
    )
    (host / "scripts" / "legacy_step.py").write_text(LEGACY_SCRIPT)
    (host / "scripts" / "buggy_selection.py").write_text(BUGGY_SCRIPT)
    (host / "configs" / "manifest.json").write_text(
        json.dumps(
            {"profiles": {"binance_spot_rating_ma_long": {"selection": {"top_n": 15, "threshold": 0.45}}}},
            indent=1,
        )
    )
    return host


def _maybe_parquet(path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table = pa.table(
        {
            "timestamp": [1767225600 + d * 86400 for d in range(5)],
            "close": [97000.0 + d for d in range(5)],
        }
    )
    pq.write_table(table, path)
