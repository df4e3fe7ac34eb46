"""`ds01 fleet status|forget|import`: the servers that share one etcd store (allocation.store: etcd)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from ds01 import eventlog
from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.config import Config, effective_limits
from ds01.errors import ConfigError, Ds01Error, UsageError
from ds01.etcd import Etcd
from ds01.eventlog.types import EventType
from ds01.fleet import nodes
from ds01.fleet.names import confirm_name, node_instance
from ds01.gpus.allocator import STATE_NAME
from ds01.gpus.filestore import _parse_state
from ds01.gpus.supply import node_slots
from ds01.gpus.usage import fairshare_factors
from ds01.identity import accounts
from ds01.units import format_equivalents

STATES = ("free", "held", "reserved", "unhealthy")


def register(commands: Commands) -> None:
    fleet = commands.add_parser("fleet", help="the servers that share quota and fair share through etcd",
                                description="The servers that share quota and fair share through etcd "
                                            "(allocation.store: etcd).")
    actions = fleet.add_subparsers(title="actions", metavar="ACTION")
    status = add_command(actions, "status", "every node: alive or down, last seen, its slots by profile and state; "
                                            "the fleet's use per group", "ds01 fleet status --format json", show_status)
    add_format_option(status)
    forget = add_command(actions, "forget", "remove a node that is gone for good, with what it held (asks first)",
                         "ds01 fleet forget gpu3 --yes", forget_node)
    forget.add_argument("node")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    imported = add_command(actions, "import", "load this server's allocations.json into the fleet, exactly once",
                           "ds01 fleet import", import_state)
    add_format_option(imported)


def _fleet(config: Config) -> Etcd:
    if config.allocation.store != "etcd":
        raise ConfigError(f"{config.source}: allocation.store is {config.allocation.store}, so this server is in no "
                          "fleet; set allocation.store: etcd and the fleet section (docs-admin/fleet.md).")
    return Etcd(config.fleet.etcd)


def _seen(moment: float, now: float) -> str:
    ago = max(0, round(now - moment))
    return f"{ago}s ago" if ago < 120 else f"{ago // 60}m ago" if ago < 7200 else f"{ago // 3600}h ago"


def status_report(view: nodes.FleetView, config: Config, now: float) -> dict[str, Any]:
    shown = []
    for name in sorted(set(view.nodes) | {a.node for a in view.allocations}):
        record = view.nodes.get(name)
        held = view.held_on(name)
        state_of = {slot: ("held" if a.container is not None else "reserved") for a in held for slot in a.slots}
        profiles: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
        for slot in record.slots if record is not None else ():
            state = "unhealthy" if not slot.healthy else state_of.get(slot.slot, "free")
            profiles[slot.profile or f"{slot.model} (whole GPU)"][state] += 1
        shown.append({"node": name, "alive": name in view.alive,
                      "last_seen": view.last_seen(name, now),
                      "version": record.version if record is not None else None,
                      "driver": record.driver if record is not None else None,
                      "held_gpu_equivalents": format_equivalents(sum((a.gpu_equivalents for a in held), Fraction(0))),
                      "profiles": {profile: dict(counts) for profile, counts in sorted(profiles.items())}})
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"held": Fraction(0), "usage_hours": 0.0, "users": set()})
    users = {a.user for a in view.allocations} | set(view.usage)
    group_of = {user: _group(config, user) for user in users}
    for allocation in view.allocations:
        groups[group_of[allocation.user]]["held"] += allocation.gpu_equivalents
        groups[group_of[allocation.user]]["users"].add(allocation.user)
    half_life = config.scheduler.usage_half_life_seconds
    decayed = {user: hours * 2.0 ** (-max(0.0, now - at) / half_life) for user, (hours, at) in view.usage.items()}
    for user, hours in decayed.items():
        groups[group_of[user]]["usage_hours"] += hours
    factors = fairshare_factors(decayed, dict.fromkeys(decayed, 1.0)) if decayed else {}
    return {"nodes": shown, "groups": [
        {"group": group, "held_gpu_equivalents": format_equivalents(values["held"]),
         "usage_gpu_equivalent_hours": round(values["usage_hours"], 3), "users_holding": len(values["users"])}
        for group, values in sorted(groups.items())], "fairshare": {u: round(f, 4) for u, f in sorted(factors.items())},
        "unreadable_keys": list(view.unreadable)}


def _group(config: Config, user: str) -> str:
    try:
        account = accounts.resolve_name(user, config.ldap)
    except Ds01Error:
        return config.default_group  # an account gone since: what it holds counts under the defaults
    return effective_limits(config, account.name, account.groups, datetime.now(UTC)).group


def show_status(args: argparse.Namespace, context: Context) -> int:
    config = context.config
    now = time.time()
    report = status_report(nodes.read_fleet(_fleet(config), config.fleet.etcd.prefix), config, now)
    failed = 1 if report["unreadable_keys"] else 0
    for problem in report["unreadable_keys"]:
        print(f"ds01: etcd key {problem} is not a ds01 record and is left out above; move it aside (etcdctl get, "
              "then del) and run ds01 reconcile on its node", file=sys.stderr)
    if args.format == "json":
        print_json(report)
        return failed
    rows = []
    for node in report["nodes"]:
        state = "alive" if node["alive"] else "DOWN"
        seen = _seen(node["last_seen"], now) if node["last_seen"] is not None else "never"
        for profile, counts in node["profiles"].items() or {"-": dict.fromkeys(STATES, 0)}.items():
            rows.append([node["node"], state, seen, profile, *(counts[s] for s in STATES)])
    print_table(("NODE", "STATE", "LAST SEEN", "PROFILE", "FREE", "HELD", "RESERVED", "UNHEALTHY"), rows)
    print()
    print_table(("GROUP", "HELD (GPU-eq)", "DECAYED USE (GPU-eq-h)", "USERS HOLDING"),
                [[g["group"], g["held_gpu_equivalents"], g["usage_gpu_equivalent_hours"], g["users_holding"]]
                 for g in report["groups"]])
    return failed


def forget_node(args: argparse.Namespace, context: Context) -> int:
    config = context.config
    etcd = _fleet(config)
    if args.node == config.fleet.node:
        raise UsageError(f"{args.node} is this node; forget a node from another one, or stop this one's proxy and "
                         "let its allocations be reconciled.")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("ds01 fleet forget asks for confirmation on a terminal; give --yes to run it unattended")
        answer = input(f"Forget node {args.node} and every allocation it holds? Its containers, if it comes back, "
                       "would hold GPUs the fleet no longer counts. Type the node's name to go on: ")
        if answer.strip() != args.node:
            print("ds01: nothing was changed.", file=sys.stderr)
            return 3
    removed = nodes.forget(etcd, config.fleet.etcd.prefix, args.node)
    eventlog.emit(EventType.FLEET_FORGET, source="cli", node=args.node, allocations=[a.id for a in removed],
                  gpu_equivalents=str(sum((a.gpu_equivalents for a in removed), Fraction(0))))
    print(f"forgot node {args.node}: {len(removed)} allocation(s) removed from the fleet")
    return 0


def import_state(args: argparse.Namespace, context: Context) -> int:
    config, paths = context.config, context.paths
    etcd = _fleet(config)
    path = paths.state_dir / STATE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist: there is no state file to import") from exc
    allocations = _parse_state(raw, path)
    confirm_name(etcd, config.fleet.etcd.prefix, config.fleet.node, node_instance(paths.state_dir),
                 undone="Nothing was imported.")
    _, inventory = node_slots(paths, config)
    known = {slot.uuid for slot, *_ in inventory}
    for allocation in allocations:
        foreign = [slot for slot in allocation.slots if slot not in known]
        if foreign and allocation.container is not None:
            raise ConfigError(f"{path}: allocation {allocation.id} books {', '.join(foreign)}, which this node's "
                              "GPUs (as NVML lists them now) do not include; nothing was imported. Run the import "
                              "on the node whose state file it is, or remove that allocation from the file.")
    if nodes.import_state(etcd, config.fleet.etcd.prefix, config.fleet.node, raw, allocations):
        bound = [a for a in allocations if a.container is not None]
        eventlog.emit(EventType.FLEET_IMPORT, source="cli", node=config.fleet.node, allocations=len(bound),
                      source_file=str(path))
        result = {"imported": True, "allocations": len(bound), "node": config.fleet.node}
        text = f"imported {len(bound)} bound allocation(s) from {path} as node {config.fleet.node}"
    else:
        result = {"imported": False, "allocations": 0, "node": config.fleet.node}
        text = f"node {config.fleet.node}'s state was imported before; nothing was changed"
    if args.format == "json":
        print_json(result)
    else:
        print(text)
    return 0

