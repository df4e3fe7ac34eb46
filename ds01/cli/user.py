"""`container`: the user's command for GPU containers."""

from __future__ import annotations

from collections.abc import Sequence

from ds01.cli import new_parser, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("container", "Create and manage your GPU containers.", "container --help")
    parser.add_subparsers(title="commands", metavar="COMMAND")
    return run(parser, argv)
