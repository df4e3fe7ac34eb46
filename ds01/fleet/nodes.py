"""The fleet's nodes in etcd, beside the allocations (ds01.gpus.etcdstore), under the same prefix:

- `nodes/NODE`: what the node last published (its slots and their health, its driver, ds01's version, each
  user's container count) and when; kept when the node goes quiet, for "last seen";
- `alive/NODE`: a key on the node's lease of `node_ttl`, renewed every third of it: the node is alive while it
  exists; its value names the instance (the server and state directory) that holds the name;
- `owners/NODE`: that instance, without a lease: the name stays its own while the node is down;
- `imports/NODE`: the one import of the node's state file (`ds01 fleet import`).

Another node's bound allocations stay counted while it is down: only its own reconcile, or `ds01 fleet forget`,
removes them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

from ds01.errors import Denied
from ds01.etcd import Compare, Delete, Etcd, Put
from ds01.fleet.names import ALIVE, OWNERS, NodeNameTaken, name_entries, name_is_ours, name_taken
from ds01.gpus.allocations import Allocation
from ds01.gpus.etcdstore import ALLOCATIONS, NODES, SLOTS, USERS
from ds01.reasons import Reason

IMPORTS = "imports/"
SEEN_REFRESH_SECONDS = 60  # how stale a down node's "last seen" may be


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
        """Fields this version does not know (another node's newer ds01 writes them) are left out."""
        data = json.loads(raw)
        known, slot_known = {f.name for f in fields(cls)}, {f.name for f in fields(SlotRecord)}
        return cls(**{key: value for key, value in data.items() if key in known and key != "slots"},
                   slots=tuple(SlotRecord(**{k: v for k, v in slot.items() if k in slot_known})
                               for slot in data.get("slots", ())))


@dataclass(frozen=True)
class FleetView:
    nodes: dict[str, NodeRecord]
    alive: frozenset[str]
    allocations: list[Allocation]  # every node's, slots as their node names them
    usage: dict[str, tuple[float, float]]  # user -> (decayed hours, as of)
    unreadable: tuple[str, ...] = ()  # keys that are not ds01 records, and why: shown, not skipped silently

    def held_on(self, node: str) -> list[Allocation]:
        return [a for a in self.allocations if a.node == node]

    def last_seen(self, node: str, now: float) -> float | None:
        """Now for a node whose lease is alive; else its record's time (it is rewritten at least every
        SEEN_REFRESH_SECONDS while the node lives)."""
        record = self.nodes.get(node)
        return now if node in self.alive else record.seen_at if record is not None else None


def read_fleet(etcd: Etcd, prefix: str) -> FleetView:
    _, entries = etcd.read_prefix(prefix)
    nodes: dict[str, NodeRecord] = {}
    alive: set[str] = set()
    allocations: list[Allocation] = []
    usage: dict[str, tuple[float, float]] = {}
    unreadable: list[str] = []
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
            unreadable.append(f"{entry.key} ({type(exc).__name__}: {exc})")
    return FleetView(nodes, frozenset(alive), allocations, usage, tuple(unreadable))


class Membership:
    """This node's lease and records: `renew` every node_ttl/3. The name is claimed with the lease, by the
    instance that owns it (ds01.fleet.names): alive/NODE is put on this node's lease, and
    owners/NODE names the instance, in one transaction on what was read."""

    def __init__(self, etcd: Etcd, prefix: str, node: str, ttl_seconds: int, *, instance: str,
                 on_lapse: Callable[[], object] = lambda: None) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self.node = node
        self.instance = instance
        self._ttl = ttl_seconds
        self._on_lapse = on_lapse  # before the name is claimed again: the node may have been forgotten meanwhile
        self._lease = 0
        self.claimed = False  # alive/NODE holds this node's lease
        self._published: NodeRecord | None = None

    def claim(self) -> bool:
        """Hold the lease and the name; True when a new lease was granted (the first, or one that lapsed)."""
        granted = False
        if self._lease and self._etcd.keep_alive(self._lease) <= 0:
            self._on_lapse()
            self._lease, self.claimed = 0, False
        if not self._lease:
            self._lease, self.claimed, granted = self._etcd.grant_lease(self._ttl), False, True
            self._published = None  # a forget while the lease lapsed removed the record
        if not self.claimed:
            self._claim_name()
        return granted

    def renew(self, record: NodeRecord) -> bool:
        """`claim`, then publish `record` when it says something new, or its seen_at is SEEN_REFRESH_SECONDS old:
        each put is a revision etcd keeps until it compacts."""
        granted = self.claim()
        last = self._published
        if last is None or replace(last, seen_at=record.seen_at) != record \
                or record.seen_at - last.seen_at >= SEEN_REFRESH_SECONDS:
            self._etcd.commit([], [Put(f"{self._prefix}{NODES}{self.node}", record.to_json())])  # no compare: holds
            self._published = record
        return granted

    def _claim_name(self) -> None:
        alive, owner = f"{self._prefix}{ALIVE}{self.node}", f"{self._prefix}{OWNERS}{self.node}"
        for _attempt in range(3):
            holder, owned = name_entries(self._etcd, self._prefix, self.node)
            if holder is not None and holder.lease == self._lease:
                self.claimed = True
                return
            if not name_is_ours(holder, owned, self.instance):
                raise NodeNameTaken(name_taken(self.node, alive_elsewhere=holder is not None))
            # Absent, or this instance's own from before a restart or a reboot: taken over on the new lease.
            compares = [Compare(alive, holder.mod_revision if holder is not None else 0),
                        Compare(owner, owned.mod_revision if owned is not None else 0)]
            if self._etcd.commit(compares, [Put(alive, self.instance.encode(), self._lease),
                                            Put(owner, self.instance.encode())]).succeeded:
                self.claimed = True
                return
        raise NodeNameTaken(f"fleet node name {self.node} kept changing hands while this proxy claimed it; is "
                            "another proxy starting under the same name?")


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
    changes += [Delete(f"{prefix}{SLOTS}{node}/", prefix=True), Delete(f"{prefix}{NODES}{node}"),
                Delete(f"{prefix}{OWNERS}{node}"),  # the name is free for another server
                Delete(f"{prefix}{IMPORTS}{node}")]  # which may import its own state file
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
