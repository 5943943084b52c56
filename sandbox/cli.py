"""``tv-sandbox`` / ``python -m sandbox``: the only module that prints and exits.

``main(argv) -> int`` maps every error class to its exit status (see :mod:`sandbox.errors`:
Docker's ``docker run`` convention -- the command's own status, 125 for an error of tv-sandbox
itself, 126 for a command that cannot be executed, 127 for one that is not found) and prints it as
one line on stderr, prefixed ``tv-sandbox:``.
"""

import os
import sys
import time

from sandbox.errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    ExportError,
    SandboxError,
    UsageError,
    exec_failure,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from sandbox.kernel._early import Early

PROG = "tv-sandbox"
_EXIT_HELP = """exit status (Docker's `docker run` convention):
  the command's own  the step ran; its status passes through
  125                an error of tv-sandbox itself: before the command ran (bad option, RUN_ID,
                     host layout or policy; kernel layer required but missing) or, after it ran,
                     a failed export (the message says which; the previous export is intact)
  126                the command was found but cannot be executed
  127                the command was not found
  130 / 143          interrupted (Ctrl-C / SIGTERM; 129 SIGHUP, 131 Ctrl-\\)
verify: 0 the run folder matches its manifest.json; 1 it does not verify (a difference, or its
        manifest.json missing, unreadable or not a valid manifest); 125 RUN_FOLDER is not a folder
cache: 0 (the cache off or not made yet included), 125 the cache folder cannot be read"""
_VERIFY_EXIT = """exit status:
  0    the folder matches its manifest.json
  1    it does not verify: one line per difference, or one line when its manifest.json is
       missing, unreadable or not a valid tv-sandbox manifest (a tampered one included)
  125  RUN_FOLDER is not a folder: there is nothing to check"""

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
_RUN_DEFAULTS: "dict[str, Any]" = {
    "profile": None,
    "policy": None,
    "mode": "enforce",
    "overwrite": False,
    "keep_workspace": False,
    "workspace_dir": None,
    "kernel": "auto",
}


def _fast_run(args: "Sequence[str]") -> "dict[str, Any] | None":
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


