"""ds01.proxy.queue: the waiting line in the proxy service, on a real allocator and event log in a temporary state
directory: a grant at once, a refusal that says how to wait, waits granted in fair-share order as slots free, and
a timeout, a lost client and a withdrawal that each leave nothing behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ds01 import eventlog
from ds01.config import BUILTIN_DEFAULTS, Config, GroupRule, load_config
from ds01.errors import Denied, Ds01Error
from ds01.eventlog.reader import EventLog
from ds01.eventlog.types import EventType
from ds01.gpus import queuestate
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest
from ds01.proxy.queue import Queue, WaitEnded
from ds01.proxy.runas import Caller
from ds01.proxy.session import Session
from ds01.reasons import Reason
from tests.unit.test_placement import whole

USERS = {2001: "alice", 2002: "bob", 2003: "carol"}
SLOTS = [whole(0), whole(1)]
LIMITS = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(2), "max_gpus_per_container": 2,
                                          "max_runtime_seconds": 3600})


@dataclass
class Sessions:
    config: Config
    limits: dict[str, Any] = field(default_factory=dict)

    def current_config(self) -> Config:
        return self.config

    def for_uid(self, uid: int) -> Session:
        if uid not in USERS:
            raise Ds01Error(f"no account {uid}")
        user = USERS[uid]
        caller = Caller(uid=uid, user=user, home="", is_admin=False, limits=self.limits.get(user, LIMITS),
                        gid=uid, gids=frozenset({uid}), login=user)
        return Session(caller, user, "lab")


@pytest.fixture
def world(tmp_path: Path, event_log: Path) -> Iterator[tuple[Queue, Allocator, threading.Event]]:
    config = replace(load_config(_config(tmp_path)), groups=(GroupRule("lab", (), {}),))
    allocator = Allocator(tmp_path / "state", config.allocation)
    queue = Queue(tmp_path / "state", allocator, lambda: list(SLOTS), Sessions(config), EventLog(event_log.parent))
    stop = threading.Event()
    loop = threading.Thread(target=queue.run, args=(stop,), daemon=True)
    loop.start()
    yield queue, allocator, stop
    stop.set()
    loop.join(5)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text("version: 1\n")
    return path


def events(log: Path, kind: EventType) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["type"] == kind] if log.exists() else []


def fill(allocator: Allocator, user: str = "carol") -> list[str]:
    """Every slot held by `user`'s bound allocations; their ids."""
    held = []
    for slot in SLOTS:
        made = allocator.request(user, 2003, LIMITS, GpuRequest(devices=(slot.uuid,)), slots=SLOTS)
        held.append(allocator.bind(made.id, f"c-{slot.uuid}", f"{user}-{slot.uuid}").id)
    return held


