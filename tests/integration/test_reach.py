"""Owner-only reach, with real sockets on the namespaced test bed: who reaches a container (its address, its port
on 127.0.0.1) from the host, from other containers and through the engine's own fetches, what containers reach on
the host, and the rules after a crash of the proxy. Each test runs its own proxy in the engine's namespace (two
would share one set of rules)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker

from ds01.config import HostService
from ds01.proxy import reach
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, in_netns, start_proxy, stop_proxy
from tests.integration.test_proxy import docker_as

# Serves "hi from NAME" on port 80, as the caller's uid (the container runs as its owner).
HTTPD = ("sh", "-c", 'mkdir -p /tmp/www && echo "hi from $(hostname)" >/tmp/www/index.html && '
                     "exec httpd -f -p 80 -h /tmp/www")
WAIT_SECONDS = 20.0


def chain(testbed: Testbed, name: str, table: str = "filter") -> list[str]:
    """`iptables -t TABLE -S NAME` in the engine's namespace, without its -N line."""
    shown = subprocess.run(["nsenter", f"--net=/run/netns/{testbed.netns}", "iptables", "-t", table, "-S", name],
                           capture_output=True, text=True, check=True).stdout
    return [line for line in shown.splitlines() if not line.startswith("-N ")]


def filter_rules(testbed: Testbed) -> str:
    """Every rule of the filter table in the engine's namespace."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{testbed.netns}", "iptables", "-S"],
                          capture_output=True, text=True, check=True).stdout


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_SECONDS:.0f} s for {what}"
        time.sleep(0.1)


def implied(testbed: Testbed, engine: docker.DockerClient, services: tuple[HostService, ...] = ()
            ) -> reach.Ruleset:
    """The rules the engine's state implies now, from the same answers the proxy reads."""
    return reach.ruleset(reach.networks(engine.api.networks()), services, testbed.env["DS01_TESTBED_ENGINE_CGROUP"])


def serve(proxy: ProxyHandle, engine: docker.DockerClient, user: str, *publish: str) -> Any:
    """A web server of `user`'s, made through the proxy with the docker CLI; the engine's view of it."""
    name = f"reach-{user}-{uuid.uuid4().hex[:6]}"
    made = docker_as(proxy, user, "run", "-d", "--name", name, "--hostname", name, *publish, TEST_IMAGE, *HTTPD)
    assert made.returncode == 0, made.stderr
    container = engine.containers.get(name)
    assert container.attrs["HostConfig"]["NetworkMode"] == f"ds01-{user}"
    return container


def address(container: Any) -> str:
    container.reload()
    return str(next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"])


def loopback_port(container: Any) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])


def fetch(testbed: Testbed, user: str, url: str) -> subprocess.CompletedProcess[str]:
    """`user` asks url from a process in the engine's namespace, as a host process would."""
    fetched = in_netns(testbed, user, ["curl", "-sS", "--max-time", "3", url])
    print(f"{user}$ curl {url} -> exit {fetched.returncode}: {(fetched.stdout + fetched.stderr).strip()}")
    return fetched