def _parser() -> "argparse.ArgumentParser":
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line and exit 125 like every other bad input."""

        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"{message} (see `{self.prog} --help`)")

    p = _Parser(
        prog=PROG,
        description="Run legacy pipeline steps in a filesystem sandbox.",
        epilog=_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run one command as one sandboxed step and export its run folder",
        description=(
            "Run CMD in a fresh workspace of HOST (cwd), with the lakehouse and scanner exports "
            "read-only and every output redirected into $TV_RUN_DIR, then export the run folder "
            "atomically to HOST/<runs>/<RUN_ID>."
        ),
        epilog=_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--root", required=True, metavar="HOST", help="the host's top folder")
    run.add_argument("--run-id", required=True, metavar="ID", help="RUN_ID: [A-Za-z0-9_-]+")
    run.add_argument(
        "--profile",
        help="production or development (default: TV_PROFILE, production unless 'development')",
    )
    run.add_argument(
        "--policy",
        metavar="FILE|NAME",
        help="a policy file, or the name of a built-in one (production, development, source-layout; "
        "default: the built-in one of the profile)",
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
    _audit_parser(sub)
    sub.add_parser("doctor", help="which enforcement layers this machine supports, and what each covers")
    worker = sub.add_parser(
        "worker",
        help="start a Ray worker in a sandboxed run (the py_executable of sandboxed_run's runtime_env)",
    )
    worker.add_argument("--run-state", required=True, metavar="FILE", help="written by sandboxed_run")
    worker.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- PYTHON ...")
    demo = sub.add_parser(
        "demo", help="run the sample pipeline on embedded Ray in a generated host (what `make demo` runs)"
    )
    demo.add_argument("--dir", help="where to generate the sample host (default: a new temp folder)")
    demo.add_argument("--kernel", default="auto", help="auto, off or require (as for run)")
    demo.add_argument("--steps", action="store_true", help="the single-step showcases of `run` instead")
    # -- pipeline (sandbox.orchestrator) --
    pipe = sub.add_parser(
        "pipeline",
        help="run a meta profile's sleeves on Ray, each a sandboxed multi-step run exported atomically",
        description=(
            "Preflight on the host (manifest, profiles, RUN_ID, scanner outputs under export/RUN_ID), then "
            "one Ray actor per sleeve runs its profile's steps as one sandboxed run, exported to "
            "HOST/<runs>/RUN_ID/<sleeve> as soon as it ends; the summary pipeline_summary.json is written "
            "last. Exit status: 0 every sleeve succeeded, 1 any failed, 125 for an error of tv-sandbox "
            "before dispatch, 130 on Ctrl-C (143 on SIGTERM)."
        ),
    )
    pipe.add_argument("--root", required=True, metavar="HOST", help="the host's top folder")
    pipe.add_argument("--profile", required=True, metavar="META", help="the meta profile to run")
    pipe.add_argument("--run-id", required=True, metavar="ID", help="RUN_ID: [A-Za-z0-9_-]+")
    pipe.add_argument("--manifest", metavar="FILE", help="default: HOST/configs/manifest.json")
    pipe.add_argument("--address", metavar="ADDR", help="attach to this Ray cluster (default: embedded)")
    pipe.add_argument("--max-parallel", type=int, metavar="N", help="sleeves at once (default: CPUs)")
    pipe.add_argument("--step-timeout", type=float, metavar="S", help="a cap on every step's seconds")
    pipe.add_argument("--mode", default="enforce", help="enforce or audit (as for run)")
    pipe.add_argument("--kernel", default="auto", help="auto, off or require (as for run)")
    pipe.add_argument("--overwrite", action="store_true", help="rerun every sleeve, replacing its export")
    pipe.add_argument("--resume", action="store_true", help="rerun only the sleeves missing or failed")
    pipe.add_argument("--workspace-dir", metavar="DIR", help="where workspaces are made (default: temp)")
    pipe.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="auto")
    pipe.add_argument("--json", action="store_true", help="one JSON document on stdout, nothing else")
    verify = sub.add_parser(
        "verify",
        help="check an exported run folder against its manifest.json (exit 0: intact, 1: not)",
        description=(
            "Check an exported run folder against its manifest.json: every listed file with its size,\n"
            "sha256 and mode, every symlink with its target, every folder, and nothing unlisted."
        ),
        epilog=_VERIFY_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("run_folder", metavar="RUN_FOLDER", help="HOST/<runs>/<RUN_ID>")
    cache = sub.add_parser(
        "cache",
        help="show what the per-user cache holds (module images, parsed policies, shim); prune or clear it",
        description=(
            "Where the per-user cache is ($TV_SANDBOX_CACHE_DIR, else $XDG_CACHE_HOME/tv-sandbox, else "
            "~/.cache/tv-sandbox; TV_SANDBOX_CACHE_DIR=off turns it off) and what it holds. `prune` removes, "
            "now, what a run removes once a day: module images of package folders that are gone (or of "
            "another version), entries unused for 30 days, unfinished writes older than a day -- never what "
            "this installation uses. `clear` removes every entry; each is made again when next needed."
        ),
    )
    cache.add_argument(
        "action",
        nargs="?",
        choices=("prune", "clear"),
        metavar="prune|clear",
        help="prune: remove what no longer serves, now; clear: remove every entry (default: show them)",
    )
    return p


def _audit_parser(sub: "Any") -> None:
    audit = sub.add_parser(
        "audit",
        help="find isolation problems in scripts before they run (static AST + a run on a fake host)",
        description=(
            "Report what each script would do to shared paths: hard-coded lakehouse/export/runs paths, "
            "writes not derived from $TV_RUN_DIR, input looked up without $TV_SCAN_DIR, shells, native "
            "writers -- each decided by the policy the sandbox enforces. PATH: scripts, folders of "
            "scripts, script.py:func or package.module:func. Exit status: 0, or 1 when a finding is at "
            f"or above --fail-on; {EXIT_USAGE} for a bad argument."
        ),
    )
    audit.add_argument("paths", nargs="*", metavar="PATH", help="scripts or folders to audit")
    audit.add_argument("--profile", help="production or development (default: TV_PROFILE)")
    audit.add_argument("--policy", metavar="FILE", help="a policy file (default: the profile's built-in one)")
    audit.add_argument("--static-only", action="store_true", help="read the scripts only; do not run them")
    audit.add_argument("--format", default="text", choices=("text", "md", "json"), help="default: text")
    audit.add_argument(
        "--fail-on",
        default="error",
        choices=("info", "warning", "error"),
        help="exit 1 when a finding is this severe or worse (default: error)",
    )
    audit.add_argument(
        "--timeout", default="60", metavar="SECONDS", help="each script's time limit when run (default: 60)"
    )
    audit.add_argument(
        "--host", metavar="DIR", help="run the scripts on a copy of this small host tree (default: a sample)"
    )
    audit.add_argument("--run-id", default="AUDIT", metavar="ID", help="the run id of that host's export")


def _audit(ns: "dict[str, Any]") -> int:
    from sandbox.audit import Severity, audit_paths
    from sandbox.audit.render import render
    from sandbox.loader import resolve_profile

    try:
        timeout = float(ns["timeout"])
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < 86400:
        raise UsageError(f"--timeout {ns['timeout']!r}: give a number of seconds above 0 (e.g. --timeout 30)")
    report = audit_paths(
        list(ns["paths"]),
        profile=resolve_profile(ns["profile"]),
        policy_file=ns["policy"],
        static_only=ns["static_only"],
        timeout_s=timeout,
        host=ns["host"],
        run_id=ns["run_id"],
    )
    sys.stdout.write(render(report, ns["format"]))
    return 1 if report.fails(Severity.named(ns["fail_on"])) else 0


def _run(ns: "dict[str, Any]") -> int:
    # The step's keeper is forked first, while this process is still single-threaded: it loads
    # the kernel layer and makes the namespaces on the other core during the preflight, the
    # workspace and the plan (kernel._early.prefork). A run that does not take it (a refused
    # preflight, the guard alone, a policy with the host's network) ends it.
    from sandbox import _image

    _image.install()  # the rest of the run's modules from one file, when it matches the package
    early = None
    if ns["kernel"] != "off" and ns["cmd"]:
        from sandbox.kernel._early import prefork

        early = prefork(network=isolates_network(ns["policy"]))
    try:
        return _run_with(ns, early)
    finally:
        if early is not None:
            early.discard()


def isolates_network(policy_file: str | None) -> bool:
    """A guess, before the policy is loaded, of whether it gives the step a network namespace --
    for the early keeper, which makes the namespaces first. Every bundled policy does; a policy
    file with a line ``network = "host"`` (read as text, not parsed: no TOML parser on this path)
    does not. A wrong guess costs a keeper, never a decision: the launch ends a keeper made for
    other namespaces than its plan's and forks one of its own."""
    if not policy_file:
        return True
    from sandbox._paths import NotAFile, read_config

    try:
        raw = read_config(policy_file, 1 << 20)  # loader.MAX_POLICY_BYTES; a FIFO is not waited on
    except (OSError, NotAFile):
        return True  # the preflight says what is wrong with it
    for line in raw.splitlines():
        code = line.split(b"#", 1)[0].replace(b" ", b"").replace(b"\t", b"")
        if code in (b'network="host"', b"network='host'"):
            return False
    return True


