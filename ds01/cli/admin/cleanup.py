"""`ds01 cleanup [--dry-run]`: reclaim idle and overdue GPU containers, and prune old dangling images and build
cache; run every few minutes by a timer."""

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
from ds01.errors import EXIT_FAILURE, Denied, NvmlError
from ds01.gpus.allocator import ReconcileReport
from ds01.gpus.supply import open_allocator
from ds01.ops import baremetal
from ds01.ops.cleanup import Cleanup, LimitsByUid, describe
from ds01.ops.prune import Pruning, prune
from ds01.units import format_bytes, format_duration, format_elapsed

COLUMNS = ("container", "user", "action", "reason")


def register(commands: Commands) -> None:
    command = add_command(commands, "cleanup", "warn about, stop and reclaim idle or overdue GPU containers; "
                          "prune dangling images and build cache older than images.prune_after",
                          "ds01 cleanup --dry-run", run_cleanup)
    command.add_argument("--dry-run", action="store_true",
                         help="say what would happen to each container and which images would go, and why")
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
        limits = LimitsByUid(config, datetime.now(UTC))
        cleanup = Cleanup(paths.state_dir, engine, allocator, limits.of_container,
                          waiter_limits=limits.of_waiter)
        outcome = cleanup.run(config, inventory, now, args.dry_run)
        errors = list(outcome.errors)
        listed_at = time.time()
        try:
            report = allocator.reconcile(engine.containers(), listed_at, dry_run=args.dry_run)
        except Denied as denied:  # the fleet's store out of reach, or this node's name another's: the rest goes on
            errors.append(f"allocations not reconciled: {denied.message}")
            report = ReconcileReport()
        pruned_at = time.time()
        pruning = prune(engine, paths, config.images.prune_after_seconds, pruned_at, args.dry_run)
    moment = datetime.fromtimestamp(now, UTC)
    if args.dry_run:
        revoked = baremetal.due_grants(paths, config.bare_metal, moment)
    else:
        revoked = list(baremetal.expire_grants(moment, paths, config.bare_metal).expired)
    rows = describe(outcome.decisions, args.dry_run)
    verb = "would " if args.dry_run else ""
    for allocation in report.released + report.expired:
        rows.append([allocation.container_name or "-", allocation.user, f"{verb}release",
                     "orphaned allocation (its container is gone or its reservation expired)"])
    for grant in revoked:
        rows.append(["-", grant.user, f"{verb}revoke", "bare-metal GPU access expired"])
    listing: list[dict[str, object]] = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    listing += describe_pruning(pruning, config.images.prune_after_seconds, pruned_at, args.dry_run)
    if args.format == "json":
        print_json(listing)
    else:
        print_table(("CONTAINER", "USER", "ACTION", "WHY"), [[entry[key] for key in COLUMNS] for entry in listing])
    for error in errors:  # after the listing: the run went on, and says what it did instead
        print(f"ds01: error: {error}", file=sys.stderr)
    return EXIT_FAILURE if errors else 0


def describe_pruning(pruning: Pruning, prune_after_seconds: int, now: float, dry_run: bool) -> list[dict[str, object]]:
    """A row per image and one for the build cache, with the ids (and in JSON the sizes) beside the reading."""
    verb = "would prune" if dry_run else "prune"
    after = format_duration(prune_after_seconds)
    rows: list[dict[str, object]] = [
        {"container": "-", "user": pruned.owner or "-", "action": verb,
         "reason": f"untagged image {pruned.image.id.removeprefix('sha256:')[:12]}, made "
                   f"{format_elapsed(now - pruned.image.created_at)} ago (images.prune_after {after})",
         "image": pruned.image.id}
        for pruned in pruning.images]
    if pruning.cache:
        size = format_bytes(pruning.cache_bytes)
        records = f"{len(pruning.cache)} record{'' if len(pruning.cache) == 1 else 's'}"
        rows.append({"container": "-", "user": "-", "action": verb,
                     "reason": f"build cache unused for {after}: {records}, {size if dry_run else f'{size} reclaimed'}",
                     "build_cache": list(pruning.cache), "size_bytes": pruning.cache_bytes})
    if pruning.images_reclaimed_bytes:
        rows.append({"container": "-", "user": "-", "action": "reclaimed",
                     "reason": f"{format_bytes(pruning.images_reclaimed_bytes)} of image layers from the "
                               f"{len(pruning.images)} images pruned",
                     "size_bytes": pruning.images_reclaimed_bytes})
    return rows
