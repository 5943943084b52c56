"""The static audit: findings read from the AST and decided by the policy (never run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.audit.findings import CATALOGUE, Severity
from sandbox.audit.judge import Judge
from sandbox.audit.static import audit_source
from sandbox.loader import load_policy

CORPUS = Path(__file__).parent / "corpus"


def _audit(source: str, profile: str = "production", policy: str | None = None) -> list[tuple[str, str, int]]:
    judge = Judge(load_policy(policy, profile=profile))
    return [(f.id, f.severity.label, f.line or 0) for f in audit_source(source, "s.py", judge)]


def test_before_script_has_both_issues_of_the_design_with_its_fix() -> None:
    path = CORPUS / "select_top_universe_before.py"
    found = audit_source(path.read_text(), str(path), Judge(load_policy()))
    by_id = {f.id: f for f in found}
    audit = by_id["TVS101"]
    assert audit.severity is Severity.ERROR and audit.line == 30
    assert "data/lakehouse/selection_audit.json" in audit.detail and "AUDIT_FILE" in audit.detail
    assert audit.rule == "selection-audit-in-lakehouse"
    assert "$SELECTION_AUDIT" in audit.fix  # the design's fix, from the policy rule's own hint
    export = by_id["TVS111"]
    assert export.severity is Severity.WARNING and export.line == 16
    assert "--scan-dir" in export.fix and "$TV_SCAN_DIR" in export.fix


def test_after_script_has_nothing_at_warning() -> None:
    path = CORPUS / "select_top_universe_after.py"
    found = audit_source(path.read_text(), str(path), Judge(load_policy()))
    assert [f for f in found if f.severity >= Severity.WARNING] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('open("data/lakehouse/x.csv", "w")', ("TVS101", "error", 1)),
        ('import os\nos.makedirs(os.path.join("data", "lakehouse", "new"))', ("TVS101", "error", 2)),
        ('from pathlib import Path\n(Path("data") / "lakehouse" / "a.json").write_text("x")', ("TVS101", "error", 2)),
        ('name = input()\nopen(f"data/lakehouse/{name}.json", "a")', ("TVS101", "error", 2)),
        ('import json\nOUT = "data/lakehouse/portfolio_candidates.json"\ndef f(x):\n    json.dump(x, open(OUT, "w"))',
         ("TVS101", "error", 4)),
        ('import json\nAUDIT = "data/lakehouse/selection_audit.json"\ndef save(path, data):\n'
         '    with open(path, "w") as fh:\n        json.dump(data, fh)\nsave(AUDIT, {})', ("TVS101", "error", 6)),
        ('open("export/R1/scan.json", "w")', ("TVS102", "error", 1)),
        ('open("artifacts/summaries/runs/2024-01-01/report.md", "w")', ("TVS103", "warning", 1)),
        ('open("/var/tmp/out.csv", "w")', ("TVS104", "error", 1)),
        ('import os\nopen(os.path.expanduser("~/results.csv"), "w")', ("TVS104", "error", 2)),
        ('open("reports/out.csv", "w")', ("TVS105", "info", 1)),
        ('import os\np = os.getenv("SELECTION_AUDIT", "data/lakehouse/selection_audit.json")', ("TVS107", "warning", 2)),
        ('import os\np = os.environ.get("TV_RUN_DIR", "artifacts/summaries/runs/x")', ("TVS107", "warning", 2)),
        ('import os\nopen(os.environ.get("OUT_DIR", "data/lakehouse") + "/x.csv", "w")', ("TVS107", "warning", 2)),
        ('import glob\nfiles = glob.glob("export/*/*.json")', ("TVS111", "warning", 2)),
        ('import subprocess\nsubprocess.run("make all", shell=True)', ("TVS121", "warning", 2)),
        ('import os\nos.system("sh build.sh")', ("TVS121", "warning", 2)),
        ('import subprocess\nsubprocess.check_call(["make", "report"])', ("TVS122", "warning", 2)),
        ('import pandas as pd\npd.DataFrame().to_parquet("data/lakehouse/bars.parquet")', ("TVS101", "error", 2)),
        ('import pandas as pd\npd.DataFrame().to_parquet("data/bars.parquet")', ("TVS131", "warning", 2)),
        ('import sqlite3\nsqlite3.connect("cache.db")', ("TVS131", "warning", 2)),
        ('import numpy as np\nnp.save("data/lakehouse/a.npy", [1])', ("TVS101", "error", 2)),
        ('import argparse\nap = argparse.ArgumentParser()\nap.add_argument("--out", default="data/lakehouse/o.json")\n'
         'args = ap.parse_args()\nopen(args.out, "w")', ("TVS101", "error", 5)),
    ],
)
def test_each_construct(source: str, expected: tuple[str, str, int]) -> None:
    assert expected in _audit(source)


@pytest.mark.parametrize(
    "source",
    [
        'import os\nopen(os.path.join(os.environ["TV_RUN_DIR"], "data", "x.csv"), "w")',
        'import os\nfrom pathlib import Path\n(Path(os.environ["TV_RUN_DIR"]) / "reports" / "r.md").write_text("x")',
        'import os\nopen(os.environ.get("SELECTION_AUDIT") or "fallback.json", "w")',
        'import os\nscan = os.environ.get("TV_SCAN_DIR", "export/R1")',  # a read default: fine
        'open("data/lakehouse/bars.csv").read()',  # reading the lakehouse is what it is for
        'import subprocess, sys\nsubprocess.run([sys.executable, "step.py"])',  # a Python child: guarded
        'import tempfile\nopen(tempfile.mktemp(), "w")',  # computed: for the dynamic audit
        'text = "data/lakehouse/x"\nlabel = text.replace("/", "_")',  # str.replace is not a rename
        'def save(path):\n    open(path, "w")\nimport os\nsave(os.environ["TV_RUN_DIR"] + "/x")',
    ],
)
def test_clean_constructs(source: str) -> None:
    assert [f for f in _audit(source) if f[1] != "info"] == []


def test_decided_by_the_policy_not_by_patterns(tmp_path: Path) -> None:
    """Another layout moves the lakehouse: the same literal is judged by that policy's decision."""
    policy = tmp_path / "moved.toml"
    policy.write_text(
        '[policy]\nname = "moved"\nprofile = "production"\n'
        '[layout]\nlakehouse = "warehouse"\nexports = "scans"\nruns = "runs"\n'
        '[[rule]]\nname = "warehouse-ro"\npaths = ["{lakehouse}/**"]\nops = ["mutate"]\naction = "deny"\n'
        'reason = "read-only"\nhint = "use $TV_RUN_DIR/data"\n'
    )
    src = 'open("data/lakehouse/x.csv", "w")\nopen("warehouse/x.csv", "w")\nimport glob\nglob.glob("scans/*")'
    found = _audit(src, policy=str(policy))
    assert ("TVS105", "info", 1) in found  # no longer the lakehouse: redirected like any relative write
    assert ("TVS101", "error", 2) in found
    assert ("TVS111", "warning", 4) in found


def test_development_profile_allows_the_lakehouse_so_it_is_info() -> None:
    assert _audit('open("data/lakehouse/x.csv", "w")', profile="development") == [("TVS101", "info", 1)]


def test_kernel_required_policy_makes_shells_info(tmp_path: Path) -> None:
    text = (Path(load_policy().source).read_text()).replace('kernel = "warn"', 'kernel = "require"')
    policy = tmp_path / "strict.toml"
    policy.write_text(text)
    assert _audit('import os\nos.system("make")', policy=str(policy)) == [("TVS121", "info", 2)]


def test_every_id_has_a_title_and_a_fix() -> None:
    for kind in CATALOGUE.values():
        assert kind.id.startswith("TVS") and len(kind.id) == 6 and kind.title and kind.fix


def test_the_library_never_imports_pytest_or_pyfakefs() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sandbox, sandbox.cli, sandbox.audit, sandbox.audit.static, sandbox.audit.dynamic, "
        "sandbox.audit.render\nprint(sorted(m for m in ('pytest', '_pytest', 'pyfakefs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