def _run_with(ns: "dict[str, Any]", early: "Early | None") -> int:
    from sandbox.loader import profile_warning, resolve_profile
    from sandbox.runner import RunRequest, execute, preflight

    warn = profile_warning(ns["profile"])
    if warn:
        print(f"{PROG}: warning: {warn}", file=sys.stderr)

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
    from sandbox.run import install_interrupt_handlers

    install_interrupt_handlers()  # Ctrl-C and SIGTERM end the step's processes, then export
    try:
        outcome = execute(prep, early=early)
    except KeyboardInterrupt as e:  # after the step ended: the run was exported all the same
        if getattr(e, "outcome", None) is None:
            raise
        outcome = e.outcome  # type: ignore[attr-defined]
    from sandbox.report import summary_line

    rep = outcome.report
    steps = rep.get("steps") or [{}]
    if (steps[-1].get("stderr_tail") or "\n")[-1] != "\n":
        print(file=sys.stderr)  # the step's stderr ended mid-line: ours begins on a line of its own
    if outcome.status == "interrupted":
        print(
            f"{PROG}: run {req.run_id} interrupted ({rep.get('cut', {}).get('why', 'signal')}): the step's "
            f"processes were ended; exported, marked interrupted, to {outcome.destination}",
            file=sys.stderr,
        )
    else:
        print(
            f"{PROG}: run {req.run_id} {rep['status']} (exit {outcome.exit_code}); "
            f"{summary_line(rep)}; exported to {outcome.destination}",
            file=sys.stderr,
        )
    for w in outcome.warnings:  # known once the launch has tried the kernel layer
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
    global _RUN_DONE
    _RUN_DONE = True
    return outcome.exit_code


