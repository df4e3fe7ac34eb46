"""cleanup.idle_reclaim: which waiting requests count as demand for an idle container's slots (a table over the
queue's request model), and cleanup's decision in both modes, over a stand-in engine, an inventory built here,
a real allocator and a queue.json written by the queue's own writer."""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import pytest

from ds01 import nvml
from ds01.config import BUILTIN_DEFAULTS, IDLE_RECLAIM_MODES, AllocationSettings, Config, LimitValues, load_config
from ds01.errors import ConfigError
from ds01.gpus import queuestate
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest, Slot
from ds01.gpus.queuestate import Waiting
from ds01.ops.cleanup import Cleanup, Decision, Outcome
from ds01.ops.demand import Demand, could_take, held_kinds
from ds01.records import ContainerInfo

HOUR = 3600
WHOLE = Slot("GPU-whole", "GPU-whole", 0, None, Fraction(1), 0, 0)
SLICE_1G = Slot("MIG-1g", "GPU-mig", 1, "1g.10gb", Fraction(1, 7), 0, None)
SLICE_3G = Slot("MIG-3g", "GPU-mig", 1, "3g.40gb", Fraction(3, 7), 0, None)
FULL = BUILTIN_DEFAULTS.with_overrides({"allow_full_gpu": True, "allowed_mig_profiles": None, "gpu_quota": 8,
                                        "max_gpus_per_container": 8})
STUDENT = BUILTIN_DEFAULTS.with_overrides({"allow_full_gpu": False, "allowed_mig_profiles": frozenset({"1g.10gb"})})
COUNT = GpuRequest(count=1)


def settings(preference: str) -> AllocationSettings:
    return AllocationSettings(mig_preference=preference)


@pytest.mark.parametrize(("request_", "slot", "limits", "preference", "takes"), [
    # named devices: those devices and no others, whatever the limits
    (GpuRequest(devices=("GPU-whole",)), WHOLE, FULL, "restricted", True),
    (GpuRequest(devices=("GPU-whole",)), SLICE_1G, FULL, "restricted", False),
    (GpuRequest(devices=("MIG-1g",)), SLICE_1G, STUDENT, "none", True),
    (GpuRequest(devices=("MIG-3g",)), SLICE_1G, None, "all", False),
    # a MIG profile: slices of that profile only; a whole GPU freed is not a slice
    (GpuRequest(mig_profile="1g.10gb"), SLICE_1G, STUDENT, "restricted", True),
    (GpuRequest(mig_profile="1g.10gb"), SLICE_3G, FULL, "restricted", False),
    (GpuRequest(mig_profile="1g.10gb"), WHOLE, FULL, "all", False),
    (GpuRequest(mig_profile="3g.40gb"), SLICE_3G, None, "none", True),
    # a count: whole GPUs or slices, as mig_preference and the waiter's limits make the allocator choose
    (COUNT, WHOLE, FULL, "restricted", True),
    (COUNT, SLICE_1G, FULL, "restricted", False),  # restricted: a user with allow_full_gpu gets whole GPUs
    (COUNT, WHOLE, STUDENT, "restricted", False),  # ... one without gets slices only
    (COUNT, SLICE_1G, STUDENT, "restricted", True),
    (COUNT, SLICE_3G, STUDENT, "restricted", False),  # of a profile they may have
    (COUNT, SLICE_3G, FULL, "all", True),
    (COUNT, WHOLE, FULL, "all", True),  # all: whole GPUs when no slice fits, as when the request waits
    (COUNT, WHOLE, STUDENT, "all", False),
    (COUNT, SLICE_1G, FULL, "none", False),
    (COUNT, WHOLE, FULL, "none", True),
    (GpuRequest(all_gpus=True), WHOLE, FULL, "restricted", True),
    (GpuRequest(all_gpus=True), SLICE_1G, STUDENT, "restricted", True),
    # a waiter whose limits are unknown counts for whatever its request's shape could take
    (COUNT, WHOLE, None, "restricted", True),
    (COUNT, SLICE_3G, None, "restricted", True),
    (COUNT, SLICE_3G, None, "all", True),
    (COUNT, SLICE_3G, None, "none", False),
    (GpuRequest(all_gpus=True), WHOLE, None, "none", True),
])
def test_which_waiting_request_could_take_a_slot(request_: GpuRequest, slot: Slot, limits: LimitValues | None,
                                                  preference: str, takes: bool) -> None:
    assert could_take(request_, slot, limits, settings(preference)) is takes


