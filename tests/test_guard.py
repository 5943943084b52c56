"""The Python guard in process, on a real workspace: the forms of a call (dir_fd, bytes, PathLike,
chdir), read-your-writes, copy-up, the libraries legacy scripts use, bypasses, and the install
bookkeeping. The case table is in tests/test_cases.py."""

# ruff: noqa: SIM115  -- most open() calls here are meant to be refused: there is no file to close

from __future__ import annotations

import _io
import builtins
import errno
import glob
import io
import itertools
import logging
import mmap
import os
import pickle
import posix
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunEnv, tree_snapshot

from sandbox._record import replace
from sandbox.events import EventLog, read_events
from sandbox.guard import _engine, _install, install
from sandbox.policy import Op

LAKE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"
SCRIPT = "scripts/legacy_step.py"


class G:
    """A guarded run: the env, the guard, the event log."""

    def __init__(self, env: RunEnv, log: Path) -> None:
        self.env, self.log = env, log
        self.run = Path(env.ws.run_storage)

    def events(self) -> list[dict[str, Any]]:
        for eng in _engine.STACK:
            if eng is not None and eng.events is not None:
                eng.events.flush()
        return read_events(self.log)


@pytest.fixture(autouse=True)
def no_guard_left() -> Iterator[None]:
    yield
    leaked = [e for e in _engine.STACK if e is not None]
    for eng in leaked:
        _install.Guard(eng).uninstall()
    assert not leaked, "a test left a guard installed"


@pytest.fixture
def g(run_env: RunEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[G]:
    monkeypatch.chdir(run_env.ws.root)
    monkeypatch.setattr(tempfile, "tempdir", run_env.ws.tmp)
    protected = run_env.protected_snapshot()
    with EventLog(tmp_path / "events.jsonl") as log, install(run_env.policy, events=log):
        yield G(run_env, tmp_path / "events.jsonl")
    assert run_env.protected_snapshot() == protected, "the host (or outside) changed"


def raw_exists(path: str) -> bool:
    """Existence on disk, without the guard's merged view (a read: the audit hook lets it by)."""
    try:
        posix.lstat(path)
    except FileNotFoundError:
        return False
    return True


def denied(rule: str | None = None, layer: str = "python") -> Any:
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, tp: Any, e: Any, tb: Any) -> bool:
            assert isinstance(e, PermissionError), f"expected a denial, got {e!r}"
            assert e.errno == errno.EACCES and getattr(e, "layer", None) == layer, e
            if rule is not None:
                assert e.rule == rule, e
            return True

    return _Ctx()


# -- read-your-writes ---------------------------------------------------------------------------------


def test_relative_writes_land_in_the_run_folder_and_read_back(g: G) -> None:
    with open("reports/out.csv", "w") as fh:
        fh.write("a,b\n")
    assert (g.run / "reports" / "out.csv").read_text() == "a,b\n"
    assert not raw_exists(os.path.join(g.env.ws.root, "reports"))  # the workspace itself: untouched
    assert open("reports/out.csv").read() == "a,b\n"
    assert os.path.exists("reports/out.csv") and os.path.isfile("reports/out.csv")
    assert os.path.getsize("reports/out.csv") == 4 and os.path.isdir("reports")
    assert "out.csv" in os.listdir("reports") and glob.glob("reports/*.csv") == ["reports/out.csv"]
    assert [p.name for p in Path("reports").iterdir()] == ["out.csv"]
    assert [str(p) for p in Path(".").glob("reports/*.csv")] == ["reports/out.csv"]
    walked = {d: sorted(f) for d, _, f in os.walk("reports")}
    assert walked == {"reports": ["out.csv"]}
    assert sorted(os.walk("reports", topdown=False))[0][0] == "reports"
    assert Path("reports/out.csv").read_text() == "a,b\n" and Path("reports/out.csv").exists()


def test_a_folder_only_in_the_run_folder_exists_lists_and_can_be_entered(g: G) -> None:
    os.makedirs("newdir/sub")
    os.makedirs("newdir/sub", exist_ok=True)
    assert os.path.isdir("newdir/sub") and (g.run / "newdir" / "sub").is_dir()
    top = os.listdir(".")
    assert "newdir" in top and "scripts" in top and len(top) == len(set(top))  # merged, deduplicated
    os.chdir("newdir")
    try:
        Path("x.txt").write_text("in newdir")
        assert Path("x.txt").read_text() == "in newdir"
    finally:
        os.chdir(g.env.ws.root)
    assert (g.run / "newdir" / "x.txt").read_text() == "in newdir"
    with pytest.raises(FileExistsError):
        os.mkdir("scripts")  # exists in the host's mirror: the merged view has it


