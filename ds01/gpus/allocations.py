"""An allocation: slots one user holds, reserved with a TTL or bound to a container; and the allocations the
engine's containers imply, for rebuilding a lost record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ds01 import eventlog, labels, records
from ds01.eventlog.types import EventType
from ds01.gpus.placement import Holding


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
    node: str = ""  # the fleet node it was granted on; "" in the file store

    def holding(self) -> Holding:
        # A container the engine named (docker run without --name) is bound all the same: shown by its short id.
        bound_to = self.container_name or (self.container[:12] if self.container else None)
        return Holding(self.id, self.user, self.slots, self.gpu_equivalents, bound_to)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "uid": self.uid, "slots": list(self.slots),
                "gpu_equivalents": str(self.gpu_equivalents), "created_at": self.created_at,
                "expires_at": self.expires_at, "container": self.container, "container_name": self.container_name,
                "bound_at": self.bound_at, **({"node": self.node} if self.node else {})}

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
            node=str(data.get("node", "")),
        )
        if not allocation.slots or (allocation.container is None) == (allocation.expires_at is None):
            raise ValueError(f"allocation {allocation.id} is neither a reservation nor bound")
        if allocation.gpu_equivalents < 0:
            raise ValueError(f"allocation {allocation.id} holds {allocation.gpu_equivalents} GPU-equivalents")
        return allocation


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
