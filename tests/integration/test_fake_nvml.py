"""Tests of the fake NVML library (tests/fakes/nvml) through the real pynvml and nvitop.

The library is loaded by pynvml as ``libnvidia-ml.so.1``, so LD_LIBRARY_PATH must point at
the directory that ``tests/fakes/nvml/build.sh`` built it into before pytest starts.
Each test writes its own topology file into ``tmp_path`` and points FAKE_NVML_TOPOLOGY at it.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pynvml
import pytest

TOPOLOGIES = Path(__file__).resolve().parents[1] / "fakes" / "topologies"
MIB = 1024 * 1024
NO_INSTANCE = 0xFFFFFFFF
XID_EVENT = pynvml.nvmlEventTypeXidCriticalError
SENTINEL_PID = 0xDEAD

Topology = dict[str, Any]


class ProcessInfoV1(ctypes.Structure):
    """nvmlProcessInfo_v1_t, as filled by nvmlDeviceGetComputeRunningProcesses."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class ProcessInfoV2(ctypes.Structure):
    """nvmlProcessInfo_t, as filled by the _v2 and _v3 process list calls."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class EventDataV1(ctypes.Structure):
    """The original nvmlEventData_t used by nvmlEventSetWait (no instance ids)."""

    _fields_ = [
        ("device", ctypes.c_void_p),
        ("eventType", ctypes.c_ulonglong),
        ("eventData", ctypes.c_ulonglong),
    ]


# ---- helpers ------------------------------------------------------------------------------


def load_shipped(name: str) -> Topology:
    """Return a fresh copy of a topology file shipped in tests/fakes/topologies."""
    topology: Topology = json.loads((TOPOLOGIES / name).read_text())
    return topology


def write_text_atomically(path: Path, text: str) -> None:
    """Replace the file by rename, as a running system would see it change."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_topology(path: Path, topology: Topology) -> None:
    write_text_atomically(path, json.dumps(topology))


@contextmanager
def nvml() -> Iterator[None]:
    """Initialise NVML for the duration of the block."""
    pynvml.nvmlInit()
    try:
        yield
    finally:
        pynvml.nvmlShutdown()


def last_error() -> str:
    """The fake's explanation of why the topology is unusable ("" when it is fine)."""
    fn = ctypes.CDLL("libnvidia-ml.so.1").fakeNvmlLastError
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    message: bytes = fn()
    return message.decode()


def lib_call(symbol: str, *args: object) -> int:
    """Call an NVML symbol directly, bypassing pynvml's wrappers; return the status code."""
    return int(getattr(pynvml.nvmlLib, symbol)(*args))


def raw_processes(
    symbol: str,
    handle: object,
    struct: type[ctypes.Structure],
    capacity: int,
) -> tuple[int, int, ctypes.Array[Any]]:
    """Call a process-list symbol with room for `capacity` entries (None buffer when 0)."""
    count = ctypes.c_uint(capacity)
    array = (struct * max(capacity, 1))()
    for entry in array:
        entry.pid = SENTINEL_PID
    ret = lib_call(symbol, handle, ctypes.byref(count), array if capacity else None)
    return ret, count.value, array


def gpu_index(handle: object) -> int:
    return int(pynvml.nvmlDeviceGetIndex(handle))


