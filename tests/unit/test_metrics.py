"""The exporter without a test bed: the metrics of a hand-built Snapshot, read from a fresh registry, and the
sampler driven by a fake inventory, a fake container list, fake image inspects, an image ownership record and a
/proc tree written under tmp_path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ds01 import labels, nvml
from ds01.errors import EngineError, NvmlError
from ds01.exporter.metrics import SnapshotCollector
from ds01.exporter.snapshot import (
    SOURCES,
    Collector,
    Device,
    ImageInspect,
    ProcessRow,
    Snapshot,
    UserLimits,
    XidCounts,
)
from ds01.gpus.allocator import Allocation
from ds01.paths import Paths
from ds01.proxy.imagestore import STATE_FILE, ImageStore, PendingImage
from ds01.records import ContainerSummary

REPO = Path(__file__).resolve().parents[2]
HOST = "gpu-host"
MIB = 2**20
MODEL = "NVIDIA A100-SXM4-80GB"
WHOLE = "GPU-00000000-0000-0000-0000-000000000000"
PARENT = "GPU-11111111-1111-1111-1111-111111111111"
MIG = "MIG-22222222-2222-2222-2222-222222222222"
LOST = "GPU-33333333-3333-3333-3333-333333333333"
TRAIN, LEGACY, BARE, STRAY = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
UNSET = "4294967295\n"  # no login: the uid comes from status


def process(pid: int, mib: int, device: str) -> nvml.GpuProcess:
    return nvml.GpuProcess(pid=pid, used_memory_bytes=mib * MIB, device_uuid=device)


def whole_gpu(index: int, uuid: str, processes: tuple[nvml.GpuProcess, ...]) -> nvml.Gpu:
    return nvml.Gpu(index=index, uuid=uuid, name=MODEL, serial=None, pci_bus_id=f"00000000:0{index}:00.0",
                    memory_total_bytes=81920 * MIB, memory_used_bytes=20000 * MIB, utilization_gpu_percent=37,
                    utilization_memory_percent=12, temperature_celsius=41, power_watts=250.5,
                    power_limit_watts=400.0, mig_mode=False, mig_devices=(), processes=processes)


def mig_gpu(index: int, processes: tuple[nvml.GpuProcess, ...]) -> nvml.Gpu:
    mig = nvml.MigDevice(uuid=MIG, parent_uuid=PARENT, index=0, gpu_instance_id=2, compute_instance_id=0,
                         profile="3g.40gb", slices=3, memory_total_bytes=40960 * MIB, memory_used_bytes=5000 * MIB,
                         processes=processes)
    return replace(whole_gpu(index, PARENT, processes), utilization_gpu_percent=0, mig_mode=True, mig_devices=(mig,))


def inventory(*gpus: nvml.Gpu | nvml.UnavailableGpu) -> nvml.Inventory:
    return nvml.Inventory(driver_version="550.54.15", cuda_driver_version=12040, gpus=gpus)


# --- metrics of a Snapshot -------------------------------------------------------------------------------------

ON_WHOLE = Device("0", WHOLE, WHOLE, "", "")
ON_MIG = Device("1.0", MIG, PARENT, "2", "3g.40gb")
HW = {"gpu": "0", "UUID": WHOLE, "modelName": MODEL, "Hostname": HOST, "GPU_I_ID": "", "GPU_I_PROFILE": ""}
HW_MIG = {"gpu": "1.0", "UUID": MIG, "modelName": MODEL, "Hostname": HOST, "GPU_I_ID": "2", "GPU_I_PROFILE": "3g.40gb"}
AT_WHOLE = {"gpu": "0", "UUID": WHOLE, "GPU_I_ID": "", "GPU_I_PROFILE": "", "Hostname": HOST}
AT_MIG = {"gpu": "1.0", "UUID": MIG, "GPU_I_ID": "2", "GPU_I_PROFILE": "3g.40gb", "Hostname": HOST}


def snapshot() -> Snapshot:
    return Snapshot(
        taken_at=1_700_000_000.0, duration_seconds=0.25, hostname=HOST,
        inventory=inventory(whole_gpu(0, WHOLE, ()), mig_gpu(1, ()),
                            nvml.UnavailableGpu(2, LOST, nvml.Health("lost", "GPU 2 has fallen off the bus")),
                            nvml.UnavailableGpu(3, None, nvml.Health("error", "NVML failed to query GPU 3"))),
        processes=(ProcessRow(ON_WHOLE, "alice", "train", "container", 3000 * MIB),
                   ProcessRow(ON_WHOLE, "alice", "train", "container", 1000 * MIB),
                   ProcessRow(ON_WHOLE, "carol", "", "host", 14336 * MIB),
                   ProcessRow(ON_MIG, "carol", "legacy._.1003", "unmanaged_container", 1024 * MIB)),
        containers=(ContainerSummary(TRAIN, "train", {labels.USER: "alice"}, "running"),
                    ContainerSummary(LEGACY, "legacy._.1003", {}, "running"),
                    ContainerSummary(BARE, "old", {labels.USER: "alice"}, "exited")),
        allocations=(Allocation("a-1", "alice", 1001, (WHOLE,), Fraction(1), 0.0, None, TRAIN, "train", 1.0),
                     Allocation("a-2", "bob", 1002, (MIG,), Fraction(3, 7), 0.0, 600.0)),
        users=(UserLimits("alice", "student", 1.0, 3),),
        image_storage={"alice": 3 * 2**30, "bob": 0},
        xids={WHOLE: XidCounts(79, {31: 1, 79: 2})},
        events={"proxy.allow": 5, "gpu.xid": 3},
        source_up={**dict.fromkeys(SOURCES, True), "nvml": False},
        errors_total={**dict.fromkeys(SOURCES, 0), "nvml": 2},
        collections_total=7,
        problems=("nvml: GPU 2 is lost: GPU 2 has fallen off the bus",))


@pytest.fixture
def registry() -> CollectorRegistry:
    fresh = CollectorRegistry()
    taken = snapshot()
    fresh.register(SnapshotCollector(lambda: taken))
    return fresh


def series(registry: CollectorRegistry, name: str) -> Iterator[dict[str, str]]:
    for family in registry.collect():
        yield from (sample.labels for sample in family.samples if sample.name == name)


def test_gpu_utilisation_and_memory_carry_dcgm_labels(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    assert value("ds01_gpu_utilization_ratio", HW) == pytest.approx(0.37)
    assert value("ds01_gpu_memory_utilization_ratio", HW) == pytest.approx(0.12)
    assert value("ds01_gpu_memory_used_bytes", HW) == 20000 * MIB
    assert value("ds01_gpu_memory_total_bytes", HW) == 81920 * MIB
    assert (value("ds01_gpu_temperature_celsius", HW), value("ds01_gpu_power_watts", HW)) == (41, 250.5)
    assert value("ds01_gpu_info", {**HW, "pci_bus_id": "00000000:00:00.0", "driver_version": "550.54.15",
                                   "mig_mode": "false", "parent_uuid": ""}) == 1


def test_a_mig_device_has_its_memory_and_no_utilisation(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    assert value("ds01_gpu_memory_used_bytes", HW_MIG) == 5000 * MIB
    assert value("ds01_gpu_memory_total_bytes", HW_MIG) == 40960 * MIB
    assert value("ds01_gpu_info", {**HW_MIG, "pci_bus_id": "00000000:01:00.0", "driver_version": "550.54.15",
                                   "mig_mode": "true", "parent_uuid": PARENT}) == 1
    parent = {**HW, "gpu": "1", "UUID": PARENT}
    assert value("ds01_gpu_utilization_ratio", parent) is None  # NVML has none per MIG device
    assert value("ds01_gpu_memory_utilization_ratio", parent) == pytest.approx(0.12)


def test_processes_are_attributed_to_user_and_container(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    in_train = {**AT_WHOLE, "user": "alice", "container": "train", "kind": "container"}
    assert value("ds01_gpu_processes", in_train) == 2
    assert value("ds01_gpu_process_memory_bytes", in_train) == 4000 * MIB
    assert value("ds01_container_gpu_memory_bytes", {"container": "train", "user": "alice"}) == 4000 * MIB
    assert value("ds01_user_gpu_memory_bytes", {"user": "alice"}) == 4000 * MIB
    assert value("ds01_user_gpu_memory_bytes", {"user": "carol"}) == (14336 + 1024) * MIB
    assert not any("pid" in found for family in registry.collect() for found in (s.labels for s in family.samples))


def test_processes_outside_managed_containers_are_flagged(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    assert value("ds01_gpu_processes", {**AT_WHOLE, "user": "carol", "container": "", "kind": "host"}) == 1
    legacy = {**AT_MIG, "user": "carol", "container": "legacy._.1003", "kind": "unmanaged_container"}
    assert value("ds01_gpu_process_memory_bytes", legacy) == 1024 * MIB
    assert value("ds01_untracked_gpu_processes", {"user": "carol"}) == 2
    assert value("ds01_untracked_gpu_processes", {"user": "alice"}) is None
    assert value("ds01_untracked_gpu_memory_bytes", {"user": "carol", "gpu_uuid": WHOLE}) == 14336 * MIB
    # A MIG process counts against its physical GPU.
    assert value("ds01_untracked_gpu_memory_bytes", {"user": "carol", "gpu_uuid": PARENT}) == 1024 * MIB
    assert value("ds01_unmanaged_container_gpu_processes", {"container": "legacy._.1003"}) == 1
    assert value("ds01_container_gpu_memory_bytes", {"container": "legacy._.1003", "user": "carol"}) is None


def test_an_unavailable_gpu_is_unhealthy_with_its_reason(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    assert value("ds01_gpu_healthy", {"gpu": "2", "UUID": LOST, "Hostname": HOST, "reason": "lost"}) == 0
    assert value("ds01_gpu_healthy", {"gpu": "3", "UUID": "", "Hostname": HOST, "reason": "error"}) == 0
    assert value("ds01_gpu_healthy", {"gpu": "0", "UUID": WHOLE, "Hostname": HOST, "reason": "ok"}) == 1
    # No hardware series for the GPUs NVML cannot answer for: only their health.
    assert {found["gpu"] for found in series(registry, "ds01_gpu_memory_total_bytes")} == {"0", "1", "1.0"}
    assert {found["gpu"] for found in series(registry, "ds01_gpu_last_xid")} == {"0", "1"}


def test_xids_are_exported_per_gpu_and_code(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    on_whole = {"gpu": "0", "UUID": WHOLE, "Hostname": HOST}
    assert value("ds01_gpu_last_xid", on_whole) == 79
    assert value("ds01_gpu_last_xid", {**on_whole, "gpu": "1", "UUID": PARENT}) == 0
    assert value("ds01_gpu_xid_errors_total", {**on_whole, "xid": "79"}) == 2
    assert value("ds01_gpu_xid_errors_total", {**on_whole, "xid": "31"}) == 1


def test_allocations_limits_and_containers(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    bound = {"UUID": WHOLE, "user": "alice", "container": "train", "state": "bound"}
    assert value("ds01_allocation_gpu_equivalents", bound) == 1
    reserved = {"UUID": MIG, "user": "bob", "container": "", "state": "reserved"}
    assert value("ds01_allocation_gpu_equivalents", reserved) == pytest.approx(3 / 7)
    assert value("ds01_user_gpu_equivalents", {"user": "bob"}) == pytest.approx(3 / 7)
    assert value("ds01_container_gpu_equivalents", {"container": "train", "user": "alice"}) == 1
    assert value("ds01_user_gpu_quota", {"user": "alice", "group": "student"}) == 1
    assert value("ds01_user_max_containers", {"user": "alice", "group": "student"}) == 3
    assert value("ds01_containers", {"user": "alice", "state": "running"}) == 1
    assert value("ds01_containers", {"user": "alice", "state": "exited"}) == 1
    assert value("ds01_containers", {"user": "unmanaged", "state": "running"}) == 1


def test_the_exporter_counts_its_collections_errors_and_events(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    assert value("ds01_exporter_collections_total") == 7
    assert value("ds01_exporter_errors_total", {"source": "nvml"}) == 2
    assert value("ds01_exporter_source_up", {"source": "nvml"}) == 0
    assert {found["source"] for found in series(registry, "ds01_exporter_errors_total")} == set(SOURCES)
    assert [value("ds01_exporter_source_up", {"source": s}) for s in SOURCES if s != "nvml"] == [1] * (len(SOURCES) - 1)
    assert value("ds01_exporter_collection_duration_seconds") == 0.25
    assert value("ds01_exporter_last_collection_timestamp_seconds") == 1_700_000_000.0
    assert value("ds01_events_total", {"type": "proxy.allow"}) == 5


def test_image_storage_is_exported_per_user_with_images(registry: CollectorRegistry) -> None:
    value = registry.get_sample_value
    assert value("ds01_image_storage_bytes", {"user": "alice"}) == 3 * 2**30
    assert value("ds01_image_storage_bytes", {"user": "bob"}) == 0  # an image of no layers of its own
    assert {found["user"] for found in series(registry, "ds01_image_storage_bytes")} == {"alice", "bob"}


def test_nothing_is_exported_before_the_first_collection() -> None:
    fresh = CollectorRegistry()
    fresh.register(SnapshotCollector(lambda: None))
    assert list(fresh.collect()) == []


# --- the sampler over fake sources -----------------------------------------------------------------------------


class FakeGpus:
    def __init__(self, answer: nvml.Inventory | NvmlError) -> None:
        self.answer = answer

    def inventory(self) -> nvml.Inventory:
        if isinstance(self.answer, NvmlError):
            raise self.answer
        return self.answer


class FakeContainers:
    def __init__(self, answer: list[ContainerSummary] | EngineError) -> None:
        self.answer = answer

    def summaries(self) -> list[ContainerSummary]:
        if isinstance(self.answer, EngineError):
            raise self.answer
        return self.answer


CONTAINERS = [ContainerSummary(TRAIN, "train", {labels.USER: "alice"}, "running"),
              ContainerSummary(LEGACY, "legacy", {labels.LEGACY_USER: "dave"}, "running"),
              ContainerSummary(BARE, "old._.0", {}, "running")]  # the uid in the old system's name: root


def write_process(root: Path, pid: int, cgroup: str, loginuid: str, uid: int) -> Path:
    directory = root / str(pid)
    directory.mkdir(parents=True)
    (directory / "cgroup").write_text(cgroup)
    (directory / "loginuid").write_text(loginuid)
    (directory / "status").write_text(f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    return directory


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    write_process(root, 100, f"0::/system.slice/docker-{TRAIN}.scope\n", UNSET, 1001)
    write_process(root, 101, "0::/user.slice/user-0.slice/session-4.scope\n", "0\n", 1003)  # sudo after login
    write_process(root, 102, f"0::/docker/{LEGACY}\n", UNSET, 1004)
    write_process(root, 103, f"0::/system.slice/docker-{BARE}.scope\n", UNSET, 0)
    write_process(root, 104, f"0::/system.slice/docker-{STRAY}.scope\n", UNSET, 0)  # the engine does not list it
    return root  # no 105: it ended between NVML's list and the read


class FakeImages:
    """The engine's image inspects, by id; `failure` is raised by every inspect while set."""

    def __init__(self, inspects: dict[str, dict[str, Any]]) -> None:
        self.inspects = inspects
        self.failure: EngineError | None = None

    def inspector(self) -> contextlib.AbstractContextManager[ImageInspect]:
        return contextlib.nullcontext(self.inspect)

    def inspect(self, image_id: str) -> dict[str, Any] | None:
        if self.failure is not None:
            raise self.failure
        return self.inspects.get(image_id)


