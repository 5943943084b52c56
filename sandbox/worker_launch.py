"""``tv-sandbox worker --run-state FILE -- PYTHON ARGS...``: start a Ray worker inside a run's sandbox.

Ray starts a worker of a runtime_env that names a ``py_executable`` as
``bash -c "exec <py_executable> default_worker.py <args>"`` (``RuntimeEnvContext.exec_worker``),
so with ``py_executable = "tv-sandbox worker --run-state FILE -- <python>"`` this launcher runs
first, in the very process the raylet forked and tracks (every step is an ``exec``: the pid, the
process group and the descriptors Ray handed over stay the same). Before it ``exec``s the
interpreter it puts the process in the run's sandbox, as described by the run-state file the
driver wrote (:mod:`sandbox.orchestrator.workers`):

- ``namespace``: join the run's mount namespace (held open by the run's *holder* process: the
  overlay of the host with the run folder as upper layer, the read-only binds of the mounts,
  everything else read-only), drop CAP_SYS_ADMIN for what it ``exec``s, then Landlock;
- ``landlock``: Landlock alone (a kernel without usable mount namespaces);
- ``off``: nothing here; the Python guard (installed by the setup hook,
  :func:`sandbox.orchestrator._hook.setup_hook`) is all there is.

Every worker of a run joins the same namespace, so they share one overlay mount and see each
other's files coherently (two overlays on one upper layer would not). No PID namespace: the
raylet signals the worker's process group by the pid it forked, and a worker in a PID namespace
reports pgid 0 -- the raylet then signals its own group (itself and the driver). Measured; see
README "Ray".

This module is on the worker's start-up path: it imports no ``ray``, no ``json`` or ``enum``; the
state is ``marshal`` data. A failure prints one line (into the worker's ``.err`` log in Ray's
session folder) and exits: a worker never starts unsandboxed by accident.
"""

from __future__ import annotations

import marshal
import os

from sandbox.errors import KernelUnavailable, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

STATE_VERSION = 1
ENV_WORKER = "TV_SANDBOX_WORKER"  # set by the launcher: which layers the worker runs under
#: How Ray's default_worker.py finds its ``worker_process_setup_hook`` (ray_constants). Ray fills it
#: only from the *job's* runtime_env (``ray.init``); the hook of a task's or actor's runtime_env is
#: ignored (Ray 2.60) -- so the launcher sets it, and a job's own hook runs after ours.
ENV_RAY_SETUP_HOOK = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
ENV_NEXT_HOOK = "TV_SANDBOX_NEXT_SETUP_HOOK"
SETUP_HOOK = "sandbox.orchestrator._hook.setup_hook"  # ray is imported under orchestrator/ only
WORKERS_DIR = "workers"  # in the workspace base: one file per started worker (pid start-time)
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000


