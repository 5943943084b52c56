"""A step keeps no privilege outside its sandbox, outlives nothing, and cannot steer the exporter.

Each attack of the security review, through a real `tv-sandbox run` with every layer on, as root
(the default in CI and in most Ray containers) and, where the machine allows, as an unprivileged
user (``setpriv --reuid=65534``): the attacks run in ``python -I -S`` (no Python guard), so only
the kernel layer stands in their way. The host and a folder outside it must be byte-identical
afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tree_snapshot

from sandbox.errors import EXIT_USAGE
from sandbox.export import verify
from sandbox.samples import make_host

RUNS = "artifacts/summaries/runs"
LAKEFILE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"
REQUIRE = os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1"
NOBODY = 65534
REPO = str(Path(__file__).parents[2])
#: The attack programs' own exit statuses (not tv-sandbox's): every attempt refused / one got through.
REFUSED, ESCAPED = 3, 9


def _unprivileged_python() -> str | None:
    """A Python >= 3.11 the unprivileged user may run (the venv's may live under /root), or None
    when this machine cannot run the CLI as that user (not root, no setpriv, no user namespaces)."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"):
        return None
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if subprocess.run([*drop, "unshare", "-Ur", "true"], capture_output=True).returncode:
        return None
    # A venv may link to an interpreter under /root, which the user cannot reach: the check
    # resolves the links as the user, the way the step's exec will.
    for py in (sys.executable, "/usr/bin/python3"):
        probe = (
            "import os, sys; assert sys.version_info >= (3, 11); open(os.path.realpath(sys.argv[1]), 'rb')"
        )
        check = [*drop, py, "-c", probe, py]
        if os.path.exists(py) and subprocess.run(check, capture_output=True, cwd="/").returncode == 0:
            return py
    return None


UNPRIVILEGED = _unprivileged_python()
USERS = ["root", "unprivileged"]


