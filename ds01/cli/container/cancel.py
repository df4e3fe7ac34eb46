"""`container cancel NAME`: take a queued batch job out of the queue, or stop a running one (SIGTERM, then
SIGKILL after cleanup.stop_timeout); either way its state becomes cancelled."""

from __future__ import annotations

import argparse

from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the job's name, as given to `container run`")


def run(args: argparse.Namespace, context: Context) -> int:
    with ProxyClient.of(context.paths) as proxy:
        job = proxy.cancel_job(args.name)
    if job["state"] == "queued":
        print(f"job {args.name} leaves the queue; it will show as cancelled in `container jobs`")
    else:
        print(f"job {args.name} is being stopped; it will show as cancelled in `container jobs`")
    return 0
