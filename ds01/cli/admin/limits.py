"""`ds01 config check` and `ds01 limits USER`: the configuration and what it means for one user."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from ds01 import labels
from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.config import LIMIT_KEYS, LimitValues, effective_limits, format_ulimits, load_config
from ds01.engine import Engine
from ds01.errors import EXIT_FAILURE, EngineError
from ds01.gpus.supply import open_allocator
from ds01.identity import accounts
from ds01.units import format_duration, format_equivalents, format_size


def register(commands: Commands) -> None:
    config = commands.add_parser("config", help="check the configuration", description="Check the configuration.")
    actions = config.add_subparsers(title="actions", metavar="ACTION")
    check = add_command(actions, "check", "validate resource-limits.yaml (exit 2 and the line of the first problem)",
                        "ds01 config check /etc/ds01/resource-limits.yaml", check_config)
    check.add_argument("file", nargs="?", type=Path, help="the file to check (default: DS01_CONFIG)")
    limits = add_command(commands, "limits", "a user's effective limits next to their current usage",
                         "ds01 limits alice", show_limits)
    limits.add_argument("user", help="login name")
    add_format_option(limits)


def check_config(args: argparse.Namespace, context: Context) -> int:
    config = load_config(args.file)
    print(f"{config.source}: valid ({len(config.groups)} groups, {len(config.users)} user overrides, "
          f"{len(config.exemptions)} exemptions, identity from {'ldap' if config.ldap else 'nss'})")
    return 0


def _show(key: str, limits: LimitValues) -> str:
    spec = next(k for k in LIMIT_KEYS if k.name == key)
    value = getattr(limits, spec.field)
    if key == "gpu_quota":
        return format_equivalents(value)
    if key.endswith(("memory", "shm_size")):
        return format_size(value)
    if spec.field.endswith("_seconds"):
        return format_duration(value)
    if key == "ulimits":
        return format_ulimits(value)
    if key == "allowed_mig_profiles":
        return "any" if value is None else ",".join(sorted(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def show_limits(args: argparse.Namespace, context: Context) -> int:
    paths, config = context.paths, context.config
    user = accounts.resolve_name(args.user, config.ldap)
    effective = effective_limits(config, user.name, user.groups, datetime.now(UTC))
    held = [a for a in open_allocator(paths, config).fleet_allocations() if a.user == user.sanitized]
    held_equivalents = sum((a.gpu_equivalents for a in held), Fraction(0))
    container_count: int | None = None
    status = 0
    try:
        with Engine() as engine:
            container_count = sum(1 for c in engine.containers() if c.labels.get(labels.USER) == user.sanitized)
    except EngineError as exc:
        print(f"ds01: containers not counted: {exc}", file=sys.stderr)
        status = EXIT_FAILURE
    usage = {"gpu_quota": f"{format_equivalents(held_equivalents)} in {len(held)} allocation(s)",
             "max_containers": "unknown (engine unreachable)" if container_count is None else str(container_count)}
    rows = [(key.name, _show(key.name, effective.limits), usage.get(key.name, "-")) for key in LIMIT_KEYS]
    if args.format == "json":
        print_json({"user": user.name, "sanitized": user.sanitized, "uid": user.uid, "groups": list(user.groups),
                    "group": effective.group, "is_admin": effective.is_admin,
                    "limits": {name: value for name, value, _ in rows},
                    "usage": {"gpu_equivalents": float(held_equivalents), "allocations": len(held),
                              "containers": container_count},
                    "exemptions": [{"exempt_from": sorted(e.exempt_from), "expires": e.expires_at.isoformat(),
                                    "reason": e.reason} for e in effective.exemptions]})
        return status
    admin = ", admin" if effective.is_admin else ""
    print(f"{user.name} (uid {user.uid}, ds01 group {effective.group}{admin}; groups: {', '.join(user.groups)})")
    print_table(("KEY", "LIMIT", "IN USE"), rows)
    for exemption in effective.exemptions:
        print(f"exempt from {', '.join(sorted(exemption.exempt_from))} until {exemption.expires_at.isoformat()}: "
              f"{exemption.reason}")
    return status
