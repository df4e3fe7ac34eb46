"""What keeps the fleet's store whole beyond the everyday path, on the fleet bed's real etcd: a node name is one
instance's (a restart, a reboot or an upgrade keeps it; another server neither claims it nor reconciles under
it); a node's record is written when it changes, not on every renewal; a change too big for one etcd
transaction is made in several, each whole, and slots freed by expired reservations are granted again however
many expired; a bind rewrites its user's record; a forgotten node counts its live ds01 containers again from
their labels, not a stopped one's; a key that is not ds01's is named and blocks only grants; and after the
store failed, a node reserves nothing until it reconciled."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path

import docker
import pytest

from ds01 import labels
from ds01.config import BUILTIN_DEFAULTS, AllocationSettings
from ds01.config.schema import EtcdSettings
from ds01.engine import Engine
from ds01.errors import Denied
from ds01.etcd import Etcd, Put
from ds01.fleet import nodes
from ds01.fleet.names import NodeNameTaken, name_entries
from ds01.gpus.allocator import Allocation, Allocator, Grant
from ds01.gpus.etcdstore import MAX_TXN_OPS, EtcdStore
from ds01.gpus.placement import GpuRequest, Slot
from ds01.reasons import Reason
from tests.conftest import TEST_IMAGE
from tests.fleet.conftest import Fleetbed
from tests.fleet.test_store import HALF_LIFE, LIMITS, allocator, etcd_of, node_slots, stored

MANY = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(200), "max_gpus_per_container": 64})


def membership(fleetbed: Fleetbed, prefix: str, node: str, instance: str) -> nodes.Membership:
    return nodes.Membership(etcd_of(fleetbed), prefix, node, 6, instance=instance)


def record(node: str, containers: dict[str, int] | None = None) -> nodes.NodeRecord:
    return nodes.NodeRecord(node, "test", "550", time.time(), 6, (), containers or {})


def owned_store(fleetbed: Fleetbed, prefix: str, node: str, instance: str) -> Allocator:
    """As ds01 opens it on a node (open_allocator): with the instance it checks the name against."""
    etcd = Etcd(EtcdSettings(endpoints=tuple(fleetbed.endpoints)))
    return Allocator(Path(tempfile.mkdtemp(prefix="ds01-fleet-")), AllocationSettings(),
                     store=EtcdStore(etcd, prefix, node, lambda: HALF_LIFE, instance=instance))


def revisions(fleetbed: Fleetbed, prefix: str) -> dict[str, int]:
    return {e.key.removeprefix(prefix): e.mod_revision for e in etcd_of(fleetbed).read_prefix(prefix)[1]}


def test_one_node_name_is_one_instance_which_a_restart_or_reboot_keeps(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    first = membership(fleetbed, etcd_prefix, "gpu1", "server-a")
    assert first.claim() is True  # a new lease
    held = owned_store(fleetbed, etcd_prefix, "gpu1", "server-a")
    bound = held.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("gpu1"))
    held.bind(bound.id, "f" * 64, "kept._.1000")

    impostor = membership(fleetbed, etcd_prefix, "gpu1", "server-b")
    with pytest.raises(NodeNameTaken, match="held by another ds01 proxy"):
        impostor.claim()
    cleanup = owned_store(fleetbed, etcd_prefix, "gpu1", "server-b")  # the impostor's cleanup timer
    with pytest.raises(Denied) as refused:
        cleanup.reconcile([], time.time())  # its engine shows none of gpu1's containers
    assert refused.value.reason is Reason.NOT_OWNER and "Nothing was reconciled" in refused.value.message
    assert [a.id for a in stored(fleetbed, etcd_prefix)[0]] == [bound.id]

    rebooted = membership(fleetbed, etcd_prefix, "gpu1", "server-a")  # its old lease still alive
    assert rebooted.claim() is True and rebooted.claimed
    deadline = time.monotonic() + 30  # then server-a dies: its lease lapses, the name stays its own
    while "gpu1" in nodes.read_fleet(etcd_of(fleetbed), etcd_prefix).alive:
        assert time.monotonic() < deadline, "gpu1's lease did not lapse within 30 s of a 6 s TTL"
        time.sleep(0.5)
    with pytest.raises(NodeNameTaken, match="belongs to another server"):
        impostor.claim()
    with pytest.raises(Denied, match="belongs to another server"):
        cleanup.reconcile([], time.time())
    view = nodes.read_fleet(etcd_of(fleetbed), etcd_prefix)
    assert "gpu1" not in view.alive and [a.id for a in view.held_on("gpu1")] == [bound.id]  # still counted
    again = membership(fleetbed, etcd_prefix, "gpu1", "server-a")
    assert again.claim() is True and "gpu1" in nodes.read_fleet(etcd_of(fleetbed), etcd_prefix).alive


def test_a_name_leased_before_names_had_owners_is_taken_over_by_the_upgraded_server(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    etcd = etcd_of(fleetbed)
    old_lease = etcd.grant_lease(60)
    etcd.commit([], [Put(f"{etcd_prefix}alive/gpu9", b"1", old_lease)])  # as the previous version wrote it
    upgraded = membership(fleetbed, etcd_prefix, "gpu9", "server-z")
    assert upgraded.claim() is True and upgraded.claimed
    alive, owner = name_entries(etcd, etcd_prefix, "gpu9")
    assert alive is not None and owner is not None
    assert (alive.value, alive.lease != old_lease, owner.value) == (b"server-z", True, b"server-z")
    with pytest.raises(NodeNameTaken):
        membership(fleetbed, etcd_prefix, "gpu9", "server-y").claim()


def test_a_node_record_with_fields_from_a_newer_ds01_is_read() -> None:
    written = {**json.loads(record("gpu4", {"alice": 1}).to_json()), "gpu_topology": "nvlink"}
    written["slots"] = [{"slot": "GPU-0", "gpu": 0, "profile": None, "model": "A100", "memory_mib": 81920,
                         "equivalents": "1", "healthy": True, "power_watts": 400}]
    read = nodes.NodeRecord.from_json(json.dumps(written).encode())
    assert (read.node, read.containers, read.slots[0].slot, read.slots[0].healthy) == ("gpu4", {"alice": 1},
                                                                                      "GPU-0", True)


def test_a_renewal_writes_the_record_only_when_it_changes(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    node = membership(fleetbed, etcd_prefix, "gpu2", "server-c")
    node.renew(record("gpu2"))
    first = revisions(fleetbed, etcd_prefix)
    node.renew(record("gpu2"))  # seen later, nothing else new
    assert revisions(fleetbed, etcd_prefix) == first
    node.renew(record("gpu2", {"alice": 1}))
    changed = revisions(fleetbed, etcd_prefix)
    assert changed["nodes/gpu2"] > first["nodes/gpu2"] and changed["alive/gpu2"] == first["alive/gpu2"]


def test_a_reconcile_of_more_than_one_transaction_holds_releases_everything(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1")
    slots = node_slots("node1", 60)
    made = []
    for index in range(60):  # 60 users with a slot each: 180 keys to change, past what one transaction holds
        granted = one.request(f"user{index}", 2000 + index, MANY, GpuRequest(count=1), slots=slots)
        one.bind(granted.id, f"{index:064x}", f"c{index}._.{2000 + index}")
        made.append(granted.id)
    assert 3 * len(made) > MAX_TXN_OPS
    report = one.reconcile([], time.time())  # every container is gone (a reboot)
    assert sorted(a.id for a in report.released) == sorted(made)
    allocations, slot_keys = stored(fleetbed, etcd_prefix)
    assert allocations == [] and slot_keys == {}


def test_a_scheduling_pass_grants_what_one_transaction_holds_and_the_next_the_rest(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1")
    wanted = [Grant(f"q{index}", f"user{index}", 2000 + index, (f"GPU-node1-{index}",), Fraction(1))
              for index in range(60)]

    def decide(live: list[Allocation], _now: float) -> tuple[None, list[Grant]]:
        taken = {slot for allocation in live for slot in allocation.slots}
        return None, [g for g in wanted if not taken & set(g.slots)]

    _, first = one.grant(decide)
    assert 0 < len(first) < len(wanted)
    _, second = one.grant(decide)
    assert set(first) | set(second) == {g.key for g in wanted} and not set(first) & set(second)
    _, slot_keys = stored(fleetbed, etcd_prefix)
    assert len(slot_keys) == len(wanted)


@pytest.mark.parametrize("expired", [4, 40])  # dropped in the grant's transaction; in one of their own before it
def test_slots_freed_by_expired_reservations_are_granted_again_however_many_expired(
        fleetbed: Fleetbed, etcd_prefix: str, expired: int) -> None:
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1")
    slots = node_slots("node1", expired)
    for index in range(expired):  # reservations never bound
        one.request(f"user{index}", 2000 + index, MANY, GpuRequest(count=1), slots=slots, ttl_seconds=1)
    time.sleep(1.5)
    granted = one.request("alice", 1000, MANY, GpuRequest(count=expired), slots=slots)  # every slot, each freed
    assert sorted(granted.slots) == sorted(s.uuid for s in slots)
    allocations, slot_keys = stored(fleetbed, etcd_prefix)
    assert [a.id for a in allocations] == [granted.id] and set(slot_keys.values()) == {granted.id}


def test_a_bind_rewrites_its_users_record(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1")
    granted = one.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    before = revisions(fleetbed, etcd_prefix)["users/alice"]
    one.bind(granted.id, "a" * 64, "held._.1000")
    assert revisions(fleetbed, etcd_prefix)["users/alice"] > before  # a grant elsewhere to alice conflicts


def test_a_forgotten_node_counts_its_running_ds01_containers_again(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    node = fleetbed.nodes[1]
    engine = docker.DockerClient(base_url=node.docker_host)
    two = allocator(fleetbed.endpoints, etcd_prefix, "node2")
    gpus = [Slot(gpu["uuid"], gpu["uuid"], index, None, Fraction(1), 0, 0)
            for index, gpu in enumerate(json.loads(node.topology.read_text())["gpus"])]  # its engine's hook knows
    granted = two.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=gpus)
    ds01_labels = {labels.USER: "alice", labels.UID: "1000", labels.ALLOCATION: granted.id,
                   labels.GPU_EQUIVALENTS: "1"}  # as the proxy labels a container it grants GPUs
    container = engine.containers.run(
        TEST_IMAGE, ["sleep", "600"], detach=True, name=f"kept-{uuid.uuid4().hex[:8]}", labels=ds01_labels,
        device_requests=[docker.types.DeviceRequest(driver="nvidia", device_ids=list(granted.slots),
                                                    capabilities=[["gpu"]])])
    try:
        two.bind(granted.id, container.id, container.name)
        assert [a.id for a in nodes.forget(etcd_of(fleetbed), etcd_prefix, "node2")] == [granted.id]
        assert stored(fleetbed, etcd_prefix) == ([], {})
        with Engine(node.docker_host) as listing:
            found = listing.containers()
        report = two.reconcile(found, time.time())  # node2 was cut off, not gone: it rejoins
        assert [(a.id, a.container) for a in report.adopted] == [(granted.id, container.id)]
        allocations, slot_keys = stored(fleetbed, etcd_prefix)
        assert [(a.user, a.slots, a.node) for a in allocations] == [("alice", granted.slots, "node2")]
        assert slot_keys == {f"node2/{granted.slots[0]}": granted.id}
        again = two.request("bob", 1001, LIMITS, GpuRequest(count=2), slots=gpus)
        assert not set(again.slots) & set(granted.slots)  # the running container's GPU is not handed on
        two.release(again.id)
        container.pause()  # a paused one keeps its GPU too
        assert [a.id for a in nodes.forget(etcd_of(fleetbed), etcd_prefix, "node2")] == [granted.id]
        with Engine(node.docker_host) as listing:
            found = listing.containers()
        assert [a.id for a in two.reconcile(found, time.time()).adopted] == [granted.id]
        container.unpause()
        container.stop(timeout=1)
        assert [a.id for a in two.release_container(container.id)] == [granted.id]  # as after gpu_hold_after_stop
        with Engine(node.docker_host) as listing:
            found = listing.containers()
        assert two.reconcile(found, time.time()).adopted == []  # a stopped one asks again when it starts
        assert granted.id not in {a.id for a in stored(fleetbed, etcd_prefix)[0]}
    finally:
        container.remove(force=True)
        engine.close()


def test_a_key_that_is_not_ds01s_is_named_and_blocks_no_container_without_gpus(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    etcd = etcd_of(fleetbed)
    etcd.commit([], [Put(f"{etcd_prefix}nodes/broken", b"{not json"),
                     Put(f"{etcd_prefix}nodes/gpu3", record("gpu3", {"alice": 2}).to_json())])
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1")
    assert one.store.other_containers("alice") == 2  # the readable record still counts
    assert one.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node1")).slots
    view = nodes.read_fleet(etcd, etcd_prefix)
    assert [problem.split(" ")[0] for problem in view.unreadable] == [f"{etcd_prefix}nodes/broken"]
    assert set(view.nodes) == {"gpu3"}
    etcd.commit([], [Put(f"{etcd_prefix}allocations/garbage", b"not json")])  # who holds what: unreadable
    with pytest.raises(Denied) as refused:  # on a node's first read of it
        allocator(fleetbed.endpoints, etcd_prefix, "node2").request("bob", 1001, LIMITS, GpuRequest(count=1),
                                                                    slots=node_slots("node2"))
    assert refused.value.reason is Reason.STORE_UNAVAILABLE and "allocations/garbage" in refused.value.message
    assert one.store.other_containers("alice") == 2  # a container without GPUs is still made


def test_after_the_store_failed_a_node_reserves_nothing_until_it_reconciled(
        fleetbed: Fleetbed, etcd_prefix: str) -> None:
    one = allocator(fleetbed.endpoints, etcd_prefix, "node1")
    store = one.store
    assert isinstance(store, EtcdStore)
    store.reconcile_first = True  # as the proxy runs it
    kept = one.request("alice", 1000, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    one.bind(kept.id, "b" * 64, "kept._.1000")
    store.unsettle()  # what any call that found no member does
    with pytest.raises(Denied) as refused:
        one.request("bob", 1001, LIMITS, GpuRequest(count=1), slots=node_slots("node1"))
    assert refused.value.reason is Reason.STORE_UNAVAILABLE and "reconciles" in refused.value.message
    assert [a.id for a in stored(fleetbed, etcd_prefix)[0]] == [kept.id]  # nothing was reserved
    generation = store.generation
    one.reconcile([], time.time())
    store.settled(generation)
    assert one.request("bob", 1001, LIMITS, GpuRequest(count=1), slots=node_slots("node1")).slots


def test_the_beds_members_compact_their_history_and_raise_no_alarm(fleetbed: Fleetbed) -> None:
    for member in (1, 2, 3):
        cmdline = Path(f"/proc/{fleetbed.member_pid(member)}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--auto-compaction-mode") + 1] == b"periodic"
    assert etcd_of(fleetbed).alarms() == []
