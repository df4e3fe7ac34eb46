"""Benchmark: simulated lab weeks through ds01's real scheduling code, against the two ways a shared GPU server
is run without a queue that looks ahead.

The machine is the test bed's a100-8gpu shape: six whole GPUs, GPU 6 split 3g+2g+1g+1g, GPU 7 split 4g+2g+1g (8
GPU-equivalents). 40 users in 4 groups of 10, by share and limits:
  course   share ½  MIG slices only, quota 3/7, max_runtime 8 h, interactive (the slices a student may have,
                    10/7 of a GPU, could not hold ten whole shares of 1/50 of the machine)
  phd      share 1  quota 2, up to 2 GPUs a container, max_runtime 24 h, half interactive, half batch
  staff    share 2  quota 2, up to 2 GPUs a container, max_runtime 48 h, 30% interactive
  visitor  share 1  quota 1, max_runtime 48 h, 20% interactive
Requests are drawn until they ask for the week's offered load (a fraction of the capacity's GPU-equivalent-hours
within the week): each from a user drawn at random, at a moment four times as likely by day (08-20) as by night;
interactive ones mostly MIG slices (1g..4g) or one GPU, lognormal durations (median 1 h); batch ones mostly 1 or
2 whole GPUs, Pareto durations (alpha 1.3, from 1 h); every duration capped by the group's max_runtime. A batch
job is a `container run` with --time its length rounded up to whole hours plus one (at most max_runtime), and
that is its deadline for ds01's estimates and backfill; an interactive session's deadline is its start plus
max_runtime. The same requests go to each policy:
  refuse-and-retry  today's behaviour: refused when it does not fit, tried again every 10 minutes
  FIFO              one queue in arrival order; the head blocks everyone behind it, whether capacity or its
                    user's own quota holds it back
  ds01              ds01.gpus.scheduler.plan at every arrival and release, with fair share and backfill (and
                    a request that has waited max_age ahead of all that have not)
Every policy decides with the allocator's choose_slots, on a virtual clock.

Two weeks, side by side, from the same seed:
  light      --light-load (0.8): the mix as users ask today. Nearly everyone gets all they ask for within the
             week, so what each user is delivered is what they asked for: it measures the demand, not the scheduler (a
             course student's slices weigh little beside a staff member's two-GPU jobs, so Jain's index per
             share stays near what delivering every request at once would score).
  contended  --load (1.3): the same mix, but every user asks for at least their fair share of the week (their
             share over all the shares, of the capacity): the draws stop early enough that those short of it
             then draw requests of their own until they reach it, so the load is unchanged. Only here does a
             fair share bind, and a perfectly fair scheduler would deliver in proportion to the shares.
             Requests last --stretch (6) times as long (a day's session on a slice, training runs of 6 h to two
             days; still capped by max_runtime), so the week needs fewer of them. A pass of plan() costs about
             waiters^2 x choose_slots and the queue grows all week, so the simulation's time grows about as the
             fourth power of the request count: on two slow cores ds01's half takes about 40 s at --stretch 6
             (315 requests); by that rule today's lengths (over a thousand requests) would take over an hour.
The targets are evaluated on the contended week: utilisation at least 98% of the best policy's; p95 wait of MIG
requests at most half of FIFO's; Jain's index of delivered GPU-equivalent-hours per share >= 0.9; no wait longer
than max_age plus the longest max_runtime. Each week's header prints what delivering every request at once would
score on that index, and the table adds the index against each user's weighted max-min fair part of the week (in
the contended week the same as per share: everyone asks for at least their part). Exit status 0 when every
target is met, 3 when one is missed, 1 when the simulation could not run.
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

import docker
from _common import percentile, run_against_engine, running_proxy, verdict
from _queue_live import LiveQueue
from _simulation import HOUR, POLICIES, Outcome, SimulationError, Workload, make_workload, simulate

from ds01.config import SchedulerSettings

EXAMPLE = """example:
  .venv/bin/python bench/scheduler.py                   # seed 1, weeks at 80% and 130%, about 2 minutes
  .venv/bin/python bench/scheduler.py --seed 7 --load 1.5 --stretch 8
  eval "$(scripts/testbed env)"; .venv/bin/python bench/scheduler.py --live   # as root: the test bed's half too

