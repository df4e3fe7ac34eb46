"""What the proxy tells users about the GPUs (`container gpus`) and the queue (`container queue`): every slot and
its state, when held slots free at the latest, the caller's quota and use, and each waiting request's place.
Another user's name is shown only to admins; to others they are "another user", counted but not named."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from ds01.errors import Denied
from ds01.etcd import StoreUnavailable
from ds01.fleet.nodes import read_fleet
from ds01.gpus.allocator import Allocation, Allocator
from ds01.gpus.etcdstore import EtcdStore, unavailable
from ds01.gpus.placement import Slot
from ds01.gpus.queuestate import Entry
from ds01.gpus.scheduler import Placement
from ds01.proxy.fleetview import fleet_view
from ds01.proxy.images import check_parameters
from ds01.proxy.outcomes import Deny, Outcome, Reply, Request
from ds01.proxy.queue import Queue
from ds01.proxy.queuewords import at_the_latest
from ds01.proxy.routes import RouteKind
from ds01.proxy.runas import Caller
from ds01.reasons import Reason
from ds01.units import format_equivalents

ANOTHER_USER = "another user"
AllSlots = Callable[[], tuple[list[Slot], frozenset[str]]]  # every slot, and the GPUs out of use
FreeBy = Callable[[Allocation], float]  # when an allocation's slots are free at the latest (inf: unknown)


def when(moment: float, now: float) -> dict[str, Any]:
    known = moment != float("inf")
    return {"at": moment if known else None, "text": at_the_latest(moment if known else None, now)}


def gpus_view(caller: Caller, *, slots: Sequence[Slot], unhealthy: frozenset[str], live: Sequence[Allocation],
              held: Sequence[Allocation], waiting: Sequence[Entry], free_by: FreeBy,
              now: float | None = None) -> dict[str, Any]:
    """Every slot (`slots`: all of them, `unhealthy` the GPUs out of use) with its state: free, held, reserved for
    the queue, or unhealthy; `held`: the caller's allocations wherever in the fleet, for their quota."""
    now = time.time() if now is None else now
    holder = {slot: a for a in live for slot in a.slots}
    reserved = {slot: (entry, entry.placement.start) for entry in waiting if entry.placement is not None
                and entry.placement.start is not None and not entry.placement.granted
                for slot in entry.placement.slots}
    shown = []
    for slot in sorted(slots, key=lambda s: (s.gpu_index, s.profile is not None, s.uuid)):
        row: dict[str, Any] = {"slot": slot.uuid, "gpu": slot.gpu_index, "profile": slot.profile,
                               "equivalents": format_equivalents(slot.equivalents), "state": "free"}
        allocation = holder.get(slot.uuid)
        if slot.gpu_uuid in unhealthy:
            row["state"] = "unhealthy"
        elif allocation is not None:
            mine = caller.is_admin or allocation.user == caller.user
            row |= {"state": "held", "holder": allocation.user if mine else ANOTHER_USER,
                    "container": _container_of(allocation) if mine else None,
                    "frees": when(free_by(allocation), now)}
        elif slot.uuid in reserved:
            row["state"] = "reserved"
        if slot.uuid in reserved and row["state"] != "unhealthy":
            entry, start = reserved[slot.uuid]
            row["reserved"] = {"for": entry.user if caller.is_admin or entry.user == caller.user else ANOTHER_USER,
                               "position": entry.placement.position if entry.placement else None,
                               "from": when(start or float("inf"), now)}
        shown.append(row)
    own = [a for a in held if a.user == caller.user]
    return {"user": caller.user, "quota": format_equivalents(caller.limits.gpu_quota),
            "held": format_equivalents(sum((a.gpu_equivalents for a in own), Fraction(0))),
            "queue_length": len(waiting), "waiting_of_yours": sum(e.user == caller.user for e in waiting),
            "slots": shown}


def _container_of(allocation: Allocation) -> str:
    """The holder's container by name (or short id, for a docker run that named none), or that it is being made."""
    name = (allocation.container_name or "").lstrip("/").split("._.")[0]
    return name or (allocation.container[:12] if allocation.container else "(being created)")


