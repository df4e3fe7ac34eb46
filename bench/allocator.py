"""Benchmark: ds01's allocator against the naive approach of rebuilding state from `docker inspect`.

(a) ds01: N processes (32 by default) each compute their slots once from NVML, as the proxy does, then loop
    request+release against one state directory (file lock, atomic writes with fsync). Reports pairs per
    second and the lock-hold time (Allocator.lock_hold_seconds) at p50 and p99.
(b) naive: the same N processes, but every request lists and inspects every container on the engine
    (200 stopped containers carrying GPU labels and device requests) to work out who holds what; there is
    no state file and no lock, and release costs nothing.
(c) the ratio of the two.

Needs the test bed: eval "$(scripts/testbed env)" first. The benchmark's state and event log live in a
temporary directory, never in the test bed's DS01_STATE_DIR.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import _fleetstore
import docker
from _common import IMAGE, BenchError, engine_url, percentile, verdict
from _fleetstore import LIMITS, SETTINGS, healthy_slots, pairs
from docker.types import DeviceRequest

from ds01.engine import Engine
from ds01.errors import Denied
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest, Holding, Slot, choose_slots

BENCH_LABEL = "ds01.bench"
TARGET_PAIRS_PER_SECOND = 300
TARGET_P99_HOLD_MS = 5.0
TARGET_RATIO = 20
EXAMPLE = """example:
  eval "$(scripts/testbed env)"
  .venv/bin/python bench/allocator.py                 # default: 32 processes, ~1-2 minutes
  .venv/bin/python bench/allocator.py --duration 3 --repeats 5 --naive-duration 10
  .venv/bin/python bench/allocator.py --cleanup       # remove the 200 benchmark containers
  eval "$(scripts/fleetbed env)"; .venv/bin/python bench/allocator.py --store etcd   # the fleet on etcd
