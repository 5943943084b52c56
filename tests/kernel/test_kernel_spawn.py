"""spawn(): exit codes and signals as a shell reports them, resources, descriptors, and failures
before exec turned into one explained line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kernel_helpers import py, run, sh

from sandbox.errors import KernelUnavailable, UsageError
from sandbox.kernel import KernelPlan, KernelSupport, Overlay, spawn


def _zombies() -> list[int]:
    """Our children that exited and were never reaped."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == me:
                out.append(int(entry))
    return out


def test_exit_code_passes_through() -> None:
    r = sh("echo out; echo err >&2; exit 3", None)
    assert (r.code, r.result.signal, r.out, r.err) == (3, None, "out\n", "err\n")


def test_signal_follows_the_shell_convention() -> None:
    r = sh("kill -TERM $$", None)
    assert (r.code, r.result.signal) == (128 + signal.SIGTERM, signal.SIGTERM)


def test_kill_poll_and_wait() -> None:
    child = spawn(["sleep", "30"], env=dict(os.environ), cwd="/", plan=None)
    assert child.poll() is None and child.applied is None
    child.kill()
    res = child.wait()
    assert (res.exit_code, res.signal) == (128 + signal.SIGKILL, signal.SIGKILL)
    assert child.wait() is res and child.poll() is res
    child.kill()  # reaped: a no-op, never a signal to a reused pid


def test_duration_and_peak_memory() -> None:
    # well above the launcher's own high-water mark (pytest's, in a full run), which the kernel
    # carries into the child: only then is the command's peak told apart
    r = py("b = bytearray(512 * 1024 * 1024); import time; time.sleep(0.05)", None)
    assert r.code == 0
    assert r.result.duration_s >= 0.05
    assert r.result.peak_rss_bytes >= 512 * 1024 * 1024
    assert r.result.launcher_rss_bytes > 0
    assert r.result.command_peak_rss_bytes == r.result.peak_rss_bytes


def test_env_and_cwd(tmp_path: Path) -> None:
    r = run(
        ["sh", "-c", 'echo "$FOO"; pwd'], None, cwd=tmp_path, env={"FOO": "bar", "PATH": os.environ["PATH"]}
    )
    assert r.out == f"bar\n{tmp_path}\n"


def test_inherited_descriptors_are_closed_unless_passed(tmp_path: Path) -> None:
    """An inherited descriptor open on a host file would bypass every kernel layer."""
    fd = os.open(tmp_path / "host-file", os.O_WRONLY | os.O_CREAT)
    os.set_inheritable(fd, True)
    write = [sys.executable, "-I", "-S", "-c", f"import os; os.write({fd}, b'x')"]
    try:
        r = run(write, None)
        assert r.code == 1 and "Bad file descriptor" in r.err
        child = spawn(write, env=dict(os.environ), cwd="/", plan=None, pass_fds=[fd])
        assert child.wait().exit_code == 0
    finally:
        os.close(fd)
    assert (tmp_path / "host-file").read_text() == "x"


def test_sigpipe_is_restored() -> None:
    """Python ignores SIGPIPE; an ignored signal survives exec, so `yes | head` would complain."""
    r = sh("yes | head -n 1", None)
    assert (r.code, r.out, r.err) == (0, "y\n", "")


def test_a_missing_command_is_a_usage_error() -> None:
    before = _zombies()
    with pytest.raises(UsageError) as e:
        sh_missing = ["tv-sandbox-no-such-command"]
        spawn(sh_missing, env=dict(os.environ), cwd="/", plan=None)
    assert str(e.value) == "cannot execute 'tv-sandbox-no-such-command': No such file or directory"
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == 2
    assert _zombies() == before


def test_a_missing_cwd_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot enter the working folder .*missing"):
        spawn(["true"], env=dict(os.environ), cwd=str(tmp_path / "missing"), plan=None)


def test_a_bad_descriptor_is_the_callers_oserror() -> None:
    with pytest.raises(OSError) as e:
        spawn(["true"], env=dict(os.environ), cwd="/", plan=None, stdout=987)
    assert e.value.errno == 9 and not isinstance(e.value, (UsageError, KernelUnavailable))