def served_to(testbed: Testbed, user: str, url: str) -> str:
    """What url answers `user`, asked again while the server starts."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (fetched := fetch(testbed, user, url)).returncode != 0:
        assert time.monotonic() < deadline, fetched.stderr
        time.sleep(0.2)
    return fetched.stdout.strip()


def refused_to(testbed: Testbed, user: str, url: str) -> None:
    fetched = fetch(testbed, user, url)
    assert fetched.returncode == 7 and "Couldn't connect to server" in fetched.stderr, fetched  # refused at once


def ask_from_container(proxy: ProxyHandle, user: str, host: str, port: int, tries: int) -> tuple[int, str, str]:
    """`user`'s container (through the proxy, so on ds01-USER) asks host:port for / with busybox nc: its exit
    code, what it heard, and what nc said (after the proxy's note on how it runs)."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"
    script = f"for i in $(seq {tries}); do {request} && exit 0; sleep 0.25; done; exit 1"
    ran = docker_as(proxy, user, "run", "--rm", TEST_IMAGE, "sh", "-c", script)
    said = "\n".join(line for line in ran.stderr.splitlines() if not line.startswith("WARNING: ds01: runs as"))
    print(f"{user}'s container$ nc {host} {port} -> exit {ran.returncode}: {(ran.stdout + said).strip()}")
    return ran.returncode, ran.stdout, said


def test_another_users_container_cannot_reach_a_container_the_owners_other_can(
        own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    server = serve(own_proxy, engine, "alice")
    ip = address(server)
    code, heard, said = ask_from_container(own_proxy, "alice", ip, 80, tries=40)
    assert code == 0 and heard.splitlines()[0] == "HTTP/1.1 200 OK", said
    assert heard.splitlines()[-1] == f"hi from {server.name}"
    code, heard, said = ask_from_container(own_proxy, "bob", ip, 80, tries=1)
    assert code != 0 and heard == "" and said == "nc: timed out", said  # dropped between the users' bridges


def test_a_published_port_and_a_container_address_answer_their_owner_and_root_only(
        testbed: Testbed, own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    server = serve(own_proxy, engine, "alice", "-p", "127.0.0.1::80")
    port, ip = loopback_port(server), address(server)
    for url in (f"http://127.0.0.1:{port}/", f"http://{ip}/"):
        assert served_to(testbed, "alice", url) == f"hi from {server.name}"
        refused_to(testbed, "carol", url)
        assert served_to(testbed, "root", url) == f"hi from {server.name}"
    refused_to(testbed, "bob", f"http://{ip}/")


def test_what_a_user_makes_the_engine_fetch_does_not_reach_another_users_container(
        testbed: Testbed, own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    server = serve(own_proxy, engine, "alice", "-p", "127.0.0.1::80")
    port, ip = loopback_port(server), address(server)
    assert served_to(testbed, "alice", f"http://127.0.0.1:{port}/") == f"hi from {server.name}"
    for registry in (f"127.0.0.1:{port}", f"{ip}:80"):  # a "registry" the engine would fetch from, as root
        pulled = docker_as(own_proxy, "carol", "pull", f"{registry}/x:latest")
        print(f"carol$ docker pull {registry}/x:latest -> exit {pulled.returncode}: {pulled.stderr.strip()}")
        assert pulled.returncode != 0 and "connect: connection refused" in pulled.stderr, pulled.stderr
        assert f"hi from {server.name}" not in pulled.stderr
    logged = server.logs(stdout=True, stderr=True).decode()
    assert "/v2/" not in logged, logged  # the server never heard the engine


def test_after_a_kill_9_the_restarted_proxy_puts_exactly_the_implied_rules_back(
        testbed: Testbed, engine: docker.DockerClient) -> None:
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8])
    try:
        kept = serve(handle, engine, "alice", "-p", "127.0.0.1::80")
        made = docker_as(handle, "alice", "network", "create", f"proj-{uuid.uuid4().hex[:6]}")
        assert made.returncode == 0, made.stderr
        gone = engine.networks.get(made.stdout.strip())
        gone_subnet = str(gone.attrs["IPAM"]["Config"][0]["Subnet"])
        wait_for("the networks' rules", lambda: chain(testbed, "DS01-REACH") == list(implied(testbed, engine).reach))
        handle.process.kill()
        handle.process.wait()
        gone.remove()  # while no proxy watches
        stale = chain(testbed, "DS01-REACH")
        assert any(gone_subnet in rule for rule in stale) and stale != list(implied(testbed, engine).reach)
        # Made while no proxy ran: a ds01 network no rule knows yet; no one but root reaches it.
        lab = engine.networks.create(f"ds01-lab-{uuid.uuid4().hex[:6]}", driver="bridge",
                                     labels={"ds01.user": "alice", "ds01.uid": "1001"})
        lab.reload()
        lab_subnet = str(lab.attrs["IPAM"]["Config"][0]["Subnet"])
        stray = engine.containers.run(TEST_IMAGE, list(HTTPD), detach=True, network=lab.name, user="1001:1001",
                                      labels={"ds01.user": "alice", "ds01.uid": "1001"}, name=f"stray-{lab.name}")
        stray_url = f"http://{address(stray)}/"
        assert served_to(testbed, "root", stray_url).startswith("hi from")
        refused_to(testbed, "alice", stray_url)  # fail closed: a bridge made since the rules were written
        refused_to(testbed, "carol", stray_url)

        handle.socket.unlink()  # the killed proxy's; the new one makes its own
        handle = start_proxy(testbed, handle.root)
        assert chain(testbed, "DS01-REACH") == list(implied(testbed, engine).reach)  # before it served anything
        assert chain(testbed, "DS01-HOST") == list(implied(testbed, engine).host)
        assert chain(testbed, "DS01-FORWARD") == list(implied(testbed, engine).forward)
        assert chain(testbed, "DS01-LOOPBACK", "raw") == list(reach.LOOPBACK_RULES)
        now = chain(testbed, "DS01-REACH")
        assert any(f"-d {lab_subnet} -m owner --uid-owner 1001 -j RETURN" in rule for rule in now)
        assert not any(gone_subnet in rule for rule in now)
        assert served_to(testbed, "alice", stray_url).startswith("hi from")
        refused_to(testbed, "carol", stray_url)
        kept_url = f"http://127.0.0.1:{loopback_port(kept)}/"
        assert served_to(testbed, "alice", kept_url) == f"hi from {kept.name}"
        refused_to(testbed, "carol", kept_url)

        kept_ip = address(kept)
        removed = docker_as(handle, "alice", "rm", "-f", kept.name)  # a container's rules are its network's
        assert removed.returncode == 0, removed.stderr
        assert chain(testbed, "DS01-REACH") == now and not any(kept_ip in rule for rule in now)
        stray.remove(force=True)
        lab.remove()
        wait_for("the removed network's rules to go",
                 lambda: chain(testbed, "DS01-REACH") == list(implied(testbed, engine).reach))
        assert not any(lab_subnet in rule for rule in chain(testbed, "DS01-REACH"))
    finally:
        stop_proxy(handle, engine)


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def neighbour_syn(testbed: Testbed, destination: str, port: int) -> bool:
    """A TCP SYN to destination:port as a machine on the server's network would send it: an Ethernet frame from the
    host end of the test bed's veth (the engine's outside) to the namespace's eth0, whatever its IP destination.
    Whether a SYN-ACK came back within 3 s, that is, whether it reached a listener."""
    source = testbed.env["DS01_TESTBED_HOST_ADDR"]
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    interface = next(line.split()[1] for line in shown.splitlines() if f" {source}/" in line)
    server_mac = subprocess.run(["ip", "netns", "exec", testbed.netns, "cat", "/sys/class/net/eth0/address"],
                                capture_output=True, text=True, check=True).stdout.strip()
    source_port = 40000 + uuid.uuid4().int % 20000
    segment = struct.pack("!HHIIBBHHH", source_port, port, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!BBH", 0, 6, len(segment))
    segment = segment[:16] + struct.pack("!H", _checksum(pseudo + segment)) + segment[18:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0, 64, 6, 0, socket.inet_aton(source),
                         socket.inet_aton(destination))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)) as raw:
        raw.bind((interface, 0))
        raw.settimeout(0.2)
        raw.send(bytes.fromhex(server_mac.replace(":", "")) + raw.getsockname()[4] + b"\x08\x00" + header + segment)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                frame = raw.recv(2048)
            except TimeoutError:
                continue
            if frame[23] == 6 and struct.unpack("!H", frame[36:38])[0] == source_port:
                return bool(frame[47] & 0x12 == 0x12)
    return False


def test_a_machine_on_the_network_reaches_no_published_port_nor_container(
        testbed: Testbed, own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    server = serve(own_proxy, engine, "alice", "-p", "127.0.0.1::80")
    port, ip = loopback_port(server), address(server)
    assert served_to(testbed, "alice", f"http://127.0.0.1:{port}/") == f"hi from {server.name}"
    control = 20000 + uuid.uuid4().int % 10000
    with host_listener(testbed, control):  # the tool works: a service on the server's own address answers
        # The namespace's own end of the veth: the host's end plus one, whichever /30 the test bed was given.
        server_address = str(ipaddress.ip_address(testbed.env["DS01_TESTBED_HOST_ADDR"]) + 1)
        assert neighbour_syn(testbed, server_address, control)
    for destination, to_port in (("127.0.0.1", port), (ip, 80)):
        reached = neighbour_syn(testbed, destination, to_port)
        print(f"neighbour SYN -> {destination}:{to_port}: {'SYN-ACK' if reached else 'no answer'}")
        assert not reached
    assert "GET" not in server.logs().decode()


UDP_ECHO = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('', 81))\n"
            "while True:\n    data, peer = s.recvfrom(64)\n    print(data.decode(), flush=True)\n"
            "    s.sendto(b'pong ' + data, peer)\n")
