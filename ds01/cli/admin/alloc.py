"""`ds01 alloc request|bind|release|list` and `ds01 reconcile`: the allocator by hand."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.config import effective_limits
from ds01.engine import Engine
from ds01.errors import EXIT_FAILURE, Denied, UsageError
from ds01.gpus.allocator import Allocation
from ds01.gpus.placement import GpuRequest
from ds01.gpus.supply import current_slots, open_allocator
from ds01.identity import accounts
from ds01.proxy import runas
from ds01.units import format_equivalents, parse_duration


def register(commands: Commands) -> None:
    alloc = commands.add_parser("alloc", help="reserve, bind, release and list GPU allocations",
                                description="Reserve, bind, release and list GPU allocations.")
    actions = alloc.add_subparsers(title="actions", metavar="ACTION")
    request = add_command(actions, "request", "reserve GPU slots for a user, within their limits",
                          "ds01 alloc request --user alice --mig 3g.40gb --ttl 120s --json", request_slots)
    request.add_argument("--user", required=True, help="login name of the user the slots are for")
    kind = request.add_mutually_exclusive_group(required=True)
    kind.add_argument("--gpus", help="how many GPU slots, or 'all' for the user's per-container maximum")
    kind.add_argument("--mig", metavar="PROFILE", help="one MIG slice of this profile, e.g. 2g.20gb")
    request.add_argument("--ttl", default=None, help="how long the reservation waits for a bind (default: config)")
    add_format_option(request)
    bind = add_command(actions, "bind", "bind a reservation to a container (name or id)",
                       "ds01 alloc bind a-1f2e3d4c5b6a train-job", bind_reservation)
    bind.add_argument("id")
    bind.add_argument("container")
    release = add_command(actions, "release", "release an allocation and its slots",
                          "ds01 alloc release a-1f2e3d4c5b6a", release_allocation)
    release.add_argument("id")
    listing = add_command(actions, "list", "list reservations and bound allocations",
                          "ds01 alloc list --json", list_allocations)
    add_format_option(listing)
    reconcile = add_command(commands, "reconcile", "match allocations to containers: release the orphaned, "
                            "report GPU containers without an allocation (exit 1)", "ds01 reconcile --dry-run",
                            reconcile_allocations)
    reconcile.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    add_format_option(reconcile)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def allocation_json(allocation: Allocation) -> dict[str, Any]:
    return {
        "id": allocation.id, "user": allocation.user, "uid": allocation.uid, "slots": list(allocation.slots),
        "gpu_equivalents": round(float(allocation.gpu_equivalents), 4),
        "gpu_equivalents_exact": str(allocation.gpu_equivalents),
        "created_at": _iso(allocation.created_at), "expires_at": _iso(allocation.expires_at),
        "container": allocation.container, "container_name": allocation.container_name,
    }


def _gpu_request(args: argparse.Namespace) -> GpuRequest:
    if args.mig:
        return GpuRequest(mig_profile=args.mig)
    if args.gpus == "all":
        return GpuRequest(all_gpus=True)
    if not args.gpus.isdigit() or int(args.gpus) < 1:
        raise UsageError(f"--gpus {args.gpus!r}: give a whole number of at least 1, or 'all'.")
    return GpuRequest(count=int(args.gpus))


def request_slots(args: argparse.Namespace, context: Context) -> int:
    try:
        ttl = None if args.ttl is None else parse_duration(args.ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl: {exc}") from None
    gpu_request = _gpu_request(args)
    paths, config = context.paths, context.config
    user = accounts.resolve_name(args.user, config.ldap)
    effective = effective_limits(config, user.name, user.groups, datetime.now(UTC))
    slots = current_slots(paths, config)
    try:
        allocation = open_allocator(paths, config).request(
            user.sanitized, user.uid, effective.limits, gpu_request, slots=slots, ttl_seconds=ttl)
    except Denied as denial:
        if args.format == "json":
            print_json({"denied": True, "reason": denial.reason, "message": denial.message})
        raise
    if args.format == "json":
        print_json(allocation_json(allocation))
    else:
        print(f"reserved {allocation.id} for {allocation.user}: {', '.join(allocation.slots)} "
              f"({format_equivalents(allocation.gpu_equivalents)} GPU-equivalents), "
              f"expires {_iso(allocation.expires_at)} unless bound (ds01 alloc bind {allocation.id} CONTAINER)")
    return 0


def bind_reservation(args: argparse.Namespace, context: Context) -> int:
    paths, config = context.paths, context.config
    with Engine() as engine:
        container = engine.container(args.container)
    bound = open_allocator(paths, config).bind(args.id, container.id, container.name)
    print(f"bound {bound.id} ({', '.join(bound.slots)}) to container {container.name} ({container.id[:12]})")
    return 0


def release_allocation(args: argparse.Namespace, context: Context) -> int:
    gone = open_allocator(context.paths, context.config).release(args.id)
    print(f"released {gone.id}: {', '.join(gone.slots)}")
    return 0


def list_allocations(args: argparse.Namespace, context: Context) -> int:
    allocations = open_allocator(context.paths, context.config).allocations()
    if args.format == "json":
        print_json([allocation_json(a) for a in allocations])
        return 0
    print_table(("ID", "USER", "SLOTS", "GPU-EQ", "CONTAINER", "EXPIRES"), [
        (a.id, a.user, ",".join(a.slots), format_equivalents(a.gpu_equivalents),
         a.container_name or (a.container or "-")[:12], _iso(a.expires_at) or "-") for a in allocations])
    return 0


def reconcile_allocations(args: argparse.Namespace, context: Context) -> int:
    paths, config = context.paths, context.config
    listed_at = time.time()
    with Engine() as engine:
        found = engine.containers()
    report = open_allocator(paths, config).reconcile(found, listed_at, dry_run=args.dry_run)
    if args.format == "json":
        print_json({"dry_run": args.dry_run, "released": [a.id for a in report.released],
                    "expired": [a.id for a in report.expired], "adopted": [a.id for a in report.adopted],
                    "unallocated": [info.name for info in report.unallocated],
                    "consistent": not (report.released or report.expired or report.adopted or report.unallocated)})
        return EXIT_FAILURE if report.unallocated else 0
    verb = "would " if args.dry_run else ""
    for allocation in report.released:
        print(f"{verb}release {allocation.id} ({allocation.user}): container {allocation.container_name or ''} "
              f"{(allocation.container or '')[:12]} no longer exists")
    for allocation in report.expired:
        print(f"{verb}expire reservation {allocation.id} ({allocation.user}): never bound to a container")
    for allocation in report.adopted:
        print(f"{verb}bind {allocation.id} ({allocation.user}) to container {allocation.container_name}, "
              "which carries its label")
    for info in report.unallocated:
        devices = ",".join(info.device_ids) or ("all GPUs" if info.gpu_count == -1 else f"{info.gpu_count} GPUs")
        print(f"container {info.name} ({info.id[:12]}) holds {devices} without an allocation", file=sys.stderr)
    for info in runas.root_with_host_mounts(found):
        print(f"WARN {runas.root_container_warning(info)}", file=sys.stderr)
    if not (report.released or report.expired or report.adopted or report.unallocated):
        print("consistent: every allocation has its container and every GPU container its allocation")
    return EXIT_FAILURE if report.unallocated else 0