def sampler(tmp_path: Path, proc: Path, gpus: FakeGpus, containers: FakeContainers,
            images: FakeImages | None = None) -> Collector:
    paths = Paths(config=REPO / "config" / "resource-limits.yaml", state_dir=tmp_path / "state",
                  log_dir=tmp_path / "log", run_dir=tmp_path / "run")
    return Collector(paths, gpus, containers, images or FakeImages({}), proc)


SCENE = inventory(whole_gpu(0, WHOLE, (process(100, 3000, WHOLE), process(101, 500, WHOLE), process(105, 9, WHOLE))),
                  mig_gpu(1, (process(102, 100, MIG), process(103, 200, MIG), process(104, 300, MIG))))


def rows(taken: Snapshot) -> set[tuple[str, str, str, str, int]]:
    return {(r.device.gpu, r.user, r.container, r.kind, r.memory_bytes // MIB) for r in taken.processes}


def test_the_sampler_attributes_each_process(tmp_path: Path, proc: Path) -> None:
    taken = sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS)).collect()
    assert rows(taken) == {
        ("0", "alice", "train", "container", 3000),  # the ds01.user label names the owner
        ("0", "root", "", "host", 500),  # the login uid, not the uid sudo gave
        ("1.0", "dave", "legacy", "unmanaged_container", 100),  # the old system's label
        ("1.0", "root", "old._.0", "unmanaged_container", 200),  # the uid in the old system's name
        ("1.0", "root", STRAY[:12], "unmanaged_container", 300),  # a container the engine did not list
    }
    assert {r.device for r in taken.processes if r.device.gpu == "1.0"} == {ON_MIG}
    assert (taken.source_up, taken.problems, taken.collections_total) == (dict.fromkeys(SOURCES, True), (), 1)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: taken))
    in_train = {"gpu": "0", "UUID": WHOLE, "GPU_I_ID": "", "GPU_I_PROFILE": "", "Hostname": taken.hostname,
                "user": "alice", "container": "train", "kind": "container"}
    assert registry.get_sample_value("ds01_gpu_processes", in_train) == 1
    assert registry.get_sample_value("ds01_untracked_gpu_processes", {"user": "root"}) == 3


