"""The shared command-line runner: exit codes, messages, and no leaked process-wide state."""

from __future__ import annotations

import argparse
import signal

import pytest

from ds01.cli import add_command, new_parser, run
from ds01.cli.context import Context
from ds01.errors import ConfigError, Denied
from ds01.reasons import Reason


def parser_with(handler: object) -> argparse.ArgumentParser:
    parser = new_parser("tool", "a test tool", "tool go")
    add_command(parser.add_subparsers(), "go", "do it", "tool go", handler)  # type: ignore[arg-type]
    return parser


@pytest.mark.parametrize(("error", "code"), [(ConfigError("bad file"), 2), (Denied(Reason.QUOTA, "no more"), 3)])
def test_errors_become_exit_codes_and_one_line(error: Exception, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_args: argparse.Namespace, _context: Context) -> int:
        raise error

    assert run(parser_with(fail), ["go"]) == code
    assert capsys.readouterr().err == f"tool: {error}\n"


def test_a_bug_is_one_line_without_debug(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_args: argparse.Namespace, _context: Context) -> int:
        raise ZeroDivisionError("oops")

    assert run(parser_with(broken), ["go"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err
    assert run(parser_with(broken), ["--debug", "go"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_sigpipe_handling_does_not_leak_into_the_caller() -> None:
    before = signal.getsignal(signal.SIGPIPE)
    seen = []

    def record(_args: argparse.Namespace, _context: Context) -> int:
        seen.append(signal.getsignal(signal.SIGPIPE))
        return 0

    assert run(parser_with(record), ["go"]) == 0
    assert seen == [signal.SIG_DFL]  # inside a command, `| head` ends it quietly
    assert signal.getsignal(signal.SIGPIPE) == before  # a test or daemon calling it keeps its own handling


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parser_with(lambda _args: 0), []) == 2
    assert "usage: tool" in capsys.readouterr().err