@pytest.mark.kernel("mount_namespace", "overlay")
def test_a_plan_that_cannot_be_applied_is_kernel_unavailable(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    run_dir, work, ws = tree("run"), tree("work"), tree("ws")
    missing = str(run_dir.parent / "no-such-lower")
    plan = KernelPlan(overlays=(Overlay((missing,), str(run_dir), str(work), str(ws)),), namespace=True)
    before = _zombies()
    with pytest.raises(KernelUnavailable) as e:
        spawn(["true"], env=dict(os.environ), cwd=str(ws), plan=plan)
    msg = str(e.value)
    assert msg.startswith("kernel layer could not be applied: overlay on ") and missing in msg
    assert "\n" not in msg
    assert _zombies() == before


@pytest.mark.kernel("landlock", "mount_namespace", "overlay", "readonly_bind")
def test_applied_layers_and_start_time(kernel_support: KernelSupport, tree) -> None:  # type: ignore[no-untyped-def]
    host, run_dir, work, ws, tmp = tree("host"), tree("run"), tree("work"), tree("ws"), tree("tmp")
    plan = KernelPlan(
        writable=(str(tmp), "/dev/shm"),
        overlays=(Overlay((str(host),), str(run_dir), str(work), str(ws)),),
        readonly_root=True,
        landlock=True,
        namespace=True,
        pid_namespace=True,
        private_shm=True,
    )
    t0 = time.perf_counter()
    child = spawn(["true"], env=dict(os.environ), cwd=str(ws), plan=plan)
    started = time.perf_counter() - t0
    assert child.wait().exit_code == 0
    a = child.applied
    assert a is not None
    assert (a.landlock_abi, a.namespace, a.overlay, a.readonly_root) == (
        kernel_support.landlock_abi,
        True,
        True,
        True,
    )
    # A user namespace whoever launches: root too keeps no capability of the initial namespace.
    assert (
        a.user_namespace and a.pid_namespace and a.private_shm and a.nodev_nosuid and a.capabilities_dropped
    )
    # The budget of a sandboxed start is 50 ms (bench/bench_start.py measures it); the layer itself
    # takes ~7 ms on a calm machine (a fork for the PID namespace's init included): leave room
    # for a loaded CI machine.
    assert a.seconds < 0.1 and started < 0.25, (a.seconds, started)


def test_python_is_found_on_the_given_path(tmp_path: Path) -> None:
    env = {"PATH": os.path.dirname(sys.executable)}
    r = run([os.path.basename(sys.executable), "-c", "print(1)"], None, env=env)
    assert r.out == "1\n"


# -- the step's processes: a PID namespace under a small init, or a subreaper keeper ---------------

_DAEMON = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(float(sys.argv[1]))\n"
    "        os._exit(0)\n"
    "    os._exit(0)\n"
)


def _pidns_plan(tree) -> KernelPlan:  # type: ignore[no-untyped-def]
    return KernelPlan(writable=(str(tree("w")),), namespace=True, pid_namespace=True, private_shm=True)


@pytest.mark.parametrize("layer", ["pid-namespace", "subreaper", "no-plan"])
def test_wait_returns_once_every_process_of_the_step_is_gone(
    layer: str, request: pytest.FixtureRequest
) -> None:
    """A double-forked daemon sleeping 30 s: the step ends with its main process, the daemon
    with it, and stderr (held by the daemon) is at end of file when wait() returns."""
    if layer == "pid-namespace":
        request.getfixturevalue("kernel_support")
        plan: KernelPlan | None = _pidns_plan(request.getfixturevalue("tree"))
    elif layer == "subreaper":
        plan = KernelPlan(writable=(str(request.getfixturevalue("tree")("w")),), landlock=False)
    else:
        plan = None
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    child = spawn(
        [sys.executable, "-I", "-S", "-c", _DAEMON, "30"],
        env=dict(os.environ),
        cwd="/",
        plan=plan,
        stderr=wfd,
    )
    os.close(wfd)
    result = child.wait()
    os.set_blocking(rfd, False)
    try:
        assert os.read(rfd, 100) == b"", "the daemon still holds the step's stderr"
    finally:
        os.close(rfd)
    assert result.exit_code == 0 and time.monotonic() - t0 < 10
    if layer == "pid-namespace":
        assert child.applied is not None and child.applied.pid_namespace


def test_the_keeper_reports_the_end_before_its_own_exit(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    """With a PID namespace wait() returns on the keeper's "end" line -- status and the step's
    CPU time and peak memory -- while the keeper may still be tearing its namespaces down;
    release() reaps it, so no zombie is left."""
    burn = "import os, sys\nx = bytearray(64 << 20)\nsum(range(3_000_000))\nos.kill(os.getpid(), 15)"
    child = spawn(
        [sys.executable, "-I", "-S", "-c", burn], env=dict(os.environ), cwd="/", plan=_pidns_plan(tree)
    )
    result = child.wait()
    assert (result.exit_code, result.signal) == (128 + 15, 15)
    assert result.cpu_s > 0.05 and result.peak_rss_bytes > 64 << 20
    assert child.contained
    assert not child._keeper_waited  # the end line told it, not the keeper's exit
    child.release()
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)
    child.release()  # once is enough
    child.kill()  # after the end: nothing to signal (the pid may name another process by now)


