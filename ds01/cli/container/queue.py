"""`container queue`: your GPU requests waiting in the queue, each with its place, its priority and that
priority's factors, the slots reserved for it and when it starts at the latest. Others' are counted, not named;
admins see everyone's with --all."""

from __future__ import annotations

import argparse
from typing import Any

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", "-a", action="store_true", help="everyone's requests (admins only)")
    add_format_option(parser)


def _priority(entry: dict[str, Any]) -> str:
    priority = entry.get("priority")
    if not priority:
        return "-"
    group = f", group {priority['group']:+g}" if priority["group"] else ""
    return f"{priority['total']:.0f} (fair share {priority['fairshare']:.2f}, age {priority['age']:.2f}{group})"


def run(args: argparse.Namespace, context: Context) -> int:
    with ProxyClient.of(context.paths) as proxy:
        answer = proxy.queue(everyone=args.all)
    if args.format == "json":
        print_json(answer)
        return 0
    waiting, others = answer.get("waiting") or [], int(answer.get("others") or 0)
    if waiting:
        print_table(("POS", *(("USER",) if args.all else ()), "KIND", "PRIORITY", "RESERVED", "STARTS", "WAITED"),
                    [(entry.get("position") or "?", *((entry["user"],) if args.all else ()), entry["kind"],
                      _priority(entry), ",".join(entry.get("reserved_slots") or []) or "-",
                      (entry.get("start") or {}).get("text") or "unknown", f"{entry['waited_seconds'] // 60}m")
                     for entry in waiting])
    else:
        print("you have no request waiting for GPUs" if not args.all else "nobody waits for GPUs")
    if others:
        print(f"{others} request{'s' if others != 1 else ''} of other users wait{'s' if others == 1 else ''} too")
    print("what is free and when: container gpus")
    return 0