def start_sleeper() -> subprocess.Popen[bytes]:
    """Start a `sleep` and wait until its exec has finished, so /proc shows it as sleep."""
    proc = subprocess.Popen(["sleep", "600"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fake_library() -> None:
    """Fail clearly when LD_LIBRARY_PATH does not lead pynvml to the fake."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        pytest.fail(
            f"libnvidia-ml.so.1 not loadable ({exc}); build it with "
            "tests/fakes/nvml/build.sh DIR and set LD_LIBRARY_PATH=DIR"
        )
    if not hasattr(lib, "fakeNvmlLastError"):
        pytest.fail("libnvidia-ml.so.1 on LD_LIBRARY_PATH is not the fake NVML library")


@pytest.fixture
def topo_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "topology.json"
    monkeypatch.setenv("FAKE_NVML_TOPOLOGY", str(path))
    return path


@pytest.fixture
def a100(topo_path: Path) -> Topology:
    """The shipped 8x A100 topology, written to the test's topology file."""
    topology = load_shipped("a100-8gpu.json")
    write_topology(topo_path, topology)
    return topology


# ---- inventory -----------------------------------------------------------------------------


def test_inventory_matches_small_topology(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    write_topology(topo_path, topology)
    with nvml():
        assert pynvml.nvmlSystemGetDriverVersion() == topology["driver_version"]
        assert pynvml.nvmlSystemGetCudaDriverVersion() == topology["cuda_driver_version"]
        assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == topology["cuda_driver_version"]
        cuda_major = topology["cuda_driver_version"] // 1000
        assert pynvml.nvmlSystemGetNVMLVersion() == f"{cuda_major}.{topology['driver_version']}"
        assert pynvml.nvmlDeviceGetCount() == 2
        assert last_error() == ""

        for index, gpu in enumerate(topology["gpus"]):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            assert pynvml.nvmlDeviceGetName(handle) == gpu["name"]
            assert pynvml.nvmlDeviceGetUUID(handle) == gpu["uuid"]
            assert pynvml.nvmlDeviceGetSerial(handle) == gpu["serial"]
            assert gpu_index(handle) == index
            assert pynvml.nvmlDeviceGetMinorNumber(handle) == index

            pci = pynvml.nvmlDeviceGetPciInfo(handle)
            assert pci.busId == gpu["pci_bus_id"]
            domain, bus, rest = gpu["pci_bus_id"].split(":")
            assert pci.busIdLegacy == f"{domain[-4:]}:{bus}:{rest}"
            assert (pci.domain, pci.bus, pci.device) == (int(domain, 16), int(bus, 16), 0)
            assert pci.pciDeviceId == gpu["pci_device_id"]

            used = sum(p["used_memory_mib"] for p in gpu["processes"]) * MIB
            total = gpu["memory_total_mib"] * MIB
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            assert (memory.total, memory.used, memory.free) == (total, used, total - used)
            memory_v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            assert (memory_v2.total, memory_v2.used, memory_v2.free) == (total, used, total - used)

            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            assert (rates.gpu, rates.memory) == (gpu["utilization_gpu"], gpu["utilization_memory"])
            temperature = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            assert temperature == gpu["temperature_c"]
            assert pynvml.nvmlDeviceGetPowerUsage(handle) == round(gpu["power_w"] * 1000)
            limit_mw = gpu["power_limit_w"] * 1000
            assert pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) == limit_mw
            assert pynvml.nvmlDeviceGetPowerManagementLimit(handle) == limit_mw
            assert pynvml.nvmlDeviceGetPersistenceMode(handle) == pynvml.NVML_FEATURE_ENABLED
            assert pynvml.nvmlDeviceGetComputeMode(handle) == pynvml.NVML_COMPUTEMODE_DEFAULT

            for lookup in (
                pynvml.nvmlDeviceGetHandleByUUID(gpu["uuid"]),
                pynvml.nvmlDeviceGetHandleByPciBusId(gpu["pci_bus_id"]),
                pynvml.nvmlDeviceGetHandleByPciBusId(pci.busIdLegacy.lower()),
            ):
                assert gpu_index(lookup) == index


def test_lookup_errors_and_buffer_sizes(topo_path: Path) -> None:
    write_topology(topo_path, load_shipped("small-2gpu.json"))
    with nvml():
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetHandleByPciBusId("00000000:99:00.0")
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetHandleByIndex(2)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetTemperature(pynvml.nvmlDeviceGetHandleByIndex(0), 7)

        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = ctypes.create_string_buffer(8)
        ret = lib_call("nvmlDeviceGetName", handle, name, ctypes.c_uint(8))
        assert ret == pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        memory = pynvml.c_nvmlMemory_v2_t()
        memory.version = 1
        ret = lib_call("nvmlDeviceGetMemoryInfo_v2", handle, ctypes.byref(memory))
        assert ret == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        bogus = ctypes.c_void_p(0x1234)
        ret = lib_call("nvmlDeviceGetName", bogus, name, ctypes.c_uint(8))
        assert ret == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_init_is_reference_counted(topo_path: Path) -> None:
    write_topology(topo_path, load_shipped("small-2gpu.json"))
    pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 2
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_process_name(topo_path: Path) -> None:
    write_topology(topo_path, load_shipped("small-2gpu.json"))
    sleeper = start_sleeper()
    try:
        with nvml():
            assert pynvml.nvmlSystemGetProcessName(sleeper.pid).endswith("sleep")
            sleeper.kill()
            sleeper.wait()
            with pytest.raises(pynvml.NVMLError_NotFound):
                pynvml.nvmlSystemGetProcessName(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- live edits ------------------------------------------------------------------------------


def test_topology_edits_are_seen_without_reinit(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    write_topology(topo_path, topology)
    with nvml():
        handle = pynvml.nvmlDeviceGetHandleByIndex(1)
        assert pynvml.nvmlDeviceGetUtilizationRates(handle).gpu == 0
        assert pynvml.nvmlDeviceGetMemoryInfo(handle).used == 0
        assert pynvml.nvmlDeviceGetComputeRunningProcesses(handle) == []

        gpu = topology["gpus"][1]
        gpu["utilization_gpu"] = 93
        gpu["temperature_c"] = 71
        gpu["power_w"] = 377
        gpu["processes"] = [{"pid": 777, "used_memory_mib": 3000}]
        topology["gpus"].append({"uuid": "GPU-3c8f0b52-5a0e-4a35-9bd6-3b1a2b7f9e10"})
        write_topology(topo_path, topology)

        assert pynvml.nvmlDeviceGetUtilizationRates(handle).gpu == 93
        assert pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU) == 71
        assert pynvml.nvmlDeviceGetPowerUsage(handle) == 377_000
        assert pynvml.nvmlDeviceGetMemoryInfo(handle).used == 3000 * MIB
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        assert [(p.pid, p.usedGpuMemory) for p in procs] == [(777, 3000 * MIB)]
        assert pynvml.nvmlDeviceGetCount() == 3
        added = pynvml.nvmlDeviceGetHandleByIndex(2)
        assert pynvml.nvmlDeviceGetName(added) == "NVIDIA A100-SXM4-80GB"  # the default

        # A GPU that disappears from the file acts like one that fell off the bus.
        del topology["gpus"][1:]
        write_topology(topo_path, topology)
        assert pynvml.nvmlDeviceGetCount() == 1
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            pynvml.nvmlDeviceGetName(handle)


def test_concurrent_queries_during_rewrites(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    write_topology(topo_path, topology)
    seen: set[int] = set()
    errors: list[pynvml.NVMLError] = []
    finished: list[bool] = []
    done = threading.Event()

    def query() -> None:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        try:
            while not done.is_set():
                seen.add(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError as exc:
            errors.append(exc)
        finished.append(True)

    with nvml():
        threads = [threading.Thread(target=query) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for round_number in range(40):
                topology["gpus"][0]["utilization_gpu"] = 10 if round_number % 2 else 20
                write_topology(topo_path, topology)
        finally:
            done.set()
            for thread in threads:
                thread.join()
    assert errors == []
    assert len(finished) == len(threads)
    assert seen <= {10, 20, 45}  # 45: the shipped value, before the first rewrite


# ---- XID events ----------------------------------------------------------------------------------


def test_xid_events_are_delivered_in_order(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    topology["gpus"][1]["xid_events"] = [{"xid": 13}]  # happened before anyone listened
    write_topology(topo_path, topology)
    with nvml():
        handle = pynvml.nvmlDeviceGetHandleByIndex(1)
        assert pynvml.nvmlDeviceGetSupportedEventTypes(handle) & XID_EVENT
        event_set = pynvml.nvmlEventSetCreate()
        try:
            pynvml.nvmlDeviceRegisterEvents(handle, XID_EVENT, event_set)
            with pytest.raises(pynvml.NVMLError_Timeout):
                pynvml.nvmlEventSetWait(event_set, 0)

            topology["gpus"][1]["xid_events"] += [{"xid": 79}, {"xid": 48, "gi_id": 2, "ci_id": 0}]
            topology["gpus"][0]["xid_events"] = [{"xid": 31}]  # GPU 0 is not registered
            write_topology(topo_path, topology)

            first = pynvml.nvmlEventSetWait(event_set, 1000)
            assert (first.eventType, first.eventData) == (XID_EVENT, 79)
            assert (first.gpuInstanceId, first.computeInstanceId) == (NO_INSTANCE, NO_INSTANCE)
            assert gpu_index(first.device) == 1
            second = pynvml.nvmlEventSetWait_v2(event_set, 1000)
            assert second.eventData == 48
            assert (second.gpuInstanceId, second.computeInstanceId) == (2, 0)
            with pytest.raises(pynvml.NVMLError_Timeout):
                pynvml.nvmlEventSetWait(event_set, 100)
        finally:
            pynvml.nvmlEventSetFree(event_set)


def test_xid_event_wakes_a_blocked_waiter(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    write_topology(topo_path, topology)
    received: list[int] = []
    with nvml():
        event_set = pynvml.nvmlEventSetCreate()
        try:
            pynvml.nvmlDeviceRegisterEvents(
                pynvml.nvmlDeviceGetHandleByIndex(0),
                XID_EVENT,
                event_set,
            )
            waiter = threading.Thread(
                target=lambda: received.append(
                    pynvml.nvmlEventSetWait(event_set, 10_000).eventData,
                ),
            )
            waiter.start()
            topology["gpus"][0]["xid_events"] = [{"xid": 94}]
            write_topology(topo_path, topology)
            waiter.join()
        finally:
            pynvml.nvmlEventSetFree(event_set)
    assert received == [94]


def test_xid_wait_v1_layout_and_invalid_sets(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    write_topology(topo_path, topology)
    with nvml():
        event_set = pynvml.nvmlEventSetCreate()
        pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(0), XID_EVENT, event_set)
        topology["gpus"][0]["xid_events"] = [{"xid": 43}]
        write_topology(topo_path, topology)

        # Room for the v1 struct plus a guard word that must stay untouched.
        buffer = (ctypes.c_ubyte * (ctypes.sizeof(EventDataV1) + 8))(*([0xAB] * 32))
        ret = lib_call("nvmlEventSetWait", event_set, buffer, ctypes.c_uint(1000))
        assert ret == pynvml.NVML_SUCCESS
        data = EventDataV1.from_buffer(buffer)
        assert (data.eventType, data.eventData) == (XID_EVENT, 43)
        assert bytes(buffer[ctypes.sizeof(EventDataV1) :]) == b"\xab" * 8

        pynvml.nvmlEventSetFree(event_set)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlEventSetFree(event_set)


# ---- lost GPUs -----------------------------------------------------------------------------------


def test_lost_gpu_answers_gpu_is_lost(topo_path: Path, a100: Topology) -> None:
    a100["gpus"][2]["lost"] = True
    write_topology(topo_path, a100)
    with nvml():
        assert pynvml.nvmlDeviceGetCount() == 8
        lost = pynvml.nvmlDeviceGetHandleByIndex(2)
        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(6), 0)
        for query in (
            pynvml.nvmlDeviceGetName,
            pynvml.nvmlDeviceGetUUID,
            pynvml.nvmlDeviceGetMemoryInfo,
            pynvml.nvmlDeviceGetUtilizationRates,
            pynvml.nvmlDeviceGetPowerUsage,
            pynvml.nvmlDeviceGetComputeRunningProcesses,
        ):
            with pytest.raises(pynvml.NVMLError_GpuIsLost):
                query(lost)
        for index in (0, 1, 3, 6):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            assert pynvml.nvmlDeviceGetName(handle) == "NVIDIA A100-SXM4-80GB"

        # Losing a MIG-mode GPU takes its MIG devices with it; recovery brings both back.
        a100["gpus"][6]["lost"] = True
        write_topology(topo_path, a100)
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            pynvml.nvmlDeviceGetName(mig)
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(pynvml.nvmlDeviceGetHandleByIndex(6), 0)
        a100["gpus"][6]["lost"] = False
        write_topology(topo_path, a100)
        assert pynvml.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-80GB MIG 3g.40gb"


# ---- process lists ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "struct"),
    [
        ("nvmlDeviceGetComputeRunningProcesses", ProcessInfoV1),
        ("nvmlDeviceGetComputeRunningProcesses_v2", ProcessInfoV2),
        ("nvmlDeviceGetComputeRunningProcesses_v3", ProcessInfoV2),
    ],
)
def test_process_list_layouts(
    topo_path: Path,
    symbol: str,
    struct: type[ctypes.Structure],
) -> None:
    assert ctypes.sizeof(ProcessInfoV1) == 16
    assert ctypes.sizeof(ProcessInfoV2) == 24
    topology = load_shipped("small-2gpu.json")
    expected = [(101, 100), (202, 2048), (303, 1)]
    topology["gpus"][0]["processes"] = [{"pid": pid, "used_memory_mib": mib} for pid, mib in expected]
    write_topology(topo_path, topology)
    with nvml():
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for capacity in (0, 2):
            ret, count, _ = raw_processes(symbol, handle, struct, capacity)
            assert (ret, count) == (pynvml.NVML_ERROR_INSUFFICIENT_SIZE, 3)

        ret, count, array = raw_processes(symbol, handle, struct, 5)
        assert (ret, count) == (pynvml.NVML_SUCCESS, 3)
        got = [(entry.pid, entry.usedGpuMemory // MIB) for entry in array[:3]]
        assert got == expected
        assert array[3].pid == SENTINEL_PID
        if struct is ProcessInfoV2:
            instances = {(e.gpuInstanceId, e.computeInstanceId) for e in array[:3]}
            assert instances == {(NO_INSTANCE, NO_INSTANCE)}

        idle = pynvml.nvmlDeviceGetHandleByIndex(1)
        ret, count, _ = raw_processes(symbol, idle, struct, 0)
        assert (ret, count) == (pynvml.NVML_SUCCESS, 0)
        graphics = symbol.replace("Compute", "Graphics")
        mps = symbol.replace("Compute", "MPSCompute")
        for other in (graphics, mps):
            ret, count, _ = raw_processes(other, handle, struct, 0)
            assert (ret, count) == (pynvml.NVML_SUCCESS, 0)


def test_thousands_of_processes(topo_path: Path, a100: Topology) -> None:
    for gpu in a100["gpus"]:
        gpu["mig_mode"] = False
    for n in range(2000):
        a100["gpus"][n % 8]["processes"].append({"pid": 10_000 + n, "used_memory_mib": 3})
    write_topology(topo_path, a100)
    with nvml():
        for index in range(8):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            assert sorted(p.pid for p in procs) == list(range(10_000 + index, 12_000, 8))
            assert pynvml.nvmlDeviceGetMemoryInfo(handle).used == 250 * 3 * MIB


# ---- MIG -------------------------------------------------------------------------------------


def test_mig_devices(topo_path: Path, a100: Topology) -> None:
    gpu6 = a100["gpus"][6]
    gpu6["mig_devices"][0]["processes"] = [{"pid": 4343, "used_memory_mib": 1000}]
    gpu6["mig_devices"][2]["processes"] = [{"pid": 4444, "used_memory_mib": 512}]
    write_topology(topo_path, a100)
    with nvml():
        plain = pynvml.nvmlDeviceGetHandleByIndex(0)
        parent = pynvml.nvmlDeviceGetHandleByIndex(6)
        assert pynvml.nvmlDeviceGetMigMode(plain) == [0, 0]
        assert pynvml.nvmlDeviceGetMigMode(parent) == [1, 1]
        assert pynvml.nvmlDeviceGetMaxMigDeviceCount(plain) == 0
        assert pynvml.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
        assert not pynvml.nvmlDeviceIsMigDeviceHandle(parent).value
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetGpuInstanceId(parent)

        for index, spec in enumerate(gpu6["mig_devices"]):
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, index)
            assert pynvml.nvmlDeviceIsMigDeviceHandle(mig).value
            assert pynvml.nvmlDeviceGetName(mig) == f"NVIDIA A100-SXM4-80GB MIG {spec['profile']}"
            assert pynvml.nvmlDeviceGetUUID(mig) == spec["uuid"]
            assert pynvml.nvmlDeviceGetGpuInstanceId(mig) == spec["gi_id"]
            assert pynvml.nvmlDeviceGetComputeInstanceId(mig) == spec["ci_id"]
            assert gpu_index(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)) == 6
            memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
            used = sum(p["used_memory_mib"] for p in spec["processes"]) * MIB
            assert (memory.total, memory.used) == (spec["memory_total_mib"] * MIB, used)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(mig)
            assert [(p.pid, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
                (p["pid"], spec["gi_id"], spec["ci_id"]) for p in spec["processes"]
            ]
            with pytest.raises(pynvml.NVMLError_NotSupported):
                pynvml.nvmlDeviceGetUtilizationRates(mig)

        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, 7)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent)

        aggregated = pynvml.nvmlDeviceGetComputeRunningProcesses(parent)
        by_pid = {p.pid: (p.gpuInstanceId, p.computeInstanceId, p.usedGpuMemory) for p in aggregated}
        assert by_pid == {
            4343: (gpu6["mig_devices"][0]["gi_id"], 0, 1000 * MIB),
            4444: (gpu6["mig_devices"][2]["gi_id"], 0, 512 * MIB),
        }
        memory = pynvml.nvmlDeviceGetMemoryInfo(parent)
        assert (memory.total, memory.used) == (81920 * MIB, 1512 * MIB)

        spec = a100["gpus"][7]["mig_devices"][1]
        by_uuid = pynvml.nvmlDeviceGetHandleByUUID(spec["uuid"])
        assert pynvml.nvmlDeviceIsMigDeviceHandle(by_uuid).value
        assert pynvml.nvmlDeviceGetName(by_uuid) == "NVIDIA A100-SXM4-80GB MIG 2g.20gb"
        assert gpu_index(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(by_uuid)) == 7
        event_set = pynvml.nvmlEventSetCreate()
        try:
            with pytest.raises(pynvml.NVMLError_NotSupported):
                pynvml.nvmlDeviceRegisterEvents(by_uuid, XID_EVENT, event_set)
        finally:
            pynvml.nvmlEventSetFree(event_set)

        # Destroying the MIG device (dropping it from the file) invalidates its handle.
        del a100["gpus"][7]["mig_devices"][1:]
        write_topology(topo_path, a100)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetName(by_uuid)


def test_shipped_a100_topology_is_realistic() -> None:
    topology = load_shipped("a100-8gpu.json")
    gpus = topology["gpus"]
    assert len(gpus) == 8
    assert {gpu["name"] for gpu in gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert {gpu["memory_total_mib"] for gpu in gpus} == {81920}
    for key in ("uuid", "serial", "pci_bus_id"):
        assert len({gpu[key] for gpu in gpus}) == 8
    assert [gpu["mig_mode"] for gpu in gpus] == [False] * 6 + [True, True]
    sizes = {"1g.10gb": 9728, "2g.20gb": 19968, "3g.40gb": 40192, "4g.40gb": 40192}
    for gpu in gpus[6:]:
        assert sum(mig["slices"] for mig in gpu["mig_devices"]) <= 7
        for mig in gpu["mig_devices"]:
            assert mig["memory_total_mib"] == sizes[mig["profile"]]
    for gpu in gpus:
        assert gpu["processes"] == []
        assert gpu["xid_events"] == []
        assert all(mig["processes"] == [] for mig in gpu.get("mig_devices", []))


# ---- bad input --------------------------------------------------------------------------------


def _without_uuid(topology: Topology) -> Topology:
    del topology["gpus"][1]["uuid"]
    return topology


def _negative_memory(topology: Topology) -> Topology:
    topology["gpus"][0]["memory_total_mib"] = -5
    return topology


def _gpus_not_a_list(topology: Topology) -> Topology:
    topology["gpus"] = {"0": topology["gpus"][0]}
    return topology


@pytest.mark.parametrize(
    ("break_topology", "message"),
    [
        (_without_uuid, "gpus[1].uuid is missing"),
        (_negative_memory, "gpus[0].memory_total_mib must be a non-negative integer"),
        (_gpus_not_a_list, "gpus must be a list"),
    ],
)
def test_wrong_shape_fails_init(
    topo_path: Path,
    break_topology: Callable[[Topology], Topology],
    message: str,
) -> None:
    write_topology(topo_path, break_topology(load_shipped("small-2gpu.json")))
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert last_error().startswith(f"{topo_path}: {message}")


def test_invalid_json_fails_init(topo_path: Path) -> None:
    write_text_atomically(topo_path, '{\n  "gpus": [\n    {"uuid": }\n  ]\n}\n')
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert last_error() == f"{topo_path}: not valid JSON near line 3"


def test_missing_file_and_unset_variable_fail_init(
    topo_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert str(topo_path) in last_error()
    assert "No such file" in last_error()

    monkeypatch.delenv("FAKE_NVML_TOPOLOGY")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert last_error() == "FAKE_NVML_TOPOLOGY is not set"


def test_file_going_bad_then_fixed_recovers(topo_path: Path) -> None:
    topology = load_shipped("small-2gpu.json")
    write_topology(topo_path, topology)
    with nvml():
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        write_text_atomically(topo_path, "{ not json")
        with pytest.raises(pynvml.NVMLError_Unknown):
            pynvml.nvmlDeviceGetCount()
        with pytest.raises(pynvml.NVMLError_Unknown):
            pynvml.nvmlDeviceGetName(handle)
        assert last_error() == f"{topo_path}: not valid JSON near line 1"

        broken = copy.deepcopy(topology)
        broken["gpus"][0]["processes"] = [{"used_memory_mib": 1}]
        write_topology(topo_path, broken)
        with pytest.raises(pynvml.NVMLError_Unknown):
            pynvml.nvmlDeviceGetCount()
        assert last_error() == f"{topo_path}: gpus[0].processes[0].pid is missing"

        write_topology(topo_path, topology)
        assert pynvml.nvmlDeviceGetCount() == 2
        assert pynvml.nvmlDeviceGetName(handle) == topology["gpus"][0]["name"]
        assert last_error() == ""


# ---- nvitop acceptance ------------------------------------------------------------------------


def test_nvitop_once_shows_gpus_mig_devices_and_processes(topo_path: Path, a100: Topology) -> None:
    nvitop = Path(sys.executable).parent / "nvitop"
    sleepers = [start_sleeper() for _ in range(3)]
    try:
        full_gpu, mig_a, mig_b = (s.pid for s in sleepers)
        a100["gpus"][0]["processes"] = [{"pid": full_gpu, "used_memory_mib": 2048}]
        a100["gpus"][6]["mig_devices"][0]["processes"] = [{"pid": mig_a, "used_memory_mib": 1000}]
        a100["gpus"][7]["mig_devices"][2]["processes"] = [{"pid": mig_b, "used_memory_mib": 700}]
        write_topology(topo_path, a100)
        result = subprocess.run(
            [str(nvitop), "--once"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "120"},
            check=False,
        )
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "ERROR" not in output
    assert "Driver Version: 550.54.15" in output
    assert output.count("A100-SXM4-80GB") == 8
    for index, gpu in ((6, a100["gpus"][6]), (7, a100["gpus"][7])):
        for mig_index, mig in enumerate(gpu["mig_devices"]):
            assert f"{index}:{mig_index}" in output
            assert mig["profile"] in output
    lines = output.splitlines()
    for pid, where in ((full_gpu, "0"), (mig_a, "6:0"), (mig_b, "7:2")):
        assert any(str(pid) in line and line.lstrip("│ ").startswith(where) for line in lines), (
            f"pid {pid} not listed on GPU {where}:\n{output}"
        )
