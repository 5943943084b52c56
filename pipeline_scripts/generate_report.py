"""Report: weights + returns -> ``$TV_RUN_DIR/reports/portfolio_report.md`` and ``equity_curve.png``."""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display in a worker
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pipeline_common import fail, run_dir

SCRIPT = "generate_report"


def main() -> int:
    rd = run_dir(SCRIPT)
    weights_file = rd / "data" / "portfolio_weights.json"
    if not weights_file.is_file():
        fail(SCRIPT, f"no weights at {weights_file}: run optimize_portfolio.py first")
    doc = json.loads(weights_file.read_text())
    weights = pd.Series(doc["weights"], dtype=float)
    rets = pd.read_parquet(rd / "data" / "returns_matrix.parquet")[weights.index]
    daily = rets @ weights
    equity = (1.0 + daily).cumprod()
    ann_ret = float(daily.mean() * 365.0)
    ann_vol = float(daily.std() * np.sqrt(365.0))
    drawdown = float((equity / equity.cummax() - 1.0).min())
    reports = rd / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=80)
    ax.plot(pd.to_datetime(equity.index, unit="s"), equity.to_numpy(), lw=1.2)
    ax.set_title(f"{os.environ.get('PIPELINE_SLEEVE', 'portfolio')} ({doc['method']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(reports / "equity_curve.png")
    plt.close(fig)
    sleeve = os.environ.get("PIPELINE_SLEEVE", "-")
    lines = [
        f"# Portfolio report: {sleeve} (run {os.environ.get('TV_RUN_ID', '-')})",
        "",
        f"- method: {doc['method']}; atoms: {len(weights)}; days: {len(daily)}",
        f"- annualised return {ann_ret:.2%}, volatility {ann_vol:.2%}, max drawdown {drawdown:.2%}",
        "",
        "| atom | weight | vol |",
        "| --- | ---: | ---: |",
        *(
            f"| {k} | {w:.4f} | {doc['vol'][k]:.3f} |"
            for k, w in weights.sort_values(ascending=False).items()
        ),
        "",
        "![equity curve](equity_curve.png)",
    ]
    (reports / "portfolio_report.md").write_text("\n".join(lines) + "\n")
    print(f"{SCRIPT}: {reports / 'portfolio_report.md'}, {reports / 'equity_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
