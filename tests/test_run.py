"""`tv-sandbox run` end to end, on a real sample host, through the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import sandbox_run, tree_snapshot

from sandbox.export import verify
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"


def run(
    host: Path,
    run_id: str,
    *cmd: str,
    profile: str | None = None,
    mode: str = "enforce",
    kernel: str = "auto",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    options = ("--mode", mode, "--kernel", kernel, *extra)
    return sandbox_run(host, run_id, *cmd, options=options, profile=profile)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def lake(host: Path) -> dict[str, tuple[object, ...]]:
    return tree_snapshot(host / "data" / "lakehouse")


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_legacy_script_runs_unchanged(host: Path, kernel: str) -> None:
    before = {k: v for k, v in tree_snapshot(host).items() if not k.startswith(RUNS)}
    r = run(host, "legacy", sys.executable, "scripts/legacy_step.py", kernel=kernel)
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "legacy"
    summary = json.loads((out / "reports" / "summary.json").read_text())
    assert set(summary) == {"BINANCE_BTCUSDT_1d.csv", "BINANCE_ETHUSDT_1d.csv", "BINANCE_SOLUSDT_1d.csv"}
    returns = pickle.loads((out / "data" / "intermediate" / "returns.pkl").read_bytes())
    assert len(returns["BINANCE_BTCUSDT_1d.csv"]) == 29
    assert (
        "read data/lakehouse/BINANCE_BTCUSDT_1d.csv (30 bars)" in (out / "reports" / "step.log").read_text()
    )
    assert "outputs: ['reports/step.log', 'reports/summary.json'] ['returns.pkl']" in r.stdout
    assert verify(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["exit_code"] == 0
    assert len(manifest["policy"]["sha256"]) == 64
    after = {k: v for k, v in tree_snapshot(host).items() if not k.startswith(RUNS)}
    assert after == before  # the host, lakehouse included, is byte-identical
    report = json.loads((out / "sandbox_report.json").read_text())
    assert report["status"] == "succeeded" and report["steps"][0]["peak_rss_bytes"] > 0
    assert report["scattered_artifacts"] == []  # reports/ and data/ are standard run folders


def test_seed_bug_production_fails_explained(host: Path) -> None:
    before = lake(host)
    r = run(host, "bug", sys.executable, "scripts/buggy_selection.py")
    assert r.returncode == 1
    assert "rule 'selection-audit-in-lakehouse'" in r.stderr and "$SELECTION_AUDIT" in r.stderr
    assert lake(host) == before
    out = host / RUNS / "bug"
    assert verify(out) == [] and json.loads((out / "manifest.json").read_text())["status"] == "failed"
    events = [json.loads(x) for x in (out / "logs" / "sandbox_events.jsonl").read_text().splitlines()]
    assert any(e["action"] == "deny" and e["rule"] == "selection-audit-in-lakehouse" for e in events)


def test_seed_bug_development_succeeds(host: Path) -> None:
    r = run(host, "bug", sys.executable, "scripts/buggy_selection.py", profile="development")
    assert r.returncode == 0, r.stderr
    assert json.loads((host / "data" / "lakehouse" / "selection_audit.json").read_text())


def test_seed_bug_audit_mode_captures(host: Path) -> None:
    before = lake(host)
    r = run(host, "bug", sys.executable, "scripts/buggy_selection.py", mode="audit")
    assert r.returncode == 0, r.stderr
    assert lake(host) == before
    out = host / RUNS / "bug"
    captured = out / "audit" / "data" / "lakehouse" / "selection_audit.json"
    assert json.loads(captured.read_text())["final_selection"]["count"] == 3
    assert verify(out) == []
    events = (out / "logs" / "sandbox_events.jsonl").read_text()
    assert "selection_audit.json" in events and '"captured": true' in events


def test_environment_of_a_step(host: Path) -> None:
    code = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('TV_RUN_DIR', 'TV_RUN_ID', 'TV_PROFILE', 'CANDIDATES_RAW', 'CANDIDATES_SELECTED', 'SELECTION_AUDIT', 'TV_SCAN_DIR')})); print(os.getcwd())"
    r = run(host, "envcheck", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout.splitlines()[0])
    cwd = r.stdout.splitlines()[1]
    assert env["TV_RUN_ID"] == "envcheck" and env["TV_PROFILE"] == "production"
    assert env["TV_RUN_DIR"] == os.path.join(cwd, RUNS, "envcheck")
    assert env["SELECTION_AUDIT"] == env["TV_RUN_DIR"] + "/data/selection_audit.json"
    assert env["CANDIDATES_RAW"].endswith("/data/portfolio_candidates_raw.json")
    assert env["TV_SCAN_DIR"] == os.path.join(cwd, "export", "envcheck")


def test_exit_status_is_the_commands_and_failed_runs_are_exported(host: Path) -> None:
    r = run(
        host, "fails", sys.executable, "-c", "open('reports.txt', 'w').write('partial'); raise SystemExit(7)"
    )
    assert r.returncode == 7
    out = host / RUNS / "fails"
    assert (out / "reports.txt").read_text() == "partial" and verify(out) == []
    report = json.loads((out / "sandbox_report.json").read_text())
    assert report["status"] == "failed" and report["scattered_artifacts"] == ["reports.txt"]


def test_overwrite_swaps_atomically(host: Path) -> None:
    assert run(host, "R", sys.executable, "-c", "open('a.txt', 'w').write('1')").returncode == 0
    r = run(host, "R", sys.executable, "-c", "pass")
    assert r.returncode == 125 and "--overwrite" in r.stderr
    r = run(host, "R", sys.executable, "-c", "open('b.txt', 'w').write('2')", extra=("--overwrite",))
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "R"
    assert not (out / "a.txt").exists() and (out / "b.txt").read_text() == "2" and verify(out) == []


def test_a_run_cleans_up_after_crashed_exports_while_its_step_runs(host: Path) -> None:
    """What a killed exporter left beside the run's destination is removed -- during the step,
    off the end of the run -- and said in the report."""
    crashed = host / RUNS / ".OTHER.tvs-stage-0123abcd"
    (crashed / "data").mkdir(parents=True)
    (crashed / "data" / "half.bin").write_bytes(b"x" * 10)
    r = run(host, "after-crash", sys.executable, "-c", "pass")
    assert r.returncode == 0, r.stderr
    assert not crashed.exists()
    report = json.loads((host / RUNS / "after-crash" / "sandbox_report.json").read_text())
    assert report["warnings"] == [f"before the export: removed {crashed} (an unfinished export stage)"]
    assert verify(host / RUNS / "after-crash") == []


def test_keep_workspace(host: Path, tmp_path: Path) -> None:
    base = tmp_path / "wsb"
    base.mkdir()
    r = run(host, "keep", "true", extra=("--keep-workspace", "--workspace-dir", str(base)))
    assert r.returncode == 0 and "workspace kept at" in r.stderr
    assert len(list(base.iterdir())) == 1
    r = run(host, "nokeep", "true", extra=("--workspace-dir", str(base)))
    assert len(list(base.iterdir())) == 1  # removed after the run


ATOMIC_WRITES = """
import os, tempfile
run = os.environ["TV_RUN_DIR"]
os.makedirs("reports", exist_ok=True)
open("reports/a.csv", "w").write("a")
os.rename("reports/a.csv", os.path.join(run, "reports", "b.csv"))  # workspace overlay -> $TV_RUN_DIR
fd, tmp = tempfile.mkstemp()  # in $TMPDIR, a folder of its own
os.write(fd, b"c"); os.close(fd)
os.replace(tmp, "reports/c.csv")  # the atomic-write idiom: temp file, then rename into place
os.link(os.path.join(run, "reports", "b.csv"), "reports/d.csv")
print(sorted(os.listdir("reports")))
"""


@pytest.mark.kernel("mount_namespace", "overlay")
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_renames_across_the_kernel_layers_mounts_work(host: Path, kernel_support: object, mode: str) -> None:
    """The workspace overlay, $TV_RUN_DIR's bind mount and the temp dir are separate mounts: a
    rename(2)/link(2) between them is EXDEV, which one shared disk never gave the script. The
    guard moves (copies) across instead, as `mv` does."""
    before = tree_snapshot(host / "data")
    r = run(host, f"xdev-{mode}", sys.executable, "-c", ATOMIC_WRITES, mode=mode)
    assert r.returncode == 0, r.stderr
    assert "['b.csv', 'c.csv', 'd.csv']" in r.stdout
    out = host / RUNS / f"xdev-{mode}" / "reports"
    assert sorted(p.name for p in out.glob("*.csv")) == ["b.csv", "c.csv", "d.csv"]
    assert (out / "c.csv").read_text() == "c" and (out / "d.csv").read_text() == "a"
    report = json.loads((host / RUNS / f"xdev-{mode}" / "sandbox_report.json").read_text())
    assert report["layers"]["overlay"] is True
    assert tree_snapshot(host / "data") == before


# -- the launch's fallback when the kernel refuses a layer -------------------------------------------


def _refusing(monkeypatch: pytest.MonkeyPatch, refuse: Callable[[Any], bool]) -> None:
    """Make the kernel refuse the plans ``refuse`` names, as a machine without them would: the
    forked child reports that the plan could not be applied (KernelUnavailable) -- after the
    launcher's own ``meanwhile`` work, which runs while a real keeper builds the sandbox."""
    import sandbox.kernel
    from sandbox.errors import KernelUnavailable
    from sandbox.kernel import spawning

    def spawn(argv: Any, *, plan: Any = None, **kw: Any) -> Any:
        if plan is not None and refuse(plan):
            if kw.get("meanwhile") is not None:
                kw["meanwhile"]()
            raise KernelUnavailable("kernel layer could not be applied: unshare: Operation not permitted")
        return spawning.spawn(argv, plan=plan, **kw)

    monkeypatch.setattr(sandbox.kernel, "spawn", spawn)


