"""The atomic exporter on real files: round trip, verify, refusal, overwrite, recover, errors."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import EXIT_EXPORT, EXIT_USAGE, ExportError, PreflightError
from sandbox.export import MANIFEST_NAME, export_run, read_manifest, recover, verify
from sandbox.export import _exporter as export

POLICY_SHA = "ab" * 32


def make_tree(root: Path, tag: str = "new", *, specials: bool = True) -> Path:
    """A run folder with nested and empty folders, odd modes, links, and (as root) a whiteout."""
    (root / "data" / "nested" / "deeper").mkdir(parents=True)
    (root / "reports").mkdir()
    (root / "empty" / "inner_empty").mkdir(parents=True)
    (root / "data" / "candidates.json").write_text(json.dumps({"tag": tag, "n": 3}))
    (root / "data" / "nested" / "deeper" / "returns.bin").write_bytes(os.urandom(70_000) + tag.encode())
    (root / "data" / "empty.txt").write_bytes(b"")
    (root / "reports" / f"report-{tag}.md").write_text(f"# {tag}\n")
    script = root / "reports" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    private = root / "data" / "private.txt"
    private.write_text("secret\n")
    private.chmod(0o600)
    os.symlink("nested/deeper/returns.bin", root / "data" / "rel_link")
    os.symlink("/host/data/lakehouse", root / "data" / "abs_link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("../data", root / "reports" / "dir_link")
    if specials:
        os.mkfifo(root / "data" / "a_fifo")
    return root


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """What an export must reproduce: kind, content hash, permission bits, link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = (
                    "file",
                    hashlib.sha256(Path(p).read_bytes()).hexdigest(),
                    stat.S_IMODE(st.st_mode),
                )
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
    return out


def exported(dest: Path) -> dict[str, tuple[Any, ...]]:
    snap = snapshot(dest)
    del snap[MANIFEST_NAME]
    return snap


def do_export(src: Path, dest: Path, run_id: str = "R1", **kw: Any) -> export.ExportResult:
    kw.setdefault("status", "succeeded")
    kw.setdefault("exit_code", 0)
    return export_run(src, dest, run_id=run_id, policy_name="production", policy_sha256=POLICY_SHA, **kw)


def leftovers(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".tvs-" in n)


