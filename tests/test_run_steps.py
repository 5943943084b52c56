"""A run of several steps (sandbox.run.Run): one workspace and run folder, one record per step,
timeouts and cancels that end a step's whole process tree, interrupts, exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import tree_snapshot

from sandbox.policy import Policy
from sandbox.run import Run, RunClosed, StepSpec
from sandbox.runner import Prepared, RunRequest, preflight
from sandbox.samples import make_host

PY = sys.executable
RUNS = "artifacts/summaries/runs"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host")


def lake(host: Path) -> dict[str, tuple[object, ...]]:
    return tree_snapshot(host / "data" / "lakehouse")


def _open(host: Path, run_id: str, **kw: object) -> Run:
    return Run.open(preflight(RunRequest(host=str(host), run_id=run_id, argv=[], **kw)), echo=False)  # type: ignore[arg-type]


def _marked(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_steps_share_the_workspace_and_each_has_its_record(host: Path) -> None:
    before = lake(host)
    with _open(host, "multi") as run:
        a = run.step(StepSpec([PY, "-c", "open('data/one.txt', 'w').write('1')"], name="write"))
        b = run.step(
            StepSpec(
                "cat data/one.txt > reports/two.txt && echo done",  # a shell step reads step 1's output
                name="read",
            )
        )
        c = run.step(StepSpec([PY, "-c", "open('data/lakehouse/x.csv', 'w')"], name="deny"))
        out = run.close()
    assert (a.exit_code, b.exit_code) == (0, 0) and c.exit_code == 1
    assert out.status == "failed" and out.exit_code == 1
    dest = host / RUNS / "multi"
    assert (dest / "reports" / "two.txt").read_text() == "1"
    assert (dest / "logs" / "read.stdout.log").read_text() == "done\n"
    assert "data/lakehouse/x.csv" in (dest / "logs" / "deny.stderr.log").read_text()
    steps = json.loads((dest / "sandbox_report.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["write", "read", "deny"]
    assert [s["denied"] for s in steps] == [0, 0, 1]  # each step counts its own events
    assert all(s["cpu_s"] > 0 and s["peak_rss_bytes"] > 0 and s["cut"] is None for s in steps)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert lake(host) == before


def test_peak_memory_is_the_whole_trees(host: Path) -> None:
    """Three children holding 40 MiB each at once: the step's peak is their sum (sampled from
    /proc while it runs), not the largest single process's ``ru_maxrss``."""
    hold = "import time; b = bytearray(40 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.8)"
    script = f"for i in 1 2 3; do {PY} -c \"{hold}\" & done; wait"
    with _open(host, "rss") as run:
        rec = run.step(StepSpec(script, name="three"))
        run.close()
    assert rec.exit_code == 0
    assert rec.peak_rss_bytes >= 3 * (40 << 20), rec.peak_rss_bytes


def test_a_timeout_ends_the_steps_whole_process_tree(host: Path) -> None:
    marker = f"{os.getpid()}.{time.monotonic_ns() % 1000}"
    t0 = time.monotonic()
    with _open(host, "slow") as run:
        # a grandchild that would sleep on, and keep writing, after its parent
        rec = run.step(
            StepSpec(f"sleep 3{marker} & (sleep 4{marker}; echo late > data/late.txt) & wait", timeout_s=1.0)
        )
        out = run.close()
    assert time.monotonic() - t0 < 10
    assert rec.cut == "timeout" and "timeout of 1 s" in rec.cut_reason and rec.exit_code != 0
    assert out.status == "failed" and _marked(marker) == []  # no orphan keeps running after the export
    assert not (host / RUNS / "slow" / "data" / "late.txt").exists()


