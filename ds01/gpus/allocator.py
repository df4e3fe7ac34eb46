"""The allocator: who holds which GPU slots. Requests are two-phase: a reservation with a TTL, then a bind to the
container id.

Every change is one step over all the allocations, run by the store: the `file` store (ds01.gpus.filestore)
runs it under one file lock; the `etcd` store (ds01.gpus.etcdstore) commits it as one transaction on the
revisions it read. With etcd the step sees the whole fleet's allocations, another node's with its slots named
NODE/UUID, so a user's quota counts everywhere and no local slot is mistaken for a remote one.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Protocol, TypeVar

from ds01 import eventlog, labels, records
from ds01.config import AllocationSettings, LimitValues
from ds01.errors import Denied, Ds01Error
from ds01.eventlog.types import EventType
from ds01.gpus.allocations import Allocation, allocations_from_containers
from ds01.gpus.filestore import STATE_NAME, FileStore, StateCorrupt, read_allocations
from ds01.gpus.placement import GpuRequest, Slot, choose_slots
from ds01.reasons import Reason

__all__ = ["STATE_NAME", "Allocation", "AllocationStore", "Allocator", "Grant", "ReconcileReport", "StateCorrupt",
           "allocations_from_containers", "read_allocations"]
_T = TypeVar("_T")
HOLDING = ("running", "paused", "restarting")  # the engine's states in which a container keeps its devices
Change = Callable[[list[Allocation], float], tuple[_T, list[Allocation] | None]]


@dataclass(frozen=True)
class Grant:
    """Slots a scheduling pass reserves for one request, found by `key`."""

    key: str
    user: str
    uid: int | None
    slots: tuple[str, ...]
    equivalents: Fraction


@dataclass
class ReconcileReport:
    released: list[Allocation] = field(default_factory=list)  # their container is gone
    expired: list[Allocation] = field(default_factory=list)  # reservations never bound in time
    adopted: list[Allocation] = field(default_factory=list)  # reservations bound to the container labelled with them
    unallocated: list[records.ContainerInfo] = field(default_factory=list)  # hold GPUs, have no allocation


class AllocationStore(Protocol):
    node: str  # this node's name in the fleet; "" for the file store
    # Concurrent changes conflict and are run again, rather than wait their turn: equal slots are then offered in
    # a random order, so that concurrent requests seldom pick the same one.
    contended: bool
    lock_hold_seconds: deque[float]  # how long each change held the store (the file lock, an etcd commit)
    # The most keys one step may change (change_cost), as an etcd transaction holds at most so many; None: any.
    change_budget: int | None

    def run(self, step: Change[_T], write: bool) -> _T:
        """Run `step` on every allocation and the time, and store what it returns unless None (or not `write`)."""
        ...

    def stamp(self) -> object:
        """Changes when the allocations may have."""
        ...

    def peek(self) -> list[Allocation]:
        """Every allocation as stored, for observers: without waiting for a turn, and without expiring any."""
        ...

    def past_usage(self, now: float, half_life_seconds: float) -> dict[str, float] | None:
        """Each user's decayed GPU-equivalent-hours from released allocations, if the store keeps them (None: the
        event log is the record)."""
        ...

    def other_containers(self, user: str) -> int:
        """The user's containers on the fleet's other nodes, as those nodes last published them."""
        ...

    def confirm_owner(self) -> None:
        """Raises Denied unless this node's allocations are this instance's to reconcile."""
        ...


def change_cost(changed: Sequence[Allocation]) -> int:
    """The keys a step changes for these allocations: each one's own and its slots', and each user's record."""
    return sum(1 + len(a.slots) for a in changed) + len({a.user for a in changed})


def within(budget: int | None, changing: list[Allocation], candidate: Allocation) -> bool:
    """Whether `candidate` fits beside what a step changes already (the first always does); the rest waits for
    the next step."""
    return budget is None or not changing or change_cost([*changing, candidate]) <= budget


