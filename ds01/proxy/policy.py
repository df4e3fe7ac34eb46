"""The create/exec policy: a pure function from (caller, request body, resolved facts) to a rewritten body or a
`Denied`. Everything it needs from the outside world (paths, owners of referenced objects) is resolved by the
caller beforehand and passed in, so this module does no I/O and can be tested exhaustively.

The engine decodes JSON field names case-insensitively, so every field is read case-insensitively here and
bodies with duplicate or case-variant keys are refused outright.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ds01 import labels, names
from ds01.config import SecuritySettings
from ds01.errors import Denied
from ds01.gpus.placement import GpuRequest
from ds01.proxy import allowlist, devices, networks, resources, runas
from ds01.proxy.bodies import as_list, field, host_config, is_volume_name, mounts_of, set_field, split_bind
from ds01.proxy.destinations import check_destinations, check_restart_policy, label_anonymous_volumes
from ds01.proxy.runas import Caller
from ds01.reasons import Reason

VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # the engine's own rule
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
    image_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    image_env: tuple[str, ...] = ()
    log_driver: str = "json-file"  # the engine's default
    network_owners: Mapping[str, str | None] = dataclasses.field(default_factory=dict)  # "" unowned, None missing
    missing_volumes: frozenset[str] = frozenset()  # named volumes that do not exist yet: the proxy makes them


@dataclass(frozen=True)
class References:
    bind_sources: tuple[str, ...]
    containers: tuple[str, ...]
    volumes: tuple[str, ...]
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreatePlan:
    body: dict[str, Any]
    gpu_request: GpuRequest | None
    stripped_env: tuple[str, ...]
    bind_sources: tuple[str, ...]  # absolute bind sources as written, each once, in order
    notes: tuple[str, ...]  # what the proxy changed, for the reply's warnings
    joins_user_network: bool = False  # the caller's own network, which the proxy makes on first use
    wait_seconds: int = 0  # how long its GPU request may wait in the queue (the ds01.request.wait label)


def _deny(reason: Reason, message: str) -> Denied:
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
    return References(tuple(sources), tuple(refs), tuple(volumes), networks.networks_of(body))


def _within(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_bind_source(caller: Caller, source: str, facts: Facts, security: SecuritySettings) -> None:
    if not posixpath.isabs(source):
        raise _deny(Reason.MOUNT_OUTSIDE_HOME, f"bind source {source!r} must be an absolute path")
    resolved = facts.paths.get(source)
    if resolved is None:
        raise _deny(Reason.MOUNT_OUTSIDE_HOME, f"bind source {source} does not exist; create it in your home first")
    if resolved.real in facts.engine_sockets or PurePosixPath(resolved.real).name in ("docker.sock", "containerd.sock"):
        raise _deny(Reason.SOCKET_MOUNT, f"{source} is a Docker or ds01 socket; mounting it would give away the host.")
    allowed = [root for root in (caller.home, *security.data_dirs) if root]
    if not _within(resolved.real, allowed):
        home = caller.home or f"none: {caller.home_problem or 'no home directory'}"
        raise _deny(Reason.MOUNT_OUTSIDE_HOME, (
            f"bind mount of {source} (really {resolved.real}) is outside your home ({home}) and the data "
            f"directories ({', '.join(security.data_dirs) or 'none configured'}). Mount a directory under them."))
    if any(_within(socket, [resolved.real]) for socket in facts.engine_sockets):
        raise _deny(Reason.SOCKET_MOUNT, f"{source} contains a Docker or ds01 socket; mount a narrower directory.")
    if resolved.closed_at is not None:
        raise _deny(Reason.MOUNT_OUTSIDE_HOME, (
            f"bind source {source} lies inside {resolved.closed_at}, which you may not enter; a container reaches "
            "only what you can reach on the host."))
    if security.require_nosuid_mounts and not resolved.mount_hardened:
        raise _deny(Reason.MOUNT_NOT_HARDENED, (
            f"bind source {source} lies on the host mount {resolved.mount_point}, which lacks nosuid and nodev: a "
            "file made through a container there could act as a setuid program or a device on the host. Ask an "
            f"admin to add nosuid,nodev to the options of {resolved.mount_point} in /etc/fstab (then "
            f"mount -o remount {resolved.mount_point})."))


_ID_LIKE = re.compile(r"[0-9a-f]{12,64}")


def check_object_name(caller: Caller, kind: str, name: str) -> None:
    """A name is the caller's own: not in another uid's NAME._.UID space, and not shaped like an object id, which
    would shadow someone else's object when it is referred to by id."""
    if caller.is_admin or not name:
        return
    suffix = name.rpartition(names.NAME_SEPARATOR)[2] if names.NAME_SEPARATOR in name else None
    if suffix is not None and suffix != str(caller.uid):
        raise _deny(Reason.FOREIGN_NAME, (
            f"the name {name} ends in {names.NAME_SEPARATOR}{suffix}, another user's name space "
            f"(container create uses NAME{names.NAME_SEPARATOR}{caller.uid} for yours); pick another "
            "name."))
    if _ID_LIKE.fullmatch(name.lstrip("/")):
        raise _deny(Reason.FOREIGN_NAME, f"the {kind} name {name} looks like an object id, and would shadow the {kind} "
                                         "that has that id; pick a name with other letters in it.")


