"""What ds01 knows about a container, and every `ds01.*` label name, defined in this one place."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

LABEL_PREFIX = "ds01."
USER = "ds01.user"  # sanitized owner name
UID = "ds01.uid"
CREATED_AT = "ds01.created_at"
TYPE = "ds01.type"  # container, docker, compose or devcontainer
ALLOCATION = "ds01.allocation"  # the allocation id the container's GPUs were granted under
GPU_EQUIVALENTS = "ds01.gpu_equivalents"  # exact, e.g. "3/7"
PROTECTED = "ds01.protected"
LEGACY_USER = "aime.mlc.USER"  # containers made by the system ds01 replaces
LEGACY_NAME_SEPARATOR = "._."  # NAME._.UID, the engine name of a user's container
WORKSPACE_TARGET = "/workspace"
REQUEST_MIG = "ds01.request.mig"  # a client asks for a MIG profile through this label
BIND_KEY = "ds01.bind_key"  # names the container's directory of pinned bind sources
BIND_SOURCES = "ds01.bind_sources"  # JSON list: the real host path each pinned source stood at when checked
INSTANCE = "ds01.instance"  # the state directory of the ds01 that made it: who tracks its grants
REQUEST_LABELS = frozenset({REQUEST_MIG})  # the only ds01.* labels a caller may send, consumed by the proxy
# Every ds01.* label ds01 reads. Each create writes all of them, empty where unset, so that no label of the
# image's own shows through; readers take an empty value for an absent one.
KNOWN_LABELS = (USER, UID, CREATED_AT, TYPE, ALLOCATION, GPU_EQUIVALENTS, PROTECTED, BIND_KEY, BIND_SOURCES,
                REQUEST_MIG, INSTANCE)


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


def original_bind_source(labels: Mapping[str, str], source: str | None) -> str | None:
    """The host path a pinned staging source (STAGING/KEY/N) stands for, from the container's labels."""
    key = labels.get(BIND_KEY)
    if source is None or not key or f"/{key}/" not in source:
        return source
    try:
        originals = json.loads(labels.get(BIND_SOURCES) or "[]")
        return str(originals[int(source.rsplit("/", 1)[1])])
    except (ValueError, IndexError, TypeError):
        return source  # labels not as ds01 writes them: show what the engine mounts