def test_with_the_engine_down_the_last_container_list_still_attributes(tmp_path: Path, proc: Path) -> None:
    containers = FakeContainers(CONTAINERS)
    collector = sampler(tmp_path, proc, FakeGpus(SCENE), containers)
    first = collector.collect()
    containers.answer = EngineError("the Docker engine failed to list containers")
    second = collector.collect()
    assert rows(second) == rows(first)
    assert second.containers == tuple(CONTAINERS)
    assert (second.source_up["engine"], second.source_up["nvml"]) == (False, True)
    assert (second.errors_total["engine"], second.collections_total) == (1, 2)
    assert second.problems == ("engine: the Docker engine failed to list containers",)


def test_with_nvml_down_the_containers_are_still_listed(tmp_path: Path, proc: Path) -> None:
    taken = sampler(tmp_path, proc, FakeGpus(NvmlError("cannot load libnvidia-ml.so.1")),
                    FakeContainers(CONTAINERS)).collect()
    assert (taken.inventory, taken.processes, taken.containers) == (None, (), tuple(CONTAINERS))
    assert (taken.source_up["nvml"], taken.source_up["engine"], taken.errors_total["nvml"]) == (False, True, 1)


def test_an_unavailable_gpu_is_counted_and_the_others_attributed(tmp_path: Path, proc: Path) -> None:
    lost = nvml.UnavailableGpu(2, LOST, nvml.Health("lost", "GPU 2 has fallen off the bus"))
    gpus = FakeGpus(inventory(*SCENE.gpus, lost))
    taken = sampler(tmp_path, proc, gpus, FakeContainers(CONTAINERS)).collect()
    assert len(taken.processes) == 5
    assert (taken.source_up["nvml"], taken.errors_total["nvml"]) == (False, 1)
    assert taken.problems == ("nvml: GPU 2 is lost: GPU 2 has fallen off the bus",)