def within_host(caller: Caller, host_cpus: float) -> Caller:
    """The caller with the per-container CPU limit capped at the host's count: the engine refuses more."""
    return dataclasses.replace(caller, limits=dataclasses.replace(caller.limits, cpus=min(caller.limits.cpus,
                                                                                          host_cpus)))


def _check_owned(caller: Caller, owner: str | None, what: str) -> None:
    if owner != caller.user and not caller.is_admin:
        raise _deny(Reason.NOT_OWNER, f"{what} is not yours; you may only refer to your own containers and volumes.")


def _check_mounts(caller: Caller, host: dict[str, Any], facts: Facts, security: SecuritySettings) -> None:
    for bind in as_list(field(host, "Binds"), "HostConfig.Binds"):
        source, rest = split_bind(bind)
        options = rest.partition(":")[2].split(",")
        if {"shared", "rshared"} & set(options):
            raise _deny(Reason.MOUNT_PROPAGATION, f"bind {bind}: shared propagation would carry mounts made in the "
                                                  "container back to the host; use private or slave.")
        if {"z", "Z"} & set(options):
            raise _deny(Reason.SECURITY_OPT, f"bind {bind}: :z and :Z make the engine relabel the whole tree as root; "
                                             "leave them out.")
        if is_volume_name(source) and not VOLUME_NAME.fullmatch(source):
            raise _deny(Reason.BAD_REQUEST, f"bind {bind}: {source!r} is neither an absolute path nor a volume name "
                                            "(letters, digits and _ . -, starting with a letter or digit).")
        if is_volume_name(source) and source not in facts.missing_volumes:
            _check_owned(caller, facts.volume_owners.get(source), f"volume {source}")
        elif not is_volume_name(source):
            check_bind_source(caller, source, facts, security)
    for mount in mounts_of(host):
        kind, source = field(mount, "Type"), field(mount, "Source")
        if kind == "bind":
            check_bind_source(caller, str(source), facts, security)
        elif kind == "volume" and field(field(mount, "VolumeOptions") or {}, "DriverConfig"):
            raise _deny(Reason.MOUNT_TYPE, "volume driver options are not allowed: they can bind any host path.")
        elif kind == "volume" and source and source not in facts.missing_volumes:
            _check_owned(caller, facts.volume_owners.get(str(source)), f"volume {source}")
        elif kind not in ("volume", "tmpfs"):
            raise _deny(Reason.MOUNT_TYPE, f"mounts of type {kind!r} are not allowed; use bind, volume or tmpfs.")
    for source in as_list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
        ref = str(source).split(":", 1)[0]
        _check_owned(caller, facts.container_owners.get(ref), f"container {ref} (in VolumesFrom)")


