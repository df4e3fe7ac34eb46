"""`container`: the user's command for GPU containers.

Users type and see plain names; the engine holds NAME._.UID (see `ds01.engine.engine_name`). Everything goes
through the ds01 proxy, which checks limits, grants GPUs and only ever shows a user their own containers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ds01.cli import (
    Commands,
    Handler,
    add_command,
    add_format_option,
    new_parser,
    run,
    user_create,
    user_manage,
    user_stats,
)
from ds01.errors import UsageError

DESCRIPTION = """Create and manage your GPU containers.

A typical session:
  container create train            a container with one GPU (or a MIG slice), running, with
                                    ~/workspace/train mounted at /workspace
  container open train              a shell inside it
  container stop train              stop it when you are done
  container remove train            remove it and give its GPUs back (the workspace stays)"""


def _without_command(handler: Handler) -> Handler:
    """For commands that take nothing after `--`: say so instead of ignoring it."""
    def checked(args: argparse.Namespace) -> int:
        if args.command:
            raise UsageError(f"container {args.action} takes no command after '--' (got {' '.join(args.command)}). "
                             "Run a command in a container with `container exec NAME -- CMD`.")
        return handler(args)
    return checked


def _command(commands: Commands, name: str, summary: str, example: str, handler: Handler, *,
             takes_command: bool = False) -> argparse.ArgumentParser:
    parser = add_command(commands, name, summary, example, handler if takes_command else _without_command(handler))
    parser.set_defaults(action=name)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    return parser


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the container's name, as you gave it to `container create`")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("container", DESCRIPTION, "container create train --gpus 1 && container open train")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    create = _command(commands, "create", "create a container and start it (one GPU unless you say otherwise)",
                      "container create train --gpus 1 --memory 32g -- python train.py", user_create.create,
                      takes_command=True)
    _name(create)
    user_create.add_options(create)

    listing = _command(commands, "list", "list your containers (running ones unless --all)", "container list --all",
                       user_manage.list_containers)
    listing.add_argument("--all", "-a", action="store_true", help="include stopped and created containers")
    add_format_option(listing)

    start = _command(commands, "start", "start a stopped container", "container start train", user_manage.start)
    _name(start)
    stop = _command(commands, "stop", "stop a running container (its workspace and GPUs stay with it)",
                    "container stop train -t 30", user_manage.stop)
    _name(stop)
    stop.add_argument("-t", "--time", type=int, default=10, metavar="SECONDS",
                      help="seconds to wait for a clean exit before killing it (default 10)")
    remove = _command(commands, "remove", "remove a container and free its GPUs; its workspace directory is never "
                      "deleted", "container remove train -f", user_manage.remove)
    _name(remove)
    remove.add_argument("-f", "--force", action="store_true", help="stop it first if it is running")

    opened = _command(commands, "open", "open an interactive shell (bash if the image has it) in a running container",
                      "container open train", user_manage.open_shell)
    _name(opened)
    execute = _command(commands, "exec", "run one command in a running container; exits with its exit code",
                       "container exec train -- nvidia-smi", user_manage.execute, takes_command=True)
    _name(execute)
    logs = _command(commands, "logs", "print a container's output", "container logs train -f", user_manage.logs)
    _name(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output until it stops")
    logs.add_argument("-n", "--tail", type=int, default=None, metavar="LINES", help="only the last LINES lines")

    stats = _command(commands, "stats", "CPU, memory and GPUs of your running containers, one snapshot",
                     "container stats --filter gpu=yes --json", user_stats.stats)
    stats.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                       help="name=TEXT (name contains TEXT), status=STATE (e.g. exited; includes stopped "
                            "containers), gpu=yes|no; repeat to combine")
    add_format_option(stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in words:  # everything after the first `--` is the command to run in the container
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1:]
    parser = build_parser()
    parser.set_defaults(command=command)
    return run(parser, words)
