"""The create/exec policy: a pure function from (caller, request body, resolved facts) to a rewritten body or a
`Denied`. Everything it needs from the outside world (paths, owners of referenced objects) is resolved by the
caller beforehand and passed in, so this module does no I/O and can be tested exhaustively.

The engine decodes JSON field names case-insensitively, so every field is read case-insensitively here and
bodies with duplicate or case-variant keys are refused outright.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ds01 import containers
from ds01.errors import Denied
from ds01.limits import LimitValues, SecuritySettings
from ds01.placement import GpuRequest
from ds01.units import format_size

ALLOWED_REQUEST_LABELS = frozenset({containers.REQUEST_MIG})
# Docker's default capabilities that matter only to root or to file ownership: a container of a user keeps
# none of them unless the admin allows it in security.cap_add and the request adds it.
DROPPED_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD", "NET_RAW", "SETFCAP", "SETGID",
                        "SETUID")
NO_NEW_PRIVILEGES = "no-new-privileges:true"
HOME_WITHOUT_WORKSPACE = "/tmp"  # noqa: S108 - a path inside the container, not on the host
STRIPPED_ENV_PREFIXES = ("NVIDIA_",)
STRIPPED_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES"})
HOST_MODES = ("PidMode", "IpcMode", "UTSMode", "NetworkMode", "UsernsMode", "CgroupnsMode")
UNCONFINED_MARKERS = ("unconfined", "label=disable", "label:disable")
_GO_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Caller:
    uid: int
    user: str  # sanitized name, as stamped in ds01.user
    home: str  # real path of a home that counts for bind mounts; "" for none
    is_admin: bool
    limits: LimitValues
    gid: int = -1  # primary group
    gids: frozenset[int] = frozenset()  # every group the user is in, primary included
    login: str = ""  # the login name, for USER and LOGNAME inside
    home_problem: str = ""  # why `home` is empty, for the message


@dataclass(frozen=True)
class RunAs:
    """How a caller's containers run: set by the proxy from the kernel's and the directory's word."""

    gpu_gid: int | None  # the bare-metal group (ds01-gpu), added to GPU containers so granted devices open


@dataclass(frozen=True)
class ResolvedPath:
    real: str  # symlinks resolved, normalized
    is_socket: bool
    mount_point: str = "/"  # of the host mount it lies on
    mount_hardened: bool = True  # that mount has nosuid and nodev


