"""Make the sample pipeline's host: ``python pipeline_scripts/make_sample_host.py DIR [--scan RUN_ID]``.

A lakehouse of 30 symbols x 500 daily bars (parquet), ``configs/manifest.json`` and these scripts
under ``scripts/``; with ``--scan``, the scanner outputs of that run id under ``export/<RUN_ID>/``.
Deterministic and offline. The code is :mod:`sandbox.samples` (one copy for the CLI, demo and tests).
"""

from __future__ import annotations

import argparse
import sys

from sandbox.samples import make_pipeline_host, run_scans


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--scan", metavar="RUN_ID", action="append", default=[])
    a = p.parse_args(argv)
    host = make_pipeline_host(a.dir)
    print(f"sample host: {host}")
    for run_id in a.scan:
        for f in run_scans(host, run_id):
            print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
