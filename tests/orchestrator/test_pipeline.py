"""End to end on a real local Ray (the session's ``ray_cluster``): ``tv-sandbox pipeline`` with
small manifests of quick steps, so that each test costs a few seconds.

Concurrent sleeves that must not mix files, a failing sleeve, the preflight failure, a step timeout
that ends a process tree, Ctrl-C, ``--resume``, the ``--json`` shape. ``--address`` against a
cluster of its own is in ``test_pipeline_address.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox import cli
from sandbox.errors import EXIT_SANDBOX, PreflightError
from sandbox.export import verify
from sandbox.export.manifest import read_manifest
from sandbox.orchestrator.pipeline import (
    SUMMARY_NAME,
    PipelineRequest,
    prepare_pipeline,
    run_pipeline,
)

RUN_ID = "R1"
SCANNER = "scanners/test/base"
RUNS = Path("artifacts/summaries/runs")

STEP = r"""
import os, subprocess, sys, time
from pathlib import Path
what, arg = sys.argv[1], sys.argv[2]
me = os.environ["PIPELINE_SLEEVE"]
data = Path(os.environ["TV_RUN_DIR"]) / "data"
if what == "write":                      # own files only, absolute and relative, while others run
    data.mkdir(parents=True, exist_ok=True)
    (data / f"{me}.txt").write_text(me)
    os.makedirs("out", exist_ok=True)
    Path("out", f"{me}.txt").write_text(me)
    assert list(Path(os.environ["TV_SCAN_DIR"]).glob("*.json")), "scans not visible"
    t0 = time.time()
    time.sleep(float(arg))
    print("window", t0, time.time())
    seen = sorted(os.listdir(data)) + sorted(os.listdir("out"))
    if seen != [f"{me}.txt", f"{me}.txt"]:
        sys.exit(f"mixed: {seen}")
elif what == "fail":
    sys.exit(int(arg))
elif what == "failif":                    # fails while the host has configs/<arg>
    sys.exit(5 if Path("configs", arg).exists() else 0)
elif what == "hang":                      # a grandchild that would outlive a careless kill
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", arg])
    print("started", flush=True)
    time.sleep(300)
"""


def step(name: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "run": ["python", "scripts/step.py", *args], **extra}


def make_host(root: Path, sleeves: dict[str, list[dict[str, Any]]], *, scans: bool = True) -> Path:
    """A minimal host: one scanner output, one script, a meta profile ``meta`` with ``sleeves``."""
    host = root / "host"
    for d in ("data/lakehouse", f"export/{RUN_ID}", "scripts", "configs", str(RUNS)):
        (host / d).mkdir(parents=True, exist_ok=True)
    (host / "data/lakehouse/BINANCE_BTCUSDT_1d.csv").write_text("timestamp,close\n1,2\n")
    if scans:
        doc = {"meta": {"scanner": SCANNER, "run_id": RUN_ID}, "data": [{"symbol": "BINANCE:BTCUSDT"}]}
        (host / f"export/{RUN_ID}/strategy_alpha_test_20260101-000000.json").write_text(json.dumps(doc))
    (host / "scripts/step.py").write_text(STEP)
    profiles: dict[str, Any] = {
        "meta": {"sleeves": [{"id": sid, "profile": f"p_{sid}"} for sid in sleeves]},
    }
    for sid, steps in sleeves.items():
        profiles[f"p_{sid}"] = {
            "discovery": {"strategies": {"s": {"scanners": [SCANNER]}}},
            "steps": steps,
        }
    manifest = {
        "defaults": {"scan_command": "python scripts/run_scans.py --run-id {run_id}"},
        "profiles": profiles,
    }
    (host / "configs/manifest.json").write_text(json.dumps(manifest, indent=1))
    return host


def run(host: Path, **kw: Any) -> Any:
    req = PipelineRequest(host=str(host), meta="meta", run_id=RUN_ID, **kw)
    return run_pipeline(prepare_pipeline(req), progress_mode="none")


def cli_cmd(host: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sandbox",
        "pipeline",
        "--root",
        str(host),
        "--profile",
        "meta",
        "--run-id",
        RUN_ID,
        *extra,
    ]


def leftovers(token: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if token in " ".join(p.info["cmdline"] or ()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def export_status(folder: Path) -> str:
    return str(read_manifest(folder)["status"])


@pytest.fixture(scope="module")
def mixed_run(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Three concurrent sleeves writing the same relative names; one fails at its second step."""
    sleeves = {
        "alpha": [step("write", "write", "2.5"), step("after", "fail", "0")],
        "beta": [step("write", "write", "2.5"), step("after", "fail", "0")],
        "gamma": [step("write", "write", "2.5"), step("boom", "fail", "3"), step("never", "fail", "0")],
    }
    host = make_host(tmp_path_factory.mktemp("mixed"), sleeves)
    return host, run(host, max_parallel=3)