def _verify(folder: str) -> int:
    """``tv-sandbox verify RUN_FOLDER``: 0 when the folder matches its manifest exactly; 1 when it
    does not verify -- one line per difference, or one line when its manifest is missing,
    unreadable or not a valid manifest (a tampered manifest is a folder that does not verify, not
    an error of tv-sandbox); 125 when there is no folder to check."""
    from sandbox.errors import printable
    from sandbox.export.manifest import MANIFEST_NAME, differences, read_manifest

    if not os.path.isdir(folder):
        raise UsageError(f"{folder} is not a folder: pass an exported run folder (HOST/<runs>/<RUN_ID>)")
    shown = printable(folder)  # names in a folder from anywhere: escapes and newlines as \x1b, \n
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as e:
        why = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
        print(f"{PROG}: {shown} does NOT verify: cannot read the manifest: {printable(why)}", file=sys.stderr)
        return 1
    problems = differences(folder, manifest)
    for line in problems[:200]:
        print(f"{PROG}: {printable(line)}", file=sys.stderr)
    if len(problems) > 200:
        print(f"{PROG}: ... and {len(problems) - 200} more", file=sys.stderr)
    if problems:
        print(
            f"{PROG}: {shown} does NOT match its {MANIFEST_NAME} ({len(problems)} problems)", file=sys.stderr
        )
        return 1
    print(f"{PROG}: {shown} matches its {MANIFEST_NAME}", file=sys.stderr)
    return 0


def _cache_command(action: str | None) -> int:
    """``tv-sandbox cache [prune|clear]``: where the per-user cache is and what it holds (and what
    a prune would remove); prune it now; or remove every entry this installation is not using. A
    cache that is off or not made yet is no error; one that cannot be read, or that other users
    may write (then nothing in it is used or removed), is (125)."""
    from sandbox import _cache, _cache_prune

    d = _cache.cache_dir()
    if d is None:
        print(f"{PROG}: the per-user cache is off ({_cache.ENV_DIR} is empty or off): nothing is kept")
        return 0
    failed: list[tuple[str, int, str]] = []
    try:
        if action == "prune":
            removed = _cache_prune.prune(d, keep=_cache_prune.in_use(), failed=failed)
            print(f"{PROG}: removed {_cache_prune.describe(removed, f' from {d}')}")
        elif action == "clear":
            keep = _cache_prune.in_use()
            removed = _cache_prune.clear(d, keep=keep, failed=failed)
            kept = sum(1 for p in keep if os.path.exists(p))
            print(
                f"{PROG}: removed {_cache_prune.describe(removed, f' from {d}')}"
                + (f"; kept {kept} this installation uses" if kept else "")
            )
        else:
            print("\n".join(_cache_prune.show(d, PROG)))
    except FileNotFoundError:
        print(f"{PROG}: the per-user cache {d} is empty (not made yet)")
    except _cache_prune.Shared as e:
        raise UsageError(f"{e}; point {_cache.ENV_DIR} at a folder of yours") from e
    except OSError as e:
        raise UsageError(
            f"the per-user cache {d} cannot be read ({e.strerror}): set {_cache.ENV_DIR} to a folder "
            "of yours, or to off"
        ) from e
    if failed:
        raise UsageError(f"could not remove {_cache_prune.describe(failed)}")
    return 0


def _doctor() -> int:
    from sandbox.kernel import describe, probe

    print(describe(probe()))
    return 0


#: The subcommands that run no command of the user's: their errors name no stage of one.
_NO_COMMAND = ("verify", "cache", "doctor")


def _stage(e: BaseException, subcommand: str | None = None) -> str:
    """Which stage an error stopped, for its one line: CI reads 125 and the words say which."""
    if subcommand in _NO_COMMAND:
        return "error"
    if isinstance(e, ExportError):
        return "error after the command ran (export failed)"
    if isinstance(e, SandboxError) and e.exit_status != EXIT_USAGE:
        return "error, the command did not run"  # 126 / 127: the message names the command
    return "error before the command ran"


#: Set once ``run`` has exported and said so: nothing is left to tear down (see :func:`entry`).
_RUN_DONE = False


