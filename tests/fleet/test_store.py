"""The etcd allocation store on the fleet bed's real three-member etcd cluster: quota counted across nodes, 48
concurrent requests from 4 users over 3 nodes with nothing double-booked and nobody over quota, member kills
(one: the fleet goes on; two: store_unavailable, and what was bound is still there after), the fleet-wide
usage a release adds, leases on reservations only, forgetting a node, and an import that happens once."""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ds01.config import BUILTIN_DEFAULTS, AllocationSettings
from ds01.config.schema import EtcdSettings
from ds01.errors import Denied
from ds01.etcd import Etcd
from ds01.fleet import nodes
from ds01.gpus.allocator import Allocation, Allocator
from ds01.gpus.etcdstore import EtcdStore
from ds01.gpus.placement import GpuRequest, Slot
from ds01.reasons import Reason
from tests.fleet.conftest import Fleetbed

LIMITS = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(2), "max_gpus_per_container": 2})
HALF_LIFE = 7 * 86400.0


def node_slots(node: str, count: int = 4) -> list[Slot]:
    return [Slot(f"GPU-{node}-{index}", f"GPU-{node}-{index}", index, None, Fraction(1), 0, 0)
            for index in range(count)]


def allocator(endpoints: Sequence[str], prefix: str, node: str, timeout: float = 5.0) -> Allocator:
    etcd = Etcd(EtcdSettings(endpoints=tuple(endpoints), timeout_seconds=timeout))
    return Allocator(Path(tempfile.mkdtemp(prefix="ds01-fleet-")), AllocationSettings(),
                     store=EtcdStore(etcd, prefix, node, lambda: HALF_LIFE))


def etcd_of(fleetbed: Fleetbed) -> Etcd:
    return Etcd(EtcdSettings(endpoints=tuple(fleetbed.endpoints)))


def stored(fleetbed: Fleetbed, prefix: str) -> tuple[list[Allocation], dict[str, str]]:
    """Every allocation in etcd, and every slot key with the allocation it names."""
    _, entries = etcd_of(fleetbed).read_prefix(prefix)
    allocations = [Allocation.from_json(json.loads(e.value)) for e in entries
                   if e.key.startswith(f"{prefix}allocations/")]
    slots = {e.key.removeprefix(f"{prefix}slots/"): e.value.decode() for e in entries
             if e.key.startswith(f"{prefix}slots/")}
    return allocations, slots


def test_a_users_quota_counts_on_every_node_and_the_refusal_says_where(fleetbed: Fleetbed,
                                                                         etcd_prefix: str) -> None:
    one, two = allocator(fleetbed.endpoints, etcd_prefix, "node1"), allocator(fleetbed.endpoints, etcd_prefix, "node2")
    held = one.request("alice", 1000, LIMITS, GpuRequest(count=2), slots=node_slots("node1"))
    one.bind(held.id, "c" * 64, "train._.1000")
    with pytest.raises(Denied) as refused:
        two.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node2"))
    assert refused.value.reason is Reason.QUOTA
    assert "container train._.1000 on node1" in refused.value.message and "quota of 2" in refused.value.message
    assert two.allocations() == [] and [a.id for a in two.fleet_allocations()] == [held.id]
    bob = two.request("bob", 1001, LIMITS, GpuRequest(count=1), slots=node_slots("node2"))  # others are not held up
    allocations, slots = stored(fleetbed, etcd_prefix)
    assert {a.id for a in allocations} == {held.id, bob.id}
    assert slots == {f"node1/{s}": held.id for s in held.slots} | {f"node2/{s}": bob.id for s in bob.slots}


def _race_worker(endpoints: Sequence[str], prefix: str, index: int, start: Any, results: Any) -> None:
    node = f"node{index % 3 + 1}"
    mine = allocator(endpoints, prefix, node)
    outcome: list[str] = []
    start.wait()
    for request in range(4):
        user = f"user{(index + request) % 4}"
        try:
            granted = mine.request(user, None, LIMITS, GpuRequest(count=1), slots=node_slots(node))
            outcome.append(f"granted:{granted.id}")
        except Denied as denied:
            outcome.append(f"denied:{denied.reason}")
    results.put(outcome)


