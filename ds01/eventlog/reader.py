"""Reading the event log: `EventLog.events` yields the rotated files (oldest first) then the current file,
skipping and counting lines that do not parse; `EventLog.follow` goes on reading the current file, across
rotations. Writing is `ds01.eventlog.writer`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ds01.eventlog import writer
from ds01.eventlog.files import LOG_NAME, parse_ts, rotated_at, rotated_files
from ds01.paths import paths_from_env
from ds01.units import parse_duration


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time: ISO-8601 (UTC unless it names an offset) or `2h`, `30m`, `7d`, `1h30m` ago, or `now`."""
    now = now or datetime.fromtimestamp(writer.clock(), UTC)
    cleaned = text.strip()
    if cleaned == "now":
        return now
    try:
        return now - timedelta(seconds=parse_duration(cleaned))
    except ValueError:
        pass
    try:
        return parse_ts(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: write ISO-8601 (2026-03-01 or 2026-03-01T09:00:00Z) "
                         "or how long ago (30m, 2h, 7d)") from None


@dataclass(frozen=True)
class Event:
    ts: datetime
    type: str
    user: str | None
    source: str
    details: dict[str, Any]
    raw: str  # the line as written, without its newline

    @property
    def timestamp(self) -> float:
        return self.ts.timestamp()


def parse_event(line: bytes | str) -> Event | None:
    """The event on one line, or None if the line is not a ds01 event."""
    try:
        text = line.decode() if isinstance(line, bytes) else line
        record = json.loads(text)
        ts = parse_ts(record["ts"])
        event_type, user, source = record["type"], record.get("user"), record.get("source", "")
        details = record.get("details", {})
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if not (isinstance(event_type, str) and isinstance(source, str) and isinstance(details, dict)
            and (user is None or isinstance(user, str))):
        return None
    return Event(ts, event_type, user, source, details, text.rstrip("\r\n"))


_CONTAINER_KEYS = ("container", "container_name", "name")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class EventFilter:
    users: frozenset[str] | None = None  # any of these names
    type_prefix: str | None = None  # "allocation" matches allocation.reserve; "allocation.bind" only that
    container: str | None = None  # a container name, id or id prefix named in the details
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def matches(self, event: Event) -> bool:
        if self.since is not None and event.ts < self.since:
            return False
        if self.until is not None and event.ts >= self.until:
            return False
        if self.users is not None and event.user not in self.users:
            return False
        if self.type_prefix is not None and not event.type.startswith(self.type_prefix):
            return False
        return self.container is None or self._names_container(self.container, event.details)

    @staticmethod
    def _names_container(wanted: str, details: dict[str, Any]) -> bool:
        for key in _CONTAINER_KEYS:
            value = details.get(key)
            if isinstance(value, str) and (value == wanted or (
                    _CONTAINER_ID.match(value) and len(wanted) >= 4 and value.startswith(wanted))):
                return True
        return False


