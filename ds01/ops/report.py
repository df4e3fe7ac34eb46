"""GPU use per user or per ds01 group over a window, computed from the event log.

An allocation is held from its `allocation.reserve` until its `allocation.release` or `allocation.expire`; one
still held at the end of the window counts up to then. Each slot of an allocation counts one GPU-hour per hour
held (`gpu_hours`); its GPU-equivalents (a MIG slice is its compute slices / 7) weight `gpu_equivalent_hours`.
`idle_hours` are the GPU-hours (slots x hours) an allocation spent idle, from `cleanup.idle_start` (at its
`since`) to `cleanup.idle_end`, or to the allocation's release, or to the end of the window. Everything is
clipped to the window and computed exactly, in fractions of a second.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from ds01.config import Config, effective_limits
from ds01.errors import Ds01Error
from ds01.eventlog import Event, EventFilter, EventLog
from ds01.eventlog.types import EventType
from ds01.identity import accounts

UNKNOWN_GROUP = "unknown"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR = 3600
_CLOSING = (EventType.ALLOCATION_RELEASE, EventType.ALLOCATION_EXPIRE)


def seconds(moment: datetime) -> Fraction:
    """Seconds since the epoch, exactly (microseconds included)."""
    return Fraction((moment - _EPOCH) // timedelta(microseconds=1), 10**6)


@dataclass
class Held:
    """One allocation as the log tells it."""

    allocation: str
    user: str
    slots: int
    equivalents: Fraction
    start: Fraction
    end: Fraction | None = None  # None: still held at the end of the log
    closed_by: str | None = None  # allocation.release or allocation.expire


@dataclass(frozen=True)
class IdlePeriod:
    allocation: str | None
    user: str
    start: Fraction
    end: Fraction | None  # None: still idle at the end of the log


@dataclass
class Row:
    key: str
    gpu_hours: Fraction = Fraction(0)
    gpu_equivalent_hours: Fraction = Fraction(0)
    idle_hours: Fraction = Fraction(0)
    allocations: int = 0
    jobs: dict[str, int] = field(default_factory=dict)  # batch jobs that ended in the window, by state

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "gpu_hours": _number(self.gpu_hours),
                "gpu_equivalent_hours": _number(self.gpu_equivalent_hours), "idle_hours": _number(self.idle_hours),
                "allocations": self.allocations, "jobs": dict(sorted(self.jobs.items()))}


@dataclass
class Report:
    since: datetime | None  # None: from the start of the log
    until: datetime
    by: str  # "user" or "group"
    rows: list[Row]
    kind: str | None = None  # "job" or "interactive": only those allocations; None: all
    notes: list[str] = field(default_factory=list)  # footnotes: what the numbers could not include

    def total(self) -> Row:
        total = Row("TOTAL")
        for row in self.rows:
            total.gpu_hours += row.gpu_hours
            total.gpu_equivalent_hours += row.gpu_equivalent_hours
            total.idle_hours += row.idle_hours
            total.allocations += row.allocations
            for state, count in row.jobs.items():
                total.jobs[state] = total.jobs.get(state, 0) + count
        return total


def _number(value: Fraction) -> float:
    return round(float(value), 6)


def _fraction(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None


def _idle_since(value: Any, fallback: Fraction) -> Fraction:
    """cleanup.idle_start's `since`: epoch seconds or an ISO-8601 time; the event's own time if neither."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return seconds(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    number = _fraction(value)
    return fallback if number is None else number


