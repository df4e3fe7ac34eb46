"""The allocator benchmark's shared workload (LIMITS, SETTINGS, the slots as the proxy finds them), and
`bench/allocator.py --store etcd`: request+release pairs per second for N processes spread over the fleet
bed's three nodes on the etcd store, side by side with the file store on one node in the same run; the p99 time
per grant; and the conflicts the etcd store retried per 1,000 grants. Needs the fleet bed:
eval "$(scripts/fleetbed env)"."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

from _common import BenchError, percentile, verdict

from ds01 import nvml
from ds01.config import BUILTIN_DEFAULTS, AllocationSettings
from ds01.config.schema import EtcdSettings
from ds01.errors import Busy, Denied
from ds01.etcd import Delete, Etcd
from ds01.gpus.allocator import Allocator
from ds01.gpus.etcdstore import EtcdStore
from ds01.gpus.placement import GpuRequest, Slot
from ds01.gpus.supply import slots_from_inventory

TARGET_FLEET_PAIRS_PER_SECOND = 100
NODES = 3
LIMITS = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(1), "max_gpus_per_container": 1})
# MIG slices first, whole GPUs when no slice is free: every one of the 13 slots is in play.
SETTINGS = AllocationSettings(mig_preference="all", lock_timeout_seconds=30)


def healthy_slots() -> list[Slot]:
    with nvml.session() as gpus:
        return slots_from_inventory(gpus.inventory(), frozenset())


def pairs(allocator: Allocator, user: str, slots: list[Slot], duration: float, *, start: Any,
          report: dict[str, Any]) -> None:
    """One worker's round, after the others are ready: request+release pairs for `duration` seconds, each grant
    timed, refusals and Busy counted into `report`."""
    start.wait()
    began = time.perf_counter()
    deadline = began + duration
    while time.perf_counter() < deadline:
        asked = time.perf_counter()
        try:
            allocation = allocator.request(user, None, LIMITS, GpuRequest(count=1), slots=slots)
        except Denied as denied:
            report["denied"][denied.reason] += 1
            continue
        except Busy:
            report["busy"] += 1
            continue
        report["grants"].append(time.perf_counter() - asked)
        while True:
            try:
                allocator.release(allocation.id)
                break
            except Busy:
                report["busy"] += 1
        report["pairs"] += 1
    report["began"], report["ended"] = began, time.perf_counter()
    report["holds"] = list(allocator.lock_hold_seconds)


def fleet_spec() -> dict[str, Any]:
    endpoints = os.environ.get("DS01_FLEET_ETCD_ENDPOINTS", "")
    topologies = [os.environ.get(f"DS01_FLEET_NODE{n}_TOPOLOGY", "") for n in range(1, NODES + 1)]
    if not endpoints or not all(topologies):
        raise BenchError("the fleet bed is not in the environment: run scripts/fleetbed up, then "
                         'eval "$(scripts/fleetbed env)"')
    return {"endpoints": endpoints.split(","), "topologies": topologies, "prefix": f"/ds01-bench/{uuid.uuid4().hex}/"}


def fleet_worker(index: int, spec_json: str, duration: float, start: Any, results: Any) -> None:
    spec = json.loads(spec_json)
    report: dict[str, Any] = {"pairs": 0, "denied": Counter(), "busy": 0, "error": None, "holds": [], "grants": []}
    try:
        node = index % NODES
        os.environ["FAKE_NVML_TOPOLOGY"] = spec["topologies"][node]  # this node's GPUs, as its proxy sees them
        slots = healthy_slots()
        state = Path(spec["state"]) / f"node{node + 1}"  # each node's state dir, shared by its processes
        state.mkdir(parents=True, exist_ok=True)
        store = EtcdStore(Etcd(EtcdSettings(endpoints=tuple(spec["endpoints"]))), spec["prefix"], f"node{node + 1}",
                          lambda: 7 * 86400.0, turns_file=state / "allocations.lock")
        allocator = Allocator(state, SETTINGS, store=store)
        user = f"bench{index}"
        pairs(allocator, user, slots, duration, start=start, report=report)
        report["retries"] = store.retries
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        report["error"] = repr(exc)
    report["denied"] = dict(report["denied"])
    results.put(report)


def compare(run_round: Any, ours_worker: Any, processes: int, duration: float, repeats: int) -> int:
    spec = fleet_spec()
    print(f"ds01 allocator on etcd: {processes} processes over {NODES} nodes ({', '.join(spec['endpoints'])}), "
          f"against the file store on one node; one request (--gpus 1) + release per pair", flush=True)
    fleet, single = [], []
    etcd = Etcd(EtcdSettings(endpoints=tuple(spec["endpoints"])))
    for repeat in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="ds01-bench-"))
        os.environ["DS01_LOG_DIR"] = str(work / "log")
        try:
            single.append(run_round(ours_worker, str(work / "state"), processes, duration))
            fleet.append(run_round(fleet_worker, json.dumps({**spec, "state": str(work / "fleet")}), processes,
                                   duration))
        finally:
            shutil.rmtree(work, ignore_errors=True)
            etcd.commit([], [Delete(spec["prefix"], prefix=True)])
        print(f"  repetition {repeat + 1}: etcd {fleet[-1]['rate']:.0f} pairs/s, file {single[-1]['rate']:.0f} "
              "pairs/s", flush=True)

    def p99_ms(rounds: list[dict[str, Any]]) -> float:
        return float(statistics.median(percentile(r["grants"], 0.99) for r in rounds)) * 1000

    fleet_rate = statistics.median(r["rate"] for r in fleet)
    single_rate = statistics.median(r["rate"] for r in single)
    grants = sum(len(r["grants"]) for r in fleet)
    retries = sum(r["retries"] for r in fleet)
    rows = [
        ("", f"etcd, {NODES} nodes", "file, 1 node"),
        ("request+release pairs/s (median)", f"{fleet_rate:.0f}", f"{single_rate:.0f}"),
        ("per repetition", " ".join(f"{r['rate']:.0f}" for r in fleet), " ".join(f"{r['rate']:.0f}" for r in single)),
        ("grant time p99 (median)", f"{p99_ms(fleet):.1f} ms", f"{p99_ms(single):.1f} ms"),
        ("conflicts retried per 1,000 grants", f"{1000 * retries / max(grants, 1):.0f}", "none (one lock)"),
        ("denied requests / Busy", f"{sum(r['denied'] for r in fleet)} / {sum(r['busy'] for r in fleet)}",
         f"{sum(r['denied'] for r in single)} / {sum(r['busy'] for r in single)}"),
    ]
    print()
    for label, left, right in rows:
        print(f"{label:<36} {left:<22} {right}")
    print(f"{'ratio etcd/file':<36} {fleet_rate / single_rate:.2f}x")
    print(f"\ntarget: >= {TARGET_FLEET_PAIRS_PER_SECOND} pairs/s fleet-wide: "
          f"{verdict(fleet_rate >= TARGET_FLEET_PAIRS_PER_SECOND)}")
    return 0
