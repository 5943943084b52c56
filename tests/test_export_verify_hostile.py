"""`tv-sandbox verify` of a run folder that came from anywhere (a colleague, a shared disk): a crafted
manifest or folder is a folder that does not verify -- exit 1, one printable line per problem --
never a hang, an exhausted memory, an internal error, a read outside the folder or a write.

Each case runs the real CLI in a subprocess under a 1 GiB address-space limit, so that what used
to take gigabytes fails fast (MemoryError: internal error, 125) instead of harming the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_export import do_export, make_tree

from sandbox.export import MANIFEST_NAME, verify
from sandbox.export import manifest as manifest_mod

_HEAD = {
    "schema": "tv-sandbox-manifest",
    "schema_version": 1,
    "run_id": "R",
    "status": "succeeded",
    "exit_code": 0,
    "totals": {"files": 0, "bytes": 0},
}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_verify(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("TV_SANDBOX_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sandbox", "verify", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        preexec_fn=_limited,
    )


def write_manifest(folder: Path, manifest: dict[str, Any] | None = None, raw: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = raw if raw is not None else json.dumps({**_HEAD, **(manifest or {})}).encode()
    (folder / MANIFEST_NAME).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "entries",
    [
        {"dirs": [{"path": "/" * 200_000}]},  # every prefix of it: ~20 GB and hours
        {"dirs": [{"path": "a/" * 60_000 + "a"}]},
        {"files": [{"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64}]},
        {"files": [{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]},
        {"symlinks": [{"path": "a/./b", "target": "x"}]},
        {"files": [{"path": "a\0b", "size": 1, "sha256": "0" * 64}]},
        {"totals": {"files": 0, "bytes": {"a": {"a": {}}}}},
    ],
    ids=["slashes", "deep-path", "dotdot", "absolute", "dot", "nul", "nested-totals"],
)
def test_a_manifest_listing_impossible_paths_is_one_line(tmp_path: Path, entries: dict[str, Any]) -> None:
    r = run_verify(write_manifest(tmp_path / "R", entries))
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "does NOT verify" in r.stderr and "not a valid" in r.stderr, r.stderr


def test_a_sparse_manifest_of_gigabytes_is_never_read_into_memory(tmp_path: Path) -> None:
    folder = tmp_path / "R"
    folder.mkdir()
    with open(folder / MANIFEST_NAME, "wb") as fh:
        fh.truncate(4 << 30)
    r = run_verify(folder)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "larger than" in r.stderr, r.stderr


def test_folders_nested_past_the_recursion_limit_are_verified(tmp_path: Path) -> None:
    """1,500 listed folders deep (the walk recursed a level at a time: RecursionError, exit 125)."""
    folder = tmp_path / "R"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    for _ in range(1500):
        os.mkdir("a", dir_fd=fd)
        nfd = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    try:
        deep = "/".join(["a"] * 1500)
        write_manifest(folder, {"dirs": [{"path": deep}]})
        r = run_verify(folder)
        assert r.returncode == 0, r.stderr[-2000:]
        write_manifest(folder, {"dirs": [{"path": deep + "/b"}]})  # one listed folder missing, at the bottom
        r = run_verify(folder)
        assert r.returncode == 1 and f"missing directory: {deep}/b" in r.stderr, r.stderr[-2000:]
    finally:  # pytest's own clean-up recurses a level at a time: unnest it first
        while (folder / "a" / "a").is_dir():
            os.rename(folder / "a" / "a", folder / "b")
            os.rmdir(folder / "a")
            os.rename(folder / "b", folder / "a")


def test_names_with_newlines_and_escapes_print_as_one_line_each(tmp_path: Path) -> None:
    folder = write_manifest(
        tmp_path / "R",
        {
            "files": [{"path": "\x1b]0;x\x07\nm", "size": 1, "sha256": "0" * 64}],
            "totals": {"files": 1, "bytes": 1},
        },
    )
    (folder / "x\n\x1b[2Atv-sandbox: R matches its manifest.json").write_text("")
    r = run_verify(folder)
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert r.stderr.count("\n") == 3, r.stderr  # two problems and the closing line
    assert "unlisted file: x\\n\\x1b[2A" in r.stderr and "missing file: \\x1b]0;x\\x07\\nm" in r.stderr


def test_an_entry_swapped_while_verified_is_never_waited_on_nor_read_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the listing and the hashing (another user of a shared disk): a file swapped for a FIFO
    (the open blocked for ever), a file appended to (read for as long as it grew), a folder swapped
    for a link outside (the file outside was hashed)."""
    dest = tmp_path / "out" / "R1"
    do_export(make_tree(tmp_path / "run", specials=False), dest)
    assert verify(dest) == []
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    real = dest / "data/nested/deeper/returns.bin"
    (outside / "deeper" / "returns.bin").write_bytes(real.read_bytes())
    hashed = manifest_mod._sha256
    swaps = {
        "candidates.json": lambda: (
            os.rename(dest / "data/candidates.json", tmp_path / "c"),
            os.mkfifo(dest / "data/candidates.json"),
        ),
        "report-new.md": lambda: (dest / "reports/report-new.md").open("a").write("more"),
        "returns.bin": lambda: (
            os.rename(dest / "data/nested/deeper", tmp_path / "moved"),
            os.symlink(outside / "deeper", dest / "data/nested/deeper"),
        ),
    }
    read_outside: list[str] = []
    real_open = os.open

    def spying_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *a, **kw)
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(outside)):
            read_outside.append(str(path))
        return fd

    def swapping(*args: Any) -> Any:
        name = next(
            (n for n in swaps if any(str(a).endswith(n) for a in args if isinstance(a, (str, Path)))), None
        )
        if name:
            swaps.pop(name)()
        return hashed(*args)

    def hung(*_: Any) -> None:
        raise TimeoutError("verify waited on the FIFO")

    monkeypatch.setattr(manifest_mod, "_sha256", swapping)
    monkeypatch.setattr(manifest_mod.os, "open", spying_open)
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        problems = verify(dest)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert not swaps, swaps
    assert not read_outside, read_outside
    assert "changed while verified: data/candidates.json" in problems, problems
    assert "changed while verified: reports/report-new.md" in problems, problems
    # the folder it had open: the file it listed, not the one the link leads to
    assert not any("returns.bin" in p for p in problems), problems
