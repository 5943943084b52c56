"""The pipeline's costs, each side by side with what it replaces, in one run (ratios printed).

    python bench/bench_pipeline.py [--only workspace,export,sleeves] [--dir DIR] [--rounds N]

1. workspace: opening a run (workspace + bound policy) over a 1 GiB / 10,000-file lakehouse, vs
   copying that lakehouse (what a per-worker copy costs); and over a 10-file lakehouse (size
   independence). Goal: <= 20 ms, independent of the lakehouse's size.
2. export: a 1,000-file, 100 MiB run folder exported atomically (stage, fsync, manifest with
   sha256, rename) vs the legacy zip + rmtree + copytree. Goal: >= 10x faster.
3. sleeves: 8 sleeves of the sample pipeline's four steps on one local Ray, sandboxed
   (``run_pipeline``: workspace, guard, kernel layer, report, export) vs bare Ray actors running the
   same commands with ``subprocess``. Goal: <= 1.10x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import interleaved, line, median

from sandbox.runner import RunRequest, preflight


def _fill(folder: Path, files: int, size: int, *, per_dir: int = 500) -> None:
    chunk = os.urandom(size)  # incompressible, like parquet
    for i in range(files):
        d = folder / f"part-{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"BINANCE_SYM{i:05d}_1d.parquet").write_bytes(chunk[: size - (i % 7)] + i.to_bytes(4, "little"))


def _host(base: Path, files: int, size: int) -> Path:
    host = base / "host"
    for d in ("data/lakehouse", "export/B1", "artifacts/summaries/runs", "scripts"):
        (host / d).mkdir(parents=True, exist_ok=True)
    _fill(host / "data/lakehouse", files, size)
    return host


def bench_workspace(base: Path, rounds: int) -> None:
    from sandbox.run import Run

    print("\n== workspace build: 1 GiB / 10,000-file lakehouse", flush=True)
    big = _host(base / "big", 10_000, 100 * 1024)
    small = _host(base / "small", 10, 1024)
    ws_dir = base / "ws"
    ws_dir.mkdir()

    def open_run(host: Path) -> None:
        prep = preflight(RunRequest(host=str(host), run_id="B1", argv=[], workspace_base=str(ws_dir)))
        run = Run.open(prep, echo=False)
        run.discard()

    def copy(r: int) -> None:
        dst = base / f"copy-{r}"
        shutil.copytree(big / "data/lakehouse", dst)
        shutil.rmtree(dst)

    t = interleaved(rounds, big=lambda r: open_run(big), small=lambda r: open_run(small), copy=copy)
    b, s, c = median(t["big"]) * 1000, median(t["small"]) * 1000, median(t["copy"]) * 1000
    print(line("open a run (workspace + policy), 1 GiB lakehouse, ms", b, "<= 20", b <= 20))
    print(line("open a run, 10-file lakehouse, ms", s, "~ same", abs(b - s) < 10))
    print(line("copy the 1 GiB lakehouse (+ rmtree), ms", c, "-", True))
    print(f"   ratio copy / workspace: {c / b:.0f}x", flush=True)
    shutil.rmtree(base / "big")
    shutil.rmtree(base / "small")


def bench_export(base: Path, rounds: int) -> None:
    from sandbox.export import export_run

    print("\n== export: 1,000-file, 100 MiB run folder", flush=True)
    src = base / "run"
    _fill(src / "data", 1000, 100 * 1024, per_dir=250)
    dests = base / "dest"
    dests.mkdir()

    def ours(r: int) -> None:
        export_run(
            src,
            dests / f"ours-{r}",
            run_id="B1",
            status="succeeded",
            exit_code=0,
            policy_name="production",
            policy_sha256="0" * 64,
        )

    def legacy(r: int) -> None:  # the original: archive the run, drop the old copy, copy the tree
        dest = dests / f"legacy-{r}"
        shutil.make_archive(str(base / f"legacy-{r}"), "zip", src)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)

    t = interleaved(rounds, ours=ours, legacy=legacy)
    o, g = median(t["ours"]), median(t["legacy"])
    print(line("atomic export (copy, fsync, manifest + sha256, rename), s", o, "-", True))
    print(line("legacy zip + rmtree + copytree, s", g, "-", True))
    print(line("ratio legacy / atomic export", g / o, ">= 10", g / o >= 10), flush=True)
    shutil.rmtree(dests)
    shutil.rmtree(src)


def _bare_actor() -> Any:
    import ray

    @ray.remote
    class Bare:
        """The same commands, no sandbox: cwd the host, outputs in a private temp folder."""

        def work(self, host: str, steps: list[Any], env: dict[str, str]) -> int:
            import subprocess
            import tempfile

            run_dir = tempfile.mkdtemp(prefix="bare-run-")
            data = os.path.join(run_dir, "data")
            full = {
                **os.environ,
                **env,
                "TV_RUN_DIR": run_dir,
                "CANDIDATES_RAW": os.path.join(data, "portfolio_candidates_raw.json"),
                "CANDIDATES_SELECTED": os.path.join(data, "portfolio_candidates.json"),
                "SELECTION_AUDIT": os.path.join(data, "selection_audit.json"),
            }
            os.makedirs(os.path.join(run_dir, "logs"))
            code = 0
            for run in steps:
                code = subprocess.run(
                    run, shell=isinstance(run, str), cwd=host, env=full, check=False
                ).returncode
                if code:
                    break
            shutil.rmtree(run_dir)
            return code

    return Bare


def bench_sleeves(base: Path, rounds: int) -> None:
    import ray

    from sandbox.orchestrator.cluster import ray_session
    from sandbox.orchestrator.manifest import load_manifest
    from sandbox.orchestrator.pipeline import PipelineRequest, prepare_pipeline, run_pipeline
    from sandbox.samples import make_pipeline_host, run_scans

    print(
        "\n== 8 sleeves of the sample pipeline (select, prepare, optimize, report), 2 at a time", flush=True
    )
    host = make_pipeline_host(base / "phost")
    run_scans(host, "B1")
    data = json.loads((host / "configs/manifest.json").read_text())
    data["profiles"]["meta_bench8"] = {
        "sleeves": [{"id": f"s{i}", "profile": "binance_spot_rating_ma_long"} for i in range(8)]
    }
    manifest = base / "manifest-bench.json"
    manifest.write_text(json.dumps(data))
    meta = load_manifest(manifest).resolve("meta_bench8")
    steps = [list(s.run) if not isinstance(s.run, str) else s.run for s in meta.sleeves[0].steps]
    env = {
        "TV_RUN_ID": "B1",
        "TV_SCAN_DIR": str(host / "export/B1"),
        "PIPELINE_PROFILE": "binance_spot_rating_ma_long",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }

    with ray_session(None, num_cpus=2):
        bare_cls = _bare_actor()

        def sandboxed(r: int) -> None:
            req = PipelineRequest(
                host=str(host),
                meta="meta_bench8",
                run_id="B1",
                manifest=str(manifest),
                max_parallel=2,
                overwrite=r > 0 or (host / "artifacts/summaries/runs/B1").exists(),
            )
            res = run_pipeline(prepare_pipeline(req), progress_mode="none")
            assert res.status == "succeeded", [s.error or s.failed_step for s in res.sleeves]

        def bare(r: int) -> None:
            pending = list(range(8))
            running: dict[Any, Any] = {}
            while pending or running:
                while pending and len(running) < 2:
                    pending.pop()
                    a = bare_cls.remote()
                    running[a.work.remote(str(host), steps, env)] = a
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    assert ray.get(ref) == 0
                    ray.kill(running.pop(ref))

        t = interleaved(rounds, sandboxed=sandboxed, bare=bare)
    s, b = median(t["sandboxed"]), median(t["bare"])
    print(line("8 sleeves sandboxed (run_pipeline), s", s, "-", True))
    print(line("8 sleeves on bare Ray actors (subprocess), s", b, "-", True))
    print(line("ratio sandboxed / bare", s / b, "<= 1.10", s / b <= 1.10), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="workspace,export,sleeves")
    p.add_argument("--dir", help="where to build the data (default: the system temp dir)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tvsb-bench-", dir=a.dir))
    t0 = time.monotonic()
    try:
        which = a.only.split(",")
        if "workspace" in which:
            bench_workspace(base, a.rounds)
        if "export" in which:
            bench_export(base, a.rounds)
        if "sleeves" in which:
            bench_sleeves(base, max(1, a.rounds - 1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n(benchmarks took {time.monotonic() - t0:.0f}s, data in {base} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
