"""What the proxy does about what the engine does on its own: from the engine's event stream, release the GPUs and
pinned bind sources of containers it removes (--rm, prune), record the ones the OOM killer hit, stop a GPU
container it started without a grant (a restart policy's start never passes through the proxy), drop the
ownership records of images it deletes, and keep the
owner-only reach rules (`ds01.proxy.reach`) in step with the networks there are."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ds01 import eventlog, iptables, labels, procfs
from ds01.config.schema import HostService
from ds01.errors import Denied, Ds01Error, EngineError
from ds01.eventlog.types import EventType
from ds01.gpus.allocator import Allocator
from ds01.proxy import http, reach
from ds01.proxy.binds import Pins
from ds01.proxy.imagestore import ImageStore
from ds01.proxy.upstream import Upstream
from ds01.reasons import Reason
from ds01.records import container_info

WATCHED = {"type": ["container", "network", "image"], "event": ["create", "destroy", "die", "oom", "start", "delete"]}
REACH_EVENTS = frozenset({("network", "create"), ("network", "destroy")})
RETRY_SECONDS = 2.0
REFRESH_SECONDS = 5.0  # also brings in a changed networks.host_services, and what a lost event stream missed
STREAM_ERRORS = (OSError, EngineError, http.HttpError, ValueError, Ds01Error)


class ReachKeeper:
    """Keeps the reach rules equal to what the engine's networks, its cgroup and the configured host services
    imply; one refresh at a time, whoever asks."""

    def __init__(self, upstream: Upstream, services: Callable[[], tuple[HostService, ...]],
                 engine_cgroup: str | None) -> None:
        self._upstream = upstream
        self._services = services
        self._engine_cgroup = engine_cgroup  # None: the cgroup of the process serving the engine's socket
        self._lock = threading.Lock()
        self.failures = 0

    def _listed(self, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
        status, listed = self._upstream.call("GET", path, query=query)
        if status != 200 or not isinstance(listed, list):
            raise EngineError(f"the engine answered {status} to GET {path}: {str(listed)[:200]}")
        return listed

    def engine_cgroup(self) -> str:
        """The engine's cgroup v2 path, read each time: a restarted engine may be elsewhere."""
        if self._engine_cgroup is not None:
            return self._engine_cgroup
        if self._upstream.unix_path is None:
            raise Ds01Error(f"the engine at {self._upstream.url} is reached over TCP, so ds01 cannot read its cgroup "
                            "from its socket: name it (ds01 proxy --engine-cgroup PATH)")
        with contextlib.closing(self._upstream.connect()) as sock:
            pid, _ = iptables.peer_in_namespace(sock)
        return procfs.unified_cgroup(pid)

    def outside_engine_namespace(self) -> str | None:
        """Why this process is not in the engine's network namespace, where the rules must be written, or None.
        One of the engine's bridges is here with an address in its subnet (a relay in front of the engine changes
        nothing); an engine with no bridge is known by the process listening on its socket."""
        bridged = [n for n in reach.networks(self._listed("/networks", {})) if n.bridge and n.subnets]
        for network in bridged:
            address = iptables.interface_address(str(network.bridge))
            if address is not None and any(address in subnet for subnet in network.subnets):
                return None
        if bridged:
            return f"none of the engine's bridges ({', '.join(str(n.bridge) for n in bridged[:3])}) is here"
        if self._upstream.unix_path is None:
            return f"the engine at {self._upstream.url} has no bridge and no unix socket to tell its namespace by"
        with contextlib.closing(self._upstream.connect()) as sock:
            pid, shared = iptables.peer_in_namespace(sock)
        return None if shared else f"the engine's socket is served by pid {pid}, in another network namespace"

    def desired(self) -> reach.Ruleset:
        return reach.ruleset(reach.networks(self._listed("/networks", {})), self._services(), self.engine_cgroup())

    def refresh(self) -> bool:
        """Bring the rules in line with the engine now; True when they changed. Raises Ds01Error when they
        cannot be (the rules in place stay as they were: iptables-restore applies all or nothing), or when the
        engine runs its userland proxy, where they would not hold."""
        with self._lock:
            reach.check_translation(iptables.save("nat"))
            desired = self.desired()
            live, raw = iptables.save("filter"), iptables.save("raw")
            if reach.in_place(desired, live, raw):
                return False
            iptables.restore(reach.restore_text(desired, live, raw))
            return True

    def keep(self, trigger: str) -> None:
        """refresh, a failure reported and counted rather than raised: the proxy serves on, the next event or
        pass tries again."""
        try:
            self.refresh()
        except STREAM_ERRORS as exc:
            self.failures += 1
            eventlog.emit(EventType.PROXY_REACH_FAILED, source="proxy", trigger=trigger, error=str(exc),
                          failures=self.failures)
            print(f"ds01 proxy: ERROR the reach rules were not updated after {trigger}: {exc}", file=sys.stderr,
                  flush=True)


