"""LEGACY (kept as written for the shared disk): statistics of the lakehouse, relative paths only.

Writes data/intermediate/stats.pkl and reports/stats.json relative to the current folder and reads
them back. Under tv-sandbox both land in the run folder ($TV_RUN_DIR) and are exported with it.
"""

import glob
import json
import os
import pickle

import pandas as pd

os.makedirs("data/intermediate", exist_ok=True)
os.makedirs("reports", exist_ok=True)
stats = {}
for path in sorted(glob.glob("data/lakehouse/*_1d.parquet")):
    close = pd.read_parquet(path)["close"]
    rets = close.pct_change().dropna()
    stats[os.path.basename(path)] = {
        "last": float(close.iloc[-1]),
        "vol": float(rets.std()),
        "n": len(close),
    }
with open("data/intermediate/stats.pkl", "wb") as fh:
    pickle.dump(stats, fh)
with open("data/intermediate/stats.pkl", "rb") as fh:
    again = pickle.load(fh)
with open("reports/stats.json", "w") as fh:
    json.dump({k: round(v["vol"], 6) for k, v in again.items()}, fh, indent=1)
print(f"stats of {len(again)} series -> reports/stats.json, data/intermediate/stats.pkl")
