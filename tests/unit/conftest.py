"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ds01 import eventlog
from ds01.config import EventLogSettings


@pytest.fixture
def event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The event log in a fresh directory, configured as a service configures it."""
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    eventlog.configure(None, EventLogSettings())
    yield tmp_path / "log" / "events.jsonl"
    eventlog.configure(None, None)
