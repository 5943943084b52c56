"""Exit statuses that cannot be confused (Docker's `docker run` convention), through the real CLI:
the command's own status, 125 for tv-sandbox's own errors, 126 cannot execute, 127 not found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_argv, sandbox_run

from sandbox.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SANDBOX
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def test_the_constants_are_dockers() -> None:
    assert (EXIT_SANDBOX, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND) == (125, 126, 127)


@pytest.mark.parametrize("status", [1, 2, 3, 70])
def test_the_commands_own_status_passes_through(host: Path, status: int) -> None:
    """`make` and `python missing.py` exit 2: that is the step's failure, never tv-sandbox's."""
    r = sandbox_run(host, f"S{status}", sys.executable, "-c", f"raise SystemExit({status})")
    assert r.returncode == status, r.stderr
    assert "error" not in r.stderr.splitlines()[-1]


def test_python_missing_script_is_the_commands_2(host: Path) -> None:
    r = sandbox_run(host, "M", sys.executable, "scripts/no_such_script.py")
    assert r.returncode == 2 and "can't open file" in r.stderr, r.stderr


def test_a_command_not_found_is_127(host: Path) -> None:
    r = sandbox_run(host, "NF", "tv-sandbox-no-such-command")
    assert r.returncode == EXIT_NOT_FOUND, r.stderr
    assert "tv-sandbox-no-such-command" in r.stderr and "No such file" in r.stderr, r.stderr
    assert "lakehouse" not in r.stderr


def test_a_command_that_cannot_be_executed_is_126(host: Path, tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    r = sandbox_run(host, "NX", str(script))
    assert r.returncode == EXIT_CANNOT_EXECUTE, r.stderr
    assert "Permission denied" in r.stderr, r.stderr


def test_an_error_before_the_command_ran_is_125_and_says_so(host: Path) -> None:
    r = sandbox_run(host, "bad/id", "true")
    assert r.returncode == EXIT_SANDBOX
    assert r.stderr.startswith("tv-sandbox: error before the command ran: invalid RUN_ID"), r.stderr


def test_a_usage_error_of_argparse_is_125(host: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sandbox", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == EXIT_SANDBOX and "invalid choice" in r.stderr


def test_help_documents_the_statuses() -> None:
    r = subprocess.run([sys.executable, "-m", "sandbox", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for word in ("125", "126", "127", "Docker"):
        assert word in r.stdout, r.stdout


def test_readme_documents_the_statuses() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for word in ("`125`", "`126`", "`127`"):
        assert word in readme
    assert "`2` for any error" not in readme


# -- verify -----------------------------------------------------------------------------------


def test_verify_a_run_folder(host: Path) -> None:
    r = sandbox_run(host, "V", sys.executable, "-c", "open('data/x.txt', 'w').write('x')")
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "V"
    ok = subprocess.run([sys.executable, "-m", "sandbox", "verify", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0 and "matches" in ok.stderr, ok.stderr
    (out / "data" / "x.txt").write_text("y")  # same size, other content
    bad = subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", str(out)], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "content differs" in bad.stderr and "data/x.txt" in bad.stderr
    (out / "manifest.json").unlink()
    gone = subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", str(out)], capture_output=True, text=True
    )
    assert gone.returncode == 1 and "cannot read the manifest" in gone.stderr
    assert gone.stderr.splitlines() == [
        f"tv-sandbox: {out} does NOT verify: cannot read the manifest: {out / 'manifest.json'}: "
        "No such file or directory"
    ], gone.stderr  # one line: no "does NOT match ... (1 problems)" after it
    none = subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", str(out / "nope")], capture_output=True, text=True
    )
    assert none.returncode == EXIT_SANDBOX and "is not a folder" in none.stderr
    # verify runs no command of the user's: no "before the command ran" in its one line
    assert none.stderr.startswith(f"tv-sandbox: error: {out / 'nope'} is not a folder"), none.stderr


def _edit(key: str, value: object) -> Callable[[Path], None]:
    def edit(m: Path) -> None:
        doc = json.loads(m.read_text())
        if "." in key:  # files.0.size
            top, i, field = key.split(".")
            doc[top][int(i)][field] = value
        else:
            doc[key] = value
        m.write_text(json.dumps(doc))

    return edit


def _replace(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(m: Path) -> None:
        m.rename(m.with_name("manifest.orig"))
        make(m)

    return edit


TAMPERED: list[tuple[str, Callable[[Path], None], str]] = [
    ("brace", lambda m: m.write_text("{"), "is not valid JSON: Expecting property name"),
    ("deep", lambda m: m.write_text("[" * 100_000), "is not valid JSON: maximum recursion depth"),
    ("not-utf8", lambda m: m.write_bytes(b"\xff\xfe{"), "is not valid JSON"),
    ("a-list", lambda m: m.write_text("[]"), "is not a tv-sandbox manifest"),
    ("version", _edit("schema_version", 99), "has schema_version 99"),
    ("files-not-a-list", _edit("files", {}), 'is not a valid tv-sandbox manifest: files is not a list'),
    ("file-not-object", _edit("files", [1]), "files[0] is not an object"),
    ("size-a-string", _edit("files.0.size", "7"), 'files[0]["size"] is not an integer'),
    ("mode-a-string", _edit("files.0.mode", "644"), 'files[0]["mode"] is not an integer'),
    ("size-a-bool", _edit("files.0.size", True), 'files[0]["size"] is not an integer'),
    ("dir-path-a-list", _edit("dirs", [{"path": ["x"]}]), 'dirs[0]["path"] is not a string'),
    ("link-no-target", _edit("symlinks", [{"path": "l"}]), 'symlinks[0]["target"] is not a string'),
    ("a-folder", _replace(lambda m: m.mkdir()), "manifest.json is not a regular file"),
    ("a-fifo", _replace(lambda m: os.mkfifo(m)), "manifest.json is not a regular file"),  # never waited on
    ("a-symlink", _replace(lambda m: m.symlink_to("manifest.orig")), "manifest.json is a symlink"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = make_host(tmp_path_factory.mktemp("verify") / "host")
    r = sandbox_run(host, "V", sys.executable, "-c", "open('data/x.txt', 'w').write('x')")
    assert r.returncode == 0, r.stderr
    return host / RUNS / "V"


@pytest.mark.parametrize(("name", "tamper", "why"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_a_tampered_manifest_does_not_verify_in_one_line(
    exported: Path, tmp_path: Path, name: str, tamper: Callable[[Path], None], why: str
) -> None:
    """Exit 1 -- the folder does not verify -- never 125 ("internal error: SystemError..." before)."""
    out = tmp_path / "V"
    shutil.copytree(exported, out, symlinks=True)
    tamper(out / "manifest.json")
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", str(out)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1, r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith(f"tv-sandbox: {out} does NOT verify: cannot read the manifest: "), line
    assert why in line, line


def test_verify_help_and_readme_give_its_statuses() -> None:
    for args in (["verify", "--help"], ["--help"]):
        r = subprocess.run([sys.executable, "-m", "sandbox", *args], capture_output=True, text=True)
        assert r.returncode == 0
        text = " ".join(r.stdout.split())
        assert "0 the" in text and "125 RUN_FOLDER is not a folder" in text, text
        assert "missing, unreadable or not a valid" in text, text
        assert "it cannot be checked" not in text
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert (
        "`1` when it does not verify -- one line per difference, or one line when its `manifest.json` "
        "is missing, unreadable or not a valid manifest" in readme
    )
    assert "`125` when `RUN_FOLDER` is not a folder" in readme


# -- policies by name, TV_PROFILE ---------------------------------------------------------------


def test_a_built_in_policy_by_name(tmp_path: Path) -> None:
    """`--policy source-layout` selects the built-in policy (it was "no such policy file")."""
    from sandbox.loader import load_policy

    host = make_host(tmp_path / "src", layout=load_policy("source-layout").layout)
    r = subprocess.run(
        run_argv(
            host,
            "SL",
            sys.executable,
            "-c",
            "open('reports/r.txt', 'w').write('r')",
            options=("--policy", "source-layout"),
        ),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((host / "data/artifacts/summaries/runs/SL/sandbox_report.json").read_text())
    assert rep["policy"]["name"] == "source-layout"


def test_an_unknown_policy_name_lists_the_built_ins(host: Path) -> None:
    r = sandbox_run(host, "U", "true", options=("--policy", "sourcelayout"))
    assert r.returncode == EXIT_SANDBOX
    assert "source-layout" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_unknown_tv_profile_warns_before_production(host: Path) -> None:
    env = {**os.environ, "TV_PROFILE": "developement"}
    r = subprocess.run(run_argv(host, "TP", "true"), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "TV_PROFILE" in ln]
    assert len(warn) == 1 and "developement" in warn[0] and "production" in warn[0], r.stderr
    rep = json.loads((host / RUNS / "TP" / "sandbox_report.json").read_text())
    assert rep["profile"] == "production"


# -- policies bind every layer alike -------------------------------------------------------------

POLICY = """[policy]
name = "custom"
profile = "production"
[layout]
lakehouse = "data/lakehouse"
exports = "export"
runs = "artifacts/summaries/runs"
"""


def test_a_rule_the_kernel_layer_cannot_enforce_is_refused_at_load(host: Path, tmp_path: Path) -> None:
    """`deny configs/*.yaml` bound Python only (shell edits landed, unexplained): now refused."""
    pol = tmp_path / "glob.toml"
    pol.write_text(
        POLICY + '[[rule]]\nname = "yaml"\npaths = ["configs/*.yaml"]\nops = ["mutate"]\naction = "deny"\n'
        'reason = "configs are read-only"\n'
    )
    r = sandbox_run(host, "G", "true", options=("--policy", str(pol)))
    assert r.returncode == EXIT_SANDBOX
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "rule 'yaml'" in line and "kernel layer" in line, line


def test_a_folder_rule_is_a_kernel_bind(host: Path, tmp_path: Path) -> None:
    from sandbox.loader import load_policy

    pol = tmp_path / "folders.toml"
    pol.write_text(
        POLICY
        + '[[rule]]\nname = "configs"\npaths = ["configs", "configs/**"]\nops = ["mutate"]\naction = "deny"\n'
        'reason = "configs are read-only"\n'
        '[[rule]]\nname = "cache"\npaths = ["data/cache/**"]\nops = ["all"]\naction = "allow"\n'
    )
    spec = load_policy(pol)
    paths = spec.bind(host=host, run_id="K").kernel_paths()
    assert paths.readonly == ("configs",) and paths.writable == ("data/cache",)
    assert load_policy().bind(host=host, run_id="K").kernel_paths().readonly == ()


@pytest.mark.parametrize("why", ["run-id", "policy", "kernel-off"])
def test_a_refused_or_unkernelled_run_leaves_no_process_behind(host: Path, tmp_path: Path, why: str) -> None:
    """The launcher forks its step's keeper before the preflight (kernel._early.prefork): a run
    refused by the preflight, or one that runs without it, ends it -- nothing of it outlives the
    launcher."""
    tag = f"tvs-leftover-{os.getpid()}-{why}"
    if why == "run-id":
        r = sandbox_run(host, "bad id", sys.executable, "-c", "pass", tag)
        assert r.returncode == EXIT_SANDBOX
    elif why == "policy":
        r = sandbox_run(
            host, "R1", sys.executable, "-c", "pass", tag, options=("--policy", str(tmp_path / "none.toml"))
        )
        assert r.returncode == EXIT_SANDBOX
    else:
        r = sandbox_run(host, "R1", sys.executable, "-c", "pass", tag, options=("--kernel", "off"))
        assert r.returncode == 0, r.stderr
    time.sleep(0.3)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if tag.encode() in fh.read():
                    left.append(pid)
        except OSError:
            pass
    assert left == []
