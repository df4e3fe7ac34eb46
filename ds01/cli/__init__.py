"""Command-line front ends. `run` is the one place where errors become messages and exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ds01.cli.context import Context
from ds01.errors import EXIT_FAILURE, Ds01Error, UsageError

Handler = Callable[[argparse.Namespace, Context], int]
if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time before Python 3.12
    Commands = argparse._SubParsersAction


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, dispatch to the chosen command's handler, and turn ds01 errors into an exit code."""
    # The default action for SIGPIPE, so `ds01 ... | head` ends quietly; restored on return, because a caller
    # running commands in-process (tests, the daemons' own sockets) must keep getting EPIPE instead.
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return _dispatch(parser, argv)
    finally:
        signal.signal(signal.SIGPIPE, previous)


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args, Context())
    except Ds01Error as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: a bug gets one line, the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"{parser.prog}: internal error: {exc!r} (run again with --debug for a traceback)", file=sys.stderr)
        return EXIT_FAILURE


def new_parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def add_command(
    commands: Commands,
    name: str,
    summary: str,
    example: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with a worked example."""
    command = commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(handler=handler)
    return command


def add_format_option(command: argparse.ArgumentParser) -> None:
    """`--format table|json`, with `--json` as the short form."""
    command.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    command.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")


def time_option(option: str, text: str | None, now: datetime) -> datetime | None:
    """A --since/--until value: ISO-8601, or how long ago (2h, 7d); a bad one is a usage error."""
    if text is None:
        return None
    from ds01.eventlog.reader import parse_when  # noqa: PLC0415 - the `container` command never needs the reader

    try:
        return parse_when(text, now)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