def _check_namespaces(caller: Caller, host: dict[str, Any], facts: Facts) -> None:
    for mode_name in HOST_MODES:
        mode = field(host, mode_name)
        if mode == "host":
            raise _deny(Reason.HOST_NAMESPACE, f"{mode_name}=host would share the host's namespace; it is not allowed.")
        ref = _container_ref(mode)
        if ref:
            _check_owned(caller, facts.container_owners.get(ref), f"container {ref} (in {mode_name})")


def _check_escapes(caller: Caller, host: dict[str, Any], facts: Facts, security: SecuritySettings) -> None:
    for cap in as_list(field(host, "CapAdd"), "HostConfig.CapAdd"):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in security.cap_add_allowed:
            allowed = ", ".join(sorted(security.cap_add_allowed)) or "none"
            raise _deny(Reason.CAPABILITY, f"adding capability {cap} is not allowed (allowed: {allowed}).")
    _check_namespaces(caller, host, facts)
    for option in as_list(field(host, "SecurityOpt"), "HostConfig.SecurityOpt"):
        text = str(option).replace(":", "=", 1).lower()
        custom_seccomp = text.startswith("seccomp=") and text != "seccomp=builtin"
        # SELinux: only the default type; spc_t is as unconfined as label=disable, and a level or user of
        # another container's would reach its files.
        selinux_label = text.startswith("label=") and text[6:].replace("=", ":", 1) != "type:container_t"
        if text == "disable" or custom_seccomp or selinux_label or any(m in text for m in UNCONFINED_MARKERS):
            raise _deny(Reason.SECURITY_OPT, f"security option {str(option)[:80]!r} changes confinement; it is not "
                                             "allowed (the default seccomp and AppArmor profiles apply).")
    if field(host, "CgroupParent"):
        raise _deny(Reason.CGROUP_PARENT, "the cgroup parent is set by ds01 (your per-user slice); leave it out.")
    runtime = field(host, "Runtime")
    if runtime not in (None, "", "runc"):
        raise _deny(Reason.RUNTIME, f"runtime {runtime!r} is not allowed; GPUs are granted with --gpus, not a runtime.")
    _check_mounts(caller, host, facts, security)


def _check_image(image_labels: Mapping[str, str]) -> None:
    unknown = sorted(key for key in image_labels if key.casefold().startswith(labels.LABEL_PREFIX)
                     and key not in labels.KNOWN_LABELS)
    if unknown:
        raise _deny(Reason.IMAGE_LABEL, (
            f"the image carries the label(s) {', '.join(unknown)}, in ds01's reserved ds01.* namespace, which ds01 "
            "does not know; it would show on the container as if ds01 had set it. Rebuild the image without them."))


def bind_sources(host: dict[str, Any]) -> tuple[str, ...]:
    """The absolute bind sources of a create body as written, each once, in order."""
    sources = [source for source, _ in map(split_bind, as_list(field(host, "Binds"), "HostConfig.Binds"))
               if not is_volume_name(source)]
    sources += [str(field(mount, "Source")) for mount in mounts_of(host) if field(mount, "Type") == "bind"]
    return tuple(dict.fromkeys(sources))


