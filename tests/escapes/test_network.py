"""The review's Ray escape: a step reaching the Ray cluster of its node.

A sandboxed step had the machine's network: it read the cluster's auth token (``~/.ray``, Ray's
session folder), connected to the GCS on this machine, submitted a task -- and that task, in an
unsandboxed Ray worker, wrote the lakehouse; the run said "succeeded, 0 denied". Here the cluster
is emulated by what the step would touch: a TCP listener on the machine (the GCS), an abstract
unix socket, Ray's temp dir with a session, a pathname raylet socket and a token, and ``~/.ray``.
The attack runs in ``python -I -S`` through a real ``tv-sandbox run``, as root and as an
unprivileged user (see test_privilege.py). With the policy's ``[kernel] network = "host"`` the
listener is reachable again (the control: the test can fail), and the report says so.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_privilege import ESCAPED, NOBODY, REFUSED, USERS, Box

from sandbox.loader import policies_dir

ATTACK = r"""
import os, socket, sys
got = []
for path in ("{home}/.ray/auth_token", "{raytmp}/session_latest/auth_token"):
    try:
        got.append(("token", open(path).read().strip()))
    except OSError as e:
        print("token", path, e.strerror)
for family, target in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET, ("{addr}", {port})),
                       (socket.AF_UNIX, "\0{abstract}"), (socket.AF_UNIX, "{raylet}")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(target)
        s.sendall(b"submit-task write-the-lakehouse")
        got.append(("connected", repr(target), s.recv(16).decode()))
    except OSError as e:
        print("refused", repr(target), e.strerror)
for g in got:
    print("ESCAPED", *g)
sys.exit({escaped} if got else {refused})
"""


class Cluster:
    """What a Ray node offers a process on it: listeners answering ``b"gcs"``, a temp dir with a
    session, a raylet socket and a token, and ``~/.ray/auth_token``."""

    def __init__(self, box: Box) -> None:
        self.home = box.root
        self.raytmp = box.ws / "ray"  # $TMPDIR/ray: where Ray puts its temp dir when TMPDIR is set
        session = self.raytmp / "session_latest"
        (session / "sockets").mkdir(parents=True)
        (self.home / ".ray").mkdir()
        for token in (self.home / ".ray" / "auth_token", session / "auth_token"):
            token.write_text("cluster-token\n")
        self.raylet = str(session / "sockets" / "raylet")
        self.abstract = f"tvs-ray-{uuid.uuid4().hex}"
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM)]
        self.socks[0].bind(("0.0.0.0", 0))
        self.port = self.socks[0].getsockname()[1]
        for address in ("\0" + self.abstract, self.raylet):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(address)
            self.socks.append(s)
        if box.user == "unprivileged":
            for dirpath, dirnames, filenames in os.walk(box.root):
                for name in [*dirnames, *filenames]:
                    os.lchown(os.path.join(dirpath, name), NOBODY, NOBODY)
        self._stop = threading.Event()
        for s in self.socks:
            s.listen(8)
            s.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.submitted: list[bytes] = []

    def _serve(self) -> None:
        while not self._stop.is_set():
            for s in self.socks:
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(2)
                    try:
                        self.submitted.append(conn.recv(64))
                        conn.sendall(b"gcs")
                    except OSError:
                        pass

    def attack(self) -> str:
        addr = _machine_address() or "127.0.0.1"
        return (
            ATTACK.replace("{home}", str(self.home))
            .replace("{raytmp}", str(self.raytmp))
            .replace("{port}", str(self.port))
            .replace("{addr}", addr)
            .replace("{abstract}", self.abstract)
            .replace("{raylet}", self.raylet)
            .replace("{escaped}", str(ESCAPED))
            .replace("{refused}", str(REFUSED))
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def _machine_address() -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # nothing is sent for a datagram connect
        addr: str = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


@pytest.fixture(params=USERS)
def node(request: pytest.FixtureRequest) -> Iterator[tuple[Box, Cluster]]:
    box = Box(request.param)
    cluster = Cluster(box)
    try:
        yield box, cluster
    finally:
        cluster.close()
        box.close()


def test_a_step_cannot_reach_the_ray_cluster_of_its_node(node: tuple[Box, Cluster]) -> None:
    box, cluster = node
    before = box.snapshot()
    r, export, _ = box.run(cluster.attack())
    box.report(export)  # every layer on, the network namespace included (nothing in "missing")
    assert r.returncode == REFUSED, (r.returncode, r.stdout, r.stderr[-2000:])
    assert cluster.submitted == [], cluster.submitted
    lines = r.stdout.splitlines()
    assert sum(line.startswith("refused") for line in lines) == 4, r.stdout
    assert sum(line.startswith("token") for line in lines) == 2, r.stdout  # hidden: not found
    assert box.snapshot() == before


def test_network_host_in_the_policy_gives_the_step_the_machines_network(node: tuple[Box, Cluster]) -> None:
    box, cluster = node
    text = Path(policies_dir(), "production.toml").read_text() + '\n[kernel]\nnetwork = "host"\n'
    policy = box.root / "host-network.toml"
    policy.write_text(text)
    policy.chmod(0o644)
    r, export, _ = box.run(cluster.attack(), options=("--policy", str(policy)))
    assert r.returncode == ESCAPED, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "ESCAPED connected ('127.0.0.1'" in r.stdout, r.stdout
    assert b"submit-task write-the-lakehouse" in cluster.submitted
    layers = json.loads((export / "sandbox_report.json").read_text())["layers"]
    assert 'network = "host"' in layers["missing"]["network_namespace"], layers["missing"]
