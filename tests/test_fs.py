"""The fsspec enforcer: fsspec's own abstract suites, the routing of every method through the one
check, read-your-writes, pandas through the ``sandbox://`` protocol, construction, other backends.
The table of escape cases runs in tests/test_cases.py."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from conftest import RunEnv, sandbox_run, tree_snapshot
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from sandbox.errors import AccessDenied
from sandbox.fs import SandboxFileSystem
from sandbox.loader import load_policy, spec_from_mapping
from sandbox.policy import Policy
from sandbox.samples import make_host

LAKE_FILE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"


def _spec(rule: dict[str, Any]) -> Any:
    return spec_from_mapping(
        {
            "policy": {"name": rule["name"], "profile": "development"},
            "layout": {"lakehouse": "data/lakehouse", "exports": "export", "runs": "runs"},
            "rule": [rule],
        }
    )


def allow_all(root: str) -> Policy:
    """Every operation under ``root`` allowed -- by a policy rule, not by a shortcut.

    ``root`` is the workspace, so every path the suite touches is inside it and the rules decide
    there (outside host/workspace/temp dirs the built-ins deny every write). The host is a sibling
    the suite never touches: with host == workspace, the decision would hinge on which of two
    equal roots wins, and an allowed write to a host path is redirected to its workspace alias.
    """
    rule = {"name": "allow-all", "paths": ["**"], "ops": ["all"], "action": "allow"}
    return _spec(rule).bind(host=root + "-host-unused", workspace=root, run_id="T")


# -- fsspec's abstract test suites, allow-all over the local filesystem ---------------------------


class SandboxFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, tmpdir: Any) -> SandboxFileSystem:
        # auto_mkdir as in fsspec's own LocalFixtures; the parents it creates are checked by us
        root = os.path.realpath(str(tmpdir))
        return SandboxFileSystem(policy=allow_all(root), fs=LocalFileSystem(auto_mkdir=True))

    @pytest.fixture
    def fs_path(self, tmpdir: Any) -> str:
        return str(tmpdir)


class TestSandboxCopy(AbstractCopyTests, SandboxFixtures):  # type: ignore[misc]
    pass


class TestSandboxGet(AbstractGetTests, SandboxFixtures):  # type: ignore[misc]
    pass


class TestSandboxPut(AbstractPutTests, SandboxFixtures):  # type: ignore[misc]
    pass


class TestSandboxOpen(AbstractOpenTests, SandboxFixtures):  # type: ignore[misc]
    pass


class TestSandboxPipe(AbstractPipeTests, SandboxFixtures):  # type: ignore[misc]
    pass


# -- every public method goes through the one check (STYLE item 7) --------------------------------

#: Overridden here, each one through ``_route``.
ROUTED = {
    "cat_file",
    "cp_file",
    "created",
    "get_file",
    "info",
    "lexists",
    "ls",
    "makedirs",
    "mkdir",
    "modified",
    "mv",
    "pipe_file",
    "put_file",
    "rm",
    "rm_file",
    "rmdir",
    "sign",
    "touch",
    "open",  # fsspec's open() wraps text and compression around _open(), which is routed
}
#: fsspec's own compositions, left as they are: built only on routed methods (proved below).
DERIVED = {
    "cat",
    "cat_ranges",
    "checksum",
    "copy",
    "cp",
    "delete",
    "disk_usage",
    "download",
    "du",
    "exists",
    "expand_path",
    "find",
    "get",
    "get_mapper",
    "glob",
    "head",
    "isdir",
    "isfile",
    "listdir",
    "makedir",
    "mkdirs",
    "move",
    "pipe",
    "put",
    "read_block",
    "read_bytes",
    "read_text",
    "rename",
    "size",
    "sizes",
    "stat",
    "tail",
    "tree",
    "ukey",
    "upload",
    "walk",
    "write_bytes",
    "write_text",
}
#: No path, no data: attributes, construction, serialisation, transactions, caches.
NON_PATH = {
    "async_impl",
    "blocksize",
    "cachable",
    "clear_instance_cache",
    "current",
    "end_transaction",
    "from_dict",
    "from_json",
    "fsid",
    "invalidate_cache",
    "mirror_sync_methods",
    "protocol",
    "root_marker",
    "sep",
    "start_transaction",
    "to_dict",
    "to_json",
    "transaction",
    "transaction_type",
    "unstrip_protocol",
}
#: LocalFileSystem's methods beyond AbstractFileSystem, routed here so they cannot bypass us.
EXTENSIONS = {"chmod", "islink", "link", "symlink"}


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_every_public_method_is_classified() -> None:
    names = _public(AbstractFileSystem)
    groups = (ROUTED, DERIVED, NON_PATH)
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "a name in two groups"
    assert names == set().union(*groups), (
        f"fsspec changed: unclassified {sorted(names - set().union(*groups))}, "
        f"gone {sorted(set().union(*groups) - names)}"
    )
    own = {n for n in vars(SandboxFileSystem) if not n.startswith("_")}
    assert own - {"cachable", "protocol", "root_marker"} == (ROUTED - {"open"}) | EXTENSIONS | {
        "invalidate_cache"
    }
    assert SandboxFileSystem._open is not AbstractFileSystem._open
    for n in DERIVED:  # fsspec's composition, not a local shortcut to the backend
        assert getattr(SandboxFileSystem, n) is getattr(AbstractFileSystem, n), n
    assert not hasattr(SandboxFileSystem, "__getattr__"), "no pass-through to the backend"


class SpyMemory(MemoryFileSystem):  # type: ignore[misc]
    """A memory backend recording every method call with its arguments."""

    PURE = frozenset({"_strip_protocol", "_parent"})  # string functions, no I/O

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in SpyMemory.PURE or name.startswith("__") or not callable(attr):
            return attr
        calls = object.__getattribute__(self, "calls")

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args))
            return attr(*args, **kwargs)

        return spy

    def chmod(self, path: str, mode: int) -> None: ...
    def symlink(self, src: str, dst: str) -> None: ...
    def link(self, src: str, dst: str) -> None: ...
    def islink(self, path: str) -> bool:
        return False


P, Q, D = "/ws/d/f.txt", "/ws/d/g.txt", "/ws/d"
CALLS: dict[str, Callable[[SandboxFileSystem, str], Any]] = {
    "cat": lambda fs, lp: fs.cat(P),
    "cat_file": lambda fs, lp: fs.cat_file(P),
    "cat_ranges": lambda fs, lp: fs.cat_ranges([P], [0], [1]),
    "checksum": lambda fs, lp: fs.checksum(P),
    "chmod": lambda fs, lp: fs.chmod(P, 0o600),
    "copy": lambda fs, lp: fs.copy(P, Q),
    "cp": lambda fs, lp: fs.cp(D, "/ws/e", recursive=True),
    "cp_file": lambda fs, lp: fs.cp_file(P, Q),
    "created": lambda fs, lp: fs.created(P),
    "delete": lambda fs, lp: fs.delete(D, recursive=True),
    "disk_usage": lambda fs, lp: fs.disk_usage(D),
    "download": lambda fs, lp: fs.download(P, lp + ".dl"),
    "du": lambda fs, lp: fs.du(D),
    "exists": lambda fs, lp: fs.exists(P),
    "expand_path": lambda fs, lp: fs.expand_path(D, recursive=True),
    "find": lambda fs, lp: fs.find(D),
    "get": lambda fs, lp: fs.get(D, lp + ".dir", recursive=True),
    "get_file": lambda fs, lp: fs.get_file(P, lp + ".got"),
    "get_mapper": lambda fs, lp: fs.get_mapper(D, create=True)["f.txt"],
    "glob": lambda fs, lp: fs.glob("/ws/d/*.txt"),
    "head": lambda fs, lp: fs.head(P),
    "info": lambda fs, lp: fs.info(P),
    "isdir": lambda fs, lp: fs.isdir(D),
    "isfile": lambda fs, lp: fs.isfile(P),
    "islink": lambda fs, lp: fs.islink(P),
    "lexists": lambda fs, lp: fs.lexists(P),
    "link": lambda fs, lp: fs.link(P, Q),
    "listdir": lambda fs, lp: fs.listdir(D),
    "ls": lambda fs, lp: fs.ls(D),
    "makedir": lambda fs, lp: fs.makedir("/ws/new"),
    "makedirs": lambda fs, lp: fs.makedirs("/ws/new/sub"),
    "mkdir": lambda fs, lp: fs.mkdir("/ws/new"),
    "mkdirs": lambda fs, lp: fs.mkdirs("/ws/new/sub"),
    "modified": lambda fs, lp: fs.modified(P),
    "move": lambda fs, lp: fs.move(P, Q),
    "mv": lambda fs, lp: (fs.mv(P, Q), fs.mv([P], [Q])),
    "open": lambda fs, lp: [fs.open(P, m) for m in ("rb", "wb", "ab", "xb", "r+b", "r", "w")],
    "pipe": lambda fs, lp: fs.pipe(P, b"x"),
    "pipe_file": lambda fs, lp: fs.pipe_file(P, b"x"),
    "put": lambda fs, lp: fs.put(lp, P),
    "put_file": lambda fs, lp: fs.put_file(lp, P),
    "read_block": lambda fs, lp: fs.read_block(P, 0, 1),
    "read_bytes": lambda fs, lp: fs.read_bytes(P),
    "read_text": lambda fs, lp: fs.read_text(P),
    "rename": lambda fs, lp: fs.rename(P, Q),
    "rm": lambda fs, lp: fs.rm(D, recursive=True),
    "rm_file": lambda fs, lp: fs.rm_file(P),
    "rmdir": lambda fs, lp: fs.rmdir(D),
    "sign": lambda fs, lp: fs.sign(P),
    "size": lambda fs, lp: fs.size(P),
    "sizes": lambda fs, lp: fs.sizes([P]),
    "stat": lambda fs, lp: fs.stat(P),
    "symlink": lambda fs, lp: fs.symlink(P, Q),
    "tail": lambda fs, lp: fs.tail(P),
    "touch": lambda fs, lp: fs.touch(P),
    "tree": lambda fs, lp: fs.tree(D),
    "ukey": lambda fs, lp: fs.ukey(P),
    "upload": lambda fs, lp: fs.upload(lp, P),
    "walk": lambda fs, lp: list(fs.walk(D)),
    "write_bytes": lambda fs, lp: fs.write_bytes(P, b"x"),
    "write_text": lambda fs, lp: fs.write_text(P, "x"),
}


def _under_ws(arg: Any) -> bool:
    if isinstance(arg, (list, tuple)):
        return any(_under_ws(a) for a in arg)
    return isinstance(arg, str) and (arg == "/ws" or arg.startswith("/ws/"))


def test_the_call_table_covers_every_path_method() -> None:
    assert set(CALLS) == ROUTED | DERIVED | EXTENSIONS


@pytest.mark.parametrize("name", sorted(CALLS))
def test_method_goes_through_the_check(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a policy denying every operation on /ws, calling ``name`` on /ws paths consults the
    check and never hands a /ws path to the backend (reads of "/" on the way are allowed)."""
    backend = SpyMemory(global_store=False, skip_instance_cache=True)
    backend.pipe_file(P, b"data")
    rule = {"name": "deny-all", "paths": ["**"], "ops": ["all"], "action": "deny", "reason": "test"}
    fs = SandboxFileSystem(policy=_spec(rule).bind(host="/ws", workspace="/ws", run_id="T"), fs=backend)
    routed: list[Any] = []
    real_route = fs._route
    monkeypatch.setattr(fs, "_route", lambda *a, **k: (routed.append(a), real_route(*a, **k))[1])
    local = tmp_path / "local.txt"
    local.write_bytes(b"local")
    backend.calls.clear()
    # denied (or a consequence of it: not found, not a dir...); what matters is below
    with contextlib.suppress(OSError, ValueError, NotImplementedError, KeyError):
        CALLS[name](fs, str(local))
    assert routed, f"{name} never consulted the policy"
    leaked = [c for c in backend.calls if _under_ws(c[1])]
    assert not leaked, f"{name} reached the backend on a denied path: {leaked}"


