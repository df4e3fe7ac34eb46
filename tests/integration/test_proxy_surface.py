"""The proxy's own surface, attacked with raw bytes: old API versions, Expect on a GPU create, names and volumes of
others (the framing itself: test_proxy_framing.py). Each test asserts what the engine ended up with."""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
import uuid
from pathlib import Path

import docker

from tests.conftest import TEST_IMAGE, ProxyHandle

RAW_CLIENT = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(sys.stdin.buffer.read())
sock.shutdown(socket.SHUT_WR)
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
sys.stdout.write(answer.decode("latin-1"))
"""


def send_raw(proxy: ProxyHandle, user: str, data: bytes) -> str:
    """Bytes to the proxy socket as `user`, exactly as given; what came back."""
    script = Path(f"/tmp/ds01-raw-{uuid.uuid4().hex}.py")
    script.write_text(RAW_CLIENT)
    script.chmod(0o644)
    try:
        result = proxy.as_user(user, sys.executable, str(script), str(proxy.socket), stdin=data.decode("latin-1"))
    finally:
        script.unlink()
    return result.stdout


def test_an_old_api_version_cannot_start_a_container_privileged(proxy: ProxyHandle,
                                                                 engine: docker.DockerClient) -> None:
    created = proxy.as_user("alice", "docker", "create", "--name", "old-api", TEST_IMAGE, "sleep", "60")
    assert created.returncode == 0, created.stderr
    try:
        host_config = json.dumps({"Privileged": True, "Binds": ["/etc:/host-etc"]}).encode()
        for version in ("v1.23", "v1.12", "v1.39"):
            answer = send_raw(proxy, "alice", f"POST /{version}/containers/old-api/start HTTP/1.1\r\nHost: d\r\n"
                              "Content-Type: application/json\r\nContent-Length: "
                              f"{len(host_config)}\r\n\r\n".encode() + host_config)
            assert answer.startswith("HTTP/1.1 400") and "speaks 1.40 to" in answer, answer
        with_body = send_raw(proxy, "alice", b"POST /v1.41/containers/old-api/start HTTP/1.1\r\nHost: d\r\n"
                             b"Content-Type: application/json\r\nContent-Length: " +
                             str(len(host_config)).encode() + b"\r\n\r\n" + host_config)
        assert with_body.startswith("HTTP/1.1 403") and "start takes no body" in with_body
        container = engine.containers.get("old-api")
        assert container.status == "created"
        assert not container.attrs["HostConfig"]["Privileged"] and not container.attrs["HostConfig"]["Binds"]
        started = proxy.as_user("alice", "docker", "start", "old-api")  # the ordinary client negotiates 1.41
        assert started.returncode == 0, started.stderr
    finally:
        engine.containers.get("old-api").remove(force=True)


def test_expect_100_continue_keeps_the_gpu_grant_of_the_created_container(proxy: ProxyHandle,
                                                                          engine: docker.DockerClient) -> None:
    body = json.dumps({"Image": TEST_IMAGE, "Cmd": ["sleep", "60"],
                       "HostConfig": {"DeviceRequests": [{"Count": 1, "Capabilities": [["gpu"]]}]}})
    created = proxy.as_user("bob", "curl", "-sS", "--unix-socket", str(proxy.socket), "-H", "Expect: 100-continue",
                            "-H", "Content-Type: application/json", "--data-binary", "@-", "-w", "\n%{http_code}",
                            "http://docker/v1.41/containers/create?name=expecting", stdin=body)
    answer, _, status = created.stdout.rpartition("\n")
    assert status == "201", created.stdout + created.stderr
    container_id = json.loads(answer)["Id"]
    try:
        [request] = engine.containers.get(container_id).attrs["HostConfig"]["DeviceRequests"]
        listed = subprocess.run([str(Path(sys.executable).parent / "ds01"), "alloc", "list", "--json"],
                                env=proxy.env, capture_output=True, text=True, check=True)
        [held] = [a for a in json.loads(listed.stdout) if a["container"] == container_id]
        assert held["slots"] == request["DeviceIDs"] and held["user"] == "bob"  # bound, not released on the 100
        odd = send_raw(proxy, "bob", b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nExpect: something\r\n\r\n")
        assert odd.startswith("HTTP/1.1 400") and "only 100-continue" in odd
    finally:
        engine.containers.get(container_id).remove(force=True)


def test_no_name_in_another_users_space_and_no_foreign_volume_by_name(proxy: ProxyHandle,
                                                                       engine: docker.DockerClient) -> None:
    bob = pwd.getpwnam("bob")
    squat = proxy.as_user("alice", "docker", "create", "--name", f"notebook._.{bob.pw_uid}", TEST_IMAGE, "true")
    assert squat.returncode != 0 and "another user's name space" in squat.stderr
    assert not engine.containers.list(all=True, filters={"name": f"notebook._.{bob.pw_uid}"})
    volume = f"bobs-{uuid.uuid4().hex[:6]}"
    assert proxy.as_user("bob", "docker", "volume", "create", volume).returncode == 0
    try:
        taken = proxy.as_user("alice", "docker", "volume", "create", volume)
        assert taken.returncode != 0 and f"the volume name {volume} is taken" in taken.stderr
        assert "Mountpoint" not in taken.stdout + taken.stderr and "/var/lib" not in taken.stdout + taken.stderr
        assert engine.volumes.get(volume).attrs["Labels"]["ds01.user"] == "bob"
        again = proxy.as_user("bob", "docker", "volume", "create", volume)  # one's own: the engine returns it
        assert again.returncode == 0, again.stderr
    finally:
        engine.volumes.get(volume).remove(force=True)
