"""`ds01 doctor`: check this host's ds01 setup; PASS, WARN or FAIL for each part, with what to do."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import print_json
from ds01.errors import EXIT_FAILURE
from ds01.ops.checks import DEFAULT_ENGINE, FAIL, WARN, Options
from ds01.ops.doctor import run_checks


def register(commands: Commands) -> None:
    command = add_command(
        commands, "doctor",
        "check the setup: engine, proxy, socket modes, docker group, udev rules, driver options, NVML, config, and "
        "the network model (default bridge, reach rules, userland proxy, published ports; run it as root where the "
        "engine runs) (exit 1 if anything FAILs)", "ds01 doctor --format json", doctor)
    add_format_option(command)
    command.add_argument("--proxy-socket", type=Path, default=None,
                         help="the proxy's socket (default: DS01_RUN_DIR/docker.sock, i.e. /run/ds01/docker.sock)")
    command.add_argument("--engine", default=None,
                         help=f"the real Docker engine (default: DOCKER_HOST unless it is the proxy, else "
                              f"{DEFAULT_ENGINE})")
    command.add_argument("--docker-group", default="docker",
                         help="the group that may use the engine socket (default: docker)")
    command.add_argument("--root", type=Path, default=Path("/"),
                         help="look for installed files, /dev and /proc under this directory (default: /)")


def _engine(proxy_socket: Path) -> str:
    from_env = os.environ.get("DOCKER_HOST", "")
    if from_env and from_env != f"unix://{proxy_socket}":
        return from_env
    return DEFAULT_ENGINE


def doctor(args: argparse.Namespace, context: Context) -> int:
    paths = context.paths
    proxy_socket = args.proxy_socket or paths.run_dir / "docker.sock"
    options = Options(engine=args.engine or _engine(proxy_socket), proxy_socket=proxy_socket, config=paths.config,
                      docker_group=args.docker_group, root=args.root, debug=args.debug)
    checks = run_checks(options)
    failed = sum(check.status == FAIL for check in checks)
    warned = sum(check.status == WARN for check in checks)
    if args.format == "json":
        print_json({"ok": failed == 0, "checks": checks})
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            print(f"{check.status}  {check.name:<{width}}  {check.detail}")
            if check.fix and check.status != "PASS":
                print(f"      {'':<{width}}  fix: {check.fix}")
        passed = len(checks) - failed - warned
        print(f"{passed} passed, {warned} {'warning' if warned == 1 else 'warnings'}, {failed} failed")
    return EXIT_FAILURE if failed else 0
