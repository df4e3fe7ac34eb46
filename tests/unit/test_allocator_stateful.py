"""A real Allocator on a temporary state directory, driven by random request/bind/release/time steps.

After every step: no slot is booked twice, no user holds more than their quota, every allocation's
GPU-equivalents are the exact sum of its slots', the file on disk parses and agrees with a simple model.
"""

from __future__ import annotations

import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ds01.config import BUILTIN_DEFAULTS, AllocationSettings, LimitValues
from ds01.errors import Denied, Ds01Error
from ds01.gpus.allocator import STATE_NAME, Allocation, Allocator
from ds01.gpus.filestore import _parse_state
from ds01.gpus.placement import GpuRequest, Slot

TTL = 60
USERS = ("alice", "bob", "carol")
PROFILES = ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb")
REASONS = {"quota", "capacity", "per_container_max", "mig_profile_not_allowed", "full_gpu_not_allowed",
           "unknown_device"}


def _slot(uuid: str, gpu: int, profile: str | None, memory: int = 0) -> Slot:
    equivalents = Fraction(1) if profile is None else Fraction(int(profile[0]), 7)
    return Slot(uuid, f"GPU-{gpu}", gpu, profile, equivalents, memory, 0)


# Three whole GPUs and two MIG-mode GPUs, as slots_from_inventory would give them.
SLOTS = [
    _slot("GPU-0", 0, None, 5), _slot("GPU-1", 1, None, 1), _slot("GPU-2", 2, None, 9),
    _slot("MIG-6-0", 6, "3g.40gb"), _slot("MIG-6-1", 6, "2g.20gb"), _slot("MIG-6-2", 6, "1g.10gb"),
    _slot("MIG-6-3", 6, "1g.10gb"),
    _slot("MIG-7-0", 7, "4g.40gb"), _slot("MIG-7-1", 7, "2g.20gb"), _slot("MIG-7-2", 7, "1g.10gb"),
]
EQUIVALENTS = {s.uuid: s.equivalents for s in SLOTS}

user_limits = st.builds(
    lambda quota, maximum, full, profiles: BUILTIN_DEFAULTS.with_overrides({
        "gpu_quota": Fraction(quota, 7), "max_gpus_per_container": maximum, "allow_full_gpu": full,
        "allowed_mig_profiles": profiles}),
    st.integers(0, 21), st.integers(1, 3), st.booleans(),
    st.none() | st.frozensets(st.sampled_from(PROFILES), min_size=1))
