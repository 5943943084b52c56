"""Sandboxed Ray workers (sandbox.orchestrator.workers): code *inside* an actor is held like a step.

A real local Ray cluster (the session's ``ray_cluster``), real kernel layer, real exports. The
Python escape attempts of tests/escapes/attempts.py run as the body of an actor method; the host
must stay byte-identical and every attempt aimed at the host must see an error (enforce), or be
captured into the run folder (audit). Kernel-layer tests fail, not skip, with
TV_SANDBOX_REQUIRE_KERNEL=1.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "escapes"))
from attempts import ATTEMPTS, Attempt

from sandbox.errors import UsageError
from sandbox.orchestrator.workers import SandboxedRun, sandboxed_run
from sandbox.samples import make_host

from .test_pipeline import leftovers

ray = pytest.importorskip("ray")


def tree_snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind, content hash, mode, mtime, link target (never followed);
    tests/conftest.py's, which this folder's conftest hides from ``import conftest``."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = dirpath if name == "." else os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(p, root)] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                out[os.path.relpath(p, root)] = ("file", digest, st.st_mode, st.st_mtime_ns, st.st_nlink)
            else:
                out[os.path.relpath(p, root)] = ("other", st.st_mode, st.st_mtime_ns)
    return out


RUNS = "artifacts/summaries/runs"
REQUIRE = os.environ.get("TV_SANDBOX_REQUIRE_KERNEL") == "1"
KERNEL = "require" if REQUIRE else "auto"
LAKE = "data/lakehouse"

#: multiprocessing's spawn re-imports the parent's __main__ (Ray's default_worker.py): not an
#: attempt a task body makes; the escape suite covers it as a step.
PY_ATTEMPTS = [a for a in ATTEMPTS if a.kind == "py" and a.id != "mp-spawn"]


@ray.remote
class Body:
    """Runs code as the body of an actor method, in the worker the run's runtime_env started."""

    def __init__(self) -> None:
        self.home = os.getcwd()

    def where(self) -> dict[str, Any]:
        return {"cwd": os.getcwd(), "env": {k: v for k, v in os.environ.items() if k.startswith("TV_")}}

    def attempt(self, code: str) -> str:
        """``ok`` or the error the code saw (type: message)."""
        try:
            exec(compile(code, "<attempt>", "exec"), {"__name__": "__attempt__"})
            return "ok"
        except BaseException as e:  # SystemExit of a child check included
            return f"{type(e).__name__}: {e}"
        finally:
            os.chdir(self.home)
            run_dir = os.environ["TV_RUN_DIR"]
            for link in ("L", os.path.join(run_dir, "L")):  # attempts plant it; each starts clean
                if os.path.islink(link):
                    os.unlink(link)

    def crash(self) -> None:
        os._exit(3)


def _get(ref: Any) -> Any:
    """ray.get with a deadline: a lost actor makes the test fail, not hang the suite."""
    return ray.get(ref, timeout=120)


class Host:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = make_host(root / "host")
        (self.host / LAKE / "empty_dir").mkdir()
        self.outside = root / "outside"
        self.outside.mkdir()
        (self.outside / "file.txt").write_text("outside\n")
        self.home = Path.home()
        self.wsbase = root / "ws"
        self.wsbase.mkdir()

    def snapshot(self) -> dict[str, object]:
        snap = {
            k: v for k, v in tree_snapshot(self.host).items() if k != RUNS and not k.startswith(RUNS + "/")
        }
        return {
            "host": snap,
            "outside": tree_snapshot(self.outside),
            "home": sorted(p.name for p in self.home.glob("tvs_escape*")),
        }

    def code(self, a: Attempt) -> str:
        return a.code.format(
            lake=self.host / LAKE,
            lakefile=self.host / LAKE / "BINANCE_BTCUSDT_1d.csv",
            scan=self.host / "export" / "R1",
            host=self.host,
            outside=self.outside,
            home=self.home,
            py=sys.executable,
        )

    def run(self, run_id: str, **kw: Any) -> Any:
        kw.setdefault("kernel", KERNEL)
        return sandboxed_run(self.host, run_id, workspace_base=str(self.wsbase), **kw)

    def export(self, run_id: str) -> Path:
        return self.host / RUNS / run_id


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("workers"))
    yield h
    for p in h.home.glob("tvs_escape*"):  # never leave an escape behind
        p.unlink()