class Allocator:
    def __init__(self, state_dir: Path, settings: AllocationSettings,
                 rebuild: Callable[[], list[Allocation]] | None = None,
                 clock: Callable[[], float] = time.time, store: AllocationStore | None = None) -> None:
        self.path = state_dir / STATE_NAME  # the state directory's: the file store's, and the fleet import's source
        self.settings = settings
        self._clock = clock
        self.store: AllocationStore = store if store is not None else FileStore(state_dir, settings, rebuild, clock)

    @property
    def lock_hold_seconds(self) -> deque[float]:
        return self.store.lock_hold_seconds

    def is_local(self, allocation: Allocation) -> bool:
        return allocation.node == self.store.node

    def _transaction(self, change: Callable[[list[Allocation], float], tuple[_T, list[Allocation] | None]],
                     write: bool = True, expire: bool = True) -> tuple[_T, list[Allocation]]:
        """Run `change` on the live allocations in one step of the store; it returns (result, new list or None).

        Reservations past their TTL are dropped first and returned alongside the result (more than fit beside
        a change, within the store's change_budget, in steps of their own before it); with expire=False `change`
        sees them too and decides.
        """
        budget = self.store.change_budget if write else None

        def step(allocations: list[Allocation], now: float) -> tuple[tuple[list[_T], list[Allocation]],
                                                                     list[Allocation] | None]:
            lapsed = [a for a in allocations if expire and a.expires_at is not None and a.expires_at <= now]
            live = [a for a in allocations if a not in lapsed]
            mine = [a for a in lapsed if self.is_local(a)]  # another node's are not written: its lease ends them
            if budget is not None and change_cost(mine) > budget // 4:
                # More than fit beside a change: this step only drops what one transaction holds; `change`
                # runs on a later one, so that it never sees a slot an undropped reservation still holds.
                expired: list[Allocation] = []
                for allocation in mine:
                    if within(budget, expired, allocation):
                        expired.append(allocation)
                return ([], expired), [a for a in allocations if a not in expired]
            result, changed = change(live, now)
            stored = (live if changed is None else changed) if changed is not None or lapsed else None
            return ([result], lapsed), stored

        swept: list[Allocation] = []
        while True:
            outcome, expired = self.store.run(step, write)
            for gone in expired if write else ():  # each step's as it is stored: a later one may be refused
                eventlog.emit(EventType.ALLOCATION_EXPIRE, source="allocator", user=gone.user, allocation=gone.id,
                              slots=list(gone.slots))
            swept += expired
            if outcome:
                return outcome[0], swept

    def allocations(self) -> list[Allocation]:
        """This node's allocations."""
        return [a for a in self.fleet_allocations() if self.is_local(a)]

    def observed(self) -> list[Allocation]:
        """This node's allocations as stored, for observers (the exporter, cleanup): no lock is waited for."""
        return [a for a in self.store.peek() if self.is_local(a)]

    def fleet_allocations(self) -> list[Allocation]:
        """Every node's (only this node's with the file store); another node's slots named NODE/UUID."""
        return self._transaction(lambda live, _now: (live, None))[0]

    def _reserver(self, user: str, uid: int | None, limits: LimitValues, request: GpuRequest, *,
                  slots: Sequence[Slot], ttl: int) -> Change[Allocation]:
        def reserve(live: list[Allocation], now: float) -> tuple[Allocation, list[Allocation]]:
            offered = random.sample(list(slots), len(slots)) if self.store.contended else slots
            chosen = choose_slots(user, limits, self.settings, request, slots=offered,
                                  holdings=[a.holding() for a in live])
            allocation = Allocation(
                id=f"a-{secrets.token_hex(6)}", user=user, uid=uid, slots=tuple(s.uuid for s in chosen),
                gpu_equivalents=sum((s.equivalents for s in chosen), Fraction(0)), created_at=now,
                expires_at=now + ttl, node=self.store.node)
            return allocation, [*live, allocation]

        return reserve

    def request(self, user: str, uid: int | None, limits: LimitValues, request: GpuRequest, *,
                slots: Sequence[Slot], ttl_seconds: int | None = None) -> Allocation:
        """Reserve slots for `request`; raises Denied (with a reason code) or Busy. Nothing is held on denial."""
        ttl = self.settings.reservation_ttl_seconds if ttl_seconds is None else ttl_seconds
        allocation = self._transaction(self._reserver(user, uid, limits, request, slots=slots, ttl=ttl))[0]
        eventlog.emit(EventType.ALLOCATION_RESERVE, source="allocator", user=user, allocation=allocation.id,
                      slots=list(allocation.slots), gpu_equivalents=str(allocation.gpu_equivalents))
        return allocation

    def preview(self, user: str, uid: int | None, limits: LimitValues, request: GpuRequest, *,
                slots: Sequence[Slot]) -> Allocation:
        """What `request` would be granted now, without reserving anything (for dry runs)."""
        reserve = self._reserver(user, uid, limits, request, slots=slots, ttl=self.settings.reservation_ttl_seconds)
        return self._transaction(reserve, write=False)[0]

    def grant(self, decide: Callable[[list[Allocation], float], tuple[_T, Sequence[Grant]]],
              ttl_seconds: int | None = None) -> tuple[_T, dict[str, Allocation]]:
        """A scheduling pass under the lock: `decide` sees the live allocations and the time, and names the slots
        to reserve for whom; each becomes a reservation, by the grant's key. A slot held already, or named by two
        grants, is refused whole: nothing is written."""
        ttl = self.settings.reservation_ttl_seconds if ttl_seconds is None else ttl_seconds
        budget = self.store.change_budget

        def reserve(live: list[Allocation], now: float) -> tuple[tuple[_T, dict[str, Allocation]],
                                                                  list[Allocation] | None]:
            result, grants = decide(live, now)
            held = {slot for allocation in live for slot in allocation.slots}
            made: dict[str, Allocation] = {}
            for grant in grants:
                if held & set(grant.slots) or len(set(grant.slots)) != len(grant.slots) or not grant.slots:
                    raise Ds01Error(f"the scheduling pass named slots {', '.join(grant.slots)} for {grant.user}, "
                                    "which are held already or named twice; nothing was reserved.")
                held.update(grant.slots)
                allocation = Allocation(id=f"a-{secrets.token_hex(6)}", user=grant.user, uid=grant.uid,
                                        slots=grant.slots, gpu_equivalents=grant.equivalents, created_at=now,
                                        expires_at=now + ttl, node=self.store.node)
                if not within(None if budget is None else budget - budget // 4, list(made.values()), allocation):
                    break  # the rest of the pass's grants: in the next pass, which this one's change starts
                made[grant.key] = allocation
            return (result, made), ([*live, *made.values()] if made else None)

        (result, made), _ = self._transaction(reserve)
        for allocation in made.values():
            eventlog.emit(EventType.ALLOCATION_RESERVE, source="allocator", user=allocation.user,
                          allocation=allocation.id, slots=list(allocation.slots),
                          gpu_equivalents=str(allocation.gpu_equivalents), queued=True)
        return result, made

    def release_container(self, container_id: str) -> list[Allocation]:
        """Release whatever is bound to a container that is gone."""
        def release_bound(live: list[Allocation], _now: float) -> tuple[list[Allocation], list[Allocation] | None]:
            gone = [a for a in live if a.container == container_id]
            return gone, ([a for a in live if a.container != container_id] if gone else None)

        released = self._transaction(release_bound)[0]
        for gone in released:
            eventlog.emit(EventType.ALLOCATION_RELEASE, source="allocator", user=gone.user, allocation=gone.id,
                          container=container_id, slots=list(gone.slots), gpu_equivalents=str(gone.gpu_equivalents),
                          held_seconds=round(self._clock() - gone.created_at, 3), reason="container_removed")
        return released

    def bind(self, allocation_id: str, container_id: str, container_name: str | None = None) -> Allocation:
        def bind_one(live: list[Allocation], now: float) -> tuple[Allocation, list[Allocation]]:
            current = self._find(live, allocation_id)
            if current.container not in (None, container_id):
                raise Ds01Error(f"allocation {allocation_id} is already bound to container {current.container_name}"
                                f" ({current.container}); release it first.")
            bound = replace(current, expires_at=None, container=container_id, container_name=container_name,
                            bound_at=now)
            return bound, [bound if a.id == allocation_id else a for a in live]

        bound = self._transaction(bind_one)[0]
        eventlog.emit(EventType.ALLOCATION_BIND, source="allocator", user=bound.user, allocation=bound.id,
                      container=container_id, container_name=container_name, slots=list(bound.slots))
        return bound

    def release(self, allocation_id: str) -> Allocation:
        def release_one(live: list[Allocation], _now: float) -> tuple[Allocation, list[Allocation]]:
            gone = self._find(live, allocation_id)
            return gone, [a for a in live if a.id != allocation_id]

        gone = self._transaction(release_one)[0]
        eventlog.emit(EventType.ALLOCATION_RELEASE, source="allocator", user=gone.user, allocation=gone.id,
                      container=gone.container, slots=list(gone.slots), gpu_equivalents=str(gone.gpu_equivalents),
                      held_seconds=round(self._clock() - gone.created_at, 3))
        return gone

    def release_removed(self, container_id: str) -> list[Allocation]:
        """release_container for a container the engine has removed already: with the fleet's store out of reach,
        the removal stands and the node's reconcile releases what it held once the store answers."""
        try:
            return self.release_container(container_id)
        except Denied as denied:
            if denied.reason is not Reason.STORE_UNAVAILABLE:
                raise
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="allocator", error=(
                f"container {container_id} removed, its GPUs not yet released in the store: {denied.message}"))
            return []

    def reconcile(self, found: Sequence[records.ContainerInfo], listed_at: float,
                  dry_run: bool = False) -> ReconcileReport:
        """Match allocations to the engine's containers, as listed (outside the lock) at `listed_at`: in as many
        steps as the store's change budget needs. In a fleet, a container on this node's GPUs that carries ds01's
        labels and no allocation (its node was forgotten while it ran) is counted again. Only the instance that
        holds this node's name in the fleet reconciles it."""
        self.store.confirm_owner()
        report = ReconcileReport()
        while True:
            step = ReconcileReport()
            more = self._transaction(self._settler(found, listed_at, step, None if dry_run else
                                                   self.store.change_budget), write=not dry_run, expire=False)[0]
            report.released += step.released
            report.expired += step.expired
            report.adopted += step.adopted
            report.unallocated = step.unallocated
            if not more:
                break
        if not dry_run:
            for allocation in report.expired:
                eventlog.emit(EventType.ALLOCATION_EXPIRE, source="reconcile", user=allocation.user,
                              allocation=allocation.id,
                              slots=list(allocation.slots))
            for allocation in report.released:
                eventlog.emit(EventType.ALLOCATION_RELEASE, source="reconcile", user=allocation.user,
                              allocation=allocation.id,
                              container=allocation.container, reason="container_gone")
            for allocation in report.adopted:
                eventlog.emit(EventType.ALLOCATION_BIND, source="reconcile", user=allocation.user,
                              allocation=allocation.id,
                              container=allocation.container, reason="adopted_by_label")
        for info in report.unallocated:
            eventlog.emit(EventType.RECONCILE_UNALLOCATED_GPU_CONTAINER, source="reconcile",
                          user=info.labels.get(labels.USER), container=info.id, name=info.name,
                          devices=list(info.device_ids), gpu_count=info.gpu_count)
        return report

    def _settler(self, found: Sequence[records.ContainerInfo], listed_at: float, report: ReconcileReport,
                 budget: int | None) -> Change[bool]:
        """One reconcile step into `report`; its result says whether the budget left changes for another."""
        by_id = {info.id: info for info in found}

        def settle(everything: list[Allocation], now: float) -> tuple[bool, list[Allocation] | None]:
            for listed in (report.released, report.expired, report.adopted):
                listed.clear()  # a store may run this step again, on a newer read
            changing: list[Allocation] = []
            more = False
            kept = [a for a in everything if not self.is_local(a)]  # another node's: its own reconcile's
            for allocation in (a for a in everything if self.is_local(a)):
                labelled = [i for i in found if i.labels.get(labels.ALLOCATION) == allocation.id]
                adopting = allocation.container is None and bool(labelled)
                # Bound after the listing was taken: its container may simply be newer than the listing.
                gone = allocation.container is not None and allocation.container not in by_id \
                    and (allocation.bound_at or 0) < listed_at
                lapsed = not adopting and allocation.expires_at is not None and allocation.expires_at <= now
                if (adopting or gone or lapsed) and not within(budget, changing, allocation):
                    more = True
                    kept.append(allocation)
                elif adopting:
                    # The create went through but its bind was lost (a crash): even past its TTL, the
                    # reservation belongs to the container that carries its label.
                    adopted = replace(allocation, expires_at=None, container=labelled[0].id,
                                      container_name=labelled[0].name, bound_at=listed_at)
                    changing.append(allocation)
                    report.adopted.append(adopted)
                    kept.append(adopted)
                elif lapsed or gone:
                    changing.append(allocation)
                    (report.expired if lapsed else report.released).append(allocation)
                else:
                    kept.append(allocation)
            for rebuilt in self._unrecorded(found, kept, listed_at):
                if not within(budget, changing, rebuilt):
                    more = True
                    break
                changing.append(rebuilt)
                report.adopted.append(rebuilt)
                kept.append(rebuilt)
            mine = [a for a in kept if self.is_local(a)]
            accounted = {a.container for a in mine} | {a.id for a in mine}
            reserved_slots = {s for a in mine if a.container is None for s in a.slots}
            report.unallocated = [
                info for info in found
                if info.holds_gpus and info.id not in accounted
                and info.labels.get(labels.ALLOCATION) not in accounted
                and not (info.device_ids and set(info.device_ids) <= reserved_slots)]
            return more, (kept if changing else None)

        return settle

    def _unrecorded(self, found: Sequence[records.ContainerInfo], kept: list[Allocation],
                    listed_at: float) -> list[Allocation]:
        """In a fleet: the bound allocations that this node's live ds01 containers (running, paused, restarting)
        imply and the store lacks, on slots nothing else holds (`ds01 fleet forget` removed them while the node
        ran). A stopped one's GPUs were released (gpu_hold_after_stop): its start asks for them again."""
        if not self.store.node:
            return []
        mine = [a for a in kept if self.is_local(a)]
        accounted = {a.container for a in mine} | {a.id for a in mine}
        held = {slot for a in mine for slot in a.slots}
        orphans = [info for info in found if info.status in HOLDING and info.device_ids and info.id not in accounted
                   and info.labels.get(labels.USER) and info.labels.get(labels.GPU_EQUIVALENTS)
                   and info.labels.get(labels.ALLOCATION) not in accounted and not held & set(info.device_ids)]
        return [replace(a, node=self.store.node)
                for a in allocations_from_containers(orphans, lambda _slot: Fraction(0), listed_at)]

    @staticmethod
    def _find(live: list[Allocation], allocation_id: str) -> Allocation:
        for allocation in live:
            if allocation.id == allocation_id:
                return allocation
        raise Ds01Error(f"no allocation {allocation_id}: it was released or its reservation expired. "
                        "See 'ds01 alloc list'.")