def plan_create(caller: Caller, body: dict[str, Any], facts: Facts, security: SecuritySettings,
                reserved_ports: frozenset[int], *,
                cgroup_parent: str, client_type: str, created_at: str, gpu_gid: int | None) -> CreatePlan:
    """Check a container create body and rewrite it: identity, limits, labels, cgroup parent; GPUs are granted
    and bind sources pinned later."""
    body = allowlist.canonical(body, "ContainerConfig")
    host = host_config(body)
    _check_escapes(caller, host, facts, security)
    _check_image(facts.image_labels)
    notes = networks.confine_ports(host, caller, reserved_ports)
    resources.check_log_config(host, facts.log_driver)
    joins_user_network = networks.join_own_network(caller, body, host)
    networks.check_networks(caller, body, facts.network_owners)
    found_labels = field(body, "Labels") or {}
    check_destinations(body, host, facts.image_working_dir, facts.image_volumes)
    check_restart_policy(caller.is_admin, field(host, "RestartPolicy"), bool(bind_sources(host)))
    gpu_request = devices.gpu_request(host, found_labels)
    wait_seconds = devices.wait_seconds(found_labels, gpu_request)
    notes += runas.run_as_caller(caller, body, host, security, gpu_gid if gpu_request is not None else None)
    resources.apply_limits(host, caller.limits)
    resources.check_tmpfs(host, int(field(host, "Memory")))
    set_field(host, "CgroupParent", cgroup_parent)
    stripped = devices.strip_gpu_env(body)
    overridden = devices.override_image_gpu_env(body, facts.image_env)
    if overridden:
        notes += (f"ds01: the image's {', '.join(overridden)} are overridden: GPUs come from the grant alone",)
    owner = {labels.USER: caller.user, labels.UID: str(caller.uid)}
    label_anonymous_volumes(body, host, facts.image_volumes, owner)
    # Every label ds01 reads is written, empty when unset, so that none of the image's own shows through.
    stamped = {**{k: v for k, v in found_labels.items() if k not in labels.REQUEST_LABELS},
               **dict.fromkeys(labels.KNOWN_LABELS, ""), **owner,
               labels.CREATED_AT: created_at, labels.TYPE: client_type}
    set_field(body, "Labels", stamped)
    set_field(host, "DeviceRequests", [])
    return CreatePlan(body=body, gpu_request=gpu_request, stripped_env=stripped, bind_sources=bind_sources(host),
                      notes=notes, joins_user_network=joins_user_network, wait_seconds=wait_seconds)


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
    stamped = field(body, "Labels")
    stamped[labels.BIND_KEY] = key
    stamped[labels.BIND_SOURCES] = json.dumps(list(originals))


def check_update(caller: Caller, body: dict[str, Any], has_host_mounts: bool,
                 current: Mapping[str, Any]) -> dict[str, Any]:
    """`docker update` may lower limits or raise them up to the user's own, and touches nothing else of note. The
    limits are those the container has after the update: its current values with the update's changes."""
    body = allowlist.canonical(body, "Resources")
    check_restart_policy(caller.is_admin, field(body, "RestartPolicy"), has_host_mounts)
    for name in ("DeviceRequests", "CgroupParent"):
        if field(body, name):
            reason = Reason.DEVICES if name.startswith("Device") else Reason.CGROUP_PARENT
            raise _deny(reason, f"{name} cannot be updated.")
    # On update the engine reads these as "no limit", which would lift the user's cap.
    for name in ("PidsLimit", "CpuQuota", "Memory", "NanoCpus", "MemorySwap"):
        value = resources.integer(body, name)
        if value is not None and (value < 0 or (name == "PidsLimit" and value == 0)):
            raise _deny(Reason.LIMIT_LIFTED, f"{name}={value} would remove your limit; give a value within it.")
    memory = resources.integer(body, "Memory")
    if memory and not field(body, "MemorySwap"):
        # The engine would keep the current swap limit, made for the old memory; swap stays twice the memory.
        body["MemorySwap"] = 2 * memory
    resources.apply_limits(resources.merged_for_update(current, body), caller.limits, fill_defaults=False)
    return body


def check_exec(caller: Caller, body: dict[str, Any], container_user: str,
               security: SecuritySettings) -> dict[str, Any]:
    """An exec runs as the caller, like the container: no privilege, no other uid, no root."""
    body = allowlist.canonical(body, "ExecConfig")
    if not (caller.is_admin and security.admin_root):
        user = field(body, "User")
        if user in (None, ""):
            try:
                user = runas.check_user(caller, container_user)  # the container's own user, if the caller may be it
            except Denied:
                user = None  # an old root container's is not: the caller's own instead
        set_field(body, "User", runas.check_user(caller, user))
    devices.strip_gpu_env(body)
    return body
