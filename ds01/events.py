"""The one event log: DS01_LOG_DIR/events.jsonl, one versioned JSON object per line."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from ds01.paths import paths_from_env

SCHEMA_VERSION = 1
MAX_LINE_BYTES = 16 * 1024
LOG_NAME = "events.jsonl"

_failures: Counter[str] = Counter()
_failures_lock = threading.Lock()


def write_failures() -> int:
    """How many events this process could not write (each was also reported on stderr)."""
    return _failures["write"]


def _line(event_type: str, user: str | None, source: str, details: dict[str, Any]) -> bytes:
    record = {
        "v": SCHEMA_VERSION,
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "type": event_type,
        "user": user,
        "source": source,
        "details": details,
    }
    line = json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        record["details"] = {"truncated": True, "keys": sorted(details)}
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    return line


def emit(event_type: str, *, source: str, user: str | None = None, **details: Any) -> None:
    """Append one event. `event_type` is `category.action`. A write failure is reported, counted and survived."""
    line = _line(event_type, user, source, details)
    log_dir = paths_from_env().log_dir
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        # One write() on an O_APPEND descriptor: concurrent writers never interleave within a line.
        fd = os.open(log_dir / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        with _failures_lock:
            _failures["write"] += 1
        print(f"ds01: could not write event {event_type} to {log_dir / LOG_NAME}: {exc}", file=sys.stderr)
