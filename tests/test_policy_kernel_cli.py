"""A policy's rule on a host folder outside the mounts binds the kernel layer too (issue 9, item 9),
through the real CLI: a shell's write there is refused by the kernel and explained by the rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import sandbox_run

from sandbox.kernel import KernelSupport
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
POLICY = """[policy]
name = "cfg"
profile = "production"
[layout]
lakehouse = "data/lakehouse"
exports = "export"
runs = "artifacts/summaries/runs"
[[rule]]
name = "configs-read-only"
paths = ["configs", "configs/**"]
ops = ["mutate"]
action = "deny"
reason = "configs are shared"
hint = "copy them to $TV_RUN_DIR/config/"
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: no explain shim")
@pytest.mark.kernel("landlock", "mount_namespace", "overlay")
def test_a_folder_rule_binds_the_kernel_layer(tmp_path: Path, kernel_support: KernelSupport) -> None:
    host = make_host(tmp_path / "host")
    pol = tmp_path / "p.toml"
    pol.write_text(POLICY)
    r = sandbox_run(host, "CF", "sh", "-c", "echo x > configs/new.json; true", options=("--policy", str(pol)))
    assert r.returncode == 0, r.stderr
    events = [
        json.loads(x) for x in (host / RUNS / "CF" / "logs" / "sandbox_events.jsonl").read_text().splitlines()
    ]
    deny = [(e["path"], e["rule"], e["layer"]) for e in events if e["action"] == "deny"]
    assert deny == [("configs/new.json", "configs-read-only", "kernel")], deny
    assert not (host / RUNS / "CF" / "configs").exists() and not (host / "configs" / "new.json").exists()
