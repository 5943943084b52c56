"""The pytest plugin (entry point ``pytest11``), held in a pytester session as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CORPUS = Path(__file__).parent / "corpus"

USER_TESTS = '''
import json
import os

import pytest

SCAN = {"export/TEST/scan.json": json.dumps({"data": [{"symbol": "A", "Value.Traded": 3},
                                                      {"symbol": "B", "Value.Traded": 2}]})}
HERE = os.path.dirname(os.path.abspath(__file__))


def test_after_writes_only_under_the_run_dir(sandbox_host, sandbox_run):
    sandbox_host.add(SCAN)
    result = sandbox_run(os.path.join(HERE, "select_top_universe_after.py"))
    assert result.exit_code == 0
    result.assert_only_run_dir_writes()
    assert result.files == ["data/selected.json", "data/selection_audit.json"]
    assert result.denials == [] and result.native_writes == []
    assert any(e["op"] == "read" and e["path"].endswith("scan.json") for e in result.reads)


def test_before_is_caught_with_the_rule_and_the_line(sandbox_host, sandbox_run):
    sandbox_host.add(SCAN)
    result = sandbox_run(os.path.join(HERE, "select_top_universe_before.py"))
    (denial,) = result.denials
    assert denial["rule"] == "selection-audit-in-lakehouse"
    assert (os.path.basename(denial["file"]), denial["line"]) == ("select_top_universe_before.py", 30)
    assert "$SELECTION_AUDIT" in denial["hint"]
    result.assert_only_run_dir_writes()  # fails: the point of this test file's expected failure


def test_native_write_past_pyfakefs_is_caught(sandbox_host, sandbox_run):
    result = sandbox_run(os.path.join(HERE, "native_write.py"))
    assert result.writes == []  # pyfakefs saw nothing...
    assert result.native_writes == ["data/lakehouse/native.parquet"]  # ...the real twin did
    with pytest.raises(AssertionError, match="native.parquet"):
        result.assert_only_run_dir_writes()
    with pytest.raises(AssertionError, match="past pyfakefs"):
        result.assert_no_native_writes()


@pytest.mark.sandbox_policy("development")
def test_marker_development(sandbox_host, sandbox_run):
    sandbox_host.add(SCAN)
    result = sandbox_run(os.path.join(HERE, "select_top_universe_before.py"))
    assert result.denials == []
    assert [e["rule"] for e in result.writes if "lakehouse" in e["path"]] == ["lakehouse-writable-in-development"]


@pytest.mark.sandbox_policy(os.path.join(HERE, "moved.toml"))
def test_marker_policy_file_and_a_callable(sandbox_host, sandbox_run):
    assert sandbox_host.lakehouse.endswith("/warehouse")

    def step():
        with open(os.path.join(os.environ["TV_RUN_DIR"], "data", "ok.csv"), "w") as fh:
            fh.write("x")
        with open("warehouse/bad.csv", "w") as fh:
            fh.write("x")

    result = sandbox_run(step)
    assert [(e["action"], e["rule"]) for e in result.writes] == [("allow", "run-folder"), ("deny", "warehouse-ro")]
    assert result.files == ["data/ok.csv"]


def test_relative_script_and_a_host_copied_from_a_real_folder(sandbox_host, sandbox_run):
    sandbox_host.copy_from(os.path.join(HERE, "seed"))
    result = sandbox_run("select_top_universe_after.py")  # relative to the real cwd, as written
    result.assert_only_run_dir_writes()
    assert json.loads(open(os.path.join(result.run_dir, "data", "selected.json")).read()) == ["S2", "S1"]


def test_script_function(sandbox_host, sandbox_run):
    result = sandbox_run(os.path.join(HERE, "userstep.py") + ":main", "x")
    assert [(e["path"], e["rule"], e["line"]) for e in result.writes] == [("flag.txt", "workspace-redirect", 4)]


def test_module_function(sandbox_host, sandbox_run, monkeypatch):
    monkeypatch.syspath_prepend(HERE)
    result = sandbox_run("userstep", "--flag")  # a module: its main()
    assert [(e["path"], e["action"]) for e in result.writes] == [("flag.txt", "redirect")]
    assert result.exit_code == 3
'''

MOVED = (
    '[policy]\nname = "moved"\nprofile = "production"\n'
    '[layout]\nlakehouse = "warehouse"\nexports = "scans"\nruns = "runs"\n'
    '[[rule]]\nname = "warehouse-ro"\npaths = ["{lakehouse}/**"]\nops = ["mutate"]\naction = "deny"\n'
    'reason = "read-only"\n'
)
USERSTEP = (
    "import sys\n\ndef main():\n    with open('flag.txt', 'w') as fh:\n        fh.write(sys.argv[1])\n"
    "    raise SystemExit(3)\n"
)


@pytest.fixture
def user_project(pytester: pytest.Pytester) -> pytest.Pytester:
    for name in ("select_top_universe_before.py", "select_top_universe_after.py", "native_write.py"):
        shutil.copy(CORPUS / name, pytester.path / name)
    pytester.makefile(".toml", moved=MOVED)
    pytester.makepyfile(userstep=USERSTEP, test_user=USER_TESTS)
    seed = pytester.path / "seed" / "export" / "TEST"
    seed.mkdir(parents=True)
    rows = [{"symbol": "S1", "Value.Traded": 1}, {"symbol": "S2", "Value.Traded": 5}]
    (seed / "scan.json").write_text(json.dumps({"data": rows}))
    return pytester


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "sandbox_host -- " in out and "sandbox_run -- " in out
    assert "A fake host with the policy's layout" in out


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers", "-p", "no:cacheprovider")
    assert "@pytest.mark.sandbox_policy(name_or_file)" in result.stdout.str()


def test_a_users_tests(user_project: pytest.Pytester) -> None:
    pytest.importorskip("pyarrow", reason="the native write test writes parquet")
    before = sorted(p.name for p in user_project.path.iterdir())
    result = user_project.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7, failed=1)
    out = result.stdout.str()
    # the one failure is the lakehouse write, said in one line with the caller and the rule
    assert "FAILED test_user.py::test_before_is_caught_with_the_rule_and_the_line" in out
    assert "select_top_universe_before.py:30: write data/lakehouse/selection_audit.json -> deny " \
        "(selection-audit-in-lakehouse)" in out
    # nothing landed in the user's project (the native write went to the fake host's real twin,
    # under pytest's temp folder); what is new is pytester's own
    new = {p.name for p in user_project.path.iterdir()} - set(before)
    assert all(n.startswith("runpytest-") or n in ("stdout", "stderr", "__pycache__") for n in new), new
    assert not list(user_project.path.glob("data")) and not list(user_project.path.glob("flag.txt"))
