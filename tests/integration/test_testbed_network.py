"""The test bed's engine networks for real: it runs in a network namespace of its own, with a docker bridge,
iptables and NAT (inter-container traffic off on the default bridge), and a veth pair to the host namespace as
the outside. Straight on the engine, with real sockets."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from tests.conftest import TEST_IMAGE, Testbed, in_netns

# Serves its own hostname on port 80.
HTTPD = ["sh", "-c", "mkdir -p /www && hostname >/www/index.html && exec httpd -f -p 80 -h /www"]


def http_get(host: str, timeout_seconds: int = 3) -> str:
    """A shell command asking host:80 for / with busybox nc (the image's busybox wget crashes)."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout_seconds} {host} 80"


class Made:
    """The containers and networks a test makes, removed at teardown."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.containers: list[Container] = []
        self.networks: list[Any] = []

    def run(self, role: str, command: list[str], **kwargs: Any) -> Container:
        name = f"tbnet-{role}-{uuid.uuid4().hex[:8]}"
        container = self.engine.containers.run(TEST_IMAGE, command, name=name, hostname=name, detach=True, **kwargs)
        self.containers.append(container)
        container.reload()
        return container

    def network(self) -> Any:
        network = self.engine.networks.create(f"tbnet-lan-{uuid.uuid4().hex[:8]}", driver="bridge")
        self.networks.append(network)
        return network

    def remove(self) -> None:
        for container in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in self.networks:
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()


@pytest.fixture
def made(engine: docker.DockerClient) -> Iterator[Made]:
    made = Made(engine)
    try:
        yield made
    finally:
        made.remove()


def address(container: Container, network: str) -> str:
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def finished(container: Container, timeout: float = 60) -> tuple[int, str]:
    """The container's exit code and its output, once it has exited."""
    status = container.wait(timeout=timeout)
    return int(status["StatusCode"]), container.logs().decode()


def served_in_netns(testbed: Testbed, url: str, timeout: float = 20) -> str:
    """What url answers to alice in the namespace, asked again until the server is up."""
    deadline = time.monotonic() + timeout
    while True:
        fetched = in_netns(testbed, "alice", ["curl", "-fsS", "--max-time", "2", url])
        if fetched.returncode == 0 or time.monotonic() > deadline:
            assert fetched.returncode == 0, f"{url} from the namespace: {fetched.stderr}"
            return fetched.stdout.strip()
        time.sleep(0.2)


def test_the_engine_runs_in_its_namespace_with_icc_off_and_nat(testbed: Testbed,
                                                                 engine: docker.DockerClient) -> None:
    pid = (testbed.dir / "docker" / "dockerd.pid").read_text().strip()
    theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat(f"/run/netns/{testbed.netns}")
    assert (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
    assert os.stat("/proc/self/ns/net").st_ino != ours.st_ino  # the tests themselves run in the host's
    options = engine.networks.get("bridge").attrs["Options"]
    assert options["com.docker.network.bridge.enable_icc"] == "false"
    assert options["com.docker.network.bridge.enable_ip_masquerade"] == "true"


def test_default_bridge_gives_an_address_but_no_way_to_a_neighbour(testbed: Testbed, engine: docker.DockerClient,
                                                                     made: Made) -> None:
    server = made.run("server", HTTPD)
    ip = address(server, "bridge")
    subnet = engine.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    assert served_in_netns(testbed, f"http://{ip}/") == server.name  # it serves: the namespace reaches it
    neighbour = made.run("neighbour", ["sh", "-c", http_get(ip)])
    code, output = finished(neighbour)
    assert code != 0 and server.name not in output
    assert "nc: timed out" in output, output  # dropped (icc off), not refused


def test_containers_on_a_user_defined_network_reach_each_other_by_name(made: Made) -> None:
    network = made.network()
    server = made.run("server", HTTPD, network=network.name)
    network.reload()
    subnet = network.attrs["IPAM"]["Config"][0]["Subnet"]
    assert ipaddress.ip_address(address(server, network.name)) in ipaddress.ip_network(subnet)
    ask = f"for i in $(seq 40); do {http_get(server.name, 2)} && exit 0; sleep 0.25; done; exit 1"
    client = made.run("client", ["sh", "-c", ask], network=network.name)
    code, output = finished(client)
    assert code == 0, output
    assert "HTTP/1.1 200 OK" in output.splitlines() and output.splitlines()[-1] == server.name, output


def test_a_container_reaches_the_outside_through_nat(testbed: Testbed, made: Made) -> None:
    outside = testbed.env["DS01_TESTBED_HOST_ADDR"]  # the host end of the veth, in the host namespace
    route = subprocess.run(["ip", "-j", "-n", testbed.netns, "route", "get", outside], capture_output=True,
                           text=True, check=True).stdout
    namespace_end = json.loads(route)[0]["prefsrc"]
    with socket.create_server((outside, 0)) as listener:
        listener.settimeout(30)
        port = listener.getsockname()[1]
        client = made.run("client", ["sh", "-c", f"echo hello-outside | nc {outside} {port}"])
        connection, (peer, _) = listener.accept()
        with connection:
            connection.settimeout(30)
            heard = b""
            while not heard.endswith(b"\n"):
                chunk = connection.recv(100)
                assert chunk, heard
                heard += chunk
            connection.sendall(b"hello-container\n")
    assert heard == b"hello-outside\n"
    assert peer == namespace_end != address(client, "bridge")  # masqueraded on the way out
    code, output = finished(client)
    assert code == 0 and output == "hello-container\n", (code, output)


def test_a_port_published_on_loopback_is_reached_in_the_namespace_only(testbed: Testbed, made: Made) -> None:
    server = made.run("server", HTTPD, ports={"80/tcp": ("127.0.0.1", None)})
    port = int(server.ports["80/tcp"][0]["HostPort"])
    assert served_in_netns(testbed, f"http://127.0.0.1:{port}/") == server.name
    with pytest.raises(ConnectionRefusedError):  # the host's own loopback has no such port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
