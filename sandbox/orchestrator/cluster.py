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
from collections.abc import Iterator
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
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PreflightError(
                f"cannot attach to the Ray cluster at {address} ({first}): check the address "
                "(`ray status` on its head), or leave --address out to run on an embedded Ray"
            ) from None
        how = "attached"
    else:
        try:
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES, **kwargs)
        except BaseException:  # Ctrl-C while Ray starts: end what it started so far
            ray.shutdown()
            raise
        how = "embedded"
    try:
        yield how
    finally:
        ray.shutdown()
