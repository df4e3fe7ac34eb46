"""`ds01 report`: GPU-hours, GPU-equivalent-hours and idle GPU-hours per user or ds01 group."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from ds01 import eventlog
from ds01.cli import Commands, add_command, time_option
from ds01.cli.context import Context
from ds01.cli.output import print_table
from ds01.errors import UsageError
from ds01.eventlog import writer
from ds01.ops import report


def register(commands: Commands) -> None:
    command = add_command(
        commands, "report", "GPU-hours and GPU-equivalent-hours per user or group, from the event log",
        "ds01 report --since 7d --by group --format csv --output week.csv", make_report)
    command.add_argument("--since", metavar="T", help="start of the window: ISO-8601 or how long ago (7d, 2h); "
                                                       "default: the start of the event log")
    command.add_argument("--until", metavar="T", help="end of the window (default: now)")
    command.add_argument("--by", choices=("user", "group"), default="user",
                         help="one row per user, or per ds01 group (resolved under the current configuration)")
    command.add_argument("--kind", choices=("job", "interactive"),
                         help="only batch jobs' allocations (container run), or only the others' (default: all)")
    command.add_argument("--format", choices=("table", "json", "csv", "png"), default="table",
                         help="output format; png draws a bar chart and needs --output")
    command.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    command.add_argument("--output", metavar="FILE", type=Path, help="write to FILE instead of standard output")


def make_report(args: argparse.Namespace, context: Context) -> int:
    now = datetime.fromtimestamp(writer.clock(), UTC)
    since = time_option("--since", args.since, now)
    until = time_option("--until", args.until, now) or now
    if since is not None and since >= until:
        raise UsageError(f"--since ({since:%Y-%m-%d %H:%M:%S}) must be before --until ({until:%Y-%m-%d %H:%M:%S})")
    if args.format == "png" and args.output is None:
        raise UsageError("--format png draws a chart into a file: add --output FILE.png")
    group_of = report.group_resolver(context.config, now) if args.by == "group" else None
    result = report.report_from_log(eventlog.EventLog(context.paths.log_dir), since=since, until=until, by=args.by,
                                    group_of=group_of, kind=args.kind)

    if args.format == "png":
        report.write_png(result, args.output)
        print(f"wrote {args.output}: {len(result.rows)} row(s), {report.window_text(result)}")
        _notes(result, sys.stdout)
        return 0
    if args.output is None:
        _render(result, args.format, sys.stdout)
    else:
        with args.output.open("w", encoding="utf-8") as out:
            _render(result, args.format, out)
    return 0


def _render(result: report.Report, form: str, out: TextIO) -> None:
    if form == "json":
        out.write(json.dumps([row.to_json() for row in result.rows], indent=2) + "\n")
    elif form == "csv":
        out.write(report.to_csv(result))
    else:
        with contextlib.redirect_stdout(out):
            print(report.window_text(result))
            rows = report.table_rows(result)
            if rows:
                print_table((result.by.upper(), "GPU-HOURS", "GPU-EQ-HOURS", "IDLE-GPU-HOURS", "ALLOCATIONS", "JOBS"),
                            rows)
            else:
                print("no GPU allocations in this window")
            _notes(result, out)
            return
    _notes(result, sys.stderr)  # machine-readable output stays clean


def _notes(result: report.Report, out: TextIO) -> None:
    for number, note in enumerate(result.notes, start=1):
        print(f"[{number}] {note}", file=out)