def _need_kernel(run: SandboxedRun) -> None:
    if not run.layers.kernel:
        if REQUIRE:
            pytest.fail("the kernel layer was not active in the Ray workers in CI")
        pytest.skip(reason="kernel layer unavailable here: native writes inside workers need it")


def _report(export: Path) -> dict[str, Any]:
    return json.loads((export / "sandbox_report.json").read_text())


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_escape_attempts_inside_an_actor(host: Host, mode: str) -> None:
    before = host.snapshot()
    seen: dict[str, str] = {}
    with host.run(f"esc-{mode}", mode=mode) as run:
        _need_kernel(run)
        body = Body.options(runtime_env=run.runtime_env).remote()
        for a in PY_ATTEMPTS:
            seen[a.id] = _get(body.attempt.remote(host.code(a)))
    assert host.snapshot() == before, "an attempt inside an actor changed the host"
    export = host.export(f"esc-{mode}")
    assert run.outcome is not None and run.outcome.status == "succeeded"
    assert (export / "manifest.json").is_file()
    wrong = []
    for a in PY_ATTEMPTS:
        expect = a.expect
        if mode == "audit":
            # in audit mode attempts on the workspace are captured (and change what later ones
            # of the same run see), so only those outside it must still fail
            expect = "error" if a.outside else "any"
        if expect == "error" and seen[a.id] == "ok":
            wrong.append(f"{a.id}: saw no error")
        elif expect.startswith("lands:"):
            if seen[a.id] != "ok":
                wrong.append(f"{a.id}: {seen[a.id]}")
            elif not (export / expect[len("lands:") :]).exists():
                wrong.append(f"{a.id}: {expect} not in the export")
    assert not wrong, "\n".join(wrong)
    if mode == "audit":
        assert (export / "audit" / LAKE).is_dir(), "audit mode captured nothing of the lakehouse"
    rep = _report(export)
    assert rep["ray"]["actors"][0]["class"] == "Body"
    assert rep["event_count"] > 0, "the guard of the worker logged no event"


@pytest.mark.kernel
def test_pyarrow_refused_relative_writes_exported_workers_share_the_run(host: Host) -> None:
    before = host.snapshot()
    with host.run("shared") as run:
        _need_kernel(run)
        a = Body.options(runtime_env=run.runtime_env).remote()
        b = Body.options(runtime_env=run.runtime_env).remote()
        refused = _get(
            a.attempt.remote(
                "import pandas as pd; pd.DataFrame({'a': [1]}).to_parquet('data/lakehouse/n.parquet')"
            )
        )
        native = _get(
            a.attempt.remote(
                "import pyarrow as pa, pyarrow.parquet as pq; "
                "pq.write_table(pa.table({'a': [1]}), 'data/lakehouse/m.parquet')"
            )
        )
        wrote = _get(
            a.attempt.remote(
                "import os, pandas as pd; os.makedirs('reports', exist_ok=True); "
                "pd.DataFrame({'a': [1]}).to_parquet('data/out.parquet'); open('reports/a.txt', 'w').write('A')"
            )
        )
        # another worker of the run reads it through its own view of the same run folder
        read = _get(b.attempt.remote("assert open('reports/a.txt').read() == 'A'"))
        where = _get(b.where.remote())
    assert host.snapshot() == before
    for seen in (refused, native):  # pyarrow's C++ write: the kernel's EROFS/EACCES, explained
        assert seen != "ok" and ("Read-only file system" in seen or "Permission denied" in seen), seen
    assert wrote == "ok" and read == "ok", (wrote, read)
    export = host.export("shared")
    assert (export / "data" / "out.parquet").is_file() and (export / "reports" / "a.txt").read_text() == "A"
    assert where["cwd"] == run.workspace.root
    assert where["env"]["TV_RUN_ID"] == "shared" and where["env"]["TV_SANDBOX_WORKER"].startswith("shared ")
    assert {"TV_RUN_DIR", "TV_PROFILE", "TV_SCAN_DIR"} <= set(where["env"])
    assert len(_report(export)["ray"]["actors"]) == 2
    assert not run.worker_pids(), "a worker of the run outlived it"


