"""max_networks on the real engine, with the docker CLI as real users: bob, creating networks one after another and
then all at once, is refused at his limit, the engine holds exactly that many of his, and alice still runs a
container (her own network is made for it)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import docker
import pytest

from ds01.config import effective_limits, load_config
from tests.conftest import TEST_IMAGE, ProxyHandle
from tests.integration.test_proxy import denial_events, docker_as

BURST = 6


def bobs_networks(engine: docker.DockerClient) -> set[str]:
    return {network.name for network in engine.networks.list(filters={"label": "ds01.user=bob"})}


@pytest.fixture
def flood(engine: docker.DockerClient) -> Iterator[str]:
    """The prefix of the networks and containers the test makes; all of them are removed afterwards."""
    prefix = f"bflood-{uuid.uuid4().hex[:6]}"
    try:
        yield prefix
    finally:
        for container in engine.containers.list(all=True, filters={"name": prefix}):
            container.remove(force=True)
        for network in engine.networks.list(filters={"name": prefix}):
            network.remove()


def test_a_user_is_stopped_at_max_networks_and_others_still_run(
        proxy: ProxyHandle, engine: docker.DockerClient, flood: str) -> None:
    limit = effective_limits(load_config(proxy.config), "bob", [], datetime.now(UTC)).limits.max_networks
    made = docker_as(proxy, "bob", "create", "--name", f"{flood}-job", TEST_IMAGE, "true")
    assert made.returncode == 0, made.stderr
    assert "ds01-bob" in bobs_networks(engine)  # made for the container, and counted
    refused: subprocess.CompletedProcess[str] | None = None
    for index in range(limit + 2):
        created = docker_as(proxy, "bob", "network", "create", f"{flood}-{index}")
        if created.returncode != 0:
            refused = created
            break
    assert refused is not None and index == limit - 1, "bob was not refused at his limit"
    assert f"you have {limit} networks, counting your own network ds01-bob" in refused.stderr
    assert f"may have {limit}" in refused.stderr and "docker network rm NAME" in refused.stderr
    assert bobs_networks(engine) == {"ds01-bob", *(f"{flood}-{n}" for n in range(limit - 1))}
    assert denial_events(proxy, "bob")[-1]["details"]["reason"] == "max_networks"

    # One freed, then a burst at once: the count and the create are one at a time, so one of them passes.
    assert docker_as(proxy, "bob", "network", "rm", f"{flood}-0").returncode == 0
    with ThreadPoolExecutor(BURST) as pool:
        burst = list(pool.map(lambda n: docker_as(proxy, "bob", "network", "create", f"{flood}-burst{n}"),
                              range(BURST)))
    assert sorted(result.returncode == 0 for result in burst) == [False] * (BURST - 1) + [True]
    assert all("may have" in result.stderr for result in burst if result.returncode != 0)
    assert len(bobs_networks(engine)) == limit

    ran = docker_as(proxy, "alice", "run", "--rm", "--name", f"{flood}-alice", TEST_IMAGE, "echo", "still-runs")
    assert (ran.returncode, ran.stdout.strip()) == (0, "still-runs"), ran.stderr
    assert engine.networks.get("ds01-alice").attrs["Labels"]["ds01.user"] == "alice"
