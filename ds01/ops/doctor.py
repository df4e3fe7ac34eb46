"""`ds01 doctor`: is this host set up the way ds01 needs? Each check says PASS, WARN or FAIL, and how to fix it.

The checks only read: sockets are pinged, files and groups are looked at, nothing is changed.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path

from ds01 import nvml, procfs
from ds01.config import Config, load_config
from ds01.engine import Engine
from ds01.errors import Ds01Error, EngineError, NvmlError
from ds01.etcd import Etcd, StoreUnavailable
from ds01.fleet.nodes import read_fleet
from ds01.identity import nss
from ds01.ops.checks import FAIL, PASS, TIMEOUT_SECONDS, WARN, Check, Options, regular_users
from ds01.ops.doctornet import (
    check_builder,
    check_default_bridge,
    check_published_addresses,
    check_rules,
    reach_check,
    userland_check,
)
from ds01.ops.install import MODPROBE, UDEV_RULES
from ds01.proxy import runas
from ds01.proxy.upstream import Upstream
from ds01.unixhttp import UnixConnection

DEVICE_MODE = 0o660
DOCKER_GROUP_DOC = "docs-admin/docker-group.md"
FULL_DATABASE_BYTES = int(0.8 * 2**31)  # of etcd's default quota (ETCD_QUOTA_BACKEND_BYTES), which it does not report


# --- The checks -----------------------------------------------------------------------------------------------


def check_config(options: Options) -> tuple[Check, Config | None]:
    try:
        config = load_config(options.config)
    except Ds01Error as exc:
        return Check("config", FAIL, str(exc), f"fix the file, then: ds01 config check {options.config}"), None
    return Check("config", PASS, f"{options.config} is valid"), config


def check_engine(options: Options) -> Check:
    upstream = Upstream(options.engine, timeout=TIMEOUT_SECONDS)
    try:
        status, body = upstream.call("GET", "/_ping")
    except EngineError as exc:
        return Check("engine", FAIL, str(exc), "start dockerd (systemctl start docker), or point --engine at it")
    if status != 200:
        return Check("engine", FAIL, f"{options.engine} answered {status} to /_ping: {body}",
                     "check dockerd: systemctl status docker; journalctl -u docker")
    _, version = upstream.call("GET", "/version")
    named = version.get("Version", "?") if isinstance(version, dict) else "?"
    return Check("engine", PASS, f"Docker {named} answers at {options.engine}")


def check_proxy(options: Options) -> Check:
    path = options.proxy_socket
    start = "start it: systemctl enable --now ds01-proxy (journalctl -u ds01-proxy says why it stopped)"
    if not path.exists():
        return Check("proxy", FAIL, f"no socket at {path}: the ds01 proxy is not running", start)
    if not stat.S_ISSOCK(path.stat().st_mode):
        return Check("proxy", FAIL, f"{path} is not a socket", f"remove {path}, then {start}")
    connection = UnixConnection(str(path), TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/_ping")
        answer = connection.getresponse()
        body = answer.read().decode(errors="replace").strip()
    except OSError as exc:
        return Check("proxy", FAIL, f"cannot talk to the proxy at {path}: {exc.strerror or exc}", start)
    finally:
        connection.close()
    if answer.status != 200:
        return Check("proxy", FAIL, f"the proxy at {path} answered {answer.status} to /_ping: {body[:200]}",
                     "check the proxy's upstream engine and its log: journalctl -u ds01-proxy")
    return Check("proxy", PASS, f"the proxy answers at {path}")


def check_proxy_socket(options: Options) -> Check:
    path = options.proxy_socket
    if not path.exists():
        return Check("proxy socket", WARN, f"not checked: no socket at {path}", "start the proxy (see above)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != 0o666:
        return Check("proxy socket", FAIL, f"{path} has mode {mode:04o}, not 0666: users cannot all reach it",
                     "restart the proxy, which sets 0666 (who is calling comes from the kernel, not the mode): "
                     "systemctl restart ds01-proxy")
    return Check("proxy socket", PASS, f"{path} is 0666 (callers are identified by SO_PEERCRED)")


def check_engine_socket(options: Options, config: Config | None) -> Check:
    if not options.engine.startswith("unix://"):
        return Check("engine socket", WARN, f"not checked: {options.engine} is not a unix socket",
                     "do not expose the engine on TCP; users must reach Docker only through the proxy")
    path = Path(options.engine.removeprefix("unix://"))
    if not path.exists():
        return Check("engine socket", FAIL, f"no socket at {path}", "start dockerd: systemctl start docker")
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o002:
        return Check("engine socket", FAIL, f"{path} is world-writable ({mode:04o}): every user is root through it",
                     f"chmod 0660 {path}, and remove whatever changed it (a -H option or \"group\" in "
                     "/etc/docker/daemon.json)")
    group = nss.group_name(info.st_gid) or str(info.st_gid)
    exposed = regular_users(nss.group_members(info.st_gid), config) if mode & 0o020 else []
    if exposed:
        return Check("engine socket", FAIL,
                     f"{path} is writable by group {group}, which regular users are in: {', '.join(exposed)}",
                     f"gpasswd --delete USER {group} for each of them (see {DOCKER_GROUP_DOC})")
    return Check("engine socket", PASS, f"{path} is {mode:04o}, group {group}: no regular user can reach it")


def check_docker_group(options: Options, config: Config | None) -> Check:
    name = options.docker_group
    gid = nss.group_id(name)
    if gid is None:
        return Check("docker group", PASS, f"there is no {name} group")
    members = regular_users(nss.group_members(gid), config)
    if members:
        commands = "; ".join(f"gpasswd --delete {user} {name}" for user in members)
        return Check("docker group", FAIL,
                     f"regular users in {name} bypass the proxy (and are root on this host): {', '.join(members)}",
                     f"{commands} (see {DOCKER_GROUP_DOC}; or list them as admins in resource-limits.yaml)")
    return Check("docker group", PASS, f"no regular user is in {name}")


def _device_files(root: Path) -> list[Path]:
    dev = root / "dev"
    found = [path for path in dev.glob("nvidia*") if not path.is_dir()]
    found += [path for path in (dev / "nvidia-caps").glob("*") if not path.is_dir()]
    return sorted(found)


def check_udev(options: Options, config: Config | None) -> Check:
    group = config.bare_metal.group if config is not None else "ds01-gpu"
    rules = options.root / UDEV_RULES.lstrip("/")
    install = "ds01 install (make install) puts it in place"
    if not rules.is_file():
        return Check("udev rules", FAIL, f"{rules} is missing", install)
    named = set(re.findall(r'GROUP="([^"]*)"', rules.read_text(encoding="utf-8")))
    if named != {group}:
        return Check("udev rules", FAIL, f"{rules} names group {', '.join(sorted(named)) or 'none'}, "
                     f"but bare_metal.group is {group}", f"run ds01 install again to rewrite it; {install}")
    gid = nss.group_id(group)
    if gid is None:
        return Check("udev rules", FAIL, f"the group {group} does not exist",
                     f"groupadd --system {group} (ds01 install does it), then reload the nvidia driver or reboot")
    devices = _device_files(options.root)
    if not devices:
        return Check("udev rules", PASS, f"{rules} is installed; no /dev/nvidia* on this host to check")
    wrong = [f"{path} ({stat.S_IMODE(info.st_mode):04o}, gid {info.st_gid})" for path in devices
             if (info := path.stat()).st_gid != gid or stat.S_IMODE(info.st_mode) != DEVICE_MODE]
    if wrong:
        return Check("udev rules", FAIL, f"device files not root:{group} {DEVICE_MODE:04o}: {', '.join(wrong)}",
                     "the rules and driver options apply when the devices are created: udevadm control --reload "
                     "&& udevadm trigger, and reload the nvidia modules (or reboot)")
    return Check("udev rules", PASS, f"{rules} is installed; {len(devices)} device files are root:{group} 0660")


def _driver_params(root: Path) -> dict[str, str]:
    params = root / "proc" / "driver" / "nvidia" / "params"
    try:
        text = params.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def check_driver_options(options: Options, config: Config | None) -> Check:
    group = config.bare_metal.group if config is not None else "ds01-gpu"
    conf = options.root / MODPROBE.lstrip("/")
    if not conf.is_file():
        return Check("driver options", FAIL, f"{conf} is missing", "ds01 install (make install) puts it in place")
    match = re.search(r"NVreg_DeviceFileGID=(\S+)", conf.read_text(encoding="utf-8"))
    gid = nss.group_id(group)
    if gid is None:
        return Check("driver options", FAIL, f"the group {group} does not exist", "run ds01 install")
    if match is None or match.group(1) != str(gid):
        found = match.group(1) if match else "nothing"
        return Check("driver options", FAIL, f"{conf} sets NVreg_DeviceFileGID to {found}, but {group} is gid {gid}",
                     "run ds01 install again to rewrite it, then reload the nvidia modules (or reboot)")
    loaded = _driver_params(options.root)
    if loaded.get("DeviceFileGID") not in (None, str(gid)) or \
            loaded.get("DeviceFileMode") not in (None, str(DEVICE_MODE)):
        return Check("driver options", WARN, f"the loaded driver uses gid {loaded.get('DeviceFileGID')}, mode "
                     f"{loaded.get('DeviceFileMode')} (decimal), not those of {conf}",
                     "reload the nvidia modules or reboot (update-initramfs -u first if nvidia is in the initramfs)")
    return Check("driver options", PASS, f"{conf} gives the device files to {group} (gid {gid})")


def check_nvml() -> Check:
    try:
        with nvml.session() as session:
            inventory = session.inventory()
    except NvmlError as exc:
        return Check("nvml", FAIL, str(exc), "nvidia-smi must work first: install or load the NVIDIA driver")
    lost = len(inventory.gpus) - len(inventory.available)
    detail = f"{len(inventory.available)} GPUs answer (driver {inventory.driver_version})"
    if not inventory.gpus:
        return Check("nvml", WARN, "NVML answers but counts no GPUs", "check nvidia-smi and dmesg")
    if lost:
        return Check("nvml", WARN, f"{detail}; {lost} do not", "ds01 gpus shows which, and why")
    return Check("nvml", PASS, detail)


def check_bind_mounts(config: Config | None) -> Check:
    """Bind sources must lie on nosuid,nodev mounts; the homes and data directories are where they come from."""
    if config is None:
        return Check("bind mounts", WARN, "not checked: the config does not load", "fix the config first")
    if not config.security.require_nosuid_mounts:
        return Check("bind mounts", FAIL, "security.require_nosuid_mounts is false: bind sources on mounts without "
                     "nosuid,nodev are let through, so a setuid or device file made in a container acts as one on the "
                     "host", "add nosuid,nodev to the home and data mounts in /etc/fstab, remount them, then set "
                     "security.require_nosuid_mounts: true")
    homes = [str(home) for root in config.security.home_roots if os.path.isdir(root)
             for home in sorted(Path(root).iterdir()) if home.is_dir() and not home.is_symlink()]
    places = [*homes, *(path for path in config.security.data_dirs if os.path.isdir(path))]
    mounts = [procfs.mount_of_path(place) for place in places]
    weak = sorted({mount.mount_point for mount in mounts if not {"nosuid", "nodev"} <= mount.options})
    if weak:
        return Check("bind mounts", WARN, f"mounts without nosuid,nodev: {', '.join(weak)}; users' bind mounts from "
                     "them are refused", "add nosuid,nodev to their options in /etc/fstab, then mount -o remount")
    return Check("bind mounts", PASS, f"{len(homes)} homes and {len(places) - len(homes)} data directories lie on "
                 "nosuid,nodev mounts")


RUNC_FIXED = (1, 1, 14)  # mount-point races (CVE-2024-45310) and the fd leak (CVE-2024-21626) are fixed from here


def check_runc() -> Check:
    try:
        shown = subprocess.run(["runc", "--version"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("runc", WARN, f"runc --version did not answer ({exc})", "check the engine's runtime by hand")
    found = re.search(r"runc version (\d+)\.(\d+)\.(\d+)", shown)
    if found is None:
        return Check("runc", WARN, f"cannot read a version from: {shown.strip()[:80]!r}", "check it by hand")
    version = tuple(int(part) for part in found.groups())
    text = ".".join(map(str, version))
    if version < RUNC_FIXED:
        return Check("runc", WARN, f"runc {text} is older than {'.'.join(map(str, RUNC_FIXED))}: it has known "
                     "mount-point races (CVE-2024-45310) that ds01's rules keep out of reach, as far as they are "
                     "known", "upgrade runc (or the engine's bundled one)")
    return Check("runc", PASS, f"runc {text}")


def check_root_containers(options: Options) -> Check:
    try:
        with Engine(options.engine) as engine:
            legacy = runas.root_with_host_mounts(engine.containers())
    except EngineError as exc:
        return Check("root containers", WARN, f"not checked: {exc}", "start the engine (see above)")
    if legacy:
        return Check("root containers", WARN, "; ".join(runas.root_container_warning(i) for i in legacy),
                     "remove each and create it again: ds01 now runs containers as their owner")
    return Check("root containers", PASS, "no container runs as root with host directories mounted")


def check_fleet(config: Config | None) -> Check:
    """With allocation.store: etcd, the cluster answers, this node is alive in it, and its client key is root's
    alone; plain http is a warning: whoever reaches a member's client port can grant themselves any GPU."""
    if config is None:
        return Check("fleet", WARN, "not checked: the configuration does not load", "fix it (see above)")
    if config.allocation.store != "etcd":
        return Check("fleet", PASS, "allocation.store is file: this server alone, no fleet")
    fleet = config.fleet
    key = fleet.etcd.key_file
    if key is not None and key.exists() and key.stat().st_mode & 0o077:
        return Check("fleet", FAIL, f"{key} is readable by others ({key.stat().st_mode & 0o777:04o}): whoever reads "
                     "it can write every allocation of the fleet", f"chmod 600 {key}; chown root:root {key}")
    etcd = Etcd(fleet.etcd)
    try:
        view = read_fleet(etcd, fleet.etcd.prefix)
        alarms, size = etcd.alarms(), etcd.database_bytes()
    except StoreUnavailable as exc:
        return Check("fleet", FAIL, f"{exc}: this node grants no GPUs", "see docs-admin/fleet.md, When something "
                     "fails; etcdctl endpoint health with the node's client certificate")
    down = sorted(set(view.nodes) - view.alive)
    if alarms:
        return Check("fleet", FAIL, f"etcd raised {', '.join(alarms)}: it takes no writes, so no node grants GPUs",
                     "compact, defragment and disarm (docs-admin/fleet.md, Compaction and space)")
    if view.unreadable:
        return Check("fleet", FAIL, f"etcd keys that are not ds01 records: {'; '.join(view.unreadable)}; no GPU is "
                     "granted while an allocation cannot be read", "move each aside (etcdctl get, then del) and "
                     "run ds01 reconcile on its node")
    if fleet.node not in view.alive:
        return Check("fleet", FAIL, f"etcd answers, but node {fleet.node} has no live lease: its proxy is not running "
                     "or cannot renew it", "start the proxy: systemctl enable --now ds01-proxy")
    if size > FULL_DATABASE_BYTES:
        return Check("fleet", WARN, f"etcd's database is {size / 2**30:.2f} GiB, past 80% of etcd's default quota "
                     "of 2 GiB: at the quota it takes no writes", "check auto-compaction is on, and defragment "
                     "(docs-admin/fleet.md, Compaction and space)")
    if any(url.startswith("http://") for url in fleet.etcd.endpoints):
        return Check("fleet", WARN, f"node {fleet.node} is alive; the etcd endpoints are plain http",
                     "use https:// endpoints with client certificates (docs-admin/fleet.md, TLS)")
    others = f"; down: {', '.join(down)}" if down else ""
    return Check("fleet", PASS, f"node {fleet.node} is alive in a fleet of {len(view.nodes)}{others}")


