"""Crash and disk-full injection for the exporter: a SIGKILL at any moment, or ENOSPC while staging,
leaves the previous export or the complete new one -- never a partial folder.

* a forked exporter kills itself (SIGKILL) at a seeded random fault point;
* a separate interpreter is SIGKILLed by the test after a seeded random delay, mid-syscall;
* a 1 MiB tmpfs runs out of space under an --overwrite export, at many different points.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_export import do_export, exported, leftovers, make_tree, snapshot

from sandbox.errors import EXIT_EXPORT, ExportError
from sandbox.export import _exporter as export
from sandbox.export import read_manifest, recover, verify

pytestmark = pytest.mark.slow

TRIALS = 24
MODES = ["first", "exchange", "fallback"]


def settle(parent: Path, dest: Path, expected: dict[str, dict[str, Any]], *, absent_ok: bool) -> str:
    """After a crash: recover(), then dest is absent (first export) or one whole export, and clean."""
    recover(parent)
    assert leftovers(parent) == [], "recover() left debris"
    assert recover(parent) == []
    if not os.path.lexists(dest):
        assert absent_ok, "the previous export vanished"
        assert os.listdir(parent) == []
        return "absent"
    assert verify(dest) == []
    run_id = read_manifest(dest)["run_id"]
    assert run_id in expected
    assert exported(dest) == expected[run_id], f"{run_id} does not hold its own content"
    assert os.listdir(parent) == [dest.name]
    return str(run_id)


def fork_export(src: Path, dest: Path, *, overwrite: bool, fallback: bool, kill_at: int) -> int:
    """Export in a forked child that SIGKILLs itself at its ``kill_at``-th fault point; its wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if fallback:
                export._renameat2_cache[:] = [None]
            calls = 0

            def fault(point: str) -> None:
                nonlocal calls
                calls += 1
                if calls == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            do_export(src, dest, run_id="NEW", overwrite=overwrite, _fault=fault)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def fault_points(tmp_path: Path, src: Path, mode: str) -> list[str]:
    """The fault points an export of ``src`` passes, in order, for ``mode``."""
    dest = tmp_path / "dry" / "R1"
    if mode != "first":
        do_export(src, dest, run_id="DRY")
    seen: list[str] = []
    saved = list(export._renameat2_cache)
    if mode == "fallback":
        export._renameat2_cache[:] = [None]
    try:
        do_export(src, dest, run_id="DRY", overwrite=True, _fault=seen.append)
    finally:
        export._renameat2_cache[:] = saved
    return seen


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_at_a_random_fault_point(tmp_path: Path, mode: str) -> None:
    old_src = make_tree(tmp_path / "old", "old")
    new_src = make_tree(tmp_path / "new", "new")
    expected = {"OLD": snapshot(old_src), "NEW": snapshot(new_src)}
    points = fault_points(tmp_path, new_src, mode)
    assert len(points) > 15 and points[-1] == "done"
    rng = random.Random(f"sigkill-{mode}")
    # every point once, then seeded random ones; len + 1: never killed, the export completes
    schedule = [*range(1, len(points) + 2), *(rng.randint(1, len(points) + 1) for _ in range(TRIALS))]
    outcomes: Counter[str] = Counter()
    killed_at: Counter[str] = Counter()
    for trial, kill_at in enumerate(schedule):
        parent = tmp_path / f"t{trial}" / "runs"
        dest = parent / "R1"
        if mode != "first":
            do_export(old_src, dest, run_id="OLD")
        status = fork_export(
            new_src, dest, overwrite=mode != "first", fallback=mode == "fallback", kill_at=kill_at
        )
        if kill_at <= len(points):
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            killed_at[points[kill_at - 1]] += 1
        else:
            assert os.waitstatus_to_exitcode(status) == 0
        outcome = settle(parent, dest, expected, absent_ok=mode == "first")
        before_commit = kill_at <= len(points) and kill_at - 1 < points.index(_commit_point(mode))
        want = ("absent" if mode == "first" else "OLD") if before_commit else "NEW"
        where = points[kill_at - 1] if kill_at <= len(points) else "never"
        assert outcome == want, f"trial {trial}: killed at #{kill_at} ({where})"
        outcomes[outcome] += 1
    assert len(outcomes) == 2, outcomes  # both sides of the commit were hit
    assert set(killed_at) == set(points), killed_at