# -- round trip -------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "run")
    dest = tmp_path / "host" / "artifacts" / "summaries" / "runs" / "R1"  # parents created
    res = do_export(src, dest, status="failed", exit_code=3, extra={"profile": "production", "n": [1, 2]})

    assert res.destination == str(dest) and not res.replaced_previous
    snap = snapshot(src)
    assert exported(dest) == snap
    assert (dest / "empty" / "inner_empty").is_dir()
    assert os.readlink(dest / "dangling") == "does/not/exist"
    assert stat.S_IMODE(os.stat(dest / "reports" / "run.sh").st_mode) == 0o750

    m = read_manifest(dest)
    assert m == res.manifest
    assert (m["schema"], m["schema_version"], m["run_id"]) == ("tv-sandbox-manifest", 1, "R1")
    assert (m["status"], m["exit_code"]) == ("failed", 3)
    assert m["policy"] == {"name": "production", "sha256": POLICY_SHA}
    assert m["created"].endswith("Z") and m["created"][10] == "T"
    assert m["run"] == {"profile": "production", "n": [1, 2]}
    paths = [f["path"] for f in m["files"]]
    assert paths == sorted(paths) and MANIFEST_NAME not in paths
    for f in m["files"]:
        data = (src / f["path"]).read_bytes()
        assert (f["size"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert f["mode"] == stat.S_IMODE(os.stat(src / f["path"]).st_mode)
    assert {s["path"]: s["target"] for s in m["symlinks"]} == {
        "dangling": "does/not/exist",
        "data/abs_link": "/host/data/lakehouse",
        "data/rel_link": "nested/deeper/returns.bin",
        "reports/dir_link": "../data",
    }
    assert {d["path"] for d in m["dirs"]} >= {"empty", "empty/inner_empty", "data/nested/deeper"}
    assert m["skipped"] == [{"path": "data/a_fifo", "kind": "fifo"}]
    assert m["totals"] == {"files": len(m["files"]), "bytes": sum(f["size"] for f in m["files"])}
    assert (res.files, res.bytes) == (m["totals"]["files"], m["totals"]["bytes"])
    assert verify(dest) == []
    assert leftovers(dest.parent) == []
    # written for a reader: indented, one line per file
    lines = (dest / MANIFEST_NAME).read_text().splitlines()
    assert lines[0] == "{" and lines[1].startswith(' "schema": ')
    assert sum(1 for line in lines if line.startswith('  {"path": ')) >= len(m["files"])


def test_whiteouts_are_listed_as_deleted_not_copied(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "run")
    (src / "audit" / "data" / "lakehouse").mkdir(parents=True)
    try:
        os.mknod(src / "audit" / "data" / "lakehouse" / "prices.csv", stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.mknod(src / "gone.txt", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        pytest.skip(reason="creating a whiteout (char device 0/0) needs CAP_MKNOD")
    dest = tmp_path / "out" / "R1"
    m = do_export(src, dest).manifest
    assert m["deleted"] == ["audit/data/lakehouse/prices.csv", "gone.txt"]
    assert not os.path.lexists(dest / "gone.txt")
    assert (dest / "audit" / "data" / "lakehouse").is_dir()
    assert verify(dest) == []


def test_non_utf8_names_and_a_top_level_manifest_json(tmp_path: Path) -> None:
    src = tmp_path / "run"
    src.mkdir()
    (src / "data").mkdir()
    with open(os.path.join(os.fsencode(src / "data"), b"caf\xe9.csv"), "wb") as fh:
        fh.write(b"a,b\n")
    (src / MANIFEST_NAME).write_text("{}")  # the run's own file of that name is not exported
    dest = tmp_path / "out" / "R1"
    m = do_export(src, dest).manifest
    assert [f["path"] for f in m["files"]] == [os.fsdecode(b"data/caf\xe9.csv")]
    assert {"path": MANIFEST_NAME, "kind": "reserved name"} in m["skipped"]
    assert (
        Path(os.fsdecode(os.path.join(os.fsencode(dest / "data"), b"caf\xe9.csv")))
    ).read_bytes() == b"a,b\n"
    assert verify(dest) == []


# -- verify -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (
            lambda d: (d / "data/candidates.json").write_text(
                "X" * len((d / "data/candidates.json").read_text())
            ),
            "content differs (sha256): data/candidates.json",
        ),
        (lambda d: (d / "data/empty.txt").write_text("now longer"), "size differs: data/empty.txt"),
        (lambda d: (d / "data/private.txt").unlink(), "missing file: data/private.txt"),
        (lambda d: (d / "data/extra.txt").write_text("x"), "unlisted file: data/extra.txt"),
        (lambda d: (d / "empty/inner_empty/x").write_text("x"), "unlisted file: empty/inner_empty/x"),
        (lambda d: (d / "new_dir").mkdir(), "unlisted directory: new_dir"),
        (lambda d: (d / "empty/inner_empty").rmdir(), "missing directory: empty/inner_empty"),
        (
            lambda d: ((d / "dangling").unlink(), os.symlink("/elsewhere", d / "dangling")),
            "symlink target differs: dangling",
        ),
        (lambda d: (d / "data/rel_link").unlink(), "missing symlink: data/rel_link"),
        (lambda d: (d / "reports/run.sh").chmod(0o777), "mode differs: reports/run.sh"),
        (
            lambda d: ((d / "data/empty.txt").unlink(), (d / "data/empty.txt").mkdir()),
            "not a regular file: data/empty.txt",
        ),
    ],
    ids=[
        "changed",
        "resized",
        "missing",
        "extra",
        "extra-in-empty-dir",
        "extra-dir",
        "missing-dir",
        "retargeted-link",
        "missing-link",
        "chmod",
        "file-became-dir",
    ],
)
def test_verify_detects(tmp_path: Path, change: Any, expect: str) -> None:
    dest = tmp_path / "out" / "R1"
    do_export(make_tree(tmp_path / "run"), dest)
    change(dest)
    problems = verify(dest)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expect)


def test_verify_without_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    [line] = verify(tmp_path / "plain")
    assert "cannot read the manifest" in line
    (tmp_path / "plain" / MANIFEST_NAME).write_text('{"schema": "something-else"}')
    with pytest.raises(ValueError, match="not a tv-sandbox manifest"):
        read_manifest(tmp_path / "plain")
    assert len(verify(tmp_path / "plain")) == 1