def test_merged_listing_of_a_host_folder_and_copy_up_on_append(g: G) -> None:
    original = Path(g.env.host / SCRIPT).read_bytes()
    Path("scripts/new.py").write_text("print('new')\n")
    with open(SCRIPT, "a") as fh:
        fh.write("# appended\n")
    assert (g.run / SCRIPT).read_bytes() == original + b"# appended\n"
    assert Path(SCRIPT).read_bytes() == original + b"# appended\n"  # reads see the run's copy
    names = os.listdir("scripts")
    assert sorted(names) == sorted(set(names)) and {"new.py", "legacy_step.py"} <= set(names)
    entries = {e.name: e for e in os.scandir("scripts")}
    assert os.fspath(entries["new.py"]) == "scripts/new.py" and entries["new.py"].is_file()
    with open(SCRIPT, "r+") as fh:
        fh.seek(0)
        fh.write("#")
    assert (g.run / SCRIPT).read_bytes()[:1] == b"#"


def test_dir_fd_forms(g: G) -> None:
    lake = os.open("data/lakehouse", os.O_RDONLY)
    run = os.open(g.env.ws.run_dir + "/data", os.O_RDONLY)
    try:
        with denied("lakehouse-read-only"):
            os.open("x.csv", os.O_WRONLY | os.O_CREAT, dir_fd=lake)
        with denied("lakehouse-read-only"):
            os.mkdir("d", dir_fd=lake)
        with denied("lakehouse-read-only"):
            os.rename("BINANCE_BTCUSDT_1d.csv", "y", src_dir_fd=lake, dst_dir_fd=run)
        with denied("lakehouse-read-only"):
            os.link("existing.txt", "z", src_dir_fd=run, dst_dir_fd=lake)
        os.close(os.open("fd.txt", os.O_WRONLY | os.O_CREAT, dir_fd=run))
        os.mkdir("fd_dir", dir_fd=run)
        os.rename("fd.txt", "fd2.txt", src_dir_fd=run, dst_dir_fd=run)
        os.unlink("fd2.txt", dir_fd=run)
        os.rmdir("fd_dir", dir_fd=run)
        assert os.stat("BINANCE_BTCUSDT_1d.csv", dir_fd=lake).st_size > 0
    finally:
        os.close(lake)
        os.close(run)
    assert sorted(os.listdir(g.run / "data")) == ["existing.txt", "to_lake", "to_lake_file", "to_outside"]


def test_bytes_and_pathlike_paths(g: G) -> None:
    with open(b"reports/b.txt", "w") as fh:
        fh.write("bytes")
    assert b"b.txt" in os.listdir(b"reports") and all(isinstance(n, bytes) for n in os.listdir(b"."))
    assert [e.name for e in os.scandir(b"reports")] == [b"b.txt"]
    os.symlink("b.txt", b"reports/blink")
    assert os.readlink(b"reports/blink") == b"b.txt" and os.readlink("reports/blink") == "b.txt"
    Path("reports/p.txt").write_text("pathlike")
    assert (g.run / "reports" / "p.txt").read_text() == "pathlike"
    with denied("lakehouse-read-only"):
        open(os.fsencode(LAKE), "ab")
    with denied("lakehouse-read-only"):
        Path(LAKE).unlink()
    with denied("lakehouse-read-only"):
        Path(LAKE).touch()


def test_chdir_then_relative_write(g: G) -> None:
    os.chdir("scripts")  # a host folder, through the workspace's mirror link
    try:
        Path("from_inside.py").write_text("x = 1\n")
        with denied("lakehouse-read-only"):
            open("../data/lakehouse/up.csv", "w")
    finally:
        os.chdir(g.env.ws.root)
    assert (g.run / "scripts" / "from_inside.py").read_text() == "x = 1\n"


def test_seed_bug_message_says_what_to_do(g: G) -> None:
    with pytest.raises(PermissionError) as ei:
        open("data/lakehouse/selection_audit.json", "w")
    msg = str(ei.value)
    assert "rule 'selection-audit-in-lakehouse'" in msg and "$SELECTION_AUDIT" in msg
    assert "profile production" in msg and ei.value.filename == "data/lakehouse/selection_audit.json"
    ev = g.events()[-1]
    assert ev["action"] == "deny" and ev["rule"] == "selection-audit-in-lakehouse" and ev["op"] == "write"


