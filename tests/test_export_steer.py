"""The exporter cannot be steered by what a run folder holds, or by changes made to it while the
export runs: links are copied as links and never followed, fifos, sockets and devices are never
opened, sparse files stay sparse, the size limit holds, and on the same filesystem files are
linked rather than copied -- with the same manifest."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.errors import EXIT_EXPORT, ExportError
from sandbox.export import export_run, read_manifest, verify


def do_export(src: Path, dest: Path, **kw: object) -> object:
    fault = kw.pop("_fault", None)
    return export_run(
        src,
        dest,
        run_id="R",
        status="succeeded",
        exit_code=0,
        policy_name="p",
        policy_sha256="0" * 64,
        _fault=fault,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail (not hang) when an export blocks: a FIFO opened for reading waits for a writer."""

    def ring(*_: object) -> None:
        raise TimeoutError("the export blocked")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    secret = out / "secret.txt"
    secret.write_text("outside the run folder")
    secret.chmod(0o777)
    return out


@pytest.mark.parametrize("by_link", [True, False], ids=["link", "copy"])
def test_a_folder_swapped_for_a_link_during_the_export_is_exported_as_that_link(
    tmp_path: Path, by_link: bool
) -> None:
    """A daemon swapping a run-folder directory for a symlink to a folder outside, mid-export:
    the link is exported as a link, nothing of the outside folder is read or copied."""
    outside = _outside(tmp_path)
    src = tmp_path / "run"
    src.mkdir()
    names = [f"d{i:02d}" for i in range(12)]
    for n in names:
        (src / n).mkdir()
        (src / n / "in.txt").write_text(n)
    swapped: list[str] = []

    def swap(point: str) -> None:
        if point == "staged-dir" and not swapped:  # every folder not staged yet becomes a link
            staged = {p.name for p in (tmp_path / "runs").glob(".*stage*/*")}
            for n in names:
                if n not in staged:
                    (src / n / "in.txt").unlink()
                    (src / n).rmdir()
                    (src / n).symlink_to(outside)
                    swapped.append(n)

    dest = tmp_path / "runs" / "R"
    do_export(src, dest, by_link=by_link, _fault=swap)
    m = read_manifest(dest)
    assert swapped and len(swapped) >= len(names) - 2
    assert not any("secret" in f["path"] for f in m["files"]), m["files"]
    for n in swapped:
        assert (dest / n).is_symlink() and os.readlink(dest / n) == str(outside)
        assert {"path": n, "target": str(outside)} in m["symlinks"]
    assert verify(dest) == []


def test_links_are_never_followed_and_modes_come_from_the_entry(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    src = tmp_path / "run"
    src.mkdir()
    (src / "to-file").symlink_to(outside / "secret.txt")
    (src / "to-dir").symlink_to(outside)
    (src / "mine.txt").write_text("x")
    (src / "mine.txt").chmod(0o4755)  # setuid: never exported
    dest = tmp_path / "runs" / "R"
    do_export(src, dest, by_link=False)
    assert (dest / "to-file").is_symlink() and (dest / "to-dir").is_symlink()
    m = read_manifest(dest)
    assert [f["path"] for f in m["files"]] == ["mine.txt"]
    assert m["files"][0]["mode"] == 0o755 and (dest / "mine.txt").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize("by_link", [True, False], ids=["link", "copy"])
def test_fifos_sockets_and_devices_are_skipped_never_opened(
    tmp_path: Path, alarm: None, by_link: bool
) -> None:
    src = tmp_path / "run"
    (src / "data").mkdir(parents=True)
    os.mkfifo(src / "data" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "data" / "sock"))
    try:
        os.mknod(src / "data" / "null", 0o666 | 0o020000, os.makedev(1, 3))  # a char device, as root
        dev = True
    except PermissionError:
        dev = False
    (src / "data" / "ok.txt").write_text("ok")
    dest = tmp_path / "runs" / "R"
    do_export(src, dest, by_link=by_link)
    sock.close()
    skipped = {s["path"]: s["kind"] for s in read_manifest(dest)["skipped"]}
    want = {"data/pipe": "fifo", "data/sock": "socket", **({"data/null": "char device"} if dev else {})}
    assert skipped == want
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["ok.txt"]


@pytest.mark.parametrize("by_link", [True, False], ids=["link", "copy"])
def test_a_file_swapped_for_a_fifo_during_the_export_does_not_block_it(
    tmp_path: Path, alarm: None, by_link: bool
) -> None:
    src = tmp_path / "run"
    src.mkdir()
    names = [f"f{i:02d}.txt" for i in range(20)]
    for n in names:
        (src / n).write_text(n)
    seen: list[str] = []

    def swap(point: str) -> None:
        if point == "staged-file" and not seen:  # swap every file not staged yet for a FIFO
            for n in names:
                p = src / n
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                os.mkfifo(p)
                seen.append(n)

    dest = tmp_path / "runs" / "R"
    do_export(src, dest, by_link=by_link, _fault=swap)
    m = read_manifest(dest)
    assert len(m["files"]) + len(m["skipped"]) == len(names)
    assert {s["kind"] for s in m["skipped"]} <= {"fifo"} and len(m["skipped"]) >= len(names) - 2
    assert verify(dest) == []


