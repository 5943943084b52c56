"""Reserved names (issue 9, item 6): a step's write to one of the sandbox's own files in the run folder
is refused with an explanation by a built-in rule -- by the guard (real CLI) and by fsspec -- and
what the kernel layer lets a native writer leave there is set aside, never silently replaced."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import RunEnv, sandbox_run

from sandbox.errors import AccessDenied
from sandbox.fs import SandboxFileSystem
from sandbox.guard import install
from sandbox.policy import RESERVED_RUN_FILES, Op
from sandbox.report import LAUNCHER_FILES, STEP_COPY_SUFFIX, set_aside_step_files
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
RESERVED_EXAMPLES = [
    "manifest.json",
    "sandbox_report.json",
    "config/policy.json",
    "logs/sandbox_events.jsonl",
    "logs/select.stderr.log",
    "logs/step.stdout.log",
    "reports/lakehouse_diff.json",
]


@pytest.mark.parametrize("rel", RESERVED_EXAMPLES)
def test_the_policy_denies_a_reserved_name(run_env: RunEnv, rel: str) -> None:
    d = run_env.policy.decide(f"{run_env.ws.run_dir}/{rel}", Op.WRITE)
    assert d.denied and d.rule == "sandbox-reserved-name" and d.hint, d
    assert not run_env.policy.decide(f"{run_env.ws.run_dir}/{rel}", Op.READ).denied
    # the same name elsewhere in the run folder is the step's
    assert not run_env.policy.decide(f"{run_env.ws.run_dir}/data/{rel.rpartition('/')[2]}", Op.WRITE).denied


def test_every_reserved_pattern_is_documented() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in RESERVED_RUN_FILES:
        assert f"`{name}`" in readme, name


def test_the_guard_refuses_relative_and_absolute_writes(run_env: RunEnv) -> None:
    with install(run_env.policy):
        for target in (f"{run_env.ws.run_dir}/manifest.json", "config/policy.json"):
            path = Path(run_env.ws.root) / target if not target.startswith("/") else Path(target)
            with pytest.raises(AccessDenied) as e, open(path, "w"):
                pass
            assert e.value.rule == "sandbox-reserved-name"
    assert not (Path(run_env.ws.run_storage) / "manifest.json").exists()


def test_fsspec_refuses_it(run_env: RunEnv) -> None:
    fs = SandboxFileSystem(policy=run_env.policy)
    with pytest.raises(PermissionError, match="sandbox-reserved-name"):
        fs.pipe_file(f"{run_env.ws.run_dir}/sandbox_report.json", b"{}")


def test_a_step_writing_the_manifest_through_the_cli(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    step = (
        "import os\n"
        "try:\n"
        "    open(os.path.join(os.environ['TV_RUN_DIR'], 'manifest.json'), 'w').write('mine')\n"
        "except PermissionError as e:\n"
        "    print('refused:', e)\n"
        "open('data/manifest.json', 'w').write('mine')\n"
    )
    r = sandbox_run(host, "RES", sys.executable, "-c", step)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "sandbox-reserved-name" in r.stdout, r.stdout
    out = host / RUNS / "RES"
    assert json.loads((out / "manifest.json").read_text())["schema"] == "tv-sandbox-manifest"
    assert (out / "data" / "manifest.json").read_text() == "mine"
    events = [json.loads(x) for x in (out / "logs" / "sandbox_events.jsonl").read_text().splitlines()]
    assert any(e["rule"] == "sandbox-reserved-name" and e["action"] == "deny" for e in events)


@pytest.mark.parametrize("rel", RESERVED_EXAMPLES)
def test_a_workspace_write_that_would_land_on_a_reserved_name_is_denied(run_env: RunEnv, rel: str) -> None:
    """``open("manifest.json", "w")`` from the step's working folder is redirected to
    ``$TV_RUN_DIR/manifest.json``: the decision itself is the reserved rule's, so the kernel
    layer's overlay -- which carries out workspace redirects by itself -- never gets it."""
    d = run_env.policy.decide(f"{run_env.ws.root}/{rel}", Op.WRITE)
    assert d.denied and d.rule == "sandbox-reserved-name" and "$TV_RUN_DIR/" in d.reason, d
    folder = f"{run_env.ws.root}/{rel}".rpartition("/")[0]
    assert run_env.policy.decide_children(folder, Op.WRITE) is None  # decided name by name there
    assert not run_env.policy.decide(f"{run_env.ws.root}/{rel}", Op.READ).denied
    assert run_env.policy.decide(f"{run_env.ws.root}/data/x-{rel.rpartition('/')[2]}", Op.WRITE).action == "redirect"


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_relative_writes_to_reserved_names_are_refused_through_the_cli(tmp_path: Path, kernel: str) -> None:
    """Under the overlay they landed on the sandbox's own files (``1 redirected``) and were moved
    aside at the export; now every layer refuses them with the same explanation."""
    host = make_host(tmp_path / "host")
    step = (
        "import os\n"
        "os.makedirs('config', exist_ok=True)\n"
        "for rel in ('manifest.json', 'sandbox_report.json', 'config/policy.json', 'logs/sandbox_events.jsonl'):\n"
        "    try:\n"
        "        open(rel, 'a').write('mine')\n"
        "        print('written', rel)\n"
        "    except PermissionError as e:\n"
        "        print('refused', rel, 'sandbox-reserved-name' in str(e))\n"
    )
    r = sandbox_run(host, "REL", sys.executable, "-c", step, options=("--kernel", kernel))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n").count("") <= 1 and "written" not in r.stdout, r.stdout
    assert r.stdout.count("True") == 4, r.stdout
    out = host / RUNS / "REL"
    assert not list(out.rglob(f"*{STEP_COPY_SUFFIX}")), list(out.rglob("*"))


