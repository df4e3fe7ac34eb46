"""The create/exec policy: a pure function from (caller, request body, resolved facts) to a rewritten body or a
`Denied`. Everything it needs from the outside world (paths, owners of referenced objects) is resolved by the
caller beforehand and passed in, so this module does no I/O and can be tested exhaustively.

The engine decodes JSON field names case-insensitively, so every field is read case-insensitively here and
bodies with duplicate or case-variant keys are refused outright.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ds01 import containers, runas
from ds01.bodies import as_list, field, host_config, is_volume_name, mounts_of, set_field, split_bind
from ds01.destinations import check_destinations, check_restart_policy
from ds01.errors import Denied
from ds01.limits import LimitValues, SecuritySettings
from ds01.placement import GpuRequest
from ds01.runas import Caller
from ds01.units import format_size

ALLOWED_REQUEST_LABELS = frozenset({containers.REQUEST_MIG})
STRIPPED_ENV_PREFIXES = ("NVIDIA_",)
STRIPPED_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES"})
HOST_MODES = ("PidMode", "IpcMode", "UTSMode", "NetworkMode", "UsernsMode", "CgroupnsMode")
UNCONFINED_MARKERS = ("unconfined", "label=disable", "label:disable")


@dataclass(frozen=True)
class ResolvedPath:
    real: str  # symlinks resolved, normalized
    is_socket: bool
    mount_point: str = "/"  # of the host mount it lies on
    mount_hardened: bool = True  # that mount has nosuid and nodev
    closed_at: str | None = None  # the first directory above it the caller may not enter, by the kernel's word


@dataclass(frozen=True)
class Facts:
    """The outside world, as far as one create request refers to it."""

    paths: Mapping[str, ResolvedPath]  # bind source as written -> resolved
    container_owners: Mapping[str, str | None]  # container reference -> ds01.user (None: unknown or unowned)
    volume_owners: Mapping[str, str | None]  # named volume -> ds01.user (None: missing or unowned)
    engine_sockets: frozenset[str]  # real paths of the engine's and ds01's own sockets
    image_working_dir: str = ""  # the image's WORKDIR, where the request sets none
    image_volumes: tuple[str, ...] = ()  # the image's VOLUMEs, which become anonymous volumes


@dataclass(frozen=True)
class References:
    bind_sources: tuple[str, ...]
    containers: tuple[str, ...]
    volumes: tuple[str, ...]


@dataclass(frozen=True)
class CreatePlan:
    body: dict[str, Any]
    gpu_request: GpuRequest | None
    stripped_env: tuple[str, ...]
    bind_sources: tuple[str, ...]  # absolute bind sources as written, each once, in order
    notes: tuple[str, ...]  # what the proxy changed, for the reply's warnings


def _deny(reason: str, message: str) -> Denied:
    return Denied(reason, message)


def _container_ref(mode: Any) -> str | None:
    return mode.split(":", 1)[1] if isinstance(mode, str) and mode.startswith("container:") else None


def references(body: dict[str, Any]) -> References:
    """What a create body refers to outside itself; the proxy resolves these into `Facts`."""
    host = field(body, "HostConfig") or {}
    if not isinstance(host, dict):
        return References((), (), ())
    sources: list[str] = []
    volumes: list[str] = []
    refs: list[str] = []
    for bind in as_list(field(host, "Binds"), "HostConfig.Binds"):
        source, _ = split_bind(bind)
        (volumes if is_volume_name(source) else sources).append(source)
    for mount in mounts_of(host):
        kind, source = field(mount, "Type"), field(mount, "Source")
        if kind == "bind" and isinstance(source, str):
            sources.append(source)
        elif kind == "volume" and isinstance(source, str) and source:
            volumes.append(source)
    for mode_name in HOST_MODES:
        ref = _container_ref(field(host, mode_name))
        if ref:
            refs.append(ref)
    for source in as_list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
        if isinstance(source, str):
            refs.append(source.split(":", 1)[0])
    return References(tuple(sources), tuple(refs), tuple(volumes))


def _within(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_bind_source(caller: Caller, source: str, facts: Facts, security: SecuritySettings) -> None:
    if not posixpath.isabs(source):
        raise _deny("mount_outside_home", f"bind source {source!r} must be an absolute path")
    resolved = facts.paths.get(source)
    if resolved is None:
        raise _deny("mount_outside_home", f"bind source {source} does not exist; create it in your home first")
    if resolved.real in facts.engine_sockets or PurePosixPath(resolved.real).name in ("docker.sock", "containerd.sock"):
        raise _deny("socket_mount", f"{source} is a Docker or ds01 socket; mounting it would give away the host.")
    allowed = [root for root in (caller.home, *security.data_dirs) if root]
    if not _within(resolved.real, allowed):
        home = caller.home or f"none: {caller.home_problem or 'no home directory'}"
        raise _deny("mount_outside_home", (
            f"bind mount of {source} (really {resolved.real}) is outside your home ({home}) and the data "
            f"directories ({', '.join(security.data_dirs) or 'none configured'}). Mount a directory under them."))
    if any(_within(socket, [resolved.real]) for socket in facts.engine_sockets):
        raise _deny("socket_mount", f"{source} contains a Docker or ds01 socket; mount a narrower directory.")
    if resolved.closed_at is not None:
        raise _deny("mount_outside_home", (
            f"bind source {source} lies inside {resolved.closed_at}, which you may not enter; a container reaches "
            "only what you can reach on the host."))
    if security.require_nosuid_mounts and not resolved.mount_hardened:
        raise _deny("mount_not_hardened", (
            f"bind source {source} lies on the host mount {resolved.mount_point}, which lacks nosuid and nodev: a "
            "file made through a container there could act as a setuid program or a device on the host. Ask an "
            f"admin to add nosuid,nodev to the options of {resolved.mount_point} in /etc/fstab (then "
            f"mount -o remount {resolved.mount_point})."))


def _check_owned(caller: Caller, owner: str | None, what: str) -> None:
    if owner != caller.user and not caller.is_admin:
        raise _deny("not_owner", f"{what} is not yours; you may only refer to your own containers and volumes.")


def _check_mounts(caller: Caller, host: dict[str, Any], facts: Facts, security: SecuritySettings) -> None:
    for bind in as_list(field(host, "Binds"), "HostConfig.Binds"):
        source, _ = split_bind(bind)
        if is_volume_name(source):
            _check_owned(caller, facts.volume_owners.get(source), f"volume {source}")
        else:
            check_bind_source(caller, source, facts, security)
    for mount in mounts_of(host):
        kind, source = field(mount, "Type"), field(mount, "Source")
        if kind == "bind":
            check_bind_source(caller, str(source), facts, security)
        elif kind == "volume" and field(field(mount, "VolumeOptions") or {}, "DriverConfig"):
            raise _deny("mount_type", "volume driver options are not allowed: they can bind any host path.")
        elif kind == "volume" and source:
            _check_owned(caller, facts.volume_owners.get(str(source)), f"volume {source}")
        elif kind not in ("volume", "tmpfs"):
            raise _deny("mount_type", f"mounts of type {kind!r} are not allowed; use bind, volume or tmpfs.")
    for source in as_list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
        ref = str(source).split(":", 1)[0]
        _check_owned(caller, facts.container_owners.get(ref), f"container {ref} (in VolumesFrom)")


def _check_namespaces(caller: Caller, host: dict[str, Any], facts: Facts) -> None:
    for mode_name in HOST_MODES:
        mode = field(host, mode_name)
        if mode == "host":
            raise _deny("host_namespace", f"{mode_name}=host would share the host's namespace; it is not allowed.")
        ref = _container_ref(mode)
        if ref:
            _check_owned(caller, facts.container_owners.get(ref), f"container {ref} (in {mode_name})")


def _check_escapes(caller: Caller, host: dict[str, Any], facts: Facts, security: SecuritySettings) -> None:
    if field(host, "Privileged"):
        raise _deny("privileged", "privileged containers are not allowed: they can take over the host.")
    for cap in as_list(field(host, "CapAdd"), "HostConfig.CapAdd"):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in security.cap_add_allowed:
            allowed = ", ".join(sorted(security.cap_add_allowed)) or "none"
            raise _deny("capability", f"adding capability {cap} is not allowed (allowed: {allowed}).")
    if as_list(field(host, "Devices"), "HostConfig.Devices") or as_list(
            field(host, "DeviceCgroupRules"), "HostConfig.DeviceCgroupRules"):
        raise _deny("devices", "host devices cannot be passed in; GPUs are granted with --gpus.")
    _check_namespaces(caller, host, facts)
    for option in as_list(field(host, "SecurityOpt"), "HostConfig.SecurityOpt"):
        text = str(option).replace(":", "=", 1).lower()
        custom_seccomp = text.startswith("seccomp=") and text != "seccomp=builtin"
        if text == "disable" or custom_seccomp or any(marker in text for marker in UNCONFINED_MARKERS):
            raise _deny("security_opt", f"security option {str(option)[:80]!r} changes confinement; it is not "
                                        "allowed (the default seccomp and AppArmor profiles apply).")
    if field(host, "Sysctls"):
        raise _deny("sysctls", "setting sysctls is not allowed.")
    if field(host, "Links"):
        raise _deny("links", "legacy --link is not allowed (it copies another container's environment); use a "
                             "network of your own instead.")
    if field(host, "MaskedPaths") is not None or field(host, "ReadonlyPaths") is not None:
        raise _deny("security_opt", "changing the masked or read-only system paths is not allowed.")
    if field(host, "CgroupParent"):
        raise _deny("cgroup_parent", "the cgroup parent is set by ds01 (your per-user slice); leave it out.")
    runtime = field(host, "Runtime")
    if runtime not in (None, "", "runc"):
        raise _deny("runtime", f"runtime {runtime!r} is not allowed; GPUs are granted with --gpus, not a runtime.")
    _check_mounts(caller, host, facts, security)


def _strip_gpu_env(body: dict[str, Any]) -> tuple[str, ...]:
    """Drop NVIDIA_* and CUDA_VISIBLE_DEVICES: devices come from the grant, never from the environment."""
    env = [str(entry) for entry in as_list(field(body, "Env"), "Env")]

    def gpu_variable(entry: str) -> bool:
        name = entry.split("=", 1)[0]
        return name in STRIPPED_ENV_NAMES or name.upper().startswith(STRIPPED_ENV_PREFIXES)

    set_field(body, "Env", [entry for entry in env if not gpu_variable(entry)])
    return tuple(entry for entry in env if gpu_variable(entry))


def _integer(obj: Mapping[str, Any], name: str) -> int | None:
    value = field(obj, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _deny("bad_request", f"{name} must be a whole number, not {value!r}")
    return value


def _size_text(size_bytes: int) -> str:
    text = format_size(size_bytes)
    return f"{text} bytes" if text.isdigit() else text


def _apply_limits(host: dict[str, Any], limits: LimitValues, fill_defaults: bool = True) -> None:
    nano = _integer(host, "NanoCpus")
    quota, period = _integer(host, "CpuQuota"), _integer(host, "CpuPeriod") or 100_000
    asked = (nano / 1e9) if nano else (quota / period if quota and quota > 0 else None)
    if asked is not None and asked > limits.cpus:
        raise _deny("limit_cpus", f"{asked:g} CPUs asked for; your per-container limit is {limits.cpus:g}.")
    if asked is None and fill_defaults:
        set_field(host, "NanoCpus", int(limits.cpus * 1e9))
    for name, limit, what in (("Memory", limits.memory_bytes, "memory"), ("ShmSize", limits.shm_size_bytes, "shm")):
        value = _integer(host, name) or 0
        if value > limit:
            raise _deny(f"limit_{what}", f"{_size_text(value)} of {what} asked for; your per-container limit is "
                                         f"{_size_text(limit)}.")
        if value <= 0 and fill_defaults:
            set_field(host, name, limit)
    pids = _integer(host, "PidsLimit")
    if pids is not None and pids > limits.pids_limit:
        raise _deny("limit_pids", f"a pids limit of {pids} asked for; your per-container limit is {limits.pids_limit}.")
    if (pids is None or pids <= 0) and fill_defaults:
        set_field(host, "PidsLimit", limits.pids_limit)


def _gpu_request(host: dict[str, Any], labels: Mapping[str, str]) -> GpuRequest | None:
    wanted: GpuRequest | None = None
    for request in as_list(field(host, "DeviceRequests"), "HostConfig.DeviceRequests"):
        if not isinstance(request, dict):
            raise _deny("bad_request", "DeviceRequests entries must be objects")
        groups = as_list(field(request, "Capabilities"), "Capabilities")
        if not all(isinstance(group, list) and all(isinstance(c, str) for c in group) for group in groups):
            raise _deny("bad_request", "Capabilities must be a list of lists of names, like [[\"gpu\"]]")
        capabilities = {c for group in groups for c in group}
        if field(request, "Driver") not in (None, "", "nvidia") or not ("gpu" in capabilities or
                                                                         field(request, "Driver") == "nvidia"):
            raise _deny("devices", "only GPU device requests (--gpus) are allowed.")
        if wanted is not None:
            raise _deny("bad_request", "send one GPU device request, not several.")
        ids = as_list(field(request, "DeviceIDs"), "DeviceIDs")
        count = _integer(request, "Count") or 0
        if ids:
            wanted = GpuRequest(devices=tuple(str(i) for i in ids))
        elif count == -1:
            wanted = GpuRequest(all_gpus=True)
        else:
            wanted = GpuRequest(count=int(count))
    mig = labels.get(containers.REQUEST_MIG)
    if mig:
        if wanted is not None:
            raise _deny("bad_request", f"ask for GPUs either with --gpus or with the {containers.REQUEST_MIG} "
                                       "label, not both.")
        wanted = GpuRequest(mig_profile=mig)
    return wanted


def bind_sources(host: dict[str, Any]) -> tuple[str, ...]:
    """The absolute bind sources of a create body as written, each once, in order."""
    sources = [source for source, _ in map(split_bind, as_list(field(host, "Binds"), "HostConfig.Binds"))
               if not is_volume_name(source)]
    sources += [str(field(mount, "Source")) for mount in mounts_of(host) if field(mount, "Type") == "bind"]
    return tuple(dict.fromkeys(sources))


def plan_create(caller: Caller, body: dict[str, Any], facts: Facts, security: SecuritySettings, *,
                cgroup_parent: str, client_type: str, created_at: str, gpu_gid: int | None) -> CreatePlan:
    """Check a container create body and rewrite it: identity, limits, labels, cgroup parent; GPUs are granted
    and bind sources pinned later."""
    host = host_config(body)
    _check_escapes(caller, host, facts, security)
    labels = field(body, "Labels") or {}
    if not isinstance(labels, dict):
        raise _deny("bad_request", "Labels must be an object")
    for key in labels:
        if key.casefold().startswith(containers.LABEL_PREFIX) and key not in ALLOWED_REQUEST_LABELS:
            raise _deny("label_reserved", f"label {key} is reserved: ds01 sets the ds01.* labels itself.")
    check_destinations(body, host, facts.image_working_dir, facts.image_volumes)
    check_restart_policy(caller.is_admin, field(host, "RestartPolicy"), bool(bind_sources(host)))
    gpu_request = _gpu_request(host, labels)
    notes = runas.run_as_caller(caller, body, host, security, gpu_gid if gpu_request is not None else None)
    _apply_limits(host, caller.limits)
    set_field(host, "CgroupParent", cgroup_parent)
    stripped = _strip_gpu_env(body)
    stamped = {k: v for k, v in labels.items() if k not in ALLOWED_REQUEST_LABELS}
    # The bind labels are written empty when unused, so that an image's own labels of those names never show.
    stamped.update({containers.USER: caller.user, containers.UID: str(caller.uid),
                    containers.CREATED_AT: created_at, containers.TYPE: client_type,
                    containers.BIND_KEY: "", containers.BIND_SOURCES: ""})
    set_field(body, "Labels", stamped)
    set_field(host, "DeviceRequests", [])
    return CreatePlan(body=body, gpu_request=gpu_request, stripped_env=stripped, bind_sources=bind_sources(host),
                      notes=notes)


def pin_bind_sources(body: dict[str, Any], staged: Mapping[str, str], key: str, originals: Sequence[str]) -> None:
    """Mount the pinned staging paths in place of the sources as written, and record what they stand for."""
    host = host_config(body)
    binds = []
    for bind in as_list(field(host, "Binds"), "HostConfig.Binds"):
        source, rest = split_bind(bind)
        binds.append(bind if is_volume_name(source) else f"{staged[source]}:{rest}")
    if binds:
        set_field(host, "Binds", binds)
    for mount in mounts_of(host):
        if field(mount, "Type") == "bind":
            set_field(mount, "Source", staged[str(field(mount, "Source"))])
    labels = field(body, "Labels")
    labels[containers.BIND_KEY] = key
    labels[containers.BIND_SOURCES] = json.dumps(list(originals))


def apply_grant(body: dict[str, Any], slots: Sequence[str], allocation_id: str, equivalents: str) -> None:
    """Point the container at exactly the granted devices, and label it with its allocation."""
    host = host_config(body)
    set_field(host, "DeviceRequests", [{"Driver": "nvidia", "Count": 0, "DeviceIDs": list(slots),
                                        "Capabilities": [["gpu"]], "Options": {}}])
    labels = field(body, "Labels")
    labels[containers.ALLOCATION] = allocation_id
    labels[containers.GPU_EQUIVALENTS] = equivalents


def check_update(caller: Caller, body: dict[str, Any], has_host_mounts: bool) -> None:
    """`docker update` may lower limits or raise them up to the user's own, and touches nothing else of note."""
    check_restart_policy(caller.is_admin, field(body, "RestartPolicy"), has_host_mounts)
    for name in ("Devices", "DeviceCgroupRules", "DeviceRequests", "CgroupParent"):
        if field(body, name):
            raise _deny("devices" if name.startswith("Device") else "cgroup_parent", f"{name} cannot be updated.")
    # On update the engine reads these as "no limit", which would lift the user's cap.
    for name in ("PidsLimit", "CpuQuota", "Memory", "NanoCpus"):
        value = _integer(body, name)
        if value is not None and (value < 0 or (name == "PidsLimit" and value == 0)):
            raise _deny("limit_lifted", f"{name}={value} would remove your limit; give a value within it.")
    _apply_limits(body, caller.limits, fill_defaults=False)


def check_exec(caller: Caller, body: dict[str, Any], container_user: str, security: SecuritySettings) -> None:
    """An exec runs as the caller, like the container: no privilege, no other uid, no root."""
    if field(body, "Privileged"):
        raise _deny("privileged", "privileged exec is not allowed.")
    if not (caller.is_admin and security.admin_root):
        user = field(body, "User")
        if user in (None, ""):
            try:
                user = runas.check_user(caller, container_user)  # the container's own user, if the caller may be it
            except Denied:
                user = None  # an old root container's is not: the caller's own instead
        set_field(body, "User", runas.check_user(caller, user))
    _strip_gpu_env(body)
