"""`container ports NAME`: what the container publishes, and the ssh line that reaches each port from a laptop."""

from __future__ import annotations

import argparse

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import add_name, own, tunnels
from ds01.cli.context import Context
from ds01.cli.output import print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    add_format_option(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    name, full = own(args)
    with ProxyClient.of(context.paths) as proxy:
        found = proxy.inspect(full)
    published = tunnels(found)
    if args.format == "json":
        print_json([{"container_port": port.container_port, "protocol": port.protocol, "host_ip": port.host_ip,
                     "host_port": port.host_port, "ssh": line} for port, line in published])
        return 0
    if not published:
        state = "" if found.info.status == "running" else f" (it is {found.info.status}; ports exist while it runs)"
        print(f"{name} publishes no port{state}. Publish one at create: container create NAME --port 8888")
        return 0
    for port, line in published:
        print(f"{port.container_port}/tcp on 127.0.0.1:{port.host_port}: from your laptop, {line}")
        print(f"  then open http://localhost:{port.container_port}")
    return 0