# -- behaviour over a run's workspace (local backend) ---------------------------------------------


@pytest.fixture
def sfs(run_env: RunEnv, monkeypatch: pytest.MonkeyPatch) -> SandboxFileSystem:
    monkeypatch.chdir(run_env.ws.root)
    return SandboxFileSystem(policy=run_env.policy)


def test_read_your_writes_and_merged_listings(run_env: RunEnv, sfs: SandboxFileSystem) -> None:
    ws = run_env.ws.root
    sfs.pipe_file(f"{ws}/reports/a.csv", b"a\n")
    sfs.pipe(f"{ws}/data/b.txt", b"b\n")
    assert Path(run_env.redirected("reports/a.csv")).read_bytes() == b"a\n"
    assert not (run_env.host / "reports").exists()
    assert sfs.cat_file(f"{ws}/reports/a.csv") == b"a\n"  # read back through the workspace path
    top = set(sfs.ls(ws, detail=False))
    assert {f"{ws}/reports", f"{ws}/scripts", f"{ws}/data", f"{ws}/configs"} <= top
    data = set(sfs.ls(f"{ws}/data", detail=False))  # the host's data/ merged with $TV_RUN_DIR/data
    assert {f"{ws}/data/lakehouse", f"{ws}/data/b.txt", f"{ws}/data/existing.txt"} <= data
    assert sfs.glob(f"{ws}/data/*.txt") == [f"{ws}/data/b.txt", f"{ws}/data/existing.txt"]
    assert sfs.find(f"{ws}/reports") == [f"{ws}/reports/a.csv"]
    assert sfs.info(f"{ws}/reports/a.csv")["name"] == f"{ws}/reports/a.csv"
    lake = sfs.ls(f"{ws}/data/lakehouse", detail=False)
    assert f"{ws}/{LAKE_FILE}" in lake
    # relative paths are relative to the cwd, as with the local filesystem
    assert sfs.cat_file("sandbox://reports/a.csv") == b"a\n"


