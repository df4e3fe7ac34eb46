"""The queue's state file, DS01_STATE_DIR/queue.json, written atomically after every change: who waits, with
their last place, and each user's fair-share factor and decayed use. The proxy writes it; the exporter and the
next start-up read it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from ds01.config import LimitValues
from ds01.errors import Denied, Ds01Error
from ds01.gpus.allocator import Allocation
from ds01.gpus.placement import GpuRequest, Slot
from ds01.gpus.scheduler import Placement
from ds01.statefile import write_json_atomic

STATE_FILE = "queue.json"
VERSION = 1
# Upper bounds (seconds) of the time-to-grant histogram: a grant at once is not in it, a wait is.
WAIT_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)


@dataclass
class Entry:
    """One waiting request. Changed only under the queue's lock."""

    id: str
    user: str
    uid: int
    request: GpuRequest
    origin: str  # who made the create: container, docker, compose, devcontainer
    joined_at: float
    wait_until: float
    needed: float = 0.0  # GPU-equivalents it asks for
    runtime_seconds: float | None = None  # a batch job's time limit, with its grace; None: the user's max_runtime
    placement: Placement | None = None  # from the last pass
    allocation: Allocation | None = None  # its grant, once a pass made it
    denied: Denied | None = None  # it can no longer be granted
    cancelled: bool = False

    @property
    def kind(self) -> str:
        """"mig" for a MIG slice of a profile, "gpu" for a count of GPUs or named devices."""
        return "mig" if self.request.mig_profile is not None else "gpu"


@dataclass(frozen=True)
class Waiting:
    """An entry as the file has it, for readers in other processes."""

    id: str
    user: str
    uid: int
    kind: str
    origin: str
    joined_at: float
    wait_until: float
    needed_equivalents: float
    position: int | None
    start: float | None
    request: GpuRequest


@dataclass
class WaitHistogram:
    """How long granted waits took, cumulative over the queue's life (kept across restarts in its file)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))  # the last: past them all
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[next((i for i, bound in enumerate(WAIT_BUCKETS) if seconds <= bound), len(WAIT_BUCKETS))] += 1
        self.total_seconds += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (le, the waits at most that long), +Inf last."""
        running, found = 0, []
        for bound, count in zip([*map(str, WAIT_BUCKETS), "+Inf"], self.counts, strict=True):
            running += count
            found.append((bound, running))
        return found


@dataclass(frozen=True)
class QueueState:
    updated_at: float
    waiting: list[Waiting]
    fairshare: dict[str, tuple[float, float]]  # user -> (factor, decayed GPU-equivalent-hours)
    waits: WaitHistogram


def needed_equivalents(request: GpuRequest, limits: LimitValues, slots: Sequence[Slot]) -> Fraction:
    """The GPU-equivalents a request asks for: a MIG profile's share, each named device's, or a GPU for each of a
    count (which a MIG slice may serve for less)."""
    if request.mig_profile is not None:
        return next((s.equivalents for s in slots if s.profile == request.mig_profile), Fraction(1))
    if request.devices:
        by_uuid = {s.uuid: s.equivalents for s in slots}
        return sum((by_uuid.get(d, Fraction(1)) for d in request.devices), Fraction(0))
    return Fraction(limits.max_gpus_per_container if request.all_gpus else request.count)


def write(path: Path, entries: list[Entry], fairshare: dict[str, tuple[float, float]], waits: WaitHistogram,
          now: float) -> None:
    write_json_atomic(path, {
        "version": VERSION, "updated_at": now,
        "waiting": [{
            "id": e.id, "user": e.user, "uid": e.uid, "kind": e.kind, "origin": e.origin, "joined_at": e.joined_at,
            "wait_until": e.wait_until, "needed_equivalents": e.needed,
            "position": e.placement.position if e.placement else None,
            "start": e.placement.start if e.placement else None,
            "request": {"count": e.request.count, "all_gpus": e.request.all_gpus,
                        "mig_profile": e.request.mig_profile, "devices": list(e.request.devices)},
        } for e in entries],
        "fairshare": {user: {"factor": factor, "usage_hours": used} for user, (factor, used) in fairshare.items()},
        "waits": {"counts": waits.counts, "total_seconds": waits.total_seconds},
    })


def read(path: Path) -> QueueState:
    """The file as last written; an empty queue when there is none. A damaged file is an error that says so."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return QueueState(0.0, [], {}, WaitHistogram())
    except (OSError, ValueError) as exc:
        raise Ds01Error(f"cannot read the queue's state {path}: {exc}; move it away to start with an empty "
                        "queue (the waiters it names had connections that are gone)") from exc
    try:
        if document["version"] != VERSION:
            raise ValueError(f"version {document['version']!r}, not {VERSION}")
        waiting = [_waiting(item) for item in document["waiting"]]
        fairshare = {str(user): (float(entry["factor"]), float(entry["usage_hours"]))
                     for user, entry in document["fairshare"].items()}
        counts = [int(count) for count in document["waits"]["counts"]]
        if len(counts) != len(WAIT_BUCKETS) + 1 or min(counts) < 0:
            raise ValueError(f"{len(counts)} wait counts, not {len(WAIT_BUCKETS) + 1} of 0 or more")
        waits = WaitHistogram(counts, float(document["waits"]["total_seconds"]))
        updated_at = float(document["updated_at"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Ds01Error(f"the queue's state {path} is damaged ({exc!r}); move it away to start with an empty "
                        "queue (the waiters it names had connections that are gone)") from exc
    return QueueState(updated_at, waiting, fairshare, waits)


def _waiting(item: Any) -> Waiting:
    request = item["request"]
    return Waiting(
        id=str(item["id"]), user=str(item["user"]), uid=int(item["uid"]), kind=str(item["kind"]),
        origin=str(item["origin"]), joined_at=float(item["joined_at"]), wait_until=float(item["wait_until"]),
        needed_equivalents=float(item["needed_equivalents"]),
        position=None if item["position"] is None else int(item["position"]),
        start=None if item["start"] is None else float(item["start"]),
        request=GpuRequest(count=int(request["count"]), all_gpus=bool(request["all_gpus"]),
                           mig_profile=None if request["mig_profile"] is None else str(request["mig_profile"]),
                           devices=tuple(str(d) for d in request["devices"])))
