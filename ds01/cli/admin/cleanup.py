"""`ds01 cleanup [--dry-run]`: reclaim idle and overdue GPU containers; run every few minutes by a timer."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from ds01 import nvml
from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.engine import Engine
from ds01.errors import NvmlError
from ds01.gpus.supply import open_allocator
from ds01.ops import baremetal
from ds01.ops.cleanup import Cleanup, describe, limits_resolver


def register(commands: Commands) -> None:
    command = add_command(commands, "cleanup", "warn about, stop and reclaim idle or overdue GPU containers",
                          "ds01 cleanup --dry-run", run_cleanup)
    command.add_argument("--dry-run", action="store_true", help="say what would happen to each container, and why")
    add_format_option(command)


def run_cleanup(args: argparse.Namespace, context: Context) -> int:
    paths, config = context.paths, context.config
    try:
        with nvml.session() as gpus:
            inventory: nvml.Inventory | None = gpus.inventory()
    except NvmlError as exc:
        print(f"ds01: GPU activity unknown, so nothing is judged idle this time: {exc}", file=sys.stderr)
        inventory = None
    allocator = open_allocator(paths, config)
    with Engine() as engine:
        now = time.time()
        cleanup = Cleanup(paths.state_dir, engine, allocator, limits_resolver(config, datetime.now(UTC)))
        decisions = cleanup.run(config, inventory, now, args.dry_run)
        listed_at = time.time()
        report = allocator.reconcile(engine.containers(), listed_at, dry_run=args.dry_run)
    moment = datetime.fromtimestamp(now, UTC)
    if args.dry_run:
        revoked = baremetal.due_grants(paths, config.bare_metal, moment)
    else:
        revoked = list(baremetal.expire_grants(moment, paths, config.bare_metal).expired)
    rows = describe(decisions, args.dry_run)
    verb = "would " if args.dry_run else ""
    for allocation in report.released + report.expired:
        rows.append([allocation.container_name or "-", allocation.user, f"{verb}release",
                     "orphaned allocation (its container is gone or its reservation expired)"])
    for grant in revoked:
        rows.append(["-", grant.user, f"{verb}revoke", "bare-metal GPU access expired"])
    if args.format == "json":
        print_json([dict(zip(("container", "user", "action", "reason"), row, strict=True)) for row in rows])
    else:
        print_table(("CONTAINER", "USER", "ACTION", "WHY"), rows)
    return 0