def test_update_copies_up_and_exclusive_sees_the_merged_view(run_env: RunEnv, sfs: SandboxFileSystem) -> None:
    code = run_env.abspath("scripts/legacy_step.py")
    original = Path(code).read_bytes()
    with pytest.raises(FileExistsError):
        sfs.open(code, "xb")
    with sfs.open(code, "r+b") as fh:
        fh.write(b"#!")
    assert sfs.cat_file(code) == b"#!" + original[2:]
    assert Path(code).read_bytes() == original  # the host's file, through the workspace symlink
    sfs.touch(code, truncate=False)
    assert Path(run_env.redirected("scripts/legacy_step.py")).read_bytes() == b"#!" + original[2:]


def test_removing_what_only_the_host_has_is_denied(run_env: RunEnv, sfs: SandboxFileSystem) -> None:
    code = run_env.abspath("scripts/legacy_step.py")
    original = Path(code).read_bytes()
    for remove in (sfs.rm_file, sfs.rm):
        with pytest.raises(AccessDenied) as ei:
            remove(code)
        assert ei.value.rule == "workspace-redirect" and ei.value.layer == "fsspec"
    with pytest.raises(AccessDenied):
        sfs.mv(code, run_env.abspath("{run}/data/moved.py"))
    sfs.pipe_file(code, b"mine")  # the run's own copy can go; the original shows through again
    sfs.rm_file(code)
    assert sfs.cat_file(code) == original


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_a_link_planted_in_the_run_folder_cannot_carry_a_redirect_out(
    make_run_env: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    env = make_run_env(mode)
    monkeypatch.chdir(env.ws.root)
    fs = SandboxFileSystem(policy=env.policy)
    before = env.protected_snapshot()
    # data/to_lake is not in the workspace: a write there is redirected to $TV_RUN_DIR/data/to_lake,
    # which the run made a symlink to the lakehouse
    path = env.abspath("data/to_lake/planted.csv")
    if mode == "enforce":
        with pytest.raises(AccessDenied) as ei:
            fs.pipe_file(path, b"x")
        assert ei.value.rule == "lakehouse-read-only"
    else:
        fs.pipe_file(path, b"x")
        assert Path(env.ws.run_storage, "audit/data/lakehouse/planted.csv").read_bytes() == b"x"
    assert env.protected_snapshot() == before


def test_recursive_rm_removes_links_never_follows_them(run_env: RunEnv, sfs: SandboxFileSystem) -> None:
    before = run_env.protected_snapshot()
    data = f"{run_env.ws.run_dir}/data"
    assert sfs.islink(f"{data}/to_lake")
    sfs.rm(data, recursive=True)
    assert not os.path.lexists(os.path.join(run_env.ws.run_storage, "data"))
    assert run_env.protected_snapshot() == before


def test_transactions_commit_on_exit(run_env: RunEnv, sfs: SandboxFileSystem) -> None:
    out, rel = run_env.abspath("reports/tx.txt"), run_env.abspath("reports/tx2.txt")
    with sfs.transaction:
        sfs.pipe_file(out, b"tx")
        with sfs.open(rel, "wb") as fh:
            fh.write(b"tx2")
        assert not os.path.exists(run_env.redirected("reports/tx.txt"))
    assert Path(run_env.redirected("reports/tx.txt")).read_bytes() == b"tx"
    assert Path(run_env.redirected("reports/tx2.txt")).read_bytes() == b"tx2"


def test_events_record_denials_and_redirects(run_env: RunEnv) -> None:
    events: list[dict[str, Any]] = []
    fs = SandboxFileSystem(policy=run_env.policy, on_event=events.append)
    fs.pipe_file(run_env.abspath("out.txt"), b"x")
    with pytest.raises(PermissionError):
        fs.pipe_file(run_env.abspath("data/lakehouse/selection_audit.json"), b"{}")
    red, deny = events
    assert (red["action"], red["op"], red["rule"]) == ("redirect", "write", "workspace-redirect")
    assert red["target"] == run_env.redirected("out.txt") and red["layer"] == "fsspec"
    assert (deny["action"], deny["rule"]) == ("deny", "selection-audit-in-lakehouse")


# -- the protocol, pandas, construction -----------------------------------------------------------


def test_protocol_is_registered(run_env: RunEnv) -> None:
    assert fsspec.get_filesystem_class("sandbox") is SandboxFileSystem
    fs = fsspec.filesystem("sandbox", policy=run_env.policy)
    assert isinstance(fs, SandboxFileSystem) and isinstance(fs.fs, LocalFileSystem)
    url = "sandbox://" + run_env.abspath("reports/opened.txt")
    with fsspec.open(url, "w", policy=run_env.policy) as fh:
        fh.write("text mode\n")
    assert Path(run_env.redirected("reports/opened.txt")).read_text() == "text mode\n"
    with fsspec.open(url, "r", policy=run_env.policy) as fh:
        assert fh.read() == "text mode\n"
    with (
        pytest.raises(PermissionError),
        fsspec.open("sandbox://" + run_env.abspath("data/lakehouse/x.csv"), "wb", policy=run_env.policy),
    ):
        pass


def test_pandas_through_the_protocol(run_env: RunEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    pd = pytest.importorskip("pandas")
    monkeypatch.chdir(run_env.ws.root)
    opts = {"policy": run_env.policy}
    lake = pd.read_csv("sandbox://" + run_env.abspath(LAKE_FILE), storage_options=opts)
    assert len(lake) > 0
    url = "sandbox://" + run_env.abspath("reports/prices.csv")
    lake.to_csv(url, index=False, storage_options=opts)
    assert Path(run_env.redirected("reports/prices.csv")).is_file()
    pd.testing.assert_frame_equal(pd.read_csv(url, storage_options=opts), lake)
    lake.to_csv("sandbox://data/rel.csv", index=False, storage_options=opts)  # relative: the cwd
    assert Path(run_env.redirected("data/rel.csv")).is_file()
    before = run_env.protected_snapshot()
    with pytest.raises(PermissionError, match="lakehouse-read-only"):
        lake.to_csv("sandbox://data/lakehouse/copy.csv", storage_options=opts)
    assert run_env.protected_snapshot() == before


def test_parquet_through_the_protocol(run_env: RunEnv) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    opts = {"policy": run_env.policy}
    df = pd.DataFrame({"a": [1, 2, 3]})
    url = "sandbox://" + run_env.abspath("data/frame.parquet")
    df.to_parquet(url, storage_options=opts)
    assert Path(run_env.redirected("data/frame.parquet")).is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=opts), df)