def test_what_a_native_writer_left_is_set_aside(tmp_path: Path) -> None:
    """The kernel layer cannot refuse a shell's `> $TV_RUN_DIR/manifest.json`: the launcher moves it
    aside before writing its own (runner: report.set_aside_step_files after the steps)."""
    run = tmp_path / "run"
    (run / "config").mkdir(parents=True)
    (run / "reports").mkdir()
    (run / "manifest.json").write_text("step's")
    (run / "config" / "policy.json").write_text("step's policy")
    (run / f"manifest.json{STEP_COPY_SUFFIX}").write_text("older")
    lines = set_aside_step_files(str(run))
    assert len(lines) == 2 and all("reserved" in ln for ln in lines)
    assert not (run / "manifest.json").exists() and not (run / "config" / "policy.json").exists()
    assert (run / f"manifest.json{STEP_COPY_SUFFIX}-2").read_text() == "step's"
    assert (run / f"config/policy.json{STEP_COPY_SUFFIX}").read_text() == "step's policy"
    assert set_aside_step_files(str(run)) == []
    assert set(LAUNCHER_FILES) <= {n for n in RESERVED_RUN_FILES}


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_a_native_write_to_the_steps_own_log_name_is_kept_aside_not_mixed_in(tmp_path: Path, kernel: str) -> None:
    """The launcher's log of the step's stderr was open in the run folder while the step ran: a
    shell write to ``logs/step.stderr.log`` interleaved with it (the export held
    ``real-stderr\\nR``...). The launcher now writes it beside the workspace and places it after
    the step; the step's file is kept aside, with a warning, and said to be no host change."""
    host = make_host(tmp_path / "host")
    step = 'echo real-stderr >&2; mkdir -p logs; printf "FORGED\\n" > logs/step.stderr.log; echo more >&2'
    r = sandbox_run(host, "LOG", "sh", "-c", step, options=("--kernel", kernel))
    assert r.returncode == 0, r.stderr
    out = host / RUNS / "LOG" / "logs"
    assert (out / "step.stderr.log").read_text() == "real-stderr\nmore\n"
    assert (out / f"step.stderr.log{STEP_COPY_SUFFIX}").read_text() == "FORGED\n"
    assert f"kept as logs/step.stderr.log{STEP_COPY_SUFFIX}" in r.stderr, r.stderr
    assert "reached the host" not in r.stderr and "AGAINST" not in r.stderr, r.stderr


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_a_step_taking_every_aside_name_still_gets_its_status_and_export(tmp_path: Path, kernel: str) -> None:
    """Setting a step's file aside tried ``.from-step``, ``-2``... ``-999`` and then raised: a step
    that made all of them ended the launcher with an internal error, exit 125, nothing exported.
    Now a random suffix follows the first numbered names, and the warning names it."""
    host = make_host(tmp_path / "host")
    step = (
        "import os\n"
        "d = os.environ['TV_RUN_DIR']\n"
        "for rel in ('logs/step.stderr.log', 'sandbox_report.json'):\n"
        "    base = os.path.join(d, rel)\n"
        "    for n in range(1, 1000):\n"
        f"        open(base + '{STEP_COPY_SUFFIX}' + ('' if n == 1 else f'-{{n}}'), 'w').close()\n"
        "    open(base, 'w').write('mine ' + rel)\n"
        "raise SystemExit(3)\n"
    )
    r = sandbox_run(host, "ALL", sys.executable, "-I", "-S", "-c", step, options=("--kernel", kernel))
    assert r.returncode == 3, r.stderr
    out = host / RUNS / "ALL"
    report = json.loads((out / "sandbox_report.json").read_text())
    assert report["steps"][0]["exit_code"] == 3
    assert (out / "logs" / "step.stderr.log").is_file()  # the launcher's own, placed after the step
    for rel in ("logs/step.stderr.log", "sandbox_report.json"):
        [line] = [w for w in report["warnings"] if w.startswith(f"a step wrote {rel},")]
        kept = line.rpartition("kept as ")[2]
        assert kept.startswith(f"{rel}{STEP_COPY_SUFFIX}-") and kept in r.stderr, line
        assert (out / kept).read_text() == f"mine {rel}"


def test_a_step_name_with_no_room_for_the_aside_suffix_is_shortened(tmp_path: Path) -> None:
    """A FIFO at a 255-byte ``logs/<x...>.stderr.log``: adding ``.from-step`` failed with
    ENAMETOOLONG, an internal error, exit 125 and no export. Now the name is cut to fit."""
    host = make_host(tmp_path / "host")
    name = "x" * 244 + ".stderr.log"
    step = (
        f"import os; os.mkfifo(os.path.join(os.environ['TV_RUN_DIR'], 'logs', '{name}')); raise SystemExit(3)"
    )
    r = sandbox_run(host, "LONG", sys.executable, "-I", "-S", "-c", step)
    assert r.returncode == 3, r.stderr
    report = json.loads((host / RUNS / "LONG" / "sandbox_report.json").read_text())
    [line] = [w for w in report["warnings"] if "(not a regular file)" in w]
    kept = line.rpartition("kept as ")[2]
    assert kept == f"logs/{name[: 255 - len(STEP_COPY_SUFFIX)]}{STEP_COPY_SUFFIX}" and kept in r.stderr, line
