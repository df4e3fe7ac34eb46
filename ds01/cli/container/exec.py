"""`container exec NAME -- CMD`: run one command in a running container, with its exit code."""

from __future__ import annotations

import argparse

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import (
    add_name,
    own,
    require_running,
    write_stream,
)
from ds01.cli.context import Context
from ds01.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    name, full = own(args)
    if not args.command:
        raise UsageError(f"give the command after '--', for example: container exec {name} -- nvidia-smi")
    with ProxyClient.of(context.paths) as proxy:
        require_running(proxy, name, full)
        return proxy.run(full, list(args.command), write_stream)
