"""Issue 9 through the real CLI, once runner/run call what the issue's modules provide: native and
shell denials explained and counted, outputs of every fallback kept, step files at reserved names
set aside, policy rules on host folders bound by the kernel layer, tracebacks naming the host."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import sandbox_run, tree_snapshot

from sandbox.kernel import KernelSupport
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
LAKE_FILE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: no explain shim")


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def _events(host: Path, run_id: str) -> list[dict]:
    path = host / RUNS / run_id / "logs" / "sandbox_events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_a_shell_only_step_is_explained(host: Path, kernel_support: KernelSupport) -> None:
    lake = tree_snapshot(host / "data" / "lakehouse")
    r = sandbox_run(host, "SH", "sh", "-c", f"rm {LAKE_FILE}; echo r > report.txt; true")
    assert r.returncode == 0, r.stderr
    assert "1 denied, 1 redirected" in r.stderr.splitlines()[-1], r.stderr
    deny = [e for e in _events(host, "SH") if e["action"] == "deny"]
    assert [(e["path"], e["rule"], e["layer"]) for e in deny] == [
        (LAKE_FILE, "lakehouse-read-only", "kernel")
    ]
    assert deny[0]["hint"]
    assert (host / RUNS / "SH" / "report.txt").read_text() == "r\n"
    assert tree_snapshot(host / "data" / "lakehouse") == lake


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_pyarrow_redirects_are_counted(host: Path, kernel_support: KernelSupport) -> None:
    pytest.importorskip("pyarrow")
    code = (
        "import pyarrow as pa, pyarrow.parquet as pq; pq.write_table(pa.table({'a': [1]}), 'returns.parquet')"
    )
    r = sandbox_run(host, "PA", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    assert "0 denied, 1 redirected" in r.stderr.splitlines()[-1], r.stderr
    assert (host / RUNS / "PA" / "returns.parquet").is_file()


def test_kernel_off_keeps_native_outputs(host: Path) -> None:
    """--kernel off: sqlite's data/pipeline.db and a shell's data/x.txt reach the run folder."""
    code = (
        "import sqlite3; c = sqlite3.connect('data/pipeline.db'); c.execute('create table t (a)'); c.commit()"
    )
    r = sandbox_run(host, "KO", "sh", "-c", f"{sys.executable} -c \"{code}\"; echo x > data/x.txt",
                    options=("--kernel", "off"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "KO"
    assert (out / "data" / "pipeline.db").is_file() and (out / "data" / "x.txt").read_text() == "x\n"
    assert not (host / "data" / "pipeline.db").exists() and not (host / "data" / "x.txt").exists()


@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_a_step_file_at_a_reserved_name_is_set_aside(host: Path, kernel_support: KernelSupport) -> None:
    r = sandbox_run(host, "RS", "sh", "-c", 'echo mine > "$TV_RUN_DIR/manifest.json"')
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "RS"
    assert json.loads((out / "manifest.json").read_text())["schema"] == "tv-sandbox-manifest"
    assert (out / "manifest.json.from-step").read_text() == "mine\n"
    report = json.loads((out / "sandbox_report.json").read_text())
    assert any("manifest.json" in w and "reserved" in w for w in report["warnings"])
