"""Bad inputs of ``tv-sandbox pipeline`` found before Ray starts, through the real CLI in a
subprocess: one line on stderr, exit 125, nothing written to the host, in seconds. (The manifest's
own checks, key by key, are in ``test_manifest.py``.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .test_pipeline import RUN_ID, cli_cmd, make_host, step

ERROR = "tv-sandbox: error before the command ran: "


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def pipeline(host: Path, *extra: str, env: dict[str, str] | None = None, **kw: Any) -> Any:
    return subprocess.run(
        cli_cmd(host, *extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        **kw,
    )


def one_line(done: Any, says: str) -> None:
    assert done.returncode == 125, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR) and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path, {"one": [step("w", "write", "0")]})


@pytest.mark.parametrize(
    ("tmpdir", "says"),
    [
        ("", "is not an absolute path"),  # Ray put ray/ in the working folder: here, the host's
        ("relative", "is not an absolute path"),  # (one inside the host is refused as such)
        ("{tmp}/a-file", "is not a folder"),  # an internal error (NotADirectoryError) inside Ray
        ("{tmp}/missing/deeper", "does not exist"),  # Ray made it, as mkdir -p
    ],
    ids=["empty", "relative", "file", "missing"],
)
def test_a_tmpdir_an_embedded_ray_cannot_use_is_one_line_and_nothing_is_written(
    host: Path, tmp_path: Path, tmpdir: str, says: str
) -> None:
    (tmp_path / "a-file").write_text("")
    before = snapshot(tmp_path)
    cwd = host if not tmpdir else tmp_path
    done = pipeline(host, env={"TMPDIR": tmpdir.replace("{tmp}", str(tmp_path))}, cwd=cwd)
    one_line(done, f"$TMPDIR {tmpdir.replace('{tmp}', str(tmp_path))!r} {says}")
    assert snapshot(tmp_path) == before


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "no-such-host.invalid:6379"])
def test_an_address_that_answers_nothing_is_one_line_in_seconds(host: Path, address: str) -> None:
    """Ray retries a GCS that does not answer for 14 minutes, in silence."""
    address = address.format(port=closed_port())
    before = snapshot(host)
    done = pipeline(host, "--address", address)
    one_line(done, f"cannot attach to the Ray cluster at {address} (")
    done = pipeline(host, "--address", address, "--json")
    assert done.returncode == 125
    doc = json.loads(done.stdout)  # --json: the document, even for an error
    assert doc["status"] == "error" and address in doc["error"] and doc["run_id"] == RUN_ID
    assert snapshot(host) == before


def limited() -> None:
    """The child's memory, capped: the old reader of /dev/zero took 10 GB in 15 s."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "too-big"])
def test_a_manifest_that_is_no_regular_file_or_too_big_is_one_line(
    host: Path, tmp_path: Path, kind: str
) -> None:
    """A FIFO was waited on forever, /dev/zero read until the memory ran out."""
    manifest = {"dev-zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "too-big": tmp_path / "big.json"}[
        kind
    ]
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "too-big":
        with manifest.open("wb") as fh:
            fh.truncate(17 << 20)  # sparse: past the 16 MiB a manifest may take
    before = snapshot(tmp_path)
    done = pipeline(host, "--manifest", str(manifest), preexec_fn=limited)
    one_line(
        done, f"manifest {manifest}: is " + ("larger than" if kind == "too-big" else "not a regular file")
    )
    assert snapshot(tmp_path) == before


STEPS = "profiles.p_one.steps[0]"
# (id, what the first step becomes -- a JSON text, to write what json.dumps would not --, the key, what is said)
BAD_STEPS = [
    ("argv-nul", '{"name": "w", "run": ["python", "a\\u0000b"]}', f"{STEPS}.run", "NUL"),
    ("shell-nul", '{"name": "w", "run": "echo a\\u0000b"}', f"{STEPS}.run", "NUL"),
    (
        "env-name-equals",
        '{"name": "w", "run": "true", "env": {"A=B": "x"}}',
        f"{STEPS}.env.A=B",
        "without '='",
    ),
    ("env-name-empty", '{"name": "w", "run": "true", "env": {"": "x"}}', f"{STEPS}.env.", "non-empty"),
    ("env-value-nul", '{"name": "w", "run": "true", "env": {"A": "x\\u0000"}}', f"{STEPS}.env.A", "NUL"),
    ("timeout-nan", '{"name": "w", "run": "true", "timeout_s": NaN}', f"{STEPS}.timeout_s", "positive"),
    (
        "timeout-infinity",
        '{"name": "w", "run": "true", "timeout_s": Infinity}',
        f"{STEPS}.timeout_s",
        "positive",
    ),
    ("timeout-1e400", '{"name": "w", "run": "true", "timeout_s": 1e400}', f"{STEPS}.timeout_s", "positive"),
    (
        "timeout-5000-digits",
        '{"name": "w", "run": "true", "timeout_s": ' + "9" * 5000 + "}",
        "",
        "not a manifest",
    ),
    ("step-name-300", '{"name": "' + "s" * 300 + '", "run": "true"}', f"{STEPS}.name", "at most 100"),
]


