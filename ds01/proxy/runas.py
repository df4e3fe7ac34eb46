"""Who a container's processes are: the caller, with the caller's own groups and no way to more.

A pure part of the create and exec policy: the proxy's caller, as the kernel and the directory name them, and
the rewrite that makes a request body run as exactly that caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ds01 import labels, names, records
from ds01.config import LimitValues, SecuritySettings
from ds01.errors import Denied
from ds01.proxy.bodies import as_list, field, go_int, mounts_of, set_field, split_bind
from ds01.reasons import Reason

# Docker's default capabilities that matter only to root or to file ownership: a container of a user keeps
# none of them unless the admin allows it in security.cap_add and the request adds it.
DROPPED_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD", "NET_RAW", "SETFCAP", "SETGID",
                        "SETUID")
NO_NEW_PRIVILEGES = "no-new-privileges:true"
HOME_WITHOUT_WORKSPACE = "/tmp"  # noqa: S108 - a path inside the container, not on the host


@dataclass(frozen=True)
class Caller:
    uid: int
    user: str  # sanitized name, as stamped in ds01.user
    home: str  # real path of a home that counts for bind mounts; "" for none
    is_admin: bool
    limits: LimitValues
    gid: int  # primary group
    gids: frozenset[int]  # every group the user is in, primary included
    login: str  # the login name, for USER and LOGNAME inside
    home_problem: str = ""  # why `home` is empty, for the message


def check_user(caller: Caller, user: Any) -> str:
    """The canonical "uid:gid" a process of the caller runs as. Only empty, the caller's own uid, or that uid with
    one of their own gids pass: a name is looked up in the image's /etc/passwd, which the user controls, and a
    uid without a gid takes its groups from the image's /etc/group."""
    own = f"{caller.uid}:{caller.gid}"
    if user in (None, ""):
        return own
    if not isinstance(user, str):
        raise Denied(Reason.BAD_REQUEST, "User must be a string")
    uid_text, _, gid_text = user.partition(":")
    uid, gid = go_int(uid_text), go_int(gid_text) if gid_text else caller.gid
    if uid != caller.uid or gid is None or gid not in caller.gids or gid_text.count(":"):
        raise Denied(Reason.FOREIGN_UID, (
            f"running as {user!r} is not allowed: containers run as you (uid {caller.uid}, gid {caller.gid}). "
            f"Leave --user out, or give {own} or your uid with another of your groups (id -G)."))
    return f"{uid}:{gid}"


def _group_add(caller: Caller, host: dict[str, Any], gpu_gid: int | None) -> list[str]:
    """The caller's own supplementary groups, the ones asked for (each must be the caller's), and for a GPU
    container the bare-metal group that owns /dev/nvidia*."""
    wanted: set[int] = set(caller.gids - {caller.gid})
    for entry in as_list(field(host, "GroupAdd"), "HostConfig.GroupAdd"):
        gid = go_int(str(entry))
        if gid is None:
            raise Denied(Reason.FOREIGN_GROUP, (
                f"--group-add {entry} names a group, which the engine looks up in the image's /etc/group (yours to "
                "edit); give the numeric gid of one of your own groups (id -G)."))
        if gid not in caller.gids:
            raise Denied(Reason.FOREIGN_GROUP, f"--group-add {entry}: you are not in group {gid}; your groups are "
                                         f"{' '.join(str(g) for g in sorted(caller.gids))}.")
        wanted.add(gid)
    if gpu_gid is not None:
        wanted.add(gpu_gid)
    return [str(gid) for gid in sorted(wanted)]


def _security_options(host: dict[str, Any]) -> list[str]:
    options = [str(option) for option in as_list(field(host, "SecurityOpt"), "HostConfig.SecurityOpt")]
    for option in options:
        name, _, value = option.replace("=", ":", 1).partition(":")
        if name.lower() == "no-new-privileges" and value.lower() not in ("", "true"):
            raise Denied(Reason.SECURITY_OPT, "no-new-privileges is always on for ds01 containers; leave "
                                        f"{option!r} out.")
    return [*(o for o in options if not o.lower().startswith("no-new-privileges")), NO_NEW_PRIVILEGES]


def _cap_drop(host: dict[str, Any], security: SecuritySettings) -> tuple[list[str], list[str]]:
    """The capabilities to drop (the request's own plus ds01's), and which of ds01's were dropped."""
    added = {str(cap).upper().removeprefix("CAP_") for cap in as_list(field(host, "CapAdd"), "HostConfig.CapAdd")}
    kept = added & security.cap_add_allowed
    ours = [cap for cap in DROPPED_CAPABILITIES if cap not in kept]
    theirs = [str(cap).upper().removeprefix("CAP_") for cap in as_list(field(host, "CapDrop"), "HostConfig.CapDrop")]
    return sorted({*theirs, *ours}), ours


def _workspace_mounted(host: dict[str, Any]) -> bool:
    targets = [split_bind(bind)[1].split(":", 1)[0] for bind in as_list(field(host, "Binds"), "HostConfig.Binds")]
    targets += [str(field(mount, "Target")) for mount in mounts_of(host)]
    return names.WORKSPACE in (t.rstrip("/") for t in targets)


def _login_env(caller: Caller, body: dict[str, Any], host: dict[str, Any]) -> None:
    """HOME, USER and LOGNAME for a uid the image's /etc/passwd does not know, unless the request sets them."""
    env = [str(entry) for entry in as_list(field(body, "Env"), "Env")]
    named = {entry.split("=", 1)[0] for entry in env}
    home = names.WORKSPACE if _workspace_mounted(host) else HOME_WITHOUT_WORKSPACE
    login = caller.login or caller.user
    for name, value in (("HOME", home), ("USER", login), ("LOGNAME", login)):
        if name not in named:
            env.append(f"{name}={value}")
    set_field(body, "Env", env)


def run_as_caller(caller: Caller, body: dict[str, Any], host: dict[str, Any], security: SecuritySettings,
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
    return name in ("", "root") or go_int(name) == 0


def root_with_host_mounts(found: Sequence[records.ContainerInfo]) -> list[records.ContainerInfo]:
    """Containers from before ds01 ran containers as their caller: root, with host directories mounted."""
    return [info for info in found if info.host_mounts and runs_as_root(info.user)]


def root_container_warning(info: records.ContainerInfo) -> str:
    owner = info.labels.get(labels.USER) or "no ds01 owner"
    return (f"container {info.name} ({owner}) runs as root with host directories mounted "
            f"({', '.join(info.host_mounts)}); root there bypasses file permissions on the host. "
            f"Fix: container remove {info.name.split(names.NAME_SEPARATOR)[0]}, then create it again "
            "(it then runs as its owner)")