@dataclass
class Ledger:
    """Allocations and idle periods, replayed from the log in time order."""

    held: dict[str, Held] = field(default_factory=dict)
    idle: list[IdlePeriod] = field(default_factory=list)
    unmatched_closes: int = 0  # released or expired, reserved before the log starts, and no held_seconds
    job_containers: set[str] = field(default_factory=set)  # from job.start events
    job_ends: list[tuple[str, str, Fraction]] = field(default_factory=list)  # (user, state, when)
    _container_allocation: dict[str, str] = field(default_factory=dict)
    _idle_open: dict[str, tuple[str | None, str, Fraction]] = field(default_factory=dict)

    def replay(self, events: Iterable[Event]) -> Ledger:
        for event in sorted(events, key=lambda e: e.ts):
            self._apply(event)
        for allocation, user, start in self._idle_open.values():
            self.idle.append(IdlePeriod(allocation, user, start, None))
        self._idle_open.clear()
        return self

    def _apply(self, event: Event) -> None:
        details, at = event.details, seconds(event.ts)
        allocation = details.get("allocation") if isinstance(details.get("allocation"), str) else None
        slots = details.get("slots")
        count = len(slots) if isinstance(slots, list) else 0
        if event.type == EventType.ALLOCATION_RESERVE and allocation:
            self.held[allocation] = Held(allocation, event.user or "?", count,
                                         _fraction(details.get("gpu_equivalents")) or Fraction(0), at)
        elif event.type in _CLOSING and allocation:
            self._close(allocation, event, count, at)
        elif event.type == EventType.ALLOCATION_BIND and allocation:
            for key in ("container", "container_name"):
                if isinstance(details.get(key), str):
                    self._container_allocation[details[key]] = allocation
        elif event.type == EventType.JOB_START and isinstance(details.get("container"), str):
            self.job_containers.add(details["container"])
        elif event.type == EventType.JOB_END and isinstance(details.get("state"), str):
            self.job_ends.append((event.user or "?", details["state"], at))
        elif event.type in (EventType.CLEANUP_IDLE_START, EventType.CLEANUP_IDLE_END):
            container = details.get("container")
            if allocation is None and isinstance(container, str):
                allocation = self._container_allocation.get(container)
            key = allocation or f"container:{container}"
            if event.type == EventType.CLEANUP_IDLE_START:
                self._idle_open.setdefault(key, (allocation, event.user or "?", _idle_since(details.get("since"), at)))
            elif key in self._idle_open:
                owner, user, start = self._idle_open.pop(key)
                self.idle.append(IdlePeriod(owner, user, start, at))

    def job_allocations(self) -> set[str]:
        """The allocations bound to a batch job's container."""
        return {allocation for container, allocation in self._container_allocation.items()
                if container in self.job_containers}

    def _close(self, allocation: str, event: Event, count: int, at: Fraction) -> None:
        held = self.held.get(allocation)
        if held is None:  # reserved before the oldest log kept: the release says how long it was held
            held_for = _fraction(event.details.get("held_seconds"))
            if held_for is None:
                self.unmatched_closes += 1
                return
            held = Held(allocation, event.user or "?", count,
                        _fraction(event.details.get("gpu_equivalents")) or Fraction(0), at - held_for)
            self.held[allocation] = held
        if held.end is None:
            held.end, held.closed_by = at, event.type
        for key, (owner, user, start) in list(self._idle_open.items()):
            if owner == allocation:  # idle until the release, if cleanup said nothing more
                del self._idle_open[key]
                self.idle.append(IdlePeriod(owner, user, start, at))


def _overlap(start: Fraction, end: Fraction, low: Fraction | None, high: Fraction) -> Fraction:
    return max(Fraction(0), min(end, high) - (start if low is None else max(start, low)))


def build_report(events: Iterable[Event], *, since: datetime | None, until: datetime, by: str = "user",
                 group_of: Callable[[str], str | None] | None = None, kind: str | None = None) -> Report:
    """Usage per user (or per group, through `group_of`; None from it means the user no longer resolves), of the
    batch jobs' allocations or the others' only when `kind` says so, with the jobs that ended by state."""
    ledger = Ledger().replay(events)
    jobs = ledger.job_allocations()

    def counted(allocation: str | None) -> bool:
        return kind is None or ((allocation in jobs) == (kind == "job"))
    low, high = (None if since is None else seconds(since)), seconds(until)
    keys: dict[str, str] = {}
    unresolved: set[str] = set()

    def key_of(user: str) -> str:
        if user not in keys:
            group = group_of(user) if (by == "group" and group_of is not None) else user
            if group is None:
                unresolved.add(user)
            keys[user] = UNKNOWN_GROUP if group is None else group
        return keys[user]

    rows: dict[str, Row] = {}
    for held in ledger.held.values():
        if held.start >= high or not counted(held.allocation):
            continue
        end = high if held.end is None else held.end
        if low is not None and end <= low and not (held.start == end == low):
            continue
        span = _overlap(held.start, end, low, high)
        row = rows.setdefault(key_of(held.user), Row(key_of(held.user)))
        row.gpu_hours += held.slots * span / _HOUR
        row.gpu_equivalent_hours += held.equivalents * span / _HOUR
        row.allocations += 1
    for period in ledger.idle:
        if not counted(period.allocation):
            continue
        owner = ledger.held.get(period.allocation) if period.allocation else None
        start, end = period.start, high if period.end is None else period.end
        weight, user = 1, period.user
        if owner is not None:
            start, end = max(start, owner.start), min(end, high if owner.end is None else owner.end)
            weight, user = owner.slots, owner.user
        span = _overlap(start, end, low, high) if end > start else Fraction(0)
        if span:
            row = rows.setdefault(key_of(user), Row(key_of(user)))
            row.idle_hours += weight * span / _HOUR
    for user, state, at in ledger.job_ends if kind != "interactive" else []:
        if (low is None or at >= low) and at < high:
            row = rows.setdefault(key_of(user), Row(key_of(user)))
            row.jobs[state] = row.jobs.get(state, 0) + 1
    notes = []
    if unresolved:
        notes.append(f"group {UNKNOWN_GROUP!r}: users that no longer resolve: {', '.join(sorted(unresolved))}")
    if ledger.unmatched_closes:
        notes.append(f"{ledger.unmatched_closes} allocation(s) reserved before the oldest event log kept ended "
                     "without saying how long they were held; they are not counted")
    ordered = sorted(rows.values(), key=lambda r: (-r.gpu_hours, -r.gpu_equivalent_hours, r.key))
    return Report(since, until, by, ordered, kind, notes)


