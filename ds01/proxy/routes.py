"""Which Docker API endpoint a request is for, with an explicit allow-list; anything unlisted is denied."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

_VERSION = re.compile(r"^/v(\d{1,3})\.(\d{1,3})(?=/)")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.:@+=,-]+")


@dataclass(frozen=True)
class Route:
    kind: str
    object_id: str | None = None  # container, exec, volume or network named in the path
    action: str = ""  # what follows the object id: "json", "start", "exec", ...
    group: str | None = None  # for endpoints the config may allow: build, session, plugins, ...
    version: tuple[int, int] | None = None  # the API version the path names (/v1.41/...), None for none


def _object_route(kind: str, segments: list[str]) -> Route:
    return Route(kind, segments[1], "/".join(segments[2:]))


_GATED = {"build": "build", "session": "session", "grpc": "session", "plugins": "plugins", "swarm": "swarm",
          "nodes": "swarm", "services": "swarm", "tasks": "swarm", "secrets": "swarm", "configs": "swarm",
          "commit": "commit"}


def _images(method: str, segments: list[str]) -> Route:
    if segments[1:] == ["json"] and method == "GET":
        return Route("open")
    if segments[1:] == ["create"] and method == "POST":
        return Route("pull")  # or an import (fromSrc), which the gate tells apart by the query
    if segments[1:] == ["load"] and method == "POST":
        return Route("gated", group="image_load")
    if len(segments) >= 3 and segments[-1] in ("json", "history") and method == "GET":
        return Route("open")
    if len(segments) >= 2 and method == "DELETE":
        return Route("admin_only")
    return Route("unknown")


def _containers(method: str, segments: list[str]) -> Route:
    if len(segments) == 2 and segments[1] == "json" and method == "GET":
        return Route("list_containers")
    if len(segments) == 2 and segments[1] == "create" and method == "POST":
        return Route("create_container")
    if len(segments) == 2 and segments[1] == "prune" and method == "POST":
        return Route("prune_containers")
    if len(segments) >= 2:
        return _object_route("container", segments)
    return Route("unknown")


def _volumes_or_networks(kind: str, method: str, segments: list[str]) -> Route:
    if len(segments) == 1 and method == "GET":
        return Route(f"list_{kind}s")
    if segments[1:] == ["create"] and method == "POST":
        return Route(f"create_{kind}")
    if segments[1:] == ["prune"] and method == "POST":
        return Route(f"prune_{kind}s")
    if len(segments) >= 2:
        return _object_route(kind, segments)
    return Route("unknown")


def _system(method: str, segments: list[str]) -> Route:
    if len(segments) == 1 and method in ("GET", "HEAD") and segments[0] in ("_ping", "version", "info"):
        return Route("open") if method == "GET" or segments[0] == "_ping" else Route("unknown")
    return Route("unknown")


def _single(kind: str) -> Callable[[str, list[str]], Route]:
    def route(method: str, segments: list[str]) -> Route:
        return Route(kind) if len(segments) == 1 and method == "GET" else Route("unknown")
    return route


def _exec(method: str, segments: list[str]) -> Route:
    return _object_route("exec", segments) if len(segments) >= 3 else Route("unknown")


_BY_TOP: dict[str, Callable[[str, list[str]], Route]] = {
    "_ping": _system, "version": _system, "info": _system,
    "distribution": lambda method, _segments: Route("open") if method == "GET" else Route("unknown"),
    "images": _images,
    "containers": _containers,
    "exec": _exec,
    "events": _single("events"),
    "volumes": lambda method, segments: _volumes_or_networks("volume", method, segments),
    "networks": lambda method, segments: _volumes_or_networks("network", method, segments),
    "system": lambda method, segments: Route("admin_only") if segments[1:] == ["df"] and method == "GET"
    else Route("unknown"),
}


def classify(method: str, path: str) -> Route:
    """The route for a request path (query string removed), with the API version it names. Odd paths are
    refused, not guessed at."""
    found = _VERSION.match(path)
    route = _classify(method, path[found.end():] if found else path)
    return dataclasses.replace(route, version=(int(found[1]), int(found[2]))) if found else route


def _classify(method: str, path: str) -> Route:
    segments = [unquote(s) for s in path.strip("/").split("/")]
    if not path.startswith("/") or "//" in path or any(not _SAFE_SEGMENT.fullmatch(s) or s in (".", "..")
                                                       for s in segments):
        return Route("unknown")
    top = segments[0]
    if top in _BY_TOP:
        return _BY_TOP[top](method, segments)
    if top in _GATED:
        return Route("gated", group=_GATED[top])
    return Route("unknown")
