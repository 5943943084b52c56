"""Start-up cost of a sandboxed step: `tv-sandbox run -- python -c pass` minus bare `python -c pass`.

Measured side by side (interleaved), with the kernel layer (auto) and without it (--kernel off);
the whole run is counted: preflight, workspace, launch (namespace, overlay, Landlock), the guard's
bootstrap in the child, the report and the atomic export. Goal: <= 50 ms. With --phases, one
sandboxed run prints where the time goes (TV_SANDBOX_TIMINGS=1).

Also measured, in this process: the cost of the step's PID namespace (the init process, its fresh
/proc, the private /dev/shm) -- ``spawn(["true"])`` under the runner's full plan, with and without
them, interleaved -- and the same for its network namespace (``lo`` up included). The whole
launch is also run with a policy of ``[kernel] network = "host"`` (no network namespace, Ray's
folders not hidden), side by side with the default.

As root, the same is measured with the launcher run by an unprivileged user (``setpriv`` to
nobody): its user namespace maps only its own id, and no mapper is needed.

With --baseline DIR, another source tree of the package (e.g. ``git worktree add DIR <commit>``)
runs the same kernel-on step in the same rounds, through a script shaped like the console script:
its cost over bare and ours over it, paired round by round. This VM's speed drifts (bare 12-22 ms),
so a start-up measured on another day is no baseline; the same rounds are.

Usage: python bench/bench_start.py [--runs 20] [--phases] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, line, median, paired

from sandbox.samples import make_host


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--phases", action="store_true")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        default=None,
        help="also run the kernel-on step with the sandbox package of DIR, a source tree of another "
        "commit (`git worktree add DIR <commit>`; compiled here first), in the same rounds",
    )
    args = ap.parse_args()
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "sandbox", "cli.py")):
        ap.error(f"--baseline {args.baseline}: no sandbox/cli.py there; pass a source tree of the package")
    tmp = Path(tempfile.mkdtemp(prefix="tvs-bench-start-"))
    try:
        host = make_host(tmp / "host")
        py = sys.executable
        counter = iter(range(10**6))

        # The console script, as the goal is worded (``python -m sandbox`` adds runpy's imports).
        script = os.path.join(os.path.dirname(py), "tv-sandbox")
        launcher = [script] if os.access(script, os.X_OK) else [py, "-m", "sandbox"]

        host_net = tmp / "host-network.toml"
        policies = Path(__file__).parents[1] / "policies"
        host_net.write_text((policies / "production.toml").read_text() + '\n[kernel]\nnetwork = "host"\n')

        def sandboxed(kernel: str, *options: str) -> list[str]:
            return [
                *launcher,
                "run",
                "--root",
                str(host),
                "--run-id",
                f"b{next(counter)}",
                "--kernel",
                kernel,
                *options,
                "--",
                py,
                "-c",
                "pass",
            ]

        work: dict[str, list[tuple[int, float]]] = {"bare": [], "kernel": []}

        def bare(r: int) -> None:
            with counted(work["bare"]):
                subprocess.run([py, "-c", "pass"], check=True)

        def kernel_auto(r: int) -> None:
            with counted(work["kernel"]):
                subprocess.run(sandboxed("auto"), check=True, stderr=subprocess.DEVNULL)

        def kernel_off(r: int) -> None:
            subprocess.run(sandboxed("off"), check=True, stderr=subprocess.DEVNULL)

        def kernel_host_net(r: int) -> None:
            subprocess.run(sandboxed("auto", "--policy", str(host_net)), check=True, stderr=subprocess.DEVNULL)

        variants: dict[str, Callable[[int], None]] = {
            "bare": bare,
            "kernel": kernel_auto,
            "host_net": kernel_host_net,
            "guard_only": kernel_off,
        }
        if args.baseline:
            base_launcher = baseline_launcher(tmp, Path(args.baseline).resolve())

            def kernel_baseline(r: int) -> None:
                argv = sandboxed("auto")
                subprocess.run([*base_launcher, *argv[len(launcher) :]], check=True, stderr=subprocess.DEVNULL)

            variants["baseline"] = kernel_baseline
        t = interleaved(args.runs, **variants)
        b = median(t["bare"])
        d_k = paired(t["kernel"], t["bare"]) * 1000
        d_h = paired(t["host_net"], t["bare"]) * 1000
        d_g = paired(t["guard_only"], t["bare"]) * 1000
        print(f"# {args.runs} runs each, interleaved; bare `python -c pass` median {b * 1000:.1f} ms")
        print("# each 'minus bare': the median of the differences of the rounds (bench/_common.py: paired)")
        print(
            "#   medians, ms: "
            + ", ".join(f"{k} {median(v) * 1000:.1f}" for k, v in t.items())
            + f" (kernel on minus bare, by medians: {(median(t['kernel']) - b) * 1000:.1f})"
        )
        print(
            "#   ours / bare, the same rounds: "
            f"{statistics.median(k / b_ for k, b_ in zip(t['kernel'], t['bare'], strict=True)):.2f} "
            "(kernel on): what scales with this machine's speed, the goal's 50 ms does not"
        )
        print(f"# launcher: {' '.join(launcher)}")
        print("#   " + by_speed(t["kernel"], t["bare"]))
        (f_k, c_k), (f_b, c_b) = (
            (median([float(f) for f, _ in work[k]]), median([c for _, c in work[k]])) for k in ("kernel", "bare")
        )
        print(
            f"#   work per run, kernel on: {f_k:.0f} page faults (bare {f_b:.0f}), {c_k * 1000:.1f} ms of CPU "
            f"on all cores (bare {c_b * 1000:.1f}): counts of every process of the run, the step's included"
        )
        print(line("tv-sandbox run (kernel layer on) minus bare, ms", d_k, "<= 50", d_k <= 50))
        print(line('tv-sandbox run, kernel on, network = "host" minus bare, ms', d_h, "<= 50", d_h <= 50))
        print(line("tv-sandbox run --kernel off minus bare, ms", d_g, "<= 50", d_g <= 50))
        if args.baseline:
            d_b = paired(t["baseline"], t["bare"]) * 1000
            d_kb = paired(t["kernel"], t["baseline"]) * 1000
            print(
                f"# baseline {args.baseline}, kernel on, the same rounds: {d_b:.1f} ms over bare; "
                f"this tree minus the baseline: {d_kb:+.1f} ms"
            )
        with_ns, without = pid_namespace_cost(tmp, args.runs)
        print(
            line(
                "spawn(true) full plan, PID namespace + private /dev/shm minus without, ms",
                (with_ns - without) * 1000,
                "<= 5",
                (with_ns - without) * 1000 <= 5,
            )
        )
        print(f"#   spawn(true) full plan: {with_ns * 1000:.1f} ms with, {without * 1000:.1f} ms without")
        with_net, without_net = pid_namespace_cost(tmp, args.runs, what="network_namespace")
        print(
            line(
                "spawn(true) full plan, network namespace + lo up minus without, ms",
                (with_net - without_net) * 1000,
                "<= 5",
                (with_net - without_net) * 1000 <= 5,
            )
        )
        print(f"#   spawn(true) full plan: {with_net * 1000:.1f} ms with, {without_net * 1000:.1f} ms without")
        unpriv = unprivileged_cost(tmp, args.runs)
        if unpriv is None:
            print("# as an unprivileged user: not measured (needs root to drop to, setpriv, user namespaces)")
        else:
            d_u, b_u, py_u = unpriv
            print(line("tv-sandbox run as an unprivileged user minus bare, ms", d_u, "<= 50", d_u <= 50))
            print(f"#   setpriv --reuid=65534 {py_u}: bare median {b_u:.1f} ms; its user namespace maps its own id")
        if args.phases:
            env = dict(os.environ, TV_SANDBOX_TIMINGS="1")
            r = subprocess.run(sandboxed("auto"), env=env, capture_output=True, text=True)
            print("# phases of one run (kernel on):")
            print("\n".join("  " + ln for ln in r.stderr.splitlines() if "timing" in ln))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


NOBODY = 65534


def baseline_launcher(tmp: Path, tree: Path) -> list[str]:
    """The launcher of the package in ``tree``, run as the console script runs ours: a script
    file of the venv's interpreter that imports ``sandbox.cli`` (``entry``, or ``main`` in trees
    older than it) with ``tree`` first on ``sys.path``. The tree is compiled first (as ``make
    bytecode`` compiles ours): a tree without ``.pyc`` files would pay its compile on every run."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "sandbox")], check=True)
    script = tmp / "baseline-tv-sandbox"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        "import sandbox.cli as cli\n"
        "sys.exit((getattr(cli, 'entry', None) or cli.main)())\n"
    )
    script.chmod(0o755)
    return [str(script)]