STEP = "import os; os.makedirs('reports', exist_ok=True); open('reports/out.txt', 'w').write('x')"


@pytest.mark.kernel("landlock")
def test_without_namespaces_the_launch_falls_back_to_landlock(
    host: Path, kernel_support: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox.runner import RunRequest, execute, preflight

    _refusing(monkeypatch, lambda plan: plan.namespace)
    before = lake(host)
    out = execute(preflight(RunRequest(host=str(host), run_id="ll", argv=[sys.executable, "-c", STEP])))
    # Never a silent downgrade: one warning line, and the report names what is missing.
    assert out.exit_code == 0 and len(out.report["warnings"]) == 1
    assert "only Landlock and the Python guard are active" in out.report["warnings"][0]
    layers = out.report["layers"]
    assert layers["landlock_abi"] > 0 and not layers["mount_namespace"] and not layers["overlay"]
    assert {"mount_namespace", "pid_namespace", "ipc_namespace", "user_namespace", "private_shm"} <= set(
        layers["missing"]
    )
    assert "unshare: Operation not permitted" in layers["missing"]["pid_namespace"]
    assert "System V" in layers["missing"]["ipc_namespace"]  # made with the PID namespace: missing with it
    assert (host / RUNS / "ll" / "reports" / "out.txt").read_text() == "x"  # the guard redirected it
    assert lake(host) == before


@pytest.mark.kernel("landlock", "mount_namespace", "user_namespaces")
def test_a_kernel_refusing_the_network_namespace_keeps_the_others(
    host: Path, kernel_support: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused CLONE_NEWNET alone: the step keeps its user, mount and PID namespaces, the report
    says the network is the machine's; with --kernel require the run is refused."""
    from sandbox.errors import KernelUnavailable
    from sandbox.runner import RunRequest, execute, preflight

    _refusing(monkeypatch, lambda plan: plan.network_namespace)
    out = execute(preflight(RunRequest(host=str(host), run_id="nn", argv=[sys.executable, "-c", STEP])))
    assert out.exit_code == 0 and len(out.report["warnings"]) == 1, out.report["warnings"]
    assert "missing: network_namespace" in out.report["warnings"][0]
    layers = out.report["layers"]
    assert layers["mount_namespace"] and layers["overlay"] and list(layers["missing"]) == ["network_namespace"]
    assert "unshare: Operation not permitted" in layers["missing"]["network_namespace"]
    with pytest.raises(KernelUnavailable, match="full kernel layer is required"):
        execute(preflight(RunRequest(host=str(host), run_id="nr", argv=["true"], kernel="require")))


@pytest.mark.parametrize("refused", ["namespaces", "landlock"])
def test_require_means_the_full_layer(
    host: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--kernel require refuses to run with anything less than namespaces + overlay + read-only
    binds + Landlock: no fallback to Landlock alone, none to the namespaces without Landlock."""
    from sandbox.cli import main
    from sandbox.kernel import landlock

    if refused == "namespaces":
        _refusing(monkeypatch, lambda plan: plan.namespace)
    else:
        monkeypatch.setattr(landlock, "query_abi", lambda: (0, 38))
    (tmp_path / "ws").mkdir()
    (host / RUNS / ".OTHER.tvs-stage-0123abcd").mkdir(parents=True)  # a crashed export's: left be
    before = tree_snapshot(host)
    argv = ["run", "--root", str(host), "--run-id", "req", "--kernel", "require"]
    code = main([*argv, "--workspace-dir", str(tmp_path / "ws"), "--", sys.executable, "-c", STEP])
    err = capsys.readouterr().err
    assert code != 0 and "full kernel layer is required" in err and len(err.strip().splitlines()) == 1
    assert tree_snapshot(host) == before and list((tmp_path / "ws").iterdir()) == []


@pytest.mark.parametrize("kernel", ["auto", "require"])
def test_when_the_kernel_refuses_everything(
    host: Path, monkeypatch: pytest.MonkeyPatch, kernel: str, tmp_path: Path
) -> None:
    """auto: the guard alone, with a warning in the report; require: refused before the command ran
    (exit 2, one line, nothing written -- the workspace is gone too)."""
    from sandbox.cli import main
    from sandbox.kernel import landlock

    _refusing(monkeypatch, lambda plan: True)
    monkeypatch.setattr(landlock, "query_abi", lambda: (0, 38))  # ENOSYS: no Landlock either
    (tmp_path / "ws").mkdir()
    before = tree_snapshot(host)
    argv = ["run", "--root", str(host), "--run-id", "none", "--kernel", kernel]
    code = main([*argv, "--workspace-dir", str(tmp_path / "ws"), "--", sys.executable, "-c", STEP])
    assert list((tmp_path / "ws").iterdir()) == []
    if kernel == "require":
        assert code == 125 and tree_snapshot(host) == before
        return
    assert code == 0
    report = json.loads((host / RUNS / "none" / "sandbox_report.json").read_text())
    assert not report["layers"]["kernel"] and "only the Python guard is active" in report["warnings"][0]
    assert "no Landlock system calls" in report["warnings"][0]
    assert (host / RUNS / "none" / "reports" / "out.txt").read_text() == "x"
