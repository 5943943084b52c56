"""Library use (issue 9, items 7 and 8): the README's example runs as written; the guard and fsspec take
what load_policy returns plus the run; the run folder is made on demand; a denial reads as the OS
error it is, with the user's path and at most one of the sandbox's frames in its traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import fsspec
import pytest

from sandbox.errors import AccessDenied
from sandbox.guard import install
from sandbox.loader import load_policy
from sandbox.samples import make_host

README = Path(__file__).parents[1] / "README.md"
RUNS = "artifacts/summaries/runs"


def _readme_block(after: str, lang: str) -> str:
    text = README.read_text()
    section = text[text.index(after) :]
    m = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def test_the_readme_library_example_runs_as_written(tmp_path: Path) -> None:
    code = _readme_block("## As a library", "python")
    expected = _readme_block("## As a library", "text")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected, r.stdout
    hosts = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(hosts) == 1
    lake = hosts[0] / "data" / "lakehouse"
    assert not (lake / "selection_audit.json").exists()
    assert (hosts[0] / RUNS / "R42" / "reports" / "summary.csv").read_text() == "symbol,ret\n"
    assert not (hosts[0] / "reports").exists()  # the host's own reports/ was never made


def test_the_guard_and_fsspec_bind_a_spec_and_make_the_run_folder(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    (host / "artifacts").rename(tmp_path / "no-artifacts")  # not even the runs folder exists
    spec = load_policy("production")
    with install(spec, host=host, run_id="L1"), open(host / "out.txt", "w") as fh:
        fh.write("guard")  # a host path: redirected into the run folder
    fs = fsspec.filesystem("sandbox", policy=spec, host=str(host), run_id="L1")
    fs.pipe_file(f"{host}/fs.txt", b"fsspec")
    run = host / RUNS / "L1"
    assert (run / "out.txt").read_text() == "guard" and (run / "fs.txt").read_bytes() == b"fsspec"
    assert not (host / "out.txt").exists() and not (host / "fs.txt").exists()
    with pytest.raises(PermissionError, match="lakehouse-read-only"):
        fs.pipe_file(f"{host}/data/lakehouse/x.csv", b"")


def test_an_unbound_spec_is_one_clear_type_error(tmp_path: Path) -> None:
    spec = load_policy("production")
    with pytest.raises(TypeError, match=r"pass host= and run_id="):
        install(spec)
    with pytest.raises(TypeError, match=r"pass host= and run_id="):
        fsspec.filesystem("sandbox", policy=spec)


def _denial_traceback(policy_host: Path) -> tuple[AccessDenied, list[traceback.FrameSummary]]:
    spec = load_policy("production")
    with install(spec, host=policy_host, run_id="T1"):
        try:
            with open(policy_host / "data" / "lakehouse" / "x.csv", "w"):
                pass
        except AccessDenied as e:
            return e, traceback.extract_tb(e.__traceback__)
    raise AssertionError("not denied")


def test_a_denial_reads_as_an_os_error_with_one_internal_frame(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    e, frames = _denial_traceback(host)
    assert isinstance(e, PermissionError) and e.errno == 13 and e.strerror == "Permission denied"
    text = "".join(traceback.format_exception_only(type(e), e))
    assert text.startswith(f"PermissionError: [Errno 13] Permission denied: '{host}/data/lakehouse/x.csv' ")
    assert "-- tv-sandbox: rule 'lakehouse-read-only' (write, profile production): " in text
    internal = [f for f in frames if f"{os.sep}sandbox{os.sep}" in f.filename]
    assert len(internal) <= 1, frames
    assert "[resolved: data/lakehouse/x.csv]" in text  # the user's path, not a workspace's


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_a_step_traceback_has_one_sandbox_frame_and_the_users_path(tmp_path: Path, kernel: str) -> None:
    """Through the real CLI, in a sandboxed step: the message shows the path as the script gave it,
    the traceback the host's script (never the temporary workspace's path to it)."""
    host = make_host(tmp_path / "host")
    argv = ["run", "--root", str(host), "--run-id", "TB", "--kernel", kernel, "--"]
    r = subprocess.run(
        [sys.executable, "-m", "sandbox", *argv, sys.executable, "scripts/buggy_selection.py"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    tb = r.stderr[r.stderr.index("Traceback") :]
    assert tb.count(f"{os.sep}sandbox{os.sep}") <= 1, tb
    assert "PermissionError: [Errno 13] Permission denied: 'data/lakehouse/selection_audit.json' -- " in tb
    assert "/ws/data/lakehouse" not in tb and "[resolved:" not in tb
    assert f'File "{os.path.realpath(host)}/scripts/buggy_selection.py", line 3' in tb, tb
    assert "tv-sandbox-TB-" not in tb
    assert "kernel refused" not in r.stderr  # the guard's denial is explained, not guessed at


def test_the_readme_shows_what_users_see() -> None:
    text = README.read_text()
    assert "PermissionError: [Errno 13] Permission denied: 'data/lakehouse/selection_audit.json' -- " in text
    assert "AccessDenied:" not in text


def test_an_fsspec_denial_has_one_internal_frame(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    fs = fsspec.filesystem("sandbox", policy=load_policy("production"), host=str(host), run_id="F1")
    for call in (
        lambda: fs.pipe_file(f"{host}/data/lakehouse/x.csv", b"x"),  # its own method
        lambda: fs.open(f"{host}/data/lakehouse/y.csv", "wb"),  # fsspec's, through _open
        lambda: fs.rm(f"{host}/data/lakehouse/BINANCE_BTCUSDT_1d.csv"),
    ):
        with pytest.raises(AccessDenied) as e:
            call()
        frames = traceback.extract_tb(e.value.__traceback__)
        ours = [f for f in frames if f"{os.sep}sandbox{os.sep}" in f.filename]
        assert len(ours) == 1, frames  # (fsspec's own open() may add its frame above ours)
        assert str(e.value).startswith("[Errno 13] Permission denied: ")


def test_the_readme_shows_the_frame_a_denial_really_has() -> None:
    """The README's denial names the one internal frame a user sees: ``guarded_open`` in
    ``sandbox/guard/_os.py`` at the line of its re-raise (it said line 105 when it was 136)."""
    import inspect
    import re

    from sandbox.guard import _os

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = re.search(r'File "\.\.\./sandbox/guard/_os\.py", line (\d+), in guarded_open\n\s+(.+)\n', readme)
    assert shown, "the README's example traceback"
    lines, first = inspect.getsourcelines(_os.guarded_open)
    raises = [first + i for i, line in enumerate(lines) if line.strip() == shown.group(2).strip()]
    assert int(shown.group(1)) in raises, (shown.group(1), raises)
