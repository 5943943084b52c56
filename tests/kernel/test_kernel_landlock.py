"""Landlock alone (no mount namespace): writes of any program outside the writable roots are
refused, inside they work, reads stay free -- and what it does not cover (chmod) is shown too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kernel_helpers import in_child, py, sh, snapshot

from sandbox.errors import KernelUnavailable
from sandbox.kernel import KernelPlan, abi_version, restrict_writes, spawn
from sandbox.kernel import landlock as ll

pytestmark = [pytest.mark.kernel("landlock"), pytest.mark.usefixtures("kernel_support")]


@pytest.fixture
def roots(tree):  # type: ignore[no-untyped-def]
    inside = tree("in", {"keep.txt": "inside\n"})
    outside = tree("out", {"victim.txt": "precious\n", "sub/deep.txt": "deep\n"})
    return inside, outside


def _plan(*writable: Path) -> KernelPlan:
    return KernelPlan(writable=tuple(str(p) for p in writable), landlock=True)


def test_abi_is_reported() -> None:
    assert abi_version() >= 1


def test_handled_rights_follow_the_abi() -> None:
    assert ll.handled_rights(0) == 0
    assert not ll.handled_rights(1) & ll.ACCESS_FS_REFER
    assert ll.handled_rights(2) & ll.ACCESS_FS_REFER and not ll.handled_rights(2) & ll.ACCESS_FS_TRUNCATE
    assert ll.handled_rights(7) & ll.ACCESS_FS_TRUNCATE
    # reads, execute and ioctl are never handled: reads stay unrestricted
    assert not ll.handled_rights(7) & ((1 << 0) | (1 << 2) | (1 << 3) | (1 << 15))


@pytest.mark.parametrize(
    "script",
    [
        "echo x > victim.txt",  # truncate + write an existing file
        "echo x >> victim.txt",  # append
        "echo x > new.txt",  # create
        "touch new.txt",
        "rm victim.txt",
        "mv victim.txt renamed.txt",  # rename in place
        "mkdir newdir",
        "rmdir sub 2>/dev/null || rm -r sub",
        "ln -s victim.txt link",
        "ln victim.txt hardlink",
        "mkfifo fifo",
        "truncate -s 0 victim.txt",
    ],
)
def test_shell_writes_outside_are_denied(roots: tuple[Path, Path], script: str) -> None:
    inside, outside = roots
    before = snapshot(outside)
    r = sh(script, _plan(inside), cwd=outside)
    assert r.code != 0
    assert "Permission denied" in r.err or "Operation not permitted" in r.err, r.err
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    "script",
    [
        "echo x > keep.txt && echo y >> keep.txt",
        "touch new.txt && rm new.txt",
        "mkdir d && mv keep.txt d/moved.txt && mv d/moved.txt keep.txt && rmdir d",
        "ln -s keep.txt link && mkfifo fifo && truncate -s 0 keep.txt",
    ],
)
def test_shell_writes_inside_are_allowed(roots: tuple[Path, Path], script: str) -> None:
    inside, _ = roots
    r = sh(f"set -e; {script}", _plan(inside), cwd=inside)
    assert r.code == 0, r.err


def test_moves_across_the_boundary_are_denied(roots: tuple[Path, Path]) -> None:
    inside, outside = roots
    before = snapshot(outside)
    assert sh(f"mv {outside}/victim.txt {inside}/", _plan(inside)).code != 0
    assert sh(f"mv {inside}/keep.txt {outside}/", _plan(inside)).code != 0
    assert snapshot(outside) == before
    assert (inside / "keep.txt").exists()


def test_reads_and_devices_stay_free(roots: tuple[Path, Path]) -> None:
    inside, outside = roots
    r = sh(f"set -e; cat {outside}/victim.txt; echo a > /dev/null; echo c >&2", _plan(inside))
    assert r.code == 0, r.err
    assert r.out == "precious\n" and r.err == "c\n"


def test_reopening_a_pipe_through_dev_stdout_works(roots: tuple[Path, Path]) -> None:
    """``> /dev/stdout`` reopens fd 1: fine for a pipe (no path), refused for a file outside the
    roots (it is a real open of that file)."""
    inside, _ = roots
    rfd, wfd = os.pipe()
    try:
        child = spawn(
            ["sh", "-c", "echo b > /dev/stdout"],
            env=dict(os.environ),
            cwd="/",
            plan=_plan(inside),
            stdout=wfd,
        )
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        assert fh.read() == b"b\n"
    assert child.wait().exit_code == 0
    r = sh("echo b > /dev/stdout", _plan(inside))  # stdout: a temp file outside the roots
    assert r.code != 0 and "Permission denied" in r.err


def test_isolated_python_is_denied(roots: tuple[Path, Path]) -> None:
    inside, outside = roots
    code = f"open({str(outside / 'victim.txt')!r}, 'w')"
    r = py(code, _plan(inside))
    assert r.code == 1 and "PermissionError" in r.err and "Errno 13" in r.err
    assert (outside / "victim.txt").read_text() == "precious\n"


def test_chmod_is_not_covered_by_landlock(roots: tuple[Path, Path]) -> None:
    """The documented gap the read-only mounts close: metadata changes pass Landlock."""
    inside, outside = roots
    r = sh(f"chmod 600 {outside}/victim.txt", _plan(inside))
    assert r.code == 0
    assert (outside / "victim.txt").stat().st_mode & 0o777 == 0o600


def test_a_missing_writable_root_fails_the_spawn(roots: tuple[Path, Path]) -> None:
    inside, _ = roots
    with pytest.raises(KernelUnavailable) as e:
        sh("true", _plan(inside / "missing"))
    assert str(inside / "missing") in str(e.value) and "\n" not in str(e.value)


def test_restrict_writes_in_a_child(roots: tuple[Path, Path]) -> None:
    """The function itself, without spawn: the restriction holds for the calling process."""
    inside, outside = roots

    def body() -> str:
        restrict_writes([str(inside)])
        (inside / "ok.txt").write_text("fine")
        (outside / "victim.txt").write_text("changed")
        return "unreachable"

    said = in_child(body)
    assert said.startswith("PermissionError 13"), said
    assert (inside / "ok.txt").read_text() == "fine"
    assert (outside / "victim.txt").read_text() == "precious\n"


def test_restrict_writes_without_landlock_raises() -> None:
    said = in_child(lambda: restrict_writes(["/tmp"], abi=0))
    assert said.startswith("OSError 38") and "not supported" in said


def test_landlock_grants_no_device_nodes_even_to_a_capable_root(roots: tuple[Path, Path]) -> None:
    """Landlock alone, capabilities kept (root with CAP_MKNOD, as before this layer dropped
    them): a char or block node in a writable root is still refused; a fifo there is not."""
    if os.geteuid() != 0:
        pytest.skip(reason="needs CAP_MKNOD to show that Landlock is what refuses")
    inside, _ = roots
    plan = KernelPlan(writable=(str(inside),), landlock=True, drop_capabilities=False)
    code = (
        "import os, stat\n"
        "for kind, mode in (('char', stat.S_IFCHR), ('block', stat.S_IFBLK), ('fifo', stat.S_IFIFO)):\n"
        "    try:\n"
        f"        os.mknod({str(inside)!r} + '/n-' + kind, mode | 0o600, os.makedev(1, 3))\n"
        "        print(kind, 'made')\n"
        "    except OSError as e:\n"
        "        print(kind, e.errno)\n"
    )
    r = py(code, plan)
    assert r.out.splitlines() == ["char 13", "block 13", "fifo made"], r.out + r.err