def write_state(path: str, state: Mapping[str, Any]) -> None:
    """Write the run state (``marshal``: the launcher reads it without importing anything)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        marshal.dump({"version": STATE_VERSION, **state}, fh)
    os.replace(tmp, path)


def read_state(path: str) -> dict[str, Any]:
    from sandbox._paths import NotAFile, read_config

    try:
        state = marshal.loads(read_config(path, 1 << 20))  # a regular file, bounded; one read
    except NotAFile as e:
        raise UsageError(f"cannot read the run state {path}: it {e}") from None
    except FileNotFoundError:
        raise UsageError(
            f"run state {path} is gone: its sandboxed run has ended (or this worker runs on "
            "another node than the run's driver); start actors of a run inside its `with` block"
        ) from None
    except (OSError, EOFError, ValueError, TypeError) as e:
        raise UsageError(f"cannot read the run state {path}: {e}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise UsageError(f"{path} is not a run state of this tv-sandbox (version {STATE_VERSION})")
    wrong = [k for k, kinds in _STATE_FIELDS.items() if type(state.get(k, _MISSING)) not in kinds]
    if not wrong and not all(isinstance(p, str) for p in state["landlock"]):
        wrong = ["landlock"]
    if wrong or state["kernel"] not in ("namespace", "landlock", "off"):
        raise UsageError(
            f"{path} is not a run state of this tv-sandbox: {', '.join(wrong) or 'kernel'} missing or "
            "of the wrong type (only `sandboxed_run` writes these files)"
        )
    return state


_MISSING = object()
#: What :func:`launch` reads of a run state, and the types ``sandboxed_run`` writes: a state made
#: by hand is one line (125), not an internal error.
_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "kernel": (str,),
    "landlock": (list,),
    "landlock_required": (bool,),
    "holder_pid": (int,),
    "holder_start": (str, type(None)),
    "userns": (bool,),
    "cwd": (str,),
    "workers_dir": (str,),
}


def start_time(pid: int) -> str | None:
    """A process's start time in clock ticks: with the pid, it names one process, never a reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def _record_self(workers_dir: str) -> None:
    """Register this worker with its run (before the sandbox: the folder is not writable in it),
    so the driver can end it, and every process it leaves in its group, when the run closes."""
    pid = os.getpid()
    fd = os.open(os.path.join(workers_dir, str(pid)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{pid} {start_time(pid)}\n".encode())
    finally:
        os.close(fd)


def _join_namespace(state: Mapping[str, Any]) -> None:
    from sandbox.kernel import _libc, mounts

    holder = int(state["holder_pid"])
    if start_time(holder) != state["holder_start"]:
        raise KernelUnavailable(f"the run's namespace holder (pid {holder}) is gone: the run has ended")
    lib = _libc.libc()
    kinds = [("user", CLONE_NEWUSER)] if state.get("userns") else []
    # Open both first: after joining the user namespace, /proc/<holder> may no longer be ours.
    fds = [
        (os.open(f"/proc/{holder}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag, name)
        for name, flag in [*kinds, ("mnt", CLONE_NEWNS)]
    ]
    try:
        for fd, flag, name in fds:
            _libc.check(lib.setns(fd, flag), f"join the run's {name} namespace (holder pid {holder})")
    finally:
        for fd, _flag, _name in fds:
            os.close(fd)
    mounts.lock_mounts()  # what we exec cannot remount the read-only view writable


def apply_state(state: Mapping[str, Any]) -> str:
    """Put the calling (single-threaded) process in the run's sandbox; return a description of
    the layers applied. Raises :class:`KernelUnavailable` when the kernel refuses."""
    kind = state["kernel"]
    if kind == "off":
        return "guard"
    from sandbox.kernel import landlock

    try:
        if kind == "namespace":
            _join_namespace(state)
        abi = landlock.abi_version()
        if abi > 0:
            landlock.restrict_writes([p for p in state["landlock"] if os.path.exists(p)], abi=abi)
        elif state.get("landlock_required"):
            raise KernelUnavailable("Landlock is unavailable in this worker, but the run was opened with it")
        from sandbox.kernel import _libc

        # as a step's: no capability, not even in the run's own user namespace (a root worker held
        # all but CAP_SYS_ADMIN there: nested user namespaces, file permissions overridden on
        # every file its mapped root owns)
        _libc.drop_all_capabilities()
    except OSError as e:
        raise KernelUnavailable(f"kernel layer could not be applied to the worker: {e}") from e
    return f"{kind} landlock_abi={abi}"


def launch(state_file: str, argv: Sequence[str]) -> None:
    """Apply the run's sandbox to this process and ``exec`` ``argv``; returns only by raising."""
    if not argv:
        raise UsageError("no interpreter to start: put it after '--', e.g. -- /usr/bin/python3")
    state = read_state(state_file)
    _record_self(state["workers_dir"])
    applied = apply_state(state)
    os.environ[ENV_WORKER] = f"{state['run_id']} {applied}"
    previous = os.environ.get(ENV_RAY_SETUP_HOOK)
    if previous and previous != SETUP_HOOK:
        os.environ[ENV_NEXT_HOOK] = previous
    os.environ[ENV_RAY_SETUP_HOOK] = SETUP_HOOK
    try:
        os.chdir(state["cwd"])
    except OSError as e:
        raise UsageError(f"cannot enter the run's workspace {state['cwd']}: {e.strerror}") from None
    try:
        os.execv(argv[0], list(argv))
    except OSError as e:
        raise UsageError(f"cannot execute {argv[0]!r}: {e.strerror}") from None


def main(args: Sequence[str]) -> int:
    """``worker --run-state FILE -- PYTHON ARGS...`` (``args`` without the ``worker`` word)."""
    if len(args) < 4 or args[0] != "--run-state" or args[2] != "--":
        raise UsageError("usage: tv-sandbox worker --run-state FILE -- PYTHON [ARGS...]")
    launch(args[1], args[3:])
    return 0  # pragma: no cover - launch() execs or raises
