"""Who in the GPU queue waits for the slots an idle container holds: what `cleanup.idle_reclaim: when_waiting`
asks before it stops one.

The waiters are those the proxy last wrote to DS01_STATE_DIR/queue.json (`ds01.gpus.queuestate`): cleanup runs
in a process of its own, and that file is the queue's one record outside the proxy. Whether a waiter could take
a slot is the allocator's own rule (`placement.may_draw`) on the waiter's own limits, so that a student whose
`--gpus 1` is served from MIG slices does not count as waiting for a researcher's whole GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ds01.config import BUILTIN_DEFAULTS, AllocationSettings, LimitValues
from ds01.gpus.placement import GpuRequest, Slot, may_draw
from ds01.gpus.queuestate import Waiting


def could_take(request: GpuRequest, slot: Slot, limits: LimitValues | None, settings: AllocationSettings) -> bool:
    """Whether a waiting `request` could be granted `slot` once it is free; `limits` None when the waiter's
    limits cannot be resolved any more.

    A request for named devices waits only for those; one for a MIG profile only for slices of that profile (a
    whole GPU freed does not become a slice: the MIG layout is the admin's). A count of GPUs (`--gpus N`, `--gpus
    all`) takes whole GPUs or MIG slices as `allocation.mig_preference` and the waiter's limits say. A waiter
    whose limits are unknown counts for every slot its request's shape could take: erring on its side means the
    container is stopped, as `always` would, rather than kept while someone may be waiting for it.
    """
    if limits is not None:
        return may_draw(request, slot, limits, settings)
    if request.devices or request.mig_profile is not None:
        return may_draw(request, slot, BUILTIN_DEFAULTS, settings)  # those two rules read no limits
    return not slot.is_mig or settings.mig_preference != "none"


def held_kinds(held: Sequence[Slot]) -> str:
    """The kinds of slot a container holds, as a waiter would ask for them: "a whole GPU", "a MIG 1g.10gb slice"."""
    kinds = ["a whole GPU"] if any(not slot.is_mig for slot in held) else []
    kinds += [f"a MIG {profile} slice" for profile in sorted({slot.profile for slot in held if slot.profile})]
    return " or ".join(kinds) or "its GPUs"


@dataclass(frozen=True)
class Demand:
    """The queue's waiting requests as one cleanup run sees them."""

    waiting: tuple[Waiting, ...]
    settings: AllocationSettings
    limits_of: Callable[[int], LimitValues | None]  # a waiter's effective limits by uid; None when unknown

    def waiters_for(self, held: Iterable[Slot]) -> list[Waiting]:
        """The waiting requests that could take one of the `held` slots once it is free."""
        slots = list(held)
        return [waiting for waiting in self.waiting
                if any(could_take(waiting.request, slot, self.limits_of(waiting.uid), self.settings)
                       for slot in slots)]
