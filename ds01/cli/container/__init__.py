"""`container`: the user's command for GPU containers.

Users type and see plain names; the engine holds NAME._.UID (see `ds01.names.engine_name`). Everything goes
through the ds01 proxy, which checks limits, grants GPUs and only ever shows a user their own containers. Each
subcommand is a module here, imported only when it is the one being run, so that `container --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ds01.cli import Handler, add_command, new_parser
from ds01.cli import run as run_command  # not `run`: the subcommand module of that name would shadow it
from ds01.cli.context import Context
from ds01.errors import UsageError

DESCRIPTION = """Create and manage your GPU containers.

A typical session:
  container create train            a container with one GPU (or a MIG slice), running, with
                                    ~/workspace/train mounted at /workspace
  container open train              a shell inside it
  container stop train              stop it when you are done
  container remove train            remove it and give its GPUs back (the workspace stays)"""


@dataclass(frozen=True)
class Subcommand:
    name: str
    summary: str
    example: str
    takes_command: bool = False  # whether words after `--` are its to run


SUBCOMMANDS = (
    Subcommand("create", "create a container and start it (one GPU unless you say otherwise)",
               "container create train --gpus 1 --memory 32g -- python train.py", takes_command=True),
    Subcommand("run", "queue a batch job: CMD runs on granted GPUs, its log and exit code are kept, its GPUs freed "
                      "the moment it ends", "container run train --gpus 1 --time 6h -- python train.py",
               takes_command=True),
    Subcommand("jobs", "your batch jobs: state, place in the queue, GPUs, exit code, GPU-hours",
               "container jobs --state failed"),
    Subcommand("cancel", "take a batch job out of the queue, or stop it while it runs", "container cancel train"),
    Subcommand("list", "list your containers (running ones unless --all)", "container list --all"),
    Subcommand("start", "start a stopped container", "container start train"),
    Subcommand("stop", "stop a running container (its workspace and GPUs stay with it)", "container stop train -t 30"),
    Subcommand("remove", "remove a container and free its GPUs; its workspace directory is never deleted",
               "container remove train -f"),
    Subcommand("open", "open an interactive shell (bash if the image has it) in a running container",
               "container open train"),
    Subcommand("exec", "run one command in a running container; exits with its exit code",
               "container exec train -- nvidia-smi", takes_command=True),
    Subcommand("logs", "print a container's output", "container logs train -f"),
    Subcommand("stats", "CPU, memory and GPUs of your running containers, one snapshot",
               "container stats --filter gpu=yes --json"),
    Subcommand("gpus", "every GPU slot: free, held (until when, at the latest), reserved for the queue or "
                       "unhealthy; your quota and use", "container gpus --fleet"),
    Subcommand("queue", "your GPU requests waiting in the queue: place, priority, estimated start",
               "container create train --gpus 1 --wait 2h & container queue"),
    Subcommand("ports", "the ports a container publishes, with the ssh line that reaches each from your laptop",
               "container ports train"),
    Subcommand("image", "your own images: build (from a Dockerfile, or a base image with --pip and --apt), list, "
                        "remove",
               "container image build torch-env --pip transformers --apt git && container create train --image "
               "torch-env"),
    Subcommand("commit", "save what you installed in a container as an image of yours",
               "container commit train train-env && container create train2 --image train-env"),
)


def _handler(subcommand: Subcommand) -> Handler:
    def handle(args: argparse.Namespace, context: Context) -> int:
        if args.command and not subcommand.takes_command:  # say so instead of ignoring it
            raise UsageError(f"container {subcommand.name} takes no command after '--' (got "
                             f"{' '.join(args.command)}). Run a command in a container with "
                             "`container exec NAME -- CMD`.")
        handler: Handler = importlib.import_module(f"ds01.cli.container.{subcommand.name}").run
        return handler(args, context)
    return handle


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand's summary; the arguments of `chosen` only, whose module is the only one imported."""
    parser = new_parser("container", DESCRIPTION, "container create train --gpus 1 && container open train")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        command = add_command(commands, subcommand.name, subcommand.summary, subcommand.example,
                              _handler(subcommand))
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks for errors")
        if subcommand.name == chosen:
            importlib.import_module(f"ds01.cli.container.{subcommand.name}").add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in words:  # everything after the first `--` is the command to run in the container
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1:]
    known = {subcommand.name for subcommand in SUBCOMMANDS}
    parser = build_parser(next((word for word in words if word in known), None))
    parser.set_defaults(command=command)
    return run_command(parser, words)
