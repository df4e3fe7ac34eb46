"""The typed form of resource-limits.yaml: one frozen dataclass per section, and the LDAP settings.

`LIMIT_KEYS` is the single table of per-user limit keys: the loader, `ds01 limits` and the configuration
reference in docs-admin all read it. Reading the configuration never loads python-ldap.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from ds01.config import validators
from ds01.config.validators import DEFAULT_ULIMITS
from ds01.errors import ConfigError
from ds01.units import parse_gpu_equivalents

# What each supported group attribute holds: the member's login name, or the member's DN.
NAME_VALUED = frozenset({"memberuid"})
DN_VALUED = frozenset({"member", "uniquemember"})


@dataclass(frozen=True)
class LdapSettings:
    uri: str  # e.g. "ldap://127.0.0.1:3890"
    base_dn: str
    group_attribute: str = "memberUid"  # or "member" / "uniqueMember"
    user_filter: str = "(objectClass=posixAccount)"
    group_filter: str = "(|(objectClass=posixGroup)(objectClass=groupOfNames))"
    bind_dn: str | None = None
    bind_password_file: Path | None = None  # read at connect time; never logged
    timeout_seconds: float = 3.0

    def __post_init__(self) -> None:
        if self.group_attribute.lower() not in NAME_VALUED | DN_VALUED:
            raise ConfigError(
                f"LDAP group attribute {self.group_attribute!r} is not supported: "
                "use memberUid (holds login names), member or uniqueMember (hold user DNs)"
            )
        if self.bind_dn is not None and self.bind_password_file is None:
            raise ConfigError(
                f"LDAP bind DN {self.bind_dn!r} has no password file: set bind_password_file, "
                "or drop bind_dn to search anonymously"
            )
        if self.timeout_seconds <= 0:
            raise ConfigError(f"LDAP timeout must be positive, not {self.timeout_seconds}")


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
    LimitKey("max_gpus_per_container", "max_gpus_per_container", validators.count, 1,
             "GPU slots (full GPUs or MIG devices) one container may hold; --gpus all means this many",
             "allocator"),
    LimitKey("allow_full_gpu", "allow_full_gpu", validators.flag, True,
             "whether the user may hold whole GPUs; when false, GPU requests are served from MIG slices",
             "allocator"),
    LimitKey("allowed_mig_profiles", "allowed_mig_profiles", validators.mig_profiles, None,
             'MIG profiles the user may hold, as a list, or "any"', "allocator"),
    LimitKey("max_containers", "max_containers", validators.count, 3,
             "containers one user may have at once, running or stopped (running batch jobs included)", "proxy"),
    LimitKey("max_queued_jobs", "max_queued_jobs", validators.count, 10,
             "batch jobs (container run) one user may have waiting in the queue at once", "proxy"),
    LimitKey("cpus", "cpus", validators.cpus, 8.0, "CPUs per container (the default and the maximum)", "proxy"),
    LimitKey("memory", "memory_bytes", validators.size, 64 * 2**30, "memory per container (default and maximum)",
             "proxy"),
    LimitKey("shm_size", "shm_size_bytes", validators.size, 8 * 2**30, "/dev/shm size per container", "proxy"),  # noqa: S108 - prose, not a path
    LimitKey("pids_limit", "pids_limit", validators.positive_count, 4096, "processes per container", "proxy"),
    LimitKey("ulimits", "ulimits", validators.ulimits, DEFAULT_ULIMITS,
             "the highest --ulimit a container may set, per name (a number, a size, or unlimited); names left out "
             "may not be set; a group or user entry changes only the names it gives", "proxy"),
    LimitKey("max_execs", "max_execs", validators.positive_count, 64,
             "exec instances one container may have at once, counting those created and not yet started", "proxy"),
    LimitKey("max_published_ports", "max_published_ports", validators.count, 8,
             "host ports one user's containers may publish at once, all on 127.0.0.1", "proxy"),
    LimitKey("max_networks", "max_networks", validators.positive_count, 4,
             "networks one user may have at once, their own ds01-USER network included (counted whether it exists "
             "yet or not); users times this must fit in the engine's address pools", "proxy"),
    LimitKey("image_storage", "image_storage_bytes", validators.size, 100 * 2**30,
             "the size of one user's own images, less layers shared with others' images or with shared ones; a "
             "build, commit or pull past it is refused", "proxy"),
    LimitKey("user_cpus", "user_cpus", validators.cpus, 16.0,
             "CPUs for all of one user's containers together, through the per-user cgroup parent", "proxy"),
    LimitKey("user_memory", "user_memory_bytes", validators.size, 128 * 2**30,
             "memory for all of one user's containers together, through the per-user cgroup parent", "proxy"),
    LimitKey("max_runtime", "max_runtime_seconds", validators.duration_or_unlimited, 48 * 3600,
             'how long a container may run before it is stopped, or "unlimited"', "cleanup"),
    LimitKey("idle_timeout", "idle_timeout_seconds", validators.duration_or_unlimited, 2 * 3600,
             'how long a GPU container may sit idle before it is stopped, or "unlimited"', "cleanup"),
    LimitKey("gpu_hold_after_stop", "gpu_hold_after_stop_seconds", validators.duration, 30 * 60,
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
    max_queued_jobs: int
    cpus: float
    memory_bytes: int
    shm_size_bytes: int
    pids_limit: int
    ulimits: Mapping[str, int | None]  # name -> highest hard limit; None: unlimited
    max_execs: int
    max_published_ports: int
    max_networks: int  # their own ds01-USER network included
    image_storage_bytes: int
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
    share: float = 1.0  # each member's fair share of the GPUs, relative to other members'
    priority: float = 0.0  # added to its members' queue priority


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
    store: str = "file"  # "file": DS01_STATE_DIR/allocations.json; "etcd": shared by the fleet (the fleet section)
    strategy: str = "spread"  # "spread": least-loaded GPU first; "pack": fill the busiest GPU first
    mig_preference: str = "restricted"  # who gets MIG slices for a plain GPU count: restricted, all or none
    reservation_ttl_seconds: int = 60
    lock_timeout_seconds: int = 10
    xid_quarantine_seconds: int = 3600
    critical_xids: frozenset[int] = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95})


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = ()  # required with allocation.store: etcd (the loader says so)
    prefix: str = "/ds01/"  # every key ds01 writes lives under it
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout_seconds: float = 5.0  # per call to one endpoint


def _host_name() -> str:
    return socket.gethostname().split(".")[0].lower()


@dataclass(frozen=True)
class FleetSettings:
    """The servers that share quota and fair share through etcd (the `fleet:` section; allocation.store: etcd)."""

    node: str = field(default_factory=_host_name)
    node_ttl_seconds: int = 30  # a node whose lease lapses this long is shown as down
    etcd: EtcdSettings = EtcdSettings()


ENDPOINT_GROUPS = ("plugins", "swarm", "image_load")


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


# When an idle GPU container is stopped after its idle_timeout: "always", or "when_waiting": only while a request
# in the queue waits for the kind of slot it holds.
IdleReclaim = Literal["always", "when_waiting"]
IDLE_RECLAIM_MODES: tuple[IdleReclaim, ...] = ("always", "when_waiting")


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
    idle_reclaim: IdleReclaim = "when_waiting"


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
class HostService:
    """A service of the host that containers may reach (`networks.host_services`)."""

    address: str  # IPv4; "" for every address of the host
    port: int
    protocol: str  # tcp or udp


@dataclass(frozen=True)
class NetworkSettings:
    """What containers may reach on the host (the `networks:` section)."""

    host_services: tuple[HostService, ...] = ()  # none: containers reach no service on the host's addresses
    # Host ports users may not publish: a host service's, which a user could otherwise take while it is down and
    # answer in its place (root, Prometheus among its clients, passes the owner rules).
    reserved_ports: frozenset[int] = frozenset({3000, 9090, 9093, 9401})


@dataclass(frozen=True)
class SchedulerSettings:
    """The queue of GPU requests that wait (the `scheduler:` section): the weights of its priority's factors."""

    weight_fairshare: float = 1000.0  # times 2^(-U/S): U the user's decayed usage, S their share, both normalised
    weight_age: float = 500.0  # times min(1, waited / max_age)
    max_age_seconds: int = 7 * 24 * 3600
    usage_half_life_seconds: int = 7 * 24 * 3600  # GPU-equivalent-hours count half after this long
    default_wait_seconds: int = 3600  # how long `container create --wait` waits when no duration is given
    default_job_time_seconds: int = 4 * 3600  # a batch job's time limit when `container run` gives no --time
    max_job_log_bytes: int = 2**30  # a batch job's log in its workspace is cut here


@dataclass(frozen=True)
class ImageSettings:
    """Users' own images (the `images:` section)."""

    allowed_registries: frozenset[str] | None = None  # None: pulls from any registry
    max_context_size_bytes: int = 4 * 2**30  # a build's context, spooled to disk before the engine sees it
    prune_after_seconds: int = 7 * 24 * 3600  # dangling images and build cache unused this long are removed


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
    networks: NetworkSettings = NetworkSettings()
    images: ImageSettings = ImageSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    fleet: FleetSettings = field(default_factory=FleetSettings)