@pytest.mark.parametrize("layer", ["pid-namespace", "subreaper"])
def test_kill_ends_the_whole_tree_and_terminate_reaches_the_command(
    layer: str, request: pytest.FixtureRequest
) -> None:
    if layer == "pid-namespace":
        request.getfixturevalue("kernel_support")
        plan: KernelPlan | None = _pidns_plan(request.getfixturevalue("tree"))
    else:
        plan = None
    code = _DAEMON + "time.sleep(30)\n"
    child = spawn([sys.executable, "-I", "-S", "-c", code, "30"], env=dict(os.environ), cwd="/", plan=plan)
    time.sleep(0.3)
    t0 = time.monotonic()
    child.kill()
    result = child.wait()
    assert time.monotonic() - t0 < 5 and result.signal == signal.SIGKILL and result.exit_code == 137
    child = spawn(["sleep", "30"], env=dict(os.environ), cwd="/", plan=plan)
    time.sleep(0.2)
    child.terminate()
    result = child.wait()
    assert result.signal == signal.SIGTERM and result.exit_code == 143
    child.kill()  # reaped: a no-op


def test_the_command_in_a_pid_namespace_is_pid_2_under_its_init(kernel_support: object, tree) -> None:  # type: ignore[no-untyped-def]
    r = sh("echo $$; ls /proc | grep -c '^[0-9]'", _pidns_plan(tree))
    pid, count = r.out.split()
    assert pid == "2" and int(count) <= 4, r.out  # init, sh, ls (and grep)


