"""`ds01 report`: GPU-hours, GPU-equivalent-hours and idle hours from hand-written event logs."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ds01 import eventlog
from ds01.cli import new_parser, run
from ds01.cli.admin import report as report_cmd
from ds01.config import load_config
from ds01.eventlog import writer
from ds01.eventlog.reader import parse_event
from ds01.ops import report

DAY = "2026-03-01"


def at(clock: str) -> datetime:
    return datetime.fromisoformat(f"{DAY}T{clock}:00+00:00")


def line(clock: str, kind: str, user: str | None, **details: Any) -> str:
    return json.dumps({"v": 1, "ts": f"{DAY}T{clock}:00.000Z", "type": kind, "user": user, "source": "test",
                       "details": details})


# Rotated file, then the current one, as the log would have them.
OLDER = [
    line("10:00", "allocation.reserve", "alice", allocation="a-1", slots=["G0", "G1"], gpu_equivalents="2"),
    line("10:00", "allocation.reserve", "bob", allocation="a-e", slots=["M0"], gpu_equivalents="3/7"),
    line("10:05", "allocation.expire", "bob", allocation="a-e", slots=["M0"]),
    # Reserved before the oldest log kept: its release says how long it was held.
    line("10:30", "allocation.release", "carol", allocation="a-0", slots=["G2"], gpu_equivalents="1",
         held_seconds=3600, container="c0"),
    line("10:30", "allocation.bind", "alice", allocation="a-1", container="c" * 64, container_name="train"),
    line("10:30", "cleanup.idle_start", "alice", container="train", allocation="a-1",
         since=at("10:30").timestamp()),
    line("10:40", "proxy.allow", "alice", endpoint="GET /containers/json"),
]
CURRENT = [
    line("11:00", "cleanup.idle_end", "alice", container="train", allocation="a-1"),
    line("11:00", "allocation.reserve", "bob", allocation="a-2", slots=["M1"], gpu_equivalents="3/7"),
    line("11:30", "cleanup.idle_start", "alice", container="train", allocation=None, since=f"{DAY}T11:20:00Z"),
    line("12:00", "allocation.release", "alice", allocation="a-1", container="c" * 64, slots=["G0", "G1"],
         gpu_equivalents="2", held_seconds=7200),
    line("12:10", "allocation.expire", "dave", allocation="a-z", slots=["G3"]),  # no reserve, no held_seconds
]


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "log"
    log.mkdir()
    (log / "events.jsonl.20260301T103500.000000").write_text("\n".join(OLDER) + "\n")
    (log / eventlog.LOG_NAME).write_text("\n".join(CURRENT) + "\nnot an event\n")
    monkeypatch.setenv("DS01_LOG_DIR", str(log))
    config = tmp_path / "resource-limits.yaml"
    config.write_text(
        "version: 1\ndefault_group: student\n"
        "groups:\n  student:\n    system_groups: [students]\n  ops:\n    system_groups: [root]\n"
        "  researcher:\n    system_groups: [researchers]\n"
        "users:\n  alice:\n    group: researcher\n")
    monkeypatch.setenv("DS01_CONFIG", str(config))
    return log


def rows(result: report.Report) -> dict[str, tuple[Fraction, Fraction, Fraction, int]]:
    return {r.key: (r.gpu_hours, r.gpu_equivalent_hours, r.idle_hours, r.allocations) for r in result.rows}


def test_whole_log_exact(log_dir: Path) -> None:
    log = eventlog.EventLog(log_dir)
    result = report.report_from_log(log, since=None, until=at("13:00"))
    assert rows(result) == {
        # a-1: 10:00-12:00 on 2 slots; idle 10:30-11:00 and 11:20 until its release at 12:00, on 2 slots
        "alice": (Fraction(4), Fraction(4), 2 * (Fraction(1, 2) + Fraction(2, 3)), 1),
        # a-e: 5 minutes until it expired; a-2 still held at --until: 11:00-13:00
        "bob": (Fraction(1, 12) + 2, Fraction(3, 7) * (Fraction(1, 12) + 2), Fraction(0), 2),
        # a-0: from its release's held_seconds, 09:30-10:30
        "carol": (Fraction(1), Fraction(1), Fraction(0), 1),
    }
    assert [r.key for r in result.rows] == ["alice", "bob", "carol"]  # most GPU-hours first
    assert any("1 allocation(s) reserved before the oldest event log" in note for note in result.notes)
    assert any("1 unparsable line" in note for note in result.notes)


def test_overlapping_window_is_clipped(log_dir: Path) -> None:
    result = report.report_from_log(eventlog.EventLog(log_dir), since=at("10:45"), until=at("11:45"))
    assert rows(result) == {
        # 1 h on 2 slots; idle 10:45-11:00 and 11:20-11:45 (still idle at --until), on 2 slots
        "alice": (Fraction(2), Fraction(2), 2 * (Fraction(1, 4) + Fraction(5, 12)), 1),
        "bob": (Fraction(3, 4), Fraction(3, 7) * Fraction(3, 4), Fraction(0), 1),  # a-2 open at --until
    }


def test_expire_and_release_both_end_the_hold() -> None:
    log = [
        line("09:00", "allocation.reserve", "alice", allocation="r", slots=["G0"], gpu_equivalents="1"),
        line("09:00", "allocation.reserve", "alice", allocation="e", slots=["M0", "M1"], gpu_equivalents="2/7"),
        line("09:01", "allocation.expire", "alice", allocation="e", slots=["M0", "M1"]),
        line("09:30", "allocation.release", "alice", allocation="r", slots=["G0"], gpu_equivalents="1",
             held_seconds=1800),
        line("09:40", "allocation.release", "alice", allocation="r", slots=["G0"]),  # a repeat changes nothing
    ]
    parsed = [eventlog.parse_event(text) for text in log]
    result = report.build_report([e for e in parsed if e is not None], since=None, until=at("23:00"))
    assert rows(result) == {"alice": (Fraction(1, 2) + Fraction(2, 60), Fraction(1, 2) + Fraction(2, 7 * 60),
                                      Fraction(0), 2)}


def test_by_group_with_a_user_that_no_longer_resolves(log_dir: Path) -> None:
    for rotated in eventlog.rotated_files(log_dir):
        rotated.unlink()
    (log_dir / eventlog.LOG_NAME).write_text("\n".join([
        line("10:00", "allocation.reserve", "alice", allocation="a", slots=["G0"], gpu_equivalents="1"),
        line("10:00", "allocation.reserve", "bob", allocation="b", slots=["G1"], gpu_equivalents="1"),
        line("10:00", "allocation.reserve", "carol", allocation="c", slots=["G2"], gpu_equivalents="1"),
        line("10:00", "allocation.reserve", "root", allocation="d", slots=["G3", "G4"], gpu_equivalents="2"),
        line("10:00", "allocation.reserve", "ds01_gone_user", allocation="e", slots=["M0"], gpu_equivalents="1/7"),
    ]) + "\n")
    group_of = report.group_resolver(load_config(), at("12:00"))
    result = report.report_from_log(eventlog.EventLog(log_dir), since=at("10:00"), until=at("11:00"), by="group",
                                    group_of=group_of)
    assert rows(result)["researcher"] == (Fraction(1), Fraction(1), Fraction(0), 1)  # alice, by users: in config
    assert rows(result)["student"] == (Fraction(2), Fraction(2), Fraction(0), 2)  # bob, carol: the default group
    assert rows(result)["ops"] == (Fraction(2), Fraction(2), Fraction(0), 1)  # root, by its system group
    assert rows(result)["unknown"] == (Fraction(1), Fraction(1, 7), Fraction(0), 1)
    assert any("no longer resolve: ds01_gone_user" in note for note in result.notes)


def ds01(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = new_parser("ds01", "test", "ds01 report")
    report_cmd.register(parser.add_subparsers(title="commands", metavar="COMMAND"))
    code = run(parser, argv)
    out, err = capsys.readouterr()
    return code, out, err


WINDOW = ["report", "--since", f"{DAY}T10:45:00Z", "--until", f"{DAY}T11:45:00Z"]


def test_table(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ds01(WINDOW, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "GPU use by user from 2026-03-01 10:45:00 to 2026-03-01 11:45:00 UTC"
    assert lines[1].split() == ["USER", "GPU-HOURS", "GPU-EQ-HOURS", "IDLE-GPU-HOURS", "ALLOCATIONS", "JOBS"]
    assert lines[2].split() == ["alice", "2.00", "2.00", "1.33", "1", "-"]
    assert lines[3].split() == ["bob", "0.75", "0.32", "0.00", "1", "-"]
    assert lines[4].split() == ["TOTAL", "2.75", "2.32", "1.33", "2", "-"]
    assert "[1] 1 unparsable line(s)" in out


def test_json_and_csv(log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ds01([*WINDOW, "--json"], capsys)
    assert code == 0 and "unparsable" in err
    assert json.loads(out) == [
        {"key": "alice", "gpu_hours": 2.0, "gpu_equivalent_hours": 2.0, "idle_hours": 1.333333, "allocations": 1,
         "jobs": {}},
        {"key": "bob", "gpu_hours": 0.75, "gpu_equivalent_hours": 0.321429, "idle_hours": 0.0, "allocations": 1,
         "jobs": {}},
    ]
    target = tmp_path / "out.csv"
    code, out, _ = ds01([*WINDOW, "--format", "csv", "--output", str(target), "--by", "group"], capsys)
    assert code == 0 and out == ""
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert list(table[0]) == ["key", "gpu_hours", "gpu_equivalent_hours", "idle_hours", "allocations", "jobs"]
    assert [(r["key"], r["gpu_hours"], r["allocations"]) for r in table] == [
        ("researcher", "2.0", "1"), ("student", "0.75", "1")]


def test_png(log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "usage.png"
    code, out, _ = ds01([*WINDOW, "--format", "png", "--output", str(target)], capsys)
    assert code == 0 and f"wrote {target}" in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.png"
    code, _, _ = ds01(["report", "--until", "2020-01-01", "--format", "png", "--output", str(empty)], capsys)
    assert code == 0 and empty.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["report", "--since", "last tuesday"], "--since: 'last tuesday' is not a time"),
    (["report", "--until", "2h ago"], "--until: '2h ago' is not a time"),
    (["report", "--since", "1h", "--until", "2h"], "must be before --until"),
    (["report", "--format", "png"], "add --output FILE.png"),
])
def test_bad_arguments_exit_2(log_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                              message: str) -> None:
    code, out, err = ds01(argv, capsys)
    assert code == 2 and out == ""
    assert message in err


def test_relative_times(log_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "clock", lambda: at("11:45").timestamp())
    code, out, _ = ds01(["report", "--since", "1h", "--json"], capsys)
    assert code == 0
    assert [(r["key"], r["gpu_hours"]) for r in json.loads(out)] == [("alice", 2.0), ("bob", 0.75)]


def test_kind_splits_batch_jobs_from_interactive_use_and_counts_jobs_by_state() -> None:
    jobs = [
        line("10:00", "allocation.reserve", "erin", allocation="a-j", slots=["G4"], gpu_equivalents="1"),
        line("10:00", "allocation.bind", "erin", allocation="a-j", container="j" * 64, container_name="fit._.9"),
        line("10:00", "job.start", "erin", job="fit", state="running", container="j" * 64, slots=["G4"]),
        line("11:00", "allocation.release", "erin", allocation="a-j", slots=["G4"], gpu_equivalents="1",
             held_seconds=3600),
        line("11:00", "job.end", "erin", job="fit", state="failed", exit_code=3),
        line("11:05", "job.end", "erin", job="late", state="cancelled", exit_code=None),
        line("10:00", "allocation.reserve", "erin", allocation="a-i", slots=["G5"], gpu_equivalents="1"),
        line("10:00", "allocation.bind", "erin", allocation="a-i", container="i" * 64, container_name="nb._.9"),
        line("10:30", "allocation.release", "erin", allocation="a-i", slots=["G5"], gpu_equivalents="1",
             held_seconds=1800),
    ]
    parsed = [event for text in jobs if (event := parse_event(text)) is not None]
    window = {"since": at("09:00"), "until": at("12:00")}
    [job] = report.build_report(parsed, kind="job", **window).rows
    assert (job.gpu_hours, job.allocations, job.jobs) == (1, 1, {"failed": 1, "cancelled": 1})
    [interactive] = report.build_report(parsed, kind="interactive", **window).rows
    assert (interactive.gpu_hours, interactive.allocations, interactive.jobs) == (Fraction(1, 2), 1, {})
    [both] = report.build_report(parsed, **window).rows
    assert (both.gpu_hours, both.allocations) == (Fraction(3, 2), 2)
