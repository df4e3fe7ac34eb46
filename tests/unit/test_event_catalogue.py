"""The event types ds01 writes and the admins' catalogue in docs-admin/events.md are the same list."""

from __future__ import annotations

import re
from pathlib import Path

from ds01.eventlog.types import EventType

CATALOGUE = Path(__file__).resolve().parents[2] / "docs-admin" / "events.md"
ROW = re.compile(r"^\| `([a-z_]+\.[a-z_]+)` \| (.*) \|$", re.M)


def test_docs_list_every_event_type_with_its_meaning() -> None:
    rows = dict(ROW.findall(CATALOGUE.read_text(encoding="utf-8")))
    assert set(rows) == {event.value for event in EventType}
    assert all(len(meaning.split()) >= 4 for meaning in rows.values()), rows