def test_removing_what_only_the_host_has_is_refused(g: G) -> None:
    with pytest.raises(PermissionError) as ei:
        os.remove(SCRIPT)
    assert ei.value.rule == "workspace-redirect"  # type: ignore[attr-defined]
    assert "host files are read-only" in str(ei.value)
    Path("reports/gone.txt").write_text("x")
    os.remove("reports/gone.txt")
    assert not os.path.exists("reports/gone.txt") and not (g.run / "reports" / "gone.txt").exists()
    with pytest.raises(FileNotFoundError):
        os.remove("reports/never.txt")


def test_events_record_denials_and_redirects_not_reads(g: G) -> None:
    Path("reports/e.txt").write_text("x")
    Path("reports/e.txt").read_text()
    Path("scripts/legacy_step.py").read_text()  # a read-through that finds nothing: no event
    with denied():
        Path(LAKE).write_text("no")
    events = g.events()
    assert [(e["action"], e["op"]) for e in events] == [("redirect", "write"), ("deny", "write")]
    red = events[0]
    assert red["path"] == "reports/e.txt" and red["target"] == str(g.run / "reports" / "e.txt")
    assert red["resolved"] == os.path.join(g.env.ws.root, "reports/e.txt") and red["pid"] == os.getpid()


# -- libraries ------------------------------------------------------------------------------------


def test_shutil_into_and_out_of_protected_places(g: G) -> None:
    shutil.copy(LAKE, "reports/copy.csv")
    assert (g.run / "reports" / "copy.csv").read_bytes() == (g.env.host / LAKE).read_bytes()
    shutil.copytree("data/lakehouse", "reports/lake_copy")
    assert "BINANCE_ETHUSDT_1d.csv" in os.listdir("reports/lake_copy")
    shutil.move("reports/copy.csv", "reports/moved.csv")
    assert os.path.exists("reports/moved.csv") and not os.path.exists("reports/copy.csv")
    with denied("lakehouse-read-only"):
        shutil.copy("reports/moved.csv", "data/lakehouse/in.csv")
    with denied("lakehouse-read-only"):
        shutil.move("reports/moved.csv", "data/lakehouse/in.csv")
    with denied("lakehouse-read-only"):
        shutil.rmtree("data/lakehouse/")  # into the mount (without the slash: rmtree refuses a link)
    with denied("lakehouse-read-only"):
        shutil.copystat("reports/moved.csv", LAKE)
    with denied("workspace-redirect"):
        shutil.rmtree("scripts/")  # the host's folder (through its mirror link): cannot be removed
    shutil.rmtree("reports/lake_copy")
    assert not os.path.exists("reports/lake_copy") and not (g.run / "reports" / "lake_copy").exists()


def test_tempfile_logging_zipfile_pickle(g: G) -> None:
    with tempfile.NamedTemporaryFile("w", delete=False) as fh:
        fh.write("tmp")
    assert fh.name.startswith(g.env.ws.tmp) and Path(fh.name).read_text() == "tmp"
    assert tempfile.mkdtemp().startswith(g.env.ws.tmp)
    with denied("lakehouse-read-only"):
        tempfile.mkstemp(dir="data/lakehouse")
    handler = logging.FileHandler("reports/step.log")
    log = logging.getLogger("tv-sandbox-test")
    log.addHandler(handler)
    try:
        log.warning("hello from a legacy step")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert "hello from a legacy step" in (g.run / "reports" / "step.log").read_text()
    with zipfile.ZipFile("reports/a.zip", "w") as z:
        z.writestr("inner.txt", "zipped")
    with zipfile.ZipFile("reports/a.zip") as z:
        assert z.read("inner.txt") == b"zipped"
    with open("data/returns.pkl", "wb") as fh:
        pickle.dump({"r": [1, 2]}, fh)
    assert pickle.loads((g.run / "data" / "returns.pkl").read_bytes()) == {"r": [1, 2]}
    with open("data/returns.pkl", "rb") as fh:
        assert pickle.load(fh) == {"r": [1, 2]}


def test_pandas_writers_and_readers(g: G) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(LAKE)
    df.head(3).to_csv("reports/head.csv", index=False)
    assert (g.run / "reports" / "head.csv").is_file()
    assert pd.read_csv("reports/head.csv").shape == (3, df.shape[1])
    with denied("lakehouse-read-only"):
        df.to_csv("data/lakehouse/out.csv")