def _commit_point(mode: str) -> str:
    """The first fault point after which the new export is the one in place."""
    return {"first": "after-rename", "exchange": "after-exchange", "fallback": "after-rename"}[mode]


CHILD = textwrap.dedent(
    """
    import sys
    from sandbox.export import _exporter as export
    src, dest, overwrite, fallback = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
    if fallback:
        export._renameat2_cache[:] = [None]
    else:
        export._load_renameat2()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    export.export_run(src, dest, run_id="NEW", status="succeeded", exit_code=0, policy_name="p",
                      policy_sha256="0" * 64, overwrite=overwrite)
    sys.stdout.write("done\\n")
    """
)


def big_tree(root: Path) -> Path:
    """A run folder that takes tens of milliseconds to export: 160 files of 24 kB in 8 folders."""
    for d in range(8):
        sub = root / "data" / f"part{d}"
        sub.mkdir(parents=True)
        for f in range(20):
            (sub / f"chunk{f}.bin").write_bytes(os.urandom(24_000))
    (root / "logs").mkdir()
    os.symlink("../data/part0/chunk0.bin", root / "logs" / "link")
    return root


@pytest.mark.parametrize("mode", ["first", "exchange", "fallback"])
def test_sigkill_after_a_random_delay(tmp_path: Path, mode: str) -> None:
    old_src = make_tree(tmp_path / "old", "old")
    new_src = big_tree(tmp_path / "new")
    expected = {"OLD": snapshot(old_src), "NEW": snapshot(new_src)}
    durations = []
    for i in range(3):
        start = time.perf_counter()
        do_export(new_src, tmp_path / "timing" / f"R{i}")
        durations.append(time.perf_counter() - start)
    took = sorted(durations)[1]
    rng = random.Random(f"delay-{mode}")
    # 20 trials, more (up to 60) until 3 kills landed mid-export: a loaded machine stretches the
    # export's time unevenly, and a kill that always lands before or after it proves nothing
    trials, mid = 0, 0
    outcomes: Counter[str] = Counter()
    for trial in range(60):
        if trial >= 20 and mid >= 3:
            break
        trials += 1
        parent = tmp_path / f"t{trial}" / "runs"
        dest = parent / "R1"
        parent.mkdir(parents=True)
        if mode != "first":
            do_export(old_src, dest, run_id="OLD")
        args = [str(new_src), str(dest), "0" if mode == "first" else "1", "1" if mode == "fallback" else "0"]
        child = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0, 1.3 * took))
            child.kill()
        finally:
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        mid += any(".tvs-" in n for n in os.listdir(parent))
        outcomes[settle(parent, dest, expected, absent_ok=mode == "first")] += 1
    print(f"{mode}: export takes {took * 1e3:.1f} ms; {mid}/{trials} killed mid-export; {dict(outcomes)}")
    assert mid >= 3, f"too few kills landed mid-export ({mid}/{trials}; export takes {took * 1e3:.1f} ms)"


# -- disk full --------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted on a folder of tmp_path (tests run as root; CI too)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        problem = res.stderr.strip() if res.returncode else ""
    except OSError as exc:
        problem = str(exc)
    if problem:
        reason = f"cannot mount a 1 MiB tmpfs to fill up: {problem}"
        if os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1":
            pytest.fail(reason)
        pytest.skip(reason=reason)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def too_big(root: Path) -> Path:
    make_tree(root, "big", specials=False)
    for i in range(3):
        (root / "data" / f"huge{i}.bin").write_bytes(os.urandom(500_000))
    return root


