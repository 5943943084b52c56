"""Data preparation: candidates + lakehouse bars -> the returns matrix of the sleeve.

Reads ``$CANDIDATES_SELECTED`` (else ``$CANDIDATES_RAW``) and each candidate's daily bars from
``data/lakehouse/`` (read-only), and writes ``$TV_RUN_DIR/data/returns_matrix.parquet`` (one column
per atom, daily simple returns, signed by direction) with pandas ``to_parquet``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
from pipeline_common import bars_file, fail, need_env, run_dir, settings

SCRIPT = "prepare_portfolio_data"


def main() -> int:
    out = run_dir(SCRIPT) / "data" / "returns_matrix.parquet"
    selected = Path(os.environ.get("CANDIDATES_SELECTED", ""))
    source = selected if selected.name and selected.is_file() else need_env(SCRIPT, "CANDIDATES_RAW")
    if not source.is_file():
        fail(SCRIPT, f"no candidates at {source}: run select_top_universe.py first")
    candidates = json.loads(source.read_text())
    lookback = int(settings(SCRIPT).get("data", {}).get("lookback_days", 500))
    columns = {}
    for c in candidates:
        path = bars_file(c["physical_symbol"])
        if not path.is_file():
            fail(SCRIPT, f"no bars for {c['physical_symbol']} at {path}")
        bars = pd.read_parquet(path).tail(lookback + 1)
        rets = bars.set_index("timestamp")["close"].pct_change().iloc[1:]
        columns[c["atom_id"]] = rets if c["direction"] == "LONG" else -rets
    if not columns:
        fail(SCRIPT, f"{source} holds no candidate")
    matrix = pd.DataFrame(columns).sort_index().fillna(0.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix.to_parquet(out)
    print(f"{SCRIPT}: {matrix.shape[1]} atoms x {matrix.shape[0]} days -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
