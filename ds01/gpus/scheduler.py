"""The queue's scheduling pass: a pure function of who waits, who holds what until when, and the clock.

Waiters are taken in priority order (fair share, age, the group's priority). Each is placed on a timeline of the
slots: at the earliest moment from now on when the slots it needs are free, and stay free for its whole runtime,
of both the allocations holding them (until their deadline) and the places already given to waiters ahead of it.
A waiter placed now is granted; one placed later holds that place as a reservation, which nobody behind it may
take unless they are done before it begins (backfill). So a place is an upper bound on the start, if nothing of
higher priority arrives, and a reservation can only move earlier. Only deadlines count: idle reclamation is not
certain, so it is never counted on. A waiter that has waited `max_age` goes ahead of every one that has not (the
oldest first), so nobody waits much longer than `max_age` plus the longest runtime of what holds its slots. A
waiter held back by its own quota reserves nothing: its start is when its own containers end, if slots are free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ds01.config import AllocationSettings, LimitValues, SchedulerSettings
from ds01.errors import Denied
from ds01.gpus.placement import GpuRequest, Holding, Slot, choose_slots
from ds01.reasons import Reason

FOREVER = math.inf
WAITABLE = frozenset({Reason.CAPACITY, Reason.QUOTA})  # what holdings cause, and their end can lift


@dataclass(frozen=True)
class Waiter:
    id: str
    user: str
    uid: int | None
    limits: LimitValues
    request: GpuRequest
    joined_at: float
    runtime_seconds: float  # how long its grant holds at most (FOREVER: no deadline)
    share: float  # its group's
    group_priority: float


@dataclass(frozen=True)
class Occupant:
    """A live allocation, holding its slots until `free_by` at the latest (FOREVER: no deadline)."""

    holding: Holding
    free_by: float


@dataclass(frozen=True)
class Priority:
    total: float
    fairshare: float  # the factor 2^(-U/S), in [0, 1]
    age: float  # the factor min(1, waited / max_age), in [0, 1]
    group: float


@dataclass(frozen=True)
class Placement:
    waiter: Waiter
    priority: Priority
    position: int  # 1 for the first in the queue
    slots: tuple[str, ...]  # granted now, or reserved from `start`; () when no start is known
    start: float | None  # now for a grant; None: unknown (the slots it needs are held with no deadline)
    granted: bool
    waits_for: str  # what holds it back now, in words ("" when granted)
    blocked_by: Reason | None = None  # and its reason: capacity, or the user's own quota
    never: Denied | None = None  # it can never be granted as things are (its limits changed, say)


@dataclass(frozen=True)
class _Span:
    """A place on the timeline: an occupant's, or one given in this pass."""

    holding: Holding
    begins: float
    ends: float

    def overlaps(self, begins: float, ends: float) -> bool:
        return self.begins < ends and begins < self.ends


def priority_of(waiter: Waiter, fairshare: float, settings: SchedulerSettings, now: float) -> Priority:
    age = min(1.0, max(0.0, now - waiter.joined_at) / settings.max_age_seconds)
    total = settings.weight_fairshare * fairshare + settings.weight_age * age + waiter.group_priority
    return Priority(total, fairshare, age, waiter.group_priority)


def never_grantable(waiter: Waiter, allocation: AllocationSettings, slots: Sequence[Slot]) -> Denied | None:
    """What would refuse the request even with every healthy slot free: its size, profile, kind or quota."""
    try:
        choose_slots(waiter.user, waiter.limits, allocation, waiter.request, slots=slots, holdings=())
    except Denied as denied:
        return denied
    return None