def check_export_error(exc: ExportError, dest: Path, state: str) -> None:
    message = str(exc)
    assert exc.exit_status == EXIT_EXPORT
    assert "\n" not in message
    assert message.startswith(f"export of run NEW to {dest} failed: no space left on device writing "), (
        message
    )
    assert "free space on that filesystem and re-run" in message and message.endswith(state), message


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "fallback-renames"])
def test_disk_full_during_an_overwrite_keeps_the_previous(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(export, "_load_renameat2", lambda: None)
    old_src = make_tree(tmp_path / "old", "old")
    dest = small_fs / "runs" / "R1"
    do_export(old_src, dest, run_id="OLD")
    with pytest.raises(ExportError) as info:
        do_export(too_big(tmp_path / "new"), dest, run_id="NEW", overwrite=True)
    check_export_error(info.value, dest, "the previous export is intact")
    assert os.listdir(small_fs / "runs") == ["R1"]
    assert verify(dest) == [] and read_manifest(dest)["run_id"] == "OLD"
    assert exported(dest) == snapshot(old_src)


def test_disk_full_during_a_first_export_leaves_nothing(small_fs: Path, tmp_path: Path) -> None:
    dest = small_fs / "runs" / "R1"
    with pytest.raises(ExportError) as info:
        do_export(too_big(tmp_path / "new"), dest, run_id="NEW")
    check_export_error(info.value, dest, "nothing was exported")
    assert os.listdir(small_fs / "runs") == []


def test_disk_full_at_many_points(small_fs: Path, tmp_path: Path) -> None:
    """Grow the new run page by page across the free space, so that ENOSPC hits file data, the
    last file and the manifest in turn; every attempt ends with one whole export."""
    old_src = make_tree(tmp_path / "old", "old", specials=False)
    new_src = make_tree(tmp_path / "new", "new", specials=False)
    filler = new_src / "data" / "filler.bin"
    page = os.statvfs(small_fs).f_frsize
    others = sum(
        -(-p.stat().st_size // page) * page for p in new_src.rglob("*") if p.is_file() and not p.is_symlink()
    )
    parent = small_fs / "runs"
    dest = parent / "R1"
    do_export(old_src, dest, run_id="OLD")
    st = os.statvfs(small_fs)
    fits = st.f_bavail * st.f_frsize - others - page  # the largest filler that leaves a page for the manifest
    blob = os.urandom(fits + 8 * page)
    outcomes: Counter[str] = Counter()
    failed_at: Counter[str] = Counter()
    for size in range(fits - 6 * page, fits + 6 * page, page):
        shutil.rmtree(parent)
        do_export(old_src, dest, run_id="OLD")
        filler.write_bytes(blob[:size])
        expected = {"OLD": snapshot(old_src), "NEW": snapshot(new_src)}
        try:
            do_export(new_src, dest, run_id="NEW", overwrite=True)
        except ExportError as exc:
            check_export_error(exc, dest, "the previous export is intact")
            failed_at[str(exc).split(" writing ")[1].split(" (staged")[0]] += 1
        outcomes[settle(parent, dest, expected, absent_ok=False)] += 1
    print(f"disk full: {dict(outcomes)}; failed writing {dict(failed_at)}")
    assert outcomes["OLD"] >= 3 and outcomes["NEW"] >= 3, outcomes
    assert failed_at["manifest.json"] >= 1 and failed_at["data/filler.bin"] >= 1, failed_at


def test_a_linked_export_checks_the_room_only_when_it_must_copy(small_fs: Path, tmp_path: Path) -> None:
    """Links need no room: a linked export of a run folder on its destination's own mount goes
    through on a disk too full for a copy. Another mount of the same filesystem (a bind mount:
    same device, and ``link`` refuses it with EXDEV) makes it copy -- and check the room first,
    one line before any data is written, as an export by copy does up front."""
    from sandbox.export import check_space

    src = small_fs / "run"
    (src / "data").mkdir(parents=True)
    page = os.statvfs(small_fs).f_frsize
    st = os.statvfs(small_fs)
    (src / "data" / "big.bin").write_bytes(os.urandom(st.f_bavail * st.f_frsize - 4 * page))
    dest = small_fs / "runs" / "R1"
    with pytest.raises(ExportError, match="free space there"):
        check_space("R1", str(src), str(dest))
    checked: list[bool] = []
    res = do_export(src, dest, by_link=True, before_copy=lambda: checked.append(True))
    assert res.linked == 1 and not checked and verify(dest) == []

    (small_fs / "other").mkdir()
    other = tmp_path / "bound"
    other.mkdir()
    subprocess.run(["mount", "--bind", str(small_fs / "other"), str(other)], check=True)
    try:
        assert os.stat(other).st_dev == os.stat(src).st_dev
        with pytest.raises(ExportError, match="free space there"):
            do_export(
                src,
                other / "runs" / "R2",
                run_id="R2",
                by_link=True,
                before_copy=lambda: check_space("R2", str(src), str(other / "runs" / "R2")),
            )
        assert os.listdir(other / "runs") == []  # nothing staged is left
    finally:
        subprocess.run(["umount", str(other)], check=True)
