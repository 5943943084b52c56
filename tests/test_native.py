"""Native and shell writes explained and counted (issue 9, item 3): under the real kernel layer, the
explain shim (sandbox/native) records what the kernel refused and what the overlay redirected;
report.explain_native turns it into events with the policy's rule and hint and the user's path."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import tree_snapshot

from sandbox import native
from sandbox import workspace as workspace_mod
from sandbox.events import EVENTS_NAME, read_events
from sandbox.kernel import KernelSupport
from sandbox.loader import load_policy, save_resolved
from sandbox.report import explain_native, host_changes, summary_line
from sandbox.runner import POLICY_FILE, kernel_plan, start_step
from sandbox.samples import make_host

LAKE_FILE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"


@pytest.fixture(scope="module")
def shim() -> str:
    if shutil.which("cc") is None:
        pytest.skip(reason="no C compiler: the shim is absent and native denials stay unexplained")
    lib = native.shim_path()
    assert lib is not None, native.unavailable_reason()
    return lib


def _step(
    tmp_path: Path,
    script: list[str],
    profile: str = "production",
    mode: str = "enforce",
    kernel: bool = True,
    namespace: bool = True,
) -> dict:
    """One step, launched as `tv-sandbox run` launches it (runner.start_step under the full kernel
    plan), with the shim in its environment; then explain_native, as the runner calls it."""
    host = make_host(tmp_path / "host")
    before = tree_snapshot(host)
    spec = load_policy(profile=profile)
    base = tmp_path / "base"
    base.mkdir()
    ws = workspace_mod.create(host, "N1", spec.layout, base_dir=base, mirror=False)
    try:
        policy = ws.bind(spec, mode=mode, profile=profile)
        os.makedirs(os.path.join(ws.run_storage, "logs"), exist_ok=True)
        save_resolved(policy, os.path.join(ws.base, POLICY_FILE))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TV_SANDBOX_")}
        env.update(ws.env(profile))
        env = ws.native_env(env)
        assert "LD_PRELOAD" in env
        if kernel:
            if not namespace:
                ws.mirror()  # Landlock alone: the workspace is the symlink skeleton
            plan = kernel_plan(ws, mode, policy, namespace=namespace)
        else:
            ws.mirror()
            plan = None
        child = start_step(ws, env, script, plan)
        result = child.wait()
        events_file = os.path.join(ws.run_storage, "logs", EVENTS_NAME)
        counts = explain_native(ws.run_storage, policy, events_file, kernel=kernel)
        events = read_events(events_file) if os.path.exists(events_file) else []
        files = {
            str(p.relative_to(ws.run_storage)): p.read_bytes()
            for p in Path(ws.run_storage).rglob("*")
            if p.is_file() and "logs" not in p.parts
        }
        return {"exit": result.exit_code, "counts": counts, "events": events, "files": files,
                "host_same": tree_snapshot(host) == before, "host": host,
                "leftover_raw": os.path.exists(ws.native_events)}  # fmt: skip
    finally:
        ws.remove()


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_shell_denials_are_explained_and_redirects_counted(
    tmp_path: Path, shim: str, kernel_support: KernelSupport
) -> None:
    script = (
        f"rm {LAKE_FILE}; echo x > data/lakehouse/new.csv; mv {LAKE_FILE} data/lakehouse/m.csv;"
        "echo r > reports.csv; mkdir -p out && echo o > out/o.txt; echo d > $TV_RUN_DIR/data/direct.txt;"
        "true"
    )
    r = _step(tmp_path, ["sh", "-c", script])
    assert r["exit"] == 0 and r["host_same"]
    denials = [e for e in r["events"] if e["action"] == "deny"]
    assert [(e["op"], e["path"]) for e in denials] == [
        ("delete", LAKE_FILE),
        ("write", "data/lakehouse/new.csv"),
        ("rename", LAKE_FILE),
    ]
    for e in denials:
        assert e["layer"] == "kernel" and e["rule"] == "lakehouse-read-only", e
        assert e["reason"] and "TV_RUN_DIR" in e["hint"]
        assert not e["path"].startswith("/")  # the user's path, never the workspace's
    redirects = {e["path"] for e in r["events"] if e["action"] == "redirect"}
    assert redirects == {"reports.csv", "out", "out/o.txt"}, r["events"]
    assert r["counts"].denied == 3 and r["counts"].redirected == 3
    assert r["files"]["reports.csv"] == b"r\n" and r["files"]["out/o.txt"] == b"o\n"
    assert r["files"]["data/direct.txt"] == b"d\n"  # written in $TV_RUN_DIR: not a redirect
    assert not r["leftover_raw"]


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_pyarrow_in_python_is_explained_and_not_counted_twice(
    tmp_path: Path, shim: str, kernel_support: KernelSupport
) -> None:
    pytest.importorskip("pyarrow")
    code = (
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        "t = pa.table({'a': [1, 2]})\n"
        "pq.write_table(t, 'data/returns.parquet')\n"  # native, relative: the overlay's redirect
        "open('reports_py.txt', 'w').write('p')\n"  # Python: the guard logs it (once)
        "try:\n"
        "    pq.write_table(t, 'data/lakehouse/x.parquet')\n"
        "except OSError as e:\n"
        "    print('refused', e)\n"
    )
    r = _step(tmp_path, [sys.executable, "-c", code])
    assert r["exit"] == 0 and r["host_same"]
    deny = [e for e in r["events"] if e["action"] == "deny" and e["layer"] == "kernel"]
    assert len(deny) == 1 and deny[0]["path"] == "data/lakehouse/x.parquet", deny
    assert deny[0]["rule"] == "lakehouse-read-only" and deny[0]["op"] == "write"
    # pyarrow then removes the partial file through os.remove: the guard denies that, itself
    others = [(e["layer"], e["op"]) for e in r["events"] if e["action"] == "deny" and e["layer"] != "kernel"]
    assert others in ([], [("python", "delete")]), others
    red = [e["path"] for e in r["events"] if e["action"] == "redirect"]
    assert red.count("data/returns.parquet") == 1 and red.count("reports_py.txt") == 1, red
    assert "data/returns.parquet" in r["files"]


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_development_lists_the_lakehouse_changes(
    tmp_path: Path, shim: str, kernel_support: KernelSupport
) -> None:
    script = f"echo d > data/lakehouse/dev.csv; rm {LAKE_FILE}; echo e > export/x.txt; true"
    r = _step(tmp_path, ["sh", "-c", script], profile="development")
    assert (r["host"] / "data/lakehouse/dev.csv").read_text() == "d\n"  # allowed: the host changed
    changes = host_changes(r["events"])
    assert [(c["op"], c["path"]) for c in changes] == [
        ("write", "data/lakehouse/dev.csv"),
        ("delete", LAKE_FILE),
    ]
    deny = [e for e in r["events"] if e["action"] == "deny"]
    assert [(e["path"], e["rule"]) for e in deny] == [("export/x.txt", "exports-read-only")]


@pytest.mark.kernel("landlock")
def test_landlock_alone_refusals_are_explained(
    tmp_path: Path, shim: str, kernel_support: KernelSupport
) -> None:
    script = f"echo s > scripts/new.sh; rm {LAKE_FILE}; echo n > data/native.parquet; true"
    r = _step(tmp_path, ["sh", "-c", script], namespace=False)
    assert r["host_same"]
    deny = [(e["path"], e["rule"], e["layer"]) for e in r["events"] if e["action"] == "deny"]
    assert deny == [
        ("scripts/new.sh", "kernel-refused", "kernel"),
        (LAKE_FILE, "lakehouse-read-only", "kernel"),
    ]
    assert [e["path"] for e in r["events"] if e["action"] == "redirect"] == ["data/native.parquet"]


def test_kernel_off_the_changes_against_the_policy_are_reported(tmp_path: Path, shim: str) -> None:
    """--kernel off: nothing stops a shell's `rm` in the lakehouse -- the report must say so."""
    r = _step(tmp_path, ["sh", "-c", f"rm {LAKE_FILE}; echo n > data/new.txt"], kernel=False)
    assert r["exit"] == 0 and not r["host_same"]  # the point: without the kernel layer it reaches the host
    changes = host_changes(r["events"])
    assert changes == [{"op": "delete", "path": LAKE_FILE, "rule": "lakehouse-read-only", "allowed": False}]
    assert r["counts"].unenforced == 1
    assert [e["path"] for e in r["events"] if e["action"] == "redirect"] == ["data/new.txt"]


