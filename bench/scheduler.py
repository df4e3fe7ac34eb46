"""Benchmark: a simulated lab week through ds01's real scheduling code, against the two ways a shared GPU server
is run without a queue that looks ahead.

The machine is the test bed's a100-8gpu shape: six whole GPUs, GPU 6 split 3g+2g+1g+1g, GPU 7 split 4g+2g+1g (8
GPU-equivalents). 40 users in 4 groups of 10, by share and limits:
  course   share 1  MIG slices only, quota 3/7, max_runtime 8 h, interactive
  phd      share 1  quota 2, up to 2 GPUs a container, max_runtime 24 h, half interactive, half batch
  staff    share 2  quota 2, up to 2 GPUs a container, max_runtime 48 h, 30% interactive
  visitor  share 1  quota 1, max_runtime 48 h, 20% interactive
Requests arrive as a Poisson stream, four times as often by day (08-20) as by night, each from a user drawn at
random: interactive ones mostly MIG slices (1g..4g) or one GPU, lognormal durations (median 1 h); batch ones
mostly 1 or 2 whole GPUs, Pareto durations (alpha 1.3, from 1 h); every duration capped by the group's
max_runtime, and a holder's deadline is its start plus that max_runtime. The same arrivals go to each policy:
  refuse-and-retry  today's behaviour: refused when it does not fit, tried again every 10 minutes
  FIFO              one queue in arrival order; the head blocks everyone behind it, whether capacity or its
                    user's own quota holds it back
  ds01              ds01.gpus.scheduler.plan at every arrival and release, with fair share and backfill
Every policy decides with the allocator's choose_slots, on a virtual clock. The request count is kept moderate
(~600 in the week by default): a pass of plan() costs about waiters x moments x choose_slots, so long queues make
the simulation, like the proxy's pass, slow.

Targets for ds01: utilisation at least 98% of the best policy's; p95 wait of MIG requests at most half of FIFO's;
Jain's index of delivered GPU-equivalent-hours per share >= 0.9; no wait longer than max_age plus the longest
max_runtime. That Jain's index also measures how unevenly the users ask (a course student's slices weigh little
beside a staff member's two-GPU jobs), so the header prints what delivering every request at once would score,
and the table adds the index against each user's weighted max-min fair part of the week. Exit status 0 when
every target is met, 3 when one is missed, 1 when the simulation could not run.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from _common import percentile, verdict
from _simulation import HOUR, POLICIES, Outcome, SimulationError, Workload, make_workload, simulate

from ds01.config import SchedulerSettings

EXAMPLE = """example:
  .venv/bin/python bench/scheduler.py                   # seed 1, ~600 requests, well under a minute
  .venv/bin/python bench/scheduler.py --seed 7 --requests 400

