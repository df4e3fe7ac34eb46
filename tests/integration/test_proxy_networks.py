"""Per-user networks and loopback-only ports through the proxy, with the docker CLI as real users: what each user
ends up with on the engine, and what they can see of each other's networks."""

from __future__ import annotations

import uuid

import docker

from tests.conftest import TEST_IMAGE, ProxyHandle
from tests.integration.test_proxy import denial_events, docker_as


def _names(proxy: ProxyHandle, user: str) -> set[str]:
    listed = docker_as(proxy, user, "network", "ls", "--format", "{{.Name}}")
    assert listed.returncode == 0, listed.stderr
    return set(listed.stdout.split())


def test_a_port_on_every_address_is_published_on_loopback_and_another_address_is_refused(
        proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}"
    made = docker_as(proxy, "alice", "create", "--name", name, "-p", "0.0.0.0:18080:80", TEST_IMAGE, "sleep", "60")
    assert made.returncode == 0, made.stderr
    assert "127.0.0.1 only" in made.stderr
    info = engine.api.inspect_container(name)
    assert info["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]}
    assert info["HostConfig"]["NetworkMode"] == "ds01-alice"
    wide = docker_as(proxy, "alice", "create", "--name", f"{name}-2", "-p", "10.0.0.1:18081:80", TEST_IMAGE)
    assert wide.returncode != 0 and "on 10.0.0.1 is not allowed" in wide.stderr
    every = docker_as(proxy, "alice", "create", "--name", f"{name}-3", "-P", TEST_IMAGE)
    assert every.returncode != 0 and "-P" in every.stderr
    assert [c.name for c in engine.containers.list(all=True, filters={"name": f"{name}-"})] == []
    assert {e["details"]["reason"] for e in denial_events(proxy, "alice")} >= {"host_port"}


def test_users_see_and_join_only_their_own_networks(proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    net = f"alice-net-{uuid.uuid4().hex[:6]}"
    made = docker_as(proxy, "alice", "network", "create", net)
    assert made.returncode == 0, made.stderr
    started = docker_as(proxy, "alice", "run", "--rm", TEST_IMAGE, "true")
    assert started.returncode == 0, started.stderr
    assert {net, "ds01-alice"} <= _names(proxy, "alice")
    seen_by_bob = _names(proxy, "bob")
    assert net not in seen_by_bob and "ds01-alice" not in seen_by_bob and "bridge" in seen_by_bob
    joined = docker_as(proxy, "bob", "run", "--rm", "--network", net, TEST_IMAGE, "true")
    assert joined.returncode != 0 and f"there is no network {net} of yours" in joined.stderr
    assert "ds01-bob" in joined.stderr
    assert docker_as(proxy, "bob", "network", "inspect", net).returncode != 0
    assert docker_as(proxy, "bob", "network", "rm", net).returncode != 0
    taken = docker_as(proxy, "bob", "network", "create", "ds01-alice")
    assert taken.returncode != 0 and "ds01's own" in taken.stderr
    network = engine.networks.get(net)
    assert network.attrs["Labels"]["ds01.user"] == "alice"
    assert engine.networks.get("ds01-alice").attrs["Labels"]["ds01.user"] == "alice"
    assert not engine.containers.list(all=True, filters={"label": "ds01.user=bob", "network": net})
