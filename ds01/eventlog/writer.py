"""The one event log: DS01_LOG_DIR/events.jsonl, one versioned JSON object per line.

Writing: `emit` appends one line with a single write() on an O_APPEND descriptor, so concurrent writers never
interleave within a line. The writer that finds the file due for rotation (past `events.max_size`, or its first
event older than `events.max_age`) renames it to `events.jsonl.<UTC YYYYmmddTHHMMSS.ffffff>` under a
non-blocking lock and starts a new one; when another process holds the lock it simply writes on. A writer that
opened the file just before the rename lands in the rotated file, which readers read too: nothing is lost.
At most `events.keep` rotated files are kept.

Reading is `ds01.eventlog.reader`; the file format is `ds01.eventlog.files`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds01.config.schema import EventLogSettings
from ds01.eventlog.files import (
    LOCK_NAME,
    LOG_NAME,
    MAX_LINE_BYTES,
    SCHEMA_VERSION,
    format_ts,
    parse_ts,
    rotated_files,
    rotated_path,
)
from ds01.eventlog.types import EventType
from ds01.paths import paths_from_env

_TS_PREFIX = re.compile(rb'"ts":"([^"]{1,40})"')
_FIRST_BYTES = 128  # the ts of a line ds01 wrote is within its first few dozen bytes
_WRITE_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT  # read too: the age check reads the first line once
_FILE_MODE = 0o640

clock: Callable[[], float] = time.time
"""Seconds since the epoch for event timestamps and rotation; tests replace it."""

_failures: Counter[str] = Counter()
_failures_lock = threading.Lock()
_configured_dir: Path | None = None
_configured_settings: EventLogSettings | None = None
_configure_lock = threading.Lock()
_loading = threading.local()
_first_seen: dict[tuple[int, int, bytes], float] = {}  # log files whose first line has no ts: when first seen
_FIRST_SEEN_CACHE_SIZE = 64


@dataclass(frozen=True)
class Destination:
    log_dir: Path
    settings: EventLogSettings


def write_failures() -> int:
    """How many events this process could not write (each was also reported on stderr)."""
    return _failures["write"]


def rotation_failures() -> int:
    """How many rotations this process attempted and could not finish (the events were still written)."""
    return _failures["rotate"]


def configure(log_dir: Path | None, settings: EventLogSettings | None) -> None:
    """Where and how this process writes events from now on: services set both at start-up and the settings again
    on a configuration reload. What is left None is read from the environment and the configuration at the next
    event, once."""
    global _configured_dir, _configured_settings
    with _configure_lock:
        _configured_dir, _configured_settings = log_dir, settings


def destination() -> Destination:
    """This process's log directory and rotation settings, completed from the environment on first use.

    A configuration that cannot be read is reported once on stderr and the default settings are used.
    """
    global _configured_dir, _configured_settings  # noqa: PLW0603 - completed once, then read by every event
    log_dir, settings = _configured_dir, _configured_settings
    if log_dir is not None and settings is not None:
        return Destination(log_dir, settings)
    if getattr(_loading, "active", False):  # loading the configuration emitted an event: don't recurse
        return Destination(log_dir or paths_from_env().log_dir, settings or EventLogSettings())
    with _configure_lock:
        if _configured_dir is None or _configured_settings is None:
            paths = paths_from_env()
            _configured_dir = _configured_dir or paths.log_dir
            if _configured_settings is None:
                _configured_settings = _settings_from(paths.config)
        return Destination(_configured_dir, _configured_settings)


def _settings_from(config_path: Path) -> EventLogSettings:
    _loading.active = True
    try:
        from ds01.config.loader import load_config  # noqa: PLC0415 - only a process no service configured needs it

        return load_config(config_path).events
    except Exception as exc:  # noqa: BLE001 - emit must survive any configuration problem
        print(f"ds01: event log: using the default rotation settings: {exc}", file=sys.stderr)
        return EventLogSettings()
    finally:
        _loading.active = False


def _line(event_type: EventType, user: str | None, source: str, details: dict[str, Any], now: float) -> bytes:
    record = {
        "v": SCHEMA_VERSION,
        "ts": format_ts(now),
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


def emit(event_type: EventType, *, source: str, user: str | None = None, **details: Any) -> None:
    """Append one event. A write failure is reported, counted and survived."""
    now = clock()
    line = _line(event_type, user, source, details, now)
    where = destination()
    path = where.log_dir / LOG_NAME
    try:
        _append(path, line, now, where.settings)
    except OSError as exc:
        with _failures_lock:
            _failures["write"] += 1
        print(f"ds01: could not write event {event_type} to {path}: {exc}", file=sys.stderr)


def _open_log(path: Path) -> int:
    for attempt in range(2):
        try:
            try:
                return os.open(path, _WRITE_FLAGS, _FILE_MODE)
            except PermissionError:  # may append but not read: no age check, still no lost event
                return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        except FileNotFoundError:
            if attempt:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
    raise FileNotFoundError(path)  # unreachable: the second attempt returns or raises


def _append(path: Path, line: bytes, now: float, limits: EventLogSettings) -> None:
    fd = _open_log(path)
    try:
        found = os.fstat(fd)
        if found.st_size > 0 and _due(fd, found, len(line), now, limits):
            fresh = _rotate(path, found, limits)
            if fresh is not None:
                os.close(fd)
                fd = fresh
        # One write() on an O_APPEND descriptor: concurrent writers never interleave within a line.
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write: {written} of {len(line)} bytes (is the disk full?)")
    finally:
        os.close(fd)


def _due(fd: int, found: os.stat_result, extra: int, now: float, limits: EventLogSettings) -> bool:
    if found.st_size + extra > limits.max_bytes:
        return True
    first = _first_event_time(fd, found, now)
    return first is not None and now - first > limits.max_age_seconds


def _first_event_time(fd: int, found: os.stat_result, now: float) -> float | None:
    try:
        head = os.pread(fd, _FIRST_BYTES, 0)  # a few microseconds, and no cache an inode reuse could fool
    except OSError:  # opened write-only
        return None
    match = _TS_PREFIX.search(head)
    if match:
        try:
            return parse_ts(match[1].decode()).timestamp()
        except (ValueError, UnicodeDecodeError):
            pass
    if b"\n" not in head and len(head) < _FIRST_BYTES:
        return None  # the first line is still being written; look again next time
    # A first line ds01 did not write: age the file from when this process first saw it.
    key = (found.st_dev, found.st_ino, head)
    if key not in _first_seen and len(_first_seen) >= _FIRST_SEEN_CACHE_SIZE:
        _first_seen.clear()
    return _first_seen.setdefault(key, now)


def _rotate(path: Path, found: os.stat_result, limits: EventLogSettings) -> int | None:
    """Rename the current file away and open a new one, unless another writer holds the rotation lock.

    Returns a descriptor on the new current file, or None to write to the descriptor already open.
    """
    try:
        lock = os.open(path.parent / LOCK_NAME, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another writer is rotating right now
        try:
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (found.st_dev, found.st_ino):
                rotated = rotated_files(path.parent)
                target = rotated_path(path, clock(), rotated[-1] if rotated else None)
                os.rename(path, target)
                _prune([*rotated, target], limits.keep)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                with _failures_lock:
                    _failures["rotate"] += 1
                print(f"ds01: could not rotate {path}: {exc}", file=sys.stderr)
                return None
        return _open_log(path)  # ours or another writer's rotation: write to the new file
    finally:
        os.close(lock)  # and with it the lock


def _prune(rotated: list[Path], keep: int) -> None:
    for old in rotated[:max(0, len(rotated) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


