"""max_networks: a user's networks, their own ds01-USER included whether it exists yet or not, counted and created
one at a time per user, so that a burst of creates cannot pass the count; the proxy's own ds01-USER is never
refused, and admins are not counted. The gate alone, and behind the real server. The same in-memory engine and real
allocator as test_gate.py."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ds01.errors import Denied, Ds01Error
from tests.unit.proxy_harness import FakeEngine, exchange, message, responses
from tests.unit.test_gate import (
    ADMIN,
    ALICE,
    BOB,
    IMAGE,
    Reason,
    World,
    forwarded,
    refused,
    sent_body,
    world,
)

__all__ = ["world"]  # the fixture, shared with test_gate.py

pytestmark = pytest.mark.usefixtures("event_log")

LIMIT = ALICE.limits.max_networks
BURST = 10


def owned(world: World, user: str, *names: str) -> None:
    """Networks the engine already has, labelled for `user`."""
    for name in names:
        world.upstream.networks[name] = {"Name": name, "Id": f"id-{name}", "Labels": {"ds01.user": user},
                                         "Containers": {}}


def networks_of(world: World, user: str) -> list[str]:
    return sorted(name for name, found in world.upstream.networks.items() if found["Labels"].get("ds01.user") == user)


def create(world: World, name: str, caller: Any = ALICE) -> Any:
    return world.decide(caller, "POST", "/v1.41/networks/create", {"Name": name})


def test_the_limit_defaults_to_four() -> None:
    assert LIMIT == 4


def test_a_network_past_the_limit_is_refused_with_the_count_and_the_way_out(world: World) -> None:
    owned(world, "alice", "ds01-alice", "one", "two", "three")
    with pytest.raises(Denied) as info:
        create(world, "four")
    assert info.value.reason is Reason.MAX_NETWORKS
    assert str(info.value).startswith(f"you have 4 networks, counting your own network ds01-alice, which ds01 makes "
                                      f"for your containers, and may have {LIMIT}")
    assert "docker network rm NAME, or docker network prune" in str(info.value)
    assert "four" not in world.upstream.networks and not world.gate.locks.locked("alice")


def test_the_callers_own_network_counts_before_it_exists(world: World) -> None:
    owned(world, "alice", "one", "two")
    forwarded(create(world, "three")).close()
    owned(world, "alice", "three")
    assert refused(world, ALICE, "POST", "/v1.41/networks/create", {"Name": "four"}) is Reason.MAX_NETWORKS


def test_others_networks_do_not_count(world: World) -> None:
    owned(world, "alice", "ds01-alice", "one")
    owned(world, "bob", "ds01-bob", "b1", "b2", "b3")
    world.upstream.networks["bridge"] = {"Name": "bridge", "Id": "b" * 64, "Labels": {}}
    outcome = create(world, "two")
    assert sent_body(outcome)["Labels"] == {"ds01.user": "alice", "ds01.uid": "2001"}
    forwarded(outcome).close()
    assert refused(world, BOB, "POST", "/v1.41/networks/create", {"Name": "b4"}) is Reason.MAX_NETWORKS


def test_the_count_and_the_create_hold_the_callers_lock_until_the_engine_answers(world: World) -> None:
    outcome = forwarded(create(world, "lab"))
    assert world.gate.locks.locked("alice") and not world.gate.locks.locked("bob")
    outcome.settle(201, b'{"Id": "n", "Warning": ""}')
    assert not world.gate.locks.locked("alice")


def test_a_count_the_engine_cannot_answer_refuses_and_gives_the_lock_back(world: World) -> None:
    world.upstream.answers[("GET", "/networks")] = (500, {"message": "engine trouble"})
    with pytest.raises(Ds01Error, match="the engine answered 500 when counting your networks"):
        create(world, "lab")
    assert not world.gate.locks.locked("alice")


def test_the_callers_own_network_is_made_whatever_the_count(world: World) -> None:
    owned(world, "alice", "one", "two", "three", "four")
    outcome = world.decide(ALICE, "POST", "/v1.41/containers/create?name=job", {"Image": IMAGE})
    assert sent_body(outcome)["HostConfig"]["NetworkMode"] == "ds01-alice"
    forwarded(outcome).close()
    assert networks_of(world, "alice") == ["ds01-alice", "four", "one", "three", "two"]


def test_admins_are_not_counted(world: World) -> None:
    owned(world, "opsadmin", *(f"ops{n}" for n in range(LIMIT + 2)))
    outcome = forwarded(create(world, "more", ADMIN))
    assert not world.gate.locks.locked("opsadmin") and outcome.held is None
    assert ("GET", "/networks") not in world.upstream.calls


# --- behind the real server ---------------------------------------------------------------------------------------


def network_create(name: str) -> bytes:
    raw = json.dumps({"Name": name}).encode()
    return (b"POST /v1.41/networks/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))


def engine_that_creates(world: World) -> FakeEngine:
    """An engine that takes its time over a network create, then makes the network: without the per-user lock, every
    create of a burst would be counted before any of them was made."""
    engine = FakeEngine()

    def answer(sock: socket.socket) -> None:
        _, body = engine.requests[-1]
        time.sleep(0.05)
        world.upstream.call("POST", "/networks/create", body=json.loads(body))
        made = json.dumps({"Id": "n" * 64, "Warning": ""}).encode()
        sock.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(made), made))

    engine.answers.append(answer)
    return engine


@pytest.fixture
def connected(world: World) -> World:
    """The world with the test's own uid, which the kernel gives for the socketpair, as alice's."""
    world.sessions.by_uid[os.getuid()] = world.sessions.by_uid[ALICE.uid]
    return world


def test_a_refused_create_answers_403_with_its_reason_and_never_reaches_the_engine(connected: World,
                                                                                event_log: Path) -> None:
    owned(connected, "alice", "ds01-alice", "one", "two", "three")
    engine = engine_that_creates(connected)
    [answer] = responses(exchange(network_create("bflood"), gate=connected.gate, engine=engine))
    assert (answer[0], answer[1]["x-ds01-reason"]) == (403, "max_networks") and "may have 4" in message(answer)
    assert engine.requests == [] and not connected.gate.locks.locked("alice")
    logged = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert [event["details"]["reason"] for event in logged if event["type"] == "proxy.deny"] == ["max_networks"]


def test_a_burst_of_parallel_creates_makes_exactly_the_limit(connected: World) -> None:
    owned(connected, "alice", "ds01-alice")
    start = threading.Barrier(BURST)
    statuses: list[tuple[int, str]] = []

    def one(index: int) -> None:
        start.wait()
        [(status, headers, _)] = responses(exchange(network_create(f"bflood{index}"), gate=connected.gate,
                                                    engine=engine_that_creates(connected)))
        statuses.append((status, headers.get("x-ds01-reason", "")))

    threads = [threading.Thread(target=one, args=(index,)) for index in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [(201, "")] * (LIMIT - 1) + [(403, "max_networks")] * (BURST - LIMIT + 1)
    assert len(networks_of(connected, "alice")) == LIMIT and not connected.gate.locks.locked("alice")
