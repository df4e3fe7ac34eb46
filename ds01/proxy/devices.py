"""How a create asks for GPUs, and how a grant is written into it: the device request, and the environment the
GPU hook reads, from the body and from the image alike. Pure, like the policy that calls it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ds01 import devicerequests, labels
from ds01.config import validators
from ds01.errors import Denied
from ds01.gpus.placement import GpuRequest
from ds01.proxy import resources
from ds01.proxy.bodies import as_list, field, host_config, set_field
from ds01.reasons import Reason

STRIPPED_ENV_PREFIXES = ("NVIDIA_",)
STRIPPED_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES"})
NO_DEVICES = "void"  # NVIDIA_VISIBLE_DEVICES for a container without a grant: the GPU hook mounts nothing
GRANTED_CAPABILITIES = "compute,utility"  # what a granted container's driver libraries cover


def _is_gpu_variable(entry: str) -> bool:
    name = entry.split("=", 1)[0]
    return name in STRIPPED_ENV_NAMES or name.upper().startswith(STRIPPED_ENV_PREFIXES)


def strip_gpu_env(body: dict[str, Any]) -> tuple[str, ...]:
    """Drop NVIDIA_* and CUDA_VISIBLE_DEVICES: devices come from the grant, never from the environment."""
    env = [str(entry) for entry in as_list(field(body, "Env"), "Env")]
    set_field(body, "Env", [entry for entry in env if not _is_gpu_variable(entry)])
    return tuple(entry for entry in env if _is_gpu_variable(entry))


def override_image_gpu_env(body: dict[str, Any], image_env: Sequence[str]) -> tuple[str, ...]:
    """The engine merges the image's Env under the body's and cannot unset a variable, so the body sets each of
    the image's GPU variables itself: NVIDIA_VISIBLE_DEVICES to void (the grant replaces it), the rest empty.
    Returns the image's variables that were overridden."""
    baked = sorted({entry.split("=", 1)[0] for entry in image_env if _is_gpu_variable(entry)})
    names = sorted({*baked, "NVIDIA_VISIBLE_DEVICES"})
    env = [str(entry) for entry in as_list(field(body, "Env"), "Env")]
    env += [f"{name}={NO_DEVICES if name == 'NVIDIA_VISIBLE_DEVICES' else ''}" for name in names]
    set_field(body, "Env", env)
    return tuple(baked)


def gpu_request(host: dict[str, Any], found_labels: Mapping[str, str]) -> GpuRequest | None:
    wanted: GpuRequest | None = None
    for request in as_list(field(host, "DeviceRequests"), "HostConfig.DeviceRequests"):
        if not isinstance(request, dict):
            raise Denied(Reason.BAD_REQUEST, "DeviceRequests entries must be objects")
        groups = as_list(field(request, "Capabilities"), "Capabilities")
        if not all(isinstance(group, list) and all(isinstance(c, str) for c in group) for group in groups):
            raise Denied(Reason.BAD_REQUEST, "Capabilities must be a list of lists of names, like [[\"gpu\"]]")
        driver = field(request, "Driver")
        if driver not in (None, "", devicerequests.NVIDIA_DRIVER) or not devicerequests.asks_for_gpus(
                driver, devicerequests.capabilities(groups)):
            raise Denied(Reason.DEVICES, "only GPU device requests (--gpus) are allowed.")
        if wanted is not None:
            raise Denied(Reason.BAD_REQUEST, "send one GPU device request, not several.")
        ids = as_list(field(request, "DeviceIDs"), "DeviceIDs")
        count = resources.integer(request, "Count") or 0
        if ids:
            wanted = GpuRequest(devices=tuple(str(i) for i in ids))
        elif count == -1:
            wanted = GpuRequest(all_gpus=True)
        else:
            wanted = GpuRequest(count=int(count))
    mig = found_labels.get(labels.REQUEST_MIG)
    if mig:
        if wanted is not None:
            raise Denied(Reason.BAD_REQUEST, f"ask for GPUs either with --gpus or with the {labels.REQUEST_MIG} "
                                       "label, not both.")
        wanted = GpuRequest(mig_profile=mig)
    return wanted


def wait_seconds(found_labels: dict[str, Any], request: GpuRequest | None) -> int:
    """How long the create's GPU request may wait for its slots: the ds01.request.wait label (0: not at all)."""
    asked = found_labels.get(labels.REQUEST_WAIT)
    if asked in (None, ""):
        return 0
    try:
        seconds = validators.positive_duration(asked)
    except ValueError:
        raise Denied(Reason.BAD_REQUEST, f"the label {labels.REQUEST_WAIT}={asked} is not a duration: write it as "
                                         f"{labels.REQUEST_WAIT}=30m, 2h or 1d.") from None
    if request is None:
        raise Denied(Reason.BAD_REQUEST, f"the label {labels.REQUEST_WAIT} asks a GPU request to wait, but this create "
                                         "asks for no GPU: add --gpus N (or the label ds01.request.mig), or leave the "
                                         "label out.")
    return seconds


def apply_grant(body: dict[str, Any], slots: Sequence[str], allocation_id: str, equivalents: str) -> None:
    """Point the container at exactly the granted devices, and label it with its allocation."""
    host = host_config(body)
    set_field(host, "DeviceRequests", devicerequests.granted(slots))
    granted = {"NVIDIA_VISIBLE_DEVICES": ",".join(slots), "CUDA_VISIBLE_DEVICES": ",".join(slots),
               "NVIDIA_DRIVER_CAPABILITIES": GRANTED_CAPABILITIES}
    env = [str(entry) for entry in as_list(field(body, "Env"), "Env")]
    set_field(body, "Env", [f"{name}={granted[name]}" if name in granted else entry
                            for entry in env for name in [entry.split("=", 1)[0]]])
    granted_labels = field(body, "Labels")
    granted_labels[labels.ALLOCATION] = allocation_id
    granted_labels[labels.GPU_EQUIVALENTS] = equivalents
