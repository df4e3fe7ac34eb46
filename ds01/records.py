"""What ds01 knows about a container (from the engine's inspect record) and about images and build cache (from
the engine's lists): pure, no SDK."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ds01 import devicerequests, labels
from ds01.names import WORKSPACE


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    labels: Mapping[str, str]
    status: str  # the engine's state: created, running, exited, ...
    device_ids: tuple[str, ...]  # GPU/MIG UUIDs (or indices) from the container's device requests
    gpu_count: int  # devices asked for by count: 0 none, -1 all
    started_at: float | None = None  # epoch seconds; None if never started
    finished_at: float | None = None  # when it last stopped; None while it has not
    workspace: str | None = None  # the host directory mounted at /workspace, if any
    user: str = ""  # Config.User: whom its processes run as ("" is the image's default, root for most)
    host_mounts: tuple[str, ...] = ()  # host paths bind-mounted into it

    @property
    def holds_gpus(self) -> bool:
        return bool(self.device_ids) or self.gpu_count != 0


@dataclass(frozen=True)
class ContainerSummary:
    """What the engine's container list says, without an inspect per container."""

    id: str
    name: str
    labels: Mapping[str, str]
    status: str


def original_bind_source(container_labels: Mapping[str, str], source: str | None) -> str | None:
    """The host path a pinned staging source (STAGING/KEY/N) stands for, from the container's labels."""
    key = container_labels.get(labels.BIND_KEY)
    if source is None or not key or f"/{key}/" not in source:
        return source
    try:
        originals = json.loads(container_labels.get(labels.BIND_SOURCES) or "[]")
        return str(originals[int(source.rsplit("/", 1)[1])])
    except (ValueError, IndexError, TypeError):
        return source  # labels not as ds01 writes them: show what the engine mounts


def _timestamp(text: str | None) -> float | None:
    """Engine times are RFC 3339 with nanoseconds; the zero time means never."""
    if not text or text.startswith("0001-"):
        return None
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


def container_info(inspected: dict[str, Any]) -> ContainerInfo:
    host_config = inspected.get("HostConfig") or {}
    device_ids, count = devicerequests.gpu_devices(host_config)
    state = inspected["State"]
    container_labels = (inspected.get("Config") or {}).get("Labels") or {}
    workspace = next((m.get("Source") for m in inspected.get("Mounts") or []
                      if m.get("Destination") == WORKSPACE and m.get("Type") == "bind"), None)
    workspace = original_bind_source(container_labels, workspace)
    return ContainerInfo(
        id=inspected["Id"],
        name=inspected["Name"].lstrip("/"),
        labels=container_labels,
        status=state["Status"],
        device_ids=device_ids,
        gpu_count=count,
        started_at=_timestamp(state.get("StartedAt")),
        finished_at=_timestamp(state.get("FinishedAt")),
        workspace=workspace,
        user=str((inspected.get("Config") or {}).get("User") or ""),
        host_mounts=tuple(original_bind_source(container_labels, m.get("Source")) or "" for m in
                          inspected.get("Mounts") or [] if m.get("Type") == "bind"),
    )


@dataclass(frozen=True)
class Details:
    """One container as `container` shows it."""

    info: ContainerInfo
    image: str
    created: str  # as the engine recorded it, ISO 8601
    workspace: str | None  # host directory mounted at /workspace
    cpus: float | None
    memory_bytes: int | None
    shm_size_bytes: int | None
    ports: tuple[PublishedPort, ...] = ()  # as published now (a stopped container has none)


@dataclass(frozen=True)
class PublishedPort:
    container_port: int
    protocol: str  # tcp, udp or sctp
    host_ip: str
    host_port: int


def published(network_settings: Mapping[str, Any]) -> tuple[PublishedPort, ...]:
    """NetworkSettings.Ports of an inspect: what each container port is published on now."""
    found = []
    for port, bindings in sorted((network_settings.get("Ports") or {}).items()):
        number, _, protocol = str(port).partition("/")
        for binding in bindings or []:
            host_port = str(binding.get("HostPort") or "")
            if number.isdigit() and host_port.isdigit():
                found.append(PublishedPort(int(number), protocol or "tcp", str(binding.get("HostIp") or ""),
                                           int(host_port)))
    return tuple(found)


def details(inspected: dict[str, Any]) -> Details:
    host = inspected.get("HostConfig") or {}
    info = container_info(inspected)
    return Details(info=info, image=str((inspected.get("Config") or {}).get("Image") or ""),
                   created=str(inspected.get("Created") or ""), workspace=info.workspace,
                   cpus=(host.get("NanoCpus") or 0) / 1e9 or None, memory_bytes=host.get("Memory") or None,
                   shm_size_bytes=host.get("ShmSize") or None,
                   ports=published(inspected.get("NetworkSettings") or {}))


@dataclass(frozen=True)
class ImageSummary:
    """One image as the engine's image list shows it."""

    id: str
    tags: tuple[str, ...]  # none for a dangling or an intermediate image
    created_at: float  # epoch seconds: when it was built or committed, which is what a prune's `until` reads
    size_bytes: int  # the whole image, its base included, as `docker images` shows it


def image_summary(listed: Mapping[str, Any]) -> ImageSummary:
    return ImageSummary(id=str(listed["Id"]),
                        tags=tuple(tag for tag in listed.get("RepoTags") or () if tag != "<none>:<none>"),
                        created_at=float(listed.get("Created") or 0), size_bytes=int(listed.get("Size") or 0))


@dataclass(frozen=True)
class CacheRecord:
    """One record of BuildKit's build cache, as the engine's disk usage lists it."""

    id: str
    kind: str  # "regular", "internal", "frontend", "source.local", ...
    size_bytes: int
    in_use: bool
    shared: bool
    last_used_at: float | None  # epoch seconds; None when never used since it was made


def cache_record(listed: Mapping[str, Any]) -> CacheRecord:
    return CacheRecord(id=str(listed["ID"]), kind=str(listed.get("Type") or "regular"),
                       size_bytes=int(listed.get("Size") or 0), in_use=bool(listed.get("InUse")),
                       shared=bool(listed.get("Shared")), last_used_at=_timestamp(listed.get("LastUsedAt")))


@dataclass(frozen=True)
class PruneResult:
    """What one of the engine's prune endpoints removed."""

    deleted: tuple[str, ...]  # images: image ids and layer chain ids mixed, as the engine lists them; cache: ids
    reclaimed_bytes: int