def test_the_kind_a_container_holds_reads_as_a_request_for_it() -> None:
    assert held_kinds([WHOLE]) == "a whole GPU"
    assert held_kinds([SLICE_3G, SLICE_1G]) == "a MIG 1g.10gb slice or a MIG 3g.40gb slice"
    assert held_kinds([SLICE_1G, WHOLE]) == "a whole GPU or a MIG 1g.10gb slice"
    assert held_kinds([]) == "its GPUs"


def waiting(request: GpuRequest, uid: int = 2001) -> Waiting:
    return Waiting(f"q-{uid}", "someone", uid, "gpu", "container", 0.0, 9e9, 1.0, 1, None, request)


def test_demand_asks_each_waiter_by_its_own_limits() -> None:
    limits = {2001: STUDENT, 2002: FULL}
    demand = Demand((waiting(COUNT, 2001), waiting(COUNT, 2002), waiting(GpuRequest(mig_profile="3g.40gb"), 2003)),
                    settings("restricted"), limits.get)
    assert [w.uid for w in demand.waiters_for([WHOLE])] == [2002]
    assert [w.uid for w in demand.waiters_for([SLICE_1G])] == [2001]
    assert [w.uid for w in demand.waiters_for([SLICE_3G])] == [2003]
    assert [w.uid for w in demand.waiters_for([SLICE_1G, WHOLE])] == [2001, 2002]
    assert demand.waiters_for([]) == []


# --- the configuration key ----------------------------------------------------------------------------------------

def write_config(tmp_path: Path, cleanup: str = "") -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(f"version: 1\n{cleanup}")
    return path


def test_idle_reclaim_defaults_to_when_waiting_and_takes_always(tmp_path: Path) -> None:
    assert IDLE_RECLAIM_MODES == ("always", "when_waiting")
    assert load_config(write_config(tmp_path)).cleanup.idle_reclaim == "when_waiting"
    for mode in IDLE_RECLAIM_MODES:
        config = load_config(write_config(tmp_path, f"cleanup:\n  idle_reclaim: {mode}\n"))
        assert config.cleanup.idle_reclaim == mode


@pytest.mark.parametrize("value", ["sometimes", "true", "[always]", "Always"])
def test_idle_reclaim_refuses_anything_else_by_file_line_and_key(tmp_path: Path, value: str) -> None:
    path = write_config(tmp_path, f"cleanup:\n  min_age: 30m\n  idle_reclaim: {value}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:4: cleanup.idle_reclaim: ")
    assert "is not one of always, when_waiting" in str(error.value)
    assert error.value.exit_code == 2


# --- cleanup's decision ------------------------------------------------------------------------------------------

class StandInEngine:
    """The engine as cleanup uses it: containers that use no CPU, and stops that are recorded."""

    def __init__(self, containers: list[ContainerInfo]) -> None:
        self.found = containers
        self.stopped: list[str] = []

    def containers(self) -> list[ContainerInfo]:
        return [dataclasses.replace(c, status="exited") if c.id in self.stopped else c for c in self.found]

    def cpu_usage_ns(self, container_id: str) -> int:
        return 10**9

    def stop(self, container_id: str, grace_seconds: int) -> None:
        self.stopped.append(container_id)


def gpu(index: int, uuid: str, migs: tuple[nvml.MigDevice, ...] = ()) -> nvml.Gpu:
    return nvml.Gpu(index, uuid, "A100", None, f"0000:0{index}:00.0", 80 * 2**30, 0, 0 if not migs else None, 0,
                    40, 100.0, 400.0, bool(migs), migs, ())


def mig(uuid: str, index: int, profile: str, slices: int) -> nvml.MigDevice:
    return nvml.MigDevice(uuid, "GPU-mig", index, index, 0, profile, slices, 10 * 2**30, 0, ())


INVENTORY = nvml.Inventory("550.54", 12040, (
    gpu(0, "GPU-whole"), gpu(1, "GPU-mig", (mig("MIG-1g", 0, "1g.10gb", 1), mig("MIG-3g", 1, "3g.40gb", 3)))))
T0 = 1_800_000_000.0  # the first check; each container started an hour before it


