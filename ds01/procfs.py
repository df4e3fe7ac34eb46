"""The only door to /proc: which container a process runs in, and which user it answers to.

The root is a parameter so tests read a fake tree. A process that exits while being read is skipped;
any other failure to read raises, so a collector never mistakes a broken /proc for an idle host.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ds01.errors import Ds01Error

PROC = Path("/proc")
UNSET_LOGINUID = 4294967295  # (uid_t)-1: the process never passed through a login (daemons, containers)

# A 64-hex id standing as a whole path component or at the end of one after "-" or ":", with an optional ".scope":
# covers /docker/<id>, docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope,
# kubepods .../<id> and the systemd-driver containerd form "<slice>:cri-containerd:<id>".
# The lookbehind keeps podman/cri-o "conmon-<id>.scope" monitors, which run outside the container, on the host.
_CONTAINER_ID = re.compile(r"(?:^|[/:-])(?<!conmon-)([0-9a-f]{64})(?:\.scope)?(?=/|$)")
_ID_LENGTH = 64


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    container_id: str | None  # full 64-hex id; None for a host process
    uid: int
    uid_source: str  # "loginuid" (the user who logged in, survives sudo) or "status" (the real uid)


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in the content of /proc/PID/cgroup, or None for a process in no container.

    Lines are "hierarchy:controllers:path". In hybrid v1/v2 setups the unified line of a container process can
    still name a host service, so the first line whose path holds an id wins. Within a path the outermost id
    wins: it is the container the host's engine created (an engine nested inside it adds deeper ids).
    """
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) < 3 or len(fields[2]) < _ID_LENGTH:
            continue
        match = _CONTAINER_ID.search(fields[2])
        if match:
            return match[1]
    return None


def _read(path: Path) -> str | None:
    """The file's text, or None when the process has gone (the file vanished or is empty)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        raise Ds01Error(
            f"cannot read {path}: {exc.strerror or exc}. ds01 attributes processes through /proc and needs to "
            "run as root on the host's pid namespace."
        ) from exc
    return text or None


def _loginuid(path: Path, text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError as exc:
        raise Ds01Error(f"cannot parse {path}: expected a number, found {text.strip()[:40]!r}") from exc
    return None if value == UNSET_LOGINUID else value


def _real_uid(path: Path, text: str) -> int:
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
            break
    raise Ds01Error(f"cannot parse {path}: no 'Uid:' line with a real uid")


def read_process(pid: int, root: Path = PROC) -> ProcessInfo | None:
    """The container and user of one process, or None when it exited while being read."""
    directory = root / str(pid)
    cgroup = _read(directory / "cgroup")
    if cgroup is None:
        return None
    container_id = container_id_from_cgroup(cgroup)
    # A kernel built without audit has no loginuid file at all; the status read below still notices an exit.
    loginuid_path = directory / "loginuid"
    loginuid_text = _read(loginuid_path)
    if loginuid_text is not None:
        uid = _loginuid(loginuid_path, loginuid_text)
        if uid is not None:
            return ProcessInfo(pid=pid, container_id=container_id, uid=uid, uid_source="loginuid")
    status_path = directory / "status"
    status = _read(status_path)
    if status is None:
        return None
    return ProcessInfo(pid=pid, container_id=container_id, uid=_real_uid(status_path, status), uid_source="status")


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    mount_point: str
    options: frozenset[str]  # the per-mount options: rw, nosuid, nodev, noexec, relatime, ...
    source: str  # what is mounted: a device, a tmpfs name, ...


def _unescape_mount_field(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def mount_info(mount_id: int, proc: Path = PROC) -> MountInfo:
    """The mount with this id in this process's mount namespace, from /proc/self/mountinfo."""
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[0] != str(mount_id):
            continue
        separator = fields.index("-")  # optional fields end at "-"
        return MountInfo(mount_id=mount_id, mount_point=_unescape_mount_field(fields[4]),
                         options=frozenset(fields[5].split(",")), source=_unescape_mount_field(fields[separator + 2]))
    raise Ds01Error(f"mount {mount_id} is not in {proc}/self/mountinfo")


def mount_of_fd(fd: int, proc: Path = PROC) -> MountInfo:
    """The mount an open file descriptor lives on, from its mnt_id: exact, however the path was renamed since."""
    for line in (proc / "self" / "fdinfo" / str(fd)).read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "mnt_id":
            return mount_info(int(value), proc)
    raise Ds01Error(f"{proc}/self/fdinfo/{fd} has no mnt_id; this kernel is too old for ds01's mount checks")


def mount_of_path(path: str | Path) -> MountInfo:
    """The mount a path lies on now (symlinks followed), by way of a descriptor, as `mount_of_fd`."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return mount_of_fd(fd)
    finally:
        os.close(fd)


def ipv4_routes(proc: Path = PROC) -> list[ipaddress.IPv4Network]:
    """The networks this network namespace routes to itself (not the default route), from /proc/net/route."""
    try:
        text = (proc / "net" / "route").read_text(encoding="ascii")
    except OSError as exc:
        raise Ds01Error(f"cannot read {proc}/net/route: {exc.strerror}") from exc
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        # Destination and mask are 32-bit hex in the host's (little-endian) byte order.
        destination = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(fields[1]), "little"))
        mask = bin(int.from_bytes(bytes.fromhex(fields[7]), "little")).count("1")
        if mask:
            found.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return found



def unified_cgroup(pid: int, proc: Path = PROC) -> str:
    """The cgroup v2 path of a process (the "0::PATH" line of /proc/PID/cgroup), as iptables' cgroup match names
    it."""
    text = _read(proc / str(pid) / "cgroup")
    if text is None:
        raise Ds01Error(f"process {pid} has gone, so its cgroup cannot be read")
    found = [line.removeprefix("0::") for line in text.splitlines() if line.startswith("0::")]
    if not found:
        raise Ds01Error(f"process {pid} is in no cgroup v2 hierarchy (/proc/{pid}/cgroup has no 0:: line): mount "
                        "cgroup2 (systemd does), so that its connections can be told apart")
    return found[0]