def test_io_fileio_and_os_open_flags(g: G) -> None:
    with io.FileIO("reports/raw.bin", "w") as raw:
        raw.write(b"raw")
    assert (g.run / "reports" / "raw.bin").read_bytes() == b"raw"
    assert isinstance(open("reports/raw.bin", "rb", buffering=0), io.FileIO)
    with denied("lakehouse-read-only"):
        io.FileIO(LAKE, "a")
    fd = os.open(SCRIPT, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"# via os.open\n")
    os.close(fd)
    assert (g.run / SCRIPT).read_bytes().endswith(b"# via os.open\n")
    with pytest.raises(FileExistsError):
        os.open("scripts/legacy_step.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with pytest.raises(FileExistsError):
        open("configs/" + os.listdir("configs")[0], "x")
    os.mkfifo("reports/fifo")
    assert (g.run / "reports" / "fifo").exists()
    with denied("lakehouse-read-only"):
        os.mkfifo("data/lakehouse/fifo")


def test_writable_mmap_of_a_protected_file_is_refused(g: G) -> None:
    with _install.Guard(g_engine()).paused():
        fh = open(g.env.host / LAKE, "r+b")  # opened around the guard
    try:
        with denied("lakehouse-read-only", layer="python-audit"):
            mmap.mmap(fh.fileno(), 0)
        with denied("lakehouse-read-only", layer="python-audit"):
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_WRITE)
        mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ).close()
        mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY).close()
    finally:
        fh.close()
    Path("reports/m.bin").write_bytes(b"0" * 16)
    with open("reports/m.bin", "r+b") as fh, mmap.mmap(fh.fileno(), 0) as m:
        m[0:1] = b"1"
    assert (g.run / "reports" / "m.bin").read_bytes()[:1] == b"1"


def g_engine() -> Any:
    eng = _engine.CURRENT
    assert eng is not None
    return eng


# -- bypasses -------------------------------------------------------------------------------------


def test_bypasses_hit_the_audit_hook(g: G, run_env: RunEnv) -> None:
    with denied("lakehouse-read-only", layer="python-audit"):
        _io.open(LAKE, "a")
    with denied("lakehouse-read-only", layer="python-audit"):
        posix.open(LAKE, os.O_WRONLY)
    with denied("lakehouse-read-only", layer="python-audit"):
        posix.remove(LAKE)
    with denied("lakehouse-read-only", layer="python-audit"):
        posix.rename(LAKE, "reports/x")
    with pytest.raises(PermissionError) as ei:
        _io.open("reports/bypass.txt", "w")  # a redirect that the patched layer would have made
    assert ei.value.layer == "python-audit" and "went around" in str(ei.value)  # type: ignore[attr-defined]
    assert not (g.run / "reports" / "bypass.txt").exists()
    with denied("lakehouse-read-only", layer="python-audit"):
        BOUND_REMOVE(LAKE)  # bound when this module was imported, before any install
    _io.open(g.env.ws.run_dir + "/data/ok.txt", "w").close()  # allowed where it is aimed
    assert (g.run / "data" / "ok.txt").exists()
    assert _io.open(LAKE).read(9) == "timestamp"  # reads go through


BOUND_REMOVE = os.remove


# -- install bookkeeping --------------------------------------------------------------------------


def _patchable() -> dict[tuple[int, str], Any]:
    names = {(id(builtins), "open"): builtins.open, (id(io), "open"): io.open, (id(io), "FileIO"): io.FileIO}
    for n in dir(os):
        names[(id(os), n)] = getattr(os, n)
    return names


