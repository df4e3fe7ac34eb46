"""The event log's file format, shared by the writer and the reader: DS01_LOG_DIR/events.jsonl holds one
versioned JSON object per line, and rotated files are events.jsonl.<UTC YYYYmmddTHHMMSS.ffffff>."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

SCHEMA_VERSION = 1
MAX_LINE_BYTES = 16 * 1024
LOG_NAME = "events.jsonl"
LOCK_NAME = ".events.jsonl.lock"  # not matched by ROTATED: readers never mistake it for a log
ROTATED = re.compile(r"^events\.jsonl\.(\d{8}T\d{6}\.\d{6})$")
_STAMP_FORMAT = "%Y%m%dT%H%M%S.%f"


def format_ts(timestamp: float) -> str:
    """ISO-8601 UTC with milliseconds and Z, as every event's `ts`."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rotated_path(path: Path, now: float, newest: Path | None) -> Path:
    """`events.jsonl.<now>`, named to sort after every rotated file already there, even if the clock stepped back."""
    stamp = datetime.fromtimestamp(now, UTC)
    if newest is not None:
        stamp = max(stamp, rotated_at(newest) + timedelta(microseconds=1))
    return path.with_name(f"{LOG_NAME}.{stamp.strftime(_STAMP_FORMAT)}")


def rotated_files(log_dir: Path) -> list[Path]:
    """The rotated logs in `log_dir`, oldest first."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    return [log_dir / name for name in sorted(name for name in names if ROTATED.match(name))]


def rotated_at(path: Path) -> datetime:
    return datetime.strptime(path.name.removeprefix(f"{LOG_NAME}."), _STAMP_FORMAT).replace(tzinfo=UTC)


def parse_ts(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
