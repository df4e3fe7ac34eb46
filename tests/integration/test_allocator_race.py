"""32 processes request and release GPU slots against one real state directory at the same time.

Double booking is detected for real, outside the allocator: after a grant each worker creates one marker file
per granted slot with O_CREAT|O_EXCL and removes it before releasing, so a marker that already exists means
two holders of one slot at once. Quota is checked on consistent snapshots of the state file while the storm
runs, and again on the final state.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import time
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ds01 import nvml
from ds01.config import BUILTIN_DEFAULTS, AllocationSettings, LimitValues
from ds01.errors import Busy, Denied
from ds01.gpus.allocator import STATE_NAME, Allocator
from ds01.gpus.filestore import _parse_state
from ds01.gpus.placement import GpuRequest, Slot
from ds01.gpus.supply import slots_from_inventory
from tests.conftest import TopologyFile

WORKERS = 32
ITERATIONS = 50
RELEASE_ATTEMPTS = 50


def _limits(quota: Fraction, maximum: int, full: bool, profiles: frozenset[str] | None = None) -> LimitValues:
    return BUILTIN_DEFAULTS.with_overrides({"gpu_quota": quota, "max_gpus_per_container": maximum,
                                            "allow_full_gpu": full, "allowed_mig_profiles": profiles})


# Eight users, four workers each: the same user races itself for its quota as well as others for slots.
LIMITS = {
    "alice": _limits(Fraction(2), 2, True), "bob": _limits(Fraction(2), 2, True),
    "carol": _limits(Fraction(3, 2), 2, True), "dave": _limits(Fraction(1), 1, True),
    "erin": _limits(Fraction(5, 7), 2, False), "frank": _limits(Fraction(3, 7), 3, False),
    "grace": _limits(Fraction(1), 3, True, frozenset({"1g.10gb", "2g.20gb"})),
    "heidi": _limits(Fraction(9, 7), 2, True, frozenset({"1g.10gb", "3g.40gb", "4g.40gb"})),
}
USERS = sorted(LIMITS)


def _requests(slots: list[Slot]) -> list[GpuRequest]:
    return [GpuRequest(count=1), GpuRequest(count=2), GpuRequest(all_gpus=True),
            GpuRequest(mig_profile="1g.10gb"), GpuRequest(mig_profile="2g.20gb"), GpuRequest(mig_profile="3g.40gb"),
            *(GpuRequest(devices=(s.uuid,)) for s in slots[::3])]


def _snapshot_over_quota(path: Path) -> list[str]:
    """Users over quota in one consistent snapshot of the state file (it is only ever replaced by rename)."""
    held: dict[str, Fraction] = defaultdict(Fraction)
    for allocation in _parse_state(path.read_bytes(), path):
        held[allocation.user] += allocation.gpu_equivalents
    return [f"{user} held {amount} > {LIMITS[user].gpu_quota}" for user, amount in held.items()
            if amount > LIMITS[user].gpu_quota]


def worker(index: int, state_dir: str, marker_dir: str, slots: list[Slot], start: Any, results: Any) -> None:
    report: dict[str, Any] = {"index": index, "granted": 0, "released": 0, "denied": Counter(), "busy": 0,
                              "collisions": [], "over_quota": [], "errors": [], "max_held": {}}
    try:
        user = USERS[index % len(USERS)]
        settings = AllocationSettings(strategy="pack" if index % 2 else "spread",
                                      mig_preference=("restricted", "all", "none")[index % 3],
                                      reservation_ttl_seconds=3600, lock_timeout_seconds=60)
        allocator = Allocator(Path(state_dir), settings)
        state = Path(state_dir) / STATE_NAME
        rng = random.Random(index)  # noqa: S311 - a reproducible mix of requests, not secrecy
        requests = _requests(slots)
        start.wait()
        for _ in range(ITERATIONS):
            try:
                allocation = allocator.request(user, 2000 + index, LIMITS[user], rng.choice(requests), slots=slots)
            except Denied as denied:
                report["denied"][denied.reason] += 1
                continue
            except Busy:
                report["busy"] += 1
                continue
            report["granted"] += 1
            markers = []
            for slot in allocation.slots:
                marker = Path(marker_dir) / slot
                try:
                    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    report["collisions"].append(f"{slot}: worker {index} ({user}, {allocation.id}) found it held "
                                                f"by {marker.read_text() if marker.exists() else '?'}")
                    continue
                os.write(fd, f"worker {index} ({user}, {allocation.id})".encode())
                os.close(fd)
                markers.append(marker)
            report["over_quota"].extend(_snapshot_over_quota(state))
            report["max_held"][user] = str(max(Fraction(report["max_held"].get(user, "0")), sum(
                (a.gpu_equivalents for a in _parse_state(state.read_bytes(), state) if a.user == user), Fraction(0))))
            time.sleep(rng.uniform(0, 0.002))  # hold the slots a moment, so holders overlap
            for marker in markers:
                marker.unlink()
            for _attempt in range(RELEASE_ATTEMPTS):
                try:
                    allocator.release(allocation.id)
                    report["released"] += 1
                    break
                except Busy:
                    report["busy"] += 1
    except Exception as exc:  # noqa: BLE001 - everything a worker hits is reported to the parent
        report["errors"].append(repr(exc))
    report["denied"] = dict(report["denied"])
    results.put(report)


def test_32_processes_never_double_book_or_exceed_quota(
        topology: TopologyFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    with nvml.session() as gpus:  # the slots the proxy would compute once, from the simulated driver
        slots = slots_from_inventory(gpus.inventory(), frozenset())
    assert len(slots) == 13 and sum((s.equivalents for s in slots), Fraction(0)) == Fraction(6) + Fraction(14, 7)
    state_dir, marker_dir = tmp_path / "state", tmp_path / "markers"
    state_dir.mkdir()
    marker_dir.mkdir()

    context = multiprocessing.get_context("fork")
    start = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [context.Process(target=worker, args=(i, str(state_dir), str(marker_dir), slots, start, results))
                 for i in range(WORKERS)]
    for process in processes:
        process.start()
    reports = []
    try:
        for _ in processes:
            reports.append(results.get(timeout=600))
    except queue.Empty:
        pytest.fail(f"only {len(reports)} of {WORKERS} workers reported within 10 minutes")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * WORKERS

    errors = [e for r in reports for e in r["errors"]]
    collisions = [c for r in reports for c in r["collisions"]]
    over_quota = [o for r in reports for o in r["over_quota"]]
    granted = sum(r["granted"] for r in reports)
    released = sum(r["released"] for r in reports)
    busy = sum(r["busy"] for r in reports)
    denied = sum((Counter(r["denied"]) for r in reports), Counter())
    print(f"\n{WORKERS} workers x {ITERATIONS}: {granted} granted, {released} released, denied {dict(denied)}, "
          f"busy {busy}")
    assert errors == []
    assert collisions == [], "two holders of one slot at the same time"
    assert over_quota == []
    for report in reports:
        for user, amount in report["max_held"].items():
            assert Fraction(amount) <= LIMITS[user].gpu_quota, (user, amount)
    assert granted > WORKERS, "the storm hardly granted anything: the test proves nothing"
    assert released == granted
    assert set(denied) <= {"quota", "capacity", "per_container_max", "mig_profile_not_allowed",
                           "full_gpu_not_allowed"}

    # The end state: valid, empty, no leftovers; the event log agrees with the workers' counts.
    state = state_dir / STATE_NAME
    assert _parse_state(state.read_bytes(), state) == []
    backup = state_dir / f"{STATE_NAME}.bak"
    _parse_state(backup.read_bytes(), backup)
    assert not list(marker_dir.iterdir())
    assert not [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp") or ".corrupt-" in p.name]
    kinds = Counter(json.loads(line)["type"] for line in (tmp_path / "log" / "events.jsonl").read_text().splitlines())
    assert kinds["allocation.reserve"] == granted and kinds["allocation.release"] == released
    assert kinds["allocator.state_corrupt"] == 0
