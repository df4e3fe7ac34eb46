"""`container gpus`: every GPU slot (whole GPU or MIG device) with its state (free, held, reserved for the queue,
or unhealthy), when a held one frees at the latest, your quota and use, and how many wait. Other users' slots
show as "another user"."""

from __future__ import annotations

import argparse
from typing import Any

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_format_option(parser)


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
        answer = proxy.gpus()
    if args.format == "json":
        print_json(answer)
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