def _guarded(name: str, check: Callable[[], Check], debug: bool) -> Check:
    """A check that raises becomes a FAIL with the error: the doctor itself never crashes on a broken host."""
    try:
        return check()
    except Ds01Error as exc:
        return Check(name, FAIL, str(exc), "the message says what went wrong; fix that and run ds01 doctor again")
    except Exception as exc:  # noqa: BLE001 - report whatever broke, and carry on with the other checks
        if debug:
            traceback.print_exc()
        return Check(name, FAIL, f"the check itself broke: {exc!r}", "run again with --debug for a traceback")


def run_checks(options: Options) -> list[Check]:
    first, config = check_config(options)
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("engine", lambda: check_engine(options)),
        ("proxy", lambda: check_proxy(options)),
        ("proxy socket", lambda: check_proxy_socket(options)),
        ("engine socket", lambda: check_engine_socket(options, config)),
        ("docker group", lambda: check_docker_group(options, config)),
        ("udev rules", lambda: check_udev(options, config)),
        ("driver options", lambda: check_driver_options(options, config)),
        ("nvml", check_nvml),
        ("bind mounts", lambda: check_bind_mounts(config)),
        ("root containers", lambda: check_root_containers(options)),
        ("runc", check_runc),
        ("default bridge", lambda: check_default_bridge(options)),
        ("reach rules", lambda: check_rules(options, "reach rules", reach_check, "filter")),
        ("userland proxy", lambda: check_rules(options, "userland proxy", userland_check, "nat")),
        ("published ports", lambda: check_published_addresses(options, config)),
        ("builder entitlements", check_builder),
        ("fleet", lambda: check_fleet(config)),
    ]
    return [first, *(_guarded(name, check, options.debug) for name, check in checks)]