def test_what_workers_leave_in_logs_never_steers_the_close(host: Host) -> None:
    """The workers' run ends through the same code as a step's run: a link a worker's shell plants
    at the event log's name is moved aside, never written through."""
    victim = host.outside / "file.txt"
    with host.run("wlogs") as run:
        a = Body.options(runtime_env=run.runtime_env).remote()
        planted = _get(
            a.attempt.remote(
                "import subprocess; subprocess.run(['sh', '-c', 'rm -f $TV_RUN_DIR/logs/sandbox_events.jsonl; "
                f"ln -s {victim} $TV_RUN_DIR/logs/sandbox_events.jsonl'], check=True)"
            )
        )
    assert planted == "ok", planted
    assert victim.read_text() == "outside\n"
    export = host.export("wlogs")
    assert (export / "logs" / "sandbox_events.jsonl.from-step").is_symlink()
    assert any("kept as logs/sandbox_events.jsonl.from-step" in w for w in _report(export)["warnings"])


#: A worker's daemon out of the workers' process groups (a session of its own, re-parented, the
#: Python guard left behind with the environment) that rewrites the report once the launcher wrote
#: it, before the export's copy: the review's forgery, which the export then verified.
FORGER = r"""
import os, sys, time
if os.fork():
    os._exit(0)
open(os.path.join(sys.argv[2], f".forger-up-{os.getpid()}"), "w").close()  # the daemon is up
rep = os.path.join(sys.argv[2], "sandbox_report.json")
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        fd = os.open(rep, os.O_RDWR)
    except OSError:
        continue
    try:
        data = os.pread(fd, 1 << 20, 0)
        if b'"ray"' in data and b"FORGED" not in data:
            new = data.replace(b'"status": "succeeded"', b'"status": "FORGED"')
            os.pwrite(fd, new, 0)
            os.ftruncate(fd, len(new))
    finally:
        os.close(fd)
"""


def _daemons_up(run_storage: str) -> int:
    """How many FORGER daemons are up: each one's forked child says so with a file of its own
    (counting processes by their command line raced with each daemon's fork and exit)."""
    return sum(1 for name in os.listdir(run_storage) if name.startswith(".forger-up-"))


@pytest.mark.kernel
def test_a_workers_daemon_cannot_outlive_the_run_nor_forge_its_report(host: Host) -> None:
    token = f"tvsb-forger-{uuid.uuid4().hex}"
    with host.run("forged") as run:
        _need_kernel(run)
        body = Body.options(runtime_env=run.runtime_env).remote()
        code = (
            "import subprocess, sys\n"
            f"for pre in ([], ['unshare', '-U', '--']):\n"
            f"    subprocess.Popen([*pre, sys.executable, '-c', {FORGER!r}, {token!r}, {run.run_storage!r}],"
            " start_new_session=True, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
            " stderr=subprocess.DEVNULL)\n"
        )
        assert _get(body.attempt.remote(code)) == "ok"
        deadline = time.monotonic() + 30
        while _daemons_up(run.run_storage) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _daemons_up(run.run_storage) == 2, "the daemons did not start"
    left = leftovers(token)
    for p in left:
        p.kill()
    export = host.export("forged")
    assert _report(export)["status"] == "succeeded"
    assert left == [], "a worker's daemon outlived its run"


