"""A step's own network namespace: loopback only, no listener of the machine in reach (TCP or an
abstract unix socket), and Ray's folders hidden under an empty read-only tmpfs.

The step is ``python -I -S`` under a real plan (user, mount, PID and network namespaces); the
listeners are opened here, outside it. Each refusal has its control: the same plan without the
network namespace reaches the same listener, so the tests can fail.
"""

from __future__ import annotations

import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_helpers import py, run

from sandbox.kernel import KernelPlan

CONNECT = r"""
import errno, socket, sys
family, address = sys.argv[1], sys.argv[2]
if family == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    target = "\0" + address[1:] if address.startswith("@") else address
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    host, port = address.rsplit(":", 1)
    target = (host, int(port))
s.settimeout(5)
try:
    s.connect(target)
except OSError as e:
    print("refused", errno.errorcode.get(e.errno, e.errno))
    sys.exit(3)
print("connected", s.recv(16).decode())
"""

LOOPBACK = r"""
import socket
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen()
c = socket.create_connection(srv.getsockname(), timeout=5)
conn, _ = srv.accept()
conn.sendall(b"inside")
print(c.recv(16).decode())
v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
try:
    v6.bind(("::1", 0))
    print("v6", "ok")
except OSError as e:
    print("v6", e.errno)
print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]))
"""


def _plan(*, network: bool, hidden: tuple[str, ...] = ()) -> KernelPlan:
    return KernelPlan(
        namespace=True, pid_namespace=True, network_namespace=network, hidden=hidden, landlock=False
    )


class Listener:
    """A listening socket outside the step that greets each connection with ``b"outside"``."""

    def __init__(self, family: int, address: object) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def greet(self) -> int:
        """Answer the connections waiting; how many there were."""
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.sendall(b"outside")
            conn.close()
            n += 1

    def close(self) -> None:
        self.sock.close()


def _connect(plan: KernelPlan, family: str, address: str, listener: Listener) -> str:
    """Run the connect attempt in the step; the listener answers in a thread while it runs."""
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            listener.greet()
            stop.wait(0.01)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = run([sys.executable, "-I", "-S", "-c", CONNECT, family, address], plan)
    finally:
        stop.set()
        t.join()
    assert r.code in (0, 3), (r.code, r.out, r.err)
    return r.out.strip()


@pytest.fixture
def tcp() -> Iterator[tuple[Listener, int]]:
    lst = Listener(socket.AF_INET, ("0.0.0.0", 0))
    try:
        yield lst, lst.sock.getsockname()[1]
    finally:
        lst.close()


def _machine_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the one its default route leaves by)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent for a datagram connect
        addr: str = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


@pytest.mark.kernel("landlock", "mount_namespace", "user_namespaces")
def test_a_step_cannot_reach_a_tcp_listener_of_the_machine(kernel_support: object, tcp) -> None:  # type: ignore[no-untyped-def]
    listener, port = tcp
    said = _connect(_plan(network=True), "inet", f"127.0.0.1:{port}", listener)
    assert said == "refused ECONNREFUSED", said
    addr = _machine_address()
    if addr is not None:  # the machine's own address: no route out of the namespace
        said = _connect(_plan(network=True), "inet", f"{addr}:{port}", listener)
        assert said in ("refused ENETUNREACH", "refused EHOSTUNREACH"), said
    # control: the same plan without its own network namespace connects
    assert _connect(_plan(network=False), "inet", f"127.0.0.1:{port}", listener) == "connected outside"


@pytest.mark.kernel("landlock", "mount_namespace", "user_namespaces")
def test_a_step_cannot_reach_an_abstract_unix_socket_of_the_machine(kernel_support: object) -> None:
    name = f"tvs-test-{uuid.uuid4().hex}"
    listener = Listener(socket.AF_UNIX, "\0" + name)
    try:
        said = _connect(_plan(network=True), "unix", "@" + name, listener)
        assert said == "refused ECONNREFUSED", said
        assert _connect(_plan(network=False), "unix", "@" + name, listener) == "connected outside"
    finally:
        listener.close()


@pytest.mark.kernel("landlock", "mount_namespace", "user_namespaces")
def test_loopback_inside_the_step_works(kernel_support: object) -> None:
    r = py(LOOPBACK, _plan(network=True))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "inside"
    assert lines[2] == "['lo']", lines  # the namespace's only interface


@pytest.mark.kernel("landlock", "mount_namespace", "user_namespaces")
def test_a_pathname_unix_socket_is_not_cut_but_a_hidden_folder_is_empty(
    kernel_support: object, tmp_path: Path
) -> None:
    """Pathname unix sockets are files: a network namespace does not cut them (which is why the
    runner hides Ray's temp dir); under ``hidden`` the folder is empty and read-only."""
    ray = tmp_path / "ray"
    (ray / "session_1" / "sockets").mkdir(parents=True)
    (ray / "token").write_text("secret\n")
    path = str(ray / "session_1" / "sockets" / "raylet")
    listener = Listener(socket.AF_UNIX, path)
    try:
        assert _connect(_plan(network=True), "unix", path, listener) == "connected outside"
        said = _connect(_plan(network=True, hidden=(str(ray),)), "unix", path, listener)
        assert said == "refused ENOENT", said
    finally:
        listener.close()
    code = f"""
import os
print(os.listdir({str(ray)!r}))
try:
    open({str(ray / "x")!r}, "w")
except OSError as e:
    print(e.errno)
"""
    r = py(code, _plan(network=True, hidden=(str(ray), str(tmp_path / "absent"))))
    assert r.code == 0, r.err
    assert r.out.split("\n")[:2] == ["[]", "30"], r.out  # empty; EROFS
    assert (ray / "token").read_text() == "secret\n"  # the host's folder is untouched
