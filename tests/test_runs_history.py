"""A run's cost without the overlay does not grow with the host's history (the runs folder).

Without the kernel layer's overlay (``--kernel off``; Landlock alone: tests/escapes/
test_landlock_only.py) the workspace is a symlink skeleton of the host. The runs folder holds one
entry per past run, and a step may read a past run through ``artifacts/summaries/runs/<old>/``;
making, walking and removing a link per past run cost 25-260 ms a run with 2000 of them (a
``symlink`` is ~50-170 us on an ext4 ``/tmp``). The view of the runs folder is now reused from run
to run (``workspace._fill_view``): measured here side by side with a host without history, through
the real CLI, and the reads and writes a step relies on checked.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from conftest import tree_snapshot

from sandbox import runs_view
from sandbox import workspace as workspace_mod
from sandbox.policy import Layout
from sandbox.samples import make_host

RUNS = Layout().runs
REPO = str(Path(__file__).parents[1])


def _history(host: Path, n: int) -> None:
    runs = host / RUNS
    for i in range(n):
        d = runs / f"old{i:05d}" / "data"
        d.mkdir(parents=True)
        (d / "x.csv").write_text(f"a,b\n{i},2\n")


def _run(host: Path, ws: Path, run_id: str, *step: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sandbox", "run", "--root", str(host), "--run-id", run_id]
    argv += ["--kernel", "off", "--workspace-dir", str(ws), "--", *step]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TV_", "PYTHON"))}
    env.update(PYTHONPATH=REPO, TV_SANDBOX_TIMINGS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd="/")


def _cost(r: subprocess.CompletedProcess[str]) -> float:
    """What a past run can cost: the workspace, the report (consolidate) and the cleanup, in ms."""
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("tv-sandbox: timing "))
    phases = dict(p.split("=") for p in line.split()[2:])
    return sum(float(phases[k].removesuffix("ms")) for k in ("workspace", "report", "cleanup"))


def test_a_run_costs_the_same_with_2000_past_runs_as_with_none(tmp_path: Path) -> None:
    none, many = make_host(tmp_path / "none"), make_host(tmp_path / "many")
    _history(many, 2000)
    ws = tmp_path / "ws"
    ws.mkdir()
    _cost(_run(many, ws, "warm", "true"))  # the first run of a host makes its view of the runs
    costs: dict[str, list[float]] = {"none": [], "many": []}
    for r in range(5):  # interleaved: this machine's disk drifts by the minute
        for name, host in (("none", none), ("many", many))[:: 1 if r % 2 else -1]:
            costs[name].append(_cost(_run(host, ws, f"r{r}", "true")))
    few, lots = statistics.median(costs["none"]), statistics.median(costs["many"])
    # before: a link per past run made, walked and removed -- 560-1050 ms more with 2000 of them
    # (what is left, a listing of each side and a readlink a link with the guard alone, is a few
    # ms on a quiet machine, 20-60 on a loaded one: the bound is the old cost's, not today's)
    assert lots < few + 100, costs


STEP = r"""
R=artifacts/summaries/runs
cat $R/old00001/data/x.csv | tail -1
python -c 'print(open("artifacts/summaries/runs/old00002/data/x.csv").read().split()[-1])'
ls $R | grep -c '^old'
echo own > $R/$TV_RUN_ID/data/native.txt
python -c 'open("artifacts/summaries/runs/'"$TV_RUN_ID"'/data/py.txt", "w").write("py")'
python -c 'open("artifacts/summaries/runs/old00003/data/x.csv", "w").write("py-over-old")'
mkdir -p $R/newer && echo new > $R/newer/y.txt
"""


def test_past_runs_read_and_writes_land_in_the_run_folder(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    _history(host, 40)  # more than POOL_FROM: the view is kept for the next run
    ws = tmp_path / "ws"
    ws.mkdir()
    before = tree_snapshot(host)
    for n, run_id in enumerate(("h1", "h2")):  # h2 takes the view h1 gave back
        r = _run(host, ws, run_id, "sh", "-c", STEP.replace("python", sys.executable))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["1,2", "2,2", "40"], r.stdout
        out = host / RUNS / run_id
        assert (out / "data" / "native.txt").read_text() == "own\n"
        assert (out / "data" / "py.txt").read_text() == "py"
        # a Python write to a past run is redirected into this run's folder, as under the overlay
        assert (out / RUNS / "old00003" / "data" / "x.csv").read_text() == "py-over-old"
        # a native write beside the run folder (into the view, guard alone) is carried in too
        assert (out / RUNS / "newer" / "y.txt").read_text() == "new\n"
        now = tree_snapshot(host)  # the host as it was, but for the runs exported (and their mtime)
        assert {k: v for k, v in now.items() if k != RUNS and not k.startswith(f"{RUNS}/h")} == {
            k: v for k, v in before.items() if k != RUNS
        }, n
    assert sorted(os.listdir(host / RUNS))[:3] == ["h1", "h2", "old00000"]  # no "newer" there
    # one pool of views of this host, holding links only (the step's folder was carried out)
    pools = [p for p in os.listdir(ws) if p.startswith(runs_view.POOL_PREFIX)]
    assert len(pools) == 1, os.listdir(ws)
    (view,) = [p for p in (ws / pools[0]).iterdir() if p.is_dir()]
    assert all(p.is_symlink() for p in view.iterdir())
    assert sorted(p.name for p in view.iterdir())[:2] == ["h1", "old00000"]  # h2 was this run


def test_a_view_with_anything_but_links_is_not_reused(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    _history(host, 40)
    base = tmp_path / "base"
    base.mkdir()
    ws = workspace_mod.create(host, "v1", Layout(), base_dir=base)
    view = Path(ws.runs_view)
    assert os.readlink(os.path.join(ws.root, RUNS)) == str(view)
    assert os.readlink(view / "v1") == ws.run_storage
    (view / "planted").mkdir()  # as a native write of the guard alone would leave it
    (view / "planted" / "f").write_text("x")
    ws.remove()
    ws2 = workspace_mod.create(host, "v2", Layout(), base_dir=base)
    names = os.listdir(ws2.runs_view)
    assert "planted" not in names and "v1" not in names and len(names) == 41
    ws2.remove()
    ws3 = workspace_mod.create(host, "v3", Layout(), base_dir=base)  # taken from the pool
    assert sorted(os.listdir(ws3.runs_view)) == sorted([*os.listdir(host / RUNS), "v3"])
    ws3.remove()


def test_the_sweep_removes_a_pool_whose_runs_folder_is_gone(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    _history(host, 40)
    base = tmp_path / "base"
    base.mkdir()
    workspace_mod.create(host, "s1", Layout(), base_dir=base).remove()
    (pool,) = [p for p in base.iterdir() if p.name.startswith(runs_view.POOL_PREFIX)]
    assert workspace_mod.sweep(base) == []  # its host is there: kept
    subprocess.run(["rm", "-rf", str(host)], check=True)
    assert workspace_mod.sweep(base) == [str(pool)]
    assert list(base.iterdir()) == []


def test_the_sweep_never_takes_a_look_alike_for_a_pool_nor_a_pool_for_a_workspace(tmp_path: Path) -> None:
    """A pool is removed only when its marker proves it one (as a workspace's ``owner`` does):
    a folder of the same name pattern, a marker without the pool's format, or one copied under
    another pool's name stays -- and a dead launcher's workspace whose run ID begins like a pool's
    name is still swept."""
    base = tmp_path / "base"
    base.mkdir()
    gone = str(tmp_path / "gone" / RUNS)  # a runs folder that does not exist
    key = runs_view._pool_key(gone)
    magic = runs_view._POOL_MAGIC
    look_alikes = {
        "tv-sandbox-runs-notes": f"{magic}\n{gone}\n",  # the name is not its marker's seal
        f"tv-sandbox-runs-{runs_view._pool_key(gone + '2')}": f"{gone}2\n",  # no format line
        f"tv-sandbox-runs-{runs_view._pool_key('/elsewhere')}": f"{magic}\n{gone}\n",  # copied
    }
    for name, marker in look_alikes.items():
        d = base / name
        d.mkdir(mode=0o700)
        (d / "notes.txt").write_text("precious\n")
        (d / runs_view.POOL_HOST).write_text(marker)
        os.chmod(d / runs_view.POOL_HOST, 0o600)
    code = (
        "import os; from sandbox import workspace as w; from sandbox.policy import Layout; "
        f"ws = w.create({str(make_host(tmp_path / 'h'))!r}, 'runs-0123456789abcdef', Layout(), "
        f"base_dir={str(base)!r}); print(ws.base, flush=True); os.kill(os.getpid(), 9)"
    )
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert os.path.basename(dead).startswith(runs_view.POOL_PREFIX), dead
    assert workspace_mod.sweep(base) == [dead]
    assert sorted(os.listdir(base)) == sorted(look_alikes)
    for name in look_alikes:
        assert (base / name / "notes.txt").read_text() == "precious\n"
    # the same marker under its own seal is a pool: removed, its runs folder being gone
    real = base / f"tv-sandbox-runs-{key}"
    real.mkdir(mode=0o700)
    (real / runs_view.POOL_HOST).write_text(f"{magic}\n{gone}\n")
    os.chmod(real / runs_view.POOL_HOST, 0o600)
    assert workspace_mod.sweep(base) == [str(real)]


def test_a_folder_named_like_a_pool_without_its_marker_is_never_used(tmp_path: Path) -> None:
    """The runs take views from, and give them back to, only a folder whose marker proves it this
    host's pool -- as the sweep removes only such a one. A user's own folder of that name kept its
    ``0/notes.txt`` removed as a view holding anything but links (and got a view moved in); a
    pool's slot that is a link (no view of ours) failed the next run's workspace (File exists)."""
    host = make_host(tmp_path / "host")
    _history(host, 40)
    ws = tmp_path / "ws"
    ws.mkdir()
    name = runs_view.POOL_PREFIX + runs_view._pool_key(os.path.join(str(host), RUNS))
    own = ws / name
    (own / "0").mkdir(parents=True)
    own.chmod(0o700)
    (own / "0" / "notes.txt").write_text("precious\n")
    before = tree_snapshot(own)
    for run_id in ("u1", "u2"):
        r = _run(host, ws, run_id, "true")
        assert r.returncode == 0, r.stderr
    assert tree_snapshot(own) == before
    assert (own / "0" / "notes.txt").read_text() == "precious\n"
    # the same name as a real pool (its marker written by a run): its views are used, and a slot
    # that is a link is left alone rather than taken
    subprocess.run(["rm", "-rf", str(own)], check=True)
    assert _run(host, ws, "p1", "true").returncode == 0
    assert os.listdir(own / "0")  # the view p1 gave back
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep\n")
    os.rename(own / "0", own / "1")
    os.symlink(elsewhere, own / "0")
    r = _run(host, ws, "p2", "true")
    assert r.returncode == 0, r.stderr
    assert os.readlink(own / "0") == str(elsewhere)
    assert (elsewhere / "keep.txt").read_text() == "keep\n"
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]


def test_a_link_the_step_swapped_in_the_view_is_not_handed_on(tmp_path: Path) -> None:
    """With the guard alone a step can write the view: a link it puts under a past run's name
    (pointing elsewhere) is the step's, carried into its run folder, and the next run of the host,
    taking the view, reads the past run itself."""
    host = make_host(tmp_path / "host")
    _history(host, 40)
    decoy = tmp_path / "decoy" / "data"
    decoy.mkdir(parents=True)
    (decoy / "x.csv").write_text("a,b\nDECOY,0\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    swap = f"rm {RUNS}/old00001 && ln -s {decoy.parent} {RUNS}/old00001 && tail -1 {RUNS}/old00001/data/x.csv"
    r = _run(host, ws, "s1", "sh", "-c", swap)
    assert r.returncode == 0 and r.stdout.split() == ["DECOY,0"], (r.stdout, r.stderr)
    assert os.readlink(host / RUNS / "s1" / RUNS / "old00001") == str(decoy.parent)  # the step's link
    r = _run(host, ws, "s2", "tail", "-1", f"{RUNS}/old00001/data/x.csv")
    assert r.returncode == 0 and r.stdout.split() == ["1,2"], (r.stdout, r.stderr)