@pytest.mark.kernel
def test_a_worker_cannot_signal_the_driver_the_raylet_or_another_process(host: Host) -> None:
    """A sandboxed worker has no PID namespace (the raylet needs its pid): it could SIGTERM any
    process of its user -- the driver, the raylet, another run. Landlock's signal scoping (ABI 6,
    Linux 6.12+) limits its signals to its own processes and their children. And it holds no
    capability, as a step does (a root worker held all but CAP_SYS_ADMIN in the run's user
    namespace)."""
    from sandbox.kernel import landlock

    if landlock.abi_version() < 6:
        if REQUIRE:
            pytest.fail("Landlock ABI 6 (signal scoping) unavailable in CI")
        pytest.skip(reason="Landlock ABI 6 (Linux 6.12+) is unavailable here")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        with host.run("signals") as run:
            _need_kernel(run)
            body = Body.options(runtime_env=run.runtime_env).remote()
            code = (
                "import os, subprocess, sys\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                "child.kill(); child.wait()  # its own child: still its to signal\n"
                "caps = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines() if line.startswith('Cap'))\n"
                "assert all(int(v, 16) == 0 for k, v in caps.items() if k != 'CapBnd'), caps\n"
                "assert int(caps['CapBnd'], 16) == 0, caps\n"
                "refused = []\n"
                f"for pid in ({victim.pid}, {os.getpid()}, os.getppid()):\n"
                "    try:\n"
                "        os.kill(pid, 0)\n"
                "    except PermissionError:\n"
                "        refused.append(pid)\n"
                f"os.kill({victim.pid}, 15) if len(refused) < 3 else None\n"
                "assert len(refused) == 3, refused\n"
            )
            assert _get(body.attempt.remote(code)) == "ok"
        assert victim.poll() is None, "a worker signalled a process outside its run"
    finally:
        victim.kill()
        victim.wait()


