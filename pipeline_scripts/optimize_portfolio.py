"""Optimisation: the returns matrix -> weights (inverse volatility, or equal risk contribution).

    python scripts/optimize_portfolio.py [--method inverse_vol|equal_risk]

Writes ``$TV_RUN_DIR/data/portfolio_weights.json``: ``{"method", "weights": {atom: w}, "vol": {...}}``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from pipeline_common import fail, run_dir, settings, write_json

SCRIPT = "optimize_portfolio"


def equal_risk(cov: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Equal risk contribution by the fixed point w_i ~ 1 / (Sigma w)_i (converges for a PD cov)."""
    n = cov.shape[0]
    w = np.full(n, 1.0 / n)
    for _ in range(iterations):
        marginal = cov @ w
        new = 1.0 / np.maximum(marginal, 1e-18)
        new /= new.sum()
        if np.abs(new - w).max() < 1e-10:
            return new
        w = 0.5 * w + 0.5 * new
    return w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("inverse_vol", "equal_risk"))
    a = p.parse_args(argv)
    method = a.method or settings(SCRIPT).get("optimisation", {}).get("method", "inverse_vol")
    base = run_dir(SCRIPT) / "data"
    src = base / "returns_matrix.parquet"
    if not src.is_file():
        fail(SCRIPT, f"no returns matrix at {src}: run prepare_portfolio_data.py first")
    rets = pd.read_parquet(src)
    vol = rets.std() * np.sqrt(365.0)
    if method == "inverse_vol":
        raw = 1.0 / vol.clip(lower=1e-9)
        weights = raw / raw.sum()
    else:
        cov = rets.cov().to_numpy() * 365.0 + np.eye(rets.shape[1]) * 1e-9
        weights = pd.Series(equal_risk(cov), index=rets.columns)
    write_json(
        base / "portfolio_weights.json",
        {
            "method": method,
            "weights": {k: round(float(v), 8) for k, v in weights.items()},
            "vol": {k: round(float(v), 8) for k, v in vol.items()},
        },
    )
    print(f"{SCRIPT}: {method} over {len(weights)} atoms, max weight {weights.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