def test_policy_from_the_environment_of_a_step(
    run_env: RunEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = tmp_path / "policy.json"
    resolved.write_text(json.dumps(run_env.policy.to_dict()))
    monkeypatch.setenv("TV_SANDBOX_POLICY", str(resolved))
    fs = fsspec.filesystem("sandbox")
    assert fs.policy.ctx == run_env.policy.ctx
    with fsspec.open("sandbox://" + run_env.abspath("reports/env.txt"), "wb") as fh:
        fh.write(b"env")
    assert Path(run_env.redirected("reports/env.txt")).read_bytes() == b"env"
    # and a policy given as its dict, or as the path of its JSON
    assert SandboxFileSystem(policy=run_env.policy.to_dict()).policy.ctx == run_env.policy.ctx
    assert SandboxFileSystem(policy=resolved).policy.ctx == run_env.policy.ctx


def test_construction_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TV_SANDBOX_POLICY", raising=False)
    with pytest.raises(ValueError, match=r"needs a policy.*TV_SANDBOX_POLICY"):
        SandboxFileSystem()
    with pytest.raises(ValueError, match="needs a policy"):
        fsspec.filesystem("sandbox")
    monkeypatch.setenv("TV_SANDBOX_POLICY", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="cannot read the policy file"):
        SandboxFileSystem()
    (tmp_path / "bad.json").write_text('{"not": "a policy"}')
    with pytest.raises(ValueError, match="not a resolved policy"):
        SandboxFileSystem(policy=tmp_path / "bad.json")
    pol = allow_all(str(tmp_path))
    with pytest.raises(ValueError, match="not both"):
        SandboxFileSystem(policy=pol, fs=LocalFileSystem(), target_protocol="memory")


def test_instances_are_not_shared_and_pickle(run_env: RunEnv, tmp_path: Path) -> None:
    a = SandboxFileSystem(policy=run_env.policy)
    b = SandboxFileSystem(policy=allow_all(str(tmp_path)))
    assert a is not b and a != b
    c = pickle.loads(pickle.dumps(a))
    assert c.policy.ctx == a.policy.ctx and c == a


# -- another backend: the policy decides on the memory filesystem's own paths ---------------------


@pytest.fixture
def mem() -> tuple[SandboxFileSystem, MemoryFileSystem]:
    backend = MemoryFileSystem(global_store=False, skip_instance_cache=True)
    backend.pipe("/ws/data/lakehouse/BTC.csv", b"lake")
    backend.pipe("/ws/scripts/step.py", b"code")
    policy = load_policy(profile="production").bind(
        host="/host", workspace="/ws", run_id="R1", temp_dirs=("/tmp",)
    )
    return SandboxFileSystem(policy=policy, fs=backend), backend


def test_memory_backend(mem: tuple[SandboxFileSystem, MemoryFileSystem]) -> None:
    fs, backend = mem
    run = "/ws/artifacts/summaries/runs/R1"
    fs.pipe_file("/ws/reports/out.csv", b"out")
    assert backend.cat_file(f"{run}/reports/out.csv") == b"out"
    assert fs.cat_file("sandbox:///ws/reports/out.csv") == b"out"
    assert fs.cat_file("/ws/reports/../scripts/step.py") == b"code"  # ".." folded, then decided
    with pytest.raises(AccessDenied) as ei:
        fs.pipe_file("/ws/data/lakehouse/new.csv", b"x")
    assert ei.value.rule == "lakehouse-read-only"
    with pytest.raises(AccessDenied):
        fs.pipe_file("/ws/reports/../data/lakehouse/dotdot.csv", b"x")
    with pytest.raises(AccessDenied):
        fs.rm_file("/ws/data/lakehouse/BTC.csv")
    with pytest.raises(AccessDenied) as ei:
        fs.pipe_file("/elsewhere/x", b"x")
    assert ei.value.rule == "outside-writable-roots"
    fs.pipe_file("/tmp/scratch", b"t")  # a temp dir: allowed as aimed
    assert backend.cat_file("/tmp/scratch") == b"t"
    with fs.open("/ws/scripts/step.py", "ab") as fh:
        fh.write(b"+")
    assert fs.cat_file("/ws/scripts/step.py") == b"code+"
    assert backend.cat_file("/ws/scripts/step.py") == b"code"
    assert set(fs.ls("/ws/scripts", detail=False)) == {"/ws/scripts/step.py"}
    assert "/ws/reports/out.csv" in fs.find("/ws/reports")
    with pytest.raises(NotImplementedError):
        fs.chmod("/ws/reports/out.csv", 0o600)  # the memory filesystem has no chmod
    assert sorted(backend.find("/ws/data")) == ["/ws/data/lakehouse/BTC.csv"]


def test_chained_url(mem: tuple[SandboxFileSystem, MemoryFileSystem]) -> None:
    fs, _ = mem
    with fsspec.open("sandbox::memory://ws/reports/chained.txt", "wb", sandbox={"policy": fs.policy}) as fh:
        fh.write(b"chained")
    run = "/ws/artifacts/summaries/runs/R1"
    assert fsspec.filesystem("memory").cat_file(f"{run}/reports/chained.txt") == b"chained"
    fsspec.filesystem("memory").rm(f"{run}/reports/chained.txt")


FS_STEP = """
import fsspec
from sandbox.errors import AccessDenied
fs = fsspec.filesystem("sandbox")  # the run's policy, event log and overlay, from the environment
with fs.open("reports/fs.csv", "w") as f:
    f.write("a,b")
print("read back:", fs.cat_file("reports/fs.csv").decode(), sorted(fs.ls("reports", detail=False)))
try:
    fs.pipe_file("data/lakehouse/new.csv", b"x")
except AccessDenied as e:
    print("denied:", e.rule)
"""


@pytest.mark.parametrize("kernel", ["auto", "off"])
def test_in_a_step_fsspec_uses_the_runs_policy_event_log_and_overlay(tmp_path: Path, kernel: str) -> None:
    """Inside `tv-sandbox run`, fsspec.filesystem("sandbox") needs no arguments: its redirects land
    in the run folder (through the kernel layer's overlay when it is active, as the guard's do),
    and its denials and redirects are in the run's event log and report."""
    host = make_host(tmp_path / "host")
    before = tree_snapshot(host / "data")
    r = sandbox_run(host, "fs1", sys.executable, "-c", FS_STEP, options=("--kernel", kernel))
    assert r.returncode == 0, r.stderr
    assert "read back: a,b ['reports/fs.csv']" in r.stdout
    assert "denied: lakehouse-read-only" in r.stdout
    out = host / "artifacts/summaries/runs/fs1"
    assert (out / "reports" / "fs.csv").read_text() == "a,b"
    events = [json.loads(ln) for ln in (out / "logs" / "sandbox_events.jsonl").read_text().splitlines()]
    fs_events = {(e["action"], e["rule"]) for e in events if e["layer"] == "fsspec"}
    assert ("deny", "lakehouse-read-only") in fs_events and ("redirect", "workspace-redirect") in fs_events
    report = json.loads((out / "sandbox_report.json").read_text())
    assert report["events"]["by_layer"].get("fsspec", 0) >= 2
    assert tree_snapshot(host / "data") == before
