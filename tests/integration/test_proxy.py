"""The proxy on the real engine, called by real users through real clients: what passes and what is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01 import nvml
from ds01.config import load_config
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest
from ds01.gpus.supply import slots_from_inventory
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed

PYTHON = str(Path(sys.executable))
DOCKER = "docker"


def raw(proxy: ProxyHandle, user: str, method: str, path: str, body: Any = None,
        raw_body: str | None = None) -> tuple[int, Any]:
    """One raw API call as `user`, with curl on the proxy socket."""
    data = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    argv = ["curl", "-sS", "--path-as-is", "--unix-socket", str(proxy.socket), "-X", method, "-w", "\n%{http_code}",
            "-H", "Content-Type: application/json"]
    if data is not None:
        argv += ["--data-binary", "@-"]
    result = proxy.as_user(user, *argv, f"http://docker{path}", stdin=data)
    text, _, status = result.stdout.rpartition("\n")
    try:
        decoded = json.loads(text) if text else None
    except ValueError:
        decoded = text
    return int(status), decoded


def docker_as(proxy: ProxyHandle, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return proxy.as_user(user, DOCKER, *args)


def denial_events(proxy: ProxyHandle, user: str) -> list[dict[str, Any]]:
    return [e for e in proxy.events() if e["type"] == "proxy.deny" and e["user"] == user]


def test_docker_cli_works_through_the_proxy(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    run = docker_as(proxy, "alice", "run", "--rm", TEST_IMAGE, "echo", "hello")
    assert (run.returncode, run.stdout.strip()) == (0, "hello"), run.stderr
    started = docker_as(proxy, "alice", "run", "-d", "--name", "cli-alice", TEST_IMAGE, "sleep", "300")
    assert started.returncode == 0, started.stderr
    listed = docker_as(proxy, "alice", "ps", "--format", "{{.Names}}")
    assert "cli-alice" in listed.stdout.split()
    execd = docker_as(proxy, "alice", "exec", "cli-alice", "sh", "-c", "echo inside; exit 7")
    assert (execd.returncode, execd.stdout.strip()) == (7, "inside")
    logs = docker_as(proxy, "alice", "logs", "cli-alice")
    assert logs.returncode == 0
    labels = engine.containers.get("cli-alice").labels
    assert labels["ds01.user"] == "alice" and labels["ds01.uid"] == "1001" and labels["ds01.type"] == "docker"
    assert docker_as(proxy, "alice", "rm", "-f", "cli-alice").returncode == 0


def test_docker_py_and_testcontainers_work_as_a_user(proxy: ProxyHandle) -> None:
    script = (
        "import docker, os\n"
        "from testcontainers.core.container import DockerContainer\n"
        "from testcontainers.core.waiting_utils import wait_for_logs\n"
        "client = docker.from_env()\n"
        f"out = client.containers.run('{TEST_IMAGE}', ['echo', 'via-docker-py'], remove=True)\n"
        "print(out.decode().strip())\n"
        f"with DockerContainer('{TEST_IMAGE}').with_command('sh -c \"echo ready; sleep 30\"') as c:\n"
        "    wait_for_logs(c, 'ready', timeout=30)\n"
        "    print('testcontainers', c.exec(['echo', 'exec-ok']).output.decode().strip())\n"
    )
    result = proxy.as_user("bob", "env", "TESTCONTAINERS_RYUK_DISABLED=true", "HOME=/home/bob", PYTHON, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["via-docker-py", "testcontainers exec-ok"]


def test_gpu_request_becomes_a_grant_and_env_escape_is_stripped(
        proxy: ProxyHandle, engine: docker.DockerClient, testbed: Testbed) -> None:
    run = docker_as(proxy, "bob", "run", "-d", "--name", "gpu-bob", "--gpus", "all",
                    "-e", "NVIDIA_VISIBLE_DEVICES=all", "-e", "CUDA_VISIBLE_DEVICES=0,1,2", TEST_IMAGE, "sleep", "300")
    assert run.returncode == 0, run.stderr
    container = engine.containers.get("gpu-bob")
    requests = container.attrs["HostConfig"]["DeviceRequests"]
    granted = requests[0]["DeviceIDs"]
    assert len(granted) == 2 and all(d.startswith("GPU-") for d in granted)  # bob: 2 whole GPUs per container
    env = container.attrs["Config"]["Env"] or []
    assert not [e for e in env if e.startswith(("NVIDIA_VISIBLE_DEVICES=all", "CUDA_VISIBLE_DEVICES"))]
    assert testbed.hook_record_for(container.id)["devices"] == granted
    assert container.labels["ds01.gpu_equivalents"] == "2"
    assert container.attrs["HostConfig"]["CgroupParent"] == "/ds01/bob"
    limit = Path("/sys/fs/cgroup/memory/ds01/bob/memory.limit_in_bytes").read_text().strip()
    assert int(limit) == 256 * 2**30
    assert docker_as(proxy, "bob", "rm", "-f", "gpu-bob").returncode == 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--privileged"], "privileged"),
        (["--cap-add", "NET_ADMIN"], "capability"),
        (["--device", "/dev/null"], "devices"),
        (["--device-cgroup-rule", "c 1:3 rwm"], "devices"),
        (["--pid", "host"], "host_namespace"),
        (["--ipc", "host"], "host_namespace"),
        (["--uts", "host"], "host_namespace"),
        (["--network", "host"], "host_namespace"),
        (["--userns", "host"], "host_namespace"),
        (["--cgroupns", "host"], "host_namespace"),
        (["-v", "/etc:/host-etc"], "mount_outside_home"),
        (["--mount", "type=bind,source=/,target=/host"], "mount_outside_home"),
        (["--security-opt", "seccomp=unconfined"], "security_opt"),
        (["--security-opt", "apparmor=unconfined"], "security_opt"),
        (["--sysctl", "net.ipv4.ip_forward=1"], "sysctls"),
        (["--runtime", "nvidia"], "runtime"),
        (["--label", "ds01.user=bob"], "label_reserved"),
        (["--cgroup-parent", "/"], "cgroup_parent"),
        (["--user", "1002"], "foreign_uid"),
        (["--memory", "1t"], "limit_memory"),
        (["--pids-limit", "999999"], "limit_pids"),
    ],
)
def test_escapes_are_refused_and_logged(proxy: ProxyHandle, args: list[str], reason: str) -> None:
    before = len(denial_events(proxy, "alice"))
    result = docker_as(proxy, "alice", "run", "--rm", *args, TEST_IMAGE, "true")
    assert result.returncode != 0
    assert "ds01:" in result.stderr
    refused = denial_events(proxy, "alice")[before:]
    assert [e["details"]["reason"] for e in refused] == [reason], result.stderr


def test_docker_socket_and_symlink_mounts_are_refused(proxy: ProxyHandle, testbed: Testbed) -> None:
    link = Path("/home/alice/etc-link")
    link.unlink(missing_ok=True)
    link.symlink_to("/etc")
    try:
        tricked = docker_as(proxy, "alice", "run", "--rm", "-v", f"{link}:/x", TEST_IMAGE, "true")
        assert tricked.returncode != 0 and "really /etc" in tricked.stderr
    finally:
        link.unlink()
    socket_mount = docker_as(proxy, "alice", "run", "--rm", "-v", f"{proxy.socket}:/var/run/docker.sock", TEST_IMAGE,
                             "true")
    assert socket_mount.returncode != 0 and "socket" in socket_mount.stderr
    own = docker_as(proxy, "alice", "run", "--rm", "-v", "/home/alice:/home/alice", TEST_IMAGE, "true")
    assert own.returncode == 0, own.stderr
    data = docker_as(proxy, "alice", "run", "--rm", "-v", f"{proxy.data}:/data", TEST_IMAGE, "true")
    assert data.returncode == 0, data.stderr  # a configured data directory


def test_other_users_containers_are_invisible(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    made = docker_as(proxy, "bob", "run", "-d", "--name", "bobs-secret", TEST_IMAGE, "sleep", "300")
    assert made.returncode == 0, made.stderr
    bob_id = engine.containers.get("bobs-secret").id
    try:
        assert "bobs-secret" not in docker_as(proxy, "alice", "ps", "-a", "--format", "{{.Names}}").stdout
        for ref in ("bobs-secret", bob_id, bob_id[:6]):
            for args in (["inspect", ref], ["logs", ref], ["stop", ref], ["rm", ref], ["exec", ref, "true"]):
                attempt = docker_as(proxy, "alice", *args)
                assert attempt.returncode != 0, (args, attempt.stdout)
                assert '"Id"' not in attempt.stdout and "sleep" not in attempt.stdout  # nothing of bob's leaks
                if args[0] != "inspect":  # inspect goes on to try images, volumes and plugins by that name
                    assert "no such" in attempt.stderr.lower(), attempt.stderr
        status, _ = raw(proxy, "alice", "GET", f"/v1.41/containers/{bob_id}/json")
        assert status == 404
        status, listed = raw(proxy, "alice", "GET", "/v1.41/containers/json?all=1")
        assert status == 200 and bob_id not in [c["Id"] for c in listed]
        joined = docker_as(proxy, "alice", "run", "--rm", "--pid", f"container:{bob_id}", TEST_IMAGE, "true")
        assert joined.returncode != 0 and "not yours" in joined.stderr
        shared = docker_as(proxy, "alice", "run", "--rm", "--volumes-from", "bobs-secret", TEST_IMAGE, "true")
        assert shared.returncode != 0 and "not yours" in shared.stderr
        admin = docker_as(proxy, "opsadmin", "inspect", "bobs-secret")
        assert admin.returncode == 0  # admins see and act on everything
        assert engine.containers.get("bobs-secret").status == "running"
    finally:
        engine.containers.get("bobs-secret").remove(force=True)


def test_raw_api_bodies_are_parsed_strictly(proxy: ProxyHandle) -> None:
    duplicate = json.dumps({"Image": TEST_IMAGE, "Labels": {}}).replace("}}", '}, "labels": {"ds01.user": "bob"}}')
    status, body = raw(proxy, "alice", "POST", "/v1.41/containers/create", raw_body=duplicate)
    assert status == 403 and "twice" in body["message"]
    folded = {"Image": TEST_IMAGE, "HostConfig": {"privileged": True}}
    status, body = raw(proxy, "alice", "POST", "/v1.41/containers/create", body=folded)
    assert status == 403 and "privileged" in body["message"]
    status, body = raw(proxy, "alice", "POST", "/v1.41/containers/create", raw_body="{not json")
    assert status == 403 and "not valid JSON" in body["message"]
    huge = json.dumps({"Image": TEST_IMAGE, "Env": ["X=" + "a" * (2 * 1024 * 1024)]})
    status, body = raw(proxy, "alice", "POST", "/v1.41/containers/create", raw_body=huge)
    assert status == 413 and "larger than" in body["message"]


def test_endpoints_outside_the_allow_list_are_refused(proxy: ProxyHandle) -> None:
    for method, path, reason in (("POST", "/v1.41/build?version=2", "buildkit"),
                                 ("POST", "/v1.41/session", "buildkit"),
                                 ("GET", "/v1.41/plugins", "endpoint_disabled"),
                                 ("POST", "/v1.41/swarm/init", "endpoint_disabled"),
                                 ("POST", "/v1.41/commit?container=x", "not_found"),
                                 ("POST", "/v1.41/images/load", "endpoint_disabled"),
                                 ("GET", "/v1.41/system/df", "admin_only"),
                                 ("GET", "/v1.41/containers/../../info", "unknown_endpoint"),
                                 ("DELETE", f"/v1.41/images/{TEST_IMAGE}", "image_shared"),
                                 ("GET", "/v1.41/secret-new-endpoint", "unknown_endpoint")):
        before = len(denial_events(proxy, "carol"))
        status, body = raw(proxy, "carol", method, path)
        assert status in (403, 404, 400), (path, status, body)
        if status in (403, 404):
            assert [e["details"]["reason"] for e in denial_events(proxy, "carol")[before:]] == [reason], path
    assert raw(proxy, "carol", "GET", "/_ping")[0] == 200
    assert raw(proxy, "carol", "GET", "/v1.41/version")[0] == 200
    assert raw(proxy, "carol", "GET", "/v1.41/images/json")[0] == 200


def test_exec_and_update_follow_the_create_rules(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    assert docker_as(proxy, "carol", "run", "-d", "--name", "carol-box", TEST_IMAGE, "sleep", "300").returncode == 0
    try:
        privileged = docker_as(proxy, "carol", "exec", "--privileged", "carol-box", "true")
        assert privileged.returncode != 0 and "privileged" in privileged.stderr
        foreign = docker_as(proxy, "carol", "exec", "-u", "1001", "carol-box", "true")
        assert foreign.returncode != 0 and "containers run as you" in foreign.stderr
        as_root = docker_as(proxy, "carol", "exec", "-u", "0", "carol-box", "id", "-u")
        assert as_root.returncode != 0 and as_root.stdout == "" and "containers run as you" in as_root.stderr
        assert docker_as(proxy, "carol", "exec", "carol-box", "id", "-u").stdout.strip() == "1003"
        raised = docker_as(proxy, "carol", "update", "--memory", "1t", "carol-box")
        assert raised.returncode != 0 and "limit" in raised.stderr
        assert docker_as(proxy, "carol", "update", "--memory", "1g", "--memory-swap", "2g", "carol-box").returncode == 0
    finally:
        engine.containers.get("carol-box").remove(force=True)


def test_volumes_are_owned(proxy: ProxyHandle) -> None:
    assert docker_as(proxy, "alice", "volume", "create", "alice-vol").returncode == 0
    assert docker_as(proxy, "alice", "run", "--rm", "-v", "alice-vol:/v", TEST_IMAGE, "true").returncode == 0
    stolen = docker_as(proxy, "bob", "run", "--rm", "-v", "alice-vol:/v", TEST_IMAGE, "true")
    assert stolen.returncode != 0 and "not yours" in stolen.stderr
    assert "alice-vol" not in docker_as(proxy, "bob", "volume", "ls", "-q").stdout
    assert docker_as(proxy, "bob", "volume", "rm", "alice-vol").returncode != 0
    assert docker_as(proxy, "alice", "volume", "rm", "alice-vol").returncode == 0


def test_events_are_filtered_to_the_caller(proxy: ProxyHandle) -> None:
    since = str(int(time.time()) - 1)
    assert docker_as(proxy, "bob", "run", "--rm", "--name", "bob-evt", TEST_IMAGE, "true").returncode == 0
    assert docker_as(proxy, "alice", "run", "--rm", "--name", "alice-evt", TEST_IMAGE, "true").returncode == 0
    until = str(int(time.time()) + 1)
    seen = docker_as(proxy, "alice", "events", "--since", since, "--until", until,
                     "--format", "{{.Actor.Attributes.name}}")
    assert seen.returncode == 0, seen.stderr
    names = set(seen.stdout.split())
    assert "alice-evt" in names and "bob-evt" not in names


def test_unknown_uid_is_refused(proxy: ProxyHandle) -> None:
    result = subprocess.run(["setpriv", "--reuid", "54321", "--regid", "54321", "--clear-groups", "curl", "-sS",
                             "--unix-socket", str(proxy.socket), "http://docker/_ping"],
                            capture_output=True, text=True, check=False, env={**os.environ})
    assert "54321" in result.stdout and "ds01:" in result.stdout


def test_a_container_whose_gpus_were_reclaimed_gets_them_again_on_start(proxy: ProxyHandle,
                                                                        engine: docker.DockerClient) -> None:
    allocator = Allocator(proxy.root / "state", load_config(proxy.config).allocation)
    made = docker_as(proxy, "bob", "run", "-d", "--name", "kept-bob", "--gpus", "1", TEST_IMAGE, "sleep", "300")
    assert made.returncode == 0, made.stderr
    container = engine.containers.get("kept-bob")
    try:
        assert docker_as(proxy, "bob", "stop", "-t", "0", "kept-bob").returncode == 0
        assert [a.id for a in allocator.release_container(container.id)]  # what cleanup does after the hold
        restarted = docker_as(proxy, "bob", "start", "kept-bob")
        assert restarted.returncode == 0, restarted.stderr
        assert [a.slots for a in allocator.allocations() if a.container == container.id] == [
            tuple(container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"])]
        assert docker_as(proxy, "bob", "stop", "-t", "0", "kept-bob").returncode == 0
        allocator.release_container(container.id)
        [device] = container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
        other = allocator.request("carol", 1003, load_config(proxy.config).defaults.with_overrides(
            {"allow_full_gpu": True}), GpuRequest(devices=(device,)), slots=gpu_slots())
        refused = docker_as(proxy, "bob", "start", "kept-bob")
        assert refused.returncode != 0 and "already allocated" in refused.stderr
        allocator.release(other.id)
    finally:
        container.remove(force=True)


def gpu_slots() -> list[Any]:
    with nvml.session() as gpus:
        return slots_from_inventory(gpus.inventory(), frozenset())


def test_security_settings_open_what_they_name(proxy: ProxyHandle) -> None:
    allowed = docker_as(proxy, "carol", "run", "--rm", "--cap-add", "SYS_PTRACE", TEST_IMAGE, "true")
    assert allowed.returncode == 0, allowed.stderr  # security.cap_add: [SYS_PTRACE] in the test config
    assert raw(proxy, "carol", "GET", "/v1.41/plugins")[0] == 403
    original = proxy.config.read_text()
    try:
        proxy.config.write_text(original.replace("allow_endpoints: []", "allow_endpoints: [plugins]"))
        deadline = time.monotonic() + 10
        while raw(proxy, "carol", "GET", "/v1.41/plugins")[0] != 200:  # the proxy reloads a changed config
            assert time.monotonic() < deadline, "the proxy never applied security.allow_endpoints"
            time.sleep(0.2)
        assert raw(proxy, "carol", "POST", "/v1.41/swarm/init")[0] == 403  # only what is named opens
    finally:
        proxy.config.write_text(original)
    assert any(e["type"] == "config.reload" for e in proxy.events())


def test_oom_kills_seen_by_the_engine_are_logged_with_their_owner(proxy: ProxyHandle) -> None:
    hog = docker_as(proxy, "alice", "run", "--rm", "--name", "alice-hog", "--memory", "16m", TEST_IMAGE,
                    "sh", "-c", 'a=$(head -c 100000000 /dev/zero | tr "\\0" x); echo ${#a}')
    assert hog.returncode == 137  # killed by the kernel's OOM killer
    deadline = time.monotonic() + 20
    while not [e for e in proxy.events() if e["type"] == "container.oom"]:
        assert time.monotonic() < deadline, "no container.oom event"
        time.sleep(0.2)
    oom = next(e for e in proxy.events() if e["type"] == "container.oom")
    assert (oom["user"], oom["details"]["container"]) == ("alice", "alice-hog")
