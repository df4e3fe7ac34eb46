"""Where a container's mounts land, and why none may land inside a host directory or a volume.

When a mount point or the working directory is missing, the runtime creates it, as root, inside whatever is
mounted above it. Inside a bind mount that is a host directory: root-owned entries appear in it past its
permissions (in bob's directory that alice may only read), and with a runtime that resolves the path before it
creates it (runc before 1.1.14) a symlink swapped in between puts them anywhere on the host. Inside a volume,
which a running container can fill with symlinks, the same race applies. So the policy keeps mount points side
by side, and the working directory at or outside every host directory.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from ds01.bodies import as_list, field, is_volume_name, mounts_of, split_bind
from ds01.errors import Denied


@dataclass(frozen=True)
class Destination:
    path: str  # normalized, inside the container
    kind: str  # bind, volume or tmpfs


def _normal(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def destinations(body: dict[str, Any], host: dict[str, Any]) -> list[Destination]:
    found = []
    for bind in as_list(field(host, "Binds"), "HostConfig.Binds"):
        source, rest = split_bind(bind)
        found.append(Destination(_normal(rest.split(":", 1)[0]), "volume" if is_volume_name(source) else "bind"))
    for mount in mounts_of(host):
        found.append(Destination(_normal(str(field(mount, "Target") or "")), str(field(mount, "Type"))))
    tmpfs = field(host, "Tmpfs") or {}
    volumes = field(body, "Volumes") or {}
    if not isinstance(tmpfs, dict) or not isinstance(volumes, dict):
        raise Denied("bad_request", "HostConfig.Tmpfs and Volumes must be objects keyed by path")
    found += [Destination(_normal(str(path)), "tmpfs") for path in tmpfs]
    found += [Destination(_normal(str(path)), "volume") for path in volumes]
    return found


def _below(inner: str, outer: str) -> bool:
    return inner != outer and inner.startswith(outer.rstrip("/") + "/")


def check_destinations(body: dict[str, Any], host: dict[str, Any], image_working_dir: str) -> None:
    """No mount point inside a bind or volume mount, no working directory below a bind mount, and no other mounts
    beside --volumes-from (its inherited mount points are not known here)."""
    found = destinations(body, host)
    if found and as_list(field(host, "VolumesFrom"), "HostConfig.VolumesFrom"):
        raise Denied("nested_mount", "--volumes-from cannot be combined with mounts of your own: they could land "
                                     "inside the inherited ones. Mount what you need directly instead.")
    holders = [d for d in found if d.kind in ("bind", "volume")]
    for inner in found:
        outer = next((h for h in holders if _below(inner.path, h.path)), None)
        if outer is not None:
            raise Denied("nested_mount", (
                f"the mount at {inner.path} lies inside the {outer.kind} mounted at {outer.path}: the engine would "
                f"create {inner.path} as root inside it, past its permissions. Mount them side by side instead."))
    working_dir = _normal(str(field(body, "WorkingDir") or image_working_dir or "/"))
    outer = next((d for d in found if d.kind == "bind" and _below(working_dir, d.path)), None)
    if outer is not None:
        raise Denied("nested_mount", (
            f"the working directory {working_dir} lies below the host directory mounted at {outer.path}: if it is "
            f"missing, the engine creates it there as root. Use {outer.path} as the working directory and cd "
            "inside, or mount the directory you want to work in."))


def check_restart_policy(caller_is_admin: bool, restart_policy: Any, has_host_mounts: bool) -> None:
    """A container that mounts host directories starts only through the proxy, which checks each start; the
    engine's own restarts would skip that check."""
    name = field(restart_policy, "Name") if isinstance(restart_policy, dict) else restart_policy
    if has_host_mounts and not caller_is_admin and name not in (None, "", "no"):
        raise Denied("restart_policy", (
            f"restart policy {name!r} is not allowed for a container that mounts host directories: ds01 checks "
            "every start of such a container, and the engine's own restarts would skip that. Start it again with "
            "docker start or container start."))
