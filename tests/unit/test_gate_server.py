"""The gate behind the real server, over a socket pair: what the server makes of the gate's errors, the engine's,
and unknown callers, and that the per-user lock and the allocator are left clean. The same in-memory engine and
real allocator as test_gate.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import pytest

from ds01.errors import EngineError
from tests.unit.proxy_harness import FakeEngine, container, exchange, responses
from tests.unit.test_gate import ALICE, IMAGE, ONE_GPU, World, world

__all__ = ["world"]  # the fixture, shared with test_gate.py


CREATE = b"POST /v1.41/containers/create?name=job HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"


def create_request(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return CREATE + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw


@pytest.fixture
def connected(world: World) -> World:
    """The world with the test's own uid, which the kernel gives for the socketpair, as alice's."""
    world.sessions.by_uid[os.getuid()] = world.sessions.by_uid[ALICE.uid]
    return world


def served(world: World, data: bytes, *answers: bytes | Any) -> tuple[int, dict[str, str], FakeEngine]:
    engine = FakeEngine(*answers)
    [(status, headers, _)] = responses(exchange(data, gate=world.gate, engine=engine))
    return status, headers, engine


def test_a_create_the_engine_answers_through_the_server_binds_its_gpus(connected: World) -> None:
    made = json.dumps({"Id": "c" * 64, "Warnings": []}).encode()
    status, _, engine = served(connected, create_request({"Image": IMAGE, "HostConfig": ONE_GPU}),
                               b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(made), made))
    assert status == 201 and len(engine.requests) == 1
    assert connected.reserved() == [("alice", "c" * 64)] and not connected.gate.locks.locked("alice")


def test_an_engine_that_hangs_up_on_a_create_leaves_no_reservation_nor_lock(connected: World) -> None:
    status, headers, engine = served(connected, create_request({"Image": IMAGE, "HostConfig": ONE_GPU}),
                                     lambda _sock: None)
    assert (status, headers["x-ds01-reason"]) == (502, "engine_error") and len(engine.requests) == 1
    assert connected.reserved() == [] and not connected.gate.locks.locked("alice")


def test_an_exec_create_refused_for_its_upgrade_still_gives_the_lock_back(connected: World) -> None:
    connected.add(container("app", ALICE))
    body = b'{"Cmd": ["id"]}'
    status, _, engine = served(connected, b"POST /v1.41/containers/app/exec HTTP/1.1\r\nHost: d\r\n"
                               b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: %d\r\n\r\n%s"
                               % (len(body), body))
    assert status == 400 and engine.links == 0 and not connected.gate.locks.locked("alice")


@pytest.fixture
def allocator_taken(world: World) -> Iterator[None]:
    """Someone else in the allocator's lock (its timeout is 0 here: the gate meets it at once)."""
    other = filelock.FileLock(world.allocator.path.parent / "allocations.lock")
    with other:
        yield


@pytest.mark.usefixtures("allocator_taken")
def test_a_busy_allocator_answers_503_and_leaves_the_lock_free(connected: World) -> None:
    status, headers, engine = served(connected, create_request({"Image": IMAGE, "HostConfig": ONE_GPU}))
    assert (status, headers["x-ds01-reason"]) == (503, "busy") and engine.requests == []
    assert not connected.gate.locks.locked("alice")


def test_engine_errors_in_the_gates_own_calls_answer_502_or_500(connected: World) -> None:
    connected.upstream.answers[("GET", "/containers/json")] = EngineError("the engine went away")
    status, headers, engine = served(connected, create_request({"Image": IMAGE, "HostConfig": ONE_GPU}))
    assert (status, headers["x-ds01-reason"]) == (502, "engine_error") and engine.requests == []
    assert not connected.gate.locks.locked("alice")
    connected.upstream.answers[("GET", "/containers/json")] = (500, {"message": "database is locked"})
    status, headers, engine = served(connected, create_request({"Image": IMAGE}))
    assert (status, headers["x-ds01-reason"]) == (500, "error") and engine.requests == []
    assert not connected.gate.locks.locked("alice") and connected.reserved() == []


def test_a_bug_answers_500_and_is_logged(connected: World, event_log: Path) -> None:
    del connected.add(container("app", ALICE))["State"]  # an inspect record the gate cannot read
    status, headers, engine = served(connected, b"POST /v1.41/containers/app/start HTTP/1.1\r\nHost: d\r\n\r\n")
    assert (status, headers["x-ds01-reason"]) == (500, "internal_error") and engine.requests == []
    logged = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert [event["details"]["error"] for event in logged if event["type"] == "proxy.internal_error"] == \
        ["KeyError('State')"]


def test_a_caller_with_no_account_is_refused(world: World) -> None:
    world.sessions.by_uid.pop(os.getuid(), None)
    status, headers, engine = served(world, b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert (status, headers["x-ds01-reason"]) == (403, "unknown_user") and engine.links == 0


def test_a_create_whose_grant_cannot_be_recorded_is_removed_and_says_so(
        connected: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(connected.allocator, "bind", disk_full)
    made = json.dumps({"Id": "c" * 64, "Warnings": []}).encode()
    status, headers, engine = served(connected, create_request({"Image": IMAGE, "HostConfig": ONE_GPU}),
                                     b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(made), made))
    assert (status, headers["x-ds01-reason"]) == (500, "error") and len(engine.requests) == 1
    assert ("DELETE", f"/containers/{'c' * 64}") in connected.upstream.calls
    assert connected.reserved() == [] and not connected.gate.locks.locked("alice")
