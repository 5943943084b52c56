"""The workspace overlay: a write of any process to a relative path lands in the upper folder
(the run folder), a delete becomes a whiteout there, and the host folder stays byte-identical."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from kernel_helpers import py, sh, snapshot

from sandbox.kernel import Bind, KernelPlan, Overlay

pytestmark = pytest.mark.kernel("mount_namespace", "overlay")


@pytest.fixture
def layers(tree):  # type: ignore[no-untyped-def]
    host = tree(
        "host", {"code.py": "print('hi')\n", "data/prices.csv": "a,b\n1,2\n", "data/old.log": "log\n"}
    )
    return host, tree("run"), tree("ovl-work"), tree("ws")


def _plan(
    host: Path, run: Path, work: Path, ws: Path, *, landlock: bool = True, extra: tuple[Bind, ...] = ()
) -> KernelPlan:
    return KernelPlan(
        writable=(),
        overlays=(Overlay((str(host),), str(run), str(work), str(ws)),),
        binds=extra,
        readonly_root=True,
        landlock=landlock,
        namespace=True,
    )


def test_relative_shell_writes_land_in_the_upper_folder(kernel_support: object, layers) -> None:  # type: ignore[no-untyped-def]
    host, run, work, ws = layers
    before = snapshot(host)
    script = "set -e; cat code.py > /dev/null; mkdir -p out; echo r > out/result.txt; echo c >> data/prices.csv; chmod 600 code.py"
    r = sh(script, _plan(host, run, work, ws), cwd=ws)
    assert r.code == 0, r.err
    assert (run / "out" / "result.txt").read_text() == "r\n"
    assert (run / "data" / "prices.csv").read_text() == "a,b\n1,2\nc\n"  # copied up, then appended
    assert stat.S_IMODE((run / "code.py").stat().st_mode) == 0o600  # a metadata copy-up
    assert snapshot(host) == before


def test_delete_of_a_lower_file_is_a_whiteout(kernel_support: object, layers) -> None:  # type: ignore[no-untyped-def]
    host, run, work, ws = layers
    before = snapshot(host)
    r = sh("set -e; rm data/old.log; test ! -e data/old.log", _plan(host, run, work, ws), cwd=ws)
    assert r.code == 0, r.err
    st = os.lstat(run / "data" / "old.log")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # overlayfs whiteout: char device 0/0
    assert snapshot(host) == before


def test_isolated_python_writes_are_redirected(kernel_support: object, layers) -> None:  # type: ignore[no-untyped-def]
    host, run, work, ws = layers
    before = snapshot(host)
    r = py("open('data/prices.csv', 'w').write('new')", _plan(host, run, work, ws), cwd=ws)
    assert r.code == 0, r.err
    assert (run / "data" / "prices.csv").read_text() == "new"
    assert snapshot(host) == before


def test_host_path_stays_read_only_while_the_overlay_is_writable(kernel_support: object, layers) -> None:  # type: ignore[no-untyped-def]
    host, run, work, ws = layers
    r = sh(f"echo x > {host}/code.py", _plan(host, run, work, ws), cwd=ws)
    assert r.code != 0 and "Read-only file system" in r.err


def test_mount_points_are_made_in_memory_not_on_the_disk(kernel_support: object, layers, tree) -> None:  # type: ignore[no-untyped-def]
    """An overlay's ``points`` show as empty folders in the merged view (where a bind can sit)
    without a write to the upper layer or to the folder the tmpfs covers, which the step cannot
    write either."""
    host, run, work, ws = layers
    points, store = tree("points"), tree("store")
    plan = KernelPlan(
        writable=(),
        overlays=(Overlay((str(points), str(host)), str(run), str(work), str(ws), points=("runs/R1", "data")),),
        binds=(Bind(str(store), str(ws / "runs" / "R1"), readonly=False),),
        readonly_root=True,
        namespace=True,
    )
    r = sh(f"set -e; test -d data && test -f data/prices.csv; echo r > runs/R1/out; ! mkdir {points}/x", plan, cwd=ws)
    assert r.code == 0, r.err
    assert (store / "out").read_text() == "r\n"
    assert list(points.iterdir()) == [] and list(run.iterdir()) == []


def test_a_bind_can_sit_on_the_overlay(kernel_support: object, layers, tree) -> None:  # type: ignore[no-untyped-def]
    """The runner's shape: the merged workspace, a writable bind inside it, a read-only one, and
    the merged view bound over the host's own path."""
    host, run, work, ws = layers
    store, lake = tree("store"), tree("lake", {"t.parquet": "p"})
    (host / "runs").mkdir()
    (host / "lakehouse").mkdir()
    before_host, before_lake = snapshot(host), snapshot(lake)
    extra = (
        Bind(str(store), str(ws / "runs"), readonly=False),
        Bind(str(lake), str(ws / "lakehouse"), readonly=True),
        Bind(str(ws), str(host), readonly=False),
    )
    plan = _plan(host, run, work, ws, extra=extra)
    script = f"set -e; echo s > runs/out.txt; echo h > {host}/via-host.txt; cat lakehouse/t.parquet; touch lakehouse/t.parquet"
    r = sh(script, plan, cwd=ws)
    assert r.code != 0 and r.out == "p" and "Read-only file system" in r.err
    assert (store / "out.txt").read_text() == "s\n"
    assert (run / "via-host.txt").read_text() == "h\n"
    assert snapshot(lake) == before_lake
    assert snapshot(host) == before_host


def test_odd_characters_in_layer_paths(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    """overlayfs splits its options on ',' and ':'; the paths are escaped."""
    host = tree("h,o:st", {"a.txt": "a"})
    run, work, ws = tree("r,un"), tree("w:ork"), tree("w s")
    r = sh("echo b > b.txt", _plan(host, run, work, ws), cwd=ws)
    assert r.code == 0, r.err
    assert (run / "b.txt").read_text() == "b\n"
