"""Python guard overhead, guarded / bare, measured side by side in one process.

1. A 20,000 small-file write loop (open 'w', write 64 bytes, close): into the run folder, and to a
   relative folder the guard redirects into the run folder (bare: the same files written straight
   to the run folder, which is what a script rewritten for the standard would do), with the run's
   event log attached as in a step (each redirect is a line of it). Goal <= 1.05.
2. A read/stat loop over lakehouse files through the workspace mount and over redirected files
   (bare: the same files at their real place). Goal <= 1.10.

Usage: python bench/bench_guard.py [--files 20000] [--rounds 5] [--dir DIR]

``--dir`` picks the filesystem (default: the system temp dir). On a shared virtual disk, dirty-page
writeback throttling moves a 20,000-file loop by tens of percent from round to round (the I/O
pressure, ``/proc/pressure/io``, is printed with the results); ``--dir /dev/shm`` (tmpfs) is the
steady, pessimistic case: the cheapest write there is, so the guard's fixed cost per call weighs
most.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, line, median

from sandbox import workspace
from sandbox.events import EventLog
from sandbox.guard import guarded
from sandbox.loader import load_policy
from sandbox.samples import make_host

PAYLOAD = "x" * 64


def write_loop(folder: str, n: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        with open(f"{folder}/f{i}.txt", "w") as fh:
            fh.write(PAYLOAD)


def read_loop(paths: list[str], reps: int) -> None:
    for _ in range(reps):
        for p in paths:
            os.stat(p)
            os.path.exists(p)
            with open(p) as fh:
                fh.read()


def _io_pressure() -> str:
    try:
        with open("/proc/pressure/io") as fh:
            return "I/O pressure " + fh.readline().split(" ", 1)[1].strip()
    except OSError:
        return "I/O pressure unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    args = ap.parse_args()
    n = args.files
    tmp = Path(tempfile.mkdtemp(prefix="tvs-bench-", dir=args.dir))
    try:
        host = make_host(tmp / "host")
        spec = load_policy(profile="production")
        ws = workspace.create(host, "BENCH", spec.layout, base_dir=tmp)
        policy = ws.bind(spec)
        # as in a step: every redirect (and denial) is a line of the run's event log
        events = EventLog(os.path.join(ws.run_storage, "logs", "sandbox_events.jsonl"))
        os.chdir(ws.root)
        run = ws.run_dir

        def bare_run(r: int) -> None:
            write_loop(f"{run}/data/bare{r}", n)

        def guarded_run(r: int) -> None:
            with guarded(policy, events=events):
                write_loop(f"{run}/data/guarded{r}", n)

        def bare_redirect(r: int) -> None:
            write_loop(f"{run}/outputs_bare{r}", n)

        def guarded_redirect(r: int) -> None:
            with guarded(policy, events=events):
                write_loop(f"outputs{r}", n)  # relative: redirected into the run folder

        w = interleaved(
            args.rounds,
            bare=bare_run,
            guarded=guarded_run,
            bare_redirect=bare_redirect,
            guarded_redirect=guarded_redirect,
        )
        r_run = median(w["guarded"]) / median(w["bare"])
        r_red = median(w["guarded_redirect"]) / median(w["bare_redirect"])

        lake = sorted(f"data/lakehouse/{p}" for p in os.listdir("data/lakehouse") if p.endswith(".csv"))
        red = [f"outputs0/f{i}.txt" for i in range(200)]
        red_real = [f"{run}/outputs0/f{i}.txt" for i in range(200)]
        lake_real = [os.path.join(ws.mount_targets["lakehouse"], os.path.basename(p)) for p in lake]
        reps = 200

        def bare_read(r: int) -> None:
            read_loop(lake_real, reps)
            read_loop(red_real, reps // 20)

        def guarded_read(r: int) -> None:
            with guarded(policy, events=events):
                read_loop(lake, reps)
                read_loop(red, reps // 20)

        rd = interleaved(args.rounds * 2, bare=bare_read, guarded=guarded_read)
        r_read = median(rd["guarded"]) / median(rd["bare"])
        per_file = median(w["bare"]) / n * 1e6
        print(
            f"# python {sys.version.split()[0]}, {n} files x {args.rounds} rounds in {tmp.parent}, "
            f"bare write {per_file:.1f} us/file; {_io_pressure()}"
        )
        events.close()
        print(line("write loop into $TV_RUN_DIR, guarded / bare", r_run, "<= 1.05", r_run <= 1.05))
        print(
            line("write loop, relative (redirected) / bare to $TV_RUN_DIR", r_red, "<= 1.05", r_red <= 1.05)
        )
        print(
            line(
                "read/stat loop, mounts + redirected files, guarded / bare", r_read, "<= 1.10", r_read <= 1.10
            )
        )
        return 0
    finally:
        os.chdir("/")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
