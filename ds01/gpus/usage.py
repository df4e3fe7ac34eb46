"""Each user's recent GPU use for the queue's fair share: GPU-equivalent-hours, each hour counting half after one
`usage_half_life` and a quarter after two, from the allocation history in the event log and what is held now."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

from ds01.eventlog.reader import EventFilter, EventLog
from ds01.eventlog.types import EventType
from ds01.gpus.allocator import Allocation

HORIZON_HALF_LIVES = 10  # use older than this weighs under 0.1%: not read


@dataclass(frozen=True)
class Held:
    """One stretch of holding: `equivalents` GPU-equivalents from `start` to `end` (epoch seconds)."""

    user: str
    equivalents: float
    start: float
    end: float


def decayed_hours(stretches: Iterable[Held], now: float, half_life_seconds: float) -> dict[str, float]:
    """Per user, the GPU-equivalent-hours of `stretches`, each moment weighted 2^(-age / half_life): the
    integral of that weight over the stretch, in closed form, so one long holding counts as its pieces would."""
    rate = math.log(2) / half_life_seconds
    used: dict[str, float] = defaultdict(float)
    for held in stretches:
        start, end = min(held.start, now), min(held.end, now)
        if end <= start or held.equivalents <= 0:
            continue
        weight = (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start))) / rate
        used[held.user] += held.equivalents * weight / 3600
    return dict(used)


def fairshare_factors(used: dict[str, float], shares: dict[str, float]) -> dict[str, float]:
    """F = 2^(-U/S) for each user of `shares`: U their part of all the decayed use, S their part of all shares.
    A user with no recent use has 1; one who used their share exactly, 0.5."""
    total_used = sum(used.get(user, 0.0) for user in shares)
    total_share = sum(shares.values())
    factors = {}
    for user, share in shares.items():
        normalised_use = used.get(user, 0.0) / total_used if total_used > 0 else 0.0
        factors[user] = 2.0 ** (-normalised_use / (share / total_share)) if total_share > 0 else 1.0
    return factors


def history(log: EventLog, now: float, half_life_seconds: float) -> tuple[list[Held], int]:
    """The holdings the log's releases close within the horizon (an expired reservation was never used), and
    how many releases could not be read (no duration or amount): the caller reports them."""
    since = datetime.fromtimestamp(now - HORIZON_HALF_LIVES * half_life_seconds, UTC)
    stretches, unreadable = [], 0
    for event in log.events(EventFilter(type_prefix=EventType.ALLOCATION_RELEASE.value, since=since)):
        if event.type != EventType.ALLOCATION_RELEASE:
            continue
        try:
            held_for = float(event.details["held_seconds"])
            equivalents = float(Fraction(str(event.details["gpu_equivalents"])))
        except (KeyError, ValueError, ZeroDivisionError):
            unreadable += 1
            continue
        end = event.timestamp
        stretches.append(Held(event.user or "?", equivalents, end - held_for, end))
    return stretches, unreadable


def holding_now(allocations: Iterable[Allocation], now: float) -> list[Held]:
    """What the live allocations have held so far (reservations too: they keep others off the slots)."""
    return [Held(a.user, float(a.gpu_equivalents), a.created_at, now) for a in allocations]
