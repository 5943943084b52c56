"""Run every benchmark in turn (what `make bench` does); results go to docs/benchmarks.md by hand."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

for script in ("bench_guard.py", "bench_step_io.py", "bench_start.py", "bench_pipeline.py"):
    print(f"\n== {script}", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, script), *sys.argv[1:]], check=False)
