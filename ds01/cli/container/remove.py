"""`container remove NAME`: remove a container and free its GPUs; the workspace is kept."""

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
    parser.add_argument("-f", "--force", action="store_true", help="stop it first if it is running")


def run(args: argparse.Namespace, context: Context) -> int:
    name, full = own(args)
    with ProxyClient.of(context.paths) as proxy:
        found = proxy.inspect(full)
        if found.info.status in ("running", "restarting") and not args.force:
            raise Ds01Error(f"{name} is running. Stop it first (container stop {name}), or remove it anyway with "
                            f"`container remove {name} -f`.")
        proxy.remove(full, force=args.force)
    print(f"removed {name}" + (" and released its GPUs" if found.info.holds_gpus else ""))
    if found.workspace:
        print(f"its workspace {found.workspace} was kept (ds01 never deletes workspaces); delete it yourself if you "
              "no longer need it")
    return 0
