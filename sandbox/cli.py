"""``tv-sandbox`` / ``python -m sandbox``: the only module that prints and exits.

``main(argv) -> int`` maps every error class to its exit status (see :mod:`sandbox.errors`) and
prints it as one line on stderr, prefixed ``tv-sandbox:``.
"""

from __future__ import annotations

import os
import sys
import time

from sandbox.errors import EXIT_INTERNAL, EXIT_USAGE, SandboxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

PROG = "tv-sandbox"

# `run`'s options: the name argparse gives each, and whether it takes a value.
_RUN_OPTIONS = {
    "--root": ("root", True),
    "--run-id": ("run_id", True),
    "--profile": ("profile", True),
    "--policy": ("policy", True),
    "--mode": ("mode", True),
    "--overwrite": ("overwrite", False),
    "--keep-workspace": ("keep_workspace", False),
    "--workspace-dir": ("workspace_dir", True),
    "--kernel": ("kernel", True),
}
_RUN_DEFAULTS: dict[str, Any] = {
    "profile": None,
    "policy": None,
    "mode": "enforce",
    "overwrite": False,
    "keep_workspace": False,
    "workspace_dir": None,
    "kernel": "auto",
}


def _fast_run(args: Sequence[str]) -> dict[str, Any] | None:
    """``run``'s options when ``args`` is a plain, well-formed ``run ... -- CMD``, else ``None``.

    The common invocation skips ``argparse`` (~8 ms of a 50 ms start-up budget): each known option
    once, as ``--opt VALUE`` or ``--opt=VALUE``, then ``--`` and the command. Anything else -- help,
    abbreviations, repeats, a missing value or required option, an unknown word -- goes to
    ``argparse``, which accepts or rejects it and words the error, so both paths agree.
    """
    if len(args) < 3 or args[0] != "run" or "--" not in args:
        return None
    sep = args.index("--")
    opts: dict[str, Any] = {}
    i = 1
    while i < sep:
        word = args[i]
        name, eq, value = word.partition("=")
        spec = _RUN_OPTIONS.get(name)
        if spec is None:
            return None
        dest, takes_value = spec
        if dest in opts:
            return None
        if not takes_value:
            if eq:
                return None
            opts[dest] = True
        elif eq:
            opts[dest] = value
        else:
            i += 1
            if i >= sep or args[i].startswith("-"):
                return None
            opts[dest] = args[i]
        i += 1
    if "root" not in opts or "run_id" not in opts:
        return None
    return {**_RUN_DEFAULTS, **opts, "command": "run", "cmd": list(args[sep:])}  # "--" too, as argparse


def _parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line and exit 2 like every other bad input."""

        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"{message} (see `{self.prog} --help`)")

    p = _Parser(prog=PROG, description="Run legacy pipeline steps in a filesystem sandbox.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run one command as one sandboxed step and export its run folder",
        description=(
            "Run CMD in a fresh workspace of HOST (cwd), with the lakehouse and scanner exports "
            "read-only and every output redirected into $TV_RUN_DIR, then export the run folder "
            "atomically to HOST/<runs>/<RUN_ID>. Exit status: CMD's; 2 for an error before CMD ran; "
            "3 when the export failed."
        ),
    )
    run.add_argument("--root", required=True, metavar="HOST", help="the host's top folder")
    run.add_argument("--run-id", required=True, metavar="ID", help="RUN_ID: [A-Za-z0-9_-]+")
    run.add_argument(
        "--profile",
        help="production or development (default: TV_PROFILE, production unless 'development')",
    )
    run.add_argument(
        "--policy", metavar="FILE", help="a policy file (default: the built-in one of the profile)"
    )
    run.add_argument(
        "--mode",
        default="enforce",
        help="enforce (deny) or audit (capture protected writes into the run folder)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing export of this RUN_ID atomically",
    )
    run.add_argument(
        "--keep-workspace", action="store_true", help="keep the workspace folder and print its path"
    )
    run.add_argument(
        "--workspace-dir",
        metavar="DIR",
        help="where workspaces are made (default: the system temp dir)",
    )
    run.add_argument(
        "--kernel",
        default="auto",
        help="auto (use the kernel layer when supported), off, or require",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    sub.add_parser("doctor", help="which enforcement layers this machine supports, and what each covers")
    worker = sub.add_parser(
        "worker",
        help="start a Ray worker in a sandboxed run (the py_executable of sandboxed_run's runtime_env)",
    )
    worker.add_argument("--run-state", required=True, metavar="FILE", help="written by sandboxed_run")
    worker.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- PYTHON ...")
    demo = sub.add_parser("demo", help="show `run` on a generated sample host (what `make demo` runs)")
    demo.add_argument("--dir", help="where to generate the sample host (default: a new temp folder)")
    demo.add_argument("--kernel", default="auto", help="auto, off or require (as for run)")
    return p


def _run(ns: dict[str, Any]) -> int:
    from sandbox.loader import resolve_profile
    from sandbox.runner import RunRequest, execute, preflight

    cmd = list(ns["cmd"])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    req = RunRequest(
        host=ns["root"],
        run_id=ns["run_id"],
        argv=cmd,
        profile=resolve_profile(ns["profile"]),
        policy_file=ns["policy"],
        mode=ns["mode"],
        overwrite=ns["overwrite"],
        keep_workspace=ns["keep_workspace"],
        workspace_base=ns["workspace_dir"],
        kernel=ns["kernel"],
    )
    t0 = time.perf_counter()
    prep = preflight(req)
    t_pre = time.perf_counter() - t0
    outcome = execute(prep)
    rep = outcome.report
    ev = rep.get("events", {}).get("by_action", {})
    print(
        f"{PROG}: run {req.run_id} {rep['status']} (exit {outcome.exit_code}); "
        f"{ev.get('deny', 0)} denied, {ev.get('redirect', 0)} redirected; exported to {outcome.destination}",
        file=sys.stderr,
    )
    for w in prep.warnings:  # known once the launch has tried the kernel layer
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    for line in rep.get("explanations", []):
        print(f"{PROG}: {line}", file=sys.stderr)
    if os.environ.get("TV_SANDBOX_TIMINGS"):
        laps = {"preflight": t_pre, **outcome.timings}
        print(
            f"{PROG}: timing " + " ".join(f"{k}={v * 1000:.1f}ms" for k, v in laps.items()), file=sys.stderr
        )
    if outcome.workspace:
        print(f"{PROG}: workspace kept at {outcome.workspace}", file=sys.stderr)
    return outcome.exit_code


def _doctor() -> int:
    from sandbox.kernel import describe, probe

    print(describe(probe()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:2] == ["worker", "--run-state"]:  # Ray's worker start-up: no argparse on this path
            from sandbox.worker_launch import main as worker_main

            return worker_main(args[1:])
        ns = _fast_run(args)
        if ns is None:
            ns = vars(_parser().parse_args(args))
        if ns["command"] == "run":
            return _run(ns)
        if ns["command"] == "worker":
            from sandbox.worker_launch import main as worker_main

            cmd = ns["cmd"][1:] if ns["cmd"][:1] == ["--"] else ns["cmd"]
            return worker_main(["--run-state", ns["run_state"], "--", *cmd])
        if ns["command"] == "doctor":
            return _doctor()
        if ns["command"] == "demo":
            from sandbox.demo import main as demo

            return demo(ns["dir"], kernel=ns["kernel"])
        _parser().print_help(sys.stderr)
        return EXIT_USAGE
    except SandboxError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so in one line, keep the traceback available
        if os.environ.get("TV_SANDBOX_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(e).__name__}: {e} (set TV_SANDBOX_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