def group_resolver(config: Config, now: datetime) -> Callable[[str], str | None]:
    """The ds01 group of a user name under `config`, or None when the name no longer resolves."""
    def group_of(user: str) -> str | None:
        try:
            resolved = accounts.resolve_name(user, config.ldap)
        except Ds01Error:
            return None
        return effective_limits(config, resolved.name, resolved.groups, now).group

    return group_of


def report_from_log(log: EventLog, *, since: datetime | None, until: datetime, by: str = "user",
                    group_of: Callable[[str], str | None] | None = None, kind: str | None = None) -> Report:
    """The report for the window, from every event before `until` (reservations may predate `since`)."""
    wanted = EventFilter(until=until)
    relevant = (e for e in log.events(wanted)
                if e.type.startswith(("allocation.", "cleanup.idle_")) or e.type in (EventType.JOB_START,
                                                                                   EventType.JOB_END))
    report = build_report(relevant, since=since, until=until, by=by, group_of=group_of, kind=kind)
    if log.unparsable:
        report.notes.append(f"{log.unparsable} unparsable line(s) in the event log were skipped")
    return report


# ---------------------------------------------------------------- rendering

COLUMNS = ("key", "gpu_hours", "gpu_equivalent_hours", "idle_hours", "allocations")


def window_text(report: Report) -> str:
    start = "the start of the event log" if report.since is None else f"{report.since:%Y-%m-%d %H:%M:%S}"
    return f"GPU use by {report.by} from {start} to {report.until:%Y-%m-%d %H:%M:%S} UTC"


def table_rows(report: Report) -> list[tuple[str, ...]]:
    shown = [*report.rows, report.total()] if report.rows else []
    return [(row.key, f"{float(row.gpu_hours):.2f}", f"{float(row.gpu_equivalent_hours):.2f}",
             f"{float(row.idle_hours):.2f}", str(row.allocations), jobs_text(row.jobs)) for row in shown]


def jobs_text(jobs: dict[str, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in sorted(jobs.items())) or "-"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((*COLUMNS, "jobs"))
    for row in report.rows:
        data = row.to_json()
        writer.writerow([*(data[column] for column in COLUMNS), jobs_text(row.jobs)])
    return out.getvalue()


def write_png(report: Report, path: Path) -> None:
    """A horizontal bar chart of GPU-hours, GPU-equivalent-hours and idle GPU-hours per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - slow to import; png only
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = list(reversed(report.rows))  # the largest at the top
    figure = Figure(figsize=(9, max(2.5, 0.9 + 0.55 * len(rows))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if rows:
        height = 0.27
        positions = list(range(len(rows)))
        for offset, label, values in (
                (height, "GPU-hours", [float(r.gpu_hours) for r in rows]),
                (0.0, "GPU-equivalent-hours", [float(r.gpu_equivalent_hours) for r in rows]),
                (-height, "idle GPU-hours", [float(r.idle_hours) for r in rows])):
            axes.barh([p + offset for p in positions], values, height=height, label=label)
        axes.set_yticks(positions, [r.key for r in rows])
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, "no GPU allocations in this window", ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_yticks([])
    axes.set_xlabel("hours")
    axes.set_title(window_text(report), fontsize=10)
    figure.savefig(path, format="png", dpi=100)