class Bed:
    def __init__(self, tmp_path: Path, mode: str = "when_waiting") -> None:
        self.state = tmp_path / "state"
        self.config_path = write_config(tmp_path, f"cleanup:\n  idle_reclaim: {mode}\n")
        self.config: Config = load_config(self.config_path)
        self.allocator = Allocator(self.state, self.config.allocation)
        self.containers: list[ContainerInfo] = []
        self.messages: list[str] = []
        self.waiter_limits: dict[int, LimitValues] = {2001: FULL, 2002: STUDENT}
        self.engine = StandInEngine(self.containers)
        owner = FULL.with_overrides({"idle_timeout_seconds": 2 * HOUR, "max_runtime_seconds": 48 * HOUR})
        self.cleanup = Cleanup(self.state, self.engine, self.allocator, lambda info: (1001, owner),  # type: ignore[arg-type]
                               waiter_limits=self.waiter_limits.get,
                               notify=lambda uid, message: self.messages.append(message) or 1)

    def container(self, name: str, request: GpuRequest) -> ContainerInfo:
        slots = [WHOLE, SLICE_1G, SLICE_3G]
        allocation = self.allocator.request("bob", 1001, FULL, request, slots=slots)
        info = ContainerInfo(f"id-{name}", name, {"ds01.user": "bob", "ds01.uid": "1001",
                                                  "ds01.allocation": allocation.id},
                             "running", allocation.slots, 0, started_at=T0 - HOUR)
        self.allocator.bind(allocation.id, info.id, name)
        self.containers.append(info)
        return info

    def wait(self, *requests: tuple[GpuRequest, int]) -> None:
        entries = [queuestate.Entry(f"q-{i}", "waiter", uid, request, "container", T0, T0 + 10 * HOUR)
                   for i, (request, uid) in enumerate(requests)]
        queuestate.write(self.state / queuestate.STATE_FILE, entries, {}, queuestate.WaitHistogram(), T0)

    def run(self, at: float, dry_run: bool = False) -> Outcome:
        return self.cleanup.run(self.config, INVENTORY, at, dry_run)

    def decide(self, at: float, dry_run: bool = False) -> dict[str, Decision]:
        return {d.container: d for d in self.run(at, dry_run).decisions}

    def idle_past_timeout(self) -> float:
        """Checks at T0 (the CPU baseline) and T0 + 60 (idle from then on); the time 2h past that."""
        assert all(d.action == "none" for d in self.decide(T0).values())
        assert all(d.reason.startswith("idle") for d in self.decide(T0 + 60).values())
        return T0 + 60 + 2 * HOUR + 1


def events(event_log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in event_log.read_text().splitlines()] if event_log.exists() else []


def test_when_waiting_keeps_an_idle_whole_gpu_nobody_waits_for_then_stops_it_once_someone_does(
        tmp_path: Path, event_log: Path) -> None:
    bed = Bed(tmp_path)
    whole = bed.container("whole", COUNT)
    late = bed.idle_past_timeout()
    bed.wait((GpuRequest(mig_profile="1g.10gb"), 2002), (COUNT, 2002))  # a student's count is served from slices
    kept = bed.decide(late)["whole"]
    assert (kept.action, kept.reason) == ("none", "idle 2h of 2h, but nobody waits for a whole GPU")
    assert bed.engine.stopped == []
    dry = bed.decide(late + HOUR, dry_run=True)["whole"]
    assert dry.reason == "idle 3h of 2h, but nobody waits for a whole GPU"
    bed.wait((COUNT, 2001))
    stop = bed.decide(late + HOUR)["whole"]  # the idle window went on: stopped on the first run with demand
    assert stop.action == "stop"
    assert stop.reason == "idle 3h, limit 2h; 1 waiting request(s) could take a whole GPU"
    assert bed.engine.stopped == [whole.id]
    assert bed.messages[-1].endswith("(limit 2h), and others wait for its GPUs.")
    [stopped] = [e for e in events(event_log) if e["type"] == "cleanup.stop"]
    assert stopped["details"]["waiting_requests"] == 1  # type: ignore[index]


