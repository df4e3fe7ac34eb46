"""`container stats`: one snapshot of CPU, memory and GPUs per container, with docker-style filters."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ds01.cli import add_format_option
from ds01.cli.container.client import ProxyClient
from ds01.cli.container.common import gpus_cell, origin, shown_name
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.errors import UsageError
from ds01.records import Details
from ds01.units import format_bytes

FILTER_KEYS = ("name", "status", "gpu")
STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")


def parse_filters(given: list[str]) -> dict[str, set[str]]:
    """KEY=VALUE options, grouped by key: values of one key are alternatives, different keys must all match."""
    filters: defaultdict[str, set[str]] = defaultdict(set)
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise UsageError(f"--filter {item!r}: write KEY=VALUE, for example --filter gpu=yes.")
        if key not in FILTER_KEYS:
            raise UsageError(f"--filter {item!r}: unknown key {key!r}; use one of {', '.join(FILTER_KEYS)}.")
        if key == "gpu" and value not in ("yes", "no"):
            raise UsageError(f"--filter {item!r}: gpu takes yes or no.")
        if key == "status" and value not in STATES:
            raise UsageError(f"--filter {item!r}: status is one of {', '.join(STATES)}.")
        filters[key].add(value)
    return dict(filters)


def matches(name: str, found: Details, filters: dict[str, set[str]]) -> bool:
    if "name" in filters and not any(text in name for text in filters["name"]):
        return False
    if "status" in filters and found.info.status not in filters["status"]:
        return False
    return "gpu" not in filters or ("yes" if found.info.holds_gpus else "no") in filters["gpu"]


def cpu_percent(sample: dict[str, Any]) -> float:
    """CPU use between the engine's two samples, where 100% is one CPU busy."""
    now, before = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    used = (now.get("cpu_usage") or {}).get("total_usage", 0) - (before.get("cpu_usage") or {}).get("total_usage", 0)
    system = now.get("system_cpu_usage", 0) - before.get("system_cpu_usage", 0)
    online = now.get("online_cpus") or len((now.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    return round(used / system * online * 100, 2) if used > 0 and system > 0 else 0.0


def memory_used(sample: dict[str, Any]) -> tuple[int | None, int | None]:
    """(used, limit) in bytes; page cache that could be dropped does not count as used."""
    memory = sample.get("memory_stats") or {}
    if "usage" not in memory:
        return None, None
    details = memory.get("stats") or {}
    cache = details.get("inactive_file", details.get("total_inactive_file", details.get("cache", 0)))
    return max(int(memory["usage"]) - int(cache), 0), memory.get("limit")


@dataclass(frozen=True)
class Row:
    name: str
    engine_name: str
    origin: str  # container, docker, compose or devcontainer
    status: str
    cpu_percent: float | None  # None: not running, so not sampled
    memory_used_bytes: int | None
    memory_limit_bytes: int | None
    gpus: list[str]


def _row(name: str, item: Details, sample: dict[str, Any] | None) -> Row:
    used, limit = memory_used(sample) if sample else (None, None)
    return Row(name, item.info.name, origin(item), item.info.status, cpu_percent(sample) if sample else None, used,
               limit, list(item.info.device_ids))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="name=TEXT (name contains TEXT), status=STATE (e.g. exited; includes stopped "
                             "containers), gpu=yes|no; repeat to combine")
    add_format_option(parser)


def run(args: argparse.Namespace, context: Context) -> int:
    filters = parse_filters(args.filter)
    uid = os.getuid()
    with ProxyClient.of(context.paths) as proxy:
        found = [(shown_name(item, uid), item) for item in proxy.containers(uid, everything="status" in filters)]
        chosen = sorted((pair for pair in found if matches(*pair, filters)), key=lambda pair: pair[0])
        running = [item.info.name for _, item in chosen if item.info.status == "running"]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(running)))) as pool:
            samples = dict(zip(running, pool.map(proxy.stats, running), strict=True))
    rows = [(_row(name, item, samples.get(item.info.name)), gpus_cell(item)) for name, item in chosen]
    if args.format == "json":
        print_json([row for row, _ in rows])
        return 0
    if not rows:
        print("no matching containers" if filters else
              "no running containers; start one with `container start NAME` or create one with `container create NAME`")
        return 0
    print_table(("NAME", "ORIGIN", "STATUS", "CPU %", "MEMORY / LIMIT", "GPUS"), [
        (row.name, row.origin, row.status, "-" if row.cpu_percent is None else f"{row.cpu_percent:.2f}%",
         "-" if row.memory_used_bytes is None else
         f"{format_bytes(row.memory_used_bytes)} / {format_bytes(row.memory_limit_bytes)}",
         gpus) for row, gpus in rows])
    return 0