def wait_in_thread(queue: Queue, uid: int, seconds: float, gone: threading.Event | None = None,
                   wait_id: str | None = None) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(queue.obtain(uid, USERS[uid], GpuRequest(count=1), wait_seconds=seconds, origin="docker",
                                        client_gone=gone.is_set if gone else lambda: False, wait_id=wait_id))
        except (Denied, WaitEnded) as exc:
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def until(check: Any, seconds: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        done.wait(0.05)
    raise AssertionError("the condition did not come true in time")


def test_a_request_that_fits_is_granted_at_once_without_queueing(world: Any, event_log: Path) -> None:
    queue, allocator, _ = world
    granted = queue.obtain(2001, "alice", GpuRequest(count=1), wait_seconds=60, origin="docker",
                           client_gone=lambda: False)
    assert granted.user == "alice" and granted.expires_at is not None  # a reservation, for the create to bind
    assert [a.id for a in allocator.allocations()] == [granted.id]
    assert events(event_log, EventType.QUEUE_JOIN) == []


def test_a_request_that_may_not_wait_is_told_where_it_would_be_and_how_to_wait(world: Any) -> None:
    queue, allocator, _ = world
    fill(allocator)
    with pytest.raises(Denied) as caught:
        queue.obtain(2001, "alice", GpuRequest(count=1), wait_seconds=0, origin="container", client_gone=lambda: False)
    assert caught.value.reason is Reason.CAPACITY
    assert "--wait" in caught.value.message and "at the latest" in caught.value.message
    assert "container gpus" in caught.value.message


def test_waiters_are_granted_in_fair_share_order_as_slots_free(world: Any, event_log: Path) -> None:
    queue, allocator, _ = world
    eventlog.emit(EventType.ALLOCATION_RELEASE, source="allocator", user="bob", allocation="a-old",
                  gpu_equivalents="2", held_seconds=20 * 3600)  # bob used a lot lately; alice nothing
    held = fill(allocator)
    bob, bobs = wait_in_thread(queue, 2002, 60)
    until(lambda: len(queue.waiting()) == 1)
    alice, alices = wait_in_thread(queue, 2001, 60)
    until(lambda: len(queue.waiting()) == 2)
    assert [e.user for e in queue.waiting()] == ["alice", "bob"]
    allocator.release(held[0])
    alice.join(10)
    assert alices and alices[0].user == "alice" and alices[0].slots == (SLOTS[0].uuid,)
    assert not bobs and [e.user for e in queue.waiting()] == ["bob"]
    allocator.release(held[1])
    bob.join(10)
    assert bobs and bobs[0].user == "bob"
    grants = events(event_log, EventType.QUEUE_GRANT)
    assert [g["user"] for g in grants] == ["alice", "bob"] and all(g["details"]["waited_seconds"] >= 0 for g in grants)
    assert json.loads((allocator.path.parent / queuestate.STATE_FILE).read_text())["waiting"] == []


@pytest.mark.parametrize("ending", ["timeout", "disconnected", "cancelled"])
def test_a_wait_that_ends_ungranted_leaves_nothing_behind(world: Any, event_log: Path, ending: str) -> None:
    queue, allocator, _ = world
    fill(allocator)
    gone = threading.Event()
    thread, outcome = wait_in_thread(queue, 2001, 0.6 if ending == "timeout" else 60, gone, wait_id="q-mine")
    until(lambda: len(queue.waiting()) == 1)
    assert json.loads((allocator.path.parent / queuestate.STATE_FILE).read_text())["waiting"][0]["id"] == "q-mine"
    if ending == "disconnected":
        gone.set()
    elif ending == "cancelled":
        assert not queue.cancel("bob", "q-mine")  # not bob's to withdraw
        assert queue.cancel("alice", "q-mine")
    thread.join(10)
    [error] = outcome
    if ending == "disconnected":
        assert isinstance(error, WaitEnded)
    else:
        assert isinstance(error, Denied)
        assert error.reason is (Reason.WAIT_TIMEOUT if ending == "timeout" else Reason.WAIT_CANCELLED)
    if ending == "timeout":
        assert "waited" in error.message and "position 1" in error.message  # type: ignore[attr-defined]
    [left] = events(event_log, EventType.QUEUE_LEAVE)
    assert left["details"]["reason"] == ending and left["user"] == "alice"
    assert queue.waiting() == [] and {a.user for a in allocator.allocations()} == {"carol"}
    assert json.loads((allocator.path.parent / queuestate.STATE_FILE).read_text())["waiting"] == []


def test_what_could_never_be_granted_is_refused_at_once(world: Any) -> None:
    queue, _, _ = world
    with pytest.raises(Denied) as caught:
        queue.obtain(2001, "alice", GpuRequest(count=3), wait_seconds=60, origin="docker", client_gone=lambda: False)
    assert caught.value.reason is Reason.PER_CONTAINER_MAX and queue.waiting() == []


def test_a_restart_drops_the_waiters_whose_connections_died(tmp_path: Path, event_log: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    entry = queuestate.Entry("q-lost", "alice", 2001, GpuRequest(count=1), "docker", 100.0, 4000.0)
    queuestate.write(state / queuestate.STATE_FILE, [entry], {}, queuestate.WaitHistogram(), 100.0)
    config = load_config(_config(tmp_path))
    queue = Queue(state, Allocator(state, config.allocation), lambda: list(SLOTS), Sessions(config),
                  EventLog(event_log.parent))
    queue.restore()
    [left] = events(event_log, EventType.QUEUE_LEAVE)
    assert (left["details"]["queue_id"], left["details"]["reason"]) == ("q-lost", "disconnected")
    assert queuestate.read(state / queuestate.STATE_FILE).waiting == []


def test_a_damaged_queue_file_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / queuestate.STATE_FILE).write_text('{"version": 1, "waiting": [{"id": 3}]')
    with pytest.raises(Ds01Error, match="move it away"):
        queuestate.read(tmp_path / queuestate.STATE_FILE)