def test_concurrent_sleeves_do_not_mix_files(mixed_run: tuple[Path, Any]) -> None:
    host, result = mixed_run
    root = host / RUNS / RUN_ID
    assert [s.export for s in result.sleeves] == [str(root / s) for s in ("alpha", "beta", "gamma")]
    for sid in ("alpha", "beta", "gamma"):
        folder = root / sid
        assert verify(folder) == [], sid  # a complete run folder with its own verifying manifest
        assert (folder / "data" / f"{sid}.txt").read_text() == sid
        assert (folder / "out" / f"{sid}.txt").read_text() == sid  # the relative write, redirected
        assert sorted(p.name for p in (folder / "data").iterdir()) == [f"{sid}.txt"]
        cfg = json.loads((folder / "config" / "pipeline.json").read_text())
        assert cfg["sleeve"] == sid and cfg["meta"] == "meta"
    assert not (host / "out").exists()  # nothing reached the host but the exports
    assert sorted(p.name for p in root.iterdir()) == ["alpha", "beta", "gamma", SUMMARY_NAME]
    windows = []
    for sid in ("alpha", "beta", "gamma"):
        line = (root / sid / "logs" / "write.stdout.log").read_text().split()
        windows.append((float(line[1]), float(line[2])))
    # they ran at the same time (at least two of them, however slowly a loaded machine starts actors)
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(windows) for b in windows[i + 1 :])


def test_a_failing_sleeve_is_exported_failed_and_the_others_succeed(mixed_run: tuple[Path, Any]) -> None:
    host, result = mixed_run
    by = {s.id: s for s in result.sleeves}
    assert result.status == "failed" and result.exit_code == 1
    assert by["alpha"].status == by["beta"].status == "succeeded"
    gamma = by["gamma"]
    assert gamma.status == "failed" and gamma.exit_code == 3 and gamma.failed_step == "boom"
    assert [s.name for s in gamma.steps] == ["write", "boom"]  # it stopped at its first failing step
    folder = host / RUNS / RUN_ID / "gamma"
    assert export_status(folder) == "failed" and (folder / "logs").is_dir()
    summary = json.loads((host / RUNS / RUN_ID / SUMMARY_NAME).read_text())
    assert summary["status"] == "failed" and [s["id"] for s in summary["sleeves"]] == [
        "alpha",
        "beta",
        "gamma",
    ]
    assert {s["id"]: s["export"] for s in summary["sleeves"]}["gamma"] == "gamma"


def test_preflight_failure_lists_missing_scanners_and_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    host = make_host(tmp_path, {"a": [step("x", "fail", "0")], "b": [step("x", "fail", "0")]}, scans=False)
    before = sorted(str(p) for p in host.rglob("*"))
    code = cli.main(["pipeline", "--root", str(host), "--profile", "meta", "--run-id", RUN_ID])
    err = capsys.readouterr().err
    assert code == EXIT_SANDBOX == 125
    assert err.count("\n") == 1 and f"{SCANNER} for sleeves a, b" in err
    assert f"python scripts/run_scans.py --run-id {RUN_ID}" in err
    assert sorted(str(p) for p in host.rglob("*")) == before


def test_step_timeout_ends_the_whole_process_tree(ray_cluster: str, tmp_path: Path) -> None:
    token = f"tvsb-grandchild-{uuid.uuid4().hex}"
    host = make_host(tmp_path, {"slow": [step("hang", "hang", token, timeout_s=30)]})
    result = run(host, step_timeout=2.0)  # the cap wins over the step's 30 s
    (sleeve,) = result.sleeves
    assert sleeve.status == "failed" and sleeve.steps[0].cut == "timeout"
    assert sleeve.steps[0].duration_s < 20  # ended at the cap (2 s + the grace period), not at 30 s
    assert export_status(host / RUNS / RUN_ID / "slow") == "failed"
    report = json.loads((host / RUNS / RUN_ID / "slow" / "sandbox_report.json").read_text())
    assert report["steps"][0]["cut"] == "timeout"
    assert leftovers(token) == []  # the sleeping grandchild went with its step


#: A step that makes its own export fail (a sparse file over the default export limit) at a name
#: of its choice: the error then names it -- rich markup, terminal escapes, an undecodable byte.
HOSTILE_NAME = r"""
import os
name = os.path.join(os.fsencode(os.environ["TV_RUN_DIR"]), b"data/x[/]\xff\x1b[1A\x1b[2Kcalm: ok")
os.makedirs(os.path.dirname(name), exist_ok=True)  # data/x[ : the '/' of '[/]' is a folder's end
with open(name, "wb") as fh:
    fh.truncate((1 << 40) + 1)
"""


