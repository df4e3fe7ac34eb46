"""The engine's error answers as the caller reads them: the ids of someone else's containers and networks are never
shown, and every other id (a network endpoint's, in the reason a start failed) leaves the engine's reason whole.
The gate alone, and behind the real server. The same in-memory engine and real allocator as test_gate.py."""

from __future__ import annotations

import json
import os

import pytest

from tests.unit.proxy_harness import FakeEngine, container, exchange, message, responses
from tests.unit.test_gate import ADMIN, ALICE, BOB, World, world

__all__ = ["world"]  # the fixture, shared with test_gate.py

pytestmark = pytest.mark.usefixtures("event_log")

ENDPOINT = "db5c838437a4cfb2d3fdb85e53cb79b55425a1e0720abbc409e5c97b4745261d"
PORT_TAKEN = (f"driver failed programming external connectivity on endpoint c7 ({ENDPOINT}): Bind for "
              "127.0.0.1:48087 failed: port is already allocated")


def answer_to_alice(world: World, status: int, text: str) -> str:
    request = world.request(ALICE, "POST", "/v1.41/containers/c7/start")
    return str(json.loads(world.gate.error_answer(request, status, json.dumps({"message": text}).encode()))["message"])


def test_a_failed_start_keeps_the_engines_reason(world: World) -> None:
    world.add(container("c7", ALICE))
    assert answer_to_alice(world, 500, PORT_TAKEN) == PORT_TAKEN


def test_the_callers_own_ids_are_kept_and_someone_elses_are_not_shown(world: World) -> None:
    mine = world.add(container("c7", ALICE))
    bobs = world.add(container("secret", BOB))
    bobs_network = "b" * 64
    world.upstream.networks[bobs_network] = {"Name": "lab", "Id": bobs_network, "Labels": {"ds01.user": "bob"}}
    own = f"container {mine['Id']} is not running"
    assert answer_to_alice(world, 409, own) == own
    assert answer_to_alice(world, 500, f"cannot join {bobs['Id']}") == "No such object: c7"
    assert answer_to_alice(world, 500, f"network {bobs_network} is busy") == "No such object: c7"
    unlabelled = world.add(container("admins-own", None))
    assert answer_to_alice(world, 409, f"in use by {unlabelled['Id']}") == "Conflict with an object that is not yours."
    request = world.request(ADMIN, "POST", "/v1.41/containers/c7/start")
    raw = json.dumps({"message": f"cannot join {bobs['Id']}"}).encode()
    assert world.gate.error_answer(request, 500, raw) == raw


def test_a_failed_start_reaches_the_client_with_the_engines_status_and_reason(world: World) -> None:
    world.sessions.by_uid[os.getuid()] = world.sessions.by_uid[ALICE.uid]  # the kernel's uid for the socketpair
    world.add(container("c7", ALICE))
    said = json.dumps({"message": PORT_TAKEN}).encode()
    engine = FakeEngine(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(said), said))
    [answer] = responses(exchange(b"POST /v1.41/containers/c7/start HTTP/1.1\r\nHost: d\r\n\r\n", gate=world.gate,
                                  engine=engine))
    assert (answer[0], message(answer)) == (500, PORT_TAKEN) and len(engine.requests) == 1
