"""The shape of HostConfig.DeviceRequests, read and written in this one place: which entries ask for GPUs, what
they ask for, and the request a grant or a GPU count becomes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GPU_CAPABILITY = "gpu"
NVIDIA_DRIVER = "nvidia"


def capabilities(groups: Iterable[Iterable[str]]) -> set[str]:
    """Every capability a request's Capabilities (a list of alternatives, each a list of names) mentions."""
    return {capability for group in groups for capability in group}


def asks_for_gpus(driver: object, wanted: set[str]) -> bool:
    """The engine hands a request to the NVIDIA hook when it names the driver or the gpu capability."""
    return driver == NVIDIA_DRIVER or GPU_CAPABILITY in wanted


def gpu_devices(host_config: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """The device IDs a container's GPU requests name, and the count they ask for (0 none, -1 all)."""
    device_ids: list[str] = []
    count = 0
    for request in host_config.get("DeviceRequests") or []:
        if asks_for_gpus(request.get("Driver"), capabilities(request.get("Capabilities") or [])):
            device_ids.extend(request.get("DeviceIDs") or [])
            count = -1 if request.get("Count") == -1 else count + int(request.get("Count") or 0)
    return tuple(device_ids), count


def granted(slots: Sequence[str]) -> list[dict[str, Any]]:
    """Exactly the granted devices, by ID."""
    return [{"Driver": NVIDIA_DRIVER, "Count": 0, "DeviceIDs": list(slots), "Capabilities": [[GPU_CAPABILITY]],
             "Options": {}}]


def by_count(gpus: int) -> list[dict[str, Any]]:
    """`--gpus N` (-1: all), as the docker CLI sends it."""
    return [{"Driver": "", "Count": gpus, "DeviceIDs": None, "Capabilities": [[GPU_CAPABILITY]], "Options": {}}]
