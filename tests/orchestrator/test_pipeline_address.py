"""``tv-sandbox pipeline --address``: attach to a cluster started by ``ray start --head`` on this
machine. The test starts that cluster itself (its own port and temp dir) and stops exactly it --
never ``ray stop``, which would end every Ray cluster of the machine."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from .test_pipeline import RUN_ID, RUNS, make_host, step

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours(temp: str) -> list[psutil.Process]:
    """Every process of the cluster: they all name its temp dir (session logs, sockets)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp in " ".join(p.info["cmdline"] or ()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def stop(head: subprocess.Popen[bytes], temp: str) -> None:
    """End the cluster started by ``head`` and nothing else: SIGTERM to ``ray start --block`` (it
    stops its own processes), then whatever of its tree or its temp dir is left."""
    try:
        tree = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    tree += [p for p in ours(temp) if p not in tree]
    head.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(tree, timeout=30)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    head.wait(timeout=10)


def test_address_attaches_to_a_ray_start_head_cluster(tmp_path: Path) -> None:
    host = make_host(tmp_path, {"one": [step("w", "write", "0")], "two": [step("w", "write", "0")]})
    port = free_port()
    temp = tempfile.mkdtemp(prefix="tvsb-ray-")  # short: Ray's unix sockets live below it
    log = (tmp_path / "ray-start.log").open("wb")  # closed in the finally below
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            "--block",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:  # the GCS port answers once the head is up
            assert head.poll() is None, (tmp_path / "ray-start.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sandbox",
                "pipeline",
                "--root",
                str(host),
                "--profile",
                "meta",
                "--run-id",
                RUN_ID,
                "--address",
                f"127.0.0.1:{port}",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["status"] == "succeeded" and [s["id"] for s in doc["sleeves"]] == ["one", "two"]
        assert (host / RUNS / RUN_ID / "one" / "data" / "one.txt").read_text() == "one"
        # the sleeves ran on that cluster: its workers logged in its session folder
        assert list(Path(temp).glob("session_*/logs/worker-*"))
    finally:
        stop(head, temp)
        log.close()
        leftover = ours(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert leftover == []
