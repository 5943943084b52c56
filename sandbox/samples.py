"""Sample host trees in the seed's layout, for the demo, the docs and the tests.

:func:`make_host` is the small one of the single-step showcases: a lakehouse of daily bars as CSV,
the scanner exports of one run, legacy scripts and configs (stdlib only; a ``.parquet`` file is
written only when pyarrow is importable).

:func:`make_pipeline_host` is the pipeline's (``tv-sandbox pipeline``, ``tv-sandbox demo``): a
lakehouse of 30 symbols x 500 daily bars as parquet, ``configs/manifest.json`` and the scripts of
``pipeline_scripts/`` under ``scripts/``; :func:`run_scans` then writes a run's scanner outputs
into ``export/<RUN_ID>/`` as the host does before dispatching the sleeves. Both need pandas and
pyarrow (``pip install 'tv-sandbox[pipeline]'``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
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


def tree_digest(root: Path) -> str:
    """sha256 of a tree: every entry's name, mode and mtime, and every regular file's bytes --
    what the demos print before and after to show the lakehouse untouched."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)}:{st.st_mode}:{st.st_mtime_ns}".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


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


#: The pipeline's lakehouse: 24 Binance spot pairs and 6 Bybit perpetuals (30 series).
_BINANCE = "BTC ETH SOL BNB XRP ADA DOGE AVAX DOT LINK POL LTC TRX ATOM UNI XLM ETC FIL APT ARB OP NEAR INJ SUI"  # noqa: E501
PIPELINE_SYMBOLS = tuple(
    [f"BINANCE:{b}USDT" for b in _BINANCE.split()]
    + [f"BYBIT:{b}USDT.P" for b in ("BTC", "ETH", "SOL", "XRP", "DOGE", "LINK")]
)
PIPELINE_BARS = 500
_LAST_DAY = 1795737600  # 2026-11-27 00:00 UTC: fixed, so the same host comes out every time


class SampleError(RuntimeError):
    """The sample pipeline cannot be built here (a missing extra, a missing scripts folder)."""


def pipeline_scripts_dir() -> Path:
    """``pipeline_scripts/``: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "pipeline_scripts", here / "pipeline_scripts"):
        if (cand / "configs" / "manifest.json").is_file():
            return cand
    raise SampleError(f"pipeline_scripts/ not found beside {here}: reinstall tv-sandbox from its checkout")


def _bars(symbol: str, n: int) -> dict[str, list[float] | list[int]]:
    try:
        import numpy as np
    except ImportError:
        raise SampleError(
            "the sample pipeline needs numpy, pandas and pyarrow: pip install 'tv-sandbox[pipeline]'"
        ) from None
    seed = zlib.crc32(symbol.encode())
    rng = np.random.default_rng(seed)
    drift = (seed % 41 - 20) / 40000.0  # each series its own trend, some down
    vol = 0.02 + (seed % 17) / 600.0
    rets = rng.normal(drift, vol, n)
    start = 10.0 ** (1 + seed % 4)
    close = start * np.exp(np.cumsum(rets))
    open_ = np.concatenate([[start], close[:-1]])
    wick = np.abs(rng.normal(0.0, vol / 2, n))
    volume = np.round(1e6 / np.sqrt(start) * rng.lognormal(0.0, 0.3, n), 3)
    return {
        "timestamp": [_LAST_DAY - (n - 1 - d) * 86400 for d in range(n)],
        "open": np.round(open_, 8).tolist(),
        "high": np.round(np.maximum(open_, close) * (1 + wick), 8).tolist(),
        "low": np.round(np.minimum(open_, close) * (1 - wick), 8).tolist(),
        "close": np.round(close, 8).tolist(),
        "volume": volume.tolist(),
    }


def make_pipeline_host(
    root: str | os.PathLike[str], *, layout: Layout | None = None, bars: int = PIPELINE_BARS
) -> Path:
    """Write the pipeline's sample host under ``root`` (created) and return its path.

    ``root/data/lakehouse/<EXCHANGE>_<SYMBOL>_1d.parquet`` (30 x ``bars`` daily bars, deterministic),
    ``root/configs/manifest.json``, ``root/scripts/`` (the scripts of ``pipeline_scripts/``) and
    empty ``export/`` and runs folders. No scans: see :func:`run_scans`.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SampleError(
            "the sample pipeline needs pandas and pyarrow: pip install 'tv-sandbox[pipeline]'"
        ) from None
    lay = layout or Layout()
    src = pipeline_scripts_dir()
    host = Path(root)
    lake = host / lay.lakehouse
    for d in (lake, host / lay.exports, host / lay.runs, host / "configs"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        src,
        host / "scripts",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "configs", "*.pyc"),
    )
    shutil.copyfile(src / "configs" / "manifest.json", host / "configs" / "manifest.json")
    for sym in PIPELINE_SYMBOLS:
        exchange, pair = sym.split(":")
        pq.write_table(pa.table(_bars(sym, bars)), lake / f"{exchange}_{pair}_1d.parquet", compression="zstd")
    return host


def run_scans(host: str | os.PathLike[str], run_id: str, *, scanners: tuple[str, ...] = ()) -> list[Path]:
    """Run ``scripts/run_scans.py`` on the host (as the host does before a pipeline run) and return
    the files it wrote under ``export/<run_id>/``. Raises :class:`SampleError` with its stderr."""
    argv = [sys.executable, "scripts/run_scans.py", "--run-id", run_id]
    for s in scanners:
        argv += ["--scanner", s]
    done = subprocess.run(argv, cwd=host, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SampleError(f"run_scans.py failed (exit {done.returncode}): {done.stderr.strip()}")
    return sorted((Path(host) / "export" / run_id).glob("*.json"))
