"""Private mount namespace: read-only binds and a read-only root give EROFS for every mutation,
chmod and utime included, whatever the program; the host's own mount table never changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kernel_helpers import in_child, py, sh, snapshot

from sandbox.kernel import Bind, KernelPlan, mounts

pytestmark = pytest.mark.kernel("mount_namespace", "readonly_bind")

MUTATIONS = [
    "chmod 600 victim.txt",
    "touch -m victim.txt",
    "touch -d 2001-01-01 victim.txt",
    "chown 1:1 victim.txt",
    "rm victim.txt",
    "mv victim.txt renamed.txt",
    "echo x > victim.txt",
    "echo x > new.txt",
    "mkdir newdir",
    "ln -s victim.txt link",
]


@pytest.fixture
def host(tree):  # type: ignore[no-untyped-def]
    return tree("host", {"victim.txt": "precious\n", "sub/deep.txt": "deep\n"})


def _ro_bind(path: Path) -> KernelPlan:
    return KernelPlan(binds=(Bind(str(path), str(path), readonly=True),), namespace=True, landlock=False)


@pytest.mark.parametrize("script", MUTATIONS)
def test_readonly_bind_refuses_every_mutation(kernel_support: object, host: Path, script: str) -> None:
    before = snapshot(host)
    r = sh(script, _ro_bind(host), cwd=host)
    assert r.code != 0
    assert "Read-only file system" in r.err, r.err
    assert snapshot(host) == before


def test_readonly_bind_refuses_isolated_python(kernel_support: object, host: Path) -> None:
    r = py(f"open({str(host / 'sub' / 'deep.txt')!r}, 'w')", _ro_bind(host))
    assert r.code == 1 and "Errno 30" in r.err, r.err
    r = py(f"import os; os.utime({str(host / 'victim.txt')!r}, (0, 0))", _ro_bind(host))
    assert r.code == 1 and "Errno 30" in r.err, r.err


def test_readonly_bind_covers_submounts(kernel_support: object, host: Path, tree) -> None:  # type: ignore[no-untyped-def]
    """A mount below the bound folder is read-only too (the bind is recursive, and so is its flag)."""
    inner = tree("inner", {"x.txt": "x\n"})
    plan = KernelPlan(
        binds=(
            Bind(str(inner), str(host / "sub"), readonly=False),
            Bind(str(host), str(host), readonly=True),
        ),
        namespace=True,
        landlock=False,
    )
    r = sh(f"cat {host}/sub/x.txt && touch {host}/sub/x.txt", plan)
    assert r.out == "x\n" and "Read-only file system" in r.err


def test_readonly_root_keeps_writable_roots_and_devices(kernel_support: object, host: Path, tree) -> None:  # type: ignore[no-untyped-def]
    work = tree("work")
    plan = KernelPlan(writable=(str(work),), readonly_root=True, namespace=True, landlock=False)
    before = snapshot(host)
    r = sh(f"touch {host}/new.txt; chmod 600 {host}/victim.txt; echo y > /tmp/tv-sandbox-test-$$", plan)
    assert r.err.count("Read-only file system") == 3, r.err
    r = sh(
        f"set -e; echo ok > {work}/a.txt; chmod 600 {work}/a.txt; echo > /dev/null; ls /dev/shm > /dev/null",
        plan,
    )
    assert r.code == 0, r.err
    assert (work / "a.txt").read_text() == "ok\n"
    assert snapshot(host) == before


def test_multiprocessing_semaphores_work_under_the_full_plan(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    work = tree("work")
    plan = KernelPlan(writable=(str(work),), readonly_root=True, namespace=True, landlock=True)
    code = "import multiprocessing as m; l = m.Lock(); l.acquire(); l.release(); print('ok')"
    r = py(code, plan)
    assert r.code == 0 and r.out == "ok\n", r.err


def test_the_host_mount_table_is_untouched(kernel_support: object, host: Path, tree) -> None:  # type: ignore[no-untyped-def]
    with open("/proc/self/mountinfo") as fh:
        before = fh.read()
    plan = KernelPlan(
        writable=(str(tree("work")),), binds=(Bind(str(host), str(host)),), readonly_root=True, namespace=True
    )
    assert sh("true", plan).code == 0
    with open("/proc/self/mountinfo") as fh:
        assert fh.read() == before


@pytest.mark.kernel("user_namespaces", "readonly_bind", "overlay")
def test_user_namespace_path(kernel_support: object, host: Path, tree) -> None:  # type: ignore[no-untyped-def]
    """What a non-root launcher gets: a user namespace, locked inherited mounts (remounted read-only
    without EPERM) and an overlay with ``userxattr``."""
    work, upper, ovl, merged = tree("work"), tree("upper"), tree("ovl-work"), tree("merged")

    def body() -> object:
        assert mounts.unshare_mount_namespace(user_namespace=True) is True
        assert mounts.in_user_namespace()
        mounts.make_private()
        mounts.overlay([str(host)], str(upper), str(ovl), str(merged))
        (merged / "via-overlay.txt").write_text("u")
        mounts.bind(str(host), str(host), readonly=True)
        mounts.remount_all_readonly([str(work), str(merged)])
        (work / "ok.txt").write_text("ok")
        try:
            os.chmod(host / "victim.txt", 0o600)
        except OSError as e:
            return e.errno
        return "chmod succeeded"

    assert in_child(body) == "ok 30"
    assert (upper / "via-overlay.txt").read_text() == "u"
    assert (work / "ok.txt").read_text() == "ok"
    assert (host / "victim.txt").stat().st_mode & 0o777 != 0o600


def test_mountinfo_escapes_are_decoded() -> None:
    assert mounts._decode("/a\\040b\\011c\\134d") == "/a b\tc\\d"
    assert mounts._decode("/plain") == "/plain"


def test_below_compares_components() -> None:
    assert mounts._below("/data/out/x", "/data/out")
    assert mounts._below("/data/out", "/data/out")
    assert not mounts._below("/data/outside", "/data/out")
    assert mounts._below("/anything", "/")


@pytest.mark.kernel("user_namespaces", "readonly_bind")
def test_remount_fallback_keeps_locked_flags(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    """The pre-5.12 path (a mount(2) remount): in a user namespace, flags inherited from the parent
    namespace are locked, and a remount that drops them fails with EPERM; repeating the ones
    mountinfo shows succeeds."""
    spot = tree("spot")

    def body() -> object:
        mounts.unshare_mount_namespace(user_namespace=False)
        mounts.make_private()
        flags = mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC | mounts.MS_NOATIME
        mounts._mount("tmpfs", str(spot), "tmpfs", flags)
        mounts.unshare_mount_namespace(user_namespace=True)  # now those flags are locked
        try:
            mounts._mount(None, str(spot), None, mounts.MS_REMOUNT | mounts.MS_BIND | mounts.MS_RDONLY)
            return "remount without the locked flags succeeded"
        except OSError as e:
            assert e.errno == 1, e
        opts = dict(mounts.mount_table())[str(spot)]
        assert {"nosuid", "nodev", "noexec", "noatime"} <= opts
        mounts._remount_readonly(str(spot), opts)
        try:
            (spot / "new.txt").write_text("x")
        except OSError as e:
            return e.errno
        return "written"

    assert in_child(body) == "ok 30"


def test_the_command_cannot_undo_the_mounts(kernel_support: object, host: Path, tree) -> None:  # type: ignore[no-untyped-def]
    """Without Landlock (which also refuses mount calls), root in the namespace could remount the
    view writable; the command runs without CAP_SYS_ADMIN, so it cannot."""
    plan = KernelPlan(writable=(str(tree("work")),), readonly_root=True, namespace=True, landlock=False)
    r = sh(f"mount -o remount,rw,bind /; umount {host} 2>/dev/null; chmod 600 {host}/victim.txt", plan)
    assert "permission denied" in r.err.lower() and "Read-only file system" in r.err, r.err
    assert (host / "victim.txt").stat().st_mode & 0o777 != 0o600


def test_a_nested_namespace_falls_back_to_a_user_namespace(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    """Root without CAP_SYS_ADMIN of its namespace (inside a sandbox that keeps the others, such
    as a container) gets its mount namespace as anyone else would. (A step of ours keeps no
    capability at all, so it cannot even map its root into a nested namespace: the kernel wants
    CAP_SETFCAP for that; see tests/escapes/test_privilege.py.)"""
    plan = KernelPlan(
        writable=(str(tree("work")),),
        readonly_root=True,
        namespace=True,
        landlock=False,
        drop_capabilities=False,
    )
    paths = [str(Path(__file__).parents[2]), str(Path(__file__).parent)]
    code = (
        f"import sys; sys.path[:0] = {paths!r}\n"
        "from kernel_helpers import in_child\n"
        "from sandbox.kernel import mounts\n"
        "print(in_child(mounts.unshare_mount_namespace))"
    )
    r = py(code, plan)
    assert r.out == "ok True\n", r.err
