"""ds01.gpus.scheduler: the queue's pass as a pure function, on the test bed's slot shape, with Hypothesis: no slot
given twice at once, no reservation taken by someone behind it who would delay it, and a full-GPU request behind
an endless stream of MIG requests starting no later than its first estimate."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from ds01.config import AllocationSettings, SchedulerSettings
from ds01.gpus.placement import GpuRequest, Holding
from ds01.gpus.scheduler import FOREVER, Occupant, Placement, Waiter, never_grantable, plan
from ds01.gpus.usage import Held, decayed_hours, fairshare_factors
from ds01.reasons import Reason
from tests.unit.test_placement import ALL_SLOTS, MIG6, MIG7, WHOLES, limits

ALLOCATION = AllocationSettings(mig_preference="restricted")
SCHEDULER = SchedulerSettings()
FULL = limits(allow_full_gpu=True, gpu_quota=Fraction(8), max_gpus_per_container=8)
MIG_USER = limits(allow_full_gpu=False, gpu_quota=Fraction(8), max_gpus_per_container=4)
HOUR = 3600.0
NOW = 1_000_000.0


def waiter(name: str, request: GpuRequest, *, user: str | None = None, joined: float = NOW, runtime: float = HOUR,
           lim: object = FULL, priority: float = 0.0, share: float = 1.0) -> Waiter:
    return Waiter(name, user or name, None, lim, request, joined, runtime, share, priority)  # type: ignore[arg-type]


def occupant(user: str, slots: list[str], free_by: float, allocation: str = "") -> Occupant:
    equivalents = sum((s.equivalents for s in ALL_SLOTS if s.uuid in slots), Fraction(0))
    return Occupant(Holding(allocation or f"a-{user}-{slots[0]}", user, tuple(slots), equivalents, None), free_by)


def everything_held(free_by: float = NOW + HOUR) -> list[Occupant]:
    return [occupant("holder", [slot.uuid], free_by + index) for index, slot in enumerate(ALL_SLOTS)]


def run(waiters: list[Waiter], occupants: list[Occupant], fairshare: dict[str, float] | None = None,
        now: float = NOW) -> list[Placement]:
    return plan(waiters, occupants, slots=ALL_SLOTS, fairshare=fairshare or {}, allocation=ALLOCATION,
                settings=SCHEDULER, now=now)


def test_a_request_that_fits_is_granted_now() -> None:
    [placed] = run([waiter("alice", GpuRequest(count=1))], [])
    assert placed.granted and placed.start == NOW and len(placed.slots) == 1 and placed.waits_for == ""


def test_a_waiter_gets_the_slots_that_free_soonest_and_an_upper_bound_on_its_start() -> None:
    occupants = everything_held()
    [placed] = run([waiter("alice", GpuRequest(count=1))], occupants)
    assert not placed.granted and placed.start == NOW + HOUR and placed.slots == (WHOLES[0].uuid,)
    assert "not enough free" in placed.waits_for


def test_held_with_no_deadline_means_an_unknown_start() -> None:
    occupants = [occupant("holder", [slot.uuid], FOREVER) for slot in ALL_SLOTS]
    [placed] = run([waiter("alice", GpuRequest(count=1))], occupants)
    assert placed.start is None and placed.slots == () and not placed.granted


def test_lower_fair_share_goes_first_and_the_next_release_is_the_next_ones() -> None:
    occupants = everything_held()
    fairshare = fairshare_factors({"alice": 1.0, "bob": 50.0}, {"alice": 1.0, "bob": 1.0})
    first, second = run([waiter("bob", GpuRequest(count=1), joined=NOW - 60), waiter("alice", GpuRequest(count=1))],
                        occupants, fairshare)
    assert (first.waiter.user, second.waiter.user) == ("alice", "bob")
    assert first.priority.fairshare > second.priority.fairshare
    assert first.start is not None and second.start is not None and first.start < second.start


def test_backfill_uses_a_reserved_slot_only_when_it_is_done_before_the_reservation() -> None:
    # GPU 0 frees in an hour; every other slot is held for a day. The first in line reserves GPU 0 from then.
    occupants = [occupant("holder", [WHOLES[0].uuid], NOW + HOUR),
                 *(occupant("holder", [slot.uuid], NOW + 24 * HOUR) for slot in ALL_SLOTS[1:])]
    head = waiter("head", GpuRequest(count=1), priority=100)
    placed = run([head], occupants)
    assert placed[0].slots == (WHOLES[0].uuid,) and placed[0].start == NOW + HOUR
    # A short job on GPU 0 would finish before the head's start, a long one would not: only the short one waits less.
    released = [o for o in occupants if o.holding.slots != (WHOLES[0].uuid,)]
    head_now, short = run([head, waiter("short", GpuRequest(count=1), runtime=HOUR / 2)], released)
    assert head_now.granted and head_now.slots == (WHOLES[0].uuid,)
    assert not short.granted and short.start is not None and short.start >= NOW + HOUR / 2


def test_a_reservation_leaves_a_slot_free_now_to_others_when_a_later_one_will_do() -> None:
    # GPU 0 is free now, GPUs 1 and 2 free in an hour, the rest in a day. The pair reserves 1 and 2 from the hour
    # on rather than 0, so a day's job can start on GPU 0 now instead of it idling for that hour.
    occupants = [occupant("holder", [WHOLES[1].uuid], NOW + HOUR), occupant("holder", [WHOLES[2].uuid], NOW + HOUR),
                 *(occupant("holder", [slot.uuid], NOW + 24 * HOUR) for slot in ALL_SLOTS[3:])]
    pair, single = run([waiter("pair", GpuRequest(count=2), priority=100),
                        waiter("single", GpuRequest(count=1), runtime=24 * HOUR)], occupants)
    assert pair.start == NOW + HOUR and set(pair.slots) == {WHOLES[1].uuid, WHOLES[2].uuid}
    assert single.granted and single.slots == (WHOLES[0].uuid,)  # a day's job on the slot the pair left alone


def test_requests_held_back_by_their_own_quota_reserve_nothing_and_stall_nobody() -> None:
    # carol holds her whole quota (1) on slices and waits for three more 1g slices, first in the queue; the
    # three 1g slices are free. alice, behind her, is granted one now rather than wait two days for carol.
    quota_one = limits(allow_full_gpu=False, gpu_quota=Fraction(1), max_gpus_per_container=1)
    held = [MIG6[0], MIG6[1], MIG7[1]]  # 3g + 2g + 2g = 1 GPU-equivalent
    occupants = [occupant("carol", [slot.uuid], NOW + 48 * HOUR) for slot in held]
    carols = [waiter(f"carol-{i}", GpuRequest(mig_profile="1g.10gb"), user="carol", lim=quota_one,
                     priority=100.0, runtime=48 * HOUR) for i in range(3)]
    alice = waiter("alice", GpuRequest(mig_profile="1g.10gb"), lim=quota_one, runtime=48 * HOUR)
    placed = run([*carols, alice], occupants)
    assert [p.waiter.id for p in placed] == ["carol-0", "carol-1", "carol-2", "alice"]
    for carol in placed[:3]:
        assert not carol.granted and carol.blocked_by is Reason.QUOTA and carol.slots == ()
        assert carol.start == NOW + 48 * HOUR  # when her own containers end
    assert placed[3].granted and placed[3].waiter.user == "alice"


def test_who_has_waited_max_age_goes_ahead_of_any_priority() -> None:
    occupants = everything_held()
    old = waiter("old", GpuRequest(count=1), joined=NOW - SCHEDULER.max_age_seconds)
    favoured = waiter("favoured", GpuRequest(count=1), priority=10_000.0)
    first, second = run([favoured, old], occupants, {"old": 0.0})
    assert (first.waiter.id, second.waiter.id) == ("old", "favoured")
    assert first.priority.total < second.priority.total and first.priority.age == 1.0
    nearly = waiter("nearly", GpuRequest(count=1), joined=NOW - SCHEDULER.max_age_seconds + 60)
    assert [p.waiter.id for p in run([nearly, favoured], occupants, {"nearly": 0.0})] == ["favoured", "nearly"]


def test_what_no_holder_could_ever_free_is_never_grantable() -> None:
    too_big = waiter("alice", GpuRequest(count=9))
    assert never_grantable(too_big, ALLOCATION, ALL_SLOTS) is not None
    mig_only = waiter("bob", GpuRequest(devices=(WHOLES[0].uuid,)), lim=MIG_USER)
    denied = never_grantable(mig_only, ALLOCATION, ALL_SLOTS)
    assert denied is not None and denied.reason is Reason.FULL_GPU_NOT_ALLOWED
    over_quota = waiter("carol", GpuRequest(count=3), lim=limits(gpu_quota=Fraction(2), max_gpus_per_container=4))
    assert never_grantable(over_quota, ALLOCATION, ALL_SLOTS) is not None
    assert never_grantable(waiter("dave", GpuRequest(count=2)), ALLOCATION, ALL_SLOTS) is None
    [placed] = run([mig_only], [])  # its limits changed while it waited: it is told, not kept waiting
    assert placed.never is not None and not placed.granted


def test_usage_decays_by_half_each_half_life() -> None:
    half_life = 7 * 24 * HOUR
    recent = decayed_hours([Held("alice", 1.0, NOW - HOUR, NOW)], NOW, half_life)["alice"]
    older = decayed_hours([Held("alice", 1.0, NOW - half_life - HOUR, NOW - half_life)], NOW, half_life)["alice"]
    assert abs(recent - 1.0) < 0.01 and abs(older / recent - 0.5) < 1e-9
    split = decayed_hours([Held("a", 2.0, NOW - 10 * HOUR, NOW - 4 * HOUR), Held("a", 2.0, NOW - 4 * HOUR, NOW)],
                          NOW, half_life)
    whole = decayed_hours([Held("a", 2.0, NOW - 10 * HOUR, NOW)], NOW, half_life)
    assert abs(split["a"] - whole["a"]) < 1e-9
    assert fairshare_factors({}, {"a": 1.0}) == {"a": 1.0}
    assert abs(fairshare_factors({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0})["a"] - 0.5) < 1e-12


# --- properties -------------------------------------------------------------------------------------------------

REQUESTS = st.one_of(st.builds(GpuRequest, count=st.integers(1, 3)),
                     st.sampled_from([GpuRequest(mig_profile=s.profile) for s in MIG6 + MIG7]),
                     st.sampled_from([GpuRequest(devices=(s.uuid,)) for s in ALL_SLOTS]))
WAITERS = st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol", "dave"]), REQUESTS,
                             st.sampled_from([HOUR / 4, HOUR, 5 * HOUR, FOREVER]), st.integers(0, 3)),
                   max_size=8)
HELD = st.lists(st.tuples(st.sampled_from(ALL_SLOTS), st.sampled_from([HOUR / 2, 2 * HOUR, 9 * HOUR, FOREVER])),
                max_size=14, unique_by=lambda pair: pair[0].uuid)


def _world(held: list[tuple[object, float]], waiting: list[tuple[str, GpuRequest, float, int]]
           ) -> tuple[list[Occupant], list[Waiter]]:
    occupants = [occupant("holder", [slot.uuid], NOW + free_in) for slot, free_in in held]  # type: ignore[attr-defined]
    waiters = [waiter(f"w{index}", request, user=user, joined=NOW - index * 60, runtime=runtime,
                      priority=float(bonus * 100))
               for index, (user, request, runtime, bonus) in enumerate(waiting)]
    return occupants, waiters


@settings(max_examples=300, deadline=None)
@given(HELD, WAITERS)
def test_no_slot_is_given_twice_at_any_moment(held: list[tuple[object, float]],
                                              waiting: list[tuple[str, GpuRequest, float, int]]) -> None:
    occupants, waiters = _world(held, waiting)
    placed = run(waiters, occupants)
    spans = [(uuid, NOW, o.free_by) for o in occupants for uuid in o.holding.slots]
    spans += [(uuid, p.start, p.start + p.waiter.runtime_seconds) for p in placed if p.start is not None
              for uuid in p.slots]
    for index, (uuid, begins, ends) in enumerate(spans):
        for other, other_begins, other_ends in spans[index + 1:]:
            assert uuid != other or not (begins < other_ends and other_begins < ends), (uuid, begins, ends)
    assert [p.position for p in placed] == list(range(1, len(placed) + 1))
    granted = [uuid for p in placed if p.granted for uuid in p.slots]
    assert len(granted) == len(set(granted)) and not set(granted) & {u for o in occupants for u in o.holding.slots}


@settings(max_examples=300, deadline=None)
@given(HELD, WAITERS, REQUESTS, st.sampled_from([HOUR / 4, HOUR, 5 * HOUR, FOREVER]))
def test_a_backfill_never_delays_those_ahead(held: list[tuple[object, float]],
                                             waiting: list[tuple[str, GpuRequest, float, int]],
                                             late: GpuRequest, runtime: float) -> None:
    """A newcomer of the lowest priority that is granted now holds its slots from then on: in the next pass, no
    one ahead of it that reserved slots starts later than before."""
    occupants, waiters = _world(held, waiting)
    first = run(waiters, occupants)
    before = {p.waiter.id: p.start for p in first}
    # One its own quota holds back reserves no slots: its start is "if GPUs are free then", which a backfill may
    # take (the queue says so); the promise below is to those who reserved.
    conditional = {p.waiter.id for p in first if p.blocked_by is Reason.QUOTA and not p.granted}
    newcomer = waiter("late", late, user="erin", joined=NOW, runtime=runtime, priority=-10_000.0)
    placed = run([*waiters, newcomer], occupants)
    assert placed[-1].waiter.id == "late"
    assert {p.waiter.id: p.start for p in placed[:-1]} == before
    if placed[-1].granted:  # everyone granted in the pass holds their slots in the next
        granted = [Occupant(Holding(p.waiter.id, p.waiter.user, p.slots, Fraction(0), None),
                            NOW + p.waiter.runtime_seconds) for p in placed if p.granted]
        after = run([w for w in waiters if before[w.id] != NOW], [*occupants, *granted])
        for p in after:
            ahead = before[p.waiter.id]
            if p.waiter.id in conditional:
                continue
            assert ahead is None or (p.start is not None and p.start <= ahead), (p.waiter.id, ahead, p.start)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([s.profile for s in MIG6 + MIG7]), min_size=1, max_size=30),
       st.lists(st.sampled_from([HOUR / 2, HOUR, 3 * HOUR]), min_size=8, max_size=8))
def test_a_full_gpu_request_starts_by_its_estimate_behind_an_endless_stream_of_mig_requests(
        profiles: list[str | None], frees: list[float]) -> None:
    """Every whole GPU is held; the full-GPU request reserves the first to free. MIG requests keep arriving (lower
    priority, as later arrivals are) and take what they can; time moves from release to release. The full-GPU
    request is granted no later than its first estimate."""
    occupants = [occupant("holder", [slot.uuid], NOW + frees[index % len(frees)])
                 for index, slot in enumerate(WHOLES)]
    full = waiter("full", GpuRequest(count=1), joined=NOW)
    [first] = run([full], occupants)
    assert first.start is not None
    estimate, now, queue = first.start, NOW, [full]
    for step, profile in enumerate(profiles):
        queue.append(waiter(f"mig{step}", GpuRequest(mig_profile=profile), user=f"m{step % 5}", lim=MIG_USER,
                            joined=now, runtime=2 * HOUR, priority=-1.0))
        placed = run(queue, occupants, now=now)
        granted = [p for p in placed if p.granted]
        if any(p.waiter.id == "full" for p in granted):
            assert now <= estimate
            return
        for p in granted:  # the granted MIG requests hold their slices until their deadline
            occupants.append(Occupant(Holding(p.waiter.id, p.waiter.user, p.slots, Fraction(1, 7), None),
                                      now + p.waiter.runtime_seconds))
        queue = [w for w in queue if w.id not in {p.waiter.id for p in granted}]
        upcoming = sorted(o.free_by for o in occupants if o.free_by > now)
        now = upcoming[0] if upcoming else now
        occupants = [o for o in occupants if o.free_by > now]
    placed = run(queue, occupants, now=max(now, estimate))
    assert any(p.waiter.id == "full" and p.granted for p in placed)
