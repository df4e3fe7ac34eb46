"""The fleet's nodes in etcd, beside the allocations (ds01.gpus.etcdstore), under the same prefix:

- `nodes/NODE`: what the node last published (its slots and their health, its driver, ds01's version, each
  user's container count) and when; kept when the node goes quiet, for "last seen";
- `alive/NODE`: a key on the node's lease of `node_ttl`, renewed every third of it: the node is alive while it
  exists;
- `imports/NODE`: the one import of the node's state file (`ds01 fleet import`).

Another node's bound allocations stay counted while it is down: only its own reconcile, or `ds01 fleet forget`,
removes them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from ds01.errors import Denied, Ds01Error
from ds01.etcd import Compare, Delete, Etcd, Put
from ds01.gpus.allocations import Allocation
from ds01.gpus.etcdstore import ALLOCATIONS, NODES, SLOTS, USERS
from ds01.reasons import Reason

ALIVE, IMPORTS = "alive/", "imports/"


@dataclass(frozen=True)
class SlotRecord:
    slot: str
    gpu: int
    profile: str | None  # None: a whole GPU
    model: str
    memory_mib: int
    equivalents: str  # exact, as Fraction writes it: "3/7"
    healthy: bool


@dataclass(frozen=True)
class NodeRecord:
    node: str
    version: str
    driver: str
    seen_at: float
    ttl_seconds: int
    slots: tuple[SlotRecord, ...] = ()
    containers: dict[str, int] = field(default_factory=dict)  # user -> containers on this node

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        data = json.loads(raw)
        return cls(**{**data, "slots": tuple(SlotRecord(**slot) for slot in data.get("slots", ()))})


@dataclass(frozen=True)
class FleetView:
    nodes: dict[str, NodeRecord]
    alive: frozenset[str]
    allocations: list[Allocation]  # every node's, slots as their node names them
    usage: dict[str, tuple[float, float]]  # user -> (decayed hours, as of)

    def held_on(self, node: str) -> list[Allocation]:
        return [a for a in self.allocations if a.node == node]


def read_fleet(etcd: Etcd, prefix: str) -> FleetView:
    _, entries = etcd.read_prefix(prefix)
    nodes: dict[str, NodeRecord] = {}
    alive: set[str] = set()
    allocations: list[Allocation] = []
    usage: dict[str, tuple[float, float]] = {}
    for entry in entries:
        key = entry.key.removeprefix(prefix)
        try:
            if key.startswith(NODES):
                nodes[key.removeprefix(NODES)] = NodeRecord.from_json(entry.value)
            elif key.startswith(ALIVE):
                alive.add(key.removeprefix(ALIVE))
            elif key.startswith(ALLOCATIONS):
                allocations.append(Allocation.from_json(json.loads(entry.value)))
            elif key.startswith(USERS):
                raw = json.loads(entry.value)
                usage[key.removeprefix(USERS)] = (float(raw["hours"]), float(raw["at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise Ds01Error(f"etcd key {entry.key} is not a ds01 record ({exc}); move it aside with etcdctl") from exc
    return FleetView(nodes, frozenset(alive), allocations, usage)


class Membership:
    """This node's lease and records: `renew` every node_ttl/3."""

    def __init__(self, etcd: Etcd, prefix: str, node: str, ttl_seconds: int) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self.node = node
        self._ttl = ttl_seconds
        self._lease = 0

    def renew(self, record: NodeRecord) -> bool:
        """Keep the lease (a new one if it lapsed) and publish `record`; True when the lease had lapsed, as after
        a partition: the caller reconciles."""
        lapsed = self._lease == 0 or self._etcd.keep_alive(self._lease) <= 0
        if lapsed:
            self._lease = self._etcd.grant_lease(self._ttl)
        self._etcd.commit([], [Put(f"{self._prefix}{ALIVE}{self.node}", b"1", self._lease),
                               Put(f"{self._prefix}{NODES}{self.node}", record.to_json())])  # no compare: holds
        return lapsed


def forget(etcd: Etcd, prefix: str, node: str) -> list[Allocation]:
    """Remove a node that is gone for good: its allocations, slots and record, in one transaction that holds
    only while the node is down."""
    view = read_fleet(etcd, prefix)
    if node in view.alive:
        raise Denied(Reason.BAD_REQUEST, f"node {node} is alive (its lease was renewed within node_ttl); stop its "
                                         "ds01 proxy first, or let it reconcile on its own.")
    if node not in view.nodes and not view.held_on(node):
        raise Denied(Reason.NOT_FOUND, f"the fleet has no node {node}; see `ds01 fleet status`.")
    held = view.held_on(node)
    changes: list[Put | Delete] = [Delete(f"{prefix}{ALLOCATIONS}{a.id}") for a in held]
    changes += [Delete(f"{prefix}{SLOTS}{node}/", prefix=True), Delete(f"{prefix}{NODES}{node}")]
    if not etcd.commit([Compare(f"{prefix}{ALIVE}{node}", 0)], changes).succeeded:
        raise Denied(Reason.BAD_REQUEST, f"node {node} came back while being forgotten; nothing was removed.")
    return held


def import_state(etcd: Etcd, prefix: str, node: str, raw: bytes, allocations: Sequence[Allocation]) -> bool:
    """Load this node's state file into the fleet, exactly once: False when this same file (by its digest, kept
    under imports/NODE) was imported before; another file after it is refused. Reservations are left out: they
    would expire before anyone bound them."""
    digest = hashlib.sha256(raw).hexdigest()
    marker = f"{prefix}{IMPORTS}{node}"
    bound = [a for a in allocations if a.container is not None]
    compares = [Compare(marker, 0), *(Compare(f"{prefix}{ALLOCATIONS}{a.id}", 0) for a in bound),
                *(Compare(f"{prefix}{SLOTS}{node}/{slot}", 0) for a in bound for slot in a.slots)]
    changes: list[Put | Delete] = [Put(marker, json.dumps({"sha256": digest, "allocations": len(bound)}).encode())]
    for allocation in bound:
        mine = replace(allocation, node=node)
        changes.append(Put(f"{prefix}{ALLOCATIONS}{mine.id}", json.dumps(mine.to_json(), sort_keys=True).encode()))
        changes += [Put(f"{prefix}{SLOTS}{node}/{slot}", mine.id.encode()) for slot in mine.slots]
    if etcd.commit(compares, changes).succeeded:
        return True
    earlier = next((json.loads(e.value) for e in etcd.read_prefix(marker)[1] if e.key == marker), None)
    if earlier is not None and earlier.get("sha256") == digest:
        return False
    if earlier is not None:
        raise Denied(Reason.BAD_REQUEST, (
            f"node {node}'s state was imported before, from another file (sha256 {earlier.get('sha256')}, "
            f"{earlier.get('allocations')} allocations); nothing was imported. An import happens once per node: "
            "the fleet's allocations are the record now (ds01 fleet status)."))
    raise Denied(Reason.BAD_REQUEST, (
        f"the state file books slots or allocation ids that the fleet holds already under node {node}; nothing "
        "was imported. Check `ds01 fleet status`: did this node's proxy run on etcd first, or another node take "
        "this name?"))
