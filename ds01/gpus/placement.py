"""Which slots a GPU request gets: a pure function of the request, the user's limits and who holds what."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ds01.config import AllocationSettings, LimitValues
from ds01.errors import Denied
from ds01.reasons import Reason
from ds01.units import format_equivalents


@dataclass(frozen=True)
class Slot:
    """A unit the allocator hands out: a whole GPU, or one MIG device."""

    uuid: str
    gpu_uuid: str  # the physical GPU (the slot itself for a whole GPU)
    gpu_index: int
    profile: str | None  # MIG profile; None for a whole GPU
    equivalents: Fraction
    memory_used_bytes: int  # live load on the physical GPU, a tie-breaker for spreading
    utilization_percent: int | None

    @property
    def is_mig(self) -> bool:
        return self.profile is not None


@dataclass(frozen=True)
class GpuRequest:
    count: int = 0  # --gpus N
    all_gpus: bool = False  # --gpus all: the user's per-container maximum
    mig_profile: str | None = None  # --mig PROFILE: one slice of that profile
    devices: tuple[str, ...] = ()  # --gpus device=UUID,...: exactly these


@dataclass(frozen=True)
class Holding:
    """Slots a user holds now, for quota messages and load."""

    allocation_id: str
    user: str
    slots: tuple[str, ...]
    equivalents: Fraction
    container_name: str | None


def _holdings_text(holdings: Sequence[Holding]) -> str:
    parts = []
    for holding in holdings:
        owner = f"container {holding.container_name}" if holding.container_name else \
            f"reservation {holding.allocation_id} (not yet bound to a container)"
        if "/" in holding.slots[0]:  # another fleet node's, its slots named NODE/UUID
            owner += f" on {holding.slots[0].split('/')[0]}"
        parts.append(f"{owner}: {', '.join(holding.slots)} ({format_equivalents(holding.equivalents)})")
    return "; ".join(parts) or "nothing"


def _quota_denial(user: str, limits: LimitValues, mine: Sequence[Holding], needed: Fraction) -> Denied:
    held = sum((h.equivalents for h in mine), Fraction(0))
    return Denied(Reason.QUOTA, (
        f"{user} holds {format_equivalents(held)} of a quota of {format_equivalents(limits.gpu_quota)} "
        f"GPU-equivalents and this request needs {format_equivalents(needed)} more. Held by: "
        f"{_holdings_text(mine)}. Stop or remove one of these (container remove NAME), ask for a smaller "
        "share (--mig PROFILE), or ask an admin for a larger quota."))


def _check_profile_allowed(profile: str, limits: LimitValues) -> None:
    allowed = limits.allowed_mig_profiles
    if allowed is not None and profile not in allowed:
        raise Denied(Reason.MIG_PROFILE_NOT_ALLOWED, (
            f"MIG profile {profile} is not allowed for you; allowed: {', '.join(sorted(allowed)) or 'none'}."))


def _check_slot_allowed(slot: Slot, limits: LimitValues) -> None:
    if slot.profile is None and not limits.allow_full_gpu:
        raise Denied(Reason.FULL_GPU_NOT_ALLOWED, (
            f"your limits do not allow whole GPUs ({slot.uuid} is one). Ask for a MIG slice with --mig PROFILE, "
            "or ask an admin for allow_full_gpu."))
    if slot.profile is not None:
        _check_profile_allowed(slot.profile, limits)


def _order(candidates: list[Slot], load: dict[str, Fraction], strategy: str) -> list[Slot]:
    """Best first; equals keep the order the slots were given in (the sort is stable)."""
    if strategy == "pack":  # fill the busiest GPU, smallest fitting slice first
        return sorted(candidates, key=lambda s: (-load[s.gpu_uuid], s.equivalents))
    # spread: least-allocated GPU, then the least live memory and utilization, largest slice first
    return sorted(candidates, key=lambda s: (load[s.gpu_uuid], s.memory_used_bytes, s.utilization_percent or 0,
                                             -s.equivalents))


def _completes(slot: Slot, cheapest: list[Fraction], still: int, spent: Fraction, budget: Fraction | None) -> bool:
    """Whether taking `slot` leaves enough slots, cheap enough, to finish the request within the budget."""
    others = list(cheapest)
    others.remove(slot.equivalents)
    if len(others) < still:
        return False
    return budget is None or spent + slot.equivalents + sum(others[:still], Fraction(0)) <= budget


def _pick(candidates: list[Slot], count: int, load: dict[str, Fraction], strategy: str,
          budget: Fraction | None) -> list[Slot] | None:
    """Greedy choice of `count` slots within `budget` GPU-equivalents, re-ranking as load changes.

    A slot is only taken if the cheapest slots left could still complete the request within the budget.
    """
    chosen: list[Slot] = []
    remaining = list(candidates)
    spent = Fraction(0)
    load = defaultdict(Fraction, load)
    while len(chosen) < count:
        still = count - len(chosen) - 1
        cheapest = sorted(s.equivalents for s in remaining)
        fitting = [s for s in remaining if _completes(s, cheapest, still, spent, budget)]
        if not fitting:
            return None
        best = _order(fitting, load, strategy)[0]
        chosen.append(best)
        remaining.remove(best)
        spent += best.equivalents
        load[best.gpu_uuid] += best.equivalents
    return chosen


def _explicit(request: GpuRequest, limits: LimitValues, by_uuid: dict[str, Slot], held: set[str]) -> list[Slot]:
    if len(set(request.devices)) != len(request.devices):
        raise Denied(Reason.BAD_REQUEST, f"a device is named twice in {', '.join(request.devices)}; name each once.")
    wanted = []
    for uuid in request.devices:
        if uuid not in by_uuid:
            raise Denied(Reason.UNKNOWN_DEVICE, (
                f"{uuid} is not a GPU or MIG device that can be handed out here (unknown or unhealthy). "
                "See the devices with 'ds01 gpus', or ask for a count with --gpus N."))
        slot = by_uuid[uuid]
        _check_slot_allowed(slot, limits)
        if uuid in held:
            raise Denied(Reason.CAPACITY, f"{uuid} is already allocated. Ask for a count with --gpus N instead.")
        wanted.append(slot)
    return wanted


def _uses_mig(limits: LimitValues, settings: AllocationSettings) -> bool:
    """Whether a count of GPUs (no profile, no devices) is served from MIG slices for this user."""
    return settings.mig_preference == "all" or (settings.mig_preference == "restricted" and not limits.allow_full_gpu)


def may_draw(request: GpuRequest, slot: Slot, limits: LimitValues, settings: AllocationSettings) -> bool:
    """Whether `slot`, were it free, is of the slots `request` may be granted from: the choice `choose_slots`
    makes, leaving out the count and the quota. For a request that waits, whose never-grantable parts were
    refused at once (a profile or a device the user may not have)."""
    if request.devices:
        return slot.uuid in request.devices
    if request.mig_profile is not None:
        return slot.profile == request.mig_profile
    if slot.is_mig:
        allowed = limits.allowed_mig_profiles
        return _uses_mig(limits, settings) and (allowed is None or slot.profile in allowed)
    return limits.allow_full_gpu  # under mig_preference all, whole GPUs serve when no slice fits, as now


def _candidates(request: GpuRequest, limits: LimitValues, settings: AllocationSettings, free: list[Slot],
                fits: Callable[[list[Slot]], bool]) -> tuple[list[Slot], str]:
    """The free slots a counted request may draw from, best kind first, and how to name them."""
    if request.mig_profile is not None:
        _check_profile_allowed(request.mig_profile, limits)
        return [s for s in free if s.profile == request.mig_profile], f"MIG {request.mig_profile} slices"
    use_mig = _uses_mig(limits, settings)
    if not use_mig and not limits.allow_full_gpu:
        raise Denied(Reason.FULL_GPU_NOT_ALLOWED,
                     "your limits do not allow whole GPUs. Ask for a MIG slice with --mig PROFILE.")
    allowed = limits.allowed_mig_profiles
    migs = [s for s in free if s.is_mig and (allowed is None or s.profile in allowed)]
    wholes = [s for s in free if not s.is_mig] if limits.allow_full_gpu else []
    if not use_mig:
        return wholes, "whole GPUs"
    if limits.allow_full_gpu and not fits(migs):
        return migs + wholes, "GPUs or MIG slices"  # MIG first, whole GPUs when no slice fits
    return migs, "MIG slices"


def _count(request: GpuRequest, limits: LimitValues) -> int:
    if request.devices:
        count = len(request.devices)
    elif request.all_gpus:
        count = limits.max_gpus_per_container
    else:
        count = 1 if request.mig_profile else request.count
    if count < 1:
        raise Denied(Reason.PER_CONTAINER_MAX, "a GPU request must ask for at least one GPU or MIG slice.")
    if count > limits.max_gpus_per_container:
        raise Denied(Reason.PER_CONTAINER_MAX, (
            f"{count} GPU slots asked for, but one container may hold at most {limits.max_gpus_per_container}. "
            "Ask for fewer, or split the work over several containers."))
    return count


def choose_slots(user: str, limits: LimitValues, settings: AllocationSettings, request: GpuRequest, *,
                 slots: Sequence[Slot], holdings: Sequence[Holding]) -> list[Slot]:
    """The slots granted for `request`, or `Denied` with a reason code and a message that says what to do."""
    held = {uuid for h in holdings for uuid in h.slots}
    mine = [h for h in holdings if h.user == user]
    budget = limits.gpu_quota - sum((h.equivalents for h in mine), Fraction(0))
    by_uuid = {s.uuid: s for s in slots}
    load: dict[str, Fraction] = defaultdict(Fraction)
    for uuid in held & by_uuid.keys():
        load[by_uuid[uuid].gpu_uuid] += by_uuid[uuid].equivalents
    count = _count(request, limits)

    if request.devices:
        wanted = _explicit(request, limits, by_uuid, held)
        needed = sum((s.equivalents for s in wanted), Fraction(0))
        if needed > budget:
            raise _quota_denial(user, limits, mine, needed)
        return wanted

    free = [s for s in slots if s.uuid not in held]
    candidates, kind = _candidates(request, limits, settings, free,
                                   lambda pool: _pick(pool, count, load, settings.strategy, budget) is not None)
    if _pick(candidates, count, load, settings.strategy, None) is None:
        raise Denied(Reason.CAPACITY, (
            f"not enough free {kind}: {count} asked for, {len(candidates)} free and healthy. "
            "Wait for them (container create --wait, or the label ds01.request.wait=1h), ask for fewer, or see what "
            "is free and when with `container gpus`."))
    chosen = _pick(candidates, count, load, settings.strategy, budget)
    if chosen is None:
        cheapest = sorted(s.equivalents for s in candidates)[:count]
        raise _quota_denial(user, limits, mine, sum(cheapest, Fraction(0)))
    return chosen