def test_an_unreadable_process_is_counted_and_the_others_attributed(tmp_path: Path, proc: Path) -> None:
    broken = proc / "101" / "status"
    broken.unlink()
    broken.mkdir()  # reading it fails the way a /proc without permission does, not the way an exit does
    (proc / "101" / "loginuid").write_text(UNSET)
    taken = sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS)).collect()
    assert {r.memory_bytes // MIB for r in taken.processes} == {3000, 100, 200, 300}
    assert (taken.source_up["proc"], taken.errors_total["proc"]) == (False, 1)
    assert str(broken) in taken.problems[0]


# --- image storage: the proxy's ownership record and the engine's inspects ----------------------------------

BASE, STEP, TORCH, GONE, LOOSE = ("sha256:" + c * 64 for c in "01234")
IMAGES = {
    BASE: {"Id": BASE, "Parent": "", "Size": 1000 * MIB, "RepoTags": ["nvcr.io/nvidia/pytorch:24.05-py3"]},
    STEP: {"Id": STEP, "Parent": BASE, "Size": 1300 * MIB, "RepoTags": []},  # a build step: alice's, untagged
    TORCH: {"Id": TORCH, "Parent": STEP, "Size": 1500 * MIB, "RepoTags": ["alice/torch:latest"]},
    LOOSE: {"Id": LOOSE, "Parent": BASE, "Size": 1100 * MIB, "RepoTags": ["<none>:<none>"]},  # carol's, tag gone
}


def record(state_dir: Path, user: str, *image_ids: str) -> None:
    store = ImageStore(state_dir)
    store.settle(store.begin(PendingImage(user, 1000, "build", (f"{user}/x:latest",), "2026-01-01T00:00:00Z")),
                 image_ids)


@pytest.fixture
def owned(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    record(state, "alice", STEP, TORCH)
    record(state, "bob", GONE)  # removed since: the engine has no such image
    record(state, "carol", LOOSE)
    return state


def test_each_users_own_images_are_summed_and_users_without_any_have_no_size(tmp_path: Path, proc: Path,
                                                                           owned: Path) -> None:
    taken = sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS), FakeImages(IMAGES)).collect()
    # Their layers beyond the shared base, down the chain of their own: (1500 - 1300) + (1300 - 1000) MiB; carol's
    # image without a tag is as usable by its id, so its 1100 - 1000 MiB count too.
    assert taken.image_storage == {"alice": 500 * MIB, "carol": 100 * MIB}
    assert (taken.source_up["images"], taken.source_up["engine"], taken.problems) == (True, True, ())
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: taken))
    assert registry.get_sample_value("ds01_image_storage_bytes", {"user": "alice"}) == 500 * MIB
    assert registry.get_sample_value("ds01_image_storage_bytes", {"user": "bob"}) is None


