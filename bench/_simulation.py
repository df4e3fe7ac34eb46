"""A lab week of GPU requests on a virtual clock, and three ways to admit them: the workload, the policies and the
event loop that bench/scheduler.py reports on, kept free of printing so tests can drive them on tiny workloads.

The machine has the test bed's a100-8gpu shape (tests/fakes/topologies/a100-8gpu.json): six whole GPUs, GPU 6
split 3g+2g+1g+1g and GPU 7 split 4g+2g+1g, 8 GPU-equivalents in all. Every policy decides with the allocator's
own `choose_slots`, so the same quotas and profiles bind them all; only when they decide differs.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

from ds01.config import BUILTIN_DEFAULTS, AllocationSettings, LimitValues, SchedulerSettings
from ds01.errors import Denied
from ds01.gpus.placement import GpuRequest, Holding, Slot, choose_slots
from ds01.gpus.scheduler import Occupant, Waiter, never_grantable, plan, priority_of, queue_order
from ds01.gpus.usage import Held, decayed_hours, fairshare_factors

HOUR = 3600.0
WEEK_SECONDS = 7 * 24 * HOUR
RETRY_SECONDS = 600.0  # how often a refused user tries again
DAY_HOURS = range(8, 20)  # the busy part of each day
NIGHT_RATE_RATIO = 0.25  # arrivals by night, against by day
ALLOCATION = AllocationSettings()  # spread, MIG slices only for those who may not have whole GPUs

Kind = Literal["interactive", "batch"]


def whole(index: int) -> Slot:
    uuid = f"GPU-{index}"
    return Slot(uuid, uuid, index, None, Fraction(1), 0, 0)


def mig(index: int, position: int, profile: str) -> Slot:
    return Slot(f"MIG-{index}-{position}", f"GPU-{index}", index, profile, Fraction(int(profile[0]), 7), 0, 0)


A100_8GPU = (*(whole(i) for i in range(6)),
             mig(6, 0, "3g.40gb"), mig(6, 1, "2g.20gb"), mig(6, 2, "1g.10gb"), mig(6, 3, "1g.10gb"),
             mig(7, 0, "4g.40gb"), mig(7, 1, "2g.20gb"), mig(7, 2, "1g.10gb"))


@dataclass(frozen=True)
class Group:
    name: str
    share: float
    limits: LimitValues
    interactive_fraction: float  # of its members' requests; the rest are batch


def _limits(quota: Fraction, per_container: int, runtime_hours: int, full_gpus: bool = True) -> LimitValues:
    return BUILTIN_DEFAULTS.with_overrides({"gpu_quota": quota, "max_gpus_per_container": per_container,
                                            "allow_full_gpu": full_gpus, "max_runtime_seconds": runtime_hours * 3600})


# A course student's share is half a researcher's: the slices a student may have (3g, 2g and 1g: 10/7 of a GPU)
# could not hold ten shares of 1/50 of the 8 GPUs each (1.6 GPUs), so with share 1 no scheduler could be fair.
GROUPS = (
    Group("course", 0.5, _limits(Fraction(3, 7), 1, 8, full_gpus=False), 1.0),  # students: MIG slices, by day
    Group("phd", 1.0, _limits(Fraction(2), 2, 24), 0.5),
    Group("staff", 2.0, _limits(Fraction(2), 2, 48), 0.3),
    Group("visitor", 1.0, _limits(Fraction(1), 1, 48), 0.2),
)
USERS_PER_GROUP = 10
# MIG profile weights by kind; a profile beyond the user's quota is never asked for.
PROFILE_WEIGHTS: Mapping[Kind, Mapping[str, float]] = {
    "interactive": {"1g.10gb": 0.5, "2g.20gb": 0.3, "3g.40gb": 0.1, "4g.40gb": 0.1},
    "batch": {"1g.10gb": 0.2, "2g.20gb": 0.4, "3g.40gb": 0.2, "4g.40gb": 0.2},
}
MIG_FRACTION: Mapping[Kind, float] = {"interactive": 0.7, "batch": 0.25}  # of those who may have whole GPUs
TWO_GPU_FRACTION = 0.3  # of whole-GPU requests, where the limits allow two
MIN_SECONDS = 60.0  # the shortest request


@dataclass(frozen=True)
class Job:
    """One request: who, what, when it arrives and how long it holds once started."""

    id: str
    user: str
    group: Group
    kind: Kind
    request: GpuRequest
    arrival: float
    duration_seconds: float  # at most the group's max_runtime

    @property
    def is_mig(self) -> bool:
        return self.request.mig_profile is not None

    @property
    def equivalents(self) -> Fraction:
        """What it asks for: its slice's sevenths of a GPU, or its count of whole GPUs."""
        profile = self.request.mig_profile
        return Fraction(self.request.count) if profile is None else Fraction(int(profile[0]), 7)

    @property
    def max_runtime_seconds(self) -> float:
        return _runtime(self.group)

    @property
    def deadline_seconds(self) -> float:
        """How long it may hold its slots, as ds01 knows it: a batch job's --time (its length rounded up to whole
        hours, plus an hour to spare, as users give one), an interactive session's max_runtime."""
        if self.kind == "interactive":
            return self.max_runtime_seconds
        return min(self.max_runtime_seconds, (math.ceil(self.duration_seconds / HOUR) + 1) * HOUR)