UDP_ASK = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('', 45123))\ns.settimeout(2)\n"
           "try:\n    s.sendto(sys.argv[2].encode(), (sys.argv[1], 81))\n    print(s.recv(64).decode())\n"
           "except OSError as exc:\n    print('refused', exc)\n")


def test_a_udp_flow_of_the_owners_is_no_way_in_for_another_user(
        testbed: Testbed, own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    """The kernel keeps a UDP flow's entry after its socket closes; a user who binds the same source port next
    must still be refused. The echo server is the host's python in alice's container, made on the engine."""
    assert docker_as(own_proxy, "alice", "run", "--rm", TEST_IMAGE, "true").returncode == 0  # makes ds01-alice
    libraries = {"/usr": {"bind": "/usr", "mode": "ro"}, "/usr/lib": {"bind": "/lib", "mode": "ro"},
                 "/usr/lib64": {"bind": "/lib64", "mode": "ro"}}
    echo = engine.containers.run(TEST_IMAGE, ["/usr/bin/python3", "-c", UDP_ECHO], detach=True, network="ds01-alice",
                                 user="1001:1001", labels={"ds01.user": "alice", "ds01.uid": "1001"},
                                 volumes=libraries, name=f"udp-echo-{uuid.uuid4().hex[:6]}")
    ip = address(echo)
    deadline = time.monotonic() + WAIT_SECONDS
    while not (alices := in_netns(testbed, "alice", ["python3", "-c", UDP_ASK, ip, "alice"])).stdout.startswith(
            "pong"):
        assert time.monotonic() < deadline, alices
        time.sleep(0.3)
    carols = in_netns(testbed, "carol", ["python3", "-c", UDP_ASK, ip, "carol"])  # alice's flow is still tracked
    print(f"alice from port 45123: {alices.stdout.strip()}; carol from the same port next: {carols.stdout.strip()}")
    assert carols.stdout.startswith("refused") and "carol" not in echo.logs().decode(), carols


@contextlib.contextmanager
def host_listener(testbed: Testbed, port: int) -> Iterator[None]:
    """A service of the host's: root's listener on every address of the engine's namespace."""
    listener = subprocess.Popen(["nsenter", f"--net=/run/netns/{testbed.netns}", "busybox", "nc", "-ll", "-p",
                                 str(port), "-e", "echo", "host service"], stdout=subprocess.DEVNULL)
    try:
        wait_for("the host's listener", lambda: "host service" in subprocess.run(
            ["nsenter", f"--net=/run/netns/{testbed.netns}", "busybox", "nc", "-w", "2", "127.0.0.1", str(port)],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL).stdout)
        yield
    finally:
        listener.kill()
        listener.wait()


def test_a_container_reaches_a_host_service_on_its_gateway_only_when_listed(
        testbed: Testbed, own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    port = 20000 + uuid.uuid4().int % 10000
    assert docker_as(own_proxy, "alice", "run", "--rm", TEST_IMAGE, "true").returncode == 0  # makes ds01-alice
    gateway = engine.networks.get("ds01-alice").attrs["IPAM"]["Config"][0]["Gateway"]
    with host_listener(testbed, port):
        code, heard, said = ask_from_container(own_proxy, "alice", gateway, port, tries=1)
        assert code != 0 and heard == "" and said == f"nc: can't connect to remote host ({gateway}): Connection refused"
        own_proxy.config.write_text(own_proxy.config.read_text() + f"networks:\n  host_services: [{port}/tcp]\n")
        wait_for("the listed service's rule", lambda: f"-A DS01-HOST -p tcp -m tcp --dport {port} -j RETURN"
                 in chain(testbed, "DS01-HOST"))
        code, heard, said = ask_from_container(own_proxy, "alice", gateway, port, tries=1)
        assert code == 0 and heard == "host service\n", said
        assert chain(testbed, "DS01-HOST") == list(implied(testbed, engine, (HostService("", port, "tcp"),)).host)


def proxy_run(testbed: Testbed, root: Path, *prefix: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """`ds01 proxy` with its own directories under root, expected to stop at start-up."""
    for sub in ("etc", "state", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "etc" / "resource-limits.yaml"
    # A service no rule lists yet, so that the rules must be written.
    config.write_text(Path(testbed.env["DS01_CONFIG"]).read_text() + "networks:\n  host_services: [1/udp]\n")
    env = {**os.environ, "DS01_CONFIG": str(config), "DS01_STATE_DIR": str(root / "state"),
           "DS01_LOG_DIR": str(root / "log"), "DS01_RUN_DIR": str(root / "run"), "PATH": path or os.environ["PATH"]}
    return subprocess.run([*prefix, str(Path(sys.executable).parent / "ds01"), "proxy", "--upstream",
                           testbed.docker_host], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_proxy_outside_the_engines_namespace_refuses_to_start_and_touches_no_rule(
        testbed: Testbed, tmp_path: Path) -> None:
    ran = proxy_run(testbed, tmp_path)  # in the host's namespace, like these tests themselves
    assert ran.returncode == 1, ran
    assert "this proxy runs outside the engine's network namespace (none of the engine's bridges" in ran.stderr
    assert "nsenter --net=/run/netns/" in ran.stderr and not (tmp_path / "run" / "docker.sock").exists()


def test_rules_that_cannot_be_written_stop_the_proxy_at_start_up(testbed: Testbed, tmp_path: Path) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    restore = broken / "iptables-restore"
    restore.write_text("#!/bin/sh\necho 'iptables-restore: line 4 failed' >&2\nexit 1\n")
    restore.chmod(0o755)
    before = filter_rules(testbed)
    ran = proxy_run(testbed, tmp_path, "nsenter", f"--net=/run/netns/{testbed.netns}",
                    path=f"{broken}:{os.environ['PATH']}")
    assert ran.returncode == 1, ran
    assert "the owner-only reach rules could not be put in place, so the proxy does not start" in ran.stderr
    assert "iptables-restore: line 4 failed" in ran.stderr and not (tmp_path / "run" / "docker.sock").exists()
    failed = [json.loads(line) for line in (tmp_path / "log" / "events.jsonl").read_text().splitlines()]
    assert [(e["type"], e["details"]["trigger"]) for e in failed if e["type"] == "proxy.reach_failed"] == [
        ("proxy.reach_failed", "start-up")]
    assert filter_rules(testbed) == before  # nothing half written