class Box:
    """A host and a folder outside it, owned by the user the launcher runs as."""

    def __init__(self, user: str) -> None:
        if user == "unprivileged" and UNPRIVILEGED is None:
            why = "cannot run the CLI as an unprivileged user here (setpriv, userns or a Python)"
            if os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1":  # CI: fail, never skip
                pytest.fail(f"TV_SANDBOX_REQUIRE_KERNEL=1 but {why}")
            pytest.skip(reason=why)
        if user == "root" and os.geteuid() != 0:
            user = "self"
        self.user = user
        self.root = Path(tempfile.mkdtemp(prefix="tvs-priv-", dir="/tmp"))
        self.root.chmod(0o755)
        self.host = make_host(self.root / "host")
        self.outside = self.root / "outside"
        self.outside.mkdir()
        (self.outside / "file.txt").write_text("outside\n")
        self.ws = self.root / "ws"
        self.ws.mkdir()
        self.python = UNPRIVILEGED if user == "unprivileged" else sys.executable
        assert self.python is not None
        if user == "unprivileged":
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in [*dirnames, *filenames]:
                    os.lchown(os.path.join(dirpath, name), NOBODY, NOBODY)
            os.chown(self.root, NOBODY, NOBODY)
        self.n = 0

    def launcher(self, run_id: str) -> list[str]:
        """``tv-sandbox run`` of this box's host and workspace folder, as its user: the options
        and the command follow."""
        return [
            *self.prefix(),
            str(self.python),
            "-m",
            "sandbox",
            "run",
            "--root",
            str(self.host),
            "--run-id",
            run_id,
            "--workspace-dir",
            str(self.ws),
        ]

    def prefix(self) -> list[str]:
        if self.user == "unprivileged":
            return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return []

    def snapshot(self) -> dict[str, object]:
        host = {k: v for k, v in tree_snapshot(self.host).items() if not k.startswith(RUNS)}
        return {"host": host, "outside": tree_snapshot(self.outside)}

    def run(
        self,
        code: str,
        *,
        kernel: str = "require",
        env: dict[str, str] | None = None,
        timeout: float = 60,
        options: tuple[str, ...] = (),
        terminal: bool = False,
        then: str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
    ) -> tuple[subprocess.CompletedProcess[str], Path, float]:
        """``tv-sandbox run`` of ``python -I -S -c code`` (``options``: more of ``run``'s, such as
        ``--policy FILE``); returns the process, the export and the wall time. ``terminal``: the
        launcher runs in a session of its own whose controlling terminal is a new pseudo-terminal,
        as from a user's shell; its stdin, stdout and stderr are that terminal (stdout then holds
        everything written to it, and what was pushed into its input), ``then`` a shell line run
        in it after the launcher (``$before``: ``stty -g`` before it). ``stdin``, ``stdout``:
        the launcher's own, as a shell's redirections give them (stdout is then not captured)."""
        self.n += 1
        run_id = f"p{self.n}"
        argv = [
            *self.launcher(run_id),
            "--kernel",
            kernel if REQUIRE or kernel != "require" else "auto",
            *options,
            "--",
            self.python,
            "-I",
            "-S",
            "-c",
            code,
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TV_", "PYTHON"))}
        base.update(PYTHONPATH=REPO, HOME=str(self.root), TMPDIR=str(self.ws), **(env or {}))
        t0 = time.monotonic()
        if terminal:
            if then is not None:  # a shell line run after the launcher, as a user's next: $before
                # holds the terminal's settings from before it (stty -g)
                argv = ["sh", "-c", f'before=$(stty -g); "$@"; s=$?; {then}; exit $s', "sh", *argv]
            r = _in_a_terminal(argv, base, timeout)
        else:
            r = subprocess.run(
                argv,
                stdin=stdin,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=base,
                timeout=timeout,
                cwd="/",
            )
        return r, self.host / RUNS / run_id, time.monotonic() - t0

    def report(self, export: Path) -> dict[str, object]:
        rep: dict[str, object] = json.loads((export / "sandbox_report.json").read_text())
        layers = rep["layers"]
        assert isinstance(layers, dict)
        if not layers["kernel"] or layers["missing"]:
            if REQUIRE:
                pytest.fail(f"the full kernel layer was not active in CI: {layers['missing']}")
            pytest.skip(reason=f"the full kernel layer is unavailable here: {layers['missing']}")
        return rep

    def close(self) -> None:
        try:
            shutil.rmtree(self.root, ignore_errors=True)
        except RecursionError:  # a step's folders nested thousands deep, left by a failed run
            subprocess.run(["rm", "-rf", str(self.root)], check=False)


def _in_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``argv`` as from a shell in a terminal: a new session whose controlling terminal is a new
    pty, stdio on it; returns what the terminal showed (stdout) and the status."""
    import fcntl
    import pty
    import select
    import termios

    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd="/", start_new_session=True,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                break
            if not chunk:
                break
            out += chunk
        code = p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return subprocess.CompletedProcess(argv, code, out.decode(errors="replace"), "")


@pytest.fixture(params=USERS)
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    b = Box(request.param)
    try:
        yield b
    finally:
        b.close()


def _stdout_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return r.stdout.splitlines()


# -- capabilities ---------------------------------------------------------------------------------

CAPS = r"""
import os
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
    print(k, status[k].strip())
print("uid_map", " ".join(open("/proc/self/uid_map").read().split()))
"""


def test_a_step_holds_no_capability(box: Box) -> None:
    r, export, _ = box.run(CAPS)
    box.report(export)
    got = dict(line.split(" ", 1) for line in _stdout_lines(r))
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert got[k] == "0000000000000000", (k, got)
    assert got["NoNewPrivs"] == "1"
    if box.user == "root":  # identity map: files keep their owners inside
        assert got["uid_map"] == "0 0 4294967295", got


# -- open_by_handle_at (CAP_DAC_READ_SEARCH) -------------------------------------------------------

HANDLE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
def handle(path):
    h, mount_id = Handle(handle_bytes=128), ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(h), ctypes.byref(mount_id), 0) != 0:
        print("name_to_handle_at", path, os.strerror(ctypes.get_errno()))
        return None
    return h
base = os.open(os.environ["TMPDIR"], os.O_RDONLY | os.O_DIRECTORY)  # the writable bind
escaped = 0
for path, flags in (("/", os.O_RDONLY | os.O_DIRECTORY), ("{lakefile}", os.O_WRONLY | os.O_APPEND),
                    ("{outside}", os.O_WRONLY | os.O_APPEND)):
    h = handle(path)
    if h is None:
        continue
    fd = libc.open_by_handle_at(base, ctypes.byref(h), flags)
    if fd < 0:
        print("refused", path, os.strerror(ctypes.get_errno()))
        continue
    escaped += 1
    if path == "/":
        for target in ("{lakefile}", "{outside}"):
            try:
                t = os.open(target.lstrip("/"), os.O_WRONLY | os.O_APPEND, dir_fd=fd)
                os.write(t, b"escaped through a handle\n")
            except OSError as e:
                print("write", target, e)
    else:
        os.write(fd, b"escaped through a handle\n")
sys.exit(9 if escaped else 3)
"""


def test_open_by_handle_at_reaches_nothing(box: Box) -> None:
    before = box.snapshot()
    code = HANDLE.replace("{lakefile}", str(box.host / LAKEFILE)).replace(
        "{outside}", str(box.outside / "file.txt")
    )
    r, export, _ = box.run(code)
    box.report(export)
    assert box.snapshot() == before, r.stdout
    assert r.returncode == REFUSED, (r.returncode, r.stdout, r.stderr[-2000:])
    refused = [line for line in _stdout_lines(r) if line.startswith("refused")]
    assert refused and all("Operation not permitted" in line for line in refused), r.stdout


# -- mknod, nodev/nosuid, /dev/shm ----------------------------------------------------------------

MKNOD = r"""
import os, stat, sys
places = {"tmp": os.environ["TMPDIR"], "run": os.environ["TV_RUN_DIR"], "cwd": os.getcwd(),
          "shm": "/dev/shm", "host": "{host}"}
made = 0
for name, where in places.items():
    for kind, mode, dev in (("char", stat.S_IFCHR, os.makedev(1, 11)), ("block", stat.S_IFBLK, os.makedev(7, 0))):
        p = os.path.join(where, f"node-{kind}")
        try:
            os.mknod(p, mode | 0o666, dev)
            made += 1
            print("made", name, kind)
        except OSError as e:
            print("refused", name, kind, e.errno)
points = {}
for line in open("/proc/self/mountinfo"):
    f = line.split()
    points[f[4]] = set(f[5].split(","))
for name, where in places.items():
    real = os.path.realpath(where)
    best = max((p for p in points if real == p or real.startswith(p.rstrip("/") + "/")), key=len)
    print("options", name, best, ",".join(sorted(points[best] & {"nodev", "nosuid", "ro", "rw"})))
open("/dev/shm/tvs-private-{tag}", "w").write("x")
sys.exit(9 if made else 3)
"""


def test_mknod_is_refused_everywhere_and_writable_mounts_are_nodev_nosuid(box: Box) -> None:
    before = box.snapshot()
    tag = f"{os.getpid()}-{box.user}"
    code = MKNOD.replace("{host}", str(box.host)).replace("{tag}", tag)
    r, export, _ = box.run(code)
    box.report(export)
    lines = _stdout_lines(r)
    assert r.returncode == REFUSED and not [x for x in lines if x.startswith("made")], (
        r.stdout,
        r.stderr[-2000:],
    )
    assert len([x for x in lines if x.startswith("refused")]) == 10
    options = [x.split() for x in lines if x.startswith("options")]
    assert len(options) == 5
    for _, name, _point, opts in options:
        assert {"nodev", "nosuid", "rw"} <= set(opts.split(",")), (name, opts)
    # /dev/shm was the step's own tmpfs: nothing of it reached the host's
    assert not os.path.exists(f"/dev/shm/tvs-private-{tag}")
    assert box.snapshot() == before


# -- signals: the step sees and reaches only its own processes -------------------------------------

KILL = r"""
import os, sys
pid = {pid}
print("visible", os.path.exists(f"/proc/{pid}"))
try:
    os.kill(pid, 9)
    print("killed")
    sys.exit(9)
except OSError as e:
    print("refused", e.errno)
    sys.exit(3)
"""


def test_a_step_cannot_signal_a_process_outside_its_run(box: Box) -> None:
    victim = subprocess.Popen([*box.prefix(), "sleep", "60"])
    try:
        time.sleep(0.1)
        r, export, _ = box.run(KILL.replace("{pid}", str(victim.pid)))
        box.report(export)
        assert r.returncode == REFUSED, (r.stdout, r.stderr[-2000:])
        assert "visible False" in r.stdout
        assert victim.poll() is None, "the process outside the run was killed"
    finally:
        victim.kill()
        victim.wait()


# -- processes that outlive the step --------------------------------------------------------------

DAEMON = r"""
import os, sys, time
run = os.environ["TV_RUN_DIR"]
os.makedirs(os.path.join(run, "data", "victim"), exist_ok=True)
open(os.path.join(run, "data", "victim", "kept.txt"), "w").write("kept")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        # a daemon: holds stderr, waits for the step to end, then forges the report, adds a file,
        # and swaps a folder for a link to a folder outside and a file for a fifo
        time.sleep(1.0)
        open(os.path.join(run, "sandbox_report.json"), "w").write('{"status": "forged"}')
        open(os.path.join(run, "late.txt"), "w").write("late")
        os.rename(os.path.join(run, "data", "victim"), os.path.join(run, "data", "gone"))
        os.symlink("{outside}", os.path.join(run, "data", "victim"))
        os.mkfifo(os.path.join(run, "data", "fifo"))
        time.sleep(3600)
    os._exit(0)
print("main done")
"""


def test_a_daemon_ends_with_the_step_and_cannot_forge_its_export(box: Box) -> None:
    r, export, elapsed = box.run(DAEMON.replace("{outside}", str(box.outside)), timeout=60)
    rep = box.report(export)
    assert r.returncode == 0, r.stderr[-2000:]
    assert elapsed < 10, f"the run waited for the step's daemon: {elapsed:.1f} s"
    assert rep["status"] == "succeeded"
    assert not (export / "late.txt").exists() and not (export / "data" / "fifo").exists()
    assert (export / "data" / "victim" / "kept.txt").read_text() == "kept"
    assert verify(export) == []
    time.sleep(1.5)  # the daemon would act now, were it alive
    assert json.loads((export / "sandbox_report.json").read_text())["status"] == "succeeded"
    assert verify(export) == [] and not (export / "late.txt").exists()


@pytest.mark.parametrize("holder", ["sleep 30 &", "sleep infinity &"])
def test_a_background_stderr_holder_does_not_hold_the_run(box: Box, holder: str) -> None:
    code = f"import subprocess; subprocess.run(['sh', '-c', {holder!r}])"
    r, export, elapsed = box.run(code, timeout=60)
    box.report(export)
    assert r.returncode == 0 and elapsed < 10, (elapsed, r.stderr[-2000:])


def test_terminating_a_launcher_ends_the_whole_step(box: Box) -> None:
    """SIGTERM to `tv-sandbox run` (as a job scheduler sends it): the step and its daemon end."""
    marker = f"tvs-term-{os.getpid()}-{box.user}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execvp('sleep', ['{marker}', '300'])\n"
        "time.sleep(300)\n"
    )
    argv_env = {"TV_RUN_DIR_UNUSED": "1"}
    proc = subprocess.Popen(
        [
            *box.launcher("term"),
            "--",
            str(box.python),
            "-I",
            "-S",
            "-c",
            code,
        ],
        env={**os.environ, "PYTHONPATH": REPO, "TMPDIR": str(box.ws), **argv_env},
        cwd="/",
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _with_marker(marker):
            time.sleep(0.05)
        if not _with_marker(marker):
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the step's daemon never started; the launcher said: {err!r}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _with_marker(marker):
        time.sleep(0.05)
    assert not _with_marker(marker), "the step's daemon outlived its launcher"


def _with_marker(marker: str) -> list[int]:
    """The processes named ``marker`` (the daemon's ``argv[0]``) -- not the launcher, whose command
    line holds the marker too: matched, it ended the wait before the daemon was there (and a scan
    during the launcher's ``exec``, which reads an empty command line, then found nothing)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/cmdline").read_bytes().startswith(marker.encode() + b"\0"):
                    found.append(int(name))
            except OSError:
                pass
    return found


# -- the run folder's content cannot steer the export ---------------------------------------------

SPARSE = r"""
import os
with open(os.path.join(os.environ["TV_RUN_DIR"], "data", "sparse.bin"), "wb") as fh:
    fh.truncate(1 << 30)
    fh.write(b"head")
"""


def test_a_sparse_gib_exports_sparse(box: Box) -> None:
    r, export, _ = box.run(SPARSE)
    box.report(export)
    st = os.stat(export / "data" / "sparse.bin")
    assert r.returncode == 0 and st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 20



DEEP = r"""
import os
os.makedirs(os.path.join(os.environ["TV_RUN_DIR"], "data", "kept"))
fd = os.open(os.environ["TV_RUN_DIR"], os.O_RDONLY)
for _ in range(3000):  # by descriptor: no path grows past PATH_MAX
    os.mkdir("d", dir_fd=fd)
    sub = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = sub
os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
"""


def test_folders_nested_thousands_deep_neither_lose_the_run_nor_stay_behind(box: Box) -> None:
    """3,000 folders nested in the run folder: the launcher's walks of it (the report's scattered
    files, the export, the workspace's removal) recursed a level at a time -- RecursionError,
    an internal error (exit 125), nothing reported or exported, and a workspace no sweep could
    remove. What lies past report.MAX_DEPTH levels is removed (a warning); the rest is exported."""
    r, export, _ = box.run(DEEP, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = box.report(export)
    assert any("deeper than" in w for w in rep["warnings"]), rep["warnings"]  # type: ignore[union-attr]
    assert (export / "data" / "kept").is_dir() and (export / "d").is_dir()
    assert verify(export) == []
    assert list(box.ws.iterdir()) == []


#: DEEP, its folders then closed to their owner from level START on (MODE: 0o555, 0o000)
DEEP_CLOSED = r"""
import os
os.makedirs(os.path.join(os.environ["TV_RUN_DIR"], "data", "kept"))
fd = os.open(os.environ["TV_RUN_DIR"], os.O_RDONLY)
fds = []
for _ in range(3000):
    os.mkdir("d", dir_fd=fd)
    fds.append(fd)
    fd = os.open("d", os.O_RDONLY, dir_fd=fd)
os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
fds.append(fd)
for f in fds[START:]:
    os.fchmod(f, MODE)
"""


@pytest.mark.parametrize(("start", "mode"), [(1, 0o555), (150, 0o000)])
def test_folders_nested_deep_and_closed_neither_lose_the_run_nor_stay_behind(
    box: Box, start: int, mode: int
) -> None:
    """DEEP's folders closed to their owner (``chmod 555``, or ``000`` past the depth the report
    keeps): an unprivileged launcher could neither empty them nor move a deep one up (a folder
    moves only when its owner may write it), so its removal recursed a level at a time --
    RecursionError, exit 125, nothing exported, a workspace no sweep could remove. ``rmtree``
    opens up the folders it removes, which are the run's."""
    code = DEEP_CLOSED.replace("START", str(start)).replace("MODE", oct(mode))
    r, export, _ = box.run(code, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = box.report(export)
    assert any("deeper than" in w for w in rep["warnings"]), rep["warnings"]  # type: ignore[union-attr]
    assert (export / "data" / "kept").is_dir()
    assert list(box.ws.iterdir()) == []


# -- a workspace inside the host ------------------------------------------------------------------


@pytest.mark.parametrize("inside", ["configs", "data/lakehouse", "data/lakehouse/sub"])
def test_tmpdir_inside_the_host_is_refused_before_anything_runs(inside: str, tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    (host / "data" / "lakehouse" / "sub").mkdir(exist_ok=True)
    (host / inside).mkdir(parents=True, exist_ok=True)
    before = tree_snapshot(host)
    env = {**os.environ, "TMPDIR": str(host / inside)}
    argv = [
        sys.executable,
        "-m",
        "sandbox",
        "run",
        "--root",
        str(host),
        "--run-id",
        "t",
        "--kernel",
        "require",
    ]
    r = subprocess.run([*argv, "--", "true"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == EXIT_USAGE, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TMPDIR" in lines[0] and "inside" in lines[0], r.stderr
    assert tree_snapshot(host) == before


def test_a_workspace_dir_inside_a_mount_that_lies_outside_the_host_is_refused(tmp_path: Path) -> None:
    """The lakehouse may be a link to a big disk elsewhere: a workspace there is refused too."""
    host = make_host(tmp_path / "host")
    lake = host / "data" / "lakehouse"
    elsewhere = tmp_path / "bigdisk"
    shutil.move(str(lake), elsewhere)
    lake.symlink_to(elsewhere)
    argv = [sys.executable, "-m", "sandbox", "run", "--root", str(host), "--run-id", "t"]
    r = subprocess.run(
        [*argv, "--workspace-dir", str(elsewhere), "--", "true"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == EXIT_USAGE and "lakehouse mount" in r.stderr, r.stderr


def test_a_tmpdir_inside_the_host_through_a_bind_mount_alias_is_refused(tmp_path: Path) -> None:
    """The host, or a folder below it, bound elsewhere (``mount --bind HOST/data/lakehouse/y2024
    /mnt/alias``) is the same folder under a path realpath does not map back: TMPDIR=/mnt/alias
    built the workspace -- run folder, policy record, the step's temp files -- inside the
    lakehouse. Decided on the filesystem (device, path from its root): a bind of a folder outside
    the host, on the same filesystem, is still a place for the workspace. The binds are made in a
    private mount namespace of each run, gone with it: nothing reaches the machine's table."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip(reason="a bind mount in a private mount namespace needs root and unshare")
    host = make_host(tmp_path / "host")
    lake = host / "data" / "lakehouse"
    (lake / "y2024").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    binds = {
        "alias": host,
        "y2024": lake / "y2024",
        "a b\\c": lake / "y2024",  # mountinfo writes it a\040b\134c
        "data": host / "data",
        "configs": host / "configs",
        "elsewhere": outside,
    }
    pairs: list[str] = []
    for name, src in binds.items():
        (tmp_path / name).mkdir()
        pairs += [str(src), str(tmp_path / name)]
    mounts = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 99; shift 2; done; shift; exec "$@"'

    def run(*args: str, tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
        ns = ["unshare", "-m", "--propagation", "private", "sh", "-c", mounts, "sh", *pairs, "--"]
        argv = [sys.executable, "-m", "sandbox", "run", "--root", str(host), "--run-id", "t", *args]
        env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir else dict(os.environ)
        return subprocess.run([*ns, *argv, "--", "true"], capture_output=True, text=True, env=env, timeout=60)

    before = tree_snapshot(host)
    inside = [
        tmp_path / "alias" / "data" / "lakehouse",
        tmp_path / "alias" / "configs",
        tmp_path / "y2024",
        tmp_path / "a b\\c",
        tmp_path / "data",
        tmp_path / "data" / "lakehouse" / "y2024",
        tmp_path / "configs",
    ]
    for tmpdir in inside:
        r = run(tmpdir=tmpdir)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == EXIT_USAGE == 125, (tmpdir, r.stderr)
        assert len(lines) == 1 and f"$TMPDIR {tmpdir} lies inside" in lines[0], r.stderr
    r = run("--workspace-dir", str(tmp_path / "y2024"))
    assert r.returncode == EXIT_USAGE and f"{tmp_path}/y2024 lies inside" in r.stderr, r.stderr
    assert tree_snapshot(host) == before
    # the same filesystem, outside the host: through a bind and directly
    for tmpdir in (tmp_path / "elsewhere", outside):
        r = run("--overwrite", tmpdir=tmpdir)
        assert r.returncode == 0, (tmpdir, r.stderr)
    assert os.listdir(outside) == []
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


# -- a full run-folder filesystem ------------------------------------------------------------------


def test_a_full_run_folder_filesystem_is_an_export_error_in_one_line(tmp_path: Path) -> None:
    """The step fills the filesystem of its run folder: the launcher's own records cannot be
    written; that is the export-error status with one line, the previous export intact, no stage
    in the runs folder and no workspace left."""
    if os.geteuid() != 0:
        pytest.skip(reason="mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if res.returncode:
        if REQUIRE:
            pytest.fail(f"cannot mount a tmpfs: {res.stderr!r}")
        pytest.skip(reason=f"cannot mount a tmpfs: {res.stderr!r}")
    try:
        host = make_host(tmp_path / "host")
        argv = [sys.executable, "-m", "sandbox", "run", "--root", str(host), "--workspace-dir", str(small)]
        ok = subprocess.run([*argv, "--run-id", "full", "--", "true"], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        fill = "import os\ntry:\n    open(os.environ['TV_RUN_DIR'] + '/data/big.bin', 'wb').write(b'x' * 3_000_000)\nexcept OSError:\n    pass\n"
        r = subprocess.run(
            [*argv, "--run-id", "full", "--overwrite", "--", sys.executable, "-I", "-S", "-c", fill],
            capture_output=True,
            text=True,
            timeout=60,
        )
        from sandbox.errors import EXIT_EXPORT

        assert r.returncode == EXIT_EXPORT, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.startswith("tv-sandbox: error")]
        assert len(lines) == 1 and "no space left on device" in lines[0], r.stderr
        assert "the previous export is intact" in lines[0]
        runs = host / RUNS
        assert os.listdir(runs) == ["full"] and verify(runs / "full") == []
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


DEV = r"""
import os
print(" ".join(sorted(os.listdir("/dev"))))
"""


def test_dev_holds_only_the_minimal_devices(box: Box) -> None:
    """No raw disk, kmsg or mem below /dev: a uid-0 step would own (and read) root's nodes."""
    r, export, _ = box.run(DEV)
    box.report(export)
    assert r.stdout.split() == sorted(
        [
            "fd",
            "full",
            "null",
            "ptmx",
            "pts",
            "random",
            "shm",
            "stderr",
            "stdin",
            "stdout",
            "tty",
            "urandom",
            "zero",
        ]
    ), r.stdout


PASS_FD = r"""
import array, socket
s = socket.socket(socket.AF_UNIX)
s.connect("{name}")
s.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [2]))])
s.recv(1)
"""


def test_stderr_passed_to_a_process_outside_does_not_hold_the_run(box: Box) -> None:
    """The step hands its stderr to a cooperating process outside its run (over a pathname Unix
    socket in a folder it can read: its network namespace cuts abstract ones, not these -- see
    docs/security.md); the run still ends when the step's processes are gone."""
    import socket
    import threading

    name = str(box.outside / "holder.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    os.chmod(name, 0o777)  # connecting needs write permission on the socket, for any launcher user
    srv.listen(1)
    held: list[int] = []

    def hold() -> None:
        conn, _ = srv.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1, 4)
        held.extend(fds)
        conn.send(b"k")
        conn.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        r, export, elapsed = box.run(PASS_FD.replace("{name}", name), timeout=60)
        box.report(export)
        assert held, "the step did not pass its stderr"
        assert r.returncode == 0 and elapsed < 10, (elapsed, r.stderr[-2000:])
    finally:
        for fd in held:
            os.close(fd)
        srv.close()


USERNS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
    print("made")
    sys.exit(9)
print("refused", ctypes.get_errno())
sys.exit(3)
"""


def test_a_step_cannot_make_a_user_namespace(box: Box) -> None:
    """No nested user namespace (bubblewrap's --disable-userns): less kernel within reach."""
    r, export, _ = box.run(USERNS)
    box.report(export)
    assert r.returncode == REFUSED and "refused 28" in r.stdout, (r.stdout, r.stderr[-2000:])  # ENOSPC


# -- found by a second attacker's review (2026-11-30) ----------------------------------------------

DEV_METADATA = r"""
import os, sys
got = []
# Each change sets what is already there (the mode, the times): where it is allowed -- the bug
# this tests -- the call succeeds and changes nothing but the node's ctime; never the machine's
# /dev/null to 0600.
for name in ("null", "zero", "full", "random", "urandom", "tty"):
    path = "/dev/" + name
    try:
        st = os.stat(path)
    except OSError:
        continue
    for what, call in (
        ("chmod", lambda: os.chmod(path, st.st_mode & 0o7777)),
        ("utime", lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))),
    ):
        try:
            call()
            got.append(what + " " + name)
        except OSError:
            pass
with open("/dev/null", "w") as fh:  # the devices themselves still work
    fh.write("x")
with open("/dev/zero", "rb") as fh:
    assert fh.read(2) == b"\0\0"
print(" ".join(got))
sys.exit(9 if got else 3)
"""


def test_the_device_nodes_modes_and_times_are_the_hosts(box: Box) -> None:
    """/dev's nodes are the host's own inodes, bound in; a uid-0 step owns them. A writable bind
    let it chmod the host's /dev/full (chmod 000 /dev/null would break the machine)."""
    dev = {n: os.stat("/dev/" + n) for n in ("null", "zero", "full", "random", "urandom")}
    r, export, _ = box.run(DEV_METADATA)
    box.report(export)
    assert r.returncode == REFUSED, (r.stdout, r.stderr[-2000:])
    for n, st in dev.items():
        now = os.stat("/dev/" + n)
        assert (now.st_mode, now.st_mtime_ns, now.st_ctime_ns) == (st.st_mode, st.st_mtime_ns, st.st_ctime_ns), n


SYSV = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
seen = libc.shmget({key}, 0, 0)  # the machine's segment, by its key
made = libc.shmget(0x7e57, 4096, 0o1000 | 0o600)  # IPC_CREAT: one that would outlive the run
print(seen, made)
sys.exit(9 if seen >= 0 else 3)
"""


def test_system_v_ipc_is_the_steps_own(box: Box) -> None:
    """No IPC namespace let a step attach root's SysV shared memory by key and leave segments,
    queues and semaphores behind on the machine (bubblewrap's --unshare-ipc, Docker's default)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x5EED0000 + os.getpid() % 0xFFFF
    shmid = libc.shmget(key, 4096, 0o1000 | 0o666)
    assert shmid >= 0, ctypes.get_errno()
    before = subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout
    try:
        r, export, _ = box.run(SYSV.replace("{key}", str(key)))
        box.report(export)
        assert r.returncode == REFUSED, (r.stdout, r.stderr[-2000:])
        assert subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout == before
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID
        leaked = libc.shmget(0x7E57, 0, 0)  # where the step's would be, had it reached the machine
        if leaked >= 0:
            libc.shmctl(leaked, 0, None)


FORGE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
try:
    fds = os.listdir("/proc/1/fd")
except OSError:
    fds = [str(n) for n in range(3, 16)]
for fd in fds:
    try:
        with open(f"/proc/1/fd/{fd}", "w") as fh:  # the init's status pipe to the launcher
            fh.write("0\n")
    except OSError:
        pass
traced = libc.ptrace(0x4206, 1, 0, 0) == 0  # PTRACE_SEIZE the init: it would hold the run open
print("traced" if traced else "not traced")
sys.exit(5)
"""


def test_a_step_can_neither_trace_its_init_nor_forge_its_status(box: Box) -> None:
    """The init (PID 1 of the step) was dumpable: the step opened /proc/1/fd/N and wrote "0" to
    the pipe that carries its command's status -- a failing step reported success -- and could
    ptrace-stop it to hold the run open."""
    r, export, elapsed = box.run(FORGE, timeout=60)
    box.report(export)
    assert r.returncode == 5 and "not traced" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    assert elapsed < 10


TIOCSTI = r"""
import fcntl, os, sys, termios
got = []
try:
    tty = os.open("/dev/tty", os.O_RDWR)  # the controlling terminal: none in a session of its own
except OSError:
    tty = None
for name, fd in (("/dev/tty", tty), ("stdin", 0), ("stderr", 2)):
    if fd is None:
        continue
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"#")  # one byte pushed into the terminal's input
        got.append(name)
    except OSError:
        pass
print("pushed through", *got) if got else print("nothing pushed")
sys.exit(9 if got else 3)
"""


def test_a_step_cannot_type_into_the_launchers_terminal(box: Box) -> None:
    """The step shared the launcher's session and controlling terminal: TIOCSTI pushed a command
    line into the user's shell, run unsandboxed once the run ended (bubblewrap's CVE-2017-5226;
    this kernel's dev.tty.legacy_tiocsti allows it). The command runs in a session of its own."""
    r, export, _ = box.run(TIOCSTI, terminal=True)
    box.report(export)
    assert r.returncode == REFUSED and "nothing pushed" in r.stdout, r.stdout[-2000:]



TERMINAL_STALL = r"""
import fcntl, signal, struct, sys, termios
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background process may then change the terminal
got = []
for name, request, arg, undo in (  # each in a form that changes nothing, then undone if it passed
    ("TCXONC", termios.TCXONC, termios.TCOON, None),  # TCOOFF: the terminal's output stopped
    ("TIOCSETD", termios.TIOCSETD, struct.pack("i", 0), None),  # N_NULL (27): every read/write fails
    ("TIOCEXCL", termios.TIOCEXCL, 0, termios.TIOCNXCL),  # every later open of it: EBUSY
):
    try:
        fcntl.ioctl(1, request, arg)
        got.append(name)
        if undo is not None:
            fcntl.ioctl(1, undo, 0)
    except OSError:
        pass
print("passed:", *got) if got else print("nothing passed")
sys.exit(9 if got else 3)
"""


def test_a_step_cannot_stall_or_break_the_launchers_terminal(box: Box) -> None:
    """From a run in a terminal, with SIGTTOU ignored: ``tcflow(TCOOFF)`` stopped the terminal's
    output, and the launcher's next write to it never returned -- the run was never reported nor
    exported, SIGTERM did not end the launcher, the workspace stayed; ``TIOCSETD`` to ``N_NULL``
    made every read and write of the user's terminal fail after the run (the launcher exited 120,
    the shell's reads failed); ``TIOCEXCL`` made every later open of it fail (EBUSY). The
    terminal filter refuses the three requests (each tried here in a form that changes nothing)."""
    r, export, _ = box.run(TERMINAL_STALL, terminal=True)
    box.report(export)
    assert r.returncode == REFUSED and "nothing passed" in r.stdout, r.stdout[-2000:]


TERMINAL_SETTINGS = r"""
import signal, sys, termios
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background process may then set them
attrs = termios.tcgetattr(1)
attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)  # what a crashed full-screen program leaves
termios.tcsetattr(1, termios.TCSANOW, attrs)
print("left raw", flush=True)
"""


def test_a_step_does_not_leave_the_users_terminal_changed(box: Box) -> None:
    """A step in a terminal turned echo, line editing and Ctrl-C off (a full-screen program that
    crashed leaves it so): the user's shell inherited a terminal without echo or Ctrl-C. The
    launcher puts the terminal's settings back after each step."""
    check = 'test "$(stty -g)" = "$before" && echo SETTINGS-KEPT || echo SETTINGS-CHANGED'
    r, _, _ = box.run(TERMINAL_SETTINGS, terminal=True, then=check)
    assert "left raw" in r.stdout, r.stdout[-2000:]
    assert "SETTINGS-KEPT" in r.stdout, r.stdout[-2000:]


STDIO_METADATA = r"""
import os, sys
got = []
for fd in (0, 1):
    st = os.fstat(fd)
    for what, call in (  # each sets what is there: allowed, it changes only the ctime
        ("fchmod", lambda: os.fchmod(fd, st.st_mode & 0o7777)),
        ("futimens", lambda: os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))),
        ("fsetxattr", lambda: os.setxattr(fd, "user.tvs", b"1")),
    ):
        try:
            call()
            got.append(f"{what}({fd})")
        except OSError:
            pass
line = sys.stdin.readline()
print(" ".join(got) or "none", line.split(",")[0], file=sys.stderr)
sys.exit(9 if got else 3)
"""


def test_a_step_cannot_change_the_host_files_behind_its_stdio(box: Box, tmp_path: Path) -> None:
    """``tv-sandbox run ... < lakehouse.csv > /dev/null``: the descriptors carried the launcher's
    writable mount, so the step's fchmod/futimens/fsetxattr changed the lakehouse file (and could
    have changed /dev/null). The command gets them as its own view opens them."""
    lake = box.host / LAKEFILE
    null = os.stat("/dev/null")
    before = os.stat(lake)
    script = box.root / "stdio.py"
    script.write_text(STDIO_METADATA)
    script.chmod(0o644)
    argv_code = f"exec(open({str(script)!r}).read())"
    with open(lake, "rb") as stdin, open("/dev/null", "wb") as stdout:
        r, export, _ = box.run(argv_code, stdin=stdin.fileno(), stdout=stdout.fileno())
    box.report(export)
    assert r.returncode == REFUSED and "none timestamp" in r.stderr, r.stderr[-2000:]
    after = os.stat(lake)
    assert (after.st_mode, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_mode,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    assert os.stat("/dev/null").st_ctime_ns == null.st_ctime_ns


STDOUT_METADATA = r"""
import os, sys
st = os.fstat(1)
got = []
for what, call in (
    ("fchmod", lambda: os.fchmod(1, 0o4755)),  # setuid: the launcher's user's executable
    ("futimens", lambda: os.utime(1, ns=(0, 0))),
    ("fsetxattr", lambda: os.setxattr(1, "user.tvs", b"1")),
    ("ftruncate", lambda: os.ftruncate(1, 0)),
):
    try:
        call()
        got.append(what)
    except OSError:
        pass
print("written by the step")
print(" ".join(got) or "none", file=sys.stderr)  # on a pipe they may succeed: no file of the host's
"""


def test_a_step_cannot_change_the_file_its_stdout_is_redirected_to(box: Box) -> None:
    """``tv-sandbox run ... >> out.log``: the step held the launcher's descriptor of the file, and
    as its owner (a root step owns root's files) made it setuid root, dated it 1970, truncated it.
    Now it holds a pipe the launcher copies into the file: the file gets its output, nothing else."""
    out = box.outside / "out.log"
    out.write_text("before\n")
    out.chmod(0o644)
    if box.user == "unprivileged":
        os.chown(out, NOBODY, NOBODY)
    before = os.stat(out)
    with open(out, "ab") as stdout:
        r, export, _ = box.run(STDOUT_METADATA, stdout=stdout.fileno())
    box.report(export)
    assert r.returncode == 0, r.stderr[-2000:]
    after = os.stat(out)
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
    assert after.st_mtime_ns >= before.st_mtime_ns > 0
    assert out.read_text() == "before\nwritten by the step\n"


LATER_STEP = r"""
import json, sys
from sandbox.run import Run, StepSpec
from sandbox.runner import RunRequest, preflight
prep = preflight(RunRequest(host=sys.argv[1], run_id="later", argv=[], kernel="require" if sys.argv[2] == "1" else "auto"))
with Run.open(prep, echo=False) as run:
    # an earlier step makes the stdin's path something else in the view (the run folder's)
    run.step(StepSpec(argv=["sh", "-c", "rm -f " + sys.argv[3] + " && " + sys.argv[4] + " " + sys.argv[3]], name="one"))
    two = run.step(StepSpec(argv=[sys.executable, "-I", "-S", "-c", "import os; os.fchmod(0, 0o600)"], name="two"))
    run.close()
print(json.dumps({"two": two.exit_code, "tail": two.stderr_tail}))
"""


@pytest.mark.parametrize("make", ["mkfifo", "ln -s /dev/stdin", "ln -s /proc/self/fd/0"])
def test_an_earlier_step_cannot_hand_a_later_one_the_launchers_stdin(tmp_path: Path, make: str) -> None:
    """A run's stdin is a host file (``< configs/x``): an earlier step replaced that path in the view
    with a FIFO, so the init could not reopen it -- and handed the later step the launcher's own
    descriptor, whose fchmod changed the host file; or with a link to ``/dev/stdin``, which led the
    reopen back to that descriptor. Now the later step's command is not started."""
    host = make_host(tmp_path / "host")
    target = next(p for p in sorted((host / "configs").iterdir()) if p.is_file())
    rel = str(target.relative_to(host))
    before = os.stat(target)
    with open(target, "rb") as stdin:
        r = subprocess.run(
            [sys.executable, "-c", LATER_STEP, str(host), "1" if REQUIRE else "0", rel, make],
            stdin=stdin, capture_output=True, text=True, timeout=120, cwd=REPO,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["two"] == 126 and "cannot give the command its stdin" in got["tail"], got
    after = os.stat(target)
    assert (after.st_mode, after.st_ctime_ns) == (before.st_mode, before.st_ctime_ns)


def test_kill_0_reaches_only_the_steps_own_processes(box: Box) -> None:
    """``kill 0`` (a shell's, or ``os.kill(0, sig)``) signals the caller's process group, which a
    PID namespace does not bound: the command stayed in the launcher's group and killed the
    launcher and the script around it (nothing exported, the workspace left). The command now has
    a group of its own: the script goes on, the run is exported with the step's status."""
    argv = [
        *box.launcher("k0"),
        "--",
        str(box.python),
        "-I",
        "-S",
        "-c",
        "import os, signal; os.kill(0, signal.SIGKILL)",
    ]
    script = '"$@"; echo "after $?"'
    env = {**os.environ, "PYTHONPATH": REPO, "TMPDIR": str(box.ws)}
    r = subprocess.run(  # a session of its own: on the old code the kill reached this group
        ["sh", "-c", script, "sh", *argv], capture_output=True, text=True, env=env, timeout=60,
        cwd="/", start_new_session=True,
    )
    assert "after 137" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    box.report(box.host / RUNS / "k0")
    assert list(box.ws.iterdir()) == []


STDIN_KINDS = r"""
import os, sys
st = os.fstat(0)
try:
    os.fchmod(0, st.st_mode & 0o7777)  # the mode it has: allowed, only the ctime would change
    print("changed")
except OSError:
    print("refused")
"""


@pytest.mark.parametrize("kind", ["kmsg", "fifo"])
def test_stdin_of_other_kinds_is_never_the_launchers_host_inode(box: Box, kind: str) -> None:
    """``< /dev/kmsg`` (a device the step's /dev lacks) kept the launcher's descriptor: a root
    step could make a raw disk 0666. Now the command is not started (126). ``< fifo`` (a named
    FIFO of the host's) is reopened in the view: a read-only inode."""
    if kind == "kmsg":
        if not os.access("/dev/kmsg", os.R_OK):
            pytest.skip(reason="/dev/kmsg is not readable here")
        with open("/dev/kmsg", "rb") as stdin:
            r, export, _ = box.run(STDIN_KINDS, stdin=stdin.fileno())
        assert r.returncode == 126 and "not in the step's /dev" in r.stderr, r.stderr[-2000:]
        return
    fifo = box.outside / "fifo"
    os.mkfifo(fifo, 0o666)
    if box.user == "unprivileged":
        os.chown(fifo, NOBODY, NOBODY)
    writer = subprocess.Popen(["sh", "-c", f"echo hello > {fifo}"])
    try:
        fd = os.open(fifo, os.O_RDONLY)
        try:
            r, export, _ = box.run(STDIN_KINDS, stdin=fd)
        finally:
            os.close(fd)
    finally:
        writer.wait(timeout=30)
    box.report(export)
    assert "refused" in r.stdout, (r.stdout, r.stderr[-2000:])


@pytest.mark.parametrize("target", ["logs", "."])
def test_a_step_that_makes_its_run_folder_read_only_is_still_reported(box: Box, target: str) -> None:
    """``chmod 555 $TV_RUN_DIR/logs`` (or the run folder): an unprivileged launcher -- the same user,
    without CAP_DAC_OVERRIDE -- could not write its record there: internal error, exit 125,
    nothing exported. It gives its own folders their write permission back, and says so."""
    code = (
        "import os, sys\n"
        f"os.chmod(os.path.join(os.environ['TV_RUN_DIR'], {target!r}), 0o555)\n"
        "print('bye', file=sys.stderr)\n"
        "raise SystemExit(3)\n"
    )
    r, export, _ = box.run(code)
    assert r.returncode == 3, r.stderr[-2000:]
    box.report(export)
    assert "made writable again" in r.stderr, r.stderr[-2000:]
    assert (export / "logs" / "step.stderr.log").read_text() == "bye\n"