def test_a_keeper_killed_from_outside_still_waits_for_the_whole_namespace(
    kernel_support: object,
    tree: Callable[..., Path],
) -> None:
    """The OOM killer or a stray SIGKILL takes the keeper: its init dies of its parent-death
    signal and the kernel ends the namespace; wait() returns only once that is done."""
    marker = f"tvs-keeper-{os.getpid()}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execvp('sleep', ['{marker}', '300'])\n"
        f"os.execvp('sleep', ['{marker}', '300'])\n"
    )
    child = spawn(
        [sys.executable, "-I", "-S", "-c", code], env=dict(os.environ), cwd="/", plan=_pidns_plan(tree)
    )
    deadline = time.monotonic() + 10
    while len(_with_marker(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = _with_marker(marker)
    assert len(pids) == 2
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait().signal == signal.SIGKILL
    alive = []
    for p in pids:  # at once: the namespace must be gone when wait() returns, not a moment later
        try:
            os.kill(p, 0)
            alive.append(p)
        except ProcessLookupError:
            pass
    assert alive == [], "a process of the step outlived its wait()"


def _with_marker(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def test_the_keeper_holds_none_of_the_launchers_descriptors() -> None:
    """A pipe the launcher opened before the spawn (another step's stderr, a Ray socket) is not
    held open by the keeper, which lives as long as the step."""
    rfd, wfd = os.pipe()
    child = spawn(["sleep", "30"], env=dict(os.environ), cwd="/", plan=None)
    try:
        os.close(wfd)
        os.set_blocking(rfd, False)
        assert os.read(rfd, 1) == b"", "a process of the step holds the launcher's pipe"
    finally:
        os.close(rfd)
        child.kill()
        child.wait()


# The early keeper (prefork) imports after its fork, so it is tried in a fresh, single-threaded
# interpreter -- as the CLI forks it -- never in this (pytest's) process.
_EARLY = """
import json, os, sys
from sandbox.kernel import KernelPlan, spawn
from sandbox.kernel._early import prefork

w = sys.argv[1]
network = sys.argv[2] != "no-net"
early = prefork(network=True)
if sys.argv[2] == "dead":  # killed before it said anything: spawn must fork a keeper of its own
    os.kill(early.pid, 9)
    os.waitpid(early.pid, 0)
abi = early.abi()  # as the runner asks, before it plans
rfd, wfd = early.take_stderr()
dev = sys.argv[2] != "host-dev"  # the runner's plans have the minimal /dev the early keeper makes
plan = KernelPlan(writable=(w,), namespace=True, pid_namespace=True, network_namespace=network,
                  minimal_dev=dev, private_shm=dev)
code = "import os, sys; sys.stderr.write('from the step'); open(os.path.join(sys.argv[1], 'f'), 'w'); sys.exit(3)"
child = spawn([sys.executable, "-I", "-S", "-c", code, w], env=dict(os.environ), cwd="/", plan=plan,
              stderr=wfd, early=early)
os.close(wfd)
result = child.wait()
err = os.read(rfd, 1000).decode()
child.release()
import time
reaped = False
for _ in range(100):  # a discarded early keeper is reaped by a thread of its own
    try:
        os.waitpid(early.pid, os.WNOHANG)
    except ChildProcessError:
        reaped = True
        break
    time.sleep(0.01)
print(json.dumps({
    "exit": result.exit_code, "stderr": err, "abi": abi, "pid": child.pid == early.pid,
    "net": child.applied.network_namespace, "pidns": child.applied.pid_namespace,
    "contained": child.contained, "reaped": reaped,
    "ctypes": [m for m in ("ctypes", "_ctypes", "sandbox.kernel._ffi", "sandbox.kernel._keeper") if m in sys.modules],
}))
"""


@pytest.mark.parametrize("fits", ["net", "no-net", "host-dev", "dead"])
def test_an_early_keeper_takes_the_step_it_fits_and_is_discarded_otherwise(
    kernel_support: object,
    tree: Callable[..., Path],
    fits: str,
) -> None:
    """prefork(): the keeper forked before the step is known makes the namespaces, then runs the
    step sent to it -- its stderr through the pipe made before the fork, its end reported as
    spawn's own keeper does -- and the launcher never loads ctypes or the keeper's code. A plan
    that needs other namespaces (no network namespace) or another /dev (the host's), or a keeper
    that died before it said anything, makes spawn discard it and fork its own."""
    import json
    import subprocess

    w = tree("w")
    out = subprocess.run(
        [sys.executable, "-c", _EARLY, str(w), fits], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["exit"] == 3 and got["stderr"] == "from the step" and (w / "f").exists()
    assert got["pidns"] and got["contained"] and got["reaped"]
    assert got["net"] == (fits != "no-net")
    assert got["pid"] == (fits == "net")  # the early keeper ran it, or spawn's own keeper did
    assert (got["abi"] is None) == (fits == "dead")
    if fits == "net":
        assert got["ctypes"] == []  # what the early keeper saves the launcher


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root keeper forks a mapper")
def test_a_root_keepers_mapper_never_outlives_it() -> None:
    """The helper a root keeper forks to write its uid map (``_mapper.Mapper``) ends with the
    keeper: reaped when closed unasked (the namespaces were refused), and ended, without writing,
    when the keeper dies before asking (its parent-death signal, or the end of its pipe)."""
    code = """
import os
from sandbox.kernel import _libc
from sandbox.kernel._mapper import Mapper
_libc.set_child_subreaper()  # a keeper's orphaned helper comes to us
m = Mapper.fork()
helper = m.helper
m.close()
closed = not os.path.exists(f"/proc/{helper}")
r, w = os.pipe()
keeper = os.fork()
if keeper == 0:
    os.write(w, str(Mapper.fork().helper).encode())
    os._exit(0)  # dies without asking
os.close(w)
orphan = int(os.read(r, 32))
os.waitpid(keeper, 0)
_, status = os.waitpid(orphan, 0)  # blocks for as long as it lives
ended = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9  # its parent-death signal
print(closed, ended or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a root mapper's map")
def test_the_identity_map_goes_only_to_the_process_whose_proc_folder_was_opened() -> None:
    """``mounts.map_identity`` writes through a descriptor of the process's /proc folder: once
    that process is gone -- its pid free for another -- nothing is written anywhere."""
    code = """
import os, time
from sandbox.kernel import mounts
from sandbox.kernel.mounts import CLONE_NEWUSER
from sandbox.kernel import _libc

def child(r):
    _libc.check(_libc.libc().unshare(CLONE_NEWUSER), "unshare")
    os.read(r, 1)
    print("child", " ".join(open("/proc/self/uid_map").read().split()), flush=True)
    os._exit(0)

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    child(r)
proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
time.sleep(0.2)
print("alive", mounts.map_identity(proc), flush=True)
os.write(w, b"x")
os.waitpid(pid, 0)
os.close(proc)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    child(r)
proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("gone", mounts.map_identity(proc), flush=True)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["alive True", "child 0 0 4294967295", "gone False"], out.stderr