def plan(waiters: Sequence[Waiter], occupants: Sequence[Occupant], *, slots: Sequence[Slot],
         fairshare: Mapping[str, float], allocation: AllocationSettings, settings: SchedulerSettings,
         now: float) -> list[Placement]:
    """Every waiter's place, in queue order (highest priority first, then the earliest to join)."""
    ranked = sorted(((priority_of(w, fairshare.get(w.user, 1.0), settings, now), w) for w in waiters),
                    key=lambda pair: queue_order(pair[1], pair[0], settings, now))
    spans = [_Span(o.holding, now, max(o.free_by, now)) for o in occupants]
    placed = []
    for position, (priority, waiter) in enumerate(ranked, start=1):
        placement = _place(waiter, priority, position, spans=spans, slots=slots, allocation=allocation, now=now)
        if not placement.granted and placement.blocked_by is Reason.QUOTA:
            # Its own containers hold it back, and their end frees slots as well as quota: it reserves none, so
            # that what is free meanwhile is not kept idle for it (nor one user's waits stall everyone's).
            placement = dataclasses.replace(placement, slots=())
        if placement.start is not None and placement.slots:
            spans.append(_Span(Holding(waiter.id, waiter.user, placement.slots, equivalents_of(placement.slots, slots),
                                       None), placement.start, placement.start + waiter.runtime_seconds))
        placed.append(placement)
    return placed


def queue_order(waiter: Waiter, priority: Priority, settings: SchedulerSettings,
                 now: float) -> tuple[bool, float, float, str]:
    """Those who have waited max_age first, the oldest first; then the highest priority, the earliest to join."""
    aged = now - waiter.joined_at >= settings.max_age_seconds
    return (not aged, waiter.joined_at if aged else -priority.total, waiter.joined_at, waiter.id)


def _place(waiter: Waiter, priority: Priority, position: int, *, spans: Sequence[_Span], slots: Sequence[Slot],
           allocation: AllocationSettings, now: float) -> Placement:
    """The earliest moment, now or when a span ends, from which the waiter's slots stay free for its runtime."""
    moments = sorted({now, *(span.ends for span in spans if now < span.ends < FOREVER)})
    waits_for, blocked_by = "", None
    for moment in moments:
        ends = moment + waiter.runtime_seconds
        holdings = [span.holding for span in spans if span.overlaps(moment, ends)]
        try:
            chosen = choose_slots(waiter.user, waiter.limits, allocation, waiter.request, slots=slots,
                                  holdings=holdings)
        except Denied as denied:
            if denied.reason not in WAITABLE:
                return Placement(waiter, priority, position, (), None, False, denied.message, denied.reason,
                                 never=denied)
            if blocked_by is None:  # what holds it back now, not at a later moment
                waits_for, blocked_by = denied.message, denied.reason
            continue
        if moment > now:
            chosen = _snug(waiter, chosen, moment, spans=spans, holdings=holdings, slots=slots,
                           allocation=allocation, now=now)
        return Placement(waiter, priority, position, tuple(slot.uuid for slot in chosen), moment, moment == now,
                         waits_for, blocked_by)
    return Placement(waiter, priority, position, (), None, False, waits_for, blocked_by)


def _snug(waiter: Waiter, chosen: list[Slot], moment: float, *, spans: Sequence[_Span],
          holdings: Sequence[Holding], slots: Sequence[Slot], allocation: AllocationSettings,
          now: float) -> list[Slot]:
    """The slots to reserve from `moment`: of those free then, the request leaves the ones idle longest before
    it to others wherever it can do without them, so that the gap before the reservation stays as short as it
    can, and what is free now stays free for backfill."""
    def idle_since(uuid: str) -> float:
        return max((span.ends for span in spans if uuid in span.holding.slots and span.ends <= moment), default=now)

    held = {uuid for holding in holdings for uuid in holding.slots}
    idle = sorted((idle_since(slot.uuid), slot.uuid) for slot in slots if slot.uuid not in held)
    left_alone: list[Holding] = []
    for since, uuid in idle:
        if since >= moment:
            break
        trial = [*left_alone, Holding(f"gap:{uuid}", "", (uuid,), Fraction(0), None)]  # nobody's: no quota
        try:
            chosen = choose_slots(waiter.user, waiter.limits, allocation, waiter.request, slots=slots,
                                  holdings=[*holdings, *trial])
        except Denied:
            continue
        left_alone = trial
    return chosen


def equivalents_of(chosen: Sequence[str], slots: Sequence[Slot]) -> Fraction:
    by_uuid = {slot.uuid: slot.equivalents for slot in slots}
    return sum((by_uuid.get(uuid, Fraction(0)) for uuid in chosen), Fraction(0))
