"""`container jobs`: your batch jobs (container run), each with its state, its place and estimated start while
queued, its GPUs, times, exit code and the GPU-equivalent-hours it used. Admins see everyone's with --all."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.identity import nss

LOGIN_MARKER = ".cache/ds01/last-login"  # in the user's home: when the login message last ran
FIRST_LOGIN_SECONDS = 86400
STATES = ("queued", "running", "succeeded", "failed", "timeout", "cancelled", "gpu_failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", "-a", action="store_true", help="everyone's jobs (admins only)")
    parser.add_argument("--state", action="append", choices=STATES, default=[],
                        help="only jobs in this state; repeat for more")
    parser.add_argument("--since-login", action="store_true",
                        help="one line per job of yours that ended since your last login, as the login message "
                             "prints them (nothing when none)")
    add_format_option(parser)


def _clock(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%m-%d %H:%M") if stamp else "-"


def _when(job: dict[str, Any]) -> str:
    if job["state"] == "queued":
        place = f"#{job['position']} " if job.get("position") else ""
        return f"{place}starts {(job.get('start') or {}).get('text') or 'unknown'}"
    return f"{_clock(job.get('started_at'))} - {_clock(job.get('ended_at'))}" if job.get("ended_at") else \
        f"since {_clock(job.get('started_at'))}"


def _since_login(jobs: list[dict[str, Any]], marker: Path, now: float) -> list[dict[str, Any]]:
    """The jobs that ended after the last login this marker records (the last day at the first), and the marker
    moved to now."""
    try:
        last = float(marker.read_text().strip())
    except (OSError, ValueError):
        last = now - FIRST_LOGIN_SECONDS
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{now}\n")
    except OSError as exc:  # the lines still show; the next login shows them again
        print(f"container: cannot record this login in {marker}: {exc.strerror}", file=sys.stderr)
    return [job for job in jobs if job.get("ended_at") and last < job["ended_at"] <= now]


def run(args: argparse.Namespace, context: Context) -> int:
    with ProxyClient.of(context.paths) as proxy:
        jobs = proxy.jobs(everyone=args.all, states=tuple(args.state))
    if args.since_login:
        for job in _since_login(jobs, nss.home_of(os.getuid()) / LOGIN_MARKER, time.time()):
            code = "" if job.get("exit_code") is None else f", exit code {job['exit_code']}"
            print(f"ds01: your job {job['name']} ended {_clock(job['ended_at'])}: {job['state']}{code}"
                  + (f"; log: {job['log']}" if job.get("log") else ""))
        return 0
    if args.format == "json":
        print_json({"jobs": jobs})
        return 0
    if not jobs:
        print("no jobs" + (" in that state" if args.state else "") + "; queue one with `container run NAME -- CMD`")
        return 0
    print_table(("NAME", *(("USER",) if args.all else ()), "STATE", "WHEN", "GPUS", "EXIT", "GPU-EQ-H"),
                [(job["name"], *((job["user"],) if args.all else ()), job["state"], _when(job),
                  ",".join(job.get("gpus") or []) or "-", "-" if job.get("exit_code") is None else job["exit_code"],
                  f"{job.get('gpu_equivalent_hours') or 0:.2f}") for job in jobs])
    return 0
