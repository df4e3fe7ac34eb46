"""The one event log: the file format (`files`), the writer (`writer`), the reader (`reader`) and the catalogue
of event types (`types`). The names most callers need are re-exported here."""

from ds01.eventlog.files import (
    LOG_NAME,
    MAX_LINE_BYTES,
    ROTATED,
    SCHEMA_VERSION,
    format_ts,
    parse_ts,
    rotated_files,
)
from ds01.eventlog.reader import Event, EventFilter, EventLog, parse_event, parse_when
from ds01.eventlog.types import EventType
from ds01.eventlog.writer import configure, destination, emit, rotation_failures, write_failures

__all__ = [
    "LOG_NAME", "MAX_LINE_BYTES", "ROTATED", "SCHEMA_VERSION", "Event", "EventFilter", "EventLog", "EventType",
    "configure", "destination", "emit", "format_ts", "parse_event", "parse_ts", "parse_when", "rotated_files",
    "rotation_failures", "write_failures",
]
