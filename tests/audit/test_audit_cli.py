"""`tv-sandbox audit` as a user runs it: outputs, exit statuses, and every bad input in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tree_snapshot

from sandbox.cli import main
from sandbox.errors import EXIT_USAGE

CORPUS = Path(__file__).parent / "corpus"
BEFORE, AFTER = CORPUS / "select_top_universe_before.py", CORPUS / "select_top_universe_after.py"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_the_documented_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, str(BEFORE), str(AFTER), "--format", "json")
    assert code == 1 and err == ""
    doc = json.loads(out)
    assert doc["schema"] == "tv-sandbox-audit" and doc["schema_version"] == 1
    assert doc["profile"] == "production" and doc["policy"] == "production" and doc["static_only"] is False
    before, after = doc["scripts"]
    assert before["file"] == str(BEFORE) and before["dynamic"] == "ok"
    assert set(before) == {"file", "dynamic", "suppressed", "skipped", "notes", "findings", "events"}
    assert set(doc) == {"schema", "schema_version", "profile", "policy", "static_only", "counts", "scripts"}
    keys = {"id", "title", "severity", "source", "file", "line", "detail", "fix", "op", "path", "rule"}
    assert all(set(f) == keys for f in before["findings"])
    ids = {(f["id"], f["source"], f["line"]) for f in before["findings"]}
    # both issues of the design, read from the source and seen while it ran
    assert {("TVS101", "static", 30), ("TVS111", "static", 16), ("TVS201", "dynamic", 30), ("TVS211", "dynamic", 16)} <= ids
    lake = next(f for f in before["findings"] if f["id"] == "TVS201")
    assert lake["op"] == "write" and lake["path"] == "data/lakehouse/selection_audit.json"
    assert lake["rule"] == "selection-audit-in-lakehouse" and "$SELECTION_AUDIT" in lake["fix"]
    assert after["dynamic"] == "ok"
    assert [f for f in after["findings"] if f["severity"] != "info"] == []
    ops = {(e["op"], e["action"], e["rule"]) for e in after["events"]}
    assert ("write", "allow", "run-folder") in ops
    event_keys = {"op", "path", "resolved", "rel", "action", "rule", "target", "reason", "hint", "file", "line", "via"}
    assert all(set(e) == event_keys for e in after["events"])
    assert doc["counts"]["error"] == sum(f["severity"] == "error" for s in doc["scripts"] for f in s["findings"])


def test_text_and_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, str(BEFORE), "--static-only")
    assert code == 1
    assert f"{BEFORE}:30: error TVS101 hard-coded lakehouse write [static]" in out
    assert "fix: write it to $SELECTION_AUDIT" in out
    assert out.splitlines()[-1].startswith("1 script audited (static only; profile production")
    code, out, _ = _cli(capsys, str(BEFORE), "--static-only", "--format", "md")
    assert out.startswith("# tv-sandbox audit")
    assert f"## `{BEFORE}` (worst: error)" in out
    assert "- **error** `TVS101` hard-coded lakehouse write" in out and "  - Fix: write it to $SELECTION_AUDIT" in out


@pytest.mark.parametrize(("fail_on", "before", "info_only"), [("error", 1, 0), ("warning", 1, 0), ("info", 1, 1)])
def test_fail_on(capsys: pytest.CaptureFixture[str], tmp_path: Path, fail_on: str, before: int, info_only: int) -> None:
    relative = tmp_path / "relative.py"
    relative.write_text('open("reports/out.csv", "w").write("x")\n')  # TVS105, info
    assert _cli(capsys, str(BEFORE), "--static-only", "--fail-on", fail_on)[0] == before
    assert _cli(capsys, str(relative), "--static-only", "--fail-on", fail_on)[0] == info_only
    assert _cli(capsys, str(AFTER), "--static-only", "--fail-on", fail_on)[0] == 0


def test_a_folder_is_walked_and_development_changes_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _cli(capsys, str(CORPUS), "--static-only", "--profile", "development", "--format", "json")
    doc = json.loads(out)
    assert [Path(s["file"]).name for s in doc["scripts"]] == sorted(p.name for p in CORPUS.glob("*.py"))
    before = next(s for s in doc["scripts"] if s["file"].endswith("before.py"))
    assert {f["severity"] for f in before["findings"] if f["id"] == "TVS101"} == {"info"}


# -- bad inputs: one line each, the right status, no traceback, nothing written -------------------

Setup = Callable[[Path], list[str]]


def _file(name: str, data: bytes | str) -> Setup:
    def make(d: Path) -> list[str]:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return [str(p)]

    return make


def _fifo(d: Path) -> list[str]:
    os.mkfifo(d / "pipe.py")
    return [str(d)]


def _dangling(d: Path) -> list[str]:
    (d / "gone.py").symlink_to(d / "nowhere.py")
    return [str(d)]


def _empty_dir(d: Path) -> list[str]:
    (d / "empty").mkdir()
    (d / "empty" / "notes.txt").write_text("no scripts here")
    return [str(d / "empty")]


def _policy(text: str) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        (d / "p.toml").write_text(text)
        return [str(AFTER), "--static-only", "--policy", str(d / "p.toml")]

    return make


def _args(*args: str) -> Setup:
    return lambda d: list(args)


USAGE = [
    ("no path", _args(), "name at least one script or folder"),
    ("missing path", _args("no/such/script.py"), "no/such/script.py: no such file or folder"),
    ("empty path", _args(""), "an empty PATH"),
    ("folder without scripts", _empty_dir, "no Python scripts (*.py) in this folder"),
    ("unknown profile", _args(str(AFTER), "--profile", "staging"), "unknown profile 'staging'"),
    ("missing policy", _args(str(AFTER), "--policy", "nope.toml"), "no such policy file"),
    ("policy syntax", _policy("[policy\nname="), "TOML syntax error"),
    ("policy profile", _policy('[policy]\nname="d"\nprofile="development"\n[layout]\nlakehouse="l"\nexports="e"\nruns="r"\n'),
     "this policy is for profile 'development'"),
    ("format", _args(str(AFTER), "--format", "xml"), "argument --format: invalid choice: 'xml'"),
    ("fail-on", _args(str(AFTER), "--fail-on", "fatal"), "argument --fail-on: invalid choice: 'fatal'"),
    ("timeout text", _args(str(AFTER), "--timeout", "soon"), "--timeout 'soon': give a number of seconds"),
    ("timeout zero", _args(str(AFTER), "--timeout", "0"), "--timeout '0': give a number of seconds"),
    ("unknown option", _args(str(AFTER), "--frobnicate"), "unrecognized arguments: --frobnicate"),
    ("bad function", _args(f"{AFTER}:1main"), "after ':' comes a function name"),
    ("no module", _args("no_such_module_tvs:main"), "'no_such_module_tvs': no such file, folder or importable module"),
    ("host not a folder", _args(str(AFTER), "--host", "no/host"), "--host no/host: not a folder"),
    ("bad run id", _args(str(AFTER), "--run-id", "../x"), "--run-id '../x': use letters, digits"),
]

FINDINGS = [
    ("syntax error", _file("broken.py", "def f(:\n    pass\n"), "broken.py:1: error TVS003 syntax error: line 1:"),
    ("binary", _file("blob.py", b"\x7fELF\x00\x01\x02"), "blob.py: error TVS002 not a Python source file: a binary file"),
    ("not utf-8", _file("latin.py", b"x = '\xe9t\xe9'\n"), "latin.py: error TVS002 not a Python source file: not UTF-8"),
    ("fifo", _fifo, "pipe.py: error TVS001 script cannot be read: not a regular file"),
    ("dangling symlink", _dangling, "gone.py: error TVS001 script cannot be read: no such file"),
]


@pytest.mark.parametrize(("name", "setup", "message"), USAGE, ids=[u[0] for u in USAGE])
def test_usage_errors(tmp_path: Path, name: str, setup: Setup, message: str) -> None:
    argv = setup(tmp_path)
    before = tree_snapshot(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert r.returncode == EXIT_USAGE, r.stderr
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("tv-sandbox: error"), r.stderr
    assert message in r.stderr
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize(("name", "setup", "message"), FINDINGS, ids=[f[0] for f in FINDINGS])
def test_unauditable_scripts_are_one_line_findings(tmp_path: Path, name: str, setup: Setup, message: str) -> None:
    argv = setup(tmp_path)
    before = tree_snapshot(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert r.returncode == 1 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and message in lines[0], r.stdout  # the finding, then the summary
    assert "Traceback" not in r.stdout
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("forged", ['{"status": "ok", "error": "", "events": [1]}', "{", "[]"])
def test_a_script_that_forges_the_audits_trace_is_one_finding(tmp_path: Path, forged: str) -> None:
    """The script runs in the process that writes the trace, and can write the file itself: it was
    `internal error: AttributeError` (exit 125); it is the script's finding."""
    script = tmp_path / "forger.py"
    script.write_text(
        "import os, subprocess\n"
        f"subprocess.run(['sh', '-c', 'cat > \"$TV_RUN_DIR/logs/tv_audit_trace.json\"'], input={forged!r}.encode())\n"
        "os._exit(0)\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 1 and r.stderr == "", r.stderr
    found = [ln for ln in r.stdout.splitlines() if "TVS004" in ln]
    assert len(found) == 1 and "its trace tv_audit_trace.json is" in found[0], r.stdout
    assert "Traceback" not in r.stdout



_HOSTILE_TRACES = {
    "sparse-768MiB": "truncate -s 768M \"$T\"",  # the whole file was read: 1.1 GB of memory, growing with it
    "link-to-dev-zero": "rm -f \"$T\"; ln -s /dev/zero \"$T\"",  # json.load read until memory ran out
}


@pytest.mark.parametrize("plant", list(_HOSTILE_TRACES.values()), ids=list(_HOSTILE_TRACES))
def test_a_trace_the_script_made_huge_costs_the_audit_nothing(tmp_path: Path, plant: str) -> None:
    """The audited script can replace its trace: read whole, a sparse 768 MiB one took the audit
    1.1 GB and 4 s (linear in the size), a link to /dev/zero every byte of memory. It is read
    bounded, as the step's logs are, and what is past the bound is the script's TVS004."""
    import resource
    import time

    script = tmp_path / "huge.py"
    script.write_text(
        "import os, subprocess\n"
        f"subprocess.run(['sh', '-c', 'T=\"$TV_RUN_DIR/logs/tv_audit_trace.json\"; {plant}'])\n"
        "os._exit(0)\n"
    )
    limit = 2 << 30  # address space: before the fix a link to /dev/zero would take the machine's memory

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", str(script)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, preexec_fn=bounded,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10
    assert r.returncode == 1 and r.stderr == "", r.stderr
    found = [ln for ln in r.stdout.splitlines() if "TVS004" in ln]
    assert len(found) == 1 and "its trace tv_audit_trace.json is" in found[0], r.stdout
    # the largest child so far: an audit's launcher is ~130 MiB (the peak of an earlier test's
    # child can hide this one's, never make it fail)
    assert after <= max(before, 300 << 20), (before >> 20, after >> 20)
    assert elapsed < 30, elapsed  # ~2 s: the export hashes the sparse file; nothing reads it whole

def test_a_script_that_loops_forever_is_one_timeout_line(tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    shutil.copy(CORPUS / "loops_forever.py", script)
    before = tree_snapshot(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", str(script), "--timeout", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"{script}: error TVS205 script did not finish within the audit's time limit: still running after 2 s "
        "on the fake host; its process tree was ended"
    )
    assert len(lines) == 2 and "Traceback" not in r.stdout
    assert tree_snapshot(tmp_path) == before


def test_ignore_comments_and_skipped_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "tool.py").write_text('# tvs: skip-file\nopen("export/R1/scan.json", "w")\n')
    (tmp_path / "step.py").write_text(
        'open("data/lakehouse/a.csv", "w")  # tvs: ignore[TVS101]\n'
        'open("data/lakehouse/b.csv", "w")  # tvs: ignore[TVS105]\n'
        'open("export/R1/c.json", "w")  # tvs: ignore\n'
    )
    code, out, _ = _cli(capsys, str(tmp_path), "--static-only", "--format", "json")
    doc = json.loads(out)
    step, tool = doc["scripts"]
    assert tool["skipped"].startswith("marked '# tvs: skip-file'") and tool["findings"] == []
    assert [(f["id"], f["line"]) for f in step["findings"]] == [("TVS101", 2)] and step["suppressed"] == 2
    assert code == 1
    _, out, _ = _cli(capsys, str(tmp_path / "tool.py"), "--static-only")
    assert out.splitlines()[0] == f"{tmp_path / 'tool.py'}: skipped: marked '# tvs: skip-file' (e.g. a host-side tool that runs outside the sandbox)"


def test_markdown_review_joins_what_was_read_and_what_was_seen(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _cli(capsys, str(BEFORE), "--format", "md")
    item = out[out.index("- **error** `TVS101`") :].splitlines()[:4]
    assert item[1].startswith("  - Evidence: `open(AUDIT_FILE, \"w\")` writes data/lakehouse/selection_audit.json")
    assert item[2].startswith("  - Seen when it ran (`TVS201`): write data/lakehouse/selection_audit.json: denied")
    assert item[3] == "  - Fix: write it to $SELECTION_AUDIT (= $TV_RUN_DIR/data/selection_audit.json) instead"
    assert "`TVS201`" not in out.replace("(`TVS201`)", "")  # not said twice


def test_constants_that_double_at_each_line_cost_the_static_audit_nothing(tmp_path: Path) -> None:
    """``A1 = A0 + A0`` ... ``A79``: each constant was evaluated afresh at each use (2**79 lookups:
    the audit never ended) and its text would double at each line: each name is evaluated once, and
    a value longer than any path is unknown -- while the short chain is still followed."""
    script = tmp_path / "doubling.py"
    chain = "".join(f"A{i} = A{i - 1} + A{i - 1}\n" for i in range(1, 80))
    script.write_text(f"A0 = 'x'\n{chain}open(A79, 'w')\nB = 'data/lakehouse'\nC = B + '/x.csv'\nopen(C, 'w')\n")
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "audit", str(script), "--static-only"],
        capture_output=True, text=True, cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1 and r.stderr == "", r.stderr
    assert "TVS101" in r.stdout and "data/lakehouse/x.csv" in r.stdout, r.stdout
