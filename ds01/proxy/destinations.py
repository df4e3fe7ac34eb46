"""Where a container's mounts land, and why none may land inside a host directory or a volume.

When a mount point or the working directory is missing, the runtime creates it, as root, inside whatever is
mounted above it. Inside a bind mount that is a host directory: root-owned entries appear in it past its
permissions (in bob's directory that alice may only read), and with a runtime that resolves the path before it
creates it (runc before 1.1.14) a symlink swapped in between puts them anywhere on the host. Inside a volume,
which a running container can fill with symlinks, the same race applies. So the policy keeps mount points side
by side, the working directory outside every host directory and volume, and host directories and volumes out of
the system trees where the engine and the GPU hook put mounts of their own (/etc/hosts, /dev/shm, libraries).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ds01.errors import Denied
from ds01.proxy.bodies import as_list, field, is_volume_name, mounts_of, set_field, split_bind
from ds01.reasons import Reason

# The engine mounts /etc/hostname, /etc/hosts, /etc/resolv.conf, /dev/shm, /dev/pts, /proc and /sys; the NVIDIA
# hook mounts device nodes, libraries and binaries below /dev, /usr, /lib*, /bin and /etc. A host directory or a
# volume at, above or inside one of these trees would receive those mount points.
SYSTEM_TREES = ("/etc", "/dev", "/proc", "/sys", "/run", "/var/run", "/usr", "/bin", "/sbin", "/lib", "/lib32",
                "/lib64", "/libx32")


# Where the engine (its /etc files, /dev/shm, ...) and the NVIDIA hook (libraries, binaries, firmware, the
# persistenced socket, /proc/driver/nvidia) make mount points of their own, following the container's symlinks.
RUNTIME_PATHS = (
    "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/vulkan", "/etc/OpenCL",
    "/dev", "/dev/shm", "/dev/mqueue", "/dev/pts", "/dev/console",  # noqa: S108 - paths inside containers
    "/proc", "/proc/driver/nvidia", "/sys", "/sys/fs/cgroup", "/run/nvidia-persistenced",
    "/usr/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/bin",
    "/usr/share/nvidia", "/usr/share/vulkan", "/usr/share/glvnd", "/usr/share/egl", "/lib/firmware",
)


HOLDING_KINDS = ("bind", "volume", "anonymous")  # mounts the runtime could make mount points inside


@dataclass(frozen=True)
class Destination:
    path: str  # normalized, inside the container
    kind: str  # bind, volume (a named one), anonymous (a volume of the container's own) or tmpfs


def _normal(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def destinations(body: dict[str, Any], host: dict[str, Any]) -> list[Destination]:
    found = []
    for bind in as_list(field(host, "Binds"), "HostConfig.Binds"):
        source, rest = split_bind(bind)
        found.append(Destination(_normal(rest.split(":", 1)[0]), "volume" if is_volume_name(source) else "bind"))
    for mount in mounts_of(host):
        kind = str(field(mount, "Type"))
        if kind == "volume" and not field(mount, "Source"):
            kind = "anonymous"
        found.append(Destination(_normal(str(field(mount, "Target") or "")), kind))
    tmpfs = field(host, "Tmpfs") or {}
    volumes = field(body, "Volumes") or {}
    if not isinstance(tmpfs, dict) or not isinstance(volumes, dict):
        raise Denied(Reason.BAD_REQUEST, "HostConfig.Tmpfs and Volumes must be objects keyed by path")
    found += [Destination(_normal(str(path)), "tmpfs") for path in tmpfs]
    found += [Destination(_normal(str(path)), "anonymous") for path in volumes]
    return found


def _below(inner: str, outer: str) -> bool:
    return inner != outer and inner.startswith(outer.rstrip("/") + "/")


def holder_of(path: str, found: list[Destination]) -> Destination | None:
    """The bind or volume mount `path` lies in (or is), if any: where the runtime would make things as root."""
    return next((d for d in found if d.kind in HOLDING_KINDS and (path == d.path or _below(path, d.path))), None)


def check_destinations(body: dict[str, Any], host: dict[str, Any], image_working_dir: str = "",
                       image_volumes: tuple[str, ...] = ()) -> None:
    """No mount point inside a bind or volume mount, none of those in a system tree, no working directory below
    one, and no other mounts beside --volumes-from (its inherited mount points are not known here). The image's
    WORKDIR and VOLUMEs count where the request does not set them."""
    found = destinations(body, host) + [Destination(_normal(path), "anonymous") for path in image_volumes]
    if found and as_list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
        raise Denied(Reason.NESTED_MOUNT, "--volumes-from cannot be combined with mounts of your own: they could land "
                                          "inside the inherited ones. Mount what you need directly instead.")
    holders = [d for d in found if d.kind in HOLDING_KINDS]
    # Anonymous volumes too: their owner can mount one elsewhere, or fill it from inside, with symlinks.
    for holder in holders:
        tree = next((t for t in SYSTEM_TREES if holder.path == t or _below(holder.path, t) or _below(t, holder.path)),
                    None)
        if tree is not None:
            what = {"bind": "host directory", "volume": "volume", "anonymous": "volume (-v PATH, or the image's "
                    "VOLUME)"}[holder.kind]
            raise Denied(Reason.SYSTEM_MOUNT_POINT, (
                f"a {what} at {holder.path} would hold or sit in {tree}, where the engine and the GPU runtime put "
                "files of their own as root. Mount it elsewhere, such as /workspace, /data or /mnt/NAME."))
    for inner in found:
        outer = next((h for h in holders if _below(inner.path, h.path)), None)
        if outer is not None:
            raise Denied(Reason.NESTED_MOUNT, (
                f"the mount at {inner.path} lies inside the {outer.kind} mounted at {outer.path}: the engine would "
                f"create {inner.path} as root inside it, past its permissions. Mount them side by side instead."))
    working_dir = _normal(str(field(body, "WorkingDir") or image_working_dir or "/"))
    outer = next((d for d in holders if _below(working_dir, d.path)), None)
    if outer is not None:
        raise Denied(Reason.NESTED_MOUNT, (
            f"the working directory {working_dir} lies below the {outer.kind} mounted at {outer.path}: if it is "
            f"missing, the engine creates it there as root. Use {outer.path} as the working directory and cd "
            "inside, or mount the directory you want to work in."))


def label_anonymous_volumes(body: dict[str, Any], host: dict[str, Any], image_volumes: Sequence[str],
                             owner: Mapping[str, str]) -> None:
    """Volumes the engine makes for a container (-v /path, the image's VOLUMEs) are created with the owner's
    labels, so that the owner sees and removes them and cleanup finds them; --rm still removes them."""
    def normal(path: Any) -> str:
        return posixpath.normpath("/" + str(path).lstrip("/"))

    taken = {d.path for d in destinations({}, host)}  # binds, mounts and tmpfs: all but Config.Volumes
    wanted = [normal(path) for path in (field(body, "Volumes") or {})]
    if not field(host, "VolumesFrom"):
        wanted += [normal(path) for path in image_volumes]
    wanted = [path for path in dict.fromkeys(wanted) if path not in taken]
    mounts = mounts_of(host)
    for mount in mounts:
        if field(mount, "Type") == "volume" and not field(mount, "Source"):
            options = dict(field(mount, "VolumeOptions") or {})
            set_field(options, "Labels", {**(field(options, "Labels") or {}), **owner})
            set_field(mount, "VolumeOptions", options)
    mounts += [{"Type": "volume", "Target": path, "VolumeOptions": {"Labels": dict(owner)}} for path in wanted]
    if mounts:
        set_field(host, "Mounts", mounts)
    body.pop("Volumes", None)  # each is a labelled mount now; the body is in the API's spelling


USER_RESTART_POLICIES = ("", "no", "on-failure")


def check_restart_policy(caller_is_admin: bool, restart_policy: Any, has_host_mounts: bool) -> None:
    """Users' containers restart on failure at most (a container that always comes back outlives its GPU grant
    and cleanup). A container that mounts host directories starts only through the proxy, which checks each
    start; the engine's own restarts would skip that check."""
    name = field(restart_policy, "Name") if isinstance(restart_policy, dict) else restart_policy
    if not caller_is_admin and name not in (None, *USER_RESTART_POLICIES):
        raise Denied(Reason.RESTART_POLICY, (
            f"restart policy {name!r} is not allowed: containers here restart on failure at most (--restart "
            "on-failure[:N]), so that a stopped container stays stopped and its GPUs can be reclaimed."))
    if has_host_mounts and not caller_is_admin and name not in (None, "", "no"):
        raise Denied(Reason.RESTART_POLICY, (
            f"restart policy {name!r} is not allowed for a container that mounts host directories: ds01 checks "
            "every start of such a container, and the engine's own restarts would skip that. Start it again with "
            "docker start or container start."))
