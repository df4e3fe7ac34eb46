"""`container stop NAME`: stop a running container; its workspace and GPUs stay with it."""

from __future__ import annotations

import argparse

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import (
    add_name,
    own,
)
from ds01.cli.context import Context
from ds01.errors import Ds01Error, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("-t", "--time", type=int, default=10, metavar="SECONDS",
                        help="seconds to wait for a clean exit before killing it (default 10)")


def run(args: argparse.Namespace, context: Context) -> int:
    name, full = own(args)
    if args.time < 0:
        raise UsageError(f"-t {args.time}: give the seconds to wait as 0 or more.")
    with ProxyClient.of(context.paths) as proxy:
        if proxy.inspect(full).info.status != "running":
            print(f"{name} is not running; nothing to stop (`container remove {name}` removes it)")
            return 0
        print(f"stopping {name} (waiting up to {args.time}s)... ", end="", flush=True)
        try:
            proxy.stop(full, args.time)
        except Ds01Error:
            print("failed", flush=True)
            raise
        print("stopped")
    print(f"start it again with `container start {name}`, or remove it with `container remove {name}` to give its "
          "GPUs back")
    return 0