def test_verify_names_what_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry or a folder this user cannot read is a problem line -- the folder does not verify --
    never an exception (`tv-sandbox verify` said `internal error`, exit 125)."""
    from sandbox.export import manifest as manifest_mod

    dest = tmp_path / "out" / "R1"
    do_export(make_tree(tmp_path / "run"), dest)

    def refused(path: str, *args: object) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    real_scandir = os.scandir
    monkeypatch.setattr(manifest_mod, "_sha256", refused)
    def where(p: Any) -> str:  # verify lists folders by descriptor
        return os.readlink(f"/proc/self/fd/{p}") if isinstance(p, int) else str(p)

    monkeypatch.setattr(
        manifest_mod.os, "scandir", lambda p: refused(p) if where(p).rstrip("/").endswith("/empty") else real_scandir(p)
    )
    problems = verify(dest)
    assert "cannot read: empty: Permission denied" in problems, problems
    assert "cannot read: data/candidates.json: Permission denied" in problems, problems


# -- existing destination ---------------------------------------------------------------------------


def test_existing_dest_refused_without_overwrite_and_nothing_written(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    dest = parent / "R1"
    do_export(make_tree(tmp_path / "old", "old"), dest, run_id="OLD")
    crashed = parent / ".R9.tvs-stage-0123abcd"  # a crash's leftover: untouched by a refused export
    crashed.mkdir()
    before = snapshot(parent)
    with pytest.raises(PreflightError, match=r"already exported.*--overwrite") as info:
        do_export(make_tree(tmp_path / "new"), dest, run_id="NEW")
    assert info.value.exit_status == EXIT_USAGE
    assert snapshot(parent) == before
    assert read_manifest(dest)["run_id"] == "OLD"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "fallback-renames"])
def test_overwrite_replaces_the_previous_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(export, "_load_renameat2", lambda: None)
    dest = tmp_path / "runs" / "R1"
    old_src = make_tree(tmp_path / "old", "old")
    (old_src / "only_in_old.txt").write_text("old\n")
    do_export(old_src, dest, run_id="OLD")
    (tmp_path / "runs" / "R2").mkdir()  # a neighbour, untouched
    new_src = make_tree(tmp_path / "new", "new")
    res = do_export(new_src, dest, run_id="NEW", overwrite=True)
    assert res.replaced_previous
    assert verify(dest) == []
    assert read_manifest(dest)["run_id"] == "NEW"
    assert not (dest / "only_in_old.txt").exists() and not (dest / "reports" / "report-old.md").exists()
    snap = snapshot(new_src)
    assert exported(dest) == snap
    assert sorted(os.listdir(tmp_path / "runs")) == ["R1", "R2"]


def test_overwrite_without_previous_is_a_first_export(tmp_path: Path) -> None:
    res = do_export(make_tree(tmp_path / "run"), tmp_path / "runs" / "R1", overwrite=True)
    assert not res.replaced_previous and verify(tmp_path / "runs" / "R1") == []


def test_overwrite_of_a_plain_file_or_a_symlink(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    os.symlink(target, runs / "R1")
    (runs / "R2").write_text("a file in the way")
    for name in ("R1", "R2"):
        do_export(make_tree(tmp_path / f"run{name}"), runs / name, overwrite=True)
        assert verify(runs / name) == [] and not (runs / name).is_symlink()
    assert (target / "keep.txt").read_text() == "keep"  # the link was replaced, not followed


# -- recover ----------------------------------------------------------------------------------------


def test_recover(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    do_export(make_tree(tmp_path / "a", "a"), parent / "A", run_id="A")
    do_export(make_tree(tmp_path / "b", "b"), parent / "B", run_id="B")
    do_export(make_tree(tmp_path / "c", "c"), parent / "OLDA", run_id="OLDA")
    os.rename(parent / "B", parent / ".B.tvs-old-00ff00ff")  # moved aside, B missing: restored
    os.rename(parent / "OLDA", parent / ".A.tvs-old-11ee11ee")  # A present: removed
    (parent / ".A.tvs-stage-22dd22dd" / "data").mkdir(parents=True)
    (parent / ".A.tvs-stage-22dd22dd" / "data" / "half.bin").write_bytes(b"x" * 10)
    (parent / ".C.tvs-stage-33cc33cc").write_text("a file named like a stage")
    for keep in (".hidden", ".A.tvs-stage-notahex", ".tvs-stage-abcd", "D.tvs-old-abcd"):
        (parent / keep).mkdir()
    live = parent / ".E.tvs-stage-44bb44bb"  # a running export holds its stage locked
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        actions = recover(parent)
    finally:
        os.close(fd)
    assert len(actions) == 4, actions
    assert any(a.startswith(f"restored {parent / 'B'}") for a in actions)
    assert sorted(os.listdir(parent)) == sorted(
        [
            "A",
            "B",
            ".E.tvs-stage-44bb44bb",
            ".hidden",
            ".A.tvs-stage-notahex",
            ".tvs-stage-abcd",
            "D.tvs-old-abcd",
        ]
    )
    assert read_manifest(parent / "B")["run_id"] == "B" and verify(parent / "B") == []
    assert read_manifest(parent / "A")["run_id"] == "A"
    assert recover(parent) == [f"removed {live} (an unfinished export stage)"]  # lock released now
    assert recover(parent) == []
    assert recover(tmp_path / "missing") == []


def test_export_runs_recover_first_and_a_restored_previous_blocks(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    do_export(make_tree(tmp_path / "old", "old"), parent / "R1", run_id="OLD")
    os.rename(parent / "R1", parent / ".R1.tvs-old-abcdef12")
    (parent / ".R1.tvs-stage-abcdef12").mkdir()
    with pytest.raises(PreflightError, match="already exported"):
        do_export(make_tree(tmp_path / "new", "new"), parent / "R1", run_id="NEW")
    assert read_manifest(parent / "R1")["run_id"] == "OLD" and leftovers(parent) == []
    (parent / ".R1.tvs-stage-abcdef13").mkdir()
    res = do_export(tmp_path / "new", parent / "R1", run_id="NEW", overwrite=True)
    assert res.recovered == (f"removed {parent / '.R1.tvs-stage-abcdef13'} (an unfinished export stage)",)


def test_concurrent_exports_in_one_parent_do_not_clean_each_other(tmp_path: Path) -> None:
    """Each export's recover() must leave a running neighbour's stage alone (it is flock'ed)."""
    src = make_tree(tmp_path / "run", specials=False)
    parent = tmp_path / "runs"
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for i in range(15):
                do_export(
                    src, parent / f"{name}{i}", run_id=name, overwrite=True, _fault=lambda p: os.sched_yield()
                )
                do_export(src, parent / f"{name}{i}", run_id=name, overwrite=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ABC"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert leftovers(parent) == [] and len(os.listdir(parent)) == 45
    assert all(verify(parent / n) == [] for n in os.listdir(parent))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "fallback-renames"])