Exit status: 0 when every target is met, 3 when one is missed, 1 when the simulation could not run.
"""
UTILISATION_OF_BEST = 0.98
MIG_P95_OF_FIFO = 0.5
JAIN_TARGET = 0.9


@dataclass(frozen=True)
class Metrics:
    utilisation: float  # held GPU-equivalent-seconds within the week / (equivalents x week)
    mig_mean_hours: float
    mig_p95_hours: float
    full_mean_hours: float
    full_p95_hours: float
    longest_hours: float
    jain: float  # of delivered GPU-equivalent-hours in the week per share, over the users who asked for any
    jain_of_fair: float  # of delivered against each one's weighted max-min fair part (fair_parts)
    retries: int
    seconds: float  # the simulation's own run time


def _within(start: float, end: float, week: float) -> float:
    return max(0.0, min(end, week) - min(start, week))


def jain_index(values: list[float]) -> float:
    """(sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one has everything."""
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares > 0 else 1.0


def demand_hours(workload: Workload) -> dict[str, float]:
    """Per user, the GPU-equivalent-hours asked for that the week could hold, had every request started at once."""
    demand: dict[str, float] = defaultdict(float)
    for job in workload.jobs:
        demand[job.user] += float(job.equivalents) * _within(job.arrival, job.arrival + job.duration_seconds,
                                                             workload.week_seconds) / HOUR
    return dict(demand)


def fair_parts(demand: dict[str, float], shares: Mapping[str, float], capacity_hours: float) -> dict[str, float]:
    """Weighted max-min fair parts of the week: min(demand, level x share) each, the level raised until the
    capacity is used up or every demand met. What a perfectly fair scheduler of one pool would deliver."""
    parts, remaining, weight = {}, capacity_hours, sum(shares[user] for user in demand)
    for user in sorted(demand, key=lambda u: demand[u] / shares[u]):
        parts[user] = min(demand[user], remaining / weight * shares[user])
        remaining, weight = remaining - parts[user], weight - shares[user]
    return parts


def measure(outcome: Outcome, workload: Workload, seconds: float) -> Metrics:
    week = workload.week_seconds
    held = sum(float(r.equivalents) * _within(r.start, r.end, week) for r in outcome.runs)
    waits: dict[bool, list[float]] = {True: [], False: []}
    delivered: dict[str, float] = defaultdict(float)
    for run in outcome.runs:
        waits[run.job.is_mig].append((run.start - run.job.arrival) / HOUR)
        delivered[run.job.user] += float(run.equivalents) * _within(run.start, run.end, week) / HOUR
    asking = sorted({job.user for job in workload.jobs})
    fair = fair_parts(demand_hours(workload), workload.shares, float(workload.capacity) * week / HOUR)
    return Metrics(
        utilisation=held / (float(workload.capacity) * week),
        mig_mean_hours=statistics.fmean(waits[True]) if waits[True] else 0.0,
        mig_p95_hours=percentile(waits[True], 0.95) if waits[True] else 0.0,
        full_mean_hours=statistics.fmean(waits[False]) if waits[False] else 0.0,
        full_p95_hours=percentile(waits[False], 0.95) if waits[False] else 0.0,
        longest_hours=max((w for group in waits.values() for w in group), default=0.0),
        jain=jain_index([delivered[user] / workload.shares[user] for user in asking]),
        jain_of_fair=jain_index([delivered[user] / fair[user] for user in asking]),
        retries=outcome.retries, seconds=seconds)


Row = tuple[str, Callable[[Metrics], float], str]  # label, value, format
COMPARED_ROWS: tuple[Row, ...] = (
    ("GPU-equivalent utilisation", lambda m: m.utilisation, "{:.1%}"),
    ("wait, MIG requests: mean (h)", lambda m: m.mig_mean_hours, "{:.2f}"),
    ("wait, MIG requests: p95 (h)", lambda m: m.mig_p95_hours, "{:.2f}"),
    ("wait, full-GPU requests: mean (h)", lambda m: m.full_mean_hours, "{:.2f}"),
    ("wait, full-GPU requests: p95 (h)", lambda m: m.full_p95_hours, "{:.2f}"),
    ("longest wait (h)", lambda m: m.longest_hours, "{:.2f}"),
    ("Jain's index, GPU-eq-hours per share", lambda m: m.jain, "{:.3f}"),
    ("Jain's index, against max-min fair parts", lambda m: m.jain_of_fair, "{:.3f}"),
)
ROWS: tuple[Row, ...] = (
    *COMPARED_ROWS,
    ("retries", lambda m: float(m.retries), "{:.0f}"),
    ("simulation run time (s)", lambda m: m.seconds, "{:.1f}"),
)


def print_table(results: dict[str, Metrics]) -> None:
    names = list(results)
    print(f"{'':<40}" + "".join(f"{name:>18}" for name in names))
    print("-" * (40 + 18 * len(names)))
    for label, value, shape in ROWS:
        print(f"{label:<40}" + "".join(f"{shape.format(value(results[n])):>18}" for n in names))


def print_ratios(results: dict[str, Metrics]) -> None:
    """ds01's value of each row over each other policy's (below 1 is less: better for waits, worse for the rest)."""
    others = [name for name in results if name != "ds01"]
    print(f"{'ratio':<40}" + "".join(f"{'ds01/' + name:>22}" for name in others))
    print("-" * (40 + 22 * len(others)))
    for label, value, _ in COMPARED_ROWS:
        ours = value(results["ds01"])
        cells = (f"{ours / value(results[name]):.2f}x" if value(results[name]) else "-" for name in others)
        print(f"{label:<40}" + "".join(f"{cell:>22}" for cell in cells))


def check_targets(results: dict[str, Metrics], workload: Workload) -> bool:
    ours, fifo = results["ds01"], results["FIFO"]
    best = max(m.utilisation for m in results.values())
    longest_runtime = max(job.max_runtime_seconds for job in workload.jobs)
    bound_hours = (SchedulerSettings().max_age_seconds + longest_runtime) / HOUR
    checks = (
        (f"utilisation >= {UTILISATION_OF_BEST:.0%} of the best ({best:.1%})",
         ours.utilisation >= UTILISATION_OF_BEST * best),
        (f"p95 wait of MIG requests <= {MIG_P95_OF_FIFO:g}x FIFO's ({ours.mig_p95_hours:.2f} h against "
         f"{fifo.mig_p95_hours:.2f} h)", ours.mig_p95_hours <= MIG_P95_OF_FIFO * fifo.mig_p95_hours),
        (f"Jain's index >= {JAIN_TARGET:g} ({ours.jain:.3f})", ours.jain >= JAIN_TARGET),
        (f"longest wait <= max_age + the longest max_runtime ({ours.longest_hours:.1f} h against "
         f"{bound_hours:.0f} h)", ours.longest_hours <= bound_hours),
    )
    print("targets for ds01:")
    for label, ok in checks:
        print(f"  {verdict(ok):<7} {label}")
    return all(ok for _, ok in checks)


def describe(workload: Workload) -> str:
    jobs = workload.jobs
    mig = sum(1 for job in jobs if job.is_mig)
    interactive = sum(1 for job in jobs if job.kind == "interactive")
    offered = sum(float(job.equivalents) * job.duration_seconds for job in jobs)
    demand = demand_hours(workload)
    ceiling = jain_index([demand[user] / workload.shares[user] for user in sorted(demand)])
    return (f"{len(jobs)} requests from {len(demand)} users ({interactive} interactive, {len(jobs) - interactive} "
            f"batch; {mig} MIG, {len(jobs) - mig} full-GPU), offered load "
            f"{offered / (float(workload.capacity) * workload.week_seconds):.0%} of {workload.capacity} "
            f"GPU-equivalents for a week.\nJain's index of the demand itself per share (delivering every request "
            f"at once would score this): {ceiling:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/scheduler.py", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate a lab week under refuse-and-retry, FIFO and ds01's scheduler, side by side.")
    parser.add_argument("--seed", type=int, default=1, help="the workload's random seed (default 1)")
    parser.add_argument("--requests", type=int, default=600, help="requests expected in the week (default 600)")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # so `| head` ends quietly

    try:
        workload = make_workload(args.seed, args.requests)
        print(f"scheduler benchmark, seed {args.seed}: {describe(workload)}", flush=True)
        results = {}
        for policy_type in POLICIES:
            policy = policy_type(workload)
            began = time.perf_counter()
            outcome = simulate(policy, workload)
            results[policy.name] = measure(outcome, workload, time.perf_counter() - began)
    except (SimulationError, ValueError) as exc:
        print(f"bench/scheduler.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    print()
    print_ratios(results)
    print()
    return 0 if check_targets(results, workload) else 3


if __name__ == "__main__":
    sys.exit(main())
