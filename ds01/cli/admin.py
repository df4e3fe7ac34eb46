"""`ds01`: the administrator's command."""

from __future__ import annotations

from collections.abc import Sequence

from ds01.cli import alloc, cleanup_cmd, exporter_cmd, gpus, limits_cmd, new_parser, proxy_cmd, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("ds01", "Administer GPU sharing on this host.", "ds01 gpus")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    gpus.register(commands)
    alloc.register(commands)
    limits_cmd.register(commands)
    proxy_cmd.register(commands)
    exporter_cmd.register(commands)
    cleanup_cmd.register(commands)
    return run(parser, argv)
