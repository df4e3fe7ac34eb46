"""`container logs NAME`: a container's output, optionally followed; for a batch job that is over (its container
removed), the log ds01 kept in its workspace."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import (
    add_name,
    own,
    write_stream,
)
from ds01.cli.context import Context
from ds01.errors import Ds01Error, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output until it stops")
    parser.add_argument("-n", "--tail", type=int, default=None, metavar="LINES", help="only the last LINES lines")


def run(args: argparse.Namespace, context: Context) -> int:
    _, full = own(args)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail {args.tail}: give a number of lines, 0 or more.")
    with ProxyClient.of(context.paths) as proxy:
        try:
            for stream, data in proxy.logs(full, args.follow, args.tail):
                write_stream(stream, data)
        except Ds01Error as missing:
            try:
                job = proxy.job(args.name)
            except Ds01Error:
                raise missing from None
            _job_log(args.name, job, args.tail)
    return 0


def _job_log(name: str, job: dict[str, Any], tail: int | None) -> None:
    if job["state"] == "queued":
        raise Ds01Error(f"job {name} has not started yet, so it has no output; see its place with `container jobs`.")
    log = job.get("log")
    if not log:
        raise Ds01Error(f"job {name} ended ({job['state']}) and no log of it was kept: {job.get('message') or ''}")
    try:
        data = Path(log).read_bytes()
    except OSError as exc:
        raise Ds01Error(f"job {name}'s log {log} cannot be read: {exc.strerror}") from None
    if tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
