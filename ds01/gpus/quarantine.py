"""GPU health beyond what NVML answers now: critical XID events remembered in DS01_STATE_DIR/gpu-health.json.

NVML reports XIDs only as live events, so the exporter's XID watch records them here and the allocator reads
them to keep a GPU with a recent critical XID out of circulation for `xid_quarantine`.
"""

from __future__ import annotations

import json
from pathlib import Path

import filelock

from ds01 import eventlog
from ds01.config import AllocationSettings
from ds01.errors import Ds01Error
from ds01.eventlog.types import EventType
from ds01.nvml import XidEvent
from ds01.statefile import write_json_atomic

HEALTH_NAME = "gpu-health.json"


def _read(path: Path) -> dict[str, dict[str, float]]:
    try:
        document = json.loads(path.read_bytes())
        return {str(uuid): {"xid": int(entry["xid"]), "at": float(entry["at"])} for uuid, entry in document.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Ds01Error(f"{path} is corrupt ({exc!r}); GPUs cannot be judged healthy. Check it, or remove it to "
                        "forget past XID events.") from exc


def record_xid(state_dir: Path, event: XidEvent, settings: AllocationSettings, now: float) -> bool:
    """Remember a critical XID; returns whether `event` was critical (others are only logged)."""
    critical = event.xid in settings.critical_xids
    # source "health": the name events have always carried, kept for readers of older logs
    eventlog.emit(EventType.GPU_XID, source="health", gpu=event.gpu_uuid, xid=event.xid, critical=critical,
                  gpu_instance_id=event.gpu_instance_id, compute_instance_id=event.compute_instance_id)
    if critical:
        path = state_dir / HEALTH_NAME
        with filelock.FileLock(state_dir / "gpu-health.lock", timeout=settings.lock_timeout_seconds):
            recorded = _read(path)
            recorded[event.gpu_uuid] = {"xid": event.xid, "at": now}
            write_json_atomic(path, recorded)
    return critical


def quarantined(state_dir: Path, settings: AllocationSettings, now: float) -> frozenset[str]:
    """GPUs whose last critical XID is more recent than `xid_quarantine`."""
    return frozenset(recent_xids(state_dir, settings, now))


def recent_xids(state_dir: Path, settings: AllocationSettings, now: float) -> dict[str, tuple[int, float]]:
    """The quarantined GPUs, each with its last critical XID and when it came."""
    recorded = _read(state_dir / HEALTH_NAME)
    return {uuid: (int(entry["xid"]), entry["at"]) for uuid, entry in recorded.items()
            if now - entry["at"] < settings.xid_quarantine_seconds}
