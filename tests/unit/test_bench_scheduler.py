"""bench/_simulation.py, the core of bench/scheduler.py: on tiny workloads, every policy delivers every request, no
slot is held by two requests at any moment, FIFO starts nobody before someone who arrived earlier, the shortcuts
that keep the simulation fast change no decision, and the workloads ask for the load (and fair shares) asked for."""

from __future__ import annotations

import itertools
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from ds01.gpus.placement import GpuRequest

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from _simulation import HOUR, POLICIES, Ds01, Fifo, Outcome, RefuseAndRetry, Workload, make_workload, simulate

SEEDS = (1, 2, 3)


def tiny(seed: int) -> Workload:
    """About 50 requests in half a day: enough to queue on 8 GPUs, few enough for quick passes."""
    return make_workload(seed, 0.6, week_seconds=12 * HOUR)


def contended(seed: int) -> Workload:
    """Three hours at 130%, everyone asking for at least their fair share: a queue that grows."""
    return make_workload(seed, 1.3, fair_floor=True, week_seconds=3 * HOUR)


def outcomes(workload: Workload) -> list[Outcome]:
    return [simulate(policy(workload), workload) for policy in POLICIES]


def asked(workload: Workload) -> dict[str, float]:
    """GPU-equivalent-hours each user asks for within the week."""
    hours: dict[str, float] = defaultdict(float)
    for job in workload.jobs:
        hours[job.user] += float(job.equivalents) * min(job.duration_seconds, workload.week_seconds - job.arrival)
    return {user: seconds / HOUR for user, seconds in hours.items()}


def decisions(outcome: Outcome) -> list[tuple[str, float, tuple[str, ...]]]:
    return [(run.job.id, run.start, run.slots) for run in outcome.runs]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_policy_delivers_every_request_after_it_arrives(seed: int) -> None:
    workload = tiny(seed)
    assert len(workload.jobs) > 10
    for outcome in outcomes(workload):
        assert sorted(run.job.id for run in outcome.runs) == sorted(job.id for job in workload.jobs), outcome.policy
        assert all(run.start >= run.job.arrival and run.slots for run in outcome.runs), outcome.policy


@pytest.mark.parametrize("seed", SEEDS)
def test_no_slot_is_held_by_two_requests_at_once(seed: int) -> None:
    for workload in (tiny(seed), contended(seed)):
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


@pytest.mark.parametrize("seed", SEEDS)
def test_ds01s_shortcut_grants_what_every_full_pass_would(seed: int) -> None:
    for workload in (tiny(seed), contended(seed)):
        fast, full = Ds01(workload), Ds01(workload, shortcut=False)
        assert decisions(simulate(fast, workload)) == decisions(simulate(full, workload))
        assert fast.passes < full.passes  # the shortcut was taken: the comparison tested it


class _Forgetful(dict[tuple[str, GpuRequest], tuple[int, int]]):
    """Remembers no refusal: every retry asks the allocator again."""

    def __setitem__(self, key: tuple[str, GpuRequest], value: tuple[int, int]) -> None:
        pass


@pytest.mark.parametrize("seed", SEEDS)
def test_refuse_and_retry_remembering_refusals_changes_nothing(seed: int) -> None:
    workload = contended(seed)
    remembering, forgetful = RefuseAndRetry(workload), RefuseAndRetry(workload)
    forgetful._refused = _Forgetful()
    first, second = simulate(remembering, workload), simulate(forgetful, workload)
    assert decisions(first) == decisions(second)
    assert first.retries == second.retries > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_workload_asks_for_its_load_within_the_week(seed: int) -> None:
    for workload, load in ((tiny(seed), 0.6), (contended(seed), 1.3)):
        capacity_hours = float(workload.capacity) * workload.week_seconds / HOUR
        # rel: a request cut short to what is left still lasts a minute
        assert sum(asked(workload).values()) == pytest.approx(load * capacity_hours, rel=1e-3)


@pytest.mark.parametrize("seed", SEEDS)
def test_with_a_fair_floor_every_user_asks_for_at_least_their_fair_share(seed: int) -> None:
    workload = make_workload(seed, 1.1, fair_floor=True, stretch=3, week_seconds=24 * HOUR)
    fair_hours = float(workload.capacity) * workload.week_seconds / HOUR / sum(workload.shares.values())
    demand = asked(workload)
    assert demand.keys() == workload.shares.keys()
    assert all(demand[user] >= share * fair_hours * (1 - 1e-9) for user, share in workload.shares.items())
    assert min(demand[user] / workload.shares[user] for user in demand) < 1.01 * fair_hours  # some were topped up