def by_speed(ours: list[float], bare: list[float]) -> str:
    """The paired cost over bare in the rounds whose bare start was the faster half, and in the
    slower half: this VM's speed drifts by the second (bare 12-22 ms), and the cost over bare grows
    with it (~3.5x bare), so one median mixes both."""
    rounds = sorted(zip(bare, ours, strict=True))
    half = len(rounds) // 2
    parts = []
    for name, part in (("faster", rounds[:half]), ("slower", rounds[half:])):
        if part:
            b = median([x for x, _ in part]) * 1000
            d = paired([y for _, y in part], [x for x, _ in part]) * 1000
            parts.append(f"the {name} half of the rounds (bare {b:.1f} ms): {d:.1f} ms over bare")
    return "kernel on, " + "; ".join(parts)


@contextlib.contextmanager
def counted(into: list[tuple[int, float]]) -> Iterator[None]:
    """Append the page faults and the CPU seconds (user + system) of the children waited for in the
    block -- a whole run's processes, each reaped by its parent, roll up into the launcher's.
    Unlike a wall time, the page faults do not move with this machine's speed, and each costs
    ~3 us here (a first touch of a new page; ~5 us a copy-on-write one)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    into.append((after.ru_minflt - before.ru_minflt, cpu))


def unprivileged_cost(tmp: Path, runs: int) -> tuple[float, float, str] | None:
    """``(ms over bare, bare ms, python)`` of ``tv-sandbox run -- python -c pass`` launched by an
    unprivileged user (``setpriv`` to nobody; both sides under ``setpriv``, so its cost cancels),
    or None where this machine cannot (not root, no setpriv, no user namespaces). The user's
    Python: ours when nobody may run it, else the system's (with this checkout on PYTHONPATH)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    home = tmp / "nobody"
    home.mkdir()
    tmp.chmod(0o755)  # the user must reach its home below our temp folder
    host = make_host(home / "host")
    for dirpath, dirnames, filenames in os.walk(home):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), NOBODY, NOBODY)
    os.chown(home, NOBODY, NOBODY)
    repo = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TV_", "PYTHON"))}
    env.update(PYTHONPATH=repo, HOME=str(home), TMPDIR=str(home))
    counter = iter(range(10**6))

    def sandboxed(py: str) -> list[str]:
        # what the console script runs (the user has none of its own: ``python -m sandbox`` adds runpy)
        script = "import sys; from sandbox.cli import entry; sys.argv[0] = 'tv-sandbox'; sys.exit(entry())"
        argv = [*drop, py, "-c", script, "run", "--root", str(host), "--run-id", f"u{next(counter)}"]
        return [*argv, "--", py, "-c", "pass"]

    # The first Python whose sandboxed run works (a venv may link to an interpreter under /root,
    # which the user's namespace cannot reach); that run also builds the shim into its cache.
    for py in (sys.executable, "/usr/bin/python3"):
        ok = subprocess.run(sandboxed(py), env=env, capture_output=True, cwd="/")
        if ok.returncode == 0:
            break
    else:
        return None

    def ours(r: int) -> None:
        subprocess.run(sandboxed(py), env=env, check=True, stderr=subprocess.DEVNULL, cwd="/")

    def bare(r: int) -> None:
        subprocess.run([*drop, py, "-c", "pass"], env=env, check=True, cwd="/")

    t = interleaved(runs, bare=bare, ours=ours)
    return paired(t["ours"], t["bare"]) * 1000, median(t["bare"]) * 1000, py


