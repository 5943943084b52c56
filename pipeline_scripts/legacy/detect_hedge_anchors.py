"""LEGACY (kept as written for the shared disk): find the hedge anchors and store them in the lakehouse.

It writes data/lakehouse/hedge_anchors.json, which every sleeve used to read. In production the
lakehouse is read-only: under tv-sandbox this write is denied with an explanation.
"""

import glob
import json
import os

import pandas as pd

closes = {}
for path in sorted(glob.glob("data/lakehouse/BINANCE_*_1d.parquet")):
    closes[os.path.basename(path).split("_")[1]] = pd.read_parquet(path)["close"].pct_change()
frame = pd.DataFrame(closes).dropna()
corr = frame.corr()["BTCUSDT"].drop("BTCUSDT").sort_values()
anchors = {"anchors": list(corr.index[:3]), "correlation_to_btc": corr.head(3).round(4).to_dict()}
print("hedge anchors:", anchors["anchors"])
with open("data/lakehouse/hedge_anchors.json", "w") as fh:
    json.dump(anchors, fh, indent=1)
print("wrote data/lakehouse/hedge_anchors.json")
