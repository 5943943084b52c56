"""Ray's ``worker_process_setup_hook`` for :func:`sandbox.orchestrator.sandboxed_run`'s workers.

Here, not in :mod:`sandbox.worker_launch`: the launcher ``exec``s the interpreter and must stay
free of Ray, while the hook runs inside a started Ray worker and may chain to the job's own hook
through Ray's loader (``ray`` is imported under ``sandbox/orchestrator/`` only).
"""

from __future__ import annotations

import os

from sandbox.worker_launch import ENV_NEXT_HOOK, ENV_WORKER


def setup_hook() -> None:
    """Ray's ``worker_process_setup_hook``: install the run's Python guard in this worker.

    Runs after Ray connected the worker (its own start-up writes are done) and before any task.
    Refuses a worker that did not come through the launcher: the hook alone is not the sandbox.
    Then the environment of the worker's children carries the guard too (``sitecustomize``).
    """
    from sandbox.guard.bootstrap import BOOT_DIR, ENV_EVENTS, ENV_OVERLAY, ENV_POLICY, boot

    if not os.environ.get(ENV_WORKER):
        raise RuntimeError(
            f"{ENV_WORKER} is not set: this worker was not started by `tv-sandbox worker`; "
            "use the whole runtime_env of sandboxed_run(), not its setup hook alone"
        )
    boot()
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOT_DIR]
    os.environ["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *rest])
    for name in (ENV_POLICY, ENV_EVENTS, ENV_OVERLAY):
        if name not in os.environ:  # pragma: no cover - boot() would have failed
            raise RuntimeError(f"{name} is not set")
    following = os.environ.pop(ENV_NEXT_HOOK, "")
    if following:  # the job's own setup hook, which ours displaced in this worker
        from ray._private.runtime_env.setup_hook import load_and_execute_setup_hook

        error = load_and_execute_setup_hook(following)
        if error is not None:
            raise RuntimeError(error)
