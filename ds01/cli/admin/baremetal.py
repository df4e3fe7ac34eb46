"""`ds01 bare-metal grant|revoke|list`: time-limited GPU use outside containers (membership of bare_metal.group)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.errors import UsageError
from ds01.ops import baremetal
from ds01.units import format_duration, parse_duration


def register(commands: Commands) -> None:
    bare = commands.add_parser(
        "bare-metal", help="grant, revoke and list GPU use outside containers",
        description="Grant, revoke and list GPU use outside containers: time-limited membership of the group "
                    "that owns /dev/nvidia* (bare_metal.group in resource-limits.yaml).")
    actions = bare.add_subparsers(title="actions", metavar="ACTION")
    grant = add_command(actions, "grant", "add a user to the GPU group until the grant expires",
                        "ds01 bare-metal grant alice --for 8h", grant_access)
    grant.add_argument("user", help="login name")
    grant.add_argument("--for", dest="duration", metavar="DURATION",
                       help="how long, like 8h or 2d (default: bare_metal.default_duration; "
                            "at most bare_metal.max_duration)")
    revoke = add_command(actions, "revoke", "take a user's grant away now",
                         "ds01 bare-metal revoke alice", revoke_access)
    revoke.add_argument("user", help="login name")
    revoke.add_argument("--reason", default="revoked by an administrator", help="recorded in the event log")
    listing = add_command(actions, "list", "list grants, and group members ds01 does not manage",
                          "ds01 bare-metal list --format json", list_access)
    add_format_option(listing)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _left(seconds: int) -> str:
    """A coarse remaining time: 2d3h, 5h12m, 40m, 0m."""
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{minutes}m" if hours else f"{minutes}m"


def grant_access(args: argparse.Namespace, context: Context) -> int:
    duration = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    settings = context.config.bare_metal
    now = datetime.now(UTC)
    record = baremetal.grant(context.paths, settings, args.user, now, duration)
    length = format_duration(int((record.until - record.granted_at).total_seconds()))
    print(f"granted {record.user} membership of {record.group} for {length}, until {_iso(record.until)} "
          f"(new logins only; it ends at the first cleanup after that)")
    return 0


def revoke_access(args: argparse.Namespace, context: Context) -> int:
    record = baremetal.revoke(context.paths, context.config.bare_metal, args.user, args.reason)
    print(f"revoked {record.user}'s membership of {record.group} (sessions already open keep the group until "
          f"they log out: pkill -u {record.user} ends them)")
    return 0


def list_access(args: argparse.Namespace, context: Context) -> int:
    settings = context.config.bare_metal
    now = datetime.now(UTC)
    found = baremetal.members(context.paths, settings)
    if args.format == "json":
        print_json({"group": settings.group, "members": [
            {"user": m.user, "managed": m.managed, "in_group": m.in_group,
             "until": None if m.until is None else _iso(m.until), "granted_by": m.granted_by,
             "status": m.status(now)} for m in found]})
        return 0
    if not found:
        print(f"nobody is in {settings.group}")
        return 0
    print_table(("USER", "UNTIL", "LEFT", "GRANTED BY", "STATUS"), [
        (m.user, "-" if m.until is None else _iso(m.until),
         "-" if m.until is None else _left(int((m.until - now).total_seconds())),
         m.granted_by or "-", m.status(now)) for m in found])
    return 0
