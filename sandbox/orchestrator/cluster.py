"""Ray for the pipeline: an embedded, quiet local cluster by default, or an existing one.

Quiet means what a user of a command-line tool expects: no dashboard, no usage-stats banner, no
"Started a local Ray instance" line, and the workers' output kept in Ray's log files instead of
being copied onto the terminal (the steps' own output is in each run folder's ``logs/``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

OBJECT_STORE_BYTES = 128 * 1024 * 1024  # the pipeline passes small records, not data


def quiet_init_kwargs() -> dict[str, Any]:
    """The ``ray.init`` options that keep a driver quiet (shared with the tests' cluster)."""
    return {
        "include_dashboard": False,
        "logging_level": logging.ERROR,  # hides the start-up lines (INFO) and the auth-token notice (WARNING)
        "log_to_driver": False,  # worker stdout/stderr stay in the session's log files
        "configure_logging": True,
    }


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[str]:
    """Connect to Ray for the pipeline and yield how: ``"attached"`` (``address``), ``"reused"``
    (this process already has a Ray session, e.g. a test's) or ``"embedded"`` (a new local cluster,
    shut down on exit). ``address="local"`` never joins a cluster already running on the machine."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        yield "reused"
        return
    kwargs = quiet_init_kwargs()
    if address:
        # connecting to a running cluster: its resources and dashboard are its own business
        del kwargs["include_dashboard"]
        ray.init(address=address, **kwargs)
        how = "attached"
    else:
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES, **kwargs)
        how = "embedded"
    try:
        yield how
    finally:
        ray.shutdown()