def test_48_concurrent_requests_over_3_nodes_book_no_slot_twice_and_no_user_past_quota(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(12), context.Queue()
    workers = [context.Process(target=_race_worker, args=(fleetbed.endpoints, etcd_prefix, i, start, results))
               for i in range(12)]
    for worker in workers:
        worker.start()
    outcomes = [item for _ in workers for item in results.get(timeout=120)]
    for worker in workers:
        worker.join(30)
    assert len(outcomes) == 48
    granted = [o.removeprefix("granted:") for o in outcomes if o.startswith("granted:")]
    assert Counter(o for o in outcomes if o.startswith("denied:")).keys() <= {"denied:quota", "denied:capacity"}
    allocations, slots = stored(fleetbed, etcd_prefix)
    assert sorted(a.id for a in allocations) == sorted(granted)  # every grant stored, nothing else
    booked = [f"{a.node}/{slot}" for a in allocations for slot in a.slots]
    assert len(booked) == len(set(booked)) and set(booked) == set(slots)  # no slot twice; each key names its own
    assert all(slots[f"{a.node}/{slot}"] == a.id for a in allocations for slot in a.slots)
    per_user: dict[str, Fraction] = {}
    for allocation in allocations:
        per_user[allocation.user] = per_user.get(allocation.user, Fraction(0)) + allocation.gpu_equivalents
    assert per_user and max(per_user.values()) <= LIMITS.gpu_quota
    assert len(granted) == 8  # 4 users x a quota of 2, and 12 slots: quota, not capacity, is the bound


def test_one_member_down_the_fleet_goes_on_two_down_grants_are_refused_and_bound_ones_stay(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1", timeout=2.0)
    bound = one.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    one.bind(bound.id, "a" * 64, "kept._.1000")
    fleetbed.kill_member(1)
    granted = one.request("bob", 1001, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    assert granted.slots  # one member of three lost: a quorum answers
    fleetbed.kill_member(2)
    began = time.monotonic()
    with pytest.raises(Denied) as refused:
        one.request("carol", 1002, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    assert refused.value.reason is Reason.STORE_UNAVAILABLE and "never grants from an old" in refused.value.message
    assert time.monotonic() - began < 30
    fleetbed.start_member(1)
    fleetbed.start_member(2)
    fleetbed.wait_healthy()
    allocations, _ = stored(fleetbed, etcd_prefix)
    assert {bound.id, granted.id} <= {a.id for a in allocations}  # what was bound is still counted
    # A transaction that timed out on a member left without a quorum may still commit once the others are back
    # (a timeout is not a refusal): then it is carol's reservation, which expires unbound within its TTL.
    late = [a for a in allocations if a.id not in (bound.id, granted.id)]
    assert all(a.user == "carol" and a.container is None and a.expires_at is not None for a in late), late
    again = one.request("carol", 1002, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    assert again.slots and not set(again.slots) & {*bound.slots, *granted.slots}


def test_a_release_adds_to_the_fleet_wide_usage_and_only_reservations_carry_a_lease(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    one, two = allocator(fleetbed.endpoints, etcd_prefix, "node1"), allocator(fleetbed.endpoints, etcd_prefix, "node2")
    reserved = one.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    leases = {e.key.removeprefix(etcd_prefix): e.lease for e in etcd_of(fleetbed).read_prefix(etcd_prefix)[1]}
    assert leases[f"allocations/{reserved.id}"] != 0 and leases[f"slots/node1/{reserved.slots[0]}"] != 0
    one.bind(reserved.id, "b" * 64, "held._.1000")
    leases = {e.key.removeprefix(etcd_prefix): e.lease for e in etcd_of(fleetbed).read_prefix(etcd_prefix)[1]}
    assert leases[f"allocations/{reserved.id}"] == 0 and leases[f"slots/node1/{reserved.slots[0]}"] == 0
    past = two.store.past_usage(time.time(), HALF_LIFE)
    assert past is not None and past.get("alice", 0.0) == 0.0
    time.sleep(1.0)
    one.release_container("b" * 64)
    past = two.store.past_usage(time.time(), HALF_LIFE)  # read on another node
    assert past is not None and 0 < past["alice"] * 3600 < 10  # about one GPU-second
    assert stored(fleetbed, etcd_prefix) == ([], {})


def test_another_nodes_expired_reservation_counts_for_no_one(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    gone = allocator(fleetbed.endpoints, etcd_prefix, "node3")
    gone.request("alice", 1000, LIMITS, GpuRequest(count=2), slots=node_slots("node3"), ttl_seconds=1)
    time.sleep(1.5)  # its node died before binding: the lease is longer, its TTL is over
    two = allocator(fleetbed.endpoints, etcd_prefix, "node2")
    assert two.request("alice", 1000, LIMITS, GpuRequest(count=2), slots=node_slots("node2")).slots


def test_a_node_is_forgotten_only_once_its_lease_lapsed(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    etcd = etcd_of(fleetbed)
    three = allocator(fleetbed.endpoints, etcd_prefix, "node3")
    held = three.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node3"))
    three.bind(held.id, "d" * 64, "orphan._.1000")
    membership = nodes.Membership(etcd, etcd_prefix, "node3", ttl_seconds=6, instance="node3-test")
    membership.renew(nodes.NodeRecord("node3", "test", "550", time.time(), 6))
    with pytest.raises(Denied, match="is alive"):
        nodes.forget(etcd, etcd_prefix, "node3")
    assert nodes.read_fleet(etcd, etcd_prefix).held_on("node3")  # a refused forget removed nothing
    deadline = time.monotonic() + 30
    while "node3" in nodes.read_fleet(etcd, etcd_prefix).alive:
        assert time.monotonic() < deadline, "node3's lease did not lapse within 30 s of a 6 s TTL"
        time.sleep(0.5)
    two = allocator(fleetbed.endpoints, etcd_prefix, "node2")
    with pytest.raises(Denied) as still:  # down, but what it held still counts
        two.request("alice", 1000, LIMITS, GpuRequest(count=2), slots=node_slots("node2"))
    assert still.value.reason is Reason.QUOTA and "on node3" in still.value.message
    assert [a.id for a in nodes.forget(etcd, etcd_prefix, "node3")] == [held.id]
    view = nodes.read_fleet(etcd, etcd_prefix)
    assert not view.held_on("node3") and "node3" not in view.nodes
    assert stored(fleetbed, etcd_prefix) == ([], {})
    assert two.request("alice", 1000, LIMITS, GpuRequest(count=2), slots=node_slots("node2")).slots


def test_a_state_file_is_imported_exactly_once(fleetbed: Fleetbed, etcd_prefix: str, tmp_path: Path) -> None:
    etcd = etcd_of(fleetbed)
    bound = Allocation("a-0123456789ab", "alice", 1000, ("GPU-node1-0",), Fraction(1), 1.0e9, None, "e" * 64,
                       "old._.1000", 1.0e9)
    reserved = Allocation("a-ba9876543210", "bob", 1001, ("GPU-node1-1",), Fraction(1), 1.0e9, 2.0e9)
    raw = json.dumps({"version": 1, "allocations": [bound.to_json(), reserved.to_json()]}).encode()
    assert nodes.import_state(etcd, etcd_prefix, "node1", raw, [bound, reserved]) is True
    assert nodes.import_state(etcd, etcd_prefix, "node1", raw, [bound, reserved]) is False
    with pytest.raises(Denied, match="imported before, from another file"):  # another file after it
        nodes.import_state(etcd, etcd_prefix, "node1", raw + b" ", [bound])
    allocations, slots = stored(fleetbed, etcd_prefix)
    assert [(a.id, a.node) for a in allocations] == [(bound.id, "node1")]  # the reservation is left out
    assert slots == {"node1/GPU-node1-0": bound.id}
