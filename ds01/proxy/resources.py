"""The limit arithmetic of a create or an update: CPUs, memory and swap, processes, ulimits and tmpfs sizes, each
within the caller's limits. Pure, like the policy that calls it."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from ds01.config import LimitValues
from ds01.errors import Denied
from ds01.proxy.bodies import as_list, field, mounts_of, set_field
from ds01.reasons import Reason
from ds01.units import format_size, parse_size

CPU_PERIOD_US = 100_000  # the kernel's default CFS period, as the engine assumes it
SHM = "/dev/shm"  # noqa: S108 - a path inside the container
# The fields an update changes; the engine keeps the current value of any it is sent as 0 or not at all.
LOG_OPTIONS_MAX = {"max-size": 100 * 2**20, "max-file": 5}  # per container: at most 500 MiB of logs on the host
LOG_OPTIONS_FREE = frozenset({"compress", "mode", "max-buffer-size"})
UPDATED_RESOURCES = ("NanoCpus", "CpuQuota", "CpuPeriod", "Memory", "MemorySwap", "MemoryReservation",
                     "KernelMemory", "KernelMemoryTCP", "PidsLimit")


def integer(obj: Mapping[str, Any], name: str) -> int | None:
    value = field(obj, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Denied(Reason.BAD_REQUEST, f"{name} must be a whole number, not {value!r}")
    return value


def size_text(size_bytes: int) -> str:
    text = format_size(size_bytes)
    return f"{text} bytes" if text.isdigit() else text


def cpus_asked(host: Mapping[str, Any]) -> float | None:
    nano = integer(host, "NanoCpus")
    quota, period = integer(host, "CpuQuota"), integer(host, "CpuPeriod") or CPU_PERIOD_US
    if nano:
        return nano / 1e9
    return quota / period if quota and quota > 0 else None


def apply_limits(host: dict[str, Any], limits: LimitValues, fill_defaults: bool = True) -> None:
    """Check the resource fields against the caller's limits; on a create, fill in the ones left unset."""
    for name in ("NanoCpus", "CpuQuota", "CpuPeriod"):
        cpu_value = integer(host, name)
        if cpu_value is not None and cpu_value < 0:  # the engine reads -1 as "no limit"
            raise Denied(Reason.LIMIT_LIFTED,
                         f"{name}={cpu_value} would remove your CPU limit; give a value within it, or "
                         "leave it out.")
    asked = cpus_asked(host)
    if asked is None and fill_defaults and integer(host, "CpuPeriod"):
        # --cpu-period alone: the engine refuses NanoCpus beside it, so the limit is written as a quota.
        set_field(host, "CpuQuota", int(limits.cpus * (integer(host, "CpuPeriod") or CPU_PERIOD_US)))
        asked = limits.cpus
    if asked is not None and asked > limits.cpus:
        raise Denied(Reason.LIMIT_CPUS, f"{asked:g} CPUs asked for; your per-container limit is {limits.cpus:g}.")
    if asked is None and fill_defaults:
        set_field(host, "NanoCpus", int(limits.cpus * 1e9))
    for name, limit, what, reason in (("Memory", limits.memory_bytes, "memory", Reason.LIMIT_MEMORY),
                                      ("ShmSize", limits.shm_size_bytes, "shm", Reason.LIMIT_SHM)):
        value: int = integer(host, name) or 0
        if value > limit:
            raise Denied(reason, f"{size_text(value)} of {what} asked for; your per-container limit is "
                                 f"{size_text(limit)}.")
        if value <= 0 and fill_defaults:
            set_field(host, name, limit)
    pids = integer(host, "PidsLimit")
    if pids is not None and pids > limits.pids_limit:
        raise Denied(Reason.LIMIT_PIDS, f"a pids limit of {pids} asked for; your per-container limit is "
                                        f"{limits.pids_limit}.")
    if (pids is None or pids <= 0) and fill_defaults:
        set_field(host, "PidsLimit", limits.pids_limit)
    memory = integer(host, "Memory") or limits.memory_bytes
    _check_swap(host, memory)
    for name in ("MemoryReservation", "KernelMemory", "KernelMemoryTCP"):
        soft = integer(host, name)
        if soft is not None and not 0 <= soft <= memory:
            raise Denied(Reason.LIMIT_MEMORY, f"{name}={soft} must be between 0 and the container's memory "
                                              f"({size_text(memory)}).")
    check_ulimits(host, limits.ulimits)


def _check_swap(host: Mapping[str, Any], memory: int) -> None:
    swap = integer(host, "MemorySwap")
    if swap is not None and swap < 0:
        raise Denied(Reason.LIMIT_MEMORY,
                     f"MemorySwap={swap} (unlimited swap) is not allowed: swap counts as memory here. "
                     f"Give at most twice the container's memory ({size_text(2 * memory)}).")
    if swap is not None and swap > 2 * memory:
        raise Denied(Reason.LIMIT_MEMORY, f"MemorySwap of {size_text(swap)} asked for: memory and swap together may be "
                                          f"at most twice the container's memory ({size_text(2 * memory)}).")


