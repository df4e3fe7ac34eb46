"""`ds01 exporter`: Prometheus metrics of GPU use, attributed to users and containers, in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from ds01.cli import Commands, add_command
from ds01.cli.context import Context
from ds01.exporter import service


def register(commands: Commands) -> None:
    command = add_command(commands, "exporter", "serve /metrics and /health for Prometheus (foreground)",
                          "ds01 exporter --listen 127.0.0.1:9401 --interval 15", run_exporter)
    command.add_argument("--listen", default="127.0.0.1:9401", help="ADDRESS:PORT to serve (default 127.0.0.1:9401)")
    command.add_argument("--interval", type=float, default=15.0, help="seconds between collections (default 15)")
    command.add_argument("--engine", default=None,
                         help="the Docker engine to read containers from (default: DOCKER_HOST, else the local one)")
    command.add_argument("--proc-root", type=Path, default=Path("/proc"),
                         help="where /proc is (a copy or fake tree, for tests)")


def run_exporter(args: argparse.Namespace, context: Context) -> int:
    return service.run(context.paths, args.listen, args.interval, args.engine, args.proc_root)
