"""`container jobs`: your batch jobs (container run), each with its state, its place and estimated start while
queued, its GPUs, times, exit code and the GPU-equivalent-hours it used. Admins see everyone's with --all."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table

STATES = ("queued", "running", "succeeded", "failed", "timeout", "cancelled", "gpu_failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", "-a", action="store_true", help="everyone's jobs (admins only)")
    parser.add_argument("--state", action="append", choices=STATES, default=[],
                        help="only jobs in this state; repeat for more")
    add_format_option(parser)


def _clock(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%m-%d %H:%M") if stamp else "-"


def _when(job: dict[str, Any]) -> str:
    if job["state"] == "queued":
        place = f"#{job['position']} " if job.get("position") else ""
        return f"{place}starts {(job.get('start') or {}).get('text') or 'unknown'}"
    return f"{_clock(job.get('started_at'))} - {_clock(job.get('ended_at'))}" if job.get("ended_at") else \
        f"since {_clock(job.get('started_at'))}"


def run(args: argparse.Namespace, context: Context) -> int:
    with ProxyClient.of(context.paths) as proxy:
        jobs = proxy.jobs(everyone=args.all, states=tuple(args.state))
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
