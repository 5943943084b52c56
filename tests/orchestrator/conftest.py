"""One Ray cluster for every test of the orchestrator (the pipeline's and the workers'), started once.

``ray_cluster`` starts a quiet embedded local Ray in the test process -- no dashboard, no usage
stats, workers' output kept in Ray's log files -- sized for a 2-core machine, and shuts it down at
the end of the session. It yields the cluster's address, so a test can also attach a
``tv-sandbox pipeline --address`` subprocess to it instead of paying for a second cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray", reason="the orchestrator tests need ray")
    from sandbox.orchestrator.cluster import OBJECT_STORE_BYTES, quiet_init_kwargs

    if ray.is_initialized():  # never join or end a session someone else started
        pytest.fail(
            "a Ray session is already open in the test process; the orchestrator tests start their own"
        )
    # 4 logical CPUs on 2 cores: actors mostly wait on their steps' processes
    ctx = ray.init(address="local", num_cpus=4, object_store_memory=OBJECT_STORE_BYTES, **quiet_init_kwargs())
    try:
        yield str(ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()