def test_nesting_and_uninstall_restore_every_name(make_run_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env, dev = make_run_env(), make_run_env(profile="development")
    monkeypatch.chdir(env.ws.root)
    before = _patchable()
    supports = {s: set(getattr(os, s)) for s in _install._SUPPORTS}
    g1 = install(env.policy)
    assert builtins.open is not before[(id(builtins), "open")] and os.unlink in os.supports_dir_fd
    g2 = install(dev.policy)
    assert _engine.CURRENT is g2.engine
    with g2.paused():
        assert _engine.CURRENT is None
    assert _engine.CURRENT is g2.engine
    g2.uninstall()
    g2.uninstall()  # idempotent
    assert _engine.CURRENT is g1.engine and builtins.open is not before[(id(builtins), "open")]
    with denied():
        open(LAKE, "a")
    g1.uninstall()
    after = _patchable()
    assert all(after[k] is v for k, v in before.items())
    assert {s: set(getattr(os, s)) for s in _install._SUPPORTS} == supports
    assert _engine.CURRENT is None and _engine.STACK == []


def test_pause_and_unguarded_hook(run_env: RunEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(run_env.ws.root)
    with install(run_env.policy) as guard:
        with guard.paused():
            Path("paused.txt").write_text("unguarded")  # straight into the workspace folder
        assert Path(run_env.ws.root, "paused.txt").read_text() == "unguarded"
        with denied(layer="python-audit"):
            _io.open(LAKE, "a")
    os.remove("paused.txt")
    _io.open("after.txt", "w").close()  # the hook stays, and does nothing without a guard
    os.remove("after.txt")


def test_overlay_mode_executes_workspace_redirects_on_the_original(
    run_env: RunEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(run_env.ws.root)
    with EventLog(tmp_path / "ev.jsonl") as log, install(run_env.policy, events=log, overlay=True):
        Path("ovl.txt").write_text("through the overlay")
        _io.open("ovl2.txt", "w").close()  # the overlay maps even what goes around the wrappers
        with denied("lakehouse-read-only"):
            open(LAKE, "a")
    assert Path(run_env.ws.root, "ovl.txt").read_text() == "through the overlay"
    assert not Path(run_env.ws.run_storage, "ovl.txt").exists()
    ev = read_events(tmp_path / "ev.jsonl")[0]
    assert ev["action"] == "redirect" and ev["rule"] == "workspace-redirect"


def test_threads_share_one_guard(g: G) -> None:
    def work(k: int) -> None:
        for i in range(50):
            Path(f"reports/t{k}_{i}.txt").write_text(str(i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(os.listdir(g.run / "reports")) == 200


def test_fork_inherits_the_guard(g: G) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        code = 0
        try:
            Path("reports/child.txt").write_text("child")
            try:
                open(LAKE, "a")
                code = 3
            except PermissionError:
                pass
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (g.run / "reports" / "child.txt").read_text() == "child"
    assert any(e["pid"] == pid and e["action"] == "deny" for e in g.events())


def test_caches_follow_links_made_later(g: G) -> None:
    data = g.env.ws.run_dir + "/data"
    Path(data, "late.txt").write_text("first")  # builds the folder's family: no new links yet
    os.symlink(g.env.ws.mount_targets["lakehouse"] + "/BINANCE_ETHUSDT_1d.csv", data + "/late_link")
    with denied("lakehouse-read-only"):
        open(data + "/late_link", "w")
    os.mkdir(data + "/sub")
    Path(data, "sub", "a.txt").write_text("a")
    os.rename(data + "/sub", data + "/sub2")
    os.symlink(g.env.ws.mount_targets["lakehouse"], data + "/sub")  # the folder becomes a link
    with denied("lakehouse-read-only"):
        Path(data, "sub", "a.txt").write_text("b")


def test_family_decisions_agree_with_decide(make_run_env: Any) -> None:
    """The guard's fast path asks ``decide_children`` once per folder: it must agree with decide."""
    for mode, profile in itertools.product(("enforce", "audit"), ("production", "development")):
        env = make_run_env(mode, profile)
        pol, ws = env.policy, env.ws
        folders = [
            ws.root,
            f"{ws.root}/data",
            f"{ws.root}/data/lakehouse",
            str(env.host),
            f"{env.host}/data/lakehouse",
            f"{ws.root}/artifacts/summaries/runs",
            ws.run_dir,
            f"{ws.run_storage}/data",
            ws.tmp,
            "/",
            "/dev",
            "/proc/self/fd",
            f"{ws.root}/export/R1",
        ]
        names = ["a", "selection_audit.json", "portfolio_candidates.json", "lakehouse", "R1", "null", "x:[1]"]
        for folder, op, name in itertools.product(folders, list(Op), names):
            fam = pol.decide_children(folder, op)
            if fam is not None:
                tgt = None if fam.target is None else f"{fam.target}/{name}"
                assert pol.decide(f"{folder}/{name}", op) == replace(fam, path=f"{folder}/{name}", target=tgt)


def test_denied_calls_leave_nothing(g: G) -> None:
    before = tree_snapshot(g.run)
    for call in (
        lambda: open(LAKE, "w"),
        lambda: os.chmod(LAKE, 0o600),
        lambda: os.utime(LAKE),
        lambda: os.truncate(LAKE, 0),
        lambda: os.symlink("x", "data/lakehouse/l"),
    ):
        with denied():
            call()
    assert tree_snapshot(g.run) == before
