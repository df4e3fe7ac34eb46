"""This node's part in the fleet (allocation.store: etcd): every node_ttl/3 it renews its lease and publishes its
slots, their health and each user's container count; it tells the exporter whether the store answers; and when
the store answers again after it did not, the node reconciles its own slots with its own engine before the queue
grants again."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ds01 import __version__, eventlog, labels, statefile
from ds01.errors import Ds01Error
from ds01.eventlog.types import EventType
from ds01.fleet.nodes import Membership, NodeRecord, SlotRecord
from ds01.gpus.allocator import ReconcileReport
from ds01.gpus.etcdstore import EtcdStore
from ds01.gpus.placement import Slot
from ds01.proxy.interfaces import EngineCalls

STATUS_FILE = "store.json"  # in DS01_RUN_DIR, for the exporter: ds01_store_up, ds01_store_transaction_retries_total
NodeSlots = Callable[[], tuple[str, list[tuple[Slot, str, int, bool]]]]


class FleetKeeper:
    def __init__(self, membership: Membership, store: EtcdStore, upstream: EngineCalls, node_slots: NodeSlots, *,
                 ttl_seconds: int, run_dir: Path, reconcile: Callable[[], ReconcileReport],
                 kick: Callable[[], None]) -> None:
        self._membership = membership
        self._store = store
        self._upstream = upstream
        self._node_slots = node_slots
        self._ttl = ttl_seconds
        self._status = run_dir / STATUS_FILE
        self._reconcile = reconcile
        self._kick = kick
        self._had_lease = False  # a lapse of a lease this node had (not its first) means it was cut off
        self._last_record: NodeRecord | None = None  # published again when a new one cannot be made

    def run(self, stop: threading.Event) -> None:
        self.beat()
        while not stop.wait(self._ttl / 3):
            self.beat()

    def beat(self) -> None:
        try:
            record = self._record()
            self._last_record = record
        except Ds01Error as exc:  # NVML or the engine: reported; the lease is renewed all the same, or the
            # node would look down while it serves, and could be forgotten with its containers running
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=f"fleet record not made: {exc}")
            if self._last_record is None:
                return
            record = replace(self._last_record, seen_at=time.time())
        try:
            lapsed = self._membership.renew(record)
        except Ds01Error as exc:  # StoreUnavailable, the name taken, anything of etcd's: the next beat tries again
            self._store.unsettle()
            self._write_status(up=False, problem=str(exc))
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=f"fleet lease not renewed: {exc}")
            return
        if self._store.unsettled or (lapsed and self._had_lease):
            self._rejoin()  # a failed reconcile is tried at the next beat: the store stays unsettled
        self._had_lease = True
        self._write_status(up=True, problem="")

    def _rejoin(self) -> None:
        generation = self._store.unsettle()  # a lapsed lease: the node may have been forgotten meanwhile
        try:
            report = self._reconcile()
        except Ds01Error as exc:
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=f"reconcile on rejoining: {exc}")
            return
        self._store.settled(generation)
        eventlog.emit(EventType.FLEET_REJOIN, source="proxy", node=self._membership.node,
                      released=len(report.released), expired=len(report.expired), adopted=len(report.adopted))
        self._kick()

    def _record(self) -> NodeRecord:
        driver, slots = self._node_slots()
        status, listed = self._upstream.call("GET", "/containers/json", query={
            "all": "1", "filters": json.dumps({"label": [labels.USER]})})
        if status != 200 or not isinstance(listed, list):
            raise Ds01Error(f"the engine answered {status} when counting containers: {listed}")
        containers = Counter(str((c.get("Labels") or {}).get(labels.USER)) for c in listed)
        return NodeRecord(self._membership.node, __version__, driver, time.time(), self._ttl, tuple(
            SlotRecord(slot.uuid, slot.gpu_index, slot.profile, model, memory, str(slot.equivalents), healthy)
            for slot, model, memory, healthy in slots), dict(containers))

    def _write_status(self, *, up: bool, problem: str) -> None:
        statefile.write_json_atomic(self._status, {
            "store": "etcd", "node": self._membership.node, "up": up,
            "transaction_retries": self._store.retries, "checked_at": time.time(), "problem": problem})
