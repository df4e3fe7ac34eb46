"""What is checked again before a container starts: its pinned bind sources, the paths to its mount points, and
that each network it joins is still its owner's.

Each start through the proxy (start, restart) passes here; the engine's own restarts are refused for containers
that mount host directories, so no start of theirs goes unchecked.
"""

from __future__ import annotations

import json
from typing import Any

from ds01 import labels, overlay
from ds01.config import SecuritySettings
from ds01.errors import Denied
from ds01.proxy import binds, destinations, policy, runas
from ds01.proxy.interfaces import Pinning
from ds01.reasons import Reason


def check_start(info: dict[str, Any], owner: runas.Caller, pins: Pinning, security: SecuritySettings,
                engine_sockets: frozenset[str]) -> None:
    # The create's rules again, on what the engine made of it (the image's VOLUMEs and WORKDIR merged in).
    destinations.check_destinations(info.get("Config") or {}, info.get("HostConfig") or {})
    _recheck_binds(info, owner, pins, security, engine_sockets)
    _check_mount_paths(info)


def check_networks(info: dict[str, Any], owner: runas.Caller, network_owners: dict[str, str | None]) -> None:
    """The engine looks a container's networks up by name again at each start; a name can have changed hands
    since the create (deleted, then made by someone else). `network_owners`: each name's owner now ("" none,
    None missing)."""
    name = str(info.get("Name") or "").lstrip("/")
    for network, network_owner in network_owners.items():
        if network_owner not in (None, "", owner.user) and not owner.is_admin:
            raise Denied(Reason.NOT_OWNER, (
                f"{name} joins the network {network}, which is not its owner's (any more): a network of that name "
                "was made by someone else. Connect it to a network of your own (docker network disconnect / "
                "connect), or remove it and create it again."))


def _recheck_binds(info: dict[str, Any], owner: runas.Caller, pins: Pinning, security: SecuritySettings,
                   engine_sockets: frozenset[str]) -> None:
    """Before the engine mounts a container's binds again: each pinned source must still be where, and what,
    it was when checked, under today's rules for its owner; a pin lost to a reboot is made again."""
    found_labels = (info.get("Config") or {}).get("Labels") or {}
    key = found_labels.get(labels.BIND_KEY)
    if not key:
        return
    originals = [str(path) for path in json.loads(found_labels.get(labels.BIND_SOURCES) or "[]")]
    name = str(info.get("Name") or "").lstrip("/")
    with binds.opened(originals, owner) as opened:
        facts = policy.Facts({path: source.resolved for path, source in opened.items()}, {}, {}, engine_sockets)
        for index, original in enumerate(originals):
            policy.check_bind_source(owner, original, facts, security)
            source, pinned = opened[original], pins.pinned(key, index)
            if pinned is None:
                pins.pin(key, index, source)
            elif pinned != (source.device, source.inode) or source.resolved.real != original:
                raise Denied(Reason.BIND_SOURCE_CHANGED, (
                    f"the bind source {original} of {name} was moved or replaced since the container was "
                    "created, so it is not started. Put it back, or remove the container and create it again."))


def _check_mount_paths(info: dict[str, Any]) -> None:
    """The runtime follows symlinks in the container's own filesystem as it makes mount points and the working
    directory; one there (from the image, or left by the container's processes) could lead it into a mounted
    host directory, where it makes them as root. The container is stopped: what is checked is what starts."""
    config, host = info.get("Config") or {}, info.get("HostConfig") or {}
    found = destinations.destinations(config, host)
    if not any(d.kind in destinations.HOLDING_KINDS for d in found):
        return  # without a host directory or a volume, a symlink leads only around the container's own files
    name = str(info.get("Name") or "").lstrip("/")
    layers = overlay.layers_of(info)
    if layers is None:
        raise Denied(Reason.MOUNT_PATH_SYMLINK, (
            f"{name} mounts host directories or volumes, and this engine's storage driver "
            f"({(info.get('GraphDriver') or {}).get('Name')}) does not let ds01 check the container's paths to "
            "them; ask an admin to use overlay2."))
    for path in destinations.RUNTIME_PATHS:
        try:
            leads_to = overlay.resolve(layers, path)
        except overlay.OverlayError as exc:
            raise Denied(Reason.MOUNT_PATH_SYMLINK, f"{name}: {exc}; use an image without that symlink loop.") from None
        holder = destinations.holder_of(leads_to, found)
        if holder is not None:
            raise Denied(Reason.MOUNT_PATH_SYMLINK, (
                f"{path} in {name} leads to {leads_to}, inside the {holder.kind} mounted at {holder.path}: the engine "
                "or the GPU runtime would make its own files there, as root. Use an image whose system directories "
                "are not symlinks into your mounts, or mount elsewhere."))
    for path in [d.path for d in found] + [str(config.get("WorkingDir") or "/")]:
        link = overlay.first_symlink(layers, path)
        if link is not None:
            raise Denied(Reason.MOUNT_PATH_SYMLINK, (
                f"{link.path} in {name} is a symlink (to {link.target}) on the way to a mount point or the "
                "working directory: the engine would follow it while making them, perhaps into a mounted host "
                "directory. Remove the container and create it with mounts elsewhere, or use an image without "
                "that symlink."))
