"""`container logs NAME`: a container's output, optionally followed."""

from __future__ import annotations

import argparse

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import (
    add_name,
    own,
    write_stream,
)
from ds01.cli.context import Context
from ds01.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output until it stops")
    parser.add_argument("-n", "--tail", type=int, default=None, metavar="LINES", help="only the last LINES lines")


def run(args: argparse.Namespace, context: Context) -> int:
    _, full = own(args)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail {args.tail}: give a number of lines, 0 or more.")
    with ProxyClient.of(context.paths) as proxy:
        for stream, data in proxy.logs(full, args.follow, args.tail):
            write_stream(stream, data)
    return 0
