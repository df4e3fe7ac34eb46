"""bench/_simulation.py, the core of bench/scheduler.py: on tiny workloads, every policy delivers every request, no
slot is held by two requests at any moment, and FIFO starts nobody before someone who arrived earlier."""

from __future__ import annotations

import itertools
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from _simulation import HOUR, POLICIES, Fifo, Outcome, Workload, make_workload, simulate

SEEDS = (1, 2, 3)


def tiny(seed: int) -> Workload:
    """About 30 requests in half a day: enough to queue on 8 GPUs, few enough for quick passes."""
    return make_workload(seed, 30, week_seconds=12 * HOUR)


def outcomes(workload: Workload) -> list[Outcome]:
    return [simulate(policy(workload), workload) for policy in POLICIES]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_policy_delivers_every_request_after_it_arrives(seed: int) -> None:
    workload = tiny(seed)
    assert len(workload.jobs) > 10
    for outcome in outcomes(workload):
        assert sorted(run.job.id for run in outcome.runs) == sorted(job.id for job in workload.jobs), outcome.policy
        assert all(run.start >= run.job.arrival and run.slots for run in outcome.runs), outcome.policy


@pytest.mark.parametrize("seed", SEEDS)
def test_no_slot_is_held_by_two_requests_at_once(seed: int) -> None:
    workload = tiny(seed)
    for outcome in outcomes(workload):
        spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        for run in outcome.runs:
            for uuid in run.slots:
                spans[uuid].append((run.start, run.end, run.job.id))
        for uuid, held in spans.items():
            held.sort()
            for (_, ends, first), (begins, _, second) in itertools.pairwise(held):
                assert ends <= begins, (outcome.policy, uuid, first, second)


@pytest.mark.parametrize("seed", SEEDS)
def test_fifo_never_starts_a_request_before_an_earlier_arrival(seed: int) -> None:
    workload = tiny(seed)
    outcome = simulate(Fifo(workload), workload)
    starts = [run.start for run in sorted(outcome.runs, key=lambda run: (run.job.arrival, run.job.id))]
    assert starts == sorted(starts)
    assert any(run.start > run.job.arrival for run in outcome.runs)  # someone queued: the order was tested