def _hold_closed_stdio() -> None:
    """Started with a closed stdin, stdout or stderr (``<&-``, ``>&-``, ``2>&-``; Python then makes
    ``sys.stdout`` None): hold the number with ``/dev/null`` opened the other way, so that reading
    or writing it fails (EBADF) as with a closed one -- the step's too, which gets its own
    ``/dev/null`` the same way. Left free, the number was taken by the launcher's and its keeper's
    own pipes: the keeper's status pipe was number 1 and broke, the step's status was lost (the
    run said 127 whatever the command's), and the launcher's own ``sys.stdout.flush()`` or
    ``sys.stderr.buffer`` was a traceback. Our own messages then go nowhere, as asked."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        held = os.open(os.devnull, os.O_WRONLY if fd == 0 else os.O_RDONLY)  # the lowest free: fd
        if held != fd:
            os.dup2(held, fd)
            os.close(held)
        os.set_inheritable(fd, True)
    for name in ("stdin", "stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "r" if name == "stdin" else "w"))  # noqa: SIM115 - for the process's life


class _Unbroken:
    """``sys.stderr`` of the console script: a write or flush that fails -- the reader of a pipe
    gone (``tv-sandbox run ... 2>&1 | head``), a hung-up terminal -- loses the line, not the
    run's exit status (an exception there ended the launcher with 1 and a traceback, after the
    run). Everything else is the stream's own."""

    def __init__(self, stream: "Any") -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> "Any":
        return getattr(self._stream, name)


def entry() -> None:
    """The ``tv-sandbox`` console script (and ``python -m sandbox``): :func:`main`, then exit.

    After a ``run`` every file is written and closed and every helper thread has ended, so the
    interpreter's finalization (freeing each loaded module: ~10 ms, a fifth of the start-up
    budget) is skipped with ``os._exit`` once our streams are flushed. Everything else exits
    normally (the pipeline's Ray has exit handlers of its own).

    A ``run`` also goes without the cyclic garbage collector: the launcher lives for one run,
    allocates little beyond its imports, and collections during them are CPU on the start-up
    path (the keeper, a fork, then has no collection to dirty its copy-on-write pages either)."""
    if sys.stdin is None or sys.stdout is None or sys.stderr is None:
        _hold_closed_stdio()
    sys.stderr = _Unbroken(sys.stderr)
    if sys.argv[1:2] == ["run"]:
        import gc

        gc.disable()
    code = main()
    if _RUN_DONE:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be said
            pass
        os._exit(code)
    sys.exit(code)


def main(argv: "Sequence[str] | None" = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    subcommand: str | None = args[0] if args else None  # for the error line of a misused one too
    try:
        if args[:2] == ["worker", "--run-state"]:  # Ray's worker start-up: no argparse on this path
            from sandbox.worker_launch import main as worker_main

            return worker_main(args[1:])
        ns = _fast_run(args)
        if ns is None:
            ns = vars(_parser().parse_args(args))
        subcommand = ns["command"]
        if ns["command"] == "run":
            return _run(ns)
        if ns["command"] == "audit":
            return _audit(ns)
        if ns["command"] == "worker":
            from sandbox.worker_launch import main as worker_main

            cmd = ns["cmd"][1:] if ns["cmd"][:1] == ["--"] else ns["cmd"]
            return worker_main(["--run-state", ns["run_state"], "--", *cmd])
        if ns["command"] == "doctor":
            return _doctor()
        if ns["command"] == "verify":
            return _verify(ns["run_folder"])
        if ns["command"] == "cache":
            return _cache_command(ns["action"])
        if ns["command"] == "demo":
            from sandbox.demo import main as demo

            return demo(ns["dir"], kernel=ns["kernel"], steps=ns["steps"])
        if ns["command"] == "pipeline":
            from sandbox.orchestrator.command import main as pipeline

            return pipeline(ns)
        _parser().print_help(sys.stderr)
        return EXIT_USAGE
    except SandboxError as e:
        err = exec_failure(e)
        print(f"{PROG}: {_stage(err, subcommand)}: {err}", file=sys.stderr)
        return err.exit_status if isinstance(err, SandboxError) else EXIT_USAGE
    except KeyboardInterrupt as e:  # before a run began, or after it was exported
        signum = getattr(e, "signum", 2)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + signum
    except Exception as e:  # a bug: say so in one line, keep the traceback available
        if os.environ.get("TV_SANDBOX_DEBUG"):
            raise
        print(
            f"{PROG}: internal error: {type(e).__name__}: {e} (set TV_SANDBOX_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