def keep_reach(keeper: ReachKeeper, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_SECONDS):
        keeper.keep("the periodic check")


@dataclass(frozen=True)
class Janitor:
    """What the event watch acts on."""

    upstream: Upstream
    allocator: Allocator
    pins: Pins
    instance: str  # this ds01's state directory, as its containers' ds01.instance label names it
    keeper: ReachKeeper
    images: ImageStore
    container_exited: Callable[[], None]  # the queue's kick: a grant may have freed, or a deadline moved
    job_died: Callable[[str], None]  # a batch job's container ended: its record, GPUs, log and removal

    def on_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        kind = str(event.get("Type") or "container")
        action = str(event.get("Action") or event.get("status") or "")
        if (kind, action) in REACH_EVENTS:
            self.keeper.keep(f"{kind} {action}")
        if (kind, action) == ("image", "delete"):  # removed past the proxy, or pruned: its record goes
            self.images.forget([str(event.get("id") or actor.get("ID", ""))])
        if kind == "container":
            try:
                self._on_container(action, str(event.get("id") or actor.get("ID", "")), actor.get("Attributes") or {})
            except Denied as denied:
                if denied.reason is not Reason.STORE_UNAVAILABLE:
                    raise
                # The stream goes on; what this event would have released, the rejoin's reconcile releases.
                eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=(
                    f"container {action} not settled with the allocation store: {denied.message}"))

    def _on_container(self, action: str, container_id: str, attributes: dict[str, Any]) -> None:
        # Only this ds01's own, or one from before the instance label: another's grants are in another store.
        ours = bool(attributes.get(labels.USER)) and attributes.get(labels.INSTANCE) in ("", None, self.instance)
        if action in ("die", "destroy"):
            self.container_exited()
        if action in ("die", "destroy") and ours and attributes.get(labels.TYPE) == "job":
            self.job_died(container_id)
        if action == "oom":
            eventlog.emit(EventType.CONTAINER_OOM, source="engine", user=attributes.get(labels.USER),
                          container=attributes.get("name"), id=container_id)
        elif action == "destroy":
            self.allocator.release_removed(container_id)
            self.pins.release(attributes.get(labels.BIND_KEY) or "")
        elif action == "start" and ours:
            _stop_if_ungranted(container_id, self.upstream, self.allocator)


def watch_engine(janitor: Janitor, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for event in janitor.upstream.events(WATCHED):
                janitor.on_event(event)
        except STREAM_ERRORS as exc:
            eventlog.emit(EventType.PROXY_EVENT_STREAM_LOST, source="proxy", error=str(exc))
            stop.wait(RETRY_SECONDS)


def _stop_if_ungranted(container_id: str, upstream: Upstream, allocator: Allocator) -> None:
    """A ds01 container on GPUs runs only under a grant bound to it. Every start through the proxy binds one first,
    so a start without one is the engine's own (a restart policy), on devices that may be someone else's now."""
    found = upstream.inspect("container", container_id)
    if found is None:
        return
    info = container_info(found)
    if not info.holds_gpus or any(a.container == info.id for a in allocator.allocations()):
        return
    status, answer = upstream.call("POST", f"/containers/{quote(info.id, safe='')}/stop", query={"t": "0"})
    eventlog.emit(EventType.PROXY_UNGRANTED_START, source="proxy", user=info.labels.get(labels.USER),
                  container=info.name, id=info.id, devices=list(info.device_ids), stopped=status in (204, 304),
                  engine_status=status, engine_answer=None if status in (204, 304) else str(answer)[:200])