def _in_namespace_numbered(ino: int, tries: int = 400) -> subprocess.Popen[bytes] | None:
    """A process of the machine, not of any run, in a new mount namespace that the kernel numbered
    ``ino`` (it hands a freed namespace's number to the next one made): None when none was."""
    for _ in range(tries):
        p = subprocess.Popen(["unshare", "-m", "--", "sleep", "60"])
        for _ in range(200):  # until unshare has made the namespace
            try:
                if os.stat(f"/proc/{p.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        if os.stat(f"/proc/{p.pid}/ns/mnt").st_ino == ino:
            return p
        p.kill()
        p.wait()
        time.sleep(0.005)
    return None


@pytest.mark.kernel
def test_the_close_never_kills_a_process_whose_namespace_took_the_runs_number(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close finds the run's leftovers by its namespaces' numbers (st_dev, st_ino). Once the
    holder and the workers are gone, the kernel frees the namespace and gives its number to the
    next one made on the machine -- another run's holder or step, a container: that process
    must not be SIGKILLed as the run's."""
    from sandbox.orchestrator import workers

    if os.geteuid() != 0:
        pytest.skip(reason="unshare -m needs root here")
    real = workers._end_namespace
    bystanders: list[subprocess.Popen[bytes]] = []

    def end_namespace(mntns: tuple[int, int], userns: tuple[int, int] | None, timeout_s: float = 10.0) -> None:
        p = _in_namespace_numbered(mntns[1])
        if p is not None:
            bystanders.append(p)
        real(mntns, userns, timeout_s=timeout_s)

    monkeypatch.setattr(workers, "_end_namespace", end_namespace)
    try:
        with host.run("numbered") as run:
            _need_kernel(run)
            if run._kernel.kind != "namespace":
                pytest.skip(reason="no mount namespace for the workers here")
            body = Body.options(runtime_env=run.runtime_env).remote()
            assert _get(body.attempt.remote("open('x.txt', 'w').write('x')")) == "ok"
        for p in bystanders:
            assert p.poll() is None, "the close SIGKILLed a process of the machine, not of its run"
    finally:
        for p in bystanders:
            p.kill()
            p.wait()
    assert (host.export("numbered") / "x.txt").read_text() == "x"


@pytest.mark.kernel
def test_two_concurrent_runs_do_not_mix(host: Host) -> None:
    with host.run("mixA") as ra, host.run("mixB") as rb:
        _need_kernel(ra)
        a = Body.options(**ra.options).remote()  # runtime_env + a hard affinity to this node
        b = Body.options(runtime_env=rb.runtime_env).remote()
        assert _get(a.attempt.remote("open('same.txt', 'w').write('A')")) == "ok"
        assert _get(b.attempt.remote("open('same.txt', 'w').write('B')")) == "ok"
        # each sees only its own run: B's run folder is out of A's reach, and the other way round
        into_b = _get(a.attempt.remote(f"open({rb.run_storage + '/x.txt'!r}, 'w')"))
        into_a = _get(b.attempt.remote(f"open({ra.run_storage + '/x.txt'!r}, 'w')"))
    assert into_b != "ok" and into_a != "ok", (into_b, into_a)
    assert (host.export("mixA") / "same.txt").read_text() == "A"
    assert (host.export("mixB") / "same.txt").read_text() == "B"
    assert not (host.export("mixA") / "x.txt").exists() and not (host.export("mixB") / "x.txt").exists()


def test_an_exception_or_ctrl_c_in_the_body_exports_a_failed_run(host: Host) -> None:
    with pytest.raises(ZeroDivisionError), host.run("boom") as run:
        1 / 0  # noqa: B018
    assert run.outcome is not None and run.outcome.status == "failed"
    with pytest.raises(KeyboardInterrupt), host.run("ctrlc") as run2:
        raise KeyboardInterrupt
    assert run2.outcome is not None and run2.outcome.status == "interrupted"
    for rid, status in (("boom", "failed"), ("ctrlc", "interrupted")):
        assert json.loads((host.export(rid) / "manifest.json").read_text())["status"] == status


def test_guard_alone_when_the_kernel_layer_is_off(host: Host) -> None:
    before = host.snapshot()
    with host.run("guard", kernel="off") as run:
        assert not run.layers.kernel and run.runtime_env["env_vars"]["TV_SANDBOX_OVERLAY"] == "0"
        body = Body.options(runtime_env=run.runtime_env).remote()
        seen = _get(body.attempt.remote("open('data/lakehouse/g.csv', 'w')"))
        ok = _get(body.attempt.remote("open('guarded.txt', 'w').write('g')"))
        # beside the run folder (ws/<runs> links to the runs view without the overlay): redirected
        # into the run folder as in a step, not refused as outside every writable root
        beside = _get(body.attempt.remote(f"open('{RUNS}/newer.txt', 'w').write('n')"))
    assert "AccessDenied" in seen and "lakehouse-read-only" in seen and ok == "ok", (seen, ok)
    assert beside == "ok", beside
    assert host.snapshot() == before
    assert (host.export("guard") / "guarded.txt").read_text() == "g"
    assert (host.export("guard") / RUNS / "newer.txt").read_text() == "n"
    assert not (host.host / RUNS / "newer.txt").exists()


@pytest.mark.kernel
def test_a_run_that_fails_to_open_leaves_no_holder_nor_namespace(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the holder started (here: the run's state file cannot be written) ends
    the holder, closes its pipe and the descriptors of its namespaces, and removes the workspace:
    a run that never opened keeps nothing alive."""
    from sandbox.orchestrator import workers

    opened: list[Any] = []
    real_open_kernel = workers._open_kernel

    def open_kernel(*a: Any, **kw: Any) -> Any:
        opened.append(real_open_kernel(*a, **kw))
        return opened[-1]

    def write_state(path: str, state: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    def fds() -> set[str]:
        out = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                out.add(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}")
        return out

    monkeypatch.setattr(workers, "_open_kernel", open_kernel)
    monkeypatch.setattr(workers, "write_state", write_state)
    before, workspaces = fds(), sorted(os.listdir(host.wsbase))
    with pytest.raises(OSError, match="No space left"), host.run("unopened"):
        pass
    assert len(opened) == 1
    k = opened[0]
    if k.kind != "namespace":
        if REQUIRE:
            pytest.fail("no mount namespace for the workers in CI")
        pytest.skip(reason="no mount namespace for the workers here")
    with pytest.raises(ProcessLookupError):
        os.kill(k.holder.pid, 0)  # reaped, not a zombie either
    assert k.namespace_fds == [] and k.holder_stdin is None
    leaked = fds() - before
    assert not leaked, leaked
    assert sorted(os.listdir(host.wsbase)) == workspaces
    assert not host.export("unopened").exists()


def test_bad_inputs_write_nothing(host: Host) -> None:
    before = sorted(os.listdir(host.wsbase))
    with pytest.raises(UsageError, match="invalid RUN_ID"), host.run("no/pe"):
        pass
    with pytest.raises(UsageError, match="unknown mode"), host.run("m", mode="loose"):
        pass
    assert sorted(os.listdir(host.wsbase)) == before


def test_a_crashed_worker_leaves_an_exported_failed_run(host: Host) -> None:
    # Last on purpose: on a 2-CPU cluster (ray.init(num_cpus=2), before the shared fixture), the
    # next new actor after this test -- with several runs before it -- once never got its ALIVE
    # notification on the driver although the GCS had created it. Not reproduced with the shared
    # fixture's cluster, in either order.
    with host.run("crash") as run:
        body = Body.options(runtime_env=run.runtime_env).remote()
        assert _get(body.attempt.remote("open('partial.txt', 'w').write('half')")) == "ok"
        with pytest.raises(ray.exceptions.RayActorError):
            _get(body.crash.remote())
    assert run.outcome is not None and run.outcome.status == "failed"
    export = host.export("crash")
    assert json.loads((export / "manifest.json").read_text())["status"] == "failed"
    assert (export / "partial.txt").read_text() == "half"
    actors = _report(export)["ray"]["actors"]
    assert actors[0]["crashed"] and "WORKER_DIED" in actors[0]["death"]


def test_launcher_refuses_without_its_run_and_stays_cheap(tmp_path: Path) -> None:
    """`tv-sandbox worker` after its run closed (or on another node): one line, no interpreter
    started; and its path to `exec` imports neither ray nor the modules of the start-up budget."""
    gone = tmp_path / "worker_state.marshal"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox",
            "worker",
            "--run-state",
            str(gone),
            "--",
            sys.executable,
            "-c",
            "print('ran')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "ran" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is gone" in lines[0], r.stderr
    code = (
        "import sys; before = set(sys.modules); import sandbox.cli, sandbox.worker_launch, sandbox.kernel.landlock; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    heavy = {
        "ray",
        "enum",
        "re",
        "json",
        "typing",
        "dataclasses",
        "tomllib",
        "hashlib",
        "pathlib",
        "argparse",
    }
    assert not loaded & heavy, sorted(loaded & heavy)


@pytest.mark.parametrize("kind", ["missing-keys", "wrong-types", "landlock-not-paths", "fifo", "dev-zero"])
def test_a_run_state_not_made_by_a_run_is_one_line(tmp_path: Path, kind: str) -> None:
    """`tv-sandbox worker` with a run state made by hand: one line (125), no interpreter started --
    missing keys or wrong types were an internal error (KeyError, TypeError), and /dev/zero was
    read without end."""
    import marshal

    from sandbox.worker_launch import STATE_VERSION

    state = tmp_path / "worker_state.marshal"
    good = {
        "version": STATE_VERSION,
        "run_id": "R",
        "kernel": "off",
        "landlock": [],
        "landlock_required": False,
        "holder_pid": 0,
        "holder_start": None,
        "userns": False,
        "cwd": str(tmp_path),
        "workers_dir": str(tmp_path),
    }
    if kind == "missing-keys":
        state.write_bytes(marshal.dumps({"version": STATE_VERSION, "kernel": "off"}))
    elif kind == "wrong-types":
        state.write_bytes(marshal.dumps({**good, "holder_pid": "1", "cwd": 3}))
    elif kind == "landlock-not-paths":
        state.write_bytes(marshal.dumps({**good, "landlock": [1, None]}))
    elif kind == "fifo":
        os.mkfifo(state)
    path = "/dev/zero" if kind == "dev-zero" else str(state)
    argv = ["worker", "--run-state", path, "--", sys.executable, "-c", "print('ran')"]
    r = subprocess.run([sys.executable, "-m", "sandbox", *argv], capture_output=True, text=True, timeout=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 125 and "ran" not in r.stdout and len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert "run state" in lines[0], r.stderr


def test_the_readme_ray_example_runs_as_written(ray_cluster: str, tmp_path: Path) -> None:
    """README "Ray": the example, unchanged, attached to the session's cluster (``RAY_ADDRESS``:
    its ``ray.init()`` joins it instead of starting a second one)."""

    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("## Ray") :]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in the README's Ray section"
    env = {**os.environ, "TMPDIR": str(tmp_path), "RAY_ADDRESS": ray_cluster}
    r = subprocess.run(
        [sys.executable, "-c", m.group(1)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    status, dest = r.stdout.split()[-2:]
    assert status == "succeeded" and (Path(dest) / "data" / "out.parquet").is_file(), r.stdout
