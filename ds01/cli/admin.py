"""`ds01`: the administrator's command."""

from __future__ import annotations

from collections.abc import Sequence

from ds01.cli import (
    alloc,
    baremetal_cmd,
    cleanup_cmd,
    doctor_cmd,
    events_cmd,
    exporter_cmd,
    gpus,
    install_cmd,
    limits_cmd,
    new_parser,
    proxy_cmd,
    report_cmd,
    run,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("ds01", "Administer GPU sharing on this host.", "ds01 gpus")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    gpus.register(commands)
    alloc.register(commands)
    limits_cmd.register(commands)
    proxy_cmd.register(commands)
    exporter_cmd.register(commands)
    cleanup_cmd.register(commands)
    baremetal_cmd.register(commands)
    doctor_cmd.register(commands)
    install_cmd.register(commands)
    events_cmd.register(commands)
    report_cmd.register(commands)
    return run(parser, argv)
