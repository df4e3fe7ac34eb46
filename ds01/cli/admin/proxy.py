"""`ds01 proxy`: the Docker API proxy, in the foreground as systemd expects."""

from __future__ import annotations

import argparse
from pathlib import Path

from ds01.cli import Commands, add_command
from ds01.cli.context import Context
from ds01.proxy import service

DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"


def register(commands: Commands) -> None:
    command = add_command(commands, "proxy", "run the Docker API proxy (root; foreground)",
                          "ds01 proxy --listen /run/ds01/docker.sock --upstream unix:///var/run/docker.sock",
                          run_proxy)
    command.add_argument("--listen", type=Path, help="unix socket to serve (default: DS01_RUN_DIR/docker.sock)")
    command.add_argument("--upstream", default=DEFAULT_UPSTREAM, help=f"the real engine (default {DEFAULT_UPSTREAM})")
    command.add_argument("--engine-cgroup", metavar="PATH",
                         help="the engine's cgroup v2 path, e.g. /system.slice/docker.service, for when --upstream is "
                              "a relay (default: the cgroup of the process serving --upstream)")
    command.add_argument("--drain-seconds", type=float, default=30.0,
                         help="on SIGTERM, how long open connections may finish (default 30)")


def run_proxy(args: argparse.Namespace, context: Context) -> int:
    paths = context.paths
    return service.run(paths, args.listen or paths.run_dir / "docker.sock", args.upstream, args.drain_seconds,
                       args.engine_cgroup)