def test_an_engine_that_cannot_inspect_is_counted_and_the_last_sizes_stay(tmp_path: Path, proc: Path,
                                                                          owned: Path) -> None:
    images = FakeImages(IMAGES)
    images.failure = EngineError("the Docker engine failed to inspect image")
    collector = sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS), images)
    first = collector.collect()
    assert first.image_storage == {}  # never read: no series, rather than a size of 0
    assert (first.source_up["engine"], first.errors_total["engine"]) == (False, 1)
    assert first.problems == ("engine: the Docker engine failed to inspect image",)
    images.failure = None
    assert collector.collect().image_storage == {"alice": 500 * MIB, "carol": 100 * MIB}
    images.failure = EngineError("the Docker engine failed to inspect image")
    third = collector.collect()
    assert third.image_storage == {"alice": 500 * MIB, "carol": 100 * MIB}  # stale, marked by source_up
    assert (third.source_up["engine"], third.errors_total["engine"], third.collections_total) == (False, 2, 3)


def test_a_damaged_ownership_record_is_counted_and_the_other_sources_still_collect(tmp_path: Path, proc: Path,
                                                                                   owned: Path) -> None:
    collector = sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS), FakeImages(IMAGES))
    assert collector.collect().image_storage == {"alice": 500 * MIB, "carol": 100 * MIB}
    (owned / STATE_FILE).write_text("{not json")
    taken = collector.collect()
    assert taken.image_storage == {"alice": 500 * MIB, "carol": 100 * MIB}
    assert (taken.source_up["images"], taken.errors_total["images"], taken.source_up["engine"]) == (False, 1, True)
    assert str(owned / STATE_FILE) in taken.problems[0]
    assert len(taken.processes) == 5


def test_without_an_ownership_record_there_is_no_image_storage(tmp_path: Path, proc: Path) -> None:
    taken = sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS), FakeImages(IMAGES)).collect()
    assert (taken.image_storage, taken.source_up["images"]) == ({}, True)


def test_the_ownership_record_is_only_read(tmp_path: Path, proc: Path, owned: Path) -> None:
    before = (owned / STATE_FILE).read_bytes()
    stamp = (owned / STATE_FILE).stat().st_mtime_ns
    sampler(tmp_path, proc, FakeGpus(SCENE), FakeContainers(CONTAINERS), FakeImages(IMAGES)).collect()
    assert ((owned / STATE_FILE).read_bytes(), (owned / STATE_FILE).stat().st_mtime_ns) == (before, stamp)
