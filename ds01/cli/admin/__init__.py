"""`ds01`: the administrator's command, one module per subcommand."""

from __future__ import annotations

from collections.abc import Sequence

from ds01.cli import new_parser, run
from ds01.cli.admin import (
    alloc,
    baremetal,
    cleanup,
    doctor,
    events,
    exporter,
    fleet,
    gpus,
    install,
    limits,
    proxy,
    report,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("ds01", "Administer GPU sharing on this host.", "ds01 gpus")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    gpus.register(commands)
    alloc.register(commands)
    limits.register(commands)
    proxy.register(commands)
    exporter.register(commands)
    cleanup.register(commands)
    baremetal.register(commands)
    doctor.register(commands)
    install.register(commands)
    events.register(commands)
    report.register(commands)
    fleet.register(commands)
    return run(parser, argv)