def test_concurrent_overwrites_of_one_dest_all_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """--overwrite means last writer wins: racing exports of one RUN_ID serialise on a lock of the
    tree they replace; each sees the destination whole, and nothing is left beside it."""
    if not exchange:
        monkeypatch.setattr(export, "_load_renameat2", lambda: None)
    srcs = {n: make_tree(tmp_path / n, n, specials=False) for n in "ABCD"}
    dest = tmp_path / "runs" / "same"
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(srcs))

    def worker(name: str) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                do_export(srcs[name], dest, run_id=name, overwrite=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert verify(dest) == [] and os.listdir(dest.parent) == ["same"]
    run_id = read_manifest(dest)["run_id"]
    assert exported(dest) == snapshot(srcs[run_id])


def test_concurrent_first_exports_of_one_dest_one_wins(tmp_path: Path) -> None:
    srcs = {n: make_tree(tmp_path / n, n, specials=False) for n in "ABCD"}
    dest = tmp_path / "runs" / "dup"
    results: dict[str, BaseException | None] = {}
    barrier = threading.Barrier(len(srcs))

    def worker(name: str) -> None:
        barrier.wait()
        try:
            do_export(srcs[name], dest, run_id=name)
            results[name] = None
        except (ExportError, PreflightError) as exc:
            results[name] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, e in results.items() if e is None]
    assert len(winners) == 1, results
    assert read_manifest(dest)["run_id"] == winners[0] and verify(dest) == []
    assert os.listdir(dest.parent) == ["dup"]


