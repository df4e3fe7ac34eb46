"""The event log: rotation by size and age, keep, the reader's filters, unparsable lines, follow."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ds01 import events
from ds01.events import EventFilter, EventLog
from ds01.limits import EventLogSettings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("DS01_CONFIG", str(tmp_path / "resource-limits.yaml"))
    events.configure(None)
    yield tmp_path / "log"
    events.configure(None)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(events, "clock", fake)
    return fake


def write_config(tmp_path: Path, max_size: str = "64m", max_age: str = "1d", keep: int = 30) -> None:
    (tmp_path / "resource-limits.yaml").write_text(
        f"version: 1\nevents:\n  max_size: {max_size}\n  max_age: {max_age}\n  keep: {keep}\n")


def all_lines(log_dir: Path) -> list[str]:
    return [line for path in EventLog(log_dir).files() for line in path.read_text().splitlines()]


def test_rotation_by_size_from_the_config_keeps_every_event_in_order(
        log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, max_size="1k", keep=100)
    for seq in range(60):
        events.emit("test.size", source="test", user="alice", seq=seq)
    rotated = events.rotated_files(log_dir)
    assert len(rotated) >= 5
    assert all(events.ROTATED.match(path.name) for path in rotated)
    assert all(path.stat().st_size <= 1024 for path in [*rotated, log_dir / events.LOG_NAME])
    assert [e.details["seq"] for e in EventLog(log_dir).events()] == list(range(60))
    assert events.settings() == EventLogSettings(max_bytes=1024, max_age_seconds=86400, keep=100)
    assert capsys.readouterr().err == ""


def test_keep_deletes_the_oldest_rotated_files(log_dir: Path, tmp_path: Path) -> None:
    write_config(tmp_path, max_size="1k", keep=2)
    for seq in range(100):
        events.emit("test.keep", source="test", seq=seq)
    rotated = events.rotated_files(log_dir)
    assert len(rotated) == 2
    seqs = [e.details["seq"] for e in EventLog(log_dir).events()]
    assert seqs == list(range(seqs[0], 100)) and seqs[0] > 0  # the newest survive, contiguous


def test_rotation_by_age_of_the_first_event(log_dir: Path, tmp_path: Path, clock: Clock) -> None:
    write_config(tmp_path, max_age="1h")
    events.emit("test.age", source="test", seq=0)
    clock.now += 3600  # exactly max_age: not older than it yet
    events.emit("test.age", source="test", seq=1)
    assert events.rotated_files(log_dir) == []
    clock.now += 1
    events.emit("test.age", source="test", seq=2)
    (rotated,) = events.rotated_files(log_dir)
    stamp = datetime.fromtimestamp(clock.now, UTC).strftime("%Y%m%dT%H%M%S.%f")
    assert rotated.name == f"events.jsonl.{stamp}"
    assert [json.loads(line)["details"]["seq"] for line in rotated.read_text().splitlines()] == [0, 1]
    current = (log_dir / events.LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["details"]["seq"] for line in current] == [2]
    clock.now += 1800  # the new file is aged from its own first event
    events.emit("test.age", source="test", seq=3)
    assert len(events.rotated_files(log_dir)) == 1


def test_rotations_in_the_same_microsecond_get_distinct_names(log_dir: Path, clock: Clock) -> None:
    events.configure(EventLogSettings(max_bytes=1, keep=10))
    for seq in range(4):
        events.emit("test.same", source="test", seq=seq)
    rotated = events.rotated_files(log_dir)
    assert len(rotated) == 3
    assert [e.details["seq"] for e in EventLog(log_dir).events()] == [0, 1, 2, 3]


def test_an_unreadable_config_is_reported_once_and_the_defaults_apply(
        log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failures = events.write_failures()
    for seq in range(3):
        events.emit("test.noconfig", source="test", seq=seq)
    err = capsys.readouterr().err
    assert err.count("using the default rotation settings") == 1
    assert events.settings() == EventLogSettings()
    assert events.write_failures() == failures
    assert len(all_lines(log_dir)) == 3


def test_the_config_is_read_once_and_the_file_stat_ed_once_per_emit(
        log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path)
    import ds01.config  # noqa: PLC0415

    loads = []
    real_load = ds01.config.load_config
    monkeypatch.setattr(ds01.config, "load_config", lambda path=None: loads.append(path) or real_load(path))
    stats = []
    real_fstat, real_stat = os.fstat, os.stat
    monkeypatch.setattr(os, "fstat", lambda *a, **k: stats.append(a) or real_fstat(*a, **k))
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a, **k))
    for seq in range(50):
        events.emit("test.cheap", source="test", seq=seq)
    monkeypatch.undo()
    assert len(loads) == 1
    assert len(stats) == 50


def test_a_write_failure_is_counted_and_survived(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("DS01_LOG_DIR", str(blocker))
    events.configure(EventLogSettings())
    try:
        before = events.write_failures()
        events.emit("test.fail", source="test")
        assert events.write_failures() == before + 1
        assert "could not write event test.fail" in capsys.readouterr().err
    finally:
        events.configure(None)


def test_an_oversized_event_is_cut_to_its_keys(log_dir: Path) -> None:
    events.configure(EventLogSettings())
    events.emit("test.big", source="test", blob="x" * events.MAX_LINE_BYTES, small=1)
    (event,) = EventLog(log_dir).events()
    assert event.details == {"truncated": True, "keys": ["blob", "small"]}


def seed(log_dir: Path, clock: Clock) -> None:
    events.configure(EventLogSettings(max_bytes=600, keep=50))
    container = "ab" * 32
    for minute, (kind, user, details) in enumerate([
        ("allocation.reserve", "alice", {"allocation": "a-1", "slots": ["GPU-0"], "gpu_equivalents": "1"}),
        ("allocation.bind", "alice", {"allocation": "a-1", "container": container, "container_name": "train"}),
        ("proxy.allow", "bob", {"endpoint": "GET /containers/json"}),
        ("proxy.deny", "bob", {"endpoint": "POST /containers/create", "reason": "privileged"}),
        ("cleanup.idle_start", "alice", {"container": "train", "allocation": "a-1", "since": 0}),
        ("allocation.release", "alice", {"allocation": "a-1", "container": container}),
        ("gpu.xid", None, {"xid": 79}),
    ]):
        clock.now = T0 + 60 * minute
        events.emit(kind, source="test", user=user, **details)


def test_reader_filters(log_dir: Path, clock: Clock) -> None:
    seed(log_dir, clock)
    log = EventLog(log_dir)
    assert len(events.rotated_files(log_dir)) >= 2

    def types(wanted: EventFilter) -> list[str]:
        return [e.type for e in log.events(wanted)]

    assert len(list(log.events())) == 7
    assert types(EventFilter(users=frozenset({"bob"}))) == ["proxy.allow", "proxy.deny"]
    assert types(EventFilter(type_prefix="allocation")) == [
        "allocation.reserve", "allocation.bind", "allocation.release"]
    assert types(EventFilter(type_prefix="proxy.deny")) == ["proxy.deny"]
    in_train = ["allocation.bind", "cleanup.idle_start", "allocation.release"]
    assert types(EventFilter(container="train")) == in_train[:2]
    assert types(EventFilter(container="abababab")) == ["allocation.bind", "allocation.release"]
    assert types(EventFilter(container="trai")) == []
    since = datetime.fromtimestamp(T0 + 120, UTC)
    until = datetime.fromtimestamp(T0 + 300, UTC)
    assert types(EventFilter(since=since, until=until)) == ["proxy.allow", "proxy.deny", "cleanup.idle_start"]
    assert types(EventFilter(since=since, until=until, users=frozenset({"alice"}))) == ["cleanup.idle_start"]
    assert log.unparsable == 0


def test_unparsable_lines_are_skipped_and_counted(log_dir: Path, clock: Clock) -> None:
    seed(log_dir, clock)
    oldest = events.rotated_files(log_dir)[0]
    with oldest.open("a") as rotated:
        rotated.write("not json\n\n")
    with (log_dir / events.LOG_NAME).open("a") as current:
        current.write('{"v":1,"ts":"yesterday","type":"x","details":{}}\n[1,2]\n')
        current.write('{"v":1,"ts":"2026-03-01T12:00:00.000Z","type":"late.line","user":null,"source":"t"')  # no \n
    log = EventLog(log_dir)
    found = list(log.events())
    assert len(found) == 7  # the incomplete last line is being written: neither shown nor counted
    assert log.unparsable == 3
    assert found[0].raw == (oldest.read_text().splitlines()[0])


def test_parse_when() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert events.parse_when("2h", now) == now - timedelta(hours=2)
    assert events.parse_when("30m", now) == now - timedelta(minutes=30)
    assert events.parse_when("7d", now) == now - timedelta(days=7)
    assert events.parse_when("2026-02-01", now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert events.parse_when("2026-02-01T09:30:00Z", now) == datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
    assert events.parse_when("2026-02-01T09:30:00+02:00", now) == datetime(2026, 2, 1, 7, 30, tzinfo=UTC)
    for bad in ("yesterday", "2h ago", "", "-2h"):
        with pytest.raises(ValueError, match="is not a time"):
            events.parse_when(bad, now)


def test_follow_sees_new_lines_and_a_rotation(log_dir: Path) -> None:
    events.configure(EventLogSettings(keep=10))
    events.emit("test.follow", source="test", seq=0)
    events.emit("test.follow", source="test", seq=1)
    followed = EventLog(log_dir).follow(backlog=1, poll_seconds=0.01, idle_timeout=2)
    try:
        assert next(followed).details["seq"] == 1  # the backlog: the last matching one
        events.emit("test.follow", source="test", seq=2)
        assert next(followed).details["seq"] == 2
        events.configure(EventLogSettings(max_bytes=1, keep=10))  # the next emit rotates
        events.emit("test.follow", source="test", seq=3)
        (rotated,) = events.rotated_files(log_dir)
        # A writer that opened the file just before the rename lands in the rotated file: follow still sees it.
        late = json.dumps({"v": 1, "ts": "2026-03-01T12:00:00.000Z", "type": "test.follow", "user": None,
                           "source": "late", "details": {"seq": "late"}})
        with rotated.open("a") as old:
            old.write(late + "\n")
        assert next(followed).details["seq"] == "late"
        assert next(followed).details["seq"] == 3
        events.configure(EventLogSettings(keep=10))
        events.emit("test.follow", source="test", seq=4)
        assert next(followed).details["seq"] == 4
        assert list(followed) == []  # ends after idle_timeout of silence
    finally:
        followed.close()


def test_follow_waits_for_the_log_to_appear_and_filters(log_dir: Path) -> None:
    events.configure(EventLogSettings())
    followed = EventLog(log_dir).follow(EventFilter(type_prefix="wanted"), poll_seconds=0.01, idle_timeout=5)

    def write() -> None:
        events.emit("unwanted.x", source="test")
        events.emit("wanted.x", source="test", n=1)

    writer = threading.Timer(0.3, write)  # while follow waits for a log that does not exist yet
    writer.start()
    try:
        assert next(followed).details == {"n": 1}
    finally:
        writer.join()
        followed.close()
    assert len(list(EventLog(log_dir).events())) == 2
