"""The sweep removes only what provably belongs to a dead launcher of tv-sandbox (issue 9, item 1):
look-alike folders -- the name, an old mtime, with or without a forged marker -- survive it, through
the real CLI too; the demo's sample host lives where no sweep looks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_argv, tree_snapshot

from sandbox import workspace as workspace_mod
from sandbox.policy import Layout
from sandbox.samples import DEMO_PREFIX, make_host

OLD = 1_000_000_000  # 2001: far older than any grace period a sweep by age would allow


def _age(path: Path) -> None:
    for p in [*sorted(path.rglob("*"), reverse=True), path]:
        os.utime(p, (OLD, OLD), follow_symlinks=False)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _dead_workspace(base: Path) -> Path:
    """A workspace made by a launcher that then died without removing it (a real one, SIGKILLed)."""
    code = (
        "import os, sys; from sandbox import workspace as w; from sandbox.policy import Layout; "
        f"ws = w.create({str(make_host(base.parent / 'h'))!r}, 'dead', Layout(), base_dir={str(base)!r}); "
        "print(ws.base, flush=True); os.kill(os.getpid(), 9)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return Path(r.stdout.strip())


def _forge(base: Path, name: str, marker: str | None, mode: int = 0o600, dir_mode: int = 0o700) -> Path:
    d = base / name
    d.mkdir()
    (d / "notes.txt").write_text("precious\n")
    if marker is not None:
        (d / workspace_mod.OWNER_FILE).write_text(marker)
        os.chmod(d / workspace_mod.OWNER_FILE, mode)
    os.chmod(d, dir_mode)
    _age(d)
    return d


def _plant_look_alikes(base: Path) -> list[Path]:
    dead = _dead_pid()
    token = os.urandom(16).hex()
    seal = workspace_mod._seal(token)
    magic = workspace_mod._OWNER_MAGIC
    real_marker = f"{magic}\n{dead} 1 {token}\n"
    fork = base / "tv-sandbox-fork"  # a checkout beside --workspace-dir
    (fork / ".git").mkdir(parents=True)
    (fork / "README.md").write_text("my fork\n")
    _age(fork)
    return [
        _forge(base, "tv-sandbox-my-notes", None),  # name match, old, no marker
        fork,
        _forge(base, "tv-sandbox-R1-0123456789abcdef", f"{dead} 1\n"),  # the old marker format
        _forge(
            base, "tv-sandbox-R1-fedcba9876543210", real_marker
        ),  # a marker whose token does not seal the name
        _forge(base, f"tv-sandbox-R1-{seal}", real_marker, mode=0o644),  # marker readable by others
        _forge(base, f"tv-sandbox-R2-{seal}", real_marker, dir_mode=0o755),  # folder open to others
        _forge(base, f"tv-sandbox-R3-{seal}", "garbage\n"),
        _forge(base, f"tv-sandbox-R4-{seal}", f"{magic}\nx 1 {token}\n"),
    ]


def test_look_alikes_survive_and_a_dead_launchers_workspace_goes(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    planted = _plant_look_alikes(base)
    # a look-alike whose marker is a symlink to a real workspace's marker
    dead_ws = _dead_workspace(base)
    assert dead_ws.is_dir() and workspace_mod.owner_of(str(dead_ws)) is not None
    linked = base / f"tv-sandbox-R9-{dead_ws.name.rpartition('-')[2]}"
    linked.mkdir(mode=0o700)
    (linked / workspace_mod.OWNER_FILE).symlink_to(dead_ws / workspace_mod.OWNER_FILE)
    copied = base / "tv-sandbox-R8-0000000000000000"  # a real marker copied next to other files
    copied.mkdir(mode=0o700)
    shutil.copy2(dead_ws / workspace_mod.OWNER_FILE, copied / workspace_mod.OWNER_FILE)
    before = {p: tree_snapshot(p) for p in [*planted, linked, copied]}
    removed = workspace_mod.sweep(base)
    assert removed == [str(dead_ws)]
    assert not dead_ws.exists()
    for p, snap in before.items():
        assert tree_snapshot(p) == snap, p


def test_an_earlier_versions_dead_workspace_goes_and_its_look_alikes_stay(tmp_path: Path) -> None:
    """Markers of v1 (a launcher of an earlier version, killed) sealed the name with
    blake2b(token): still proved ours, and still only with that seal -- a v1 marker whose name
    carries the v2 seal (the token's first digits), or a v2 marker whose name carries the v1
    seal, is not."""
    from hashlib import blake2b

    base = tmp_path / "base"
    base.mkdir()
    dead = _dead_pid()
    token = os.urandom(16).hex()
    v1_seal = blake2b(token.encode(), digest_size=8).hexdigest()
    v1 = f"tv-sandbox workspace owner v1\n{dead} 1 {token}\n"
    v2 = f"{workspace_mod._OWNER_MAGIC}\n{dead} 1 {token}\n"
    old_ws = _forge(base, f"tv-sandbox-R1-{v1_seal}", v1)
    crossed = [
        _forge(base, f"tv-sandbox-R2-{token[:16]}", v1),
        _forge(base, f"tv-sandbox-R3-{v1_seal}", v2),
    ]
    before = {p: tree_snapshot(p) for p in crossed}
    assert workspace_mod.sweep(base) == [str(old_ws)]
    for p, snap in before.items():
        assert tree_snapshot(p) == snap, p


def test_a_live_launchers_workspace_is_not_swept(tmp_path: Path) -> None:
    host = make_host(tmp_path / "h")
    ws = workspace_mod.create(host, "live", Layout(), base_dir=tmp_path)
    _age(Path(ws.base))
    assert workspace_mod.sweep(tmp_path) == [] and os.path.isdir(ws.base)
    ws.remove()


def test_a_kept_workspace_is_never_swept(tmp_path: Path) -> None:
    host = make_host(tmp_path / "h")
    ws = workspace_mod.create(host, "kept", Layout(), base_dir=tmp_path)
    workspace_mod.keep(ws)
    assert workspace_mod.owner_of(ws.base) is None
    assert workspace_mod.sweep(tmp_path) == [] and os.path.isdir(ws.base)
    # the user's now, even with a marker that seals its name again (the seal holds no secret)
    seal = ws.base.rpartition("-")[2]
    marker = Path(ws.base, workspace_mod.OWNER_FILE)
    marker.write_text(f"{workspace_mod._OWNER_MAGIC}\n{_dead_pid()} 1 {seal}{'0' * 16}\n")
    marker.chmod(0o600)
    assert workspace_mod.sweep(tmp_path) == [] and os.path.isdir(ws.base)
    marker.unlink()
    assert workspace_mod.sweep(tmp_path) == []


def test_a_run_through_the_cli_leaves_look_alikes_alone(tmp_path: Path) -> None:
    """The reproduction of the issue: `tv-sandbox run` once removed tv-sandbox-my-notes (old mtime)."""
    host = make_host(tmp_path / "host")
    base = tmp_path / "base"
    base.mkdir()
    planted = _plant_look_alikes(base)
    dead_ws = _dead_workspace(base)
    before = {p: tree_snapshot(p) for p in planted}
    r = subprocess.run(
        run_argv(host, "X", "true", options=("--workspace-dir", str(base))), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    for p, snap in before.items():
        assert tree_snapshot(p) == snap, p
    assert not dead_ws.exists()
    assert sorted(base.iterdir()) == sorted(planted)


@pytest.mark.parametrize("name", ["tv-sandbox-my-notes"])
def test_a_look_alike_in_the_default_temp_dir_survives(tmp_path: Path, name: str) -> None:
    """No --workspace-dir: the sweep looks in the temp dir (TMPDIR), where users keep things."""
    host = make_host(tmp_path / "host")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    notes = _forge(tmp, name, None)
    before = tree_snapshot(notes)
    env = {**os.environ, "TMPDIR": str(tmp)}
    r = subprocess.run(run_argv(host, "Y", "true"), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert tree_snapshot(notes) == before


def test_the_demo_host_is_where_no_sweep_looks(tmp_path: Path) -> None:
    assert not DEMO_PREFIX.startswith(workspace_mod._PREFIX)
    src = Path(__file__).parents[1] / "sandbox" / "demo.py"
    assert "prefix=DEMO_PREFIX" in src.read_text()