def test_without_the_shim_nothing_breaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Absent (no compiler, cache off, TV_SANDBOX_SHIM=off): never an error, the env unchanged."""
    monkeypatch.setenv("TV_SANDBOX_SHIM", "off")
    assert native.shim_path() is None and "off" in (native.unavailable_reason() or "")
    host = make_host(tmp_path / "host")
    ws = workspace_mod.create(host, "N0", load_policy().layout, base_dir=tmp_path, mirror=False)
    env = ws.native_env({"PATH": "/bin", "LD_PRELOAD": "/x.so"})
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/x.so"}
    ws.remove()


def test_the_summary_line() -> None:
    rep = {"mode": "audit", "events": {"by_action": {"deny": 0, "redirect": 3}, "captured": 3},
           "lakehouse_diff": {"path": "reports/lakehouse_diff.json", "created": 1, "modified": 0, "deleted": 2}}  # fmt: skip
    assert (
        summary_line(rep)
        == "0 denied, 0 redirected, captured 3 (lakehouse diff: 1 created, 0 modified, 2 deleted)"
    )
    rep = {"mode": "enforce", "events": {"by_action": {"deny": 2, "redirect": 5}, "captured": 0}}
    assert summary_line(rep) == "2 denied, 5 redirected"
    rep["host_changes"] = [{"op": "write", "path": "data/lakehouse/x", "rule": "r", "allowed": True}]
    assert summary_line(rep).endswith("1 host change(s) allowed by the policy")
    rep["host_changes"].append({"op": "delete", "path": "data/lakehouse/y", "rule": "r", "allowed": False})
    assert summary_line(rep).endswith("2 host change(s) (1 AGAINST the policy: no kernel layer)")


def test_raw_lines_survive_odd_bytes(tmp_path: Path) -> None:
    """A path with quotes, backslashes and control characters still makes one valid JSON line."""
    if shutil.which("cc") is None:
        pytest.skip(reason="no C compiler")
    lib = native.shim_path()
    assert lib
    raw = tmp_path / "raw.jsonl"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    name = 'we"ird\\na\tme'
    env = {**os.environ, "LD_PRELOAD": lib, native.ENV_NATIVE_EVENTS: str(raw)}
    import subprocess

    subprocess.run(["sh", "-c", f"echo > '{ro}/{name}'"], env=env, capture_output=True)
    ro.chmod(0o700)
    if os.geteuid() == 0:  # root ignores the folder's mode: no refusal to record
        return
    lines = raw.read_text().splitlines()
    assert json.loads(lines[0])["path"].endswith(name)


def test_the_audit_summary_line_through_the_cli(tmp_path: Path) -> None:
    """It said "0 denied, 0 redirected" while lakehouse_diff.json listed the run's changes."""
    from conftest import sandbox_run

    host = make_host(tmp_path / "host")
    r = sandbox_run(host, "A1", sys.executable, "scripts/buggy_selection.py", options=("--mode", "audit"))
    assert r.returncode == 0, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "0 denied, 0 redirected, captured 1 (lakehouse diff: 1 created, 0 modified, 0 deleted)" in last, (
        last
    )