class _Tail:
    """One open log file, read in complete lines from where the last read stopped."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("rb", buffering=0)
        found = os.fstat(self.handle.fileno())
        self.identity = (found.st_dev, found.st_ino)
        self._partial = b""

    def lines(self) -> list[bytes]:
        data = self.handle.read()
        if not data:
            return []
        *complete, self._partial = (self._partial + data).split(b"\n")
        return complete

    def rest(self) -> bytes:
        """The incomplete last line, if any (for a one-off read; `follow` waits for its newline)."""
        rest, self._partial = self._partial, b""
        return rest

    def close(self) -> None:
        self.handle.close()


class EventLog:
    """Reads DS01_LOG_DIR's event log: rotated files oldest first, then the current file."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir or paths_from_env().log_dir
        self.path = self.log_dir / LOG_NAME
        self.unparsable = 0  # lines skipped because they are not events, across every read of this reader

    def files(self) -> list[Path]:
        current = [self.path] if self.path.exists() else []
        return [*rotated_files(self.log_dir), *current]

    def _open_current(self) -> _Tail | None:
        try:
            return _Tail(self.path)
        except FileNotFoundError:
            return None

    def _parsed(self, lines: Iterable[bytes], wanted: EventFilter | None) -> Iterator[Event]:
        for line in lines:
            if not line.strip():
                continue
            event = parse_event(line)
            if event is None:
                self.unparsable += 1
            elif wanted is None or wanted.matches(event):
                yield event

    def _history(self, current: _Tail | None, wanted: EventFilter | None,
                 listed: set[str] | None = None) -> Iterator[Event]:
        # The current file is opened first: if it is rotated while the others are read, it is still read whole.
        margin = timedelta(minutes=1)  # late writers may land in a rotated file just after its stamp
        for path in rotated_files(self.log_dir):
            if listed is not None:
                listed.add(path.name)
            if wanted is not None and wanted.since is not None and rotated_at(path) + margin < wanted.since:
                continue
            yield from self._whole_file(path, wanted, () if current is None else (current.identity,))
        if current is not None:
            yield from self._parsed(current.lines(), wanted)

    def _whole_file(self, path: Path, wanted: EventFilter | None,
                    skip: Iterable[tuple[int, int]]) -> Iterator[Event]:
        """A rotated file, unless it is one of `skip` (read through an open descriptor instead)."""
        try:
            tail = _Tail(path)
        except FileNotFoundError:  # pruned since the listing
            return
        try:
            if tail.identity in skip:
                return
            yield from self._parsed(tail.lines(), wanted)
            rest = tail.rest()
            if rest.strip() and parse_event(rest) is None:
                self.unparsable += 1
            else:
                yield from self._parsed([rest], wanted)
        finally:
            tail.close()

    def events(self, wanted: EventFilter | None = None) -> Generator[Event, None, None]:
        """Every event that matches, oldest file first; unparsable lines are skipped and counted."""
        current = self._open_current()
        try:
            yield from self._history(current, wanted)
            if current is not None:
                rest = current.rest()
                if parse_event(rest) is not None:  # an incomplete last line is being written: leave it
                    yield from self._parsed([rest], wanted)
        finally:
            if current is not None:
                current.close()

    def follow(self, wanted: EventFilter | None = None, *, backlog: int = 0, poll_seconds: float = 0.5,
               idle_timeout: float | None = None) -> Generator[Event, None, None]:
        """The last `backlog` matching events, then each new one as it is written, across rotations.

        Runs until interrupted or, with `idle_timeout`, until no line arrived for that many seconds.
        Files rotated (and not yet pruned) between two polls are read too, in order.
        """
        tail = self._open_current()
        previous: _Tail | None = None
        listed: set[str] = set()  # rotated files already read, or older than where following started
        try:
            recent: deque[Event] = deque(maxlen=max(0, backlog))
            recent.extend(self._history(tail, wanted, listed))
            yield from recent
            quiet_since = time.monotonic()
            while True:
                arrived = False
                for source in (previous, tail):
                    if source is not None:
                        lines = source.lines()
                        arrived = arrived or bool(lines)
                        yield from self._parsed(lines, wanted)
                if previous is not None:  # drained once more after the rotation: late writers are in
                    previous.close()
                    previous = None
                fresh = (yield from self._catch_up(tail, wanted, listed)) if self._rotated_away(tail) else None
                if fresh is not None:
                    previous, tail = tail, fresh
                    continue
                if arrived:
                    quiet_since = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - quiet_since >= idle_timeout:
                    return
                else:
                    time.sleep(poll_seconds)
        finally:
            for source in (previous, tail):
                if source is not None:
                    source.close()

    def _catch_up(self, tail: _Tail | None, wanted: EventFilter | None,
                  listed: set[str]) -> Generator[Event, None, _Tail | None]:
        """After a rotation: the files rotated since the last look, then the new current file to follow."""
        fresh = self._open_current()
        if fresh is not None:
            skip = [fresh.identity] if tail is None else [fresh.identity, tail.identity]
            for path in rotated_files(self.log_dir):
                if path.name not in listed:
                    listed.add(path.name)
                    yield from self._whole_file(path, wanted, skip)
        return fresh

    def _rotated_away(self, tail: _Tail | None) -> bool:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return False
        return tail is None or (found.st_dev, found.st_ino) != tail.identity