def test_sparse_files_stay_sparse(tmp_path: Path) -> None:
    src = tmp_path / "run"
    src.mkdir()
    size = 256 << 20
    with open(src / "sparse.bin", "wb") as fh:
        fh.truncate(size)
        fh.seek(size // 2)
        fh.write(b"data in the middle")
    with open(src / "tail-data.bin", "wb") as fh:
        fh.seek(1 << 20)
        fh.write(b"end")
    dest = tmp_path / "runs" / "R"
    do_export(src, dest, by_link=False)
    st = os.stat(dest / "sparse.bin")
    assert st.st_size == size and st.st_blocks * 512 < (1 << 20), st.st_blocks
    assert (dest / "tail-data.bin").read_bytes() == (src / "tail-data.bin").read_bytes()
    assert verify(dest) == []  # the manifest's hash is the full content's, holes as zeros
    h = hashlib.sha256()
    with open(src / "sparse.bin", "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    assert {f["path"]: f["sha256"] for f in read_manifest(dest)["files"]}["sparse.bin"] == h.hexdigest()


@pytest.mark.parametrize("by_link", [True, False], ids=["link", "copy"])
def test_the_size_limit_is_an_export_error_and_the_previous_export_stays(
    tmp_path: Path, by_link: bool
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "a.txt").write_text("old")
    dest = tmp_path / "runs" / "R"
    do_export(old, dest)
    new = tmp_path / "new"
    new.mkdir()
    (new / "small.txt").write_bytes(b"x" * 600)
    with open(new / "big.bin", "wb") as fh:
        fh.truncate(1 << 30)  # a sparse GiB counts for its size: its hashing time is real
    with pytest.raises(ExportError) as e:
        do_export(new, dest, overwrite=True, max_bytes=1 << 20, by_link=by_link)
    msg = str(e.value)
    assert e.value.exit_status == EXIT_EXPORT and "\n" not in msg
    assert "export limit of 1048576 bytes" in msg and "[export] max_bytes" in msg, msg
    assert msg.endswith("the previous export is intact")
    assert os.listdir(tmp_path / "runs") == ["R"] and read_manifest(dest)["files"][0]["path"] == "a.txt"


def test_same_filesystem_exports_link_files_only_the_run_alone_names(tmp_path: Path) -> None:
    """By link on one filesystem: the same manifest, but a file that has another link (a hard
    link to something outside the run folder) is copied, so the export never shares an inode
    with anything but the run folder being removed."""
    outside = _outside(tmp_path)
    src = tmp_path / "run"
    (src / "d").mkdir(parents=True)
    (src / "d" / "own.txt").write_text("own")
    os.link(outside / "secret.txt", src / "d" / "shared.txt")
    dest_link, dest_copy = tmp_path / "runs" / "L", tmp_path / "runs" / "C"
    r_link = do_export(src, dest_link, by_link=True)
    r_copy = do_export(src, dest_copy, by_link=False)
    assert r_link.linked == 1 and r_copy.linked == 0  # type: ignore[attr-defined]
    assert os.stat(dest_link / "d" / "own.txt").st_ino == os.stat(src / "d" / "own.txt").st_ino
    assert os.stat(dest_link / "d" / "shared.txt").st_ino != os.stat(outside / "secret.txt").st_ino

    def strip(m: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in m.items() if k != "created"}

    assert strip(read_manifest(dest_link)) == strip(read_manifest(dest_copy))
    assert verify(dest_link) == [] and verify(dest_copy) == []


def test_enospc_writing_is_one_line_and_leaves_no_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC anywhere in the copy (here: every write fails) -> ExportError, nothing staged left."""
    src = tmp_path / "run"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 10000)
    real = os.pwrite

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(ExportError) as e:
        do_export(src, tmp_path / "runs" / "R", by_link=False)
    monkeypatch.setattr(os, "pwrite", real)
    assert "no space left on device" in str(e.value) and str(e.value).endswith("nothing was exported")
    assert os.listdir(tmp_path / "runs") == []


@pytest.mark.parametrize("value", [0, -1, "1G", 1.5, True])
def test_a_bad_export_limit_in_a_policy_is_refused(value: object) -> None:
    from sandbox.errors import PolicyError
    from sandbox.loader import export_max_bytes

    with pytest.raises(PolicyError) as e:
        export_max_bytes({"export": {"max_bytes": value}}, "p.toml")
    assert "export.max_bytes" in str(e.value) and "\n" not in str(e.value)


def test_the_export_limit_of_a_policy() -> None:
    from sandbox.errors import PolicyError
    from sandbox.loader import export_max_bytes

    assert export_max_bytes({}) is None and export_max_bytes({"export": {}}) is None
    assert export_max_bytes({"export": {"max_bytes": 1 << 30}}) == 1 << 30
    with pytest.raises(PolicyError):
        export_max_bytes({"export": {"max_byte": 1}})
