"""`container start NAME`: start a stopped container."""

from __future__ import annotations

import argparse

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import (
    add_name,
    own,
)
from ds01.cli.context import Context
from ds01.errors import Ds01Error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    name, full = own(args)
    with ProxyClient.of(context.paths) as proxy:
        if proxy.inspect(full).info.status == "running":
            print(f"{name} is already running; open a shell with `container open {name}`")
            return 0
        print(f"starting {name}... ", end="", flush=True)
        try:
            proxy.start(full)
        except Ds01Error:
            print("failed", flush=True)
            raise
        print("started")
    print(f"next: container open {name}")
    return 0
