"""Ray for the pipeline: an embedded, quiet local cluster by default, or an existing one.

Quiet means what a user of a command-line tool expects: no dashboard, no usage-stats banner, no
"Started a local Ray instance" line, and the workers' output kept in Ray's log files instead of
being copied onto the terminal (the steps' own output is in each run folder's ``logs/``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox.errors import PreflightError

OBJECT_STORE_BYTES = 128 * 1024 * 1024  # the pipeline passes small records, not data


def quiet_init_kwargs() -> dict[str, Any]:
    """The ``ray.init`` options that keep a driver quiet (shared with the tests' cluster)."""
    return {
        "include_dashboard": False,
        "logging_level": logging.ERROR,  # hides the start-up lines (INFO) and the auth-token notice (WARNING)
        "log_to_driver": False,  # worker stdout/stderr stay in the session's log files
        "configure_logging": True,
    }


def _is_this_machine(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if ip.is_loopback:
        return True
    import psutil

    return any(a.address == str(ip) for addrs in psutil.net_if_addrs().values() for a in addrs)


def _local_token_auth(address: str) -> None:
    """``ray start --head`` enables token authentication when ``~/.ray/auth_token`` exists, but a
    driver given an explicit address does not send that token unless ``RAY_AUTH_MODE=token`` (so it
    never leaks to a remote cluster). A cluster of this machine shares the token file: use it."""
    if "RAY_AUTH_MODE" in os.environ or not (Path.home() / ".ray" / "auth_token").is_file():
        return
    if _is_this_machine(address):
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:  # Ray caches its configuration at import: refresh it
            try:
                from ray._raylet import Config  # type: ignore[attr-defined]

                Config.initialize("")
            except (ImportError, AttributeError):
                pass


#: How long a plain HOST:PORT may take to accept a connection before it is no cluster of ours.
ADDRESS_CONNECT_S = 5.0


def unreachable(address: str) -> str | None:
    """Why ``address`` (``HOST:PORT``) answers no connection, found in seconds, or None (also for
    what is not ``HOST:PORT``: ``auto``, ``ray://...``, left to Ray). Ray itself retries a GCS
    that does not answer 20 times, 40 s each, in silence: a mistyped ``--address`` held the
    command for 14 minutes without a word."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_CONNECT_S):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__  # gaierror: "Name or service not known"


def ray_temp_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why an embedded Ray cannot keep its session folder where it would put it, or None. Ray
    takes ``$RAY_TMPDIR``, else ``$TMPDIR`` as it is, else ``/tmp``, and makes ``<it>/ray`` with
    ``mkdir -p``: an empty or relative value put ``ray/`` in the working folder (the host's, when
    run from there), a missing one made a folder at the top of the disk, a file failed inside Ray
    (an internal error). The workspaces fall back to ``/tmp`` as :mod:`tempfile` does; Ray does
    not, so the pipeline refuses before it starts."""
    env = os.environ if environ is None else environ
    name = next((n for n in ("RAY_TMPDIR", "TMPDIR") if n in env), None)
    if name is None:
        return None
    value = env[name]
    if not os.path.isabs(value):
        problem = "is not an absolute path"
    elif not os.path.exists(value):
        problem = "does not exist"
    elif not os.path.isdir(value):
        problem = "is not a folder"
    elif not os.access(value, os.W_OK | os.X_OK):
        problem = "is not writable"
    else:
        return None
    return (
        f"${name} {value!r} {problem}, and an embedded Ray keeps its session files there: "
        f"set {name} to a writable folder (or attach to a running cluster with --address)"
    )


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[str]:
    """Connect to Ray for the pipeline and yield how: ``"attached"`` (``address``), ``"reused"``
    (this process already has a Ray session, e.g. a test's) or ``"embedded"`` (a new local cluster,
    shut down on exit). ``address="local"`` never joins a cluster already running on the machine."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        _local_token_auth(address)
    import ray

    if ray.is_initialized():
        yield "reused"
        return
    kwargs = quiet_init_kwargs()
    if address:
        # connecting to a running cluster: its resources and dashboard are its own business
        del kwargs["include_dashboard"]
        try:
            why = unreachable(address)
            if why is not None:
                raise ConnectionError(why)
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PreflightError(
                f"cannot attach to the Ray cluster at {address} ({first}): check the address "
                "(`ray status` on its head), or leave --address out to run on an embedded Ray"
            ) from None
        how = "attached"
    else:
        problem = ray_temp_problem()
        if problem is not None:
            raise PreflightError(problem)
        try:
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES, **kwargs)
        except OSError as e:  # its folders refused what access() allowed (root's view of /proc)
            ray.shutdown()
            where = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
            raise PreflightError(
                f"an embedded Ray could not start ({where}): set TMPDIR (or RAY_TMPDIR) to a writable "
                "folder, or attach to a running cluster with --address"
            ) from None
        except BaseException:  # Ctrl-C while Ray starts: end what it started so far
            ray.shutdown()
            raise
        how = "embedded"
    try:
        yield how
    finally:
        ray.shutdown()
