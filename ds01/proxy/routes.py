"""Which Docker API endpoint a request is for, with an explicit allow-list; anything unlisted is denied."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal
from urllib.parse import unquote

_VERSION = re.compile(r"^/v(\d{1,3})\.(\d{1,3})(?=/)")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.:@+=,-]+")


class RouteKind(StrEnum):
    """What a request is for. The gate matches on it, so a kind it does not handle is a type error; the value is
    the `reason` of a `proxy.allow` event."""

    OPEN = "open"  # forwarded as it is: the engine's own facts, and the images everyone shares
    ADMIN_ONLY = "admin_only"
    GATED = "gated"  # an endpoint group the config may allow (Route.group)
    UNKNOWN = "unknown"  # not on the allow-list
    PULL = "pull"  # an image pull, or an import
    EVENTS = "events"
    LIST_CONTAINERS = "list_containers"
    CREATE_CONTAINER = "create_container"
    PRUNE_CONTAINERS = "prune_containers"
    CONTAINER = "container"  # an existing object, named in the path (Route.object_id)
    EXEC = "exec"
    LIST_VOLUMES = "list_volumes"
    CREATE_VOLUME = "create_volume"
    PRUNE_VOLUMES = "prune_volumes"
    VOLUME = "volume"
    LIST_NETWORKS = "list_networks"
    CREATE_NETWORK = "create_network"
    PRUNE_NETWORKS = "prune_networks"
    NETWORK = "network"
    LIST_IMAGES = "list_images"
    IMAGE = "image"  # one image, named in the path (Route.object_id, which may hold slashes)
    SAVE_IMAGES = "save_images"  # docker save of several, named in the query
    COMMIT = "commit"
    BUILD = "build"  # the classic builder
    BUILDKIT = "buildkit"  # its session and gRPC endpoints: refused, with how to build instead
    CAPACITY = "capacity"  # ds01's own: GET /ds01/gpus, every slot and who holds it, for `container gpus`
    QUEUE = "queue"  # ds01's own: GET /ds01/queue, DELETE /ds01/queue/ID (Route.object_id), for `container queue`
    JOBS = "jobs"  # ds01's own: POST and GET /ds01/jobs, GET and DELETE /ds01/jobs/NAME, for batch jobs


ObjectKind = Literal[RouteKind.CONTAINER, RouteKind.EXEC, RouteKind.VOLUME, RouteKind.NETWORK]


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    object_id: str | None = None  # container, exec, volume or network named in the path
    action: str = ""  # what follows the object id: "json", "start", "exec", ...
    group: str | None = None  # for endpoints the config may allow: build, session, plugins, ...
    version: tuple[int, int] | None = None  # the API version the path names (/v1.41/...), None for none


def _object_route(kind: ObjectKind, segments: list[str]) -> Route:
    return Route(kind, segments[1], "/".join(segments[2:]))


UNKNOWN = Route(RouteKind.UNKNOWN)


_GATED = {"plugins": "plugins", "swarm": "swarm", "nodes": "swarm", "services": "swarm", "tasks": "swarm",
          "secrets": "swarm", "configs": "swarm"}
# What follows an image's name in its path, by method: the name itself may hold slashes (alice/tools).
_IMAGE_ACTIONS = {"GET": ("json", "history", "get"), "POST": ("tag", "push")}


def _images(method: str, segments: list[str]) -> Route:
    if segments[1:] == ["json"] and method == "GET":
        return Route(RouteKind.LIST_IMAGES)
    if segments[1:] == ["create"] and method == "POST":
        return Route(RouteKind.PULL)  # or an import (fromSrc), which the gate tells apart by the query
    if segments[1:] == ["load"] and method == "POST":
        return Route(RouteKind.GATED, group="image_load")
    if segments[1:] == ["get"] and method == "GET":
        return Route(RouteKind.SAVE_IMAGES)
    if segments[1:] in (["prune"], ["search"]):
        return Route(RouteKind.ADMIN_ONLY)
    if len(segments) >= 3 and segments[-1] in _IMAGE_ACTIONS.get(method, ()):
        return Route(RouteKind.IMAGE, "/".join(segments[1:-1]), segments[-1])
    if len(segments) >= 2 and method == "DELETE":
        return Route(RouteKind.IMAGE, "/".join(segments[1:]))
    return UNKNOWN


def _build(method: str, segments: list[str]) -> Route:
    if method == "POST" and len(segments) == 1:
        return Route(RouteKind.BUILD)
    if method == "POST" and segments[1:] == ["prune"]:
        return Route(RouteKind.ADMIN_ONLY)  # the build cache is everyone's: ds01 cleanup prunes it
    return UNKNOWN


def _containers(method: str, segments: list[str]) -> Route:
    if len(segments) == 2 and segments[1] == "json" and method == "GET":
        return Route(RouteKind.LIST_CONTAINERS)
    if len(segments) == 2 and segments[1] == "create" and method == "POST":
        return Route(RouteKind.CREATE_CONTAINER)
    if len(segments) == 2 and segments[1] == "prune" and method == "POST":
        return Route(RouteKind.PRUNE_CONTAINERS)
    if len(segments) >= 2:
        return _object_route(RouteKind.CONTAINER, segments)
    return UNKNOWN


# Per collection: its list, create and prune routes, and the kind of one object in it.
_COLLECTIONS: dict[str, tuple[RouteKind, RouteKind, RouteKind, ObjectKind]] = {
    "volumes": (RouteKind.LIST_VOLUMES, RouteKind.CREATE_VOLUME, RouteKind.PRUNE_VOLUMES, RouteKind.VOLUME),
    "networks": (RouteKind.LIST_NETWORKS, RouteKind.CREATE_NETWORK, RouteKind.PRUNE_NETWORKS, RouteKind.NETWORK),
}


def _volumes_or_networks(method: str, segments: list[str]) -> Route:
    listing, create, prune, one = _COLLECTIONS[segments[0]]
    if len(segments) == 1 and method == "GET":
        return Route(listing)
    if segments[1:] == ["create"] and method == "POST":
        return Route(create)
    if segments[1:] == ["prune"] and method == "POST":
        return Route(prune)
    if len(segments) >= 2:
        return _object_route(one, segments)
    return UNKNOWN


def _system(method: str, segments: list[str]) -> Route:
    if len(segments) == 1 and method in ("GET", "HEAD") and segments[0] in ("_ping", "version", "info"):
        return Route(RouteKind.OPEN) if method == "GET" or segments[0] == "_ping" else UNKNOWN
    return UNKNOWN


def _single(kind: RouteKind) -> Callable[[str, list[str]], Route]:
    def route(method: str, segments: list[str]) -> Route:
        return Route(kind) if len(segments) == 1 and method == "GET" else UNKNOWN
    return route


def _exec(method: str, segments: list[str]) -> Route:
    return _object_route(RouteKind.EXEC, segments) if len(segments) >= 3 else UNKNOWN


def _ds01(method: str, segments: list[str]) -> Route:
    """ds01's own endpoints, beside the engine's."""
    if segments[1:] == ["gpus"] and method == "GET":
        return Route(RouteKind.CAPACITY)
    if segments[1:] == ["queue"] and method == "GET":
        return Route(RouteKind.QUEUE)
    if len(segments) == 3 and segments[1] == "queue" and method == "DELETE":
        return Route(RouteKind.QUEUE, segments[2])
    if segments[1:] == ["jobs"] and method in ("GET", "POST"):
        return Route(RouteKind.JOBS)
    if len(segments) == 3 and segments[1] == "jobs" and method in ("GET", "DELETE"):
        return Route(RouteKind.JOBS, segments[2])
    return UNKNOWN


_BY_TOP: dict[str, Callable[[str, list[str]], Route]] = {
    "ds01": _ds01,
    "_ping": _system, "version": _system, "info": _system,
    "distribution": lambda method, _segments: Route(RouteKind.OPEN) if method == "GET" else UNKNOWN,
    "images": _images,
    "commit": lambda method, segments: Route(RouteKind.COMMIT) if method == "POST" and len(segments) == 1
    else UNKNOWN,
    "build": _build,
    "session": lambda _method, _segments: Route(RouteKind.BUILDKIT),
    "grpc": lambda _method, _segments: Route(RouteKind.BUILDKIT),
    "containers": _containers,
    "exec": _exec,
    "events": _single(RouteKind.EVENTS),
    "volumes": _volumes_or_networks,
    "networks": _volumes_or_networks,
    "system": lambda method, segments: Route(RouteKind.ADMIN_ONLY) if segments[1:] == ["df"] and method == "GET"
    else UNKNOWN,
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
        return UNKNOWN
    top = segments[0]
    if top in _BY_TOP:
        return _BY_TOP[top](method, segments)
    if top in _GATED:
        return Route(RouteKind.GATED, group=_GATED[top])
    return UNKNOWN