def test_a_slow_start_of_the_run_delays_neither_the_timeout_nor_the_steps_output(
    host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the launcher does while its first step runs (the module images built after an upgrade,
    the day's prune of the cache: here 2 s) runs beside the step: its timeout counts from its start
    and its output is drained meanwhile (a pipe holds 64 kB), not after."""
    import sandbox.finish

    real = sandbox.finish.while_first_step

    def slow(prep: Prepared, policy: Policy) -> bytes:
        time.sleep(2.0)
        return real(prep, policy)

    monkeypatch.setattr(sandbox.finish, "while_first_step", slow)
    with _open(host, "slowstart") as run:
        noisy = "import sys; sys.stdout.write('x' * 200_000); sys.stdout.flush(); open('data/done', 'w')"
        t0 = time.monotonic()
        rec = run.step(StepSpec([PY, "-c", f"{noisy}; import time; time.sleep(30)"], timeout_s=0.5))
        assert rec.cut == "timeout" and time.monotonic() - t0 < 1.8, (rec, time.monotonic() - t0)
    out = host / RUNS / "slowstart"
    assert (out / "data" / "done").exists()  # it wrote past its 200 kB of output before the timeout
    assert json.loads((out / "config" / "policy.json").read_text())["spec"]  # the record, made meanwhile


def test_the_first_steps_background_work_runs_once_a_run(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first step whose command is not found launches nothing: the next step launches again,
    but what the launcher does beside its first step (module images, the cache's prune) starts
    once, and the run's close waits for it."""
    import sandbox.finish

    real, calls, done = sandbox.finish.while_first_step, [], []

    def counted(prep: Prepared, policy: Policy) -> bytes:
        calls.append(1)
        time.sleep(0.3)
        out = real(prep, policy)
        done.append(1)
        return out

    monkeypatch.setattr(sandbox.finish, "while_first_step", counted)
    with _open(host, "once") as run:
        assert run.step(StepSpec(["no-such-command-tv"])).exit_code == 127
        assert run.step(StepSpec(["true"])).exit_code == 0
    assert calls == [1] and done == [1]


def test_cancel_from_another_thread_ends_the_step_and_refuses_the_next(host: Path) -> None:
    marker = f"9{os.getpid()}"
    with _open(host, "cancel") as run:
        threading.Timer(0.5, run.cancel, args=("the pipeline was cancelled",)).start()
        rec = run.step(StepSpec(f"sleep 5{marker} & wait", name="long"))
        with pytest.raises(RunClosed, match="cancelled"):
            run.step(StepSpec(["true"], name="next"))
        out = run.close()
    assert rec.cut == "cancelled" and out.status == "cancelled" and _marked(marker) == []
    assert json.loads((host / RUNS / "cancel" / "manifest.json").read_text())["status"] == "cancelled"


def test_a_step_cannot_override_the_runs_variables(host: Path) -> None:
    from sandbox.errors import UsageError

    with _open(host, "env") as run:
        with pytest.raises(UsageError, match="TV_RUN_DIR"):
            run.step(StepSpec(["true"], env={"TV_RUN_DIR": "/tmp"}))
        rec = run.step(
            StepSpec([PY, "-c", "import os; assert os.environ['EXTRA'] == '1'"], env={"EXTRA": "1"})
        )
        run.close()
    assert rec.exit_code == 0


def test_a_missing_command_is_a_failed_step_with_status_127(host: Path) -> None:
    with _open(host, "nf") as run:
        rec = run.step(StepSpec(["no-such-command-tvs"], name="missing"))
        out = run.close()
    assert rec.exit_code == 127 and out.exit_code == 127 and out.status == "failed"
    assert "no-such-command-tvs" in (host / RUNS / "nf" / "logs" / "missing.stderr.log").read_text()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_ends_its_step_exports_and_exits_128_plus_n(
    host: Path, tmp_path: Path, sig: int, code: int
) -> None:
    marker = f"7{sig}{os.getpid()}"
    (tmp_path / "ws").mkdir()
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "sandbox",
            "run",
            "--root",
            str(host),
            "--run-id",
            "intr",
            "--workspace-dir",
            str(tmp_path / "ws"),
            "--",
            "sh",
            "-c",
            f"echo started >&2; sleep 6{marker} & wait",
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert proc.stderr is not None
    assert proc.stderr.readline() == b"started\n"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # show where the launcher hangs (faulthandler's dump)
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the launcher did not end after {sig}: {err.decode()[-6000:]}")
    text = err.decode()
    assert proc.returncode == code, text
    assert "Traceback" not in text and "Exception ignored" not in text
    assert "interrupted" in text.splitlines()[-1]
    manifest = json.loads((host / RUNS / "intr" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert list((tmp_path / "ws").iterdir()) == [] and _marked(marker) == []


@pytest.mark.kernel("user_namespaces", "mount_namespace")
def test_an_export_that_cannot_fit_is_refused_before_copying(host: Path, kernel_support: object) -> None:
    """A real, tiny filesystem at the runs folder (a tmpfs in a private mount namespace): the run
    needs more than it has, so the export stops with one line and exit status of an export error."""
    (host / RUNS).mkdir(parents=True, exist_ok=True)
    script = (
        "mount -t tmpfs -o size=256k tvs-small " + str(host / RUNS) + " && "
        f"{PY} -m sandbox run --root {host} --run-id big --kernel off -- "
        f"{PY} -c \"open('data/big.bin', 'wb').write(b'x' * 2_000_000)\"; echo status=$?"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert "needs 1.9 MiB" in done.stderr and "free space there" in done.stderr, done.stderr
    status = int(done.stdout.strip().rsplit("=", 1)[1])
    from sandbox.errors import ExportError

    assert status == ExportError.exit_status


def test_what_a_step_leaves_in_logs_never_steers_the_launcher(host: Path, tmp_path: Path) -> None:
    """Links and FIFOs a step plants at the names the launcher opens in logs/ (its next step's
    stdout/stderr logs, the event log, the shim's raw log), and a logs/ folder swapped for a link:
    moved aside, never written through, never blocking."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("intact")
    before = lake(host)
    csv = host / "data" / "lakehouse" / "BINANCE_BTCUSDT_1d.csv"
    plant = (
        f"ln -s {outside}/victim.txt $TV_RUN_DIR/logs/two.stderr.log; ln -s {csv} $TV_RUN_DIR/logs/two.stdout.log; "
        f"rm -f $TV_RUN_DIR/logs/sandbox_events.jsonl; ln -s {outside}/victim.txt $TV_RUN_DIR/logs/sandbox_events.jsonl; "
        "mkfifo $TV_RUN_DIR/logs/sandbox_native.jsonl"
    )
    with _open(host, "steer") as run:
        run.step(StepSpec(plant, name="one"))
        two = run.step(StepSpec("echo OUT; echo ERR >&2; echo x > data/lakehouse/new.csv", name="two"))
        run.step(StepSpec(f"mv $TV_RUN_DIR/logs $TV_RUN_DIR/logs.old && ln -s {outside} $TV_RUN_DIR/logs", name="three"))
        run.step(StepSpec("echo OUT4; echo ERR4 >&2", name="four"))
        out = run.close()
    assert (outside / "victim.txt").read_text() == "intact" and sorted(os.listdir(outside)) == ["victim.txt"]
    assert lake(host) == before
    dest = host / RUNS / "steer"
    assert (dest / "logs.old" / "two.stdout.log").read_text() == "OUT\n"  # step three moved logs/
    assert (dest / "logs" / "four.stdout.log").read_text() == "OUT4\n"
    assert two.denied >= 1  # the shell's refused lakehouse write was still explained and counted
    assert any("kept as logs/two.stderr.log.from-step" in w for w in out.report["warnings"])
    assert any("logs.from-step" in w for w in out.report["warnings"])


def test_a_fifo_at_the_event_logs_name_does_not_hang_the_launcher(host: Path) -> None:
    r = subprocess.run(
        [PY, "-m", "sandbox", "run", "--root", str(host), "--run-id", "fifo", "--",
         "sh", "-c", "rm -f $TV_RUN_DIR/logs/sandbox_events.jsonl; mkfifo $TV_RUN_DIR/logs/sandbox_events.jsonl"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "sandbox_events.jsonl.from-step" in r.stderr


def test_an_interrupt_while_the_ended_step_is_recorded_still_exports_the_run(
    host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal between the step's end and its record found a run with no record of a step that
    ran: the run was discarded, not exported. Now it waits for the record, then ends the run as
    an interrupt does: exported, marked interrupted, the step's record kept."""
    from sandbox.run import Interrupted, StepSpec, install_interrupt_handlers

    after = Run._after_step

    def interrupted_meanwhile(self: Run) -> None:
        signal.raise_signal(signal.SIGTERM)  # as if sent now: held until the record is kept
        after(self)

    monkeypatch.setattr(Run, "_after_step", interrupted_meanwhile)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_interrupt_handlers()
    try:
        with pytest.raises(Interrupted), _open(host, "late") as run:
            run.step(StepSpec(argv=["sh", "-c", "echo done > data/x.txt"], name="only"))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    export = host / RUNS / "late"
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", manifest
    assert (export / "data" / "x.txt").read_text() == "done\n"
    report = json.loads((export / "sandbox_report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["only"]