Exit status: 0 when every target is met, 3 when one is missed, 1 when the simulation could not run.
"""
LIGHT_LOAD, CONTENDED_LOAD, STRETCH = 0.8, 1.3, 6.0
UTILISATION_OF_BEST = 0.98
MIG_P95_OF_FIFO = 0.5
JAIN_TARGET = 0.9
LIVE_TARGET_SECONDS = 2.0


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
    print("targets for ds01, on the contended week (in the light week each user is delivered about what they asked "
          "for,\nso it measures the demand, not the scheduler):")
    for label, ok in checks:
        print(f"  {verdict(ok):<7} {label}")
    return all(ok for _, ok in checks)


@dataclass(frozen=True)
class Week:
    name: str
    load: float
    fair_floor: bool  # every user asks for at least their fair share
    stretch: float  # of the requests' lengths


def describe(week: Week, workload: Workload) -> str:
    jobs, capacity_hours = workload.jobs, float(workload.capacity) * workload.week_seconds / HOUR
    mig = sum(1 for job in jobs if job.is_mig)
    interactive = sum(1 for job in jobs if job.kind == "interactive")
    offered = sum(float(job.equivalents) * job.duration_seconds for job in jobs) / HOUR
    demand = demand_hours(workload)

    def pool(mig: bool) -> str:  # what is asked for of the MIG slices, or the whole GPUs, against what they hold
        asked = sum(float(job.equivalents) * _within(job.arrival, job.arrival + job.duration_seconds,
                                                     workload.week_seconds) for job in jobs if job.is_mig == mig)
        held = sum(float(slot.equivalents) for slot in workload.slots if slot.is_mig == mig) * workload.week_seconds
        return f"{asked / HOUR / (held / HOUR):.0%}"

    total_share = sum(workload.shares.values())
    least = min(demand.get(user, 0.0) / (share / total_share * capacity_hours)
                for user, share in workload.shares.items())
    ceiling = jain_index([demand[user] / workload.shares[user] for user in sorted(demand)])
    lengths = "as drawn" if week.stretch == 1 else f"{week.stretch:g}x as long as drawn"
    return (f"{week.name} week: {len(jobs)} requests from {len(demand)} users ({interactive} interactive, "
            f"{len(jobs) - interactive} batch; {mig} MIG, {len(jobs) - mig} full-GPU; lengths {lengths}), "
            f"offered load {sum(demand.values()) / capacity_hours:.0%} of {workload.capacity} GPU-equivalents over "
            f"the week ({offered / capacity_hours:.0%} counting what runs past its end; MIG slices {pool(True)} of "
            f"theirs, whole GPUs {pool(False)}).\n"
            f"Every user asks for at least {least:.2f}x their fair share of the week. Jain's index of the demand "
            f"itself per share (delivering every request at once would score this): {ceiling:.3f}")


def run_week(week: Week, seed: int) -> tuple[Workload, dict[str, Metrics]]:
    workload = make_workload(seed, week.load, fair_floor=week.fair_floor, stretch=week.stretch)
    print(describe(week, workload), flush=True)
    results = {}
    for policy_type in POLICIES:
        policy = policy_type(workload)
        began = time.perf_counter()
        outcome = simulate(policy, workload)
        results[policy.name] = measure(outcome, workload, time.perf_counter() - began)
    print()
    print_table(results)
    print()
    print_ratios(results)
    print()
    return workload, results


def live(rounds: int, upstream: str, client: docker.DockerClient) -> int:
    """On the test bed, through a private proxy: the time from a release to alice's waiting container running,
    queued in ds01 and retried every 10 s as today, rounds interleaved; exit 3 when the median misses the target."""
    labels = {"ds01": "ds01 queue (ds01.request.wait)", "retry": "refused, retried every 10 s"}
    samples: dict[str, list[float]] = {name: [] for name in labels}
    with running_proxy(upstream, keep=False) as proxy:
        queue = LiveQueue(proxy, client)
        try:
            for round_number in range(1, rounds + 1):
                for times, measure in zip(samples.values(), (queue.queued, queue.retried), strict=True):
                    times.append(measure())
                    queue.sweep()
                print(f"  round {round_number}/{rounds}: " + ", ".join(
                    f"{name} {times[-1]:.2f} s" for name, times in samples.items()), flush=True)
        finally:
            queue.sweep()
    print(f"\nlive on the test bed, release to the waiting container running, {rounds} rounds:")
    print(f"{'':<36}{'median (s)':>12}{'p90 (s)':>10}{'max (s)':>10}")
    for name, times in samples.items():
        print(f"{labels[name]:<36}{statistics.median(times):>12.2f}{percentile(times, 0.9):>10.2f}{max(times):>10.2f}")
    ours, today = (statistics.median(times) for times in samples.values())
    print(f"ratio ds01/retry (medians): {ours / today:.2f}x")
    ok = ours <= LIVE_TARGET_SECONDS
    print(f"  {verdict(ok):<7} median <= {LIVE_TARGET_SECONDS:g} s ({ours:.2f} s)")
    return 0 if ok else 3


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/scheduler.py", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate a light and a contended lab week under refuse-and-retry, FIFO and ds01's scheduler.")
    parser.add_argument("--seed", type=int, default=1, help="the workloads' random seed (default 1)")
    parser.add_argument("--load", type=float, default=CONTENDED_LOAD,
                        help=f"the contended week's offered load, a fraction of the capacity over the week, at "
                             f"least 1 (default {CONTENDED_LOAD:g}); the targets are evaluated on it")
    parser.add_argument("--light-load", type=float, default=LIGHT_LOAD,
                        help=f"the light week's offered load (default {LIGHT_LOAD:g})")
    parser.add_argument("--stretch", type=float, default=STRETCH,
                        help=f"how many times as long the contended week's requests last (default {STRETCH:g}): "
                             "fewer requests for its load, so a shorter simulation")
    parser.add_argument("--live", action="store_true",
                        help="also time, on the test bed as root, a release to the waiting container running, "
                             "against refuse-and-retry every 10 s")
    parser.add_argument("--live-rounds", type=int, default=10, help="rounds of the live half (default 10)")
    args = parser.parse_args()
    if args.live_rounds < 1:
        parser.error("--live-rounds must be at least 1")
    if args.load < 1:
        parser.error("--load must be at least 1: below it, not every user can ask for their fair share")
    if args.light_load <= 0 or args.stretch <= 0:
        parser.error("--light-load and --stretch must be positive")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # so `| head` ends quietly

    print(f"scheduler benchmark, seed {args.seed}\n", flush=True)
    try:
        run_week(Week("light", args.light_load, False, 1.0), args.seed)
        workload, results = run_week(Week("contended", args.load, True, args.stretch), args.seed)
    except (SimulationError, ValueError) as exc:
        print(f"bench/scheduler.py: {exc}", file=sys.stderr)
        return 1
    simulated = 0 if check_targets(results, workload) else 3
    if not args.live:
        return simulated
    print(flush=True)
    measured = run_against_engine("bench/scheduler.py", lambda upstream, client: live(args.live_rounds, upstream,
                                                                                        client))
    return measured if measured == 1 else max(simulated, measured)


if __name__ == "__main__":
    sys.exit(main())
