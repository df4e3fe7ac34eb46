"""The allocation store: who holds which GPU slots, in DS01_STATE_DIR/allocations.json.

Every change happens under one file lock, acquired with backoff and jitter, and never held across a call to
the engine or NVML. Requests are two-phase: a reservation with a TTL, then a bind to the container id.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import filelock

from ds01 import eventlog, labels, records
from ds01.config import AllocationSettings, LimitValues
from ds01.errors import Busy, Ds01Error
from ds01.eventlog.types import EventType
from ds01.gpus.placement import GpuRequest, Holding, Slot, choose_slots
from ds01.statefile import write_json_atomic

STATE_NAME = "allocations.json"
STATE_VERSION = 1
_T = TypeVar("_T")
Change = Callable[[list["Allocation"], float], tuple[_T, list["Allocation"] | None]]


@dataclass(frozen=True)
class Allocation:
    id: str
    user: str
    uid: int | None
    slots: tuple[str, ...]
    gpu_equivalents: Fraction
    created_at: float
    expires_at: float | None  # while reserved; None once bound
    container: str | None = None
    container_name: str | None = None
    bound_at: float | None = None

    def holding(self) -> Holding:
        return Holding(self.id, self.user, self.slots, self.gpu_equivalents, self.container_name)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "uid": self.uid, "slots": list(self.slots),
                "gpu_equivalents": str(self.gpu_equivalents), "created_at": self.created_at,
                "expires_at": self.expires_at, "container": self.container, "container_name": self.container_name,
                "bound_at": self.bound_at}

    @classmethod
    def from_json(cls, data: Any) -> Allocation:
        """Raises ValueError/TypeError/KeyError on anything malformed."""
        allocation = cls(
            id=str(data["id"]), user=str(data["user"]),
            uid=None if data["uid"] is None else int(data["uid"]),
            slots=tuple(str(s) for s in data["slots"]),
            gpu_equivalents=Fraction(data["gpu_equivalents"]),
            created_at=float(data["created_at"]),
            expires_at=None if data["expires_at"] is None else float(data["expires_at"]),
            container=None if data["container"] is None else str(data["container"]),
            container_name=None if data["container_name"] is None else str(data["container_name"]),
            bound_at=None if data["bound_at"] is None else float(data["bound_at"]),
        )
        if not allocation.slots or (allocation.container is None) == (allocation.expires_at is None):
            raise ValueError(f"allocation {allocation.id} is neither a reservation nor bound")
        return allocation


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


class StateCorrupt(Ds01Error):
    pass


def _parse_state(raw: bytes, path: Path) -> list[Allocation]:
    try:
        document = json.loads(raw)
        if document["version"] != STATE_VERSION:
            raise ValueError(f"version {document['version']!r}")
        allocations = [Allocation.from_json(item) for item in document["allocations"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise StateCorrupt(f"{path} is corrupt ({exc!r})") from exc
    booked = [slot for a in allocations for slot in a.slots]
    if len(booked) != len(set(booked)):
        raise StateCorrupt(f"{path} books a slot twice")
    return allocations


def allocations_from_containers(found: Sequence[records.ContainerInfo],
                                equivalents: Callable[[str], Fraction], now: float) -> list[Allocation]:
    """The bound allocations the engine's containers imply, for rebuilding a lost state file.

    A slot named by several containers (a stopped one whose GPUs were handed on, say) goes to one of them,
    running containers first; the others are reported, so the rebuilt state never books a slot twice.
    """
    rebuilt: list[Allocation] = []
    taken: set[str] = set()
    for info in sorted(found, key=lambda c: c.status != "running"):
        if not info.device_ids:
            continue
        if taken & set(info.device_ids) or len(set(info.device_ids)) != len(info.device_ids):
            eventlog.emit(EventType.ALLOCATOR_REBUILD_CONFLICT, source="allocator", container=info.id, name=info.name,
                          devices=list(info.device_ids))
            continue
        taken.update(info.device_ids)
        found_labels = info.labels
        uid = found_labels.get(labels.UID, "")
        exact = found_labels.get(labels.GPU_EQUIVALENTS)
        rebuilt.append(Allocation(
            id=found_labels.get(labels.ALLOCATION) or f"rebuilt-{info.id[:12]}",
            user=found_labels.get(labels.USER, "unknown"), uid=int(uid) if uid.isdigit() else None,
            slots=info.device_ids,
            gpu_equivalents=Fraction(exact) if exact else sum((equivalents(s) for s in info.device_ids), Fraction(0)),
            created_at=now, expires_at=None, container=info.id, container_name=info.name, bound_at=now))
    return rebuilt


def read_allocations(state_dir: Path) -> list[Allocation]:
    """The allocations on disk, for observers: no lock (writes are atomic renames) and no expiry."""
    path = state_dir / STATE_NAME
    try:
        return _parse_state(path.read_bytes(), path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise Ds01Error(f"cannot read {path}: {exc.strerror}") from exc


class Allocator:
    def __init__(self, state_dir: Path, settings: AllocationSettings,
                 rebuild: Callable[[], list[Allocation]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STATE_NAME
        self.backup = state_dir / f"{STATE_NAME}.bak"
        self.settings = settings
        self._rebuild = rebuild
        self._clock = clock
        self._lock = filelock.FileLock(state_dir / "allocations.lock")
        self.lock_hold_seconds: deque[float] = deque(maxlen=100_000)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        deadline = time.monotonic() + self.settings.lock_timeout_seconds
        delay = 0.0005
        while True:
            try:
                self._lock.acquire(timeout=0)
                break
            except filelock.Timeout:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy(f"the allocator is busy: its lock {self._lock.lock_file} stayed taken for "
                               f"{self.settings.lock_timeout_seconds}s. Nothing was changed; try again.") from None
                time.sleep(min(left, delay * random.uniform(0.5, 1.5)))  # noqa: S311 - jitter, not secrecy
                delay = min(delay * 2, 0.02)
        taken = time.perf_counter()
        try:
            yield
        finally:
            self._lock.release()
            self.lock_hold_seconds.append(time.perf_counter() - taken)

    def _read(self) -> tuple[bytes | None, list[Allocation]]:
        """Under the lock: the raw bytes and the allocations. A missing file with no backup is a first run."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.backup.exists():
                raise StateCorrupt(f"{self.path} is missing but its backup exists") from None
            return None, []
        return raw, _parse_state(raw, self.path)

    def _write(self, allocations: Sequence[Allocation], keep_backup: bool = True) -> None:
        document = {"version": STATE_VERSION, "allocations": [a.to_json() for a in allocations]}
        write_json_atomic(self.path, document, self.backup if keep_backup else None)

    def _recover(self, corrupt: StateCorrupt) -> None:
        """Rebuild from the containers' labels (engine call outside the lock), else from the verified backup."""
        eventlog.emit(EventType.ALLOCATOR_STATE_CORRUPT, source="allocator", error=str(corrupt))
        try:
            if self._rebuild is None:
                raise Ds01Error("no engine access was given to rebuild from")
            rebuilt, origin = self._rebuild(), "container labels"
        except Ds01Error as exc:
            try:
                rebuilt, origin = _parse_state(self.backup.read_bytes(), self.backup), "the backup"
            except (OSError, StateCorrupt) as backup_problem:
                raise Ds01Error(f"{corrupt}; rebuilding from container labels failed ({exc}) and the backup is "
                                f"unusable ({backup_problem}). Run 'ds01 reconcile' once the engine is up.") from exc
        with self._locked():
            try:
                self._read()
                return  # another process recovered first
            except StateCorrupt:
                if self.path.exists():
                    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(self._clock()))}-{secrets.token_hex(3)}"
                    self.path.rename(self.path.with_name(f"{STATE_NAME}.corrupt-{stamp}"))
                self._write(rebuilt, keep_backup=False)
        eventlog.emit(EventType.ALLOCATOR_STATE_REBUILT, source="allocator", origin=origin, allocations=len(rebuilt))

    def _transaction(self, change: Callable[[list[Allocation], float], tuple[_T, list[Allocation] | None]],
                     write: bool = True, expire: bool = True) -> tuple[_T, list[Allocation]]:
        """Run `change` on the live allocations under the lock; it returns (result, new list or None).

        Reservations past their TTL are dropped first and returned alongside the result; with expire=False
        `change` sees them too and decides.
        """
        for _attempt in range(3):
            try:
                with self._locked():
                    raw, allocations = self._read()
                    now = self._clock()
                    expired = [a for a in allocations if expire and a.expires_at is not None and a.expires_at <= now]
                    live = [a for a in allocations if a not in expired]
                    result, changed = change(live, now)
                    if write and (changed is not None or expired):
                        self._write(live if changed is None else changed, keep_backup=raw is not None)
            except StateCorrupt as corrupt:
                self._recover(corrupt)
                continue
            for gone in expired if write else ():
                eventlog.emit(EventType.ALLOCATION_EXPIRE, source="allocator", user=gone.user, allocation=gone.id,
                              slots=list(gone.slots))
            return result, expired
        raise Ds01Error(f"{self.path} kept turning corrupt while being recovered; see the event log.")

    def allocations(self) -> list[Allocation]:
        return self._transaction(lambda live, _now: (live, None))[0]

    def _reserver(self, user: str, uid: int | None, limits: LimitValues, request: GpuRequest, *,
                  slots: Sequence[Slot], ttl: int) -> Change[Allocation]:
        def reserve(live: list[Allocation], now: float) -> tuple[Allocation, list[Allocation]]:
            chosen = choose_slots(user, limits, self.settings, request, slots=slots,
                                  holdings=[a.holding() for a in live])
            allocation = Allocation(
                id=f"a-{secrets.token_hex(6)}", user=user, uid=uid, slots=tuple(s.uuid for s in chosen),
                gpu_equivalents=sum((s.equivalents for s in chosen), Fraction(0)), created_at=now,
                expires_at=now + ttl)
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
                made[grant.key] = Allocation(id=f"a-{secrets.token_hex(6)}", user=grant.user, uid=grant.uid,
                                             slots=grant.slots, gpu_equivalents=grant.equivalents, created_at=now,
                                             expires_at=now + ttl)
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

    def reconcile(self, found: Sequence[records.ContainerInfo], listed_at: float,
                  dry_run: bool = False) -> ReconcileReport:
        """Match allocations to the engine's containers, as listed (outside the lock) at `listed_at`."""
        by_id = {info.id: info for info in found}
        report = ReconcileReport()

        def settle(everything: list[Allocation], now: float) -> tuple[None, list[Allocation] | None]:
            kept = []
            for allocation in everything:
                labelled = [i for i in found if i.labels.get(labels.ALLOCATION) == allocation.id]
                if allocation.container is None and labelled:
                    # The create went through but its bind was lost (a crash): even past its TTL, the
                    # reservation belongs to the container that carries its label.
                    adopted = replace(allocation, expires_at=None, container=labelled[0].id,
                                      container_name=labelled[0].name, bound_at=listed_at)
                    report.adopted.append(adopted)
                    kept.append(adopted)
                elif allocation.expires_at is not None and allocation.expires_at <= now:
                    report.expired.append(allocation)
                # Bound after the listing was taken: its container may simply be newer than the listing.
                elif allocation.container is not None and allocation.container not in by_id \
                        and (allocation.bound_at or 0) < listed_at:
                    report.released.append(allocation)
                else:
                    kept.append(allocation)
            accounted = {a.container for a in kept} | {a.id for a in kept}
            reserved_slots = {s for a in kept if a.container is None for s in a.slots}
            report.unallocated = [
                info for info in found
                if info.holds_gpus and info.id not in accounted
                and info.labels.get(labels.ALLOCATION) not in accounted
                and not (info.device_ids and set(info.device_ids) <= reserved_slots)]
            return None, (kept if report.released or report.adopted or report.expired else None)

        self._transaction(settle, write=not dry_run, expire=False)
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

    @staticmethod
    def _find(live: list[Allocation], allocation_id: str) -> Allocation:
        for allocation in live:
            if allocation.id == allocation_id:
                return allocation
        raise Ds01Error(f"no allocation {allocation_id}: it was released or its reservation expired. "
                        "See 'ds01 alloc list'.")