def check_ulimits(host: Mapping[str, Any], caps: Mapping[str, int | None]) -> None:
    for entry in as_list(field(host, "Ulimits"), "HostConfig.Ulimits"):
        name, soft, hard = field(entry, "Name"), integer(entry, "Soft"), integer(entry, "Hard")
        allowed = ", ".join(sorted(caps)) or "none"
        if not isinstance(name, str) or name not in caps:
            raise Denied(Reason.LIMIT_ULIMIT, f"ulimit {name!r} may not be set here (allowed: {allowed}); ask an admin "
                                              "to add it under ulimits in resource-limits.yaml.")
        cap = caps[name]
        if soft is None or hard is None or (cap is not None and not 0 <= soft <= hard <= cap) or soft > hard:
            shown = "unlimited" if cap is None else str(cap)
            raise Denied(Reason.LIMIT_ULIMIT,
                         f"ulimit {name}={soft}:{hard} is not allowed: give SOFT:HARD with SOFT at "
                         f"most HARD, and HARD at most your limit of {shown}.")


def _tmpfs_size(options: Any, path: str) -> int | None:
    if not isinstance(options, str):
        raise Denied(Reason.BAD_REQUEST, f"the options of the tmpfs at {path} must be text, like size=1g")
    keys = [option.partition("=")[0].strip().lower() for option in options.split(",")]
    if sum(1 for key in keys if key in ("size", "nr_blocks")) > 1:
        raise Denied(Reason.LIMIT_TMPFS, f"tmpfs {path}: give its size once (size=...); the kernel takes the last one")
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key.strip() != key.strip().lower():
            raise Denied(Reason.LIMIT_TMPFS, f"tmpfs {path}: option {key.strip()!r} must be written in lower case")
        if key.strip() == "nr_blocks":
            raise Denied(Reason.LIMIT_TMPFS, f"tmpfs {path}: give its size with size=..., not nr_blocks")
        if key.strip() == "size":
            try:
                return parse_size(value)
            except ValueError:
                raise Denied(Reason.LIMIT_TMPFS, f"tmpfs {path}: size={value} is not a size like 512m (a share of the "
                                                 "host's memory is not allowed)") from None
    return None


def check_tmpfs(host: dict[str, Any], memory: int) -> None:
    """Every tmpfs is memory: their sizes together fit in the container's memory, and one left unsized gets its
    share of what is left (the kernel's default is half the host's memory). /dev/shm is sized by ShmSize."""
    tmpfs = dict(field(host, "Tmpfs") or {})
    mounts = [m for m in mounts_of(host) if field(m, "Type") == "tmpfs"]
    targets = [*tmpfs, *(str(field(m, "Target") or "") for m in mounts)]
    if any(posixpath.normpath("/" + t.lstrip("/")) == SHM for t in targets):
        raise Denied(Reason.LIMIT_SHM, "a tmpfs at /dev/shm is not allowed: its size is ShmSize (--shm-size), within "
                                       "your shm_size limit.")
    sizes = {path: _tmpfs_size(options, path) for path, options in tmpfs.items()}
    mount_sizes = [integer(field(m, "TmpfsOptions") or {}, "SizeBytes") or None for m in mounts]
    given = sum(s for s in sizes.values() if s) + sum(s for s in mount_sizes if s)
    unsized = sum(1 for s in sizes.values() if not s) + sum(1 for s in mount_sizes if not s)
    if given > memory or (unsized and given >= memory):
        raise Denied(Reason.LIMIT_TMPFS, f"tmpfs sizes of {size_text(given)} asked for: tmpfs is memory, and all of a "
                                         f"container's together must fit in its memory ({size_text(memory)}).")
    if not unsized:
        return
    share = (memory - given) // unsized
    for path, size in sizes.items():
        if not size:
            written = str(tmpfs[path])
            tmpfs[path] = f"{written},size={share}" if written else f"size={share}"
    if tmpfs:
        set_field(host, "Tmpfs", tmpfs)
    for mount, size in zip(mounts, mount_sizes, strict=True):
        if not size:
            options = dict(field(mount, "TmpfsOptions") or {})
            set_field(options, "SizeBytes", share)
            set_field(mount, "TmpfsOptions", options)


def merged_for_update(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """The resource values a container has after an update: the engine changes only the fields sent non-zero."""
    merged = {name: field(current, name) for name in UPDATED_RESOURCES if field(current, name)}
    merged.update({name: field(update, name) for name in UPDATED_RESOURCES if field(update, name)})
    merged["Ulimits"] = field(update, "Ulimits")
    return merged


def check_log_config(host: dict[str, Any], log_driver: str) -> None:
    config = field(host, "LogConfig") or {}
    driver = field(config, "Type") or ""
    if driver not in ("", log_driver):
        raise Denied(Reason.LOG_CONFIG, (
            f"log driver {driver!r} is not allowed: containers log with the engine's default driver "
            f"({log_driver}), which docker logs reads. Leave --log-driver out."))
    for name, value in (field(config, "Config") or {}).items():
        cap = LOG_OPTIONS_MAX.get(name)
        if cap is None and name not in LOG_OPTIONS_FREE:
            known = ", ".join(sorted({*LOG_OPTIONS_MAX, *LOG_OPTIONS_FREE}))
            raise Denied(Reason.LOG_CONFIG, f"log option {name!r} is not allowed; only {known}.")
        if cap is None:
            continue
        try:
            amount = parse_size(str(value)) if name == "max-size" else int(str(value))
        except ValueError:
            raise Denied(Reason.LOG_CONFIG, f"log option {name}={value!r} is not a number") from None
        if not 0 < amount <= cap:
            shown = size_text(cap) if name == "max-size" else str(cap)
            raise Denied(Reason.LOG_CONFIG,
                         f"log option {name}={value} is over the cap of {shown} (logs are kept on the "
                                      "host's disk).")
