"""The dynamic audit's child: ``python -m sandbox.audit._child SCRIPT[:FUNC] OUT`` inside a
sandboxed step (audit mode) of a throwaway host. Runs SCRIPT under pyfakefs seeded with a copy of
that host, records what it does (:class:`~sandbox.audit.trace.Tracer`) and writes the record as
JSON Lines to ``$TV_RUN_DIR/logs/OUT`` once pyfakefs is gone. Not an API: :mod:`sandbox.audit.dynamic`
starts it and reads what it wrote.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from sandbox.loader import policy_from_dict
from sandbox.policy import Policy
from sandbox.resolved import load_resolved
from sandbox.rules import ENV_POLICY

ENV_SEED = "TV_AUDIT_SEED"


def enforcing(policy: Policy) -> Policy:
    """``policy`` as an enforce-mode run would apply it (audit mode turns denials into captures;
    the audit reports what enforce mode would do)."""
    d = policy.to_dict()
    d["run"] = {**d["run"], "mode": "enforce"}
    return policy_from_dict(d)


def run_target(target: str) -> None:
    """Run ``path.py`` as ``__main__``, or ``path.py:func`` / ``module:func`` by calling ``func()``."""
    import runpy

    where, _, func = target.partition(":") if not os.path.exists(target) else (target, "", "")
    if where.endswith(".py"):  # as `python script.py` does: its folder first on the import path
        sys.path.insert(0, os.path.dirname(os.path.abspath(where)))
    if not func:
        sys.argv = [where]
        runpy.run_path(where, run_name="__main__")
        return
    if where.endswith(".py"):
        namespace = runpy.run_path(where, run_name="__tv_audit__")
    else:
        import importlib

        namespace = vars(importlib.import_module(where))
    sys.argv = [where]
    namespace[func]()


def trace(target: str, policy: Policy, seed: str, root: str) -> dict[str, Any]:
    """Run ``target`` on a fake host at ``root`` (a copy of ``seed``) and return what happened."""
    from pyfakefs.fake_filesystem_unittest import Patcher

    from sandbox.audit.trace import Tracer, add_library_paths

    script_dir = os.path.dirname(os.path.abspath(target.partition(":")[0] if ":" in target else target))
    status, error = "ok", ""
    # pyfakefs must leave tv-sandbox's own modules alone (it matches skip names by whole module
    # name): the step's guard and its event log keep working on the real, sandboxed disk.
    own: list[Any] = [m for m in sys.modules if m == "sandbox" or m.startswith("sandbox.")]
    with _guard_off(), Patcher(additional_skip_names=own) as patcher:
        fs = patcher.fs
        assert fs is not None
        fs.add_real_directory(seed, read_only=False, target_path=root)
        for var in ("TV_RUN_DIR", "TMPDIR"):
            if os.environ.get(var):
                fs.makedirs(os.environ[var], exist_ok=True)
        for sub in policy.spec.layout.run_folders:
            fs.makedirs(os.path.join(os.environ.get("TV_RUN_DIR", root), sub), exist_ok=True)
        if os.path.isdir(script_dir) and not fs.exists(script_dir):
            fs.add_real_directory(script_dir, read_only=False)
        add_library_paths(fs)
        fs.cwd = root
        with Tracer(fs, policy) as tracer:
            try:
                run_target(target)
            except SystemExit as e:
                code = e.code
                if code not in (None, 0):
                    status, error = "failed", f"exit status {code}"
            except BaseException as e:  # the script's own failure is a finding, not ours
                status = "failed"
                tb = traceback.extract_tb(e.__traceback__)
                user = [fr for fr in tb if os.path.abspath(fr.filename).startswith(script_dir)]
                at = f" at {user[-1].filename}:{user[-1].lineno}" if user else ""
                error = f"{type(e).__name__}: {e}{at}"
    for ev in tracer.events:  # where each path is in the workspace (the fake host sits there)
        r = ev["resolved"]
        ev["rel"] = os.path.relpath(r, root) if r == root or r.startswith(root.rstrip("/") + "/") else None
        if os.path.dirname(root) in (ev["hint"] or ""):
            ev["hint"] = ""  # a built-in hint naming this throwaway workspace: the catalogue's fix says it
        t, run_dir = ev["target"], os.environ.get("TV_RUN_DIR", "\0")
        p = ev["path"]  # an absolute path into this throwaway workspace says more as the run sees it
        if p == run_dir or p.startswith(run_dir + "/"):
            ev["path"] = "$TV_RUN_DIR" + p[len(run_dir) :]
        elif os.path.isabs(p) and ev["rel"] is not None:
            ev["path"] = ev["rel"]
        if t and (t == run_dir or t.startswith(run_dir + "/")):
            ev["target"] = "$TV_RUN_DIR" + t[len(run_dir) :]
    return {"status": status, "error": error, "events": tracer.events}


def _guard_off() -> Any:
    """The step's Python guard, taken off while pyfakefs fakes the filesystem and put back after.

    pyfakefs fakes ``open`` only when ``builtins.open`` is the real one, and the guard resolving
    paths through pyfakefs's patched ``os.path`` would recurse. Nothing is lost: user code reaches
    pyfakefs, not the disk; native code and child processes are held by the kernel layer and the
    children's own guard (their environment still carries it)."""
    import contextlib

    from sandbox.guard import active, install

    @contextlib.contextmanager
    def off() -> Iterator[None]:
        g = active()
        if g is None:
            yield
            return
        g.uninstall()
        try:
            yield
        finally:
            install(g.policy, events=g.engine.events, overlay=g.engine.overlay)

    return off()


def main(argv: list[str]) -> int:
    target, out = argv
    policy = enforcing(load_resolved(os.environ[ENV_POLICY]))
    result = trace(target, policy, os.environ[ENV_SEED], os.getcwd())
    with open(os.path.join(os.environ["TV_RUN_DIR"], "logs", out), "w", encoding="utf-8") as fh:
        write_trace(fh, result)
    return 0


def write_trace(fh: Any, result: dict[str, Any]) -> None:
    """``result`` as JSON Lines: ``{"status", "error"}``, then one event a line -- so the launcher
    reads it line by line under :func:`sandbox.events.step_lines`'s bounds, never one document
    of whatever size the script made the file (see :func:`sandbox.audit.dynamic._read_trace`)."""
    fh.write(json.dumps({"status": result["status"], "error": result["error"]}) + "\n")
    for ev in result["events"]:
        fh.write(json.dumps(ev) + "\n")


if __name__ == "__main__":
    # Run as the module's real name: pyfakefs skips tv-sandbox's modules by name, and "__main__"
    # is not one (its os.path would be faked).
    from sandbox.audit._child import main as _main

    sys.exit(_main(sys.argv[1:]))