def test_a_file_name_a_step_chose_cannot_break_the_drivers_output(ray_cluster: str, tmp_path: Path) -> None:
    """The review's crash: the error of a sleeve whose export failed names a file of its step; on a
    strict UTF-8 stdout its undecodable byte raised UnicodeEncodeError in the driver's progress
    line (exit 125, no summary, the sibling sleeve ended with Ray before its export), its '[/]'
    raised rich's MarkupError in the summary table, and its escapes reached the terminal raw."""
    from sandbox.orchestrator.progress import summary_table

    host = make_host(
        tmp_path,
        {"evil": [{"name": "big", "run": ["python", "scripts/big.py"]}], "calm": [step("w", "write", "2")]},
    )
    (host / "scripts/big.py").write_text(HOSTILE_NAME)
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    req = PipelineRequest(host=str(host), meta="meta", run_id=RUN_ID, max_parallel=2)
    result = run_pipeline(prepare_pipeline(req), progress_mode="plain", stream=out)
    by = {s.id: s for s in result.sleeves}
    assert result.status == "failed" and result.exit_code == 1
    assert by["calm"].status == "succeeded" and verify(host / RUNS / RUN_ID / "calm") == []
    evil = by["evil"]
    assert evil.status == "failed" and evil.export is None and evil.error
    assert "export limit" in evil.error and r"\x1b[1A\x1b[2K" in evil.error and r"\udcff" in evil.error
    assert evil.error.isprintable()
    summary_table(result.sleeves, stream=out, rich=True)  # '[/]' is text, not markup
    summary_table(result.sleeves, stream=out, rich=False)
    shown = raw.getvalue().decode()
    assert "\x1b" not in shown and "evil: failed" in shown
    summary = json.loads((host / RUNS / RUN_ID / SUMMARY_NAME).read_text())
    assert {s["id"]: s["status"] for s in summary["sleeves"]} == {"evil": "failed", "calm": "succeeded"}


@pytest.mark.parametrize(
    ("signum", "status", "said"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_ctrl_c_cancels_cleanly(
    ray_cluster: str, tmp_path: Path, signum: int, status: int, said: str
) -> None:
    token = f"tvsb-ctrlc-{uuid.uuid4().hex}"
    sleeves = {
        "quick": [step("w", "write", "0")],
        "slow": [step("hang", "hang", token)],
        "later": [step("w", "write", "0")],
    }
    host = make_host(tmp_path, sleeves)
    proc = subprocess.Popen(
        cli_cmd(host, "--address", ray_cluster, "--max-parallel", "1", "--progress", "plain"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # wait until the slow sleeve's step runs
            if "slow: step 1/1 hang" in line or (leftovers(token) and "slow" in line):
                break
            assert time.monotonic() < deadline, "the slow step never started"
        while not leftovers(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signum)  # what a terminal's Ctrl-C does (to the whole process group)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            # still running a minute after the signal: say what it said before it is killed
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"the pipeline did not end within 60 s of {said}\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == status, err
    root = host / RUNS / RUN_ID
    assert export_status(root / "quick") == "succeeded" and verify(root / "quick") == []
    assert export_status(root / "slow") == "cancelled" and verify(root / "slow") == []
    assert not (root / "later").exists()  # never started: absent
    summary = json.loads((root / SUMMARY_NAME).read_text())
    assert summary["status"] == "cancelled"
    assert {s["id"]: s["status"] for s in summary["sleeves"]} == {
        "quick": "succeeded",
        "slow": "cancelled",
        "later": "cancelled",
    }
    assert leftovers(token) == []
    assert "Traceback" not in err and f"{said}: cancelling the running sleeves" in out


def test_resume_reruns_only_missing_or_failed_sleeves_and_json_shape(
    ray_cluster: str, tmp_path: Path
) -> None:
    sleeves = {"good": [step("w", "write", "0")], "flaky": [step("f", "failif", "broken")]}
    host = make_host(tmp_path, sleeves)
    (host / "configs/broken").write_text("")
    first = run(host)
    assert {s.id: s.status for s in first.sleeves} == {"good": "succeeded", "flaky": "failed"}
    good_manifest = (host / RUNS / RUN_ID / "good" / "manifest.json").stat()
    with pytest.raises(PreflightError, match="--resume"):
        prepare_pipeline(PipelineRequest(host=str(host), meta="meta", run_id=RUN_ID))
    (host / "configs/broken").unlink()
    done = subprocess.run(
        cli_cmd(host, "--address", ray_cluster, "--resume", "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # exactly one JSON document: nothing else on stdout
    assert (
        set(doc) == {"run_id", "status", "sleeves"}
        and doc["run_id"] == RUN_ID
        and doc["status"] == "succeeded"
    )
    for s in doc["sleeves"]:
        assert set(s) == {"id", "status", "exit_code", "duration_s", "denied", "redirected", "export"}
        assert os.path.isabs(s["export"]) and s["status"] == "succeeded" and s["exit_code"] == 0
    assert [s["id"] for s in doc["sleeves"]] == ["good", "flaky"]
    again = (host / RUNS / RUN_ID / "good" / "manifest.json").stat()
    assert (again.st_ino, again.st_mtime_ns) == (good_manifest.st_ino, good_manifest.st_mtime_ns)  # kept
    summary = json.loads((host / RUNS / RUN_ID / SUMMARY_NAME).read_text())
    assert {s["id"]: s["resumed"] for s in summary["sleeves"]} == {"good": True, "flaky": False}
