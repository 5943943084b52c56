"""Every bad input to `tv-sandbox run`: one clear line on stderr, exit 125, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tree_snapshot

from sandbox.cli import main
from sandbox.errors import EXIT_SANDBOX
from sandbox.samples import make_host

Setup = Callable[[Path], None]


def _nothing(host: Path) -> None:
    pass


def _write(name: str, text: str) -> Setup:
    def setup(host: Path) -> None:
        (host.parent / name).write_text(text)

    return setup


POLICY_HEAD = '[policy]\nname = "p"\nprofile = "production"\n'
LAYOUT = '[layout]\nlakehouse = "data/lakehouse"\nexports = "export"\nruns = "artifacts/summaries/runs"\n'


def _lake_file(host: Path) -> None:
    lake = host / "data" / "lakehouse"
    for f in lake.iterdir():
        f.unlink()
    lake.rmdir()
    lake.write_text("not a folder")


def _lake_dangling(host: Path) -> None:
    _lake_file(host)
    (host / "data" / "lakehouse").unlink()
    (host / "data" / "lakehouse").symlink_to(host / "gone")


def _no_exports(host: Path) -> None:
    for p in sorted((host / "export").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (host / "export").rmdir()


def _exported(host: Path) -> None:
    (host / "artifacts" / "summaries" / "runs" / "R1").mkdir()


def _runs_is_file(host: Path) -> None:
    (host / "artifacts" / "summaries" / "runs").rmdir()
    (host / "artifacts" / "summaries" / "runs").write_text("")


# (id, extra args replacing the defaults, setup, what the line must say)
BAD: list[tuple[str, list[str], Setup, str]] = [
    ("run-id-slash", ["--run-id", "a/b"], _nothing, "invalid RUN_ID"),
    ("run-id-dotdot", ["--run-id", ".."], _nothing, "invalid RUN_ID"),
    ("run-id-empty", ["--run-id", ""], _nothing, "invalid RUN_ID"),
    ("run-id-space", ["--run-id", "R 1"], _nothing, "invalid RUN_ID"),
    ("run-id-unicode", ["--run-id", "Rü"], _nothing, "invalid RUN_ID"),
    # it said: cannot make the workspace (File name too long), pass another --workspace-dir
    ("run-id-too-long", ["--run-id", "R" * 300], _nothing, "at most 100"),
    ("no-root", ["--root", None], _nothing, "required: --root"),
    ("root-missing", ["--root", "{tmp}/nope"], _nothing, "does not exist"),
    ("root-is-file", ["--root", "{tmp}/file"], _write("file", "x"), "is not a folder"),
    (
        "lakehouse-missing",
        [],
        lambda h: os.rename(h / "data" / "lakehouse", h / "data" / "lake2"),
        "layout folder lakehouse",
    ),
    ("lakehouse-is-file", [], _lake_file, "is not a folder"),
    ("lakehouse-dangling", [], _lake_dangling, "dangling symlink"),
    # it said "dangling" of a link to itself
    ("root-loops", ["--root", "{tmp}/loop"], lambda h: (h.parent / "loop").symlink_to(h.parent / "loop"), "loops"),
    ("exports-missing", [], _no_exports, "layout folder exports"),
    ("runs-is-file", [], _runs_is_file, "is not a folder"),
    ("export-exists", [], _exported, "already exported"),
    ("unknown-profile", ["--profile", "staging"], _nothing, "unknown profile 'staging'"),
    ("unknown-mode", ["--mode", "yolo"], _nothing, "unknown mode 'yolo'"),
    ("unknown-kernel", ["--kernel", "maybe"], _nothing, "unknown kernel setting"),
    ("unknown-flag", ["--colour"], _nothing, "unrecognized arguments"),
    ("no-command", ["--no-cmd"], _nothing, "no command to run"),
    ("policy-missing", ["--policy", "{tmp}/none.toml"], _nothing, "no such policy file"),
    ("policy-folder", ["--policy", "{tmp}"], _nothing, "is a folder"),
    (
        "policy-syntax",
        ["--policy", "{tmp}/p.toml"],
        _write("p.toml", "[policy\n"),
        "TOML syntax error",
    ),
    (
        "policy-not-utf8",
        ["--policy", "{tmp}/p.toml"],
        lambda h: (h.parent / "p.toml").write_bytes(b"\xff\xfe["),
        "not UTF-8",
    ),
    (
        "policy-unknown-key",
        ["--policy", "{tmp}/p.toml"],
        _write("p.toml", POLICY_HEAD + LAYOUT + "[extra]\n"),
        "extra: unknown key",
    ),
    (
        "policy-unknown-action",
        ["--policy", "{tmp}/p.toml"],
        _write(
            "p.toml",
            POLICY_HEAD + LAYOUT + '[[rule]]\nname="r"\npaths=["x"]\nops=["write"]\naction="permit"\n',
        ),
        "rule[0].action",
    ),
    (
        "policy-unknown-op",
        ["--policy", "{tmp}/p.toml"],
        _write(
            "p.toml",
            POLICY_HEAD + LAYOUT + '[[rule]]\nname="r"\npaths=["x"]\nops=["chmod"]\naction="allow"\n',
        ),
        "unknown operation 'chmod'",
    ),
    (
        "policy-escaping-pattern",
        ["--policy", "{tmp}/p.toml"],
        _write(
            "p.toml",
            POLICY_HEAD
            + LAYOUT
            + '[[rule]]\nname="r"\npaths=["../../etc/*"]\nops=["write"]\naction="allow"\n',
        ),
        "escapes the workspace",
    ),
    (
        "policy-missing-layout",
        ["--policy", "{tmp}/p.toml"],
        _write("p.toml", POLICY_HEAD + '[layout]\nlakehouse = "data/lakehouse"\nexports = "export"\n'),
        "layout.runs: is required",
    ),
    (
        "policy-wrong-profile",
        ["--policy", "{tmp}/p.toml"],
        _write("p.toml", POLICY_HEAD.replace("production", "development") + LAYOUT),
        "is for profile 'development'",
    ),
    (
        # the policy's floor: a flag of the caller's does not lower it (issue 9)
        "kernel-off-under-a-require-policy",
        ["--policy", "{tmp}/p.toml", "--kernel", "off"],
        _write("p.toml", POLICY_HEAD.replace('"production"\n', '"production"\nkernel = "require"\n') + LAYOUT),
        'requires the kernel layer (kernel = "require"), but --kernel off',
    ),
    ("workspace-in-host", ["--workspace-dir", "{host}/scripts"], _nothing, "lies inside the host"),
    ("workspace-dir-missing", ["--workspace-dir", "{tmp}/nowhere"], _nothing, "does not exist"),
    # a folder the kernel lets nobody write to, root included (issue 12: it was an "internal error")
    ("workspace-dir-not-writable", ["--workspace-dir", "/proc/sys"], _nothing, "is not writable: pass a writable"),
]


def _argv(host: Path, tmp: Path, extra: list[str]) -> list[str]:
    opts = {"--root": str(host), "--run-id": "R1", "--workspace-dir": str(tmp / "wsbase")}
    flags: list[str] = []
    cmd = ["--", sys.executable, "-c", "open('ran', 'w')"]
    it = iter(extra)
    for a in it:
        if a == "--no-cmd":
            cmd = []
        elif a in opts or a in ("--profile", "--mode", "--kernel", "--policy"):
            val = next(it)
            if val is None:
                opts.pop(a, None)
            else:
                opts[a] = val.replace("{tmp}", str(tmp)).replace("{host}", str(host))
        else:
            flags.append(a)
    out = ["run"]
    for k, v in opts.items():
        out += [k, v]
    return out + flags + cmd


@pytest.mark.parametrize(("extra", "setup", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], setup: Setup, says: str
) -> None:
    host = make_host(tmp_path / "host")
    (tmp_path / "wsbase").mkdir()
    setup(host)
    before = tree_snapshot(tmp_path)
    code = main(_argv(host, tmp_path, extra))
    err = capsys.readouterr().err
    assert code == EXIT_SANDBOX == 125, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tv-sandbox: error before the command ran: "), err
    assert says in lines[0], lines[0]
    assert tree_snapshot(tmp_path) == before  # nothing written: not the host, not a workspace


def test_bad_inputs_are_at_least_twenty() -> None:
    assert len(BAD) >= 20


def test_read_only_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A host mounted read-only cannot receive the export: refused before the command runs."""
    host = make_host(tmp_path / "host")
    if subprocess.run(["mount", "--bind", str(host), str(host)], capture_output=True).returncode:
        pytest.skip(reason="bind mounts need root (CI runs as root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(host)], check=True)
        code = main(["run", "--root", str(host), "--run-id", "R1", "--", sys.executable, "-c", "pass"])
        err = capsys.readouterr().err
        assert code == 125 and "read-only" in err and len(err.strip().splitlines()) == 1, err
    finally:
        subprocess.run(["umount", str(host)], check=True)


def test_python_m_sandbox_is_the_same_cli(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox",
            "run",
            "--root",
            str(tmp_path / "x"),
            "--run-id",
            "R1",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 125 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_workspace_errors_carry_an_errno(tmp_path: Path) -> None:
    """The workspace's own errors say why as an OS error does: ``errno`` (and one line)."""
    import errno

    from sandbox import workspace
    from sandbox.errors import WorkspaceError
    from sandbox.policy import Layout

    host = make_host(tmp_path / "host")
    with pytest.raises(WorkspaceError) as ei:
        workspace.create(host, "R1", Layout(), base_dir="/proc/sys")
    assert ei.value.errno == errno.EACCES and ei.value.exit_status == EXIT_SANDBOX
    with pytest.raises(WorkspaceError) as ei:
        workspace.create(host, "R1", Layout(), base_dir=tmp_path / "nowhere")
    assert ei.value.errno == errno.ENOENT and "\n" not in str(ei.value)
    assert not (tmp_path / "nowhere").exists()


def _limited() -> None:
    """The child's memory, capped: the old reader of /dev/zero took 10 GB in 15 s."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("kind", ["dev-zero", "dev-tty", "fifo", "too-big"])
def test_a_policy_that_is_no_regular_file_or_too_big_is_one_line(tmp_path: Path, kind: str) -> None:
    """A FIFO was waited on forever (twice: the early keeper's guess read it first), /dev/zero read
    until the memory ran out. A device is never opened (opening one acts on it): /dev/tty, from
    a session without a terminal, said "cannot be read (No such device or address)"."""
    host = make_host(tmp_path / "host")
    policy = {
        "dev-zero": Path("/dev/zero"),
        "dev-tty": Path("/dev/tty"),
        "fifo": tmp_path / "fifo",
        "too-big": tmp_path / "big.toml",
    }
    path = policy[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "too-big":
        with path.open("wb") as fh:
            fh.truncate(2 << 20)  # sparse: past the 1 MiB a policy may take
    before = tree_snapshot(tmp_path)
    argv = ["run", "--root", str(host), "--run-id", "R1", "--policy", str(path), "--", "true"]
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limited,
        start_new_session=True,  # no controlling terminal
    )
    lines = r.stderr.splitlines()
    assert r.returncode == 125 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"tv-sandbox: error before the command ran: {path}: is "), r.stderr
    assert ("larger than 1 MiB" if kind == "too-big" else "not a regular file") in lines[0]
    assert tree_snapshot(tmp_path) == before
