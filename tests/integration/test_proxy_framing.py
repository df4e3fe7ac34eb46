"""The proxy's HTTP framing on the real engine, as alice: requests smuggled in a long chunk line, in a chunk
extension and in a folded header; the per-user connection cap; the header timeout; and the docker CLI's streams
(attach with stdin, logs -f, exec -i, cp) through the proxy's own framing. Each smuggling test asserts what the
engine ended up with."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.test_proxy_surface import send_raw

HEADER_TIMEOUT_SECONDS = 2
MAX_CONNECTIONS = 8  # the docker CLI itself holds several at once (exec -i: its stream, start, inspect)
SMUGGLED_BODY = json.dumps({"Image": TEST_IMAGE, "HostConfig": {"Privileged": True}})
SMUGGLED = (f"POST /v1.41/containers/create?name=smuggled HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(SMUGGLED_BODY)}\r\n\r\n{SMUGGLED_BODY}").encode()

HOLDER = r"""
import http.client, socket, sys

class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(self.unix_path)

held = []
for _ in range(int(sys.argv[2])):
    connection = Unix(sys.argv[1])
    connection.request("GET", "/_ping")
    answer = connection.getresponse()
    print(answer.status, answer.read().decode(), flush=True)
    held.append(connection)
sys.stdin.read()
"""

HALF_A_HEAD = r"""
import socket, sys, time
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
began = time.monotonic()
sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Slow: ")
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
print(round(time.monotonic() - began, 1))
print(answer.decode())
"""


@pytest.fixture(scope="module")
def framed(testbed: Testbed) -> Iterator[ProxyHandle]:
    """A proxy of this module's own, with a short header timeout and a small connection cap."""
    handle = start_proxy(testbed, Path(testbed.dir) / "proxy-tests" / uuid.uuid4().hex[:8])
    with handle.config.open("a") as config:  # read again on the next connection
        config.write(f"proxy:\n  header_timeout: {HEADER_TIMEOUT_SECONDS}s\n"
                     f"  max_connections_per_user: {MAX_CONNECTIONS}\n")
    client = docker.DockerClient(base_url=testbed.docker_host)
    try:
        assert send_raw(handle, "alice", b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n").startswith("HTTP/1.1 200")
        yield handle
    finally:
        stop_proxy(handle, client)
        client.close()


@pytest.fixture
def target(framed: ProxyHandle, engine: docker.DockerClient) -> Iterator[str]:
    """A container of alice's, to send starts to; and no smuggled container left whatever happens."""
    name = f"framing-{uuid.uuid4().hex[:6]}"
    created = framed.as_user("alice", "docker", "create", "--name", name, TEST_IMAGE, "true")
    assert created.returncode == 0, created.stderr
    try:
        yield name
    finally:
        smuggled = engine.containers.list(all=True, filters={"name": "smuggled"})
        for container in [*smuggled, engine.containers.get(name)]:
            container.remove(force=True)


def start_with(name: str, headers: bytes, body: bytes) -> bytes:
    return f"POST /v1.41/containers/{name}/start HTTP/1.1\r\nHost: d\r\n".encode() + headers + b"\r\n" + body


def assert_nothing_smuggled(engine: docker.DockerClient) -> None:
    assert not engine.containers.list(all=True, filters={"name": "smuggled"})
    assert not [c for c in engine.containers.list(all=True) if c.attrs["HostConfig"]["Privileged"]]


@pytest.mark.parametrize("line", [b"0;" + b"x" * 2000, b"0 ;" + b"y" * 1100, b"0;" + b"z;" * 1500],
                         ids=["extension-2000", "space-1100", "many-3000"])
def test_a_chunk_line_between_the_old_limits_smuggles_nothing(framed: ProxyHandle, engine: docker.DockerClient,
                                                              target: str, line: bytes) -> None:
    # Between the old hand-written reader's 1,024 bytes and the engine's 4,096.
    answer = send_raw(framed, "alice", start_with(target, b"Transfer-Encoding: chunked\r\n",
                                                  line + b"\r\n\r\n" + SMUGGLED))
    assert answer.startswith("HTTP/1.1 400") and "chunk" in answer, answer
    assert "HTTP/1.1 201" not in answer
    assert_nothing_smuggled(engine)


@pytest.mark.parametrize("body", [
    b"0;ext=1\r\n\r\n" + SMUGGLED,  # dropped; what follows is a request of its own, checked like any
    b'0;x="\r\n\r\n' + SMUGGLED,  # a quoted string that never ends on its line
    b"0;\n" + SMUGGLED,  # a bare LF inside the chunk line
], ids=["plain", "open-quote", "bare-lf"])
def test_a_chunk_extension_smuggles_nothing(framed: ProxyHandle, engine: docker.DockerClient, target: str,
                                            body: bytes) -> None:
    answer = send_raw(framed, "alice", start_with(target, b"Transfer-Encoding: chunked\r\n", body))
    assert "HTTP/1.1 201" not in answer, answer
    if answer.startswith("HTTP/1.1 204"):  # the start went through; the create after it was checked and refused
        assert "HTTP/1.1 403" in answer and "privileged containers are not allowed" in answer, answer
    else:
        assert answer.startswith("HTTP/1.1 400") and "chunk" in answer, answer
    assert_nothing_smuggled(engine)


@pytest.mark.parametrize("headers", [
    b"Transfer-Encoding:\r\n chunked\r\n",
    b"Content-Length:\r\n\t" + str(len(SMUGGLED)).encode() + b"\r\n",
    b"X-Note: a\r\n Transfer-Encoding: chunked\r\n",
], ids=["folded-transfer-encoding", "folded-content-length", "folded-into-another"])
def test_an_obsolete_line_folding_smuggles_nothing(framed: ProxyHandle, engine: docker.DockerClient, target: str,
                                                   headers: bytes) -> None:
    answer = send_raw(framed, "alice", start_with(target, headers, b"0\r\n\r\n" + SMUGGLED))
    assert answer.startswith("HTTP/1.1 400") and "obsolete line folding" in answer, answer
    assert "HTTP/1.1 201" not in answer and "HTTP/1.1 204" not in answer
    assert_nothing_smuggled(engine)
    assert engine.containers.get(target).status == "created"  # the start itself was refused too


def test_upgrade_is_refused_on_a_request_that_is_not_attach_or_exec(framed: ProxyHandle, engine: docker.DockerClient,
                                                                    target: str) -> None:
    answer = send_raw(framed, "alice", start_with(target, b"Connection: Upgrade\r\nUpgrade: tcp\r\n", b""))
    assert answer.startswith("HTTP/1.1 400") and "only attach" in answer, answer
    assert engine.containers.get(target).status == "created"


def popen_as(proxy: ProxyHandle, user: str, *argv: str) -> subprocess.Popen[str]:
    passed = [f"{k}={v}" for k, v in proxy.env.items() if k.startswith(("DS01_", "DOCKER_HOST", "PATH"))]
    return subprocess.Popen(["runuser", "-u", user, "--", "env", *passed, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def script() -> Iterator[Callable[[str], str]]:
    """Writes a script the test users can run; removes it afterwards."""
    made: list[Path] = []

    def write(text: str) -> str:
        path = Path(f"/tmp/ds01-framing-{uuid.uuid4().hex}.py")
        path.write_text(text)
        path.chmod(0o644)
        made.append(path)
        return str(path)

    yield write
    for path in made:
        path.unlink()


def ping(proxy: ProxyHandle, user: str) -> str:
    return send_raw(proxy, user, b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")


def test_connections_are_capped_per_user_and_others_still_connect(framed: ProxyHandle,
                                                                   script: Callable[[str], str]) -> None:
    holder = popen_as(framed, "alice", sys.executable, script(HOLDER), str(framed.socket),
                      str(MAX_CONNECTIONS + 1))
    try:
        assert holder.stdout is not None
        lines = [holder.stdout.readline().strip() for _ in range(MAX_CONNECTIONS + 1)]
        assert lines[:MAX_CONNECTIONS] == ["200 OK"] * MAX_CONNECTIONS, (lines, holder.stderr)
        status, _, body = lines[MAX_CONNECTIONS].partition(" ")
        assert status == "429", lines
        assert f"you have {MAX_CONNECTIONS} connections open" in json.loads(body)["message"]
        assert ping(framed, "bob").startswith("HTTP/1.1 200")
        assert ping(framed, "alice").startswith("HTTP/1.1 429")
    finally:
        holder.communicate("", timeout=30)
    deadline = time.monotonic() + 10
    while not ping(framed, "alice").startswith("HTTP/1.1 200"):  # her connections are given back as they close
        assert time.monotonic() < deadline
        time.sleep(0.2)
    refused = [e for e in framed.events() if e["type"] == "proxy.deny" and e["details"]["reason"] ==
               "too_many_connections"]
    assert refused and {e["user"] for e in refused} == {"alice"}


def test_half_a_head_is_cut_at_the_header_timeout(framed: ProxyHandle, script: Callable[[str], str]) -> None:
    result = framed.as_user("alice", sys.executable, script(HALF_A_HEAD), str(framed.socket), timeout=30)
    seconds, _, answer = result.stdout.partition("\n")
    assert HEADER_TIMEOUT_SECONDS - 0.2 <= float(seconds) <= HEADER_TIMEOUT_SECONDS + 3, result.stdout
    assert answer.startswith("HTTP/1.1 408") and f"within {HEADER_TIMEOUT_SECONDS}s" in answer, answer


def test_the_docker_clis_streams_go_through_the_proxys_framing(framed: ProxyHandle, scratch: Path) -> None:
    name = f"streams-{uuid.uuid4().hex[:6]}"
    attached = framed.as_user("alice", "docker", "run", "-i", "--rm", TEST_IMAGE, "cat", stdin="typed in\n")
    assert (attached.returncode, attached.stdout) == (0, "typed in\n"), attached.stderr
    started = framed.as_user("alice", "docker", "run", "-d", "--name", name, TEST_IMAGE, "sh", "-c",
                             "echo first; sleep 60")
    assert started.returncode == 0, started.stderr
    follow = popen_as(framed, "alice", "docker", "logs", "-f", name)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "first\n"  # while the container runs: streamed, not buffered
        assert follow.poll() is None
        execd = framed.as_user("alice", "docker", "exec", "-i", name, "cat", stdin="into exec\n")
        assert (execd.returncode, execd.stdout) == (0, "into exec\n"), execd.stderr
        (scratch / "in.txt").write_text("copied " * 20000)
        copied_in = framed.as_user("alice", "docker", "cp", str(scratch / "in.txt"), f"{name}:/tmp/in.txt")
        assert copied_in.returncode == 0, copied_in.stderr
        back = framed.as_user("alice", "docker", "exec", name, "wc", "-c", "/tmp/in.txt")
        assert back.stdout.split()[0] == str(len("copied " * 20000)), back.stdout + back.stderr
    finally:
        follow.kill()
        follow.communicate()
        framed.as_user("alice", "docker", "rm", "-f", name)
