"""The typed form of resource-limits.yaml, and the resolution defaults -> group -> user.

`LIMIT_KEYS` is the single table of per-user limit keys: the loader, `ds01 limits` and the configuration
reference in docs-admin all read it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from ds01.ldapsettings import LdapSettings
from ds01.units import format_size, parse_duration, parse_gpu_equivalents, parse_size

_MIG_PROFILE = re.compile(r"^[1-7]g\.\d+gb(\+[a-z0-9]+)?$")
UNLIMITED = "unlimited"


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a whole number of 0 or more")
    return value


def _positive_count(value: object) -> int:
    count = _count(value)
    if count == 0:
        raise ValueError("must be at least 1")
    return count


def _cpus(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{value!r} is not a positive number of CPUs (fractions such as 0.5 are fine)")
    return float(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size: write a number with k, m, g or t, like 64g")
    size = parse_size(str(value))
    if size <= 0:
        raise ValueError("must be more than 0")
    return size


def _duration(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: write a number with s, m, h, d or w, like 30m or 48h")
    return parse_duration(value)


def _duration_or_unlimited(value: object) -> int | None:
    if value == UNLIMITED:
        return None
    seconds = _duration(value)
    if seconds == 0:
        raise ValueError(f"a limit of 0 would stop every container at once; write {UNLIMITED!r} for no limit")
    return seconds


def mig_profiles(value: object) -> frozenset[str] | None:
    """A list of MIG profiles such as [1g.10gb, 3g.40gb], or "any"."""
    if value == "any":
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError('is not a list of MIG profiles (like [1g.10gb, 2g.20gb]) or "any"')
    for profile in value:
        if not _MIG_PROFILE.match(profile):
            raise ValueError(f"{profile!r} is not a MIG profile name such as 1g.10gb or 3g.40gb")
    return frozenset(value)


# The names `docker run --ulimit` knows. Those the engine leaves unlimited only restrict the container when set;
# the rest default to the engine's own values on Debian, so that a user may lower them but not raise them.
ULIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                "rss", "rtprio", "rttime", "sigpending", "stack")
DEFAULT_ULIMITS: Mapping[str, int | None] = {
    **dict.fromkeys(("as", "core", "cpu", "data", "fsize", "locks", "rss", "rttime", "stack")),
    "nofile": 1048576, "memlock": 8 * 2**20, "msgqueue": 819200, "nice": 0, "rtprio": 0}


def ulimits(value: object) -> Mapping[str, int | None]:
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


@dataclass(frozen=True)
class LimitKey:
    name: str  # as written in resource-limits.yaml
    field: str  # on LimitValues, with its unit in the name
    parse: Callable[[object], Any]
    default: Any
    meaning: str
    enforced_by: str


LIMIT_KEYS: tuple[LimitKey, ...] = (
    LimitKey("gpu_quota", "gpu_quota", parse_gpu_equivalents, Fraction(1),
             "GPU-equivalents one user may hold across all containers: a full GPU is 1, a MIG slice is its "
             "compute slices / 7 (write 1, 1.5 or 3/7)", "allocator"),
    LimitKey("max_gpus_per_container", "max_gpus_per_container", _count, 1,
             "GPU slots (full GPUs or MIG devices) one container may hold; --gpus all means this many",
             "allocator"),
    LimitKey("allow_full_gpu", "allow_full_gpu", _flag, True,
             "whether the user may hold whole GPUs; when false, GPU requests are served from MIG slices",
             "allocator"),
    LimitKey("allowed_mig_profiles", "allowed_mig_profiles", mig_profiles, None,
             'MIG profiles the user may hold, as a list, or "any"', "allocator"),
    LimitKey("max_containers", "max_containers", _count, 3,
             "containers one user may have at once, running or stopped", "proxy"),
    LimitKey("cpus", "cpus", _cpus, 8.0, "CPUs per container (the default and the maximum)", "proxy"),
    LimitKey("memory", "memory_bytes", _size, 64 * 2**30, "memory per container (default and maximum)", "proxy"),
    LimitKey("shm_size", "shm_size_bytes", _size, 8 * 2**30, "/dev/shm size per container", "proxy"),  # noqa: S108 - prose, not a path
    LimitKey("pids_limit", "pids_limit", _positive_count, 4096, "processes per container", "proxy"),
    LimitKey("ulimits", "ulimits", ulimits, DEFAULT_ULIMITS,
             "the highest --ulimit a container may set, per name (a number, a size, or unlimited); names left out "
             "may not be set; a group or user entry changes only the names it gives", "proxy"),
    LimitKey("max_execs", "max_execs", _positive_count, 64,
             "exec instances one container may have at once, counting those created and not yet started", "proxy"),
    LimitKey("user_cpus", "user_cpus", _cpus, 16.0,
             "CPUs for all of one user's containers together, through the per-user cgroup parent", "proxy"),
    LimitKey("user_memory", "user_memory_bytes", _size, 128 * 2**30,
             "memory for all of one user's containers together, through the per-user cgroup parent", "proxy"),
    LimitKey("max_runtime", "max_runtime_seconds", _duration_or_unlimited, 48 * 3600,
             'how long a container may run before it is stopped, or "unlimited"', "cleanup"),
    LimitKey("idle_timeout", "idle_timeout_seconds", _duration_or_unlimited, 2 * 3600,
             'how long a GPU container may sit idle before it is stopped, or "unlimited"', "cleanup"),
    LimitKey("gpu_hold_after_stop", "gpu_hold_after_stop_seconds", _duration, 30 * 60,
             "how long a stopped container keeps its GPUs before they are released", "cleanup"),
)
LIMIT_KEYS_BY_NAME = {key.name: key for key in LIMIT_KEYS}
EXEMPTIBLE = ("idle_timeout", "max_runtime")


@dataclass(frozen=True)
class LimitValues:
    gpu_quota: Fraction
    max_gpus_per_container: int
    allow_full_gpu: bool
    allowed_mig_profiles: frozenset[str] | None  # None: any profile
    max_containers: int
    cpus: float
    memory_bytes: int
    shm_size_bytes: int
    pids_limit: int
    ulimits: Mapping[str, int | None]  # name -> highest hard limit; None: unlimited
    max_execs: int
    user_cpus: float
    user_memory_bytes: int
    max_runtime_seconds: int | None  # None: unlimited
    idle_timeout_seconds: int | None
    gpu_hold_after_stop_seconds: int

    def with_overrides(self, overrides: Mapping[str, Any]) -> LimitValues:
        if "ulimits" in overrides:  # merged by name: a group's memlock keeps the defaults' nofile
            overrides = {**overrides, "ulimits": {**self.ulimits, **overrides["ulimits"]}}
        return dataclasses.replace(self, **overrides)


BUILTIN_DEFAULTS = LimitValues(**{key.field: key.default for key in LIMIT_KEYS})


@dataclass(frozen=True)
class GroupRule:
    name: str
    system_groups: tuple[str, ...]  # Unix or LDAP groups whose members belong to this ds01 group
    overrides: Mapping[str, Any]  # LimitValues field -> value, only the keys the group names


@dataclass(frozen=True)
class UserRule:
    name: str
    group: str | None
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Exemption:
    user: str
    exempt_from: frozenset[str]  # names from EXEMPTIBLE
    expires_at: datetime
    reason: str


@dataclass(frozen=True)
class AllocationSettings:
    strategy: str = "spread"  # "spread": least-loaded GPU first; "pack": fill the busiest GPU first
    mig_preference: str = "restricted"  # who gets MIG slices for a plain GPU count: restricted, all or none
    reservation_ttl_seconds: int = 60
    lock_timeout_seconds: int = 10
    xid_quarantine_seconds: int = 3600
    critical_xids: frozenset[int] = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95})


ENDPOINT_GROUPS = ("build", "session", "plugins", "swarm", "commit", "image_load")


@dataclass(frozen=True)
class SecuritySettings:
    data_dirs: tuple[str, ...] = ()  # bind-mount roots besides each user's home
    home_roots: tuple[str, ...] = ("/home",)  # a home counts for binds only below one of these, owned by its user
    cap_add_allowed: frozenset[str] = frozenset()  # capability names without CAP_
    allowed_endpoints: frozenset[str] = frozenset()  # from ENDPOINT_GROUPS, denied unless listed
    admin_root: bool = False  # whether admins' containers may run as root (and keep the default capabilities)
    require_nosuid_mounts: bool = True  # bind sources must lie on nosuid,nodev host mounts


@dataclass(frozen=True)
class ContainerDefaults:
    """What `container create` uses when the user does not say."""

    default_image: str | None = None
    workspace_root: str = "~/workspace"  # NAME's workspace is WORKSPACE_ROOT/NAME, mounted at /workspace


@dataclass(frozen=True)
class EventLogSettings:
    max_bytes: int = 64 * 2**20  # rotate events.jsonl past this size
    max_age_seconds: int = 86400  # or once its first event is this old
    keep: int = 30  # rotated files kept; older ones are deleted


@dataclass(frozen=True)
class CleanupSettings:
    idle_gpu_percent: float = 5.0  # a GPU below this utilization counts as idle
    idle_cpu_percent: float = 5.0  # a container below this (percent of one CPU) counts as idle
    warn_at: tuple[float, ...] = (0.5, 0.9)  # fractions of idle_timeout / max_runtime when users are warned
    keepalive_file: str = ".ds01-keepalive"  # in the workspace; touching it protects the container
    keepalive_max_age_seconds: int = 86400
    min_age_seconds: int = 1800  # never act on a container younger than this
    stop_timeout_seconds: int = 30  # the SIGTERM grace period
    remove_after_release: bool = True  # after gpu_hold_after_stop: remove the container, or keep it stopped


@dataclass(frozen=True)
class BareMetalSettings:
    group: str = "ds01-gpu"  # owns /dev/nvidia*; members may use GPUs outside containers
    default_duration_seconds: int = 86400
    max_duration_seconds: int = 7 * 86400


@dataclass(frozen=True)
class ProxySettings:
    """The proxy's bounds on its clients' connections (the `proxy:` section)."""

    idle_timeout_seconds: int = 300  # a kept-alive connection waiting for its next request is closed after this
    header_timeout_seconds: int = 30  # a request head must arrive whole within this, from its first byte
    max_header_bytes: int = 64 * 2**10  # request line and headers together
    max_connections_per_user: int = 64  # open connections to the proxy at once, admins included


@dataclass(frozen=True)
class Config:
    source: Path
    defaults: LimitValues
    default_group: str
    groups: tuple[GroupRule, ...]  # in file order: the first match wins
    users: Mapping[str, UserRule]
    admin_users: frozenset[str]
    admin_groups: frozenset[str]
    exemptions: tuple[Exemption, ...]
    allocation: AllocationSettings
    ldap: LdapSettings | None
    security: SecuritySettings = SecuritySettings()
    containers: ContainerDefaults = ContainerDefaults()
    events: EventLogSettings = EventLogSettings()
    cleanup: CleanupSettings = CleanupSettings()
    bare_metal: BareMetalSettings = BareMetalSettings()
    proxy: ProxySettings = ProxySettings()


@dataclass(frozen=True)
class Effective:
    """What applies to one user right now."""

    user: str
    group: str
    is_admin: bool
    limits: LimitValues
    exemptions: tuple[Exemption, ...]  # the ones in force


def ds01_group(config: Config, user: str, system_groups: Sequence[str]) -> str:
    rule = config.users.get(user)
    if rule is not None and rule.group is not None:
        return rule.group
    for group in config.groups:
        if set(group.system_groups) & set(system_groups):
            return group.name
    return config.default_group


def effective_limits(config: Config, user: str, system_groups: Sequence[str], now: datetime) -> Effective:
    group_name = ds01_group(config, user, system_groups)
    limits = config.defaults
    for group in config.groups:
        if group.name == group_name:
            limits = limits.with_overrides(group.overrides)
    rule = config.users.get(user)
    if rule is not None:
        limits = limits.with_overrides(rule.overrides)
    active = tuple(e for e in config.exemptions if e.user == user and e.expires_at > now)
    lifted = {LIMIT_KEYS_BY_NAME[name].field: None for e in active for name in e.exempt_from}
    return Effective(
        user=user,
        group=group_name,
        is_admin=user in config.admin_users or bool(config.admin_groups & set(system_groups)),
        limits=limits.with_overrides(lifted),
        exemptions=active,
    )
