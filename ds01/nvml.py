"""The only door to the NVIDIA management library: pynvml calls in, typed values with explicit units out.

A GPU that fails to answer becomes an `UnavailableGpu` entry, so one lost GPU never empties an inventory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml

from ds01.errors import NvmlError

MIB = 1024 * 1024
XID_CRITICAL_EVENT = pynvml.nvmlEventTypeXidCriticalError
_MIG_PROFILE = re.compile(r"MIG (?P<slices>\d+)g\.(?P<rest>\S+)")
_T = TypeVar("_T")


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None where NVML cannot tell (e.g. without permission)
    device_uuid: str  # the GPU or MIG device the process runs on


@dataclass(frozen=True)
class MigDevice:
    uuid: str
    parent_uuid: str
    index: int  # position under the parent GPU
    gpu_instance_id: int
    compute_instance_id: int
    profile: str  # e.g. "3g.40gb"
    slices: int  # compute slices out of 7
    memory_total_bytes: int
    memory_used_bytes: int
    processes: tuple[GpuProcess, ...]


@dataclass(frozen=True)
class Health:
    """Why a GPU cannot be used."""

    reason: str  # "lost" or "error"
    detail: str


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    serial: str | None
    pci_bus_id: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_gpu_percent: int | None
    utilization_memory_percent: int | None
    temperature_celsius: int | None
    power_watts: float | None
    power_limit_watts: float | None
    mig_mode: bool
    mig_devices: tuple[MigDevice, ...]
    processes: tuple[GpuProcess, ...]  # on a MIG-mode GPU: the processes of all its MIG devices


@dataclass(frozen=True)
class UnavailableGpu:
    """A GPU NVML counts but cannot answer for."""

    index: int
    uuid: str | None
    health: Health


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    cuda_driver_version: int | None
    gpus: tuple[Gpu | UnavailableGpu, ...]

    @property
    def available(self) -> tuple[Gpu, ...]:
        return tuple(gpu for gpu in self.gpus if isinstance(gpu, Gpu))


@dataclass(frozen=True)
class XidEvent:
    gpu_uuid: str
    xid: int
    gpu_instance_id: int | None
    compute_instance_id: int | None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _simulation_detail() -> str:
    """The simulated driver (tests/fakes/nvml) explains topology-file problems through an extra symbol."""
    lib = pynvml.nvmlLib
    explain = getattr(lib, "fakeNvmlLastError", None) if lib is not None else None
    if explain is None:
        return ""
    explain.restype = pynvml.c_char_p
    return _text(explain() or b"")


def _as_ds01_error(exc: pynvml.NVMLError, action: str) -> NvmlError:
    code = exc.value
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return NvmlError(
            "cannot load the NVIDIA management library libnvidia-ml.so.1: this host has no NVIDIA driver, "
            "or the library is not on the loader path. Install the NVIDIA driver; for simulated GPUs run "
            "'eval \"$(scripts/testbed env)\"' first."
        )
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return NvmlError("the NVIDIA kernel driver is not loaded: check 'dmesg' and 'lsmod | grep nvidia'.")
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return NvmlError(f"NVML refused to {action}: permission denied. Run as root or as a member of ds01-gpu.")
    detail = _simulation_detail()
    suffix = f" ({detail})" if detail else ""
    return NvmlError(f"NVML failed to {action}: {exc}{suffix}")


@contextmanager
def session() -> Iterator[NvmlSession]:
    """Initialise NVML for the duration of the block."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise _as_ds01_error(exc, "initialise") from exc
    try:
        yield NvmlSession()
    finally:
        pynvml.nvmlShutdown()


def _optional(query: Callable[..., _T], *args: Any) -> _T | None:
    """A value NVML may not support on this device; a lost GPU or other failure still raises."""
    try:
        return query(*args)
    except pynvml.NVMLError_NotSupported:
        return None


def _processes(handle: Any, device_uuid: str) -> tuple[GpuProcess, ...]:
    return tuple(
        GpuProcess(pid=int(p.pid), used_memory_bytes=p.usedGpuMemory, device_uuid=device_uuid)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    )


def _mig_profile(handle: Any, name: str) -> tuple[str, int]:
    match = _MIG_PROFILE.search(name)
    if match:
        return f"{match['slices']}g.{match['rest']}", int(match["slices"])
    attributes = pynvml.nvmlDeviceGetAttributes(handle)
    slices = int(attributes.gpuInstanceSliceCount)
    return f"{slices}g.{attributes.memorySizeMB // 1024}gb", slices


