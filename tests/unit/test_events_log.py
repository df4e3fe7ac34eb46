"""The event log: rotation by size and age, keep, the reader's filters, unparsable lines, follow."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ds01 import eventlog
from ds01.cli import new_parser, run
from ds01.cli.admin import events as events_cmd
from ds01.config import Config, EventLogSettings
from ds01.eventlog import EventFilter, EventLog, writer

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
    eventlog.configure(None, None)
    yield tmp_path / "log"
    eventlog.configure(None, None)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(writer, "clock", fake)
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
        eventlog.emit("test.size", source="test", user="alice", seq=seq)
    rotated = eventlog.rotated_files(log_dir)
    assert len(rotated) >= 5
    assert all(eventlog.ROTATED.match(path.name) for path in rotated)
    assert all(path.stat().st_size <= 1024 for path in [*rotated, log_dir / eventlog.LOG_NAME])
    assert [e.details["seq"] for e in EventLog(log_dir).events()] == list(range(60))
    assert eventlog.destination().settings == EventLogSettings(max_bytes=1024, max_age_seconds=86400, keep=100)
    assert capsys.readouterr().err == ""


def test_keep_deletes_the_oldest_rotated_files(log_dir: Path, tmp_path: Path) -> None:
    write_config(tmp_path, max_size="1k", keep=2)
    for seq in range(100):
        eventlog.emit("test.keep", source="test", seq=seq)
    rotated = eventlog.rotated_files(log_dir)
    assert len(rotated) == 2
    seqs = [e.details["seq"] for e in EventLog(log_dir).events()]
    assert seqs == list(range(seqs[0], 100)) and seqs[0] > 0  # the newest survive, contiguous


def test_rotation_by_age_of_the_first_event(log_dir: Path, tmp_path: Path, clock: Clock) -> None:
    write_config(tmp_path, max_age="1h")
    eventlog.emit("test.age", source="test", seq=0)
    clock.now += 3600  # exactly max_age: not older than it yet
    eventlog.emit("test.age", source="test", seq=1)
    assert eventlog.rotated_files(log_dir) == []
    clock.now += 1
    eventlog.emit("test.age", source="test", seq=2)
    (rotated,) = eventlog.rotated_files(log_dir)
    stamp = datetime.fromtimestamp(clock.now, UTC).strftime("%Y%m%dT%H%M%S.%f")
    assert rotated.name == f"events.jsonl.{stamp}"
    assert [json.loads(line)["details"]["seq"] for line in rotated.read_text().splitlines()] == [0, 1]
    current = (log_dir / eventlog.LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["details"]["seq"] for line in current] == [2]
    clock.now += 1800  # the new file is aged from its own first event
    eventlog.emit("test.age", source="test", seq=3)
    assert len(eventlog.rotated_files(log_dir)) == 1


def test_rotations_in_the_same_microsecond_get_distinct_names(log_dir: Path, clock: Clock) -> None:
    eventlog.configure(None, EventLogSettings(max_bytes=1, keep=10))
    for seq in range(4):
        eventlog.emit("test.same", source="test", seq=seq)
    rotated = eventlog.rotated_files(log_dir)
    assert len(rotated) == 3
    assert [e.details["seq"] for e in EventLog(log_dir).events()] == [0, 1, 2, 3]


def test_an_unreadable_config_is_reported_once_and_the_defaults_apply(
        log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failures = eventlog.write_failures()
    for seq in range(3):
        eventlog.emit("test.noconfig", source="test", seq=seq)
    err = capsys.readouterr().err
    assert err.count("using the default rotation settings") == 1
    assert eventlog.destination().settings == EventLogSettings()
    assert eventlog.write_failures() == failures
    assert len(all_lines(log_dir)) == 3


def test_the_config_is_read_once_and_the_file_stat_ed_once_per_emit(
        log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path)
    from ds01.config import loader  # noqa: PLC0415

    loads: list[Path | None] = []
    real_load, real_fstat, real_stat = loader.load_config, os.fstat, os.stat

    def load(path: Path | None = None) -> Config:
        loads.append(path)
        return real_load(path)

    stats: list[object] = []

    def fstat(fd: int) -> os.stat_result:
        stats.append(fd)
        return real_fstat(fd)

    def stat(path: Any, **kwargs: Any) -> os.stat_result:
        stats.append(path)
        return real_stat(path, **kwargs)

    monkeypatch.setattr(loader, "load_config", load)
    monkeypatch.setattr(os, "fstat", fstat)
    monkeypatch.setattr(os, "stat", stat)
    for seq in range(50):
        eventlog.emit("test.cheap", source="test", seq=seq)
    monkeypatch.undo()
    assert len(loads) == 1
    assert len(stats) == 50


def test_a_configured_process_never_reads_the_environment_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "from-env"))
    eventlog.configure(tmp_path / "service", EventLogSettings())
    monkeypatch.setattr(eventlog.writer, "paths_from_env", lambda: pytest.fail("emit read the environment"))
    try:
        eventlog.emit("test.configured", source="test", seq=1)
        monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "moved"))
        eventlog.emit("test.configured", source="test", seq=2)
    finally:
        eventlog.configure(None, None)
    assert [e.details["seq"] for e in EventLog(tmp_path / "service").events()] == [1, 2]
    assert not (tmp_path / "from-env").exists() and not (tmp_path / "moved").exists()


def test_a_write_failure_is_counted_and_survived(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("DS01_LOG_DIR", str(blocker))
    eventlog.configure(None, EventLogSettings())
    try:
        before = eventlog.write_failures()
        eventlog.emit("test.fail", source="test")
        assert eventlog.write_failures() == before + 1
        assert "could not write event test.fail" in capsys.readouterr().err
    finally:
        eventlog.configure(None, None)


def test_an_oversized_event_is_cut_to_its_keys(log_dir: Path) -> None:
    eventlog.configure(None, EventLogSettings())
    eventlog.emit("test.big", source="test", blob="x" * eventlog.MAX_LINE_BYTES, small=1)
    (event,) = EventLog(log_dir).events()
    assert event.details == {"truncated": True, "keys": ["blob", "small"]}


def seed(log_dir: Path, clock: Clock) -> None:
    eventlog.configure(None, EventLogSettings(max_bytes=600, keep=50))
    container = "ab" * 32
    seeded: list[tuple[str, str | None, dict[str, Any]]] = [
        ("allocation.reserve", "alice", {"allocation": "a-1", "slots": ["GPU-0"], "gpu_equivalents": "1"}),
        ("allocation.bind", "alice", {"allocation": "a-1", "container": container, "container_name": "train"}),
        ("proxy.allow", "bob", {"endpoint": "GET /containers/json"}),
        ("proxy.deny", "bob", {"endpoint": "POST /containers/create", "reason": "privileged"}),
        ("cleanup.idle_start", "alice", {"container": "train", "allocation": "a-1", "since": 0}),
        ("allocation.release", "alice", {"allocation": "a-1", "container": container}),
        ("gpu.xid", None, {"xid": 79}),
    ]
    for minute, (kind, user, details) in enumerate(seeded):
        clock.now = T0 + 60 * minute
        eventlog.emit(kind, source="test", user=user, **details)


def test_reader_filters(log_dir: Path, clock: Clock) -> None:
    seed(log_dir, clock)
    log = EventLog(log_dir)
    assert len(eventlog.rotated_files(log_dir)) >= 2

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
    oldest = eventlog.rotated_files(log_dir)[0]
    with oldest.open("a") as rotated:
        rotated.write("not json\n\n")
    with (log_dir / eventlog.LOG_NAME).open("a") as current:
        current.write('{"v":1,"ts":"yesterday","type":"x","details":{}}\n[1,2]\n')
        current.write('{"v":1,"ts":"2026-03-01T12:00:00.000Z","type":"late.line","user":null,"source":"t"')  # no \n
    log = EventLog(log_dir)
    found = list(log.events())
    assert len(found) == 7  # the incomplete last line is being written: neither shown nor counted
    assert log.unparsable == 3
    assert found[0].raw == (oldest.read_text().splitlines()[0])


def test_parse_when() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert eventlog.parse_when("2h", now) == now - timedelta(hours=2)
    assert eventlog.parse_when("30m", now) == now - timedelta(minutes=30)
    assert eventlog.parse_when("7d", now) == now - timedelta(days=7)
    assert eventlog.parse_when("2026-02-01", now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert eventlog.parse_when("2026-02-01T09:30:00Z", now) == datetime(2026, 2, 1, 9, 30, tzinfo=UTC)
    assert eventlog.parse_when("2026-02-01T09:30:00+02:00", now) == datetime(2026, 2, 1, 7, 30, tzinfo=UTC)
    for bad in ("yesterday", "2h ago", "", "-2h"):
        with pytest.raises(ValueError, match="is not a time"):
            eventlog.parse_when(bad, now)


def test_follow_sees_new_lines_and_a_rotation(log_dir: Path) -> None:
    eventlog.configure(None, EventLogSettings(keep=10))
    eventlog.emit("test.follow", source="test", seq=0)
    eventlog.emit("test.follow", source="test", seq=1)
    followed = EventLog(log_dir).follow(backlog=1, poll_seconds=0.01, idle_timeout=2)
    try:
        assert next(followed).details["seq"] == 1  # the backlog: the last matching one
        eventlog.emit("test.follow", source="test", seq=2)
        assert next(followed).details["seq"] == 2
        eventlog.configure(None, EventLogSettings(max_bytes=1, keep=10))  # the next emit rotates
        eventlog.emit("test.follow", source="test", seq=3)
        (rotated,) = eventlog.rotated_files(log_dir)
        # A writer that opened the file just before the rename lands in the rotated file: follow still sees it.
        late = json.dumps({"v": 1, "ts": "2026-03-01T12:00:00.000Z", "type": "test.follow", "user": None,
                           "source": "late", "details": {"seq": "late"}})
        with rotated.open("a") as old:
            old.write(late + "\n")
        assert next(followed).details["seq"] == "late"
        assert next(followed).details["seq"] == 3
        eventlog.configure(None, EventLogSettings(keep=10))
        eventlog.emit("test.follow", source="test", seq=4)
        assert next(followed).details["seq"] == 4
        assert list(followed) == []  # ends after idle_timeout of silence
    finally:
        followed.close()


def test_follow_reads_every_file_rotated_between_two_polls(log_dir: Path) -> None:
    eventlog.configure(None, EventLogSettings(max_bytes=300, keep=50))
    eventlog.emit("test.burst", source="test", seq=0)
    followed = EventLog(log_dir).follow(backlog=1, poll_seconds=0.01, idle_timeout=1)
    try:
        assert next(followed).details["seq"] == 0
        for seq in range(1, 40):  # several rotations before follow looks again
            eventlog.emit("test.burst", source="test", seq=seq)
        assert len(eventlog.rotated_files(log_dir)) >= 5
        assert [e.details["seq"] for e in followed] == list(range(1, 40))
    finally:
        followed.close()


def test_follow_waits_for_the_log_to_appear_and_filters(log_dir: Path) -> None:
    eventlog.configure(None, EventLogSettings())
    followed = EventLog(log_dir).follow(EventFilter(type_prefix="wanted"), poll_seconds=0.01, idle_timeout=5)

    def write() -> None:
        eventlog.emit("unwanted.x", source="test")
        eventlog.emit("wanted.x", source="test", n=1)

    writer = threading.Timer(0.3, write)  # while follow waits for a log that does not exist yet
    writer.start()
    try:
        assert next(followed).details == {"n": 1}
    finally:
        writer.join()
        followed.close()
    assert len(list(EventLog(log_dir).events())) == 2


def ds01_events(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = new_parser("ds01", "test", "ds01 events")
    events_cmd.register(parser.add_subparsers(title="commands", metavar="COMMAND"))
    code = run(parser, ["events", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_events_command(log_dir: Path, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    seed(log_dir, clock)
    with (log_dir / eventlog.LOG_NAME).open("a") as current:
        current.write("garbage\n")
    code, out, err = ds01_events([], capsys)
    assert code == 0 and "skipped 1 unparsable line" in err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "TYPE", "USER", "SOURCE", "DETAILS"]
    assert lines[2].split() == ["2026-03-01", "12:01:00", "allocation.bind", "alice", "test", "allocation=a-1",
                                "container=abababababab", "container_name=train"]
    assert len(lines) == 8

    code, out, _ = ds01_events(["--json", "--type", "proxy", "--limit", "1"], capsys)
    assert code == 0
    (only,) = out.splitlines()
    assert json.loads(only)["type"] == "proxy.deny"
    assert only in (log_dir / eventlog.LOG_NAME).read_text() or any(
        only in p.read_text() for p in eventlog.rotated_files(log_dir))

    code, out, _ = ds01_events(["--summary", "--json", "--since", "2026-03-01T12:02:00Z"], capsys)
    assert json.loads(out) == {"total": 5, "unparsable": 1,
                               "by_type": {"proxy.allow": 1, "proxy.deny": 1, "cleanup.idle_start": 1,
                                           "allocation.release": 1, "gpu.xid": 1},
                               "by_user": {"bob": 2, "alice": 2, "-": 1}}
    code, out, _ = ds01_events(["--summary", "--user", "alice"], capsys)
    assert "allocation.reserve  1" in out and "4 event(s)" in out

    code, out, err = ds01_events(["--since", "soon"], capsys)
    assert code == 2 and out == "" and "--since: 'soon' is not a time" in err
    with pytest.raises(SystemExit) as exited:
        ds01_events(["--follow", "--summary"], capsys)
    assert exited.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
