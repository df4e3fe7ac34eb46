"""`container gpus`: every GPU slot (whole GPU or MIG device) with its state (free, held, reserved for the queue,
or unhealthy), when a held one frees at the latest, your quota and use, and how many wait. Other users' slots
show as "another user". With --fleet: where in the fleet slots are free for you, and how to get there."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", action="store_true",
                        help="every server of the fleet: the slots free there that your limits let you use")
    add_format_option(parser)


def _seen(moment: float, now: float) -> str:
    ago = max(0, round(now - moment))
    return f"{ago}s ago" if ago < 120 else f"{ago // 60}m ago" if ago < 7200 else f"{ago // 3600}h ago"


def _slot_text(free: dict[str, Any]) -> str:
    """"2 x A100-SXM4-80GB", or "3 x 1g.10gb of A100-SXM4-80GB"."""
    model = free["model"].removeprefix("NVIDIA ")
    if free["profile"] is not None:
        return f"{free['count']} x {free['profile']} of {model}"
    size = f"{round(free['memory_mib'] / 1024)}GB"
    return f"{free['count']} x {model}" + ("" if size in model else f" {size}")


def show_fleet(answer: dict[str, Any], now: float) -> None:
    for node in answer["nodes"]:
        where = " (this server)" if node["here"] else f" — ssh {node['node']}"
        if not node["alive"]:
            print(f"{node['node']}: DOWN, last seen {_seen(node['last_seen'], now)}; its GPUs are not offered")
        elif not node["free"]:
            print(f"{node['node']}: nothing free for you{' (this server)' if node['here'] else ''}")
        else:
            print(f"{node['node']}: {', '.join(_slot_text(free) for free in node['free'])} free{where}")
    print(f"\nYou hold {answer['held_in_fleet']} of {answer['quota']} GPU-equivalents across the fleet.")


def _who(row: dict[str, Any]) -> str:
    if row["state"] == "held":
        container = f" ({row['container']})" if row.get("container") else ""
        return f"{row['holder']}{container}, frees {row['frees']['text']}"
    if row.get("reserved"):
        reserved = row["reserved"]
        return f"reserved for {reserved['for']} (queue #{reserved['position']}) {reserved['from']['text']}"
    return ""


def run(args: argparse.Namespace, context: Context) -> int:
    with ProxyClient.of(context.paths) as proxy:
        answer = proxy.gpus(fleet=args.fleet)
    if args.format == "json":
        print_json(answer)
        return 0
    if args.fleet:
        show_fleet(answer, time.time())
        return 0
    print_table(("GPU", "SLOT", "PROFILE", "EQUIV", "STATE", "WHO"),
                [(row["gpu"], row["slot"], row.get("profile") or "full", row["equivalents"], row["state"], _who(row))
                 for row in answer.get("slots") or []])
    free = sum(row["state"] == "free" for row in answer.get("slots") or [])
    print(f"\n{free} slot{'s' if free != 1 else ''} free. You hold {answer['held']} of {answer['quota']} "
          f"GPU-equivalents; {answer['queue_length']} request{'s' if answer['queue_length'] != 1 else ''} wait"
          f"{'s' if answer['queue_length'] == 1 else ''} in the queue ({answer['waiting_of_yours']} yours).")
    if answer["queue_length"]:
        print("your place in it: container queue")
    return 0