"""


def ours_worker(index: int, state_dir: str, duration: float, start: Any, results: Any) -> None:
    report: dict[str, Any] = {"pairs": 0, "denied": Counter(), "busy": 0, "error": None, "holds": [], "grants": []}
    try:
        slots = healthy_slots()  # once per process, as the proxy computes them
        allocator = Allocator(Path(state_dir), SETTINGS)
        user = f"bench{index}"
        pairs(allocator, user, slots, duration, start=start, report=report)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        report["error"] = repr(exc)
    report["denied"] = dict(report["denied"])
    results.put(report)


def naive_worker(index: int, docker_host: str, duration: float, start: Any, results: Any) -> None:
    """Each request rebuilds who-holds-what from a list and inspect of every container."""
    report: dict[str, Any] = {"pairs": 0, "denied": Counter(), "busy": 0, "error": None, "holds": [],
                              "inspected": 0}
    try:
        slots = healthy_slots()
        engine = Engine(docker_host)
        user = f"bench{index}"
        start.wait()
        began = time.perf_counter()
        deadline = began + duration
        while time.perf_counter() < deadline:
            found = engine.containers()
            report["inspected"] += len(found)
            holdings = [Holding(info.labels.get("ds01.allocation", info.id), info.labels.get("ds01.user", "?"),
                                info.device_ids, Fraction(info.labels.get("ds01.gpu_equivalents", "1")), info.name)
                        for info in found if info.status == "running" and info.device_ids]
            try:
                choose_slots(user, LIMITS, SETTINGS, GpuRequest(count=1), slots=slots, holdings=holdings)
            except Denied as denied:
                report["denied"][denied.reason] += 1
                continue
            report["pairs"] += 1  # release: nothing to do without a state
        report["began"], report["ended"] = began, time.perf_counter()
        engine.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        report["error"] = repr(exc)
    report["denied"] = dict(report["denied"])
    results.put(report)


def run_round(target: Any, argument: str, processes: int, duration: float) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(processes)
    results = context.Queue()
    workers = [context.Process(target=target, args=(i, argument, duration, start, results)) for i in range(processes)]
    for worker in workers:
        worker.start()
    reports = []
    try:
        for _ in workers:
            reports.append(results.get(timeout=duration + 120))
    except queue.Empty:
        sys.exit(f"bench: only {len(reports)} of {processes} workers reported; giving up")
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    errors = [r["error"] for r in reports if r["error"]]
    if errors:
        sys.exit(f"bench: {len(errors)} workers failed, first: {errors[0]}")
    elapsed = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    holds = sorted(h for r in reports for h in r["holds"])
    denied = sum((Counter(r["denied"]) for r in reports), Counter())
    return {
        "pairs": sum(r["pairs"] for r in reports), "elapsed": elapsed,
        "rate": sum(r["pairs"] for r in reports) / elapsed, "busy": sum(r["busy"] for r in reports),
        "denied": sum(denied.values()), "holds": holds,
        "inspected": sum(r.get("inspected", 0) for r in reports),
        "grants": sorted(g for r in reports for g in r.get("grants", [])),
        "retries": sum(r.get("retries", 0) for r in reports),
    }


def ensure_containers(client: docker.DockerClient, slots: list[Slot], wanted: int) -> int:
    """`wanted` stopped containers labelled ds01.bench=1 with GPU labels and device requests; reuses existing ones."""
    present = client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}=1"})
    missing = wanted - len(present)
    if missing <= 0:
        return len(present)
    print(f"creating {missing} benchmark containers on the test bed (once; remove them with --cleanup) ...",
          flush=True)
    taken = {c.name for c in present}
    names = [n for n in (f"ds01-bench-{i:03d}" for i in range(wanted * 2)) if n not in taken][:missing]

    def create(position: int, name: str) -> None:
        slot = slots[position % len(slots)]
        client.containers.create(
            IMAGE, ["true"], name=name,
            labels={BENCH_LABEL: "1", "ds01.user": f"bench{position % 32}", "ds01.allocation": f"bench-{name}",
                    "ds01.gpu_equivalents": str(slot.equivalents), "ds01.type": "container"},
            device_requests=[DeviceRequest(driver="nvidia", device_ids=[slot.uuid], capabilities=[["gpu"]])])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(len(names)), names))
    return len(client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}=1"}))


def cleanup(client: docker.DockerClient) -> int:
    found = client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}=1"})
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda c: c.remove(force=True), found))
    return len(found)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/allocator.py", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare ds01's allocator (state file + lock) with rebuilding state from docker inspect.")
    parser.add_argument("--processes", type=int, default=32, help="concurrent processes (default 32)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per ds01 repetition (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="ds01 repetitions, the median is reported (default 3)")
    parser.add_argument("--naive-duration", type=float, default=5.0,
                        help="seconds per naive repetition (default 5)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="naive repetitions (default 1)")
    parser.add_argument("--containers", type=int, default=200, help="containers on the engine for the naive run")
    parser.add_argument("--cleanup", action="store_true", help="remove the benchmark containers and exit")
    parser.add_argument("--store", choices=("file", "etcd"), default="file",
                        help="etcd: the fleet bed's three nodes on etcd against the file store on one node")
    parser.add_argument("--keep-fixture", action="store_true",
                        help="leave the benchmark containers for the next run (they confuse reconcile in tests)")
    args = parser.parse_args()

    try:
        docker_host = engine_url("LD_LIBRARY_PATH")
    except BenchError as exc:
        print(f"bench/allocator.py: {exc}", file=sys.stderr)
        return 2
    if args.store == "etcd":
        try:
            return _fleetstore.compare(run_round, ours_worker, args.processes, args.duration, args.repeats)
        except BenchError as exc:
            print(f"bench/allocator.py: {exc}", file=sys.stderr)
            return 2
    client = docker.DockerClient(base_url=docker_host)
    try:
        if args.cleanup:
            print(f"removed {cleanup(client)} benchmark containers")
            return 0
        slots = healthy_slots()
        present = ensure_containers(client, slots, args.containers)
    finally:
        client.close()
    whole = sum(1 for s in slots if not s.is_mig)
    print(f"ds01 allocator benchmark: {args.processes} processes, {len(slots)} slots ({whole} GPUs + "
          f"{len(slots) - whole} MIG devices), one request (--gpus 1) + release per pair", flush=True)

    ours = []
    for repeat in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="ds01-bench-"))
        os.environ["DS01_LOG_DIR"] = str(work / "log")
        try:
            ours.append(run_round(ours_worker, str(work / "state"), args.processes, args.duration))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"  ds01  repetition {repeat + 1}: {ours[-1]['rate']:.0f} pairs/s", flush=True)
    naive = []
    for repeat in range(args.naive_repeats):
        naive.append(run_round(naive_worker, docker_host, args.processes, args.naive_duration))
        print(f"  naive repetition {repeat + 1}: {naive[-1]['rate']:.1f} pairs/s "
              f"({naive[-1]['inspected'] / max(naive[-1]['pairs'] + naive[-1]['denied'], 1):.0f} containers "
              "inspected per request)", flush=True)

    ours_rate = statistics.median(r["rate"] for r in ours)
    naive_rate = statistics.median(r["rate"] for r in naive)
    p50 = statistics.median(percentile(r["holds"], 0.50) for r in ours) * 1000
    p99 = statistics.median(percentile(r["holds"], 0.99) for r in ours) * 1000
    ratio = ours_rate / naive_rate if naive_rate else float("inf")

    def attempts(rounds: list[dict[str, Any]]) -> float:
        return float(statistics.median((r["pairs"] + r["denied"]) / r["elapsed"] for r in rounds))

    rows = [
        ("", "ds01 allocator", f"naive ({present} containers inspected)"),
        ("request+release pairs/s (median)", f"{ours_rate:.0f}", f"{naive_rate:.1f}"),
        ("per repetition", " ".join(f"{r['rate']:.0f}" for r in ours), " ".join(f"{r['rate']:.1f}" for r in naive)),
        ("pairs in total", str(sum(r["pairs"] for r in ours)), str(sum(r["pairs"] for r in naive))),
        ("requests/s, granted or denied", f"{attempts(ours):.0f}", f"{attempts(naive):.1f}"),
        ("lock hold p50 / p99 (median)", f"{p50:.2f} ms / {p99:.2f} ms", "no lock"),
        ("denied requests / Busy", f"{sum(r['denied'] for r in ours)} / {sum(r['busy'] for r in ours)}",
         f"{sum(r['denied'] for r in naive)} / -"),
    ]
    print()
    for label, left, right in rows:
        print(f"{label:<34} {left:<28} {right}")
    print(f"{'ratio ours/naive':<34} {ratio:.0f}x")
    print()

    print(f"targets: >= {TARGET_PAIRS_PER_SECOND} pairs/s: {verdict(ours_rate >= TARGET_PAIRS_PER_SECOND)}; "
          f"p99 lock hold <= {TARGET_P99_HOLD_MS:g} ms: {verdict(p99 <= TARGET_P99_HOLD_MS)}; "
          f">= {TARGET_RATIO}x naive: {verdict(ratio >= TARGET_RATIO)}")
    if not args.keep_fixture:
        client = docker.DockerClient(base_url=docker_host)
        try:
            print(f"removed {cleanup(client)} benchmark containers")
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
