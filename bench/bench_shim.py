"""What the explain shim (sandbox/native) costs: per exec (loading one more library) and per write
(a successful write-open in a watched folder records a line; elsewhere it is one comparison).

    .venv/bin/python bench/bench_shim.py [--execs 300] [--writes 20000]

Prints the median of 5 rounds of each, with and without LD_PRELOAD.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sandbox import native

WRITER = """
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
for i in range(n):
    fd = os.open(f"{d}/f{i % 64}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
print(time.perf_counter() - t)
"""


def _execs(n: int, env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(
        ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"], env=env, check=True
    )
    return (time.perf_counter() - t) / n


def _writes(n: int, env: dict[str, str], d: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", WRITER, d, str(n)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=300)
    ap.add_argument("--writes", type=int, default=20000)
    args = ap.parse_args()
    lib = native.shim_path()
    if lib is None:
        sys.exit(f"no shim: {native.unavailable_reason()}")
    with tempfile.TemporaryDirectory() as tmp:
        watched, other = os.path.join(tmp, "ws"), os.path.join(tmp, "other")
        os.makedirs(watched)
        os.makedirs(other)
        base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        shim = native.child_env(base, os.path.join(tmp, "raw.jsonl"), lib, watch=(watched,))
        rows = {
            "exec /bin/true": [(_execs(args.execs, base), _execs(args.execs, shim)) for _ in range(5)],
            "write-open, unwatched folder": [
                (_writes(args.writes, base, other), _writes(args.writes, shim, other)) for _ in range(5)
            ],
            "write-open, watched (recorded)": [
                (_writes(args.writes, base, watched), _writes(args.writes, shim, watched)) for _ in range(5)
            ],
        }
    print(f"{'':34} {'without':>10} {'with shim':>10} {'cost':>10}")
    for name, pairs in rows.items():
        a = statistics.median(p[0] for p in pairs) * 1e6
        b = statistics.median(p[1] for p in pairs) * 1e6
        print(f"{name:34} {a:8.2f}us {b:8.2f}us {b - a:+8.2f}us")


if __name__ == "__main__":
    main()