# -- faults raised in-process -----------------------------------------------------------------------

POINTS = ["recovered", "staged-file", "staged-dir", "before-manifest", "before-rename", "after-rename",
          "after-exchange", "after-move-old", "done"]  # fmt: skip
COMMITTED = {"after-rename", "after-exchange", "done"}


@pytest.mark.parametrize("mode", ["first", "exchange", "fallback"])
@pytest.mark.parametrize("point", POINTS)
def test_a_fault_raised_at_each_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, point: str
) -> None:
    if mode == "fallback":
        monkeypatch.setattr(export, "_load_renameat2", lambda: None)
    dest = tmp_path / "runs" / "R1"
    if mode != "first":
        do_export(make_tree(tmp_path / "old", "old"), dest, run_id="OLD")
    src = make_tree(tmp_path / "new", "new")
    seen: list[str] = []

    def fault(p: str) -> None:
        seen.append(p)
        if p == point:
            raise OSError(errno.EIO, "injected")

    try:
        do_export(src, dest, run_id="NEW", overwrite=True, _fault=fault)
    except ExportError as exc:
        assert exc.exit_status == EXIT_EXPORT
        assert "\n" not in str(exc) and "injected" in str(exc)
        assert ("new export is in place" in str(exc)) == (point in COMMITTED)
    else:
        assert point not in seen  # this mode never reaches that point
    assert leftovers(dest.parent) == []
    if point in seen and point not in COMMITTED:
        if mode == "first":
            assert not os.path.lexists(dest)
        else:
            assert read_manifest(dest)["run_id"] == "OLD" and verify(dest) == []
    else:
        assert read_manifest(dest)["run_id"] == "NEW" and verify(dest) == []


def test_a_non_oserror_fault_propagates_and_cleans_up(tmp_path: Path) -> None:
    def fault(p: str) -> None:
        if p == "before-rename":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        do_export(make_tree(tmp_path / "run"), tmp_path / "runs" / "R1", _fault=fault)
    assert os.listdir(tmp_path / "runs") == []


# -- bad inputs and unreadable files ----------------------------------------------------------------


def test_bad_inputs(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "run")
    with pytest.raises(ValueError, match="status"):
        do_export(src, tmp_path / "o" / "R1", status="ok")
    with pytest.raises(TypeError, match="JSON"):
        do_export(src, tmp_path / "o" / "R1", extra={"x": object()})
    with pytest.raises(ExportError, match="missing or not a folder"):
        do_export(tmp_path / "nope", tmp_path / "o" / "R1")
    with pytest.raises(ExportError, match="one folder contains the other"):
        do_export(src, src / "data" / "R1")
    assert not (tmp_path / "o").exists() and leftovers(src / "data") == []


def test_an_unreadable_file_is_an_export_error(tmp_path: Path) -> None:
    """As root nothing is unreadable, so a forked child drops to nobody (reaching the files through
    an fd opened before, since pytest's folders are private to root)."""
    pub = tmp_path / "pub"
    pub.mkdir()
    src = make_tree(pub / "run", specials=False)
    (src / "data" / "locked.bin").write_bytes(b"x")
    (src / "data" / "locked.bin").chmod(0o000)
    (src / "data" / "private.txt").chmod(0o644)
    out = pub / "out"
    (out / "prev").mkdir(parents=True)
    for d in [pub, out, src, *[p for p in src.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        d.chmod(0o777 if d == out else 0o755)
    if os.geteuid() != 0:
        with pytest.raises(ExportError) as info:
            do_export(src, out / "R1")
        message = str(info.value)
    else:
        message = _in_child_as_nobody(pub, "run", "out/R1")
    assert "permission denied reading" in message and "locked.bin" in message, message
    assert "make it readable" in message and "nothing was exported" in message
    assert sorted(os.listdir(out)) == ["prev"]


def _in_child_as_nobody(base: Path, src: str, dest: str) -> str:
    import ctypes

    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: keep /proc/self/fd usable
            via = f"/proc/self/fd/{base_fd}"
            try:
                do_export(f"{via}/{src}", f"{via}/{dest}")
                os.write(w, b"no error")
            except ExportError as exc:
                os.write(w, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(base_fd)
    with os.fdopen(r, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message
    return message
