"""ds01.proxy.routes.classify: the proxy's allow-list of Docker API endpoints (pure)."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ds01.config import ENDPOINT_GROUPS
from ds01.proxy.routes import ObjectKind, Route, RouteKind, classify

PREFIXES = ["", "/v1.41", "/v1.47", "/v1.24", "/v10.0"]
OBJECT_KINDS = frozenset(get_args(ObjectKind))
UNKNOWN = Route(RouteKind.UNKNOWN)


def route_of(method: str, path: str) -> Route:
    """The route, whatever API version the path names (checked on its own below)."""
    return dataclasses.replace(classify(method, path), version=None)


def all_prefixes(cases: list[tuple[str, str, Route]]) -> list[tuple[str, str, Route]]:
    return [(method, prefix + path, route) for prefix in PREFIXES for method, path, route in cases]


OPEN = [
    ("GET", "/_ping"),
    ("HEAD", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("GET", "/distribution/busybox/json"),
    ("GET", "/distribution/docker.io/library/busybox:latest/json"),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes([(m, p, Route(RouteKind.OPEN)) for m, p in OPEN]))
def test_open_endpoints(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


def test_image_create_is_a_pull_the_gate_checks() -> None:
    assert route_of("POST", "/v1.41/images/create") == Route(RouteKind.PULL)


IMAGES = [
    ("GET", "/images/json", Route(RouteKind.LIST_IMAGES)),
    ("GET", "/images/get", Route(RouteKind.SAVE_IMAGES)),
    ("POST", "/commit", Route(RouteKind.COMMIT)),
    ("POST", "/build", Route(RouteKind.BUILD)),
    ("POST", "/session", Route(RouteKind.BUILDKIT)),
    ("GET", "/session", Route(RouteKind.BUILDKIT)),
    ("POST", "/grpc", Route(RouteKind.BUILDKIT)),
    ("GET", "/images/busybox/json", Route(RouteKind.IMAGE, "busybox", "json")),
    ("GET", "/images/busybox:latest/json", Route(RouteKind.IMAGE, "busybox:latest", "json")),
    ("GET", "/images/library/ubuntu/json", Route(RouteKind.IMAGE, "library/ubuntu", "json")),
    ("GET", "/images/registry.example.org:5000/team/app:1.2/json",
     Route(RouteKind.IMAGE, "registry.example.org:5000/team/app:1.2", "json")),
    ("GET", "/images/sha256:0123abcd/history", Route(RouteKind.IMAGE, "sha256:0123abcd", "history")),
    ("GET", "/images/alice/tools/get", Route(RouteKind.IMAGE, "alice/tools", "get")),
    ("POST", "/images/alice/tools/tag", Route(RouteKind.IMAGE, "alice/tools", "tag")),
    ("POST", "/images/alice/tools/push", Route(RouteKind.IMAGE, "alice/tools", "push")),
    ("DELETE", "/images/alice/tools", Route(RouteKind.IMAGE, "alice/tools", "")),
    ("DELETE", "/images/sha256:abcdef", Route(RouteKind.IMAGE, "sha256:abcdef", "")),
    ("DELETE", "/images/alice/json", Route(RouteKind.IMAGE, "alice/json", "")),  # a name that ends like an action
]
DS01 = [  # ds01's own endpoints, beside the engine's
    ("GET", "/ds01/gpus", Route(RouteKind.CAPACITY)),
    ("GET", "/ds01/queue", Route(RouteKind.QUEUE)),
    ("DELETE", "/ds01/queue/q-0123456789", Route(RouteKind.QUEUE, "q-0123456789")),
    ("POST", "/ds01/gpus", Route(RouteKind.UNKNOWN)),
    ("DELETE", "/ds01/queue", Route(RouteKind.UNKNOWN)),
    ("GET", "/ds01/queue/x/y", Route(RouteKind.UNKNOWN)),
    ("POST", "/ds01/jobs", Route(RouteKind.JOBS)),
    ("GET", "/ds01/jobs", Route(RouteKind.JOBS)),
    ("GET", "/ds01/jobs/train", Route(RouteKind.JOBS, "train")),
    ("DELETE", "/ds01/jobs/train", Route(RouteKind.JOBS, "train")),
    ("DELETE", "/ds01/jobs", Route(RouteKind.UNKNOWN)),
    ("POST", "/ds01/jobs/train", Route(RouteKind.UNKNOWN)),
    ("GET", "/ds01", Route(RouteKind.UNKNOWN)),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes(IMAGES + DS01))
def test_image_endpoints(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


CLOSED_VARIANTS = [
    ("POST", "/_ping"), ("HEAD", "/version"), ("HEAD", "/info"), ("POST", "/version"), ("DELETE", "/info"),
    ("POST", "/images/json"), ("GET", "/images/create"), ("GET", "/images/busybox"), ("POST", "/images/busybox/json"),
    ("GET", "/images/busybox/tag"), ("GET", "/images/busybox/push"), ("POST", "/images/busybox/get"),
    ("GET", "/images"), ("DELETE", "/images"), ("GET", "/commit"),
    ("POST", "/distribution/busybox/json"), ("GET", "/_ping/x"), ("GET", "/version/x"), ("GET", "/exec/abc"),
    ("GET", "/exec"), ("POST", "/events"), ("GET", "/events/x"), ("GET", "/system"), ("POST", "/system/df"),
    ("GET", "/system/info"), ("POST", "/auth"), ("GET", "/nope"), ("GET", "/Containers/json"),
    ("GET", "/CONTAINERS/json"), ("GET", "/v1.41"), ("POST", "/volumes"), ("POST", "/networks"),
    ("get", "/_ping"), ("get", "/images/json"),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes([(m, p, UNKNOWN) for m, p in CLOSED_VARIANTS]))
def test_unlisted_methods_and_endpoints_are_unknown(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


LIST_KINDS = [
    ("GET", "/containers/json", Route(RouteKind.LIST_CONTAINERS)),
    ("POST", "/containers/create", Route(RouteKind.CREATE_CONTAINER)),
    ("POST", "/containers/prune", Route(RouteKind.PRUNE_CONTAINERS)),
    ("GET", "/events", Route(RouteKind.EVENTS)),
    ("GET", "/volumes", Route(RouteKind.LIST_VOLUMES)),
    ("POST", "/volumes/create", Route(RouteKind.CREATE_VOLUME)),
    ("POST", "/volumes/prune", Route(RouteKind.PRUNE_VOLUMES)),
    ("GET", "/networks", Route(RouteKind.LIST_NETWORKS)),
    ("POST", "/networks/create", Route(RouteKind.CREATE_NETWORK)),
    ("POST", "/networks/prune", Route(RouteKind.PRUNE_NETWORKS)),
    ("GET", "/containers/json/", Route(RouteKind.LIST_CONTAINERS)),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes(LIST_KINDS))
def test_list_create_prune_and_events(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


OBJECTS = [
    ("GET", "/containers/abc/json", Route(RouteKind.CONTAINER, "abc", "json")),
    ("POST", "/containers/abc/start", Route(RouteKind.CONTAINER, "abc", "start")),
    ("POST", "/containers/abc/stop", Route(RouteKind.CONTAINER, "abc", "stop")),
    ("POST", "/containers/my_app-1.2/exec", Route(RouteKind.CONTAINER, "my_app-1.2", "exec")),
    ("POST", "/containers/abc/attach", Route(RouteKind.CONTAINER, "abc", "attach")),
    ("GET", "/containers/abc/logs", Route(RouteKind.CONTAINER, "abc", "logs")),
    ("POST", "/containers/abc/update", Route(RouteKind.CONTAINER, "abc", "update")),
    ("PUT", "/containers/abc/archive", Route(RouteKind.CONTAINER, "abc", "archive")),
    ("POST", "/containers/abc/resize", Route(RouteKind.CONTAINER, "abc", "resize")),
    ("DELETE", "/containers/abc", Route(RouteKind.CONTAINER, "abc", "")),
    ("GET", "/containers/abc/x/y", Route(RouteKind.CONTAINER, "abc", "x/y")),
    ("POST", "/containers/json", Route(RouteKind.CONTAINER, "json", "")),
    ("GET", "/containers/create", Route(RouteKind.CONTAINER, "create", "")),
    ("POST", "/exec/e1/start", Route(RouteKind.EXEC, "e1", "start")),
    ("GET", "/exec/e1/json", Route(RouteKind.EXEC, "e1", "json")),
    ("POST", "/exec/e1/resize", Route(RouteKind.EXEC, "e1", "resize")),
    ("GET", "/volumes/data", Route(RouteKind.VOLUME, "data", "")),
    ("DELETE", "/volumes/data", Route(RouteKind.VOLUME, "data", "")),
    ("GET", "/volumes/create", Route(RouteKind.VOLUME, "create", "")),
    ("GET", "/networks/net1", Route(RouteKind.NETWORK, "net1", "")),
    ("DELETE", "/networks/net1", Route(RouteKind.NETWORK, "net1", "")),
    ("POST", "/networks/net1/connect", Route(RouteKind.NETWORK, "net1", "connect")),
    ("POST", "/networks/net1/disconnect", Route(RouteKind.NETWORK, "net1", "disconnect")),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes(OBJECTS))
def test_object_endpoints(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


def test_object_id_is_percent_decoded() -> None:
    assert route_of("GET", "/containers/ab%63/json") == Route(RouteKind.CONTAINER, "abc", "json")
    assert route_of("GET", "/volumes/my%2Dvol") == Route(RouteKind.VOLUME, "my-vol", "")


GATED = [
    ("GET", "/plugins", "plugins"),
    ("POST", "/plugins/pull", "plugins"),
    ("POST", "/swarm/init", "swarm"),
    ("GET", "/swarm", "swarm"),
    ("GET", "/nodes", "swarm"),
    ("POST", "/services/create", "swarm"),
    ("GET", "/tasks", "swarm"),
    ("GET", "/secrets", "swarm"),
    ("POST", "/configs/create", "swarm"),
    ("POST", "/images/load", "image_load"),
]


@pytest.mark.parametrize(("method", "path", "group"), [(m, prefix + p, g) for prefix in PREFIXES for m, p, g in GATED])
def test_gated_groups(method: str, path: str, group: str) -> None:
    assert route_of(method, path) == Route(RouteKind.GATED, group=group)


def test_gated_groups_are_the_configurable_ones() -> None:
    assert {route_of(m, p).group for m, p, _ in GATED} == set(ENDPOINT_GROUPS)


def test_images_load_needs_post() -> None:
    assert route_of("GET", "/images/load") == UNKNOWN


ADMIN = [
    ("POST", "/build/prune"),
    ("POST", "/images/prune"),
    ("GET", "/images/search"),
    ("GET", "/system/df"),
]


@pytest.mark.parametrize(("method", "path", "route"),
                         all_prefixes([(m, p, Route(RouteKind.ADMIN_ONLY)) for m, p in ADMIN]))
def test_admin_only(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


ODD = [
    "",
    "/",
    "//",
    "containers/json",
    "/containers/../images/json",
    "/images/../containers/abc/json",
    "/containers/abc/../json",
    "/containers/./json",
    "/containers/abc/./json",
    "/./containers/json",
    "/../containers/json",
    "/containers//json",
    "//containers/json",
    "/containers/abc//json",
    "/containers/%2e%2e/json",
    "/containers/%2E%2E/json",
    "/containers/%2e/json",
    "/containers/.%2e/json",
    "/%2e%2e/containers/json",
    "/images/%2e%2e%2fcontainers/json",
    "/containers/a%2Fb/json",
    "/containers/a%2fb/json",
    "/containers/%2Fabc/json",
    "/volumes/a%2F..%2Fb",
    "/containers/%252e%252e/json",
    "/containers/%/json",
    "/containers/%zz/json",
    "/containers/a%00b/json",
    "/containers/a%20b/json",
    "/containers/a b/json",
    "/containers/a\tb/json",
    "/containers/abc/json\x00",
    "/containers/\u00e9t\u00e9/json",
    "/v1.41%2Fcontainers/json",
    "/v1.41/",
    "/v1.41//containers/json",
    "/v1.41/../containers/json",
    "/v1.41/v1.41/containers/json",
    "/nope",
    "/containersx/json",
    "/_PING",
    "/.",
    "/..",
    "/%2e",
]


@pytest.mark.parametrize("path", ODD)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD", "PUT"])
def test_odd_paths_are_unknown(method: str, path: str) -> None:
    assert route_of(method, path) == UNKNOWN


@pytest.mark.parametrize("path", [
    "/containers/json%0A",
    "/containers/abc%0A/json",
    "/images/busybox%0A/json",
    "/exec/e1%0a/start",
])
def test_trailing_newline_in_a_segment_is_unknown(path: str) -> None:
    # "$" in a Python regex also matches just before a final newline.
    assert route_of("GET", path) == UNKNOWN
    assert route_of("POST", path) == UNKNOWN


def test_version_prefix_needs_a_following_path() -> None:
    assert route_of("GET", "/v1.41") == UNKNOWN
    assert route_of("GET", "/v1/containers/json") == UNKNOWN
    assert route_of("GET", "/v1.41.1/containers/json") == UNKNOWN
    assert route_of("GET", "/V1.41/containers/json") == UNKNOWN


def test_only_one_version_prefix_is_stripped() -> None:
    assert route_of("GET", "/v1.41/v1.41/_ping") == UNKNOWN


SEGMENT = st.one_of(
    st.sampled_from(["containers", "exec", "volumes", "networks", "images", "json", "start", "create", "prune",
                     "_ping", "system", "df", "build", "events", "v1.41", ".", "..", "", "%2e", "%2F", "%2f", "%",
                     "%25", "a%2Fb", "%0A", "abc", "load", "distribution", "history"]),
    st.text(max_size=6),
    st.text(alphabet="abc./%2Ff", max_size=6),
)
PATHS = st.one_of(
    st.text(max_size=30),
    st.builds(lambda prefix, segments, slash: prefix + "/" + "/".join(segments) + slash,
              st.sampled_from(["", "/v1.41", "/v1.47", "v1.41"]), st.lists(SEGMENT, max_size=5),
              st.sampled_from(["", "/"])),
)
METHODS = st.one_of(st.sampled_from(["GET", "POST", "DELETE", "HEAD", "PUT"]), st.text(max_size=7))


@settings(max_examples=1000, deadline=None)
@given(method=METHODS, path=PATHS)
def test_classify_never_raises_and_object_ids_are_single_segments(method: str, path: str) -> None:
    route = route_of(method, path)
    assert isinstance(route, Route)
    assert type(route.kind) is RouteKind
    if route.kind is RouteKind.GATED:
        assert route.group in ENDPOINT_GROUPS
    if route.kind in OBJECT_KINDS:
        assert route.object_id
        assert "/" not in route.object_id
        assert route.object_id not in (".", "..")
        assert all(part not in ("", ".", "..") for part in route.action.split("/") if route.action)
    else:
        assert route.object_id is None


@pytest.mark.parametrize(("path", "version"), [("/v1.41/containers/json", (1, 41)), ("/v1.12/info", (1, 12)),
                                               ("/containers/json", None), ("/v999.0/_ping", (999, 0))])
def test_the_api_version_is_read_from_the_path(path: str, version: tuple[int, int] | None) -> None:
    assert classify("GET", path).version == version


def test_every_route_kind_is_reached_by_some_path() -> None:
    """The tables above classify into every kind, so a kind the gate handles is one that requests can have."""
    paths = [*OPEN, *CLOSED_VARIANTS, *ADMIN, *[(m, p) for m, p, _ in LIST_KINDS + OBJECTS + GATED + IMAGES + DS01]]
    reached = {route_of(method, path).kind for method, path in [*paths, ("POST", "/images/create")]}
    assert reached == set(RouteKind)
