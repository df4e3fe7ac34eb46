"""The value checks of resource-limits.yaml, one set for every section: each takes the parsed YAML value and
returns the typed one, or raises ValueError saying what was expected. The loader adds the file, line and key."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from ds01.units import format_size, parse_duration, parse_size

_MIG_PROFILE = re.compile(r"^[1-7]g\.\d+gb(\+[a-z0-9]+)?$")
UNLIMITED = "unlimited"


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a whole number of 0 or more")
    return value


def positive_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a whole number of at least 1")
    return value


def cpus(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{value!r} is not a positive number of CPUs (fractions such as 0.5 are fine)")
    return float(value)


def weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ValueError(f"{value!r} is not a number of 0 or more")
    return float(value)


def share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{value!r} is not a positive number (a share relative to other groups', such as 2 or 0.5)")
    return float(value)


def priority(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e9 < value < 1e9:
        raise ValueError(f"{value!r} is not a number (added to the queue priority; may be negative)")
    return float(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size: write a number with k, m, g or t, like 64g")
    size = parse_size(str(value))
    if size <= 0:
        raise ValueError("must be more than 0")
    return size


def duration(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: write a number with s, m, h, d or w, like 30m or 48h")
    return parse_duration(value)


def duration_or_unlimited(value: Any) -> int | None:
    if value == UNLIMITED:
        return None
    seconds = duration(value)
    if seconds == 0:
        raise ValueError(f"a limit of 0 would stop every container at once; write {UNLIMITED!r} for no limit")
    return seconds


def mig_profiles(value: Any) -> frozenset[str] | None:
    """A list of MIG profiles such as [1g.10gb, 3g.40gb], or "any"."""
    if value == "any":
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError('is not a list of MIG profiles (like [1g.10gb, 2g.20gb]) or "any"')
    for profile in value:
        if not _MIG_PROFILE.match(profile):
            raise ValueError(f"{profile!r} is not a MIG profile name such as 1g.10gb or 3g.40gb")
    return frozenset(value)


_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?")


def registries(value: Any) -> frozenset[str] | None:
    """A list of registry hosts such as [docker.io, nvcr.io, registry.lab.example:5000], or "any"."""
    if value == "any":
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError('is not a list of registry hosts (like [docker.io, nvcr.io]) or "any"')
    for host in value:
        if not _REGISTRY.fullmatch(host):
            raise ValueError(f"{host!r} is not a registry host such as docker.io or registry.lab.example:5000")
    return frozenset(value)


# The names `docker run --ulimit` knows. Those the engine leaves unlimited only restrict the container when set;
# the rest default to the engine's own values on Debian, so that a user may lower them but not raise them.
ULIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                "rss", "rtprio", "rttime", "sigpending", "stack")
DEFAULT_ULIMITS: Mapping[str, int | None] = {
    **dict.fromkeys(("as", "core", "cpu", "data", "fsize", "locks", "rss", "rttime", "stack")),
    "nofile": 1048576, "memlock": 8 * 2**20, "msgqueue": 819200, "nice": 0, "rtprio": 0}


def ulimits(value: Any) -> Mapping[str, int | None]:
    """A map from ulimit name to the highest hard limit a container may set: a number, a size such as 64m (for
    byte limits), or "unlimited". A name left out may not be set at all."""
    if not isinstance(value, dict):
        raise ValueError("is not a map of ulimit names to limits, like {nofile: 65536, memlock: unlimited}")
    caps: dict[str, int | None] = {}
    for name, cap in value.items():
        if name not in ULIMIT_NAMES:
            raise ValueError(f"{name!r} is not a ulimit name; known: {', '.join(ULIMIT_NAMES)}")
        if cap == UNLIMITED:
            caps[name] = None
        elif isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0:
            caps[name] = cap
        elif isinstance(cap, str):
            caps[name] = parse_size(cap)
        else:
            raise ValueError(f"ulimit {name}: {cap!r} is not a number, a size like 64m, or {UNLIMITED!r}")
    return caps


_BYTE_ULIMITS = frozenset({"as", "core", "data", "fsize", "memlock", "msgqueue", "rss", "stack"})


def format_ulimits(caps: Mapping[str, int | None]) -> str:
    """As resource-limits.yaml writes them: {memlock: 8m, nofile: 1048576, stack: unlimited}."""
    def shown(name: str, cap: int | None) -> str:
        if cap is None:
            return UNLIMITED
        return format_size(cap) if name in _BYTE_ULIMITS else str(cap)
    return "{" + ", ".join(f"{name}: {shown(name, cap)}" for name, cap in sorted(caps.items())) + "}"


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return str(value)
    return parse


def xids(value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value):
        raise ValueError("must be a list of XID numbers, like [48, 79]")
    return frozenset(value)


def positive_duration(value: Any) -> int:
    seconds = parse_duration(value) if isinstance(value, str) else 0
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration, like 60s or 10m")
    return seconds


def percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{value!r} is not a percentage from 0 to 100")
    return float(value)


def fractions(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in value):
        raise ValueError("must be a list of fractions between 0 and 1, like [0.5, 0.9]")
    return tuple(sorted(float(x) for x in value))


def file_name(value: Any) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{value!r} is not a plain file name")
    return value


def group_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise ValueError(f"{value!r} is not a Unix group name")
    return value


HOST_SERVICE_PROTOCOLS = ("tcp", "udp")


def ports(value: Any) -> frozenset[int]:
    """A list of port numbers, like [3000, 9090]."""
    if not isinstance(value, list) or not all(isinstance(item, int) and not isinstance(item, bool)
                                              and 1 <= item <= 65535 for item in value):
        raise ValueError("is not a list of port numbers from 1 to 65535, like [3000, 9090]")
    return frozenset(value)


def host_services(value: Any) -> tuple[tuple[str, int, str], ...]:
    """A list of PORT/PROTO or ADDRESS:PORT/PROTO (IPv4), like [53/udp, 10.0.0.1:3128/tcp]: each as (address,
    port, protocol), the address "" for every address of the host."""
    example = "like [53/udp, 10.0.0.1:3128/tcp]"
    if not isinstance(value, list):
        raise ValueError(f"is not a list of PORT/PROTO or ADDRESS:PORT/PROTO, {example}")
    found: list[tuple[str, int, str]] = []
    for item in value:
        text = item if isinstance(item, str) else ""
        where, _, protocol = text.rpartition("/")
        address, _, port = where.rpartition(":")
        if protocol not in HOST_SERVICE_PROTOCOLS or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r} is not PORT/PROTO or ADDRESS:PORT/PROTO with a port from 1 to 65535 and "
                             f"a protocol of {' or '.join(HOST_SERVICE_PROTOCOLS)}, {example}")
        if address:
            try:
                address = str(ipaddress.IPv4Address(address))
            except ValueError:
                raise ValueError(f"{item!r}: {address!r} is not an IPv4 address (containers' networks are "
                                 "IPv4; leave the address out for every address of the host)") from None
        entry = (address, int(port), protocol)
        if entry in found:
            raise ValueError(f"{item!r} is listed twice")
        found.append(entry)
    return tuple(found)