def pid_namespace_cost(tmp: Path, runs: int, what: str = "pid_namespace") -> tuple[float, float]:
    """Median seconds of ``spawn(["true"]).wait()`` under the runner's full plan, with the PID
    namespace and the private /dev/shm, and without them (``what="network_namespace"``: with the
    PID namespace, with and without the network namespace)."""
    from sandbox.kernel import KernelPlan, Overlay, spawn

    d = {n: tmp / what / n for n in ("host", "run", "work", "ws", "tmp")}
    for p in d.values():
        p.mkdir(parents=True)

    def plan(on: bool) -> KernelPlan:
        pidns = on or what != "pid_namespace"
        return KernelPlan(
            writable=(str(d["tmp"]), "/dev/shm"),
            overlays=(Overlay((str(d["host"]),), str(d["run"]), str(d["work"]), str(d["ws"])),),
            readonly_root=True,
            landlock=True,
            namespace=True,
            pid_namespace=pidns,
            private_shm=pidns,
            network_namespace=on and what == "network_namespace",
        )

    plans = {"with": plan(True), "without": plan(False)}

    def one(name: str) -> Callable[[int], None]:
        def go(r: int) -> None:
            child = spawn(["true"], env=dict(os.environ), cwd=str(d["ws"]), plan=plans[name])
            assert child.wait().exit_code == 0

        return go

    t = interleaved(runs * 2, with_ns=one("with"), without=one("without"))
    return median(t["with_ns"]), median(t["without"])


if __name__ == "__main__":
    sys.exit(main())
