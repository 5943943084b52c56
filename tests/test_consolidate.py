"""workspace.consolidate (issue 9, item 2): without the overlay, what a step wrote into the workspace
skeleton -- native and shell writes included -- is moved into the run folder, never lost, never
carried through a link out of it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import tree_snapshot

from sandbox import workspace as workspace_mod
from sandbox.policy import Layout
from sandbox.samples import make_host
from sandbox.workspace import CONFLICT_SUFFIX, UNPLACED, Workspace


def _ws(tmp_path: Path) -> tuple[Path, Workspace]:
    host = make_host(tmp_path / "host")
    base = tmp_path / "base"
    base.mkdir()
    return host, workspace_mod.create(host, "R1", Layout(), base_dir=base)


def _sh(ws: Workspace, script: str) -> None:
    """A real non-Python writer (the shell), in the workspace as a step's cwd."""
    subprocess.run(["sh", "-c", script], cwd=ws.root, check=True)


def test_native_and_shell_writes_are_moved_into_the_run_folder(tmp_path: Path) -> None:
    host, ws = _ws(tmp_path)
    before = tree_snapshot(host)
    _sh(
        ws,
        "printf parquet > data/native.parquet; mkdir -p reports/deep && printf csv > reports/deep/r.csv;"
        "printf db > data/pipeline.db; ln -s /etc/passwd data/link; mkdir -p data/empty",
    )
    inode = os.stat(os.path.join(ws.root, "data", "native.parquet")).st_ino
    carried = workspace_mod.consolidate(ws)
    assert carried == ["data/link", "data/native.parquet", "data/pipeline.db", "reports/deep/r.csv"]
    run = Path(ws.run_storage)
    assert (run / "data" / "native.parquet").read_text() == "parquet"
    assert (run / "data" / "native.parquet").stat().st_ino == inode  # moved, not copied
    assert (run / "reports" / "deep" / "r.csv").read_text() == "csv"
    assert os.readlink(run / "data" / "link") == "/etc/passwd"  # moved as a link, never followed
    assert (run / "data" / "empty").is_dir()
    assert not os.path.lexists(os.path.join(ws.root, "data", "native.parquet"))
    # the skeleton is untouched: its links to the host, the mounts and the run folder stay
    assert os.path.islink(os.path.join(ws.root, "scripts"))
    assert os.path.islink(os.path.join(ws.root, "data", "lakehouse"))
    assert os.path.islink(ws.run_dir)
    assert tree_snapshot(host) == before
    assert workspace_mod.consolidate(ws) == []  # nothing twice
    ws.remove()


def test_a_name_the_run_folder_has_keeps_both(tmp_path: Path) -> None:
    _host, ws = _ws(tmp_path)
    (Path(ws.run_storage) / "data" / "x.csv").write_text("guard")
    _sh(ws, "printf shell > data/x.csv")
    assert workspace_mod.consolidate(ws) == [f"data/x.csv{CONFLICT_SUFFIX}"]
    assert (Path(ws.run_storage) / "data" / "x.csv").read_text() == "guard"
    assert (Path(ws.run_storage) / "data" / f"x.csv{CONFLICT_SUFFIX}").read_text() == "shell"
    ws.remove()


def test_a_link_planted_in_the_run_folder_does_not_carry_outside(tmp_path: Path) -> None:
    _host, ws = _ws(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    run = Path(ws.run_storage)
    (run / "data").rmdir()
    (run / "data").symlink_to(outside)  # the step made $TV_RUN_DIR/data a link out of the run
    _sh(ws, "printf n > data/native.parquet")
    carried = workspace_mod.consolidate(ws)
    assert carried == [f"{UNPLACED}/data/native.parquet"]
    assert list(outside.iterdir()) == []
    assert (run / UNPLACED / "data" / "native.parquet").read_text() == "n"
    ws.remove()


def test_nothing_written_nothing_carried(tmp_path: Path) -> None:
    _host, ws = _ws(tmp_path)
    assert workspace_mod.consolidate(ws) == []
    ws.remove()
