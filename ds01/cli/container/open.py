"""`container open NAME`: an interactive shell in a running container, through the docker CLI."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import (
    add_name,
    own,
    require_running,
)
from ds01.cli.context import Context
from ds01.errors import Ds01Error, UsageError

SHELL = "command -v bash >/dev/null && exec bash || exec sh"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    name, full = own(args)
    with ProxyClient.of(context.paths) as proxy:
        require_running(proxy, name, full)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(f"container open needs a terminal. In scripts, use `container exec {name} -- CMD`.")
    if shutil.which("docker") is None:
        raise Ds01Error(f"the docker command-line tool is not installed here, and `container open` uses it. Run "
                        f"commands with `container exec {name} -- CMD`, or ask your admin to install it.")
    os.environ["DOCKER_HOST"] = proxy.url  # the docker CLI must go through the ds01 proxy too
    sys.stdout.flush()
    os.execvp("docker", ["docker", "exec", "-it", full, "sh", "-c", SHELL])  # noqa: S606 - argument list, no shell