class NvmlSession:
    """Queries made while NVML is initialised. Obtain one through `session()`."""

    def driver_version(self) -> str:
        return _text(self._call(pynvml.nvmlSystemGetDriverVersion, "read the driver version"))

    def inventory(self) -> Inventory:
        count = self._call(pynvml.nvmlDeviceGetCount, "count GPUs")
        cuda = _optional(pynvml.nvmlSystemGetCudaDriverVersion)
        return Inventory(
            driver_version=self.driver_version(),
            cuda_driver_version=cuda,
            gpus=tuple(self._gpu_or_unavailable(index) for index in range(count)),
        )

    def xid_watcher(self, gpu_uuids: list[str]) -> XidWatcher:
        return XidWatcher(gpu_uuids)

    @staticmethod
    def _call(query: Callable[..., _T], action: str, *args: Any) -> _T:
        try:
            return query(*args)
        except pynvml.NVMLError as exc:
            raise _as_ds01_error(exc, action) from exc

    def _gpu_or_unavailable(self, index: int) -> Gpu | UnavailableGpu:
        uuid: str | None = None
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            return self._gpu(index, handle, uuid)
        except pynvml.NVMLError_GpuIsLost:
            return UnavailableGpu(index, uuid, Health("lost", f"GPU {index} has fallen off the bus"))
        except pynvml.NVMLError as exc:
            return UnavailableGpu(index, uuid, Health("error", str(_as_ds01_error(exc, f"query GPU {index}"))))

    def _gpu(self, index: int, handle: Any, uuid: str) -> Gpu:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = _optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
        power_mw = _optional(pynvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = _optional(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        mig_modes = _optional(pynvml.nvmlDeviceGetMigMode, handle)
        mig_mode = bool(mig_modes and mig_modes[0] == pynvml.NVML_DEVICE_MIG_ENABLE)
        mig_devices = self._mig_devices(handle, uuid) if mig_mode else ()
        processes = tuple(p for mig in mig_devices for p in mig.processes) if mig_mode else _processes(handle, uuid)
        return Gpu(
            index=index,
            uuid=uuid,
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            serial=_optional(lambda: _text(pynvml.nvmlDeviceGetSerial(handle))),
            pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            utilization_gpu_percent=None if utilization is None else int(utilization.gpu),
            utilization_memory_percent=None if utilization is None else int(utilization.memory),
            temperature_celsius=_optional(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
            power_watts=None if power_mw is None else power_mw / 1000,
            power_limit_watts=None if limit_mw is None else limit_mw / 1000,
            mig_mode=mig_mode,
            mig_devices=mig_devices,
            processes=processes,
        )

    def _mig_devices(self, parent: Any, parent_uuid: str) -> tuple[MigDevice, ...]:
        devices = []
        for position in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
            try:
                handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, position)
            except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
                continue  # an empty MIG slot
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            profile, slices = _mig_profile(handle, _text(pynvml.nvmlDeviceGetName(handle)))
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                MigDevice(
                    uuid=uuid,
                    parent_uuid=parent_uuid,
                    index=position,
                    gpu_instance_id=int(pynvml.nvmlDeviceGetGpuInstanceId(handle)),
                    compute_instance_id=int(pynvml.nvmlDeviceGetComputeInstanceId(handle)),
                    profile=profile,
                    slices=slices,
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    processes=_processes(handle, uuid),
                )
            )
        return tuple(devices)


class XidWatcher:
    """Critical XID events of the given GPUs, from an NVML event set."""

    def __init__(self, gpu_uuids: list[str]) -> None:
        self._event_set = NvmlSession._call(pynvml.nvmlEventSetCreate, "create an event set")
        for uuid in gpu_uuids:
            handle = NvmlSession._call(pynvml.nvmlDeviceGetHandleByUUID, f"find GPU {uuid}", uuid)
            NvmlSession._call(pynvml.nvmlDeviceRegisterEvents, f"watch XID events on {uuid}", handle,
                              XID_CRITICAL_EVENT, self._event_set)

    def wait(self, timeout_ms: int) -> XidEvent | None:
        """The next XID event, or None when none arrives within the timeout."""
        try:
            data = pynvml.nvmlEventSetWait_v2(self._event_set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return None
        except pynvml.NVMLError as exc:
            raise _as_ds01_error(exc, "wait for XID events") from exc
        no_instance = 0xFFFFFFFF
        return XidEvent(
            gpu_uuid=_text(NvmlSession._call(pynvml.nvmlDeviceGetUUID, "name the GPU of an XID event", data.device)),
            xid=int(data.eventData),
            gpu_instance_id=None if data.gpuInstanceId == no_instance else int(data.gpuInstanceId),
            compute_instance_id=None if data.computeInstanceId == no_instance else int(data.computeInstanceId),
        )

    def close(self) -> None:
        NvmlSession._call(pynvml.nvmlEventSetFree, "free the event set", self._event_set)
