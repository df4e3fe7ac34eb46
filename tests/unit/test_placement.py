"""ds01.gpus.placement: which slots a GPU request gets, from hand-made slots and holdings (pure, no engine, no
NVML)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ds01 import nvml
from ds01.config import BUILTIN_DEFAULTS, AllocationSettings, LimitValues
from ds01.errors import Denied
from ds01.gpus.placement import GpuRequest, Holding, Slot, choose_slots
from ds01.gpus.supply import slots_from_inventory

GIB = 2**30
REASONS = {"quota", "capacity", "per_container_max", "mig_profile_not_allowed", "full_gpu_not_allowed",
           "unknown_device"}
PROFILES = ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")


def whole(index: int, memory_gib: int = 0, utilization: int | None = 0) -> Slot:
    uuid = f"GPU-{index}"
    return Slot(uuid, uuid, index, None, Fraction(1), memory_gib * GIB, utilization)


def mig(index: int, position: int, profile: str, memory_gib: int = 0, utilization: int | None = 0) -> Slot:
    return Slot(f"MIG-{index}-{position}", f"GPU-{index}", index, profile, Fraction(int(profile[0]), 7),
                memory_gib * GIB, utilization)


def limits(**overrides: Any) -> LimitValues:
    return BUILTIN_DEFAULTS.with_overrides(overrides)


def holding(user: str, *slots: Slot, container: str | None = None, allocation: str = "a-held") -> Holding:
    return Holding(allocation, user, tuple(s.uuid for s in slots), sum((s.equivalents for s in slots), Fraction(0)),
                   container)


def choose(user: str, lim: LimitValues, request: GpuRequest, slots: list[Slot],
           holdings: list[Holding] | None = None, **setting: Any) -> list[Slot]:
    return choose_slots(user, lim, AllocationSettings(**setting), request, slots=slots, holdings=holdings or [])


def denial(user: str, lim: LimitValues, request: GpuRequest, slots: list[Slot],
           holdings: list[Holding] | None = None, **setting: Any) -> Denied:
    with pytest.raises(Denied) as caught:
        choose(user, lim, request, slots, holdings, **setting)
    return caught.value


def uuids(chosen: list[Slot]) -> list[str]:
    return [s.uuid for s in chosen]


# The shape of the test bed's a100-8gpu topology: six whole GPUs, GPU 6 split 3g+2g+1g+1g, GPU 7 split 4g+2g+1g.
WHOLES = [whole(i) for i in range(6)]
MIG6 = [mig(6, 0, "3g.40gb"), mig(6, 1, "2g.20gb"), mig(6, 2, "1g.10gb"), mig(6, 3, "1g.10gb")]
MIG7 = [mig(7, 0, "4g.40gb"), mig(7, 1, "2g.20gb"), mig(7, 2, "1g.10gb")]
ALL_SLOTS = WHOLES + MIG6 + MIG7
MIG_ONLY = limits(allow_full_gpu=False, gpu_quota=Fraction(2), max_gpus_per_container=3)


# ---------------------------------------------------------------- slots_from_inventory


def _mig_device(parent: int, position: int, profile: str) -> nvml.MigDevice:
    return nvml.MigDevice(uuid=f"MIG-{parent}-{position}", parent_uuid=f"GPU-{parent}", index=position,
                          gpu_instance_id=position + 1, compute_instance_id=0, profile=profile,
                          slices=int(profile[0]), memory_total_bytes=10 * GIB, memory_used_bytes=GIB, processes=())


def _gpu(index: int, mig_devices: tuple[nvml.MigDevice, ...] = (), used_gib: int = 0,
         utilization: int | None = 10) -> nvml.Gpu:
    return nvml.Gpu(index=index, uuid=f"GPU-{index}", name="NVIDIA A100-SXM4-80GB", serial=None,
                    pci_bus_id=f"00000000:{index:02X}:00.0", memory_total_bytes=80 * GIB,
                    memory_used_bytes=used_gib * GIB, utilization_gpu_percent=utilization,
                    utilization_memory_percent=None, temperature_celsius=None, power_watts=None,
                    power_limit_watts=None, mig_mode=bool(mig_devices), mig_devices=mig_devices, processes=())


def test_slots_from_inventory_whole_gpus_mig_devices_and_health() -> None:
    inventory = nvml.Inventory(driver_version="550.54.15", cuda_driver_version=12040, gpus=(
        _gpu(0, used_gib=3, utilization=40),
        _gpu(1),  # unhealthy: a recent critical XID
        nvml.UnavailableGpu(2, "GPU-2", nvml.Health("lost", "fallen off the bus")),
        _gpu(3, mig_devices=(_mig_device(3, 0, "3g.40gb"), _mig_device(3, 1, "1g.10gb")), used_gib=5,
             utilization=None),
        _gpu(4, mig_devices=(_mig_device(4, 0, "7g.80gb"),)),  # unhealthy MIG GPU: none of its slices
    ))
    slots = slots_from_inventory(inventory, frozenset({"GPU-1", "GPU-4"}))

    assert [s.uuid for s in slots] == ["GPU-0", "MIG-3-0", "MIG-3-1"]
    first, three, one = slots
    assert (first.gpu_uuid, first.gpu_index, first.profile, first.is_mig) == ("GPU-0", 0, None, False)
    assert first.equivalents == 1 and isinstance(first.equivalents, Fraction)
    assert (first.memory_used_bytes, first.utilization_percent) == (3 * GIB, 40)
    # MIG slices: compute slices / 7, exact; the load tie-breakers are the parent GPU's, a MIG-mode GPU is no slot.
    assert three.equivalents == Fraction(3, 7) and isinstance(three.equivalents, Fraction)
    assert one.equivalents == Fraction(1, 7)
    assert {s.gpu_uuid for s in (three, one)} == {"GPU-3"} and three.is_mig and three.profile == "3g.40gb"
    assert (three.memory_used_bytes, three.utilization_percent) == (5 * GIB, None)


def test_slots_from_inventory_without_unhealthy_keeps_everything_available() -> None:
    inventory = nvml.Inventory("550", None, (_gpu(0), _gpu(1, mig_devices=(_mig_device(1, 0, "4g.40gb"),))))
    assert [s.uuid for s in slots_from_inventory(inventory, frozenset())] == ["GPU-0", "MIG-1-0"]


# ---------------------------------------------------------------- denials: every reason code and its message


def test_quota_denial_names_the_users_containers_and_reservations() -> None:
    mine = [holding("alice", WHOLES[0], container="train-1", allocation="a-1"),
            holding("alice", MIG6[0], allocation="a-unbound")]
    theirs = [holding("bob", WHOLES[1], container="bobs-job", allocation="a-2")]
    lim = limits(gpu_quota=Fraction(10, 7), max_gpus_per_container=2)

    denied = denial("alice", lim, GpuRequest(count=1), ALL_SLOTS, mine + theirs)

    assert denied.reason == "quota"
    text = denied.message
    assert "alice" in text and "10/7" in text  # who, and the quota
    assert "container train-1: GPU-0" in text  # the container holding a GPU, by name
    assert "reservation a-unbound" in text and "not yet bound" in text and "MIG-6-0" in text
    assert "holds 10/7" in text  # 1 + 3/7 held
    assert "needs 1 more" in text
    assert "bobs-job" not in text and "GPU-1" not in text  # nobody else's holdings


def test_quota_denial_with_nothing_held_says_so() -> None:
    denied = denial("carol", limits(gpu_quota=Fraction(0)), GpuRequest(count=1), ALL_SLOTS)
    assert denied.reason == "quota" and "Held by: nothing" in denied.message


def test_quota_counts_holdings_of_slots_no_longer_in_the_inventory() -> None:
    gone = Holding("a-old", "alice", ("GPU-99",), Fraction(1), "old-job")
    denied = denial("alice", limits(gpu_quota=Fraction(1)), GpuRequest(count=1), WHOLES, [gone])
    assert denied.reason == "quota" and "old-job" in denied.message


def test_capacity_denial_when_not_enough_free() -> None:
    others = [holding("bob", *WHOLES[:5], container="big")]
    denied = denial("alice", limits(gpu_quota=Fraction(8), max_gpus_per_container=2), GpuRequest(count=2),
                    ALL_SLOTS, others)
    assert denied.reason == "capacity"
    assert "not enough free whole GPUs" in denied.message and "2 asked for, 1 free" in denied.message


def test_capacity_denial_for_a_profile_with_no_free_slice() -> None:
    others = [holding("bob", MIG6[1], MIG7[1])]
    denied = denial("alice", limits(), GpuRequest(mig_profile="2g.20gb"), ALL_SLOTS, others)
    assert denied.reason == "capacity" and "MIG 2g.20gb slices" in denied.message


def test_capacity_comes_before_quota() -> None:
    """No free slot at all is a capacity problem even for a user with no quota left."""
    others = [holding("bob", *WHOLES)]
    assert denial("alice", limits(gpu_quota=Fraction(0)), GpuRequest(count=1), WHOLES, others).reason == "capacity"


@pytest.mark.parametrize(("request_", "maximum", "asked"), [
    (GpuRequest(count=3), 2, "3 GPU slots"),
    (GpuRequest(devices=("GPU-0", "GPU-1", "GPU-2")), 2, "3 GPU slots"),
    (GpuRequest(count=2), 1, "2 GPU slots"),
])
def test_per_container_max_denial(request_: GpuRequest, maximum: int, asked: str) -> None:
    denied = denial("alice", limits(gpu_quota=Fraction(8), max_gpus_per_container=maximum), request_, ALL_SLOTS)
    assert denied.reason == "per_container_max"
    assert asked in denied.message and f"at most {maximum}" in denied.message


def test_a_request_for_nothing_is_a_per_container_max_denial() -> None:
    denied = denial("alice", limits(), GpuRequest(count=0), ALL_SLOTS)
    assert denied.reason == "per_container_max" and "at least one" in denied.message


def test_gpus_all_with_a_maximum_of_zero_is_denied() -> None:
    assert denial("alice", limits(max_gpus_per_container=0), GpuRequest(all_gpus=True),
                  ALL_SLOTS).reason == "per_container_max"


def test_mig_profile_not_allowed_for_mig_request() -> None:
    lim = limits(allowed_mig_profiles=frozenset({"1g.10gb", "2g.20gb"}))
    denied = denial("alice", lim, GpuRequest(mig_profile="4g.40gb"), ALL_SLOTS)
    assert denied.reason == "mig_profile_not_allowed"
    assert "4g.40gb" in denied.message and "allowed: 1g.10gb, 2g.20gb" in denied.message


def test_mig_profile_not_allowed_lists_none_when_no_profile_is() -> None:
    denied = denial("alice", limits(allowed_mig_profiles=frozenset()), GpuRequest(mig_profile="1g.10gb"), ALL_SLOTS)
    assert denied.reason == "mig_profile_not_allowed" and "allowed: none" in denied.message


def test_mig_profile_not_allowed_for_an_explicit_device() -> None:
    lim = limits(allowed_mig_profiles=frozenset({"1g.10gb"}))
    denied = denial("alice", lim, GpuRequest(devices=(MIG7[0].uuid,)), ALL_SLOTS)
    assert denied.reason == "mig_profile_not_allowed" and "4g.40gb" in denied.message


def test_full_gpu_not_allowed_for_an_explicit_whole_gpu() -> None:
    denied = denial("alice", limits(allow_full_gpu=False), GpuRequest(devices=("GPU-3",)), ALL_SLOTS)
    assert denied.reason == "full_gpu_not_allowed"
    assert "GPU-3" in denied.message and "--mig PROFILE" in denied.message


def test_full_gpu_not_allowed_when_mig_is_off_for_plain_counts() -> None:
    denied = denial("alice", limits(allow_full_gpu=False), GpuRequest(count=1), ALL_SLOTS, mig_preference="none")
    assert denied.reason == "full_gpu_not_allowed" and "--mig PROFILE" in denied.message


def test_unknown_device_denial() -> None:
    denied = denial("alice", limits(), GpuRequest(devices=("GPU-does-not-exist",)), ALL_SLOTS)
    assert denied.reason == "unknown_device"
    assert "GPU-does-not-exist" in denied.message and "ds01 gpus" in denied.message


def test_a_device_of_an_unhealthy_gpu_is_unknown() -> None:
    """slots_from_inventory drops unhealthy GPUs, so asking for one by UUID is refused, never granted."""
    inventory = nvml.Inventory("550", None, (_gpu(0), _gpu(1)))
    slots = slots_from_inventory(inventory, frozenset({"GPU-1"}))
    assert denial("alice", limits(), GpuRequest(devices=("GPU-1",)), slots).reason == "unknown_device"
    assert uuids(choose("alice", limits(), GpuRequest(count=1), slots)) == ["GPU-0"]


# ---------------------------------------------------------------- explicit devices


def test_explicit_devices_are_granted_exactly_in_order() -> None:
    lim = limits(gpu_quota=Fraction(3), max_gpus_per_container=3)
    chosen = choose("alice", lim, GpuRequest(devices=("GPU-4", MIG6[2].uuid, "GPU-0")), ALL_SLOTS)
    assert uuids(chosen) == ["GPU-4", MIG6[2].uuid, "GPU-0"]


def test_explicit_device_held_by_someone_else_is_a_capacity_denial() -> None:
    others = [holding("bob", WHOLES[2], container="bobs")]
    denied = denial("alice", limits(gpu_quota=Fraction(2), max_gpus_per_container=2),
                    GpuRequest(devices=("GPU-1", "GPU-2")), ALL_SLOTS, others)
    assert denied.reason == "capacity" and "GPU-2 is already allocated" in denied.message


def test_explicit_devices_over_quota_name_what_is_held() -> None:
    mine = [holding("alice", MIG7[0], container="mine")]
    denied = denial("alice", limits(gpu_quota=Fraction(6, 7)), GpuRequest(devices=(MIG6[0].uuid,)), ALL_SLOTS,
                    mine)
    assert denied.reason == "quota" and "container mine" in denied.message and "needs 3/7" in denied.message


def test_explicit_device_repeated_is_never_granted_twice() -> None:
    """A device named twice (`--gpus device=GPU-0,GPU-0`) must not come back as two slots.

    A grant with a repeated slot is a double booking inside one allocation: the allocator stores it, its own
    loader then rejects the file as corrupt ("books a slot twice"), and the quota is charged twice.
    """
    lim = limits(gpu_quota=Fraction(4), max_gpus_per_container=4)
    try:
        chosen = choose("alice", lim, GpuRequest(devices=("GPU-0", "GPU-0")), ALL_SLOTS)
    except Denied:
        return
    assert len(uuids(chosen)) == len(set(uuids(chosen))), uuids(chosen)


# ---------------------------------------------------------------- strategies: spread and pack


def test_spread_prefers_the_gpu_with_fewest_allocated_equivalents_over_live_memory() -> None:
    """GPU 6 has a slice allocated but little live memory; GPU 7 has none allocated but more memory: GPU 7 wins."""
    g6 = [mig(6, 0, "2g.20gb", memory_gib=1), mig(6, 1, "1g.10gb", memory_gib=1)]
    g7 = [mig(7, 0, "2g.20gb", memory_gib=30, utilization=90), mig(7, 1, "1g.10gb", memory_gib=30, utilization=90)]
    others = [holding("bob", g6[1])]
    chosen = choose("alice", MIG_ONLY, GpuRequest(count=1), g6 + g7, others)
    assert [s.gpu_uuid for s in chosen] == ["GPU-7"]
    assert chosen[0].profile == "2g.20gb"  # largest slice first on the emptiest GPU


def test_spread_breaks_ties_by_live_memory_then_utilization() -> None:
    slots = [whole(0, memory_gib=10, utilization=1), whole(1, memory_gib=2, utilization=99),
             whole(2, memory_gib=2, utilization=5), whole(3, memory_gib=40, utilization=0)]
    lim = limits(gpu_quota=Fraction(4), max_gpus_per_container=4)
    assert uuids(choose("alice", lim, GpuRequest(count=1), slots)) == ["GPU-2"]
    assert uuids(choose("alice", lim, GpuRequest(count=3), slots)) == ["GPU-2", "GPU-1", "GPU-0"]


def test_spread_treats_unknown_utilization_as_idle() -> None:
    slots = [whole(0, memory_gib=2, utilization=30), whole(1, memory_gib=2, utilization=None)]
    assert uuids(choose("alice", limits(), GpuRequest(count=1), slots)) == ["GPU-1"]


def test_spread_reranks_as_it_picks_one_slice_per_gpu() -> None:
    chosen = choose("alice", MIG_ONLY, GpuRequest(count=2), MIG6 + MIG7)
    assert sorted(s.gpu_uuid for s in chosen) == ["GPU-6", "GPU-7"]


def test_pack_fills_the_busiest_gpu_with_its_smallest_slice() -> None:
    others = [holding("bob", MIG6[0])]  # GPU 6 carries 3/7 allocated, GPU 7 nothing
    chosen = choose("alice", MIG_ONLY, GpuRequest(count=1), MIG6 + MIG7, others, strategy="pack")
    assert uuids(chosen) == [MIG6[2].uuid]
    chosen = choose("alice", MIG_ONLY, GpuRequest(count=2), MIG6 + MIG7, others, strategy="pack")
    assert {s.gpu_uuid for s in chosen} == {"GPU-6"} and {s.profile for s in chosen} == {"1g.10gb"}


def test_pack_and_spread_disagree_on_the_same_input() -> None:
    others = [holding("bob", MIG7[2])]
    spread = choose("alice", MIG_ONLY, GpuRequest(count=1), MIG6 + MIG7, others)
    pack = choose("alice", MIG_ONLY, GpuRequest(count=1), MIG6 + MIG7, others, strategy="pack")
    assert spread[0].gpu_uuid == "GPU-6" and pack[0].gpu_uuid == "GPU-7"


# ---------------------------------------------------------------- mig_preference, --mig, --gpus all


def test_restricted_gives_whole_gpus_to_users_allowed_them() -> None:
    chosen = choose("alice", limits(), GpuRequest(count=1), ALL_SLOTS, mig_preference="restricted")
    assert not chosen[0].is_mig


def test_restricted_gives_mig_slices_to_users_without_full_gpus() -> None:
    chosen = choose("alice", MIG_ONLY, GpuRequest(count=3), ALL_SLOTS, mig_preference="restricted")
    assert all(s.is_mig for s in chosen) and len(chosen) == 3


def test_restricted_without_full_gpus_and_no_free_slice_is_capacity_not_a_whole_gpu() -> None:
    others = [holding("bob", *MIG6, *MIG7)]
    denied = denial("alice", MIG_ONLY, GpuRequest(count=1), ALL_SLOTS, others, mig_preference="restricted")
    assert denied.reason == "capacity" and "MIG slices" in denied.message


def test_restricted_honours_allowed_profiles() -> None:
    lim = MIG_ONLY.with_overrides({"allowed_mig_profiles": frozenset({"1g.10gb"})})
    chosen = choose("alice", lim, GpuRequest(count=3), ALL_SLOTS)
    assert {s.profile for s in chosen} == {"1g.10gb"} and len(chosen) == 3
    assert denial("alice", lim, GpuRequest(count=3), MIG6 + MIG7[:2]).reason == "capacity"


def test_all_gives_mig_slices_first_even_to_users_allowed_whole_gpus() -> None:
    chosen = choose("alice", limits(), GpuRequest(count=1), ALL_SLOTS, mig_preference="all")
    assert chosen[0].is_mig


def test_all_falls_back_to_whole_gpus_when_no_slice_fits() -> None:
    others = [holding("bob", *MIG6, *MIG7)]
    chosen = choose("alice", limits(), GpuRequest(count=1), ALL_SLOTS, others, mig_preference="all")
    assert not chosen[0].is_mig


def test_all_falls_back_to_whole_gpus_when_too_few_slices_are_free() -> None:
    others = [holding("bob", *MIG6, *MIG7[1:])]  # only the 4g slice of GPU 7 is free
    lim = limits(gpu_quota=Fraction(3), max_gpus_per_container=2)
    chosen = choose("alice", lim, GpuRequest(count=2), ALL_SLOTS, others, mig_preference="all")
    assert len(chosen) == 2 and any(not s.is_mig for s in chosen)


def test_all_without_full_gpus_never_falls_back_to_a_whole_gpu() -> None:
    others = [holding("bob", *MIG6, *MIG7)]
    denied = denial("alice", MIG_ONLY, GpuRequest(count=1), ALL_SLOTS, others, mig_preference="all")
    assert denied.reason == "capacity"


def test_none_gives_whole_gpus_even_when_slices_are_free() -> None:
    lim = limits(gpu_quota=Fraction(6), max_gpus_per_container=6)
    chosen = choose("alice", lim, GpuRequest(count=6), ALL_SLOTS, mig_preference="none")
    assert sorted(uuids(chosen)) == [s.uuid for s in WHOLES]
    assert denial("alice", limits(), GpuRequest(count=1), MIG6 + MIG7, mig_preference="none").reason == "capacity"


def test_a_mig_profile_request_gets_that_profile_whatever_the_preference() -> None:
    for preference in ("restricted", "all", "none"):
        chosen = choose("alice", limits(), GpuRequest(mig_profile="2g.20gb"), ALL_SLOTS, mig_preference=preference)
        assert len(chosen) == 1 and chosen[0].profile == "2g.20gb" and chosen[0].equivalents == Fraction(2, 7)


def test_gpus_all_means_the_per_container_maximum() -> None:
    lim = limits(gpu_quota=Fraction(8), max_gpus_per_container=3)
    chosen = choose("alice", lim, GpuRequest(all_gpus=True), ALL_SLOTS)
    assert len(chosen) == 3 and len(set(uuids(chosen))) == 3
    others = [holding("bob", *WHOLES[:4])]
    denied = denial("alice", lim, GpuRequest(all_gpus=True), ALL_SLOTS, others)
    assert denied.reason == "capacity" and "3 asked for, 2 free" in denied.message


def test_gpus_all_is_limited_by_quota() -> None:
    denied = denial("alice", limits(gpu_quota=Fraction(2), max_gpus_per_container=3), GpuRequest(all_gpus=True),
                    ALL_SLOTS)
    assert denied.reason == "quota" and "needs 3 more" in denied.message


def test_quota_left_picks_slices_that_fit() -> None:
    """3/7 of quota left and a count of one: the 4g slice does not fit, a smaller one does."""
    mine = [holding("alice", MIG7[1], container="mine")]  # 2/7 of 5/7 used
    lim = MIG_ONLY.with_overrides({"gpu_quota": Fraction(5, 7)})
    chosen = choose("alice", lim, GpuRequest(count=1), [MIG7[0], *MIG6], mine)
    assert chosen[0].equivalents <= Fraction(3, 7)


def test_a_request_that_fits_the_quota_is_not_denied_for_quota() -> None:
    """Two slices within a quota of 3/7 exist (1g + 1g, or 2g + 1g); the request must be granted.

    Spread takes the largest fitting slice first (3g = 3/7) and then finds nothing left in the budget, so a
    request that fits is refused with reason "quota" and a message that contradicts itself
    ("holds 0 of a quota of 3/7 ... needs 2/7 more").
    """
    slots = [mig(6, 0, "3g.40gb"), mig(6, 1, "1g.10gb"), mig(7, 0, "1g.10gb")]
    lim = limits(gpu_quota=Fraction(3, 7), max_gpus_per_container=2, allow_full_gpu=False)
    chosen = choose("alice", lim, GpuRequest(count=2), slots, strategy="spread")
    assert len(chosen) == 2 and sum((s.equivalents for s in chosen), Fraction(0)) <= Fraction(3, 7)


# ---------------------------------------------------------------- properties


@st.composite
def inventories(draw: st.DrawFn) -> list[Slot]:
    slots: list[Slot] = []
    for index in range(draw(st.integers(1, 6))):
        memory = draw(st.integers(0, 80))
        utilization = draw(st.none() | st.integers(0, 100))
        if draw(st.booleans()):
            slots.append(whole(index, memory, utilization))
            continue
        left = 7
        for position in range(draw(st.integers(1, 4))):
            fitting = [p for p in PROFILES if int(p[0]) <= left]
            if not fitting:
                break
            profile = draw(st.sampled_from(fitting))
            left -= int(profile[0])
            slots.append(mig(index, position, profile, memory, utilization))
    return slots


USERS = ("alice", "bob", "carol")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Slot], list[Holding], LimitValues, AllocationSettings, GpuRequest]:
    slots = draw(inventories())
    holdings = []
    for n, slot in enumerate(slots):
        owner = draw(st.none() | st.sampled_from(USERS))
        if owner is not None:
            holdings.append(Holding(f"a-{n}", owner, (slot.uuid,), slot.equivalents,
                                    draw(st.none() | st.just(f"job-{n}"))))
    if draw(st.booleans()):  # a holding of a GPU that has left the inventory still counts against the quota
        holdings.append(Holding("a-gone", draw(st.sampled_from(USERS)), ("GPU-gone",), Fraction(1), None))
    lim = limits(
        gpu_quota=Fraction(draw(st.integers(0, 28)), 7),
        max_gpus_per_container=draw(st.integers(0, 4)),
        allow_full_gpu=draw(st.booleans()),
        allowed_mig_profiles=draw(st.none() | st.frozensets(st.sampled_from(PROFILES))),
    )
    setting = AllocationSettings(strategy=draw(st.sampled_from(("spread", "pack"))),
                                 mig_preference=draw(st.sampled_from(("restricted", "all", "none"))))
    names = [s.uuid for s in slots] + ["GPU-unknown"]
    request = draw(st.one_of(
        st.builds(GpuRequest, count=st.integers(0, 5)),
        st.just(GpuRequest(all_gpus=True)),
        st.builds(GpuRequest, mig_profile=st.sampled_from(PROFILES)),
        st.builds(GpuRequest, devices=st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True)
                  .map(tuple)),
    ))
    return slots, holdings, lim, setting, request


@settings(max_examples=400, deadline=None)
@given(scenario=scenarios(), user=st.sampled_from(USERS))
def test_property_a_grant_respects_every_limit(
        scenario: tuple[list[Slot], list[Holding], LimitValues, AllocationSettings, GpuRequest], user: str) -> None:
    slots, holdings, lim, setting, request = scenario
    try:
        chosen = choose_slots(user, lim, setting, request, slots=slots, holdings=holdings)
    except Denied as denied:
        assert denied.reason in REASONS
        assert denied.message
        return
    booked = {uuid for h in holdings for uuid in h.slots}
    granted = uuids(chosen)
    assert granted, "a grant is never empty"
    assert not booked & set(granted), "a held slot was granted again"
    assert len(granted) == len(set(granted)), "a slot was granted twice"
    assert set(granted) <= {s.uuid for s in slots}
    assert len(granted) <= lim.max_gpus_per_container
    expected = lim.max_gpus_per_container if request.all_gpus else (
        len(request.devices) or (1 if request.mig_profile else request.count))
    assert len(granted) == expected
    amount = sum((s.equivalents for s in chosen), Fraction(0))
    assert all(isinstance(s.equivalents, Fraction) and 7 % s.equivalents.denominator == 0 for s in chosen)
    mine = sum((h.equivalents for h in holdings if h.user == user), Fraction(0))
    assert isinstance(amount, Fraction) and mine + amount <= lim.gpu_quota, "over quota"
    for slot in chosen:
        if not slot.is_mig:
            assert lim.allow_full_gpu
        elif lim.allowed_mig_profiles is not None:
            assert slot.profile in lim.allowed_mig_profiles
    if request.mig_profile:
        assert [s.profile for s in chosen] == [request.mig_profile]
    if request.devices:
        assert tuple(granted) == request.devices


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 8), taken=st.data(), quota=st.integers(0, 8), held_mine=st.integers(0, 8),
       count=st.integers(1, 4), strategy=st.sampled_from(("spread", "pack")))
def test_property_whole_gpus_granted_exactly_when_capacity_and_quota_allow(
        total: int, taken: st.DataObject, quota: int, held_mine: int, count: int, strategy: str) -> None:
    """With whole GPUs only, the outcome is fully predictable: capacity first, then quota, else a grant."""
    slots = [whole(i, memory_gib=i % 3) for i in range(total)]
    owners = taken.draw(st.lists(st.sampled_from(("alice", "bob", None)), min_size=total, max_size=total))
    holdings = [holding(owner, slot, container=f"job-{slot.uuid}") for slot, owner in zip(slots, owners, strict=True)
                if owner is not None]
    holdings.append(Holding("a-elsewhere", "alice", ("GPU-gone",), Fraction(held_mine), None))
    lim = limits(gpu_quota=Fraction(quota), max_gpus_per_container=4)
    free = owners.count(None)
    mine = owners.count("alice") + held_mine
    try:
        chosen = choose("alice", lim, GpuRequest(count=count), slots, holdings, strategy=strategy)
    except Denied as denied:
        if free < count:
            assert denied.reason == "capacity"
        else:
            assert denied.reason == "quota" and mine + count > quota
        return
    assert free >= count and mine + count <= quota and len(chosen) == count


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios(), user=st.sampled_from(USERS))
def test_property_choose_slots_is_pure(
        scenario: tuple[list[Slot], list[Holding], LimitValues, AllocationSettings, GpuRequest], user: str) -> None:
    slots, holdings, lim, setting, request = scenario

    def outcome() -> object:
        try:
            return uuids(choose_slots(user, lim, setting, request, slots=list(slots), holdings=list(holdings)))
        except Denied as denied:
            return denied.reason, denied.message

    assert outcome() == outcome()