@dataclass(frozen=True)
class Facts:
    """The outside world, as far as one create request refers to it."""

    paths: Mapping[str, ResolvedPath]  # bind source as written -> resolved
    container_owners: Mapping[str, str | None]  # container reference -> ds01.user (None: unknown or unowned)
    volume_owners: Mapping[str, str | None]  # named volume -> ds01.user (None: missing or unowned)
    engine_sockets: frozenset[str]  # real paths of the engine's and ds01's own sockets


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


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Strict JSON: an object, no duplicate keys and no keys differing only in case (the engine folds case)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for key, _ in items:
            folded = key.casefold()
            if folded in seen:
                raise _deny("bad_request", f"the {what} has the key {key!r} twice (as {seen[folded]!r} and {key!r}); "
                                           "send each field once, spelled as the Docker API spells it.")
            seen[folded] = key
        return dict(items)

    try:
        value = json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        raise _deny("bad_request", f"the {what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _deny("bad_request", f"the {what} must be a JSON object")
    return value


def field(obj: Mapping[str, Any] | None, name: str) -> Any:
    """A field read the way the engine reads it: case-insensitively."""
    if not obj:
        return None
    folded = name.casefold()
    for key, value in obj.items():
        if key.casefold() == folded:
            return value
    return None


def set_field(obj: dict[str, Any], name: str, value: Any) -> None:
    """Replace a field, whatever its spelling, by the canonical one."""
    folded = name.casefold()
    for key in [k for k in obj if k.casefold() == folded]:
        del obj[key]
    obj[name] = value


def _host_config(body: dict[str, Any]) -> dict[str, Any]:
    host = field(body, "HostConfig")
    if host is None:
        host = {}
    if not isinstance(host, dict):
        raise _deny("bad_request", "HostConfig must be a JSON object")
    set_field(body, "HostConfig", host)
    return host


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _deny("bad_request", f"{name} must be a list")
    return value


def _split_bind(bind: str) -> tuple[str, str]:
    """("source", "rest") of a -v style bind "src:dst[:opts]"."""
    if not isinstance(bind, str) or ":" not in bind:
        raise _deny("bad_request", f"bind {bind!r} is not of the form SOURCE:TARGET[:OPTIONS]")
    source, _, rest = bind.partition(":")
    return source, rest


def _is_volume_name(source: str) -> bool:
    return not source.startswith("/")


def _mounts(host: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = _list(field(host, "Mounts"), "HostConfig.Mounts")
    if not all(isinstance(m, dict) for m in mounts):
        raise _deny("bad_request", "HostConfig.Mounts entries must be objects")
    return mounts


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
    for bind in _list(field(host, "Binds"), "HostConfig.Binds"):
        source, _ = _split_bind(bind)
        (volumes if _is_volume_name(source) else sources).append(source)
    for mount in _mounts(host):
        kind, source = field(mount, "Type"), field(mount, "Source")
        if kind == "bind" and isinstance(source, str):
            sources.append(source)
        elif kind == "volume" and isinstance(source, str) and source:
            volumes.append(source)
    for mode_name in HOST_MODES:
        ref = _container_ref(field(host, mode_name))
        if ref:
            refs.append(ref)
    for source in _list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
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
    for bind in _list(field(host, "Binds"), "HostConfig.Binds"):
        source, _ = _split_bind(bind)
        if _is_volume_name(source):
            _check_owned(caller, facts.volume_owners.get(source), f"volume {source}")
        else:
            check_bind_source(caller, source, facts, security)
    for mount in _mounts(host):
        kind, source = field(mount, "Type"), field(mount, "Source")
        if kind == "bind":
            check_bind_source(caller, str(source), facts, security)
        elif kind == "volume" and field(field(mount, "VolumeOptions") or {}, "DriverConfig"):
            raise _deny("mount_type", "volume driver options are not allowed: they can bind any host path.")
        elif kind == "volume" and source:
            _check_owned(caller, facts.volume_owners.get(str(source)), f"volume {source}")
        elif kind not in ("volume", "tmpfs"):
            raise _deny("mount_type", f"mounts of type {kind!r} are not allowed; use bind, volume or tmpfs.")
    for source in _list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
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
    for cap in _list(field(host, "CapAdd"), "HostConfig.CapAdd"):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in security.cap_add_allowed:
            allowed = ", ".join(sorted(security.cap_add_allowed)) or "none"
            raise _deny("capability", f"adding capability {cap} is not allowed (allowed: {allowed}).")
    if _list(field(host, "Devices"), "HostConfig.Devices") or _list(
            field(host, "DeviceCgroupRules"), "HostConfig.DeviceCgroupRules"):
        raise _deny("devices", "host devices cannot be passed in; GPUs are granted with --gpus.")
    _check_namespaces(caller, host, facts)
    for option in _list(field(host, "SecurityOpt"), "HostConfig.SecurityOpt"):
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


def _go_int(text: str) -> int | None:
    """A number as the runtime parses one (Go's Atoi: an optional sign, ASCII digits), else None."""
    return int(text) if _GO_INT.fullmatch(text) else None


def check_user(caller: Caller, user: Any) -> str:
    """The canonical "uid:gid" a process of the caller runs as. Only empty, the caller's own uid, or that uid with
    one of their own gids pass: a name is looked up in the image's /etc/passwd, which the user controls, and a
    uid without a gid takes its groups from the image's /etc/group."""
    own = f"{caller.uid}:{caller.gid}"
    if user in (None, ""):
        return own
    if not isinstance(user, str):
        raise _deny("bad_request", "User must be a string")
    uid_text, _, gid_text = user.partition(":")
    uid, gid = _go_int(uid_text), _go_int(gid_text) if gid_text else caller.gid
    if uid != caller.uid or gid is None or gid not in caller.gids or gid_text.count(":"):
        raise _deny("foreign_uid", (
            f"running as {user!r} is not allowed: containers run as you (uid {caller.uid}, gid {caller.gid}). "
            f"Leave --user out, or give {own} or your uid with another of your groups (id -G)."))
    return f"{uid}:{gid}"


def _group_add(caller: Caller, host: dict[str, Any], gpu_gid: int | None) -> list[str]:
    """The caller's own supplementary groups, the ones asked for (each must be the caller's), and for a GPU
    container the bare-metal group that owns /dev/nvidia*."""
    wanted: set[int] = set(caller.gids - {caller.gid})
    for entry in _list(field(host, "GroupAdd"), "HostConfig.GroupAdd"):
        gid = _go_int(str(entry))
        if gid is None:
            raise _deny("foreign_group", (
                f"--group-add {entry} names a group, which the engine looks up in the image's /etc/group (yours to "
                "edit); give the numeric gid of one of your own groups (id -G)."))
        if gid not in caller.gids:
            raise _deny("foreign_group", f"--group-add {entry}: you are not in group {gid}; your groups are "
                                         f"{' '.join(str(g) for g in sorted(caller.gids))}.")
        wanted.add(gid)
    if gpu_gid is not None:
        wanted.add(gpu_gid)
    return [str(gid) for gid in sorted(wanted)]


def _security_options(host: dict[str, Any]) -> list[str]:
    options = [str(option) for option in _list(field(host, "SecurityOpt"), "HostConfig.SecurityOpt")]
    for option in options:
        name, _, value = option.replace("=", ":", 1).partition(":")
        if name.lower() == "no-new-privileges" and value.lower() not in ("", "true"):
            raise _deny("security_opt", "no-new-privileges is always on for ds01 containers; leave "
                                        f"{option!r} out.")
    return [*(o for o in options if not o.lower().startswith("no-new-privileges")), NO_NEW_PRIVILEGES]


def _cap_drop(host: dict[str, Any], security: SecuritySettings) -> tuple[list[str], list[str]]:
    """The capabilities to drop (the request's own plus ds01's), and which of ds01's were dropped."""
    added = {str(cap).upper().removeprefix("CAP_") for cap in _list(field(host, "CapAdd"), "HostConfig.CapAdd")}
    kept = added & security.cap_add_allowed
    ours = [cap for cap in DROPPED_CAPABILITIES if cap not in kept]
    theirs = [str(cap).upper().removeprefix("CAP_") for cap in _list(field(host, "CapDrop"), "HostConfig.CapDrop")]
    return sorted({*theirs, *ours}), ours


def _workspace_mounted(host: dict[str, Any]) -> bool:
    targets = [_split_bind(bind)[1].split(":", 1)[0] for bind in _list(field(host, "Binds"), "HostConfig.Binds")]
    targets += [str(field(mount, "Target")) for mount in _mounts(host)]
    return containers.WORKSPACE_TARGET in (t.rstrip("/") for t in targets)


def _login_env(caller: Caller, body: dict[str, Any], host: dict[str, Any]) -> None:
    """HOME, USER and LOGNAME for a uid the image's /etc/passwd does not know, unless the request sets them."""
    env = [str(entry) for entry in _list(field(body, "Env"), "Env")]
    named = {entry.split("=", 1)[0] for entry in env}
    home = containers.WORKSPACE_TARGET if _workspace_mounted(host) else HOME_WITHOUT_WORKSPACE
    login = caller.login or caller.user
    for name, value in (("HOME", home), ("USER", login), ("LOGNAME", login)):
        if name not in named:
            env.append(f"{name}={value}")
    set_field(body, "Env", env)


def _run_as_caller(caller: Caller, body: dict[str, Any], host: dict[str, Any], security: SecuritySettings,
                   gpu_gid: int | None) -> tuple[str, ...]:
    """Rewrite the body so that the container's processes have the caller's powers on the host, no more."""
    set_field(host, "SecurityOpt", _security_options(host))
    if caller.is_admin and security.admin_root:
        return ()
    user = check_user(caller, field(body, "User"))
    set_field(body, "User", user)
    groups = _group_add(caller, host, gpu_gid)
    set_field(host, "GroupAdd", groups)
    cap_drop, dropped = _cap_drop(host, security)
    set_field(host, "CapDrop", cap_drop)
    _login_env(caller, body, host)
    return (f"ds01: runs as {user} (groups {' '.join(groups) or 'none'}) with no-new-privileges; "
            f"capabilities dropped: {', '.join(dropped) or 'none'}",)


def runs_as_root(user: str | None) -> bool:
    """Whether a container's configured user is root (empty means the image's default, root for most)."""
    name = (user or "").split(":", 1)[0]
    return name in ("", "root") or _go_int(name) == 0


def root_with_host_mounts(found: Sequence[containers.ContainerInfo]) -> list[containers.ContainerInfo]:
    """Containers from before ds01 ran containers as their caller: root, with host directories mounted."""
    return [info for info in found if info.host_mounts and runs_as_root(info.user)]


def root_container_warning(info: containers.ContainerInfo) -> str:
    owner = info.labels.get(containers.USER) or "no ds01 owner"
    return (f"container {info.name} ({owner}) runs as root with host directories mounted "
            f"({', '.join(info.host_mounts)}); root there bypasses file permissions on the host. "
            f"Fix: container remove {info.name.split(containers.LEGACY_NAME_SEPARATOR)[0]}, then create it again "
            "(it then runs as its owner)")


def _strip_gpu_env(body: dict[str, Any]) -> tuple[str, ...]:
    """Drop NVIDIA_* and CUDA_VISIBLE_DEVICES: devices come from the grant, never from the environment."""
    env = [str(entry) for entry in _list(field(body, "Env"), "Env")]

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
    for request in _list(field(host, "DeviceRequests"), "HostConfig.DeviceRequests"):
        if not isinstance(request, dict):
            raise _deny("bad_request", "DeviceRequests entries must be objects")
        groups = _list(field(request, "Capabilities"), "Capabilities")
        if not all(isinstance(group, list) and all(isinstance(c, str) for c in group) for group in groups):
            raise _deny("bad_request", "Capabilities must be a list of lists of names, like [[\"gpu\"]]")
        capabilities = {c for group in groups for c in group}
        if field(request, "Driver") not in (None, "", "nvidia") or not ("gpu" in capabilities or
                                                                         field(request, "Driver") == "nvidia"):
            raise _deny("devices", "only GPU device requests (--gpus) are allowed.")
        if wanted is not None:
            raise _deny("bad_request", "send one GPU device request, not several.")
        ids = _list(field(request, "DeviceIDs"), "DeviceIDs")
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
    sources = [source for source, _ in map(_split_bind, _list(field(host, "Binds"), "HostConfig.Binds"))
               if not _is_volume_name(source)]
    sources += [str(field(mount, "Source")) for mount in _mounts(host) if field(mount, "Type") == "bind"]
    return tuple(dict.fromkeys(sources))


def plan_create(caller: Caller, body: dict[str, Any], facts: Facts, security: SecuritySettings, *,
                cgroup_parent: str, client_type: str, created_at: str, run_as: RunAs) -> CreatePlan:
    """Check a container create body and rewrite it: identity, limits, labels, cgroup parent; GPUs are granted
    and bind sources pinned later."""
    host = _host_config(body)
    _check_escapes(caller, host, facts, security)
    labels = field(body, "Labels") or {}
    if not isinstance(labels, dict):
        raise _deny("bad_request", "Labels must be an object")
    for key in labels:
        if key.casefold().startswith(containers.LABEL_PREFIX) and key not in ALLOWED_REQUEST_LABELS:
            raise _deny("label_reserved", f"label {key} is reserved: ds01 sets the ds01.* labels itself.")
    gpu_request = _gpu_request(host, labels)
    notes = _run_as_caller(caller, body, host, security, run_as.gpu_gid if gpu_request is not None else None)
    _apply_limits(host, caller.limits)
    set_field(host, "CgroupParent", cgroup_parent)
    stripped = _strip_gpu_env(body)
    stamped = {k: v for k, v in labels.items() if k not in ALLOWED_REQUEST_LABELS}
    stamped.update({containers.USER: caller.user, containers.UID: str(caller.uid),
                    containers.CREATED_AT: created_at, containers.TYPE: client_type})
    set_field(body, "Labels", stamped)
    set_field(host, "DeviceRequests", [])
    return CreatePlan(body=body, gpu_request=gpu_request, stripped_env=stripped, bind_sources=bind_sources(host),
                      notes=notes)


def pin_bind_sources(body: dict[str, Any], staged: Mapping[str, str], key: str, originals: Sequence[str]) -> None:
    """Mount the pinned staging paths in place of the sources as written, and record what they stand for."""
    host = _host_config(body)
    binds = []
    for bind in _list(field(host, "Binds"), "HostConfig.Binds"):
        source, rest = _split_bind(bind)
        binds.append(bind if _is_volume_name(source) else f"{staged[source]}:{rest}")
    if binds:
        set_field(host, "Binds", binds)
    for mount in _mounts(host):
        if field(mount, "Type") == "bind":
            set_field(mount, "Source", staged[str(field(mount, "Source"))])
    labels = field(body, "Labels")
    labels[containers.BIND_KEY] = key
    labels[containers.BIND_SOURCES] = json.dumps(list(originals))


def apply_grant(body: dict[str, Any], slots: Sequence[str], allocation_id: str, equivalents: str) -> None:
    """Point the container at exactly the granted devices, and label it with its allocation."""
    host = _host_config(body)
    set_field(host, "DeviceRequests", [{"Driver": "nvidia", "Count": 0, "DeviceIDs": list(slots),
                                        "Capabilities": [["gpu"]], "Options": {}}])
    labels = field(body, "Labels")
    labels[containers.ALLOCATION] = allocation_id
    labels[containers.GPU_EQUIVALENTS] = equivalents


def check_update(caller: Caller, body: dict[str, Any]) -> None:
    """`docker update` may lower limits or raise them up to the user's own, and touches nothing else of note."""
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
            # The container's own user when it is one the caller may run as (an old root container's is not).
            try:
                user = check_user(caller, container_user) if container_user else check_user(caller, None)
            except Denied:
                user = check_user(caller, None)
        set_field(body, "User", check_user(caller, user))
    _strip_gpu_env(body)
