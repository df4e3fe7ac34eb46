"""What the queue tells users: a request that may not wait and cannot start, a wait that ran out, and the times
of an estimated start ("by 14:32 at the latest")."""

from __future__ import annotations

import time

from ds01.errors import Denied
from ds01.gpus.queuestate import Entry
from ds01.gpus.scheduler import Placement
from ds01.reasons import Reason
from ds01.units import format_duration

_DAY = 86400


def at_the_latest(moment: float | None, now: float | None = None) -> str:
    """"by 14:32 at the latest" (with the day when it is not within a day); "unknown" for no known start."""
    if moment is None:
        return "unknown"
    now = time.time() if now is None else now
    if moment <= now:
        return "now"
    shown = time.strftime("%H:%M" if moment - now < _DAY else "%a %d %b %H:%M", time.localtime(moment))
    return f"by {shown} at the latest"


def refusal(placement: Placement | None, origin: str) -> Denied:
    """A request that may not wait and cannot be granted now: what holds it back, and how to wait instead (a
    start of a stopped container whose GPUs went back waits for nothing: it is tried again)."""
    if placement is None:
        return Denied(Reason.CAPACITY, "no GPU slot is free. See what is free and when with `container gpus`.")
    # What holds it back, and for a quota what holds it (on a fleet: on which node); the ways out are said below.
    sentences = placement.waits_for.split(". ")
    held_by = [part for part in sentences[1:2] if part.startswith("Held by:")]
    why = ". ".join([sentences[0], *held_by]).rstrip(".")
    reason = Reason.QUOTA if placement.blocked_by is Reason.QUOTA else Reason.CAPACITY
    if origin == "start":
        return Denied(reason, f"{why}. Its GPUs were given back while it was stopped, and they are taken now: start it "
                              f"again once `container gpus` shows them free ({at_the_latest(placement.start)}).")
    when = (f"it would start {at_the_latest(placement.start)}" if placement.start is not None else
            "when it could start is unknown, as the slots it needs are held with no deadline")
    return Denied(reason, (
        f"{why}. In the queue it would be number {placement.position} and {when}: wait for it with --wait "
        "(container create NAME --wait 1h ...) or the label ds01.request.wait=1h (docker run). See what is free "
        "and when with `container gpus`."))


def timed_out(entry: Entry) -> Denied:
    waited = format_duration(round(entry.wait_until - entry.joined_at))
    placement = entry.placement
    position = placement.position if placement is not None else "?"
    later = f"; it would have started {at_the_latest(placement.start)}" if placement and placement.start else ""
    return Denied(Reason.WAIT_TIMEOUT, (
        f"waited {waited} in the queue without a grant, at position {position} when the wait ended{later}. Wait "
        "longer (--wait 4h), ask for less (--mig PROFILE), or see what is free and when with `container gpus`."))
