"""`container list`: the caller's containers, running ones unless --all."""

from __future__ import annotations

import argparse
import os

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import container_json, created_at, gpus_cell, origin, shown_name
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", "-a", action="store_true", help="include stopped and created containers")
    add_format_option(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    uid = os.getuid()
    with ProxyClient.of(context.paths) as proxy:
        found = proxy.containers(uid, everything=args.all)
    found.sort(key=lambda item: item.info.name)
    if args.format == "json":
        print_json([container_json(item, uid) for item in found])
        return 0
    if not found:
        print("no stopped or running containers; create one with `container create NAME`" if args.all else
              "no running containers (`container list --all` shows stopped ones too); create one with "
              "`container create NAME`")
        return 0
    rows = []
    for item in found:
        when = created_at(item.created)
        rows.append((shown_name(item, uid), origin(item), item.info.status, item.image, gpus_cell(item),
                     when.astimezone().strftime("%Y-%m-%d %H:%M") if when else item.created))
    print_table(("NAME", "ORIGIN", "STATUS", "IMAGE", "GPUS", "CREATED"), rows)
    if any(origin(item) != "container" for item in found):
        print("(containers docker, compose or a dev container made are managed with those: docker stop NAME, ...)")
    return 0