@pytest.mark.parametrize(("text", "key", "says"), [b[1:] for b in BAD_STEPS], ids=[b[0] for b in BAD_STEPS])
def test_a_step_no_command_could_run_is_refused_before_dispatch(
    host: Path, text: str, key: str, says: str
) -> None:
    """Each of these passed the preflight: the sleeve ran on Ray and failed (126, 'File name too
    long'), exported and summarised, or the command ended on an internal error."""
    path = host / "configs/manifest.json"
    data = json.loads(path.read_text())
    data["profiles"]["p_one"]["steps"][0] = "@STEP@"
    path.write_text(json.dumps(data).replace('"@STEP@"', text))
    before = snapshot(host)
    done = pipeline(host)
    one_line(done, f"manifest {path}: {key}: " if key else f"manifest {path}: ")
    assert says in done.stderr
    assert snapshot(host) == before


def test_a_sleeve_id_too_long_to_name_its_export_is_refused_before_dispatch(host: Path) -> None:
    path = host / "configs/manifest.json"
    data = json.loads(path.read_text())
    data["profiles"]["meta"]["sleeves"][0]["id"] = "s" * 300
    path.write_text(json.dumps(data))
    before = snapshot(host)
    done = pipeline(host)
    one_line(done, "profiles.meta.sleeves[0].id: a sleeve's id must be")
    assert "at most 100 characters" in done.stderr and "s" * 300 not in done.stderr
    assert snapshot(host) == before


def test_a_run_id_too_long_to_name_its_folders_is_one_line(host: Path) -> None:
    """300 characters: an internal error (ENAMETOOLONG) once the scans' folder was looked at."""
    before = snapshot(host)
    done = subprocess.run(
        [*cli_cmd(host)[:-1], "r" * 300], capture_output=True, text=True, timeout=60, check=False
    )
    one_line(done, "invalid RUN_ID")
    assert "at most 100" in done.stderr
    assert snapshot(host) == before


@pytest.mark.parametrize("how", ["workspace-dir", "tmpdir"])
def test_a_workspace_folder_the_kernel_refuses_is_one_line_before_dispatch(host: Path, how: str) -> None:
    """Root passes ``access(W_OK)`` on /proc, where no folder can be made: each sleeve failed in
    its worker (exit 1, a summary on the host) where ``tv-sandbox run`` says so at once (125)."""
    if os.geteuid() != 0:
        pytest.skip(reason="as a user, /proc is refused by its permissions, before any probe")
    before = snapshot(host)
    if how == "workspace-dir":
        done = pipeline(host, "--workspace-dir", "/proc")
    else:
        done = pipeline(host, env={"TMPDIR": "/proc"})
    one_line(done, "cannot make the run's workspace in /proc (")
    assert snapshot(host) == before


@pytest.mark.parametrize("where", ["data/lakehouse", "scratch"])
def test_a_ray_tmpdir_inside_the_host_is_one_line_and_nothing_is_written(host: Path, where: str) -> None:
    """An embedded Ray keeps its session in $RAY_TMPDIR/ray: one in the lakehouse ran the
    pipeline (exit 0) with Ray's session folder left in the lakehouse."""
    before = snapshot(host)
    inside = host / where
    done = pipeline(host, env={"RAY_TMPDIR": str(inside)})
    one_line(done, f"$RAY_TMPDIR {inside} lies inside the host")
    assert "set RAY_TMPDIR" in done.stderr
    assert snapshot(host) == before
