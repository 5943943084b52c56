"""The dynamic audit: scripts run on a throwaway fake host; what went past pyfakefs is found on the
(sandboxed) real disk and reported; the real disk is never changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tree_snapshot

from sandbox.audit import Severity, audit_paths
from sandbox.kernel import KernelSupport

CORPUS = Path(__file__).parent / "corpus"


def _ids(report: object) -> set[tuple[str, str, str]]:
    return {(f.id, f.severity.label, f.source) for f in report.findings}  # type: ignore[attr-defined]


def test_native_write_is_reported_never_passed() -> None:
    pytest.importorskip("pyarrow", reason="pyarrow writes natively; it is a dev dependency")
    before = tree_snapshot(CORPUS)
    report = audit_paths([str(CORPUS / "native_write.py")])
    f = next(f for f in report.findings if f.id == "TVS204")
    assert f.severity is Severity.ERROR and f.path == "data/lakehouse/native.parquet"
    assert "past pyfakefs" in f.detail
    assert ("TVS101", "error", "static") in _ids(report)  # also read from the source
    assert tree_snapshot(CORPUS) == before


def test_child_process_write_is_reported() -> None:
    report = audit_paths([str(CORPUS / "child_process.py")])
    assert ("TVS121", "warning", "static") in _ids(report)
    f = next(f for f in report.findings if f.id == "TVS204")
    assert f.severity is Severity.ERROR and f.path == "data/lakehouse/from_shell.txt"


def test_native_write_into_the_run_folder_is_info(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow writes natively; it is a dev dependency")
    script = tmp_path / "to_run_dir.py"
    script.write_text(
        "import os\nimport pyarrow as pa, pyarrow.parquet as pq\n"
        "pq.write_table(pa.table({'x': [1]}), os.path.join(os.environ['TV_RUN_DIR'], 'data', 'x.parquet'))\n"
    )
    report = audit_paths([str(script)])
    assert [(f.id, f.severity.label, f.path) for f in report.findings] == [("TVS204", "info", "data/x.parquet")]


def test_function_target_and_caller_lines(tmp_path: Path) -> None:
    script = tmp_path / "steps.py"
    script.write_text(
        "import os\n\ndef helper(p):\n    return open(p, 'w')\n\n"
        "def main():\n    helper('data/lakehouse/x.csv').close()\n    os.remove('export/AUDIT/gone.json')\n"
    )
    report = audit_paths([f"{script}:main"])
    dyn = sorted((f.id, f.line, f.path) for f in report.findings if f.source == "dynamic")
    # the caller is the line of the user's code that asked, through its own helper
    assert ("TVS201", 4, "data/lakehouse/x.csv") in dyn
    assert ("TVS201", 8, "export/AUDIT/gone.json") in dyn
    assert all(f.file == str(script) for f in report.findings)


def test_failures_on_the_fake_host_are_info(tmp_path: Path) -> None:
    script = tmp_path / "needs_input.py"
    script.write_text("open('data/lakehouse/missing.csv').read()\n")
    report = audit_paths([str(script)])
    (f,) = [f for f in report.findings if f.id == "TVS206"]
    assert f.severity is Severity.INFO and "FileNotFoundError" in f.detail and "needs_input.py:1" in f.detail
    assert report.scripts[0].dynamic == "failed"


@pytest.mark.kernel
def test_absolute_writes_never_reach_the_real_disk(tmp_path: Path, kernel_support: KernelSupport) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow writes natively; it is a dev dependency")
    victim = tmp_path / "project"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    script = tmp_path / "escape.py"
    script.write_text(
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        f"open({str(victim / 'keep.txt')!r}, 'w').write('overwritten')\n"
        f"open({str(victim / 'new.txt')!r}, 'w').write('new')\n"
        f"pq.write_table(pa.table({{'x': [1]}}), {str(victim / 'native.parquet')!r})\n"
    )
    before = tree_snapshot(victim)
    report = audit_paths([str(script)])
    assert tree_snapshot(victim) == before
    ids = _ids(report)
    assert ("TVS104", "error", "static") in ids and ("TVS202", "error", "dynamic") in ids
    # the native write was refused by the kernel layer: the script failed there, and it is a finding
    assert any(f.id == "TVS206" and "native.parquet" in f.detail for f in report.findings)
    assert any(f.id == "TVS204" and f.severity is Severity.ERROR and "native.parquet" in f.detail for f in report.findings)


def test_module_function_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "steps.py").write_text("def main():\n    open('data/lakehouse/m.json', 'w').write('{}')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    report = audit_paths(["userpkg.steps:main"])
    assert report.scripts[0].file == str(pkg / "steps.py")
    assert {(f.id, f.file, f.line) for f in report.findings} == {
        ("TVS101", str(pkg / "steps.py"), 2),
        ("TVS201", str(pkg / "steps.py"), 2),
    }


def test_on_a_copy_of_the_users_host(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "data" / "lakehouse").mkdir(parents=True)
    (host / "export" / "R9").mkdir(parents=True)
    (host / "export" / "R9" / "scan.json").write_text('{"data": [{"symbol": "Z", "Value.Traded": 1}]}')
    before = tree_snapshot(host)
    report = audit_paths([str(CORPUS / "select_top_universe_after.py")], host=str(host), run_id="R9")
    (script,) = report.scripts
    assert script.dynamic == "ok" and [f for f in script.findings if f.severity >= Severity.WARNING] == []
    assert ("read", "export/R9/scan.json") in {(e["op"], e["path"]) for e in script.events}
    assert ("write", "$TV_RUN_DIR/data/selection_audit.json", "run-folder") in {
        (e["op"], e["path"], e["rule"]) for e in script.events
    }
    assert tree_snapshot(host) == before  # a copy was used; nothing exported into the user's host


def test_without_the_kernel_layer_native_writes_are_still_reported() -> None:
    pytest.importorskip("pyarrow", reason="pyarrow writes natively; it is a dev dependency")
    before = tree_snapshot(CORPUS)
    report = audit_paths([str(CORPUS / "native_write.py")], kernel="off")
    (f,) = [f for f in report.findings if f.id == "TVS204"]
    assert f.severity is Severity.ERROR and f.path == "data/lakehouse/native.parquet"
    assert "without the kernel layer" in f.detail  # found as a change of the throwaway host
    assert any("kernel layer is turned off" in n for n in report.scripts[0].notes)
    assert tree_snapshot(CORPUS) == before
