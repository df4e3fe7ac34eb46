"""`ds01 events`: read, filter, follow and summarize the event log."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ds01 import eventlog
from ds01.cli import Commands, add_command, add_format_option, time_option
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.errors import UsageError
from ds01.eventlog import writer
from ds01.identity.accounts import sanitize_username

DETAILS_WIDTH = 100
FOLLOW_BACKLOG = 10
_LONG_ID = re.compile(r"^[0-9a-f]{64}$")


def register(commands: Commands) -> None:
    command = add_command(
        commands, "events", "show the event log: filter by user, type, container and time; follow; summarize",
        "ds01 events --type allocation --user alice --since 2h", show_events)
    command.add_argument("--user", metavar="U", help="only events of this user")
    command.add_argument("--type", metavar="PREFIX", help="only types starting with this: allocation, proxy.deny")
    command.add_argument("--container", metavar="C", help="only events naming this container (name or id)")
    command.add_argument("--since", metavar="T", help="from this time: ISO-8601 or how long ago (30m, 2h, 7d)")
    command.add_argument("--until", metavar="T", help="before this time: ISO-8601 or how long ago")
    command.add_argument("--limit", metavar="N", type=int, help="only the last N matching events")
    mode = command.add_mutually_exclusive_group()
    mode.add_argument("--follow", "-f", action="store_true",
                      help=f"keep printing new events until interrupted (after the last --limit, default "
                           f"{FOLLOW_BACKLOG})")
    mode.add_argument("--summary", action="store_true", help="counts by type and by user instead of the events")
    add_format_option(command)


def event_filter(args: argparse.Namespace, now: datetime) -> eventlog.EventFilter:
    since, until = time_option("--since", args.since, now), time_option("--until", args.until, now)
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be before --until")
    return eventlog.EventFilter(
        users=None if args.user is None else frozenset({args.user, sanitize_username(args.user)}),
        type_prefix=args.type, container=args.container, since=since, until=until)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value[:12] if _LONG_ID.match(value) else value
    if isinstance(value, list):
        return ",".join(_value(item) for item in value)
    if value is None:
        return "-"
    return json.dumps(value, separators=(",", ":"))


def compact_details(details: dict[str, Any], width: int = DETAILS_WIDTH) -> str:
    """`key=value` pairs on one line, ids shortened to 12 characters, cut at `width`."""
    text = " ".join(f"{key}={_value(value)}" for key, value in details.items())
    return text if len(text) <= width else text[:width - 3] + "..."


def _row(event: eventlog.Event) -> tuple[str, str, str, str, str]:
    return (f"{event.ts:%Y-%m-%d %H:%M:%S}", event.type, event.user or "-", event.source,
            compact_details(event.details))


def _print_events(found: Iterable[eventlog.Event], form: str) -> None:
    if form == "json":
        for event in found:
            sys.stdout.write(event.raw + "\n")
        return
    print_table(("TIME (UTC)", "TYPE", "USER", "SOURCE", "DETAILS"), [_row(e) for e in found])


def _summary(found: Iterable[eventlog.Event], form: str, unparsable: int) -> None:
    by_type: Counter[str] = Counter()
    by_user: Counter[str] = Counter()
    total = 0
    for event in found:
        total += 1
        by_type[event.type] += 1
        by_user[event.user or "-"] += 1
    if form == "json":
        print_json({"total": total, "unparsable": unparsable, "by_type": dict(by_type.most_common()),
                    "by_user": dict(by_user.most_common())})
        return
    print_table(("TYPE", "EVENTS"), [(name, count) for name, count in by_type.most_common()])
    print()
    print_table(("USER", "EVENTS"), [(name, count) for name, count in by_user.most_common()])
    print(f"\n{total} event(s)")


def _follow(log: eventlog.EventLog, wanted: eventlog.EventFilter, form: str, backlog: int) -> int:
    widths = (19, 26, 12, 10)
    try:
        for event in log.follow(wanted, backlog=backlog):
            if form == "json":
                sys.stdout.write(event.raw + "\n")
            else:
                *fixed, details = _row(event)
                sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(fixed, widths, strict=True)) + f"  {details}\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass  # the way to stop following
    return 0


def show_events(args: argparse.Namespace, context: Context) -> int:
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: give 0 or more")
    now = datetime.fromtimestamp(writer.clock(), UTC)
    wanted = event_filter(args, now)
    log = eventlog.EventLog(context.paths.log_dir)
    if args.follow:
        return _follow(log, wanted, args.format, FOLLOW_BACKLOG if args.limit is None else args.limit)
    found: Iterable[eventlog.Event] = log.events(wanted)
    if args.limit is not None:
        found = deque(found, maxlen=args.limit)
    if args.summary:
        found = list(found)
        _summary(found, args.format, log.unparsable)
    else:
        _print_events(found, args.format)
    if log.unparsable:
        print(f"ds01 events: skipped {log.unparsable} unparsable line(s) in {log.log_dir}", file=sys.stderr)
    return 0
