"""The rule table: every field of every request body the proxy passes on, with the rule that lets it through.

Simple rules (must be false, must be empty, at least zero) carry their check, which `allowlist` runs as it walks a
body; the rest are the policy's, and each entry says where. `tests/data/docker_api_fields.json` lists the API's
fields, and a unit test fails when one of them has no rule here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ds01 import labels
from ds01.errors import Denied
from ds01.reasons import Reason


class Rule(enum.StrEnum):
    FORCED = "forced"  # the proxy sets it, whatever the request says
    LIMIT = "limit"  # checked against the caller's limits
    OWNED = "owned"  # a reference: it must name the caller's own object
    CHECKED = "checked"  # its value is checked (here or in the policy)
    HARMLESS = "harmless"  # passes as sent: it gives no power over the host or other users


class Shape(enum.Enum):
    VALUE = "value"
    OBJECT = "object"  # a nested object with its own table
    LIST = "list"  # a list; of objects with their own table when `of` is set
    MAP = "map"  # free-form keys; values are objects with their own table when `of` is set
    MAP_OF_LISTS = "map of lists"  # free-form keys; values are lists of objects with their own table


Check = Callable[[Any, str], None]  # (value, where) -> None, or raise Denied


@dataclass(frozen=True)
class FieldRule:
    rule: Rule
    why: str
    shape: Shape = Shape.VALUE
    of: str | None = None  # the table of the nested objects
    check: Check | None = None


def _is_empty(value: Any) -> bool:
    return value in (None, False, 0, "", [], {})


def must_be_empty(reason: Reason, message: str) -> Check:
    def check(value: Any, where: str) -> None:
        if not _is_empty(value):
            raise Denied(reason, message)
    return check


def must_be_absent(reason: Reason, message: str) -> Check:
    """For lists where an empty one means something (MaskedPaths: [] unmasks everything)."""
    def check(value: Any, where: str) -> None:
        if value is not None:
            raise Denied(reason, message)
    return check


def one_of(reason: Reason, allowed: tuple[str, ...], message: str) -> Check:
    def check(value: Any, where: str) -> None:
        if value not in (None, *allowed):
            raise Denied(reason, f"{where}={str(value)[:60]!r}: {message}")
    return check


def _oom_score_adj(value: Any, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise Denied(Reason.OOM_SCORE_ADJ, (
            f"{where}={value!r} is not allowed: below 0 it makes other users' processes the kernel's OOM victims "
            "instead of yours. Give 0 to 1000, or leave it out."))


def labels_check(allow_requests: bool) -> Check:
    """No `ds01.*` label from a caller, anywhere: ds01 writes those itself. A create's own labels may carry the
    documented request labels, which the proxy consumes."""
    def check(value: Any, where: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise Denied(Reason.BAD_REQUEST, f"{where} must be an object of text values")
        for key in value:
            if not key.casefold().startswith(labels.LABEL_PREFIX):
                continue
            if allow_requests and key in labels.REQUEST_LABELS:
                continue
            known = ", ".join(sorted(labels.REQUEST_LABELS)) if allow_requests else "none here"
            raise Denied(Reason.LABEL_RESERVED, f"label {key} is reserved: ds01 sets the ds01.* labels itself (request "
                                                f"labels: {known}).")
    return check


_NO_DEVICES = must_be_empty(Reason.DEVICES, "host devices cannot be passed in; GPUs are granted with --gpus.")
_WINDOWS = must_be_empty(Reason.BAD_REQUEST, "this is a Windows-only field; leave it out on this Linux host.")
_REALTIME = must_be_empty(Reason.REALTIME, "real-time CPU scheduling is not allowed: it would starve other users.")


def _h(why: str, shape: Shape = Shape.VALUE, of: str | None = None) -> FieldRule:
    return FieldRule(Rule.HARMLESS, why, shape, of)


def _c(why: str, check: Check | None = None, shape: Shape = Shape.VALUE, of: str | None = None) -> FieldRule:
    return FieldRule(Rule.CHECKED, why, shape, of, check)


def _limit(why: str, shape: Shape = Shape.VALUE, of: str | None = None) -> FieldRule:
    return FieldRule(Rule.LIMIT, why, shape, of)


def _owned(why: str, shape: Shape = Shape.VALUE, of: str | None = None) -> FieldRule:
    return FieldRule(Rule.OWNED, why, shape, of)


def _forced(why: str) -> FieldRule:
    return FieldRule(Rule.FORCED, why)


_TTY = "terminal and stream settings of the container's own processes"
_ONLY_LOWERS = "only limits the container's own I/O, inside the user's cgroup slice"
_INSPECT_ONLY = must_be_empty(Reason.NOT_OWNER, (
    "the inspect-only endpoint fields (NetworkID, EndpointID, IPAddress, ...) must be empty in a request: the engine "
    "would join the network NetworkID names. Name the network by its key, and give addresses in IPAMConfig."))

RESOURCES: dict[str, FieldRule] = {
    "CpuShares": _h("a relative weight among the user's own containers (the per-user slice caps the total)"),
    "Memory": _limit("at most the memory limit; filled in when unset"),
    "NanoCpus": _limit("at most the cpus limit; filled in when unset"),
    "CgroupParent": _forced("the per-user cgroup slice, whatever the request says"),
    "BlkioWeight": _h(_ONLY_LOWERS),
    "BlkioWeightDevice": _h(_ONLY_LOWERS, Shape.LIST, "WeightDevice"),
    "BlkioDeviceReadBps": _h(_ONLY_LOWERS, Shape.LIST, "ThrottleDevice"),
    "BlkioDeviceWriteBps": _h(_ONLY_LOWERS, Shape.LIST, "ThrottleDevice"),
    "BlkioDeviceReadIOps": _h(_ONLY_LOWERS, Shape.LIST, "ThrottleDevice"),
    "BlkioDeviceWriteIOps": _h(_ONLY_LOWERS, Shape.LIST, "ThrottleDevice"),
    "CpuPeriod": _limit("with CpuQuota, at most the cpus limit"),
    "CpuQuota": _limit("with CpuPeriod, at most the cpus limit"),
    "CpuRealtimePeriod": _c("must be 0", _REALTIME),
    "CpuRealtimeRuntime": _c("must be 0", _REALTIME),
    "CpusetCpus": _h("pins the container to some of the host's CPUs; no more CPU time than its limit"),
    "CpusetMems": _h("pins the container's memory to NUMA nodes; no more memory than its limit"),
    "Devices": _c("must be empty", _NO_DEVICES, Shape.LIST, "DeviceMapping"),
    "DeviceCgroupRules": _c("must be empty", _NO_DEVICES, Shape.LIST),
    "DeviceRequests": _c("only GPU requests, turned into a grant from the allocator (devices.gpu_request)",
                         shape=Shape.LIST, of="DeviceRequest"),
    "KernelMemory": _limit("at most the memory limit, never negative"),
    "KernelMemoryTCP": _limit("at most the memory limit, never negative"),
    "MemoryReservation": _limit("at most the memory limit, never negative"),
    "MemorySwap": _limit("at most twice the memory limit, never -1 (unlimited)"),
    "MemorySwappiness": _h("how eagerly the container's own memory is swapped"),
    "OomKillDisable": _c("must be false", must_be_empty(Reason.OOM_KILL_DISABLE, (
        "turning the OOM killer off for a container is not allowed: it would hang the host's memory instead."))),
    "PidsLimit": _limit("at most the pids_limit; filled in when unset"),
    "Ulimits": _limit("each within the ulimits limit", Shape.LIST, "Ulimit"),
    "CpuCount": _c("Windows only: must be 0", _WINDOWS),
    "CpuPercent": _c("Windows only: must be 0", _WINDOWS),
    "IOMaximumIOps": _c("Windows only: must be 0", _WINDOWS),
    "IOMaximumBandwidth": _c("Windows only: must be 0", _WINDOWS),
}

_MODE = "no host namespace; container:NAME only for the caller's own (policy._check_namespaces)"

HOST_CONFIG: dict[str, FieldRule] = {
    **RESOURCES,
    "Binds": _owned("each source in the caller's home or a data directory, checked as the caller and pinned; "
                    "each named volume the caller's (policy._check_mounts)", Shape.LIST),
    "ContainerIDFile": _h("read by the client only"),
    "LogConfig": _c("the engine's default driver, with size-capped options (resources.check_log_config)",
                    shape=Shape.OBJECT, of="LogConfig"),
    "NetworkMode": _owned(f"{_MODE}; default and bridge become the caller's own network, a named one must be the "
                          "caller's (networks.join_own_network)"),
    "PortBindings": _c("on 127.0.0.1 only, host ports 1024 and up (networks.confine_ports)",
                       shape=Shape.MAP_OF_LISTS, of="PortBinding"),
    "RestartPolicy": _c("no or on-failure (admins: any); none with host mounts (destinations)", shape=Shape.OBJECT,
                        of="RestartPolicy"),
    "AutoRemove": _h("removes the container when it exits"),
    "VolumeDriver": _c("local only", one_of(Reason.VOLUME_DRIVER, ("", "local"), "only local volumes are allowed.")),
    "VolumesFrom": _owned("only the caller's own containers (policy._check_mounts)", Shape.LIST),
    "ConsoleSize": _h(_TTY, Shape.LIST),
    "Annotations": _c("must be empty", must_be_empty(Reason.ANNOTATIONS, (
        "OCI annotations are not allowed: the runtime and its hooks (the GPU hook among them) act on them."))),
    "CapAdd": _c("only capabilities in security.cap_add (policy._check_escapes)", shape=Shape.LIST),
    "CapDrop": _c("the caller's drops plus ds01's own (runas._cap_drop)", shape=Shape.LIST),
    "CgroupnsMode": _c(_MODE),
    "Dns": _h("the container's own resolver", Shape.LIST),
    "DnsOptions": _h("the container's own resolver", Shape.LIST),
    "DnsSearch": _h("the container's own resolver", Shape.LIST),
    "ExtraHosts": _h("lines of the container's own /etc/hosts", Shape.LIST),
    "GroupAdd": _c("only numeric gids the caller is in (runas._group_add)", shape=Shape.LIST),
    "IpcMode": _c(_MODE),
    "Cgroup": _c("must be empty", must_be_empty(Reason.HOST_NAMESPACE, "HostConfig.Cgroup joins another cgroup; it is "
                                                                 "not allowed.")),
    "Links": _c("must be empty", must_be_empty(Reason.LINKS, (
        "legacy --link is not allowed (it copies another container's environment); use a network of your own "
        "instead.")), Shape.LIST),
    "OomScoreAdj": _c("0 or more", _oom_score_adj),
    "PidMode": _c(_MODE),
    "Privileged": _c("must be false", must_be_empty(Reason.PRIVILEGED, (
        "privileged containers are not allowed: they can take over the host."))),
    "PublishAllPorts": _c("admins only: it publishes on every address (networks.confine_ports)"),
    "ReadonlyRootfs": _h("makes the container's own root read-only"),
    "SecurityOpt": _c("no confinement changes; no-new-privileges forced (policy._check_escapes)",
                      shape=Shape.LIST),
    "StorageOpt": _c("must be empty", must_be_empty(Reason.STORAGE_OPT, "storage driver options are not allowed."),
                     Shape.MAP),
    "Tmpfs": _c("sizes counted against the memory limit, never at /dev/shm (resources.check_tmpfs)",
                shape=Shape.MAP),
    "UTSMode": _c(_MODE),
    "UsernsMode": _c(_MODE),
    "ShmSize": _limit("at most the shm_size limit; filled in when unset"),
    "Sysctls": _c("must be empty", must_be_empty(Reason.SYSCTLS, "setting sysctls is not allowed."), Shape.MAP),
    "Runtime": _c("runc only (policy._check_escapes)"),
    "Isolation": _c("default only", one_of(Reason.BAD_REQUEST, ("", "default"), "isolation is for Windows hosts.")),
    "Mounts": _owned("bind, volume and tmpfs only, each checked like Binds and Tmpfs (policy._check_mounts)",
                     Shape.LIST, "Mount"),
    "MaskedPaths": _c("must be absent", must_be_absent(Reason.SECURITY_OPT, (
        "changing the masked or read-only system paths is not allowed.")), Shape.LIST),
    "ReadonlyPaths": _c("must be absent", must_be_absent(Reason.SECURITY_OPT, (
        "changing the masked or read-only system paths is not allowed.")), Shape.LIST),
    "Init": _h("runs an init process inside the container"),
    "Capabilities": _c("must be empty (API 1.40's whole capability list)", must_be_empty(Reason.CAPABILITY, (
        "HostConfig.Capabilities replaces the capability set; use CapAdd within security.cap_add.")), Shape.LIST),
}

CONTAINER_CONFIG: dict[str, FieldRule] = {
    "Hostname": _h("the container's own host name"),
    "Domainname": _h("the container's own domain name"),
    "User": _forced("the caller's uid:gid (runas.check_user)"),
    "AttachStdin": _h(_TTY),
    "AttachStdout": _h(_TTY),
    "AttachStderr": _h(_TTY),
    "ExposedPorts": _h("metadata; publishing is PortBindings' rule", Shape.MAP),
    "Tty": _h(_TTY),
    "OpenStdin": _h(_TTY),
    "StdinOnce": _h(_TTY),
    "Env": _c("NVIDIA_* and CUDA_VISIBLE_DEVICES replaced by the grant; HOME, USER, LOGNAME added (policy)",
              shape=Shape.LIST),
    "Cmd": _h("what runs, as the caller", Shape.LIST),
    "Healthcheck": _h("a command run inside the container, as its user", Shape.OBJECT, "HealthConfig"),
    "ArgsEscaped": _h("Windows command-line quoting"),
    "Image": _c("inspected: its ds01.* labels and GPU variables are overridden (policy.plan_create)"),
    "Volumes": _c("anonymous volumes, owned by the caller; placed by the destination rules", shape=Shape.MAP),
    "WorkingDir": _c("never below a host directory or a volume (destinations)"),
    "Entrypoint": _h("what runs, as the caller", Shape.LIST),
    "NetworkDisabled": _h("takes the container off every network"),
    "MacAddress": _h("the container's own interface address"),
    "OnBuild": _h("image metadata for builds", Shape.LIST),
    "Labels": _c("no ds01.* label except the request labels, which the proxy consumes", labels_check(True),
                 Shape.MAP),
    "StopSignal": _h("the signal its own stop sends"),
    "StopTimeout": _h("cleanup and ds01 stops give their own timeout"),
    "Shell": _h("the shell of RUN-style commands", Shape.LIST),
    "HostConfig": _c("see HostConfig", shape=Shape.OBJECT, of="HostConfig"),
    "NetworkingConfig": _c("see NetworkingConfig", shape=Shape.OBJECT, of="NetworkingConfig"),
}

TABLES: dict[str, dict[str, FieldRule]] = {
    "ContainerConfig": CONTAINER_CONFIG,
    "HostConfig": HOST_CONFIG,
    "Resources": {**RESOURCES, "RestartPolicy": HOST_CONFIG["RestartPolicy"],
                  "Init": _h("the engine ignores it in an update")},
    "RestartPolicy": {"Name": _c("no or on-failure (admins: any) (destinations.check_restart_policy)"),
                      "MaximumRetryCount": _h("how often on-failure retries")},
    "LogConfig": {"Type": _c("the engine's default driver only (resources.check_log_config)"),
                  "Config": _c("max-size and max-file within caps, nothing else (resources.check_log_config)",
                               shape=Shape.MAP)},
    "HealthConfig": {name: _h("when and how the health command runs") for name in (
        "Test", "Interval", "Timeout", "Retries", "StartPeriod", "StartInterval")},
    "Mount": {
        "Type": _c("bind, volume or tmpfs (policy._check_mounts)"),
        "Source": _owned("a bind source checked as for Binds; a volume the caller's (policy._check_mounts)"),
        "Target": _c("placed by the destination rules (destinations)"),
        "ReadOnly": _h("makes the mount read-only"),
        "Consistency": _h("a macOS file-sharing hint"),
        "BindOptions": _c("see Mount.BindOptions", shape=Shape.OBJECT, of="Mount.BindOptions"),
        "VolumeOptions": _c("see Mount.VolumeOptions", shape=Shape.OBJECT, of="Mount.VolumeOptions"),
        "TmpfsOptions": _c("see Mount.TmpfsOptions", shape=Shape.OBJECT, of="Mount.TmpfsOptions"),
        "ImageOptions": _c("must be empty: image mounts are not allowed",
                           must_be_empty(Reason.MOUNT_TYPE, "image mounts are not allowed; use bind, volume or tmpfs."),
                           Shape.OBJECT, "Mount.ImageOptions"),
        "ClusterOptions": _c("must be empty", must_be_empty(Reason.MOUNT_TYPE, "cluster volumes are not allowed."),
                             Shape.OBJECT, "Mount.ClusterOptions"),
    },
    "Mount.ImageOptions": {"Subpath": _c("refused with ImageOptions")},
    "Mount.ClusterOptions": {},
    "Mount.BindOptions": {
        "Propagation": _c("private or slave only", one_of(Reason.MOUNT_PROPAGATION, (
            "", "private", "rprivate", "slave", "rslave"), "shared propagation would carry mounts made in the "
            "container back to the host; use private or slave.")),
        "NonRecursive": _h("mounts less of the source"),
        "CreateMountpoint": _c("must be false", must_be_empty(Reason.MOUNT_OUTSIDE_HOME, (
            "CreateMountpoint makes the engine create the source on the host as root; create it yourself first."))),
        "ReadOnlyNonRecursive": _h("makes less of the mount read-only, never more writable than the source"),
        "ReadOnlyForceRecursive": _h("makes the mount read-only all the way down"),
    },
    "Mount.VolumeOptions": {
        "NoCopy": _h("skips copying the image's files into a new volume"),
        "Labels": _c("no ds01.* label", labels_check(False), Shape.MAP),
        "DriverConfig": _c("must be empty", must_be_empty(Reason.MOUNT_TYPE, (
            "volume driver options are not allowed: they can bind any host path.")), Shape.OBJECT,
            "Mount.VolumeOptions.DriverConfig"),
        "Subpath": _h("a directory inside the caller's own volume; the engine keeps it inside"),
    },
    "Mount.VolumeOptions.DriverConfig": {"Name": _c("refused with DriverConfig"),
                                         "Options": _c("refused with DriverConfig", shape=Shape.MAP)},
    "Mount.TmpfsOptions": {"SizeBytes": _limit("counted against the memory limit (resources.check_tmpfs)"),
                           "Mode": _h("permissions of the container's own tmpfs"),
                           "Options": _h("mount flags of the container's own tmpfs", Shape.LIST)},
    "DeviceRequest": {"Driver": _c("nvidia or empty (devices.gpu_request)"),
                      "Count": _c("turned into a grant (devices.gpu_request)"),
                      "DeviceIDs": _c("turned into a grant (devices.gpu_request)", shape=Shape.LIST),
                      "Capabilities": _c("gpu only (devices.gpu_request)", shape=Shape.LIST),
                      "Options": _c("must be empty", must_be_empty(Reason.DEVICES,
                                                                   "GPU driver options are not allowed."),
                                    Shape.MAP)},
    "DeviceMapping": {name: _c("refused with Devices") for name in ("PathOnHost", "PathInContainer",
                                                                    "CgroupPermissions")},
    "ThrottleDevice": {"Path": _h(_ONLY_LOWERS), "Rate": _h(_ONLY_LOWERS)},
    "WeightDevice": {"Path": _h(_ONLY_LOWERS), "Weight": _h(_ONLY_LOWERS)},
    "Ulimit": {"Name": _limit("one the ulimits limit names"), "Soft": _limit("at most Hard"),
               "Hard": _limit("at most the ulimits limit")},
    "PortBinding": {"HostIp": _c("127.0.0.1; 0.0.0.0, :: and none are rewritten to it (networks.confine_ports)"),
                    "HostPort": _c("1024 and up, or empty for a random one (networks.confine_ports)")},
    "NetworkingConfig": {"EndpointsConfig": _owned("each network the caller's own (networks.check_networks)", Shape.MAP,
                                                   "EndpointSettings")},
    "EndpointSettings": {
        "IPAMConfig": _h("addresses on the caller's own network", Shape.OBJECT, "EndpointIPAMConfig"),
        "Links": _c("must be empty", must_be_empty(Reason.LINKS, "legacy links are not allowed; use a network of your "
                                                                 "own."), Shape.LIST),
        "Aliases": _h("names on the caller's own network", Shape.LIST),
        "DNSNames": _h("names on the caller's own network", Shape.LIST),
        "MacAddress": _h("the container's own interface address"),
        "DriverOpts": _c("must be empty", must_be_empty(Reason.NETWORK_DRIVER, "endpoint driver options are not "
                                                                               "allowed."), Shape.MAP),
        "GwPriority": _h("which of the container's own networks is its default route"),
        # Inspect-only, but the engine joins the network NetworkID names, whatever the key says.
        **{name: _c("must be empty: an inspect-only field", _INSPECT_ONLY) for name in (
            "NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "IPv6Gateway", "GlobalIPv6Address",
            "GlobalIPv6PrefixLen")},
    },
    "EndpointIPAMConfig": {"IPv4Address": _h("an address on the caller's own network"),
                           "IPv6Address": _h("an address on the caller's own network"),
                           "LinkLocalIPs": _h("link-local addresses of the container", Shape.LIST)},
    "ExecConfig": {
        **{name: _h(_TTY) for name in ("AttachStdin", "AttachStdout", "AttachStderr", "DetachKeys", "Tty",
                                       "Detach")},
        "ConsoleSize": _h(_TTY, Shape.LIST),
        "Env": _c("NVIDIA_* and CUDA_VISIBLE_DEVICES removed (policy.check_exec)", shape=Shape.LIST),
        "Cmd": _h("what runs, as the caller", Shape.LIST),
        "Privileged": _c("must be false", must_be_empty(Reason.PRIVILEGED, "privileged exec is not allowed.")),
        "User": _forced("the caller's uid:gid (policy.check_exec)"),
        "WorkingDir": _h("where the command starts, inside the container"),
        "Container": _h("docker-py names the container again; the engine acts on the one in the path"),
    },
    "ExecStartConfig": {"Detach": _h(_TTY), "Tty": _h(_TTY), "ConsoleSize": _h(_TTY, Shape.LIST)},
    "VolumeCreateOptions": {
        "Name": _c("never someone else's existing volume (gate._create_owned)"),
        "Driver": _c("local only", one_of(Reason.VOLUME_DRIVER, ("", "local"), "only local volumes can be created.")),
        "DriverOpts": _c("must be empty", must_be_empty(Reason.VOLUME_DRIVER, (
            "only plain local volumes can be created: driver options can bind any host path.")), Shape.MAP),
        "Labels": _c("no ds01.* label; ds01.user and ds01.uid are stamped", labels_check(False), Shape.MAP),
        "ClusterVolumeSpec": _c("must be empty", must_be_empty(Reason.VOLUME_DRIVER,
                                                               "cluster volumes are not allowed."),
                                Shape.OBJECT),
    },
    "NetworkCreateRequest": {
        "Name": _h("the network's name; the engine keeps each network's own id"),
        "CheckDuplicate": _h("refuses a duplicate name"),
        "Driver": _c("bridge only",
                     one_of(Reason.NETWORK_DRIVER, ("", "bridge"), "only bridge networks can be created.")),
        "Scope": _c("local only", one_of(Reason.NETWORK_DRIVER, ("", "local"), "only local networks can be created.")),
        "Internal": _h("cuts the network off from the outside"),
        "Attachable": _h("a swarm flag; no effect on a local bridge"),
        "Ingress": _c("must be false", must_be_empty(Reason.NETWORK_DRIVER, "ingress networks are for swarm.")),
        "ConfigOnly": _c("must be false", must_be_empty(Reason.NETWORK_DRIVER,
                                                        "config-only networks are not allowed.")),
        "ConfigFrom": _c("must be empty", must_be_empty(Reason.NETWORK_DRIVER, "config-only networks are not allowed."),
                         Shape.OBJECT),
        "IPAM": _c("admins only: a subnet can shadow the host's own networks (gate._create_owned)",
                   shape=Shape.OBJECT, of="IPAM"),
        "EnableIPv4": _h("addresses the network over IPv4"),
        "EnableIPv6": _c("admins only: it turns on the host's IPv6 forwarding (gate._create_owned)"),
        "Options": _c("must be empty", must_be_empty(Reason.NETWORK_DRIVER, (
            "bridge driver options (interface names, masquerading, host bindings) are not allowed.")), Shape.MAP),
        "Labels": _c("no ds01.* label; ds01.user and ds01.uid are stamped", labels_check(False), Shape.MAP),
    },
    "IPAM": {"Driver": _c("admins only, with IPAM"), "Config": _c("admins only, with IPAM", shape=Shape.LIST,
                                                                  of="IPAMConfig"),
             "Options": _c("admins only, with IPAM", shape=Shape.MAP)},
    "IPAMConfig": {name: _c("admins only, with IPAM", shape=Shape.MAP if name == "AuxiliaryAddresses" else
                            Shape.VALUE) for name in ("Subnet", "IPRange", "Gateway", "AuxiliaryAddresses")},
    "NetworkConnectRequest": {"Container": _owned("only the caller's own containers (gate._object)"),
                              "EndpointConfig": _c("see EndpointSettings", shape=Shape.OBJECT,
                                                   of="EndpointSettings")},
    "NetworkDisconnectRequest": {"Container": _owned("only the caller's own containers (gate._object)"),
                                 "Force": _h("disconnects even a stopped container")},
}