@dataclass(frozen=True)
class Workload:
    jobs: tuple[Job, ...]  # in arrival order
    slots: tuple[Slot, ...]
    shares: Mapping[str, float]  # every user's, by their group
    week_seconds: float

    @property
    def capacity(self) -> Fraction:
        return sum((slot.equivalents for slot in self.slots), Fraction(0))

    def equivalents(self, slots: Sequence[str]) -> Fraction:
        by_uuid = {slot.uuid: slot.equivalents for slot in self.slots}
        return sum((by_uuid[uuid] for uuid in slots), Fraction(0))


def _arrival_rate(moment: float, day_rate: float) -> float:
    return day_rate if int(moment // HOUR) % 24 in DAY_HOURS else day_rate * NIGHT_RATE_RATIO


def _runtime(group: Group) -> float:
    return math.inf if group.limits.max_runtime_seconds is None else float(group.limits.max_runtime_seconds)


def _request(rng: random.Random, group: Group, kind: Kind) -> GpuRequest:
    limits = group.limits
    if not limits.allow_full_gpu or rng.random() < MIG_FRACTION[kind]:
        profiles = {p: w for p, w in PROFILE_WEIGHTS[kind].items() if Fraction(int(p[0]), 7) <= limits.gpu_quota}
        return GpuRequest(mig_profile=rng.choices(list(profiles), weights=list(profiles.values()))[0])
    two = limits.max_gpus_per_container >= 2 and limits.gpu_quota >= 2 and rng.random() < TWO_GPU_FRACTION
    return GpuRequest(count=2 if two else 1)


def _duration(rng: random.Random, group: Group, kind: Kind, stretch: float) -> float:
    """Interactive sessions: lognormal, median `stretch` hours. Batch jobs: Pareto (alpha 1.3) from `stretch`
    hours, a heavy tail. At least a minute, at most the group's max_runtime."""
    drawn = rng.lognormvariate(math.log(HOUR), 1.0) if kind == "interactive" else HOUR * rng.paretovariate(1.3)
    return min(max(MIN_SECONDS, stretch * drawn), _runtime(group))


def make_workload(seed: int, load: float, *, fair_floor: bool = False, stretch: float = 1.0,
                  week_seconds: float = WEEK_SECONDS, slots: Sequence[Slot] = A100_8GPU) -> Workload:
    """Requests from 40 users in 4 groups that ask for `load` times the slots' GPU-equivalent-hours within the
    week, drawn one by one until they do: each one's user uniformly (the mix as users ask today: a course
    student's slices weigh little beside a two-GPU job), its moment by day (08-20) four times as likely as by night
    (a Poisson stream, given its count), its kind, size and duration (times `stretch`) from the user's group; the
    last cut short to what is left. fair_floor (a load of at least 1): every user asks for at least their fair
    share of the week, their share over all the shares of the capacity. The draws stop early enough that those
    short of it then draw requests of their own until they reach it, the last cut short; the load is unchanged."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    users = [(f"{group.name}{index:02d}", group) for group in GROUPS for index in range(USERS_PER_GROUP)]
    hours = range(math.ceil(week_seconds / HOUR))
    likely = [min(HOUR, week_seconds - hour * HOUR) * _arrival_rate(hour * HOUR, 1.0) for hour in hours]
    capacity_hours = float(sum((slot.equivalents for slot in slots), Fraction(0))) * week_seconds / HOUR
    shares = sum(group.share for _, group in users) if fair_floor else math.inf
    fair = {user: group.share / shares * capacity_hours for user, group in users}
    asked = dict.fromkeys(fair, 0.0)  # GPU-equivalent-hours within the week, by user
    drawn: list[Job] = []

    def draw(user: str, group: Group, left: float) -> None:  # one request, asking for at most `left` in the week
        hour = rng.choices(hours, weights=likely)[0]
        moment = HOUR * hour + rng.random() * min(HOUR, week_seconds - HOUR * hour)
        kind: Kind = "interactive" if rng.random() < group.interactive_fraction else "batch"
        job = Job("", user, group, kind, _request(rng, group, kind), moment, _duration(rng, group, kind, stretch))
        within = float(job.equivalents) * min(job.duration_seconds, week_seconds - moment) / HOUR
        if within > left:
            job = dataclasses.replace(job, duration_seconds=max(MIN_SECONDS, left * HOUR / float(job.equivalents)))
        asked[user] += min(within, left)
        drawn.append(job)

    def short(user: str) -> float:
        return max(0.0, fair[user] - asked[user])

    while (need := load * capacity_hours - sum(asked.values()) - sum(map(short, fair))) > 1e-9:
        user, group = rng.choice(users)
        draw(user, group, need + short(user))  # what a user short of their floor asks for counts towards it
    for user, group in users:
        while short(user) > 1e-9:
            draw(user, group, short(user))
    drawn.sort(key=lambda job: (job.arrival, job.user))
    jobs = tuple(dataclasses.replace(job, id=f"r{index:04d}") for index, job in enumerate(drawn))
    for job in jobs:
        if (denied := never_grantable(_waiter(job, 1.0), ALLOCATION, slots)) is not None:
            raise ValueError(f"the workload asked for what no free machine could give: {job} ({denied.message})")
    return Workload(jobs, tuple(slots), {user: group.share for user, group in users}, week_seconds)


# ---------------------------------------------------------------------------------------------------------------
# the policies


@dataclass(frozen=True)
class Running:
    job: Job
    slots: tuple[str, ...]
    equivalents: Fraction
    start: float

    @property
    def end(self) -> float:
        return self.start + self.job.duration_seconds

    @property
    def holding(self) -> Holding:
        return Holding(self.job.id, self.job.user, self.slots, self.equivalents, None)


Admission = tuple[Job, tuple[str, ...]]


class Policy(Protocol):
    name: str
    retries: int

    def admit(self, now: float, waiting: Sequence[Job], running: Sequence[Running],
              finished: Sequence[Running]) -> list[Admission]:
        """The waiting jobs (in arrival order) to start now, and on which slots."""

    def next_wakeup(self) -> float:
        """When it wants to decide again with no arrival or release (inf: never)."""


def _fit(job: Job, holdings: Sequence[Holding], slots: Sequence[Slot]) -> tuple[str, ...] | None:
    """The slots the allocator would give `job` now, or None when it is refused."""
    try:
        chosen = choose_slots(job.user, job.group.limits, ALLOCATION, job.request, slots=slots, holdings=holdings)
    except Denied:
        return None
    return tuple(slot.uuid for slot in chosen)


class RefuseAndRetry:
    """Today's behaviour: a request that does not fit is refused, and its user tries again every RETRY_SECONDS."""

    name = "refuse-and-retry"

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.retries = 0
        self._next_try: dict[str, float] = {}
        self._refused: dict[tuple[str, GpuRequest], tuple[int, int]] = {}  # when each was last refused
        self._wakeups: list[float] = []

    def admit(self, now: float, waiting: Sequence[Job], running: Sequence[Running],
              finished: Sequence[Running]) -> list[Admission]:
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        holdings = [r.holding for r in running]
        admitted: list[Admission] = []
        for job in waiting:
            if self._next_try.get(job.id, job.arrival) > now:
                continue
            if job.id in self._next_try:
                self.retries += 1
            state = (len(finished), len(running) + len(admitted))  # the same: the same holdings, the same answer
            refused = self._refused.get((job.user, job.request)) == state
            chosen = None if refused else _fit(job, holdings, self.workload.slots)
            if chosen is None:
                self._refused[(job.user, job.request)] = state
                self._next_try[job.id] = now + RETRY_SECONDS
                heapq.heappush(self._wakeups, now + RETRY_SECONDS)
                continue
            admitted.append((job, chosen))
            holdings.append(Running(job, chosen, self.workload.equivalents(chosen), now).holding)
        return admitted

    def next_wakeup(self) -> float:
        return self._wakeups[0] if self._wakeups else math.inf


class Fifo:
    """One queue in arrival order: the head starts as soon as it fits, and nobody passes it."""

    name = "FIFO"

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.retries = 0

    def admit(self, now: float, waiting: Sequence[Job], running: Sequence[Running],
              finished: Sequence[Running]) -> list[Admission]:
        holdings = [r.holding for r in running]
        admitted = []
        for job in waiting:
            chosen = _fit(job, holdings, self.workload.slots)
            if chosen is None:
                break
            admitted.append((job, chosen))
            holdings.append(Running(job, chosen, self.workload.equivalents(chosen), now).holding)
        return admitted

    def next_wakeup(self) -> float:
        return math.inf


def _waiter(job: Job, share: float) -> Waiter:
    return Waiter(job.id, job.user, None, job.group.limits, job.request, job.arrival, job.deadline_seconds,
                  share, 0.0)


class Ds01:
    """ds01's queue pass, `scheduler.plan`, run at every arrival and release, as the proxy's queue runs it: usage
    decayed with SchedulerSettings' half-life from what finished and what is held, fair share over the users the
    pass knows (its waiters, its holders and those who used GPUs lately, each by their group), deadlines from the
    holders' max_runtime. Every placement granted now starts. A pass costs about waiters^2 x choose_slots, so with
    `shortcut` (the same grants, the unit test compares) none is run when no waiter fits beside the holders alone,
    and plan is given only the waiters up to the last that does in its order: a place depends on those ahead."""

    name = "ds01"

    def __init__(self, workload: Workload, settings: SchedulerSettings | None = None, shortcut: bool = True) -> None:
        self.workload = workload
        self.settings = settings or SchedulerSettings()
        self.shortcut = shortcut
        self.retries = 0
        self.passes = 0

    def admit(self, now: float, waiting: Sequence[Job], running: Sequence[Running],
              finished: Sequence[Running]) -> list[Admission]:
        holdings = [r.holding for r in running]
        fits = {key: _fit(job, holdings, self.workload.slots) is not None
                for key, job in {(job.user, job.request): job for job in waiting}.items()}
        if not any(fits.values()) and (self.shortcut or not waiting):
            return []  # nobody waits, or nobody fits even beside the holders alone: a pass could grant nothing
        self.passes += 1
        stretches = [Held(r.job.user, float(r.equivalents), r.start, r.end) for r in finished]
        stretches += [Held(r.job.user, float(r.equivalents), r.start, now) for r in running]
        used = decayed_hours(stretches, now, self.settings.usage_half_life_seconds)
        known = {job.user for job in waiting} | {r.job.user for r in running} | used.keys()
        shares = {user: self.workload.shares[user] for user in known}
        factors = fairshare_factors(used, shares)
        occupants = [Occupant(r.holding, r.start + r.job.deadline_seconds) for r in running]
        waiters = [_waiter(job, shares[job.user]) for job in waiting]
        if self.shortcut:
            order = {w.id: queue_order(w, priority_of(w, factors.get(w.user, 1.0), self.settings, now),
                                       self.settings, now) for w in waiters}
            waiters.sort(key=lambda w: order[w.id])  # plan's own order
            waiters = waiters[:1 + max(i for i, w in enumerate(waiters) if fits[(w.user, w.request)])]
        placements = plan(waiters, occupants, slots=self.workload.slots, fairshare=factors, allocation=ALLOCATION,
                          settings=self.settings, now=now)
        by_id = {job.id: job for job in waiting}
        return [(by_id[p.waiter.id], p.slots) for p in placements if p.granted]

    def next_wakeup(self) -> float:
        return math.inf


POLICIES: tuple[Callable[[Workload], Policy], ...] = (RefuseAndRetry, Fifo, Ds01)


# ---------------------------------------------------------------------------------------------------------------
# the event loop


class SimulationError(Exception):
    """The simulation cannot go on: a slot given twice, or requests left waiting with nothing to free them."""


@dataclass(frozen=True)
class Outcome:
    policy: str
    runs: tuple[Running, ...]  # one per job, in start order
    retries: int


def simulate(policy: Policy, workload: Workload) -> Outcome:
    """Arrivals, releases and the policy's wake-ups in time order; at each moment releases go first, then arrivals
    join, then the policy decides once. Runs until every job has started and finished."""
    arrivals = deque(workload.jobs)
    releases: list[tuple[float, str, Running]] = []
    waiting: list[Job] = []
    running: dict[str, Running] = {}
    finished: list[Running] = []
    runs: list[Running] = []
    while arrivals or waiting or running:
        now = min(arrivals[0].arrival if arrivals else math.inf, releases[0][0] if releases else math.inf,
                  policy.next_wakeup())
        if now == math.inf:
            raise SimulationError(f"{policy.name}: {len(waiting)} requests wait and nothing will free a slot")
        while releases and releases[0][0] <= now:
            _, _, done = heapq.heappop(releases)
            finished.append(running.pop(done.job.id))
        while arrivals and arrivals[0].arrival <= now:
            waiting.append(arrivals.popleft())
        admitted = policy.admit(now, waiting, list(running.values()), finished)
        held = {uuid for r in running.values() for uuid in r.slots}
        for job, slots in admitted:
            if held & set(slots) or len(set(slots)) != len(slots):
                raise SimulationError(f"{policy.name} gave {', '.join(slots)} to {job.id} while they were held")
            held |= set(slots)
            run = Running(job, slots, workload.equivalents(slots), now)
            running[job.id] = run
            runs.append(run)
            heapq.heappush(releases, (run.end, job.id, run))
        started = {job.id for job, _ in admitted}
        waiting = [job for job in waiting if job.id not in started]
    return Outcome(policy.name, tuple(runs), policy.retries)
