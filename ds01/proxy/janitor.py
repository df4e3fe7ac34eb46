"""What the proxy does about what the engine does on its own: from the engine's event stream, release the GPUs and
pinned bind sources of containers it removes (--rm, prune), record the ones the OOM killer hit, and stop a GPU
container it started without a grant (a restart policy's start never passes through the proxy)."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

from ds01 import eventlog, labels
from ds01.errors import Ds01Error, EngineError
from ds01.eventlog.types import EventType
from ds01.gpus.allocator import Allocator
from ds01.proxy import http
from ds01.proxy.binds import Pins
from ds01.proxy.upstream import Upstream
from ds01.records import container_info

WATCHED = {"type": ["container"], "event": ["destroy", "oom", "start"]}
RETRY_SECONDS = 2.0


def watch_engine(upstream: Upstream, allocator: Allocator, pins: Pins, instance: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for event in upstream.events(WATCHED):
                on_event(event, upstream, allocator, pins, instance)
        except (OSError, EngineError, http.HttpError, ValueError, Ds01Error) as exc:
            eventlog.emit(EventType.PROXY_EVENT_STREAM_LOST, source="proxy", error=str(exc))
            stop.wait(RETRY_SECONDS)


def on_event(event: dict[str, Any], upstream: Upstream, allocator: Allocator, pins: Pins, instance: str) -> None:
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    container_id = str(event.get("id") or actor.get("ID", ""))
    action = event.get("Action") or event.get("status")
    # Only this ds01's own, or one from before the instance label: another's grants are in another store.
    ours = bool(attributes.get(labels.USER)) and attributes.get(labels.INSTANCE) in ("", None, instance)
    if action == "oom":
        eventlog.emit(EventType.CONTAINER_OOM, source="engine", user=attributes.get(labels.USER),
                      container=attributes.get("name"), id=container_id)
    elif action == "destroy":
        allocator.release_container(container_id)
        pins.release(attributes.get(labels.BIND_KEY) or "")
    elif action == "start" and ours:
        _stop_if_ungranted(container_id, upstream, allocator)


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