def queue_view(caller: Caller, waiting: Sequence[Entry], everyone: bool, now: float | None = None) -> dict[str, Any]:
    """The caller's waiting requests (everyone's, for an admin who asks), in queue order, and how many others."""
    if everyone and not caller.is_admin:
        raise Denied(Reason.ADMIN_ONLY, "only admins see everyone's requests (--all); `container queue` shows yours "
                                        "and counts the others.")
    now = time.time() if now is None else now
    shown = [_entry(entry, now) for entry in waiting if everyone or entry.user == caller.user]
    return {"waiting": shown, "others": sum(entry.user != caller.user for entry in waiting) if not everyone else 0,
            "length": len(waiting)}


def _start(placement: Placement | None, now: float) -> dict[str, Any]:
    """When it starts at the latest; for one its own quota holds back, no bound: it reserves no slots."""
    shown = when(placement.start if placement and placement.start is not None else float("inf"), now)
    if placement is not None and placement.blocked_by is Reason.QUOTA and placement.start is not None:
        shown = {**shown, "text": f"once your own containers free your quota ({shown['text']}), if GPUs are free "
                                  "then"}
    return shown


def _entry(entry: Entry, now: float) -> dict[str, Any]:
    placement = entry.placement
    priority = placement.priority if placement is not None else None
    return {
        "id": entry.id, "user": entry.user, "kind": entry.kind, "origin": entry.origin,
        "position": placement.position if placement else None,
        "priority": None if priority is None else {
            "total": round(priority.total, 3), "fairshare": round(priority.fairshare, 4),
            "age": round(priority.age, 4), "group": priority.group},
        "waits_for": placement.waits_for if placement else "",
        "reserved_slots": list(placement.slots) if placement and placement.start is not None else [],
        "start": _start(placement, now),
        "waited_seconds": round(now - entry.joined_at), "gives_up_in_seconds": max(0, round(entry.wait_until - now)),
    }


class Ds01Routes:
    """ds01's own endpoints: GET /ds01/gpus, GET /ds01/queue[?all=1], DELETE /ds01/queue/ID."""

    def __init__(self, queue: Queue, allocator: Allocator, all_slots: AllSlots) -> None:
        self._queue = queue
        self._allocator = allocator
        self._all_slots = all_slots

    def _fleet(self, caller: Caller) -> dict[str, Any]:
        store = self._allocator.store
        if not isinstance(store, EtcdStore):
            raise Denied(Reason.BAD_REQUEST, "this server is in no fleet (its allocation store is a local file); "
                                             "`container gpus` shows its GPUs.")
        try:
            view = read_fleet(store.etcd, store.prefix)
        except StoreUnavailable as problem:
            raise unavailable(problem) from problem
        return fleet_view(caller, view, store.node, time.time())

    def answer(self, request: Request) -> Outcome:
        caller, route = request.session.caller, request.route
        if route.kind is RouteKind.CAPACITY:
            fleet = check_parameters(request.query, frozenset({"fleet"}), "GET /ds01/gpus").get("fleet", ["0"])[-1]
            if fleet not in ("0", "1"):
                raise Denied(Reason.BAD_REQUEST, f"GET /ds01/gpus takes fleet=0 or fleet=1, not fleet={fleet}")
            if fleet == "1":
                return Reply(200, self._fleet(caller))
            slots, unhealthy = self._all_slots()
            everywhere = self._allocator.fleet_allocations()
            return Reply(200, gpus_view(caller, slots=slots, unhealthy=unhealthy,
                                        live=[a for a in everywhere if self._allocator.is_local(a)],
                                        held=[a for a in everywhere if a.user == caller.user],
                                        waiting=self._queue.waiting(), free_by=self._queue.free_by))
        if route.object_id is not None:  # DELETE /ds01/queue/ID: the CLI's Ctrl-C
            check_parameters(request.query, frozenset(), "DELETE /ds01/queue/ID")
            if not self._queue.cancel(caller.user, route.object_id, admin=caller.is_admin):
                return Deny(Reason.NOT_FOUND, f"no waiting request {route.object_id} of yours", status=404)
            return Reply(200, {"cancelled": route.object_id})
        everyone = check_parameters(request.query, frozenset({"all"}), "GET /ds01/queue").get("all", ["0"])[-1]
        if everyone not in ("0", "1"):
            return Deny(Reason.BAD_REQUEST, f"GET /ds01/queue takes all=0 or all=1, not all={everyone}", status=400)
        return Reply(200, queue_view(caller, self._queue.waiting(), everyone == "1"))