gpu_requests = st.one_of(
    st.builds(GpuRequest, count=st.integers(1, 3)),
    st.just(GpuRequest(all_gpus=True)),
    st.builds(GpuRequest, mig_profile=st.sampled_from(PROFILES)),
    st.builds(GpuRequest, devices=st.lists(st.sampled_from([s.uuid for s in SLOTS]), min_size=1, max_size=2,
                                           unique=True).map(tuple)),
)


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ds01-stateful-"))
        self.now = 1_700_000_000.0
        self.limits: dict[str, LimitValues] = {}
        self.model: dict[str, Allocation] = {}  # what the allocator should hold, expired reservations included
        self.gone: list[str] = []  # released or expired: bind/release must refuse them (in a stable order:
        # allocation ids are random, so drawing from them sorted by id would make the data generation flaky)
        self.allocator: Allocator

    @initialize(limits=st.fixed_dictionaries({u: user_limits for u in USERS}),
                strategy=st.sampled_from(("spread", "pack")),
                preference=st.sampled_from(("restricted", "all", "none")))
    def start(self, limits: dict[str, LimitValues], strategy: str, preference: str) -> None:
        self.limits = limits
        self.allocator = Allocator(
            self.dir / "state",
            AllocationSettings(strategy=strategy, mig_preference=preference, reservation_ttl_seconds=TTL,
                               lock_timeout_seconds=5),
            clock=lambda: self.now)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model

    def _live(self) -> dict[str, Allocation]:
        return {i: a for i, a in self.model.items() if a.expires_at is None or a.expires_at > self.now}

    def _expire(self) -> None:
        for allocation_id in set(self.model) - set(self._live()):
            del self.model[allocation_id]
            self.gone.append(allocation_id)

    def _reserved(self) -> list[str]:
        return [i for i, a in self._live().items() if a.container is None]

    # -- rules

    @rule(user=st.sampled_from(USERS), request=gpu_requests, ttl=st.none() | st.integers(0, 2 * TTL))
    def request(self, user: str, request: GpuRequest, ttl: int | None) -> None:
        self._expire()
        try:
            allocation = self.allocator.request(user, 1000 + USERS.index(user), self.limits[user], request,
                                                slots=SLOTS, ttl_seconds=ttl)
        except Denied as denied:
            assert denied.reason in REASONS, denied.reason
            return
        assert allocation.id not in self.model and allocation.id not in self.gone
        assert allocation.user == user and allocation.container is None
        assert allocation.expires_at == self.now + (TTL if ttl is None else ttl)
        taken = {s for a in self.model.values() for s in a.slots}
        assert not taken & set(allocation.slots), "granted a slot the model says is held"
        self.model[allocation.id] = allocation

    @precondition(lambda self: bool(self._reserved()))
    @rule(data=st.data())
    def bind(self, data: st.DataObject) -> None:
        allocation_id = data.draw(st.sampled_from(self._reserved()))
        bound = self.allocator.bind(allocation_id, f"c-{allocation_id}", f"job-{allocation_id}")
        assert bound.container == f"c-{allocation_id}" and bound.expires_at is None and bound.bound_at == self.now
        assert bound.slots == self.model[allocation_id].slots
        self.model[allocation_id] = bound

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        allocation_id = data.draw(st.sampled_from(list(self._live())))
        gone = self.allocator.release(allocation_id)
        assert gone.id == allocation_id and gone.slots == self.model[allocation_id].slots
        del self.model[allocation_id]
        self.gone.append(allocation_id)

    @precondition(lambda self: bool(self.gone))
    @rule(data=st.data(), action=st.sampled_from(("bind", "release")))
    def act_on_a_gone_allocation(self, data: st.DataObject, action: str) -> None:
        allocation_id = data.draw(st.sampled_from(self.gone))
        with pytest.raises(Ds01Error, match="no allocation"):
            if action == "bind":
                self.allocator.bind(allocation_id, "c-late")
            else:
                self.allocator.release(allocation_id)
        self._expire()

    @rule(seconds=st.integers(0, 2 * TTL))
    def advance_time(self, seconds: int) -> None:
        self.now += seconds

    @rule()
    def list_allocations(self) -> None:
        listed = self.allocator.allocations()
        self._expire()
        assert {a.id: a for a in listed} == self.model

    # -- invariants

    @invariant()
    def state_is_consistent(self) -> None:
        if not hasattr(self, "allocator"):
            return
        path = self.allocator.path
        if not path.exists():
            assert not self.model
            return
        on_disk = _parse_state(path.read_bytes(), path)  # raises on a corrupt file or a slot booked twice
        booked = [slot for a in on_disk for slot in a.slots]
        assert len(booked) == len(set(booked)), "a slot is booked twice"
        live = [a for a in on_disk if a.expires_at is None or a.expires_at > self.now]
        for allocation in on_disk:
            assert isinstance(allocation.gpu_equivalents, Fraction)
            assert allocation.gpu_equivalents == sum((EQUIVALENTS[s] for s in allocation.slots), Fraction(0))
        for user in USERS:
            held = sum((a.gpu_equivalents for a in live if a.user == user), Fraction(0))
            assert held <= self.limits[user].gpu_quota, f"{user} holds {held} > {self.limits[user].gpu_quota}"
        assert {a.id: a for a in live} == self._live()
        assert not list(path.parent.glob("*.tmp")), "a temp file was left behind"
        assert not list(path.parent.glob(f"{STATE_NAME}.corrupt-*")), "the allocator quarantined its own file"
        backup = self.allocator.path.with_name(f"{STATE_NAME}.bak")
        if backup.exists():
            _parse_state(backup.read_bytes(), backup)


def test_allocator_state_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    run_state_machine_as_test(AllocatorMachine, settings=settings(
        max_examples=50, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
