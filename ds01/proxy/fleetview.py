"""`container gpus --fleet` (GET /ds01/gpus?fleet=1): where in the fleet capacity is free for the caller, by
node, model and profile, the slots their limits let them use only; nodes that are down are marked, and their
free slots not offered."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

from ds01.fleet.nodes import FleetView, SlotRecord
from ds01.proxy.runas import Caller
from ds01.units import format_equivalents


def _usable(slot: SlotRecord, caller: Caller) -> bool:
    limits = caller.limits
    if slot.profile is None:
        return limits.allow_full_gpu
    return limits.allowed_mig_profiles is None or slot.profile in limits.allowed_mig_profiles


def fleet_view(caller: Caller, view: FleetView, here: str, now: float) -> dict[str, Any]:
    shown = []
    for name in sorted(view.nodes):
        record = view.nodes[name]
        taken = {slot for allocation in view.held_on(name) for slot in allocation.slots}
        free = Counter((slot.model, slot.profile, slot.memory_mib, slot.equivalents) for slot in record.slots
                       if slot.healthy and slot.slot not in taken and _usable(slot, caller))
        alive = name in view.alive
        shown.append({
            "node": name, "alive": alive, "here": name == here, "last_seen": view.last_seen(name, now),
            "free": [{"model": model, "profile": profile, "memory_mib": memory,
                      "equivalents": format_equivalents(Fraction(equivalents)), "count": count}
                     for (model, profile, memory, equivalents), count in sorted(
                         free.items(), key=lambda item: (item[0][1] is not None, -Fraction(item[0][3])))]
            if alive else [],
            "free_gpu_equivalents": format_equivalents(
                sum((Fraction(e) * n for (_, _, _, e), n in free.items()), Fraction(0)) if alive else Fraction(0)),
        })
    mine = sum((a.gpu_equivalents for a in view.allocations if a.user == caller.user), Fraction(0))
    return {"user": caller.user, "here": here, "quota": format_equivalents(caller.limits.gpu_quota),
            "held_in_fleet": format_equivalents(mine),
            "nodes": shown}
