"""The guard in child interpreters: the environment that carries it, and the start-up that reads it.

:func:`child_env` gives a step's environment the three variables below and puts the ``boot``
folder first on ``PYTHONPATH``; the ``sitecustomize`` there calls :func:`boot` when any Python
child starts (``subprocess``, ``os.system("python ...")``, multiprocessing's ``spawn`` and
``forkserver``; a ``fork`` inherits the patches as they are).

- ``TV_SANDBOX_POLICY``: path of the resolved policy (:func:`sandbox.resolved.save_resolved`).
  The launcher keeps it beside the workspace, outside every writable root: a step cannot edit it.
- ``TV_SANDBOX_EVENTS``: the event log (JSON lines) every deny and redirect is appended to.
- ``TV_SANDBOX_OVERLAY``: ``1`` when the kernel layer's overlay maps the workspace (see _engine).
- ``TV_SANDBOX_GUARD_IMAGE``: the guard's modules compiled into one file, when the launcher has
  one (:mod:`sandbox._image`): read instead of the package, if it matches its sources.

Fails closed: when the guard cannot be installed the child prints one line and exits 1 before any
user code runs -- a step never runs unguarded by accident. Interpreters started with ``-I``, ``-E``
or ``-S`` skip ``sitecustomize``/``PYTHONPATH``; they, and non-Python programs, are the kernel
layer's part.
"""

from __future__ import annotations

import os

from sandbox.resolved import load_resolved
from sandbox.rules import ENV_EVENTS as ENV_EVENTS  # named once, in sandbox.rules; re-exported
from sandbox.rules import ENV_IMAGE as ENV_IMAGE
from sandbox.rules import ENV_OVERLAY as ENV_OVERLAY
from sandbox.rules import ENV_POLICY as ENV_POLICY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from sandbox.guard._install import Guard

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")


class BootError(RuntimeError):
    """The environment does not describe a guard that can be installed."""


def child_env(
    env: Mapping[str, str],
    *,
    policy_file: str,
    events_file: str | None,
    overlay: bool,
    image: str | None = None,
) -> dict[str, str]:
    """``env`` plus what a child interpreter needs to install the same guard; ``image``: the
    guard's compiled modules in one file (:mod:`sandbox._image`), when there is one."""
    out = dict(env)
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOT_DIR]
    out["PYTHONPATH"] = os.pathsep.join([BOOT_DIR, *rest])
    out[ENV_POLICY] = os.fspath(policy_file)
    if events_file:
        out[ENV_EVENTS] = os.fspath(events_file)
    else:
        out.pop(ENV_EVENTS, None)
    out[ENV_OVERLAY] = "1" if overlay else "0"
    if image:
        out[ENV_IMAGE] = image
    else:
        out.pop(ENV_IMAGE, None)
    return out


def boot(environ: Mapping[str, str] | None = None) -> Guard:
    """Install the guard the environment describes (what ``sitecustomize`` runs). Raises
    :class:`BootError` with a one-line explanation when it cannot."""
    env = os.environ if environ is None else environ
    src = env.get(ENV_POLICY, "")
    if not src:
        raise BootError(f"{ENV_POLICY} is not set, but the sandbox's sitecustomize is on PYTHONPATH")
    try:
        policy = load_resolved(src)
    except OSError as e:
        raise BootError(f"cannot read the policy {src} ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:  # PolicyError is an Exception, not these
        raise BootError(f"{src} is not a resolved policy: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise BootError(f"{src}: {e}") from None
    events = None
    events_file = env.get(ENV_EVENTS)
    if events_file:
        from sandbox.events import EventLog

        try:
            events = EventLog(events_file)
            events.to_host_path = policy.host_path_of
        except OSError as e:
            raise BootError(f"cannot open the event log {events_file} ({e.strerror})") from None
    from sandbox.guard._install import install

    guard = install(policy, events=events, overlay=env.get(ENV_OVERLAY) == "1")
    _host_paths_in_tracebacks(policy.ctx.workspace, policy.ctx.host)
    return guard


def _host_paths_in_tracebacks(workspace: str, host: str) -> None:
    """An uncaught exception's traceback names the host's files, not the temporary workspace that
    mirrors them (``/tmp/tv-sandbox-.../ws/scripts/x.py`` -> ``HOST/scripts/x.py``): the step runs
    in the workspace, but the script the user knows -- and can open after the run -- is the
    host's. Only while the hook is Python's own (a step's own ``sys.excepthook`` is left alone)."""
    import sys

    if sys.excepthook is not sys.__excepthook__ or workspace == host:
        return
    shown, real = f'File "{workspace}/', f'File "{host}/'

    def excepthook(tp: type[BaseException], value: BaseException, tb: Any) -> None:
        if sys.excepthook is not excepthook:  # replaced meanwhile: not ours to format
            sys.__excepthook__(tp, value, tb)
            return
        written = False
        try:
            import traceback  # only when a step dies of an exception: not at start-up

            text = "".join(traceback.format_exception(tp, value, tb)).replace(shown, real)
            sys.stderr.write(text)
            written = True
            sys.stderr.flush()
        except BaseException:
            # A second Ctrl-C too: Python's own hook, in C, would print the step's exception
            # without running a signal handler, so the signal would not be seen. Raised here it
            # would be reported as an error of this hook instead, in place of the step's.
            if not written:
                sys.__excepthook__(tp, value, tb)
        if tp is KeyboardInterrupt:
            # An uncaught Ctrl-C ends Python by SIGINT (shells and CI stop on it), marked when the
            # exception left the top-level code -- and unmarked by any exec() of a string since,
            # such as the namedtuple() of the modules the formatting imports. Marked again the
            # same way: the step ends as it would without the guard.
            try:
                exec("raise KeyboardInterrupt")
            except KeyboardInterrupt:
                pass

    sys.excepthook = excepthook
