"""Whose a container is. Its ds01.user label alone does not say: the classic builder gives each RUN step's
container the labels of the image it runs on, and anyone can bake `ds01.user=alice` into an image (and publish
it), so bob's build would run in containers that claim to be alice's. A container is U's only when it also runs
under U's cgroup parent, which no image can carry: the proxy sets it on every create and every build, to the
caller's own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from ds01 import labels
from ds01.proxy.interfaces import EngineCalls

CACHE_LIMIT = 50_000  # containers remembered; past it the cache starts again (it only saves inspects)


class ContainerOwners:
    def __init__(self, upstream: EngineCalls, cgroup_name: Callable[[str], str]) -> None:
        self._upstream = upstream
        self._cgroup_name = cgroup_name
        self._lock = threading.Lock()
        self._known: dict[str, str | None] = {}  # by id: a container's labels and cgroup parent never change

    def of_inspect(self, info: dict[str, Any]) -> str | None:
        """The owner of the inspected container, None when it is nobody's (no label, or a label its cgroup parent
        belies)."""
        user = ((info.get("Config") or {}).get("Labels") or {}).get(labels.USER)
        parent = (info.get("HostConfig") or {}).get("CgroupParent")
        owner = user if user and parent == self._cgroup_name(user) else None
        container_id = str(info.get("Id") or "")
        if container_id:
            with self._lock:
                if len(self._known) >= CACHE_LIMIT:
                    self._known.clear()
                self._known[container_id] = owner
        return owner

    def of_id(self, container_id: str) -> str | None:
        with self._lock:
            if container_id in self._known:
                return self._known[container_id]
        info = self._upstream.inspect("container", container_id)
        return None if info is None else self.of_inspect(info)

    def mine(self, summaries: Iterable[dict[str, Any]], user: str) -> list[dict[str, Any]]:
        """The summaries of a container list that are `user`'s (the list was filtered by label already)."""
        return [summary for summary in summaries if self.of_id(str(summary.get("Id") or "")) == user]