def test_when_waiting_matches_a_slice_by_profile(tmp_path: Path, event_log: Path) -> None:
    bed = Bed(tmp_path)
    bed.container("small", GpuRequest(mig_profile="1g.10gb"))
    late = bed.idle_past_timeout()
    bed.wait((GpuRequest(mig_profile="3g.40gb"), 2001), (COUNT, 2001))  # a whole-GPU user's count: no slice
    assert bed.decide(late)["small"].reason == "idle 2h of 2h, but nobody waits for a MIG 1g.10gb slice"
    bed.wait((COUNT, 2002))  # a student's --gpus 1 takes a slice of a profile they may have
    assert bed.decide(late + 60)["small"].action == "stop"


def test_always_stops_an_idle_container_whatever_waits(tmp_path: Path, event_log: Path) -> None:
    bed = Bed(tmp_path, mode="always")
    bed.container("whole", COUNT)
    stop = bed.decide(bed.idle_past_timeout())["whole"]
    assert (stop.action, stop.reason) == ("stop", "idle 2h, limit 2h")
    assert not bed.messages[-1].endswith("others wait for its GPUs.")


@pytest.mark.parametrize("mode", IDLE_RECLAIM_MODES)
def test_warnings_and_max_runtime_are_the_same_in_both_modes(tmp_path: Path, event_log: Path, mode: str) -> None:
    bed = Bed(tmp_path, mode)
    bed.container("whole", COUNT)
    bed.decide(T0)
    bed.decide(T0 + 60)
    half = bed.decide(T0 + 60 + HOUR)["whole"]
    assert (half.action, half.reason) == ("warn", "idle 1h of 2h (50%)")  # nobody waits, the warning goes out
    assert "will be stopped in 1h" in bed.messages[-1]
    later = ", or later, once someone waits for its GPUs (touch"
    assert (later in bed.messages[-1]) is (mode == "when_waiting")  # ... and says when it will really be
    assert bed.decide(T0 + 60 + int(1.8 * HOUR))["whole"].action == "warn"
    assert [e["details"]["fraction"] for e in events(event_log) if e["type"] == "cleanup.warn"] == [0.5, 0.9]  # type: ignore[index]
    over = bed.decide(T0 - HOUR + 48 * HOUR)["whole"]
    assert (over.action, over.reason) == ("stop", "running 2d, limit 2d")  # nobody waits: stopped all the same


def test_a_damaged_queue_file_is_an_error_and_the_run_reclaims_as_always(tmp_path: Path, event_log: Path) -> None:
    bed = Bed(tmp_path)
    bed.container("whole", COUNT)
    late = bed.idle_past_timeout()
    (bed.state / queuestate.STATE_FILE).write_text('{"version": 1, "waiting": [')
    dry = bed.run(late, dry_run=True)
    assert dry.decisions[0].action == "stop" and len(dry.errors) == 1
    assert not any(e["type"] == "cleanup.queue_unreadable" for e in events(event_log))  # a dry run writes none
    outcome = bed.run(late)
    [error] = outcome.errors
    assert "queue.json" in error and "idle_reclaim: always" in error
    assert outcome.decisions[0].reason == ("idle 2h, limit 2h; the queue's state cannot be read, so stopped as "
                                           "with idle_reclaim: always")
    assert bed.engine.stopped == ["id-whole"]
    [unreadable] = [e for e in events(event_log) if e["type"] == "cleanup.queue_unreadable"]
    assert unreadable["details"]["path"] == str(bed.state / queuestate.STATE_FILE)  # type: ignore[index]


@pytest.mark.parametrize("text", ['{"version": 1}', '{"version": 1, "waiting": [], "fairshare": {}, '
                                  '"waits": {"counts": [0,0,0,0,0,0,0,0,0,0,0,0], "total_seconds": 0}}', "[]"])
def test_queue_files_damaged_in_other_ways_are_errors_too(tmp_path: Path, event_log: Path, text: str) -> None:
    bed = Bed(tmp_path)
    bed.container("whole", COUNT)
    late = bed.idle_past_timeout()
    (bed.state / queuestate.STATE_FILE).write_text(text)  # the second lacks updated_at
    outcome = bed.run(late)
    assert len(outcome.errors) == 1 and outcome.decisions[0].action == "stop"


def test_no_queue_file_means_nobody_waits(tmp_path: Path, event_log: Path) -> None:
    bed = Bed(tmp_path)
    bed.container("whole", COUNT)
    outcome = bed.run(bed.idle_past_timeout())
    assert outcome.errors == [] and outcome.decisions[0].action == "none"
    assert not (bed.state / queuestate.STATE_FILE).exists()
