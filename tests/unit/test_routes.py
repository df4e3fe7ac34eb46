"""ds01.proxy.routes.classify: the proxy's allow-list of Docker API endpoints (pure)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ds01.config import ENDPOINT_GROUPS
from ds01.proxy.routes import Route, classify

PREFIXES = ["", "/v1.41", "/v1.47", "/v1.24", "/v10.0"]
KINDS = {"open", "admin_only", "gated", "unknown", "events", "list_containers", "create_container",
         "prune_containers", "container", "exec", "list_volumes", "create_volume", "prune_volumes", "volume",
         "list_networks", "create_network", "prune_networks", "network"}
UNKNOWN = Route("unknown")


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
    ("GET", "/images/json"),
    ("GET", "/images/busybox/json"),
    ("GET", "/images/busybox:latest/json"),
    ("GET", "/images/library/ubuntu/json"),
    ("GET", "/images/registry.example.org:5000/team/app:1.2/json"),
    ("GET", "/images/sha256:0123abcd/history"),
    ("GET", "/images/ubuntu/history"),
    ("GET", "/distribution/busybox/json"),
    ("GET", "/distribution/docker.io/library/busybox:latest/json"),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes([(m, p, Route("open")) for m, p in OPEN]))
def test_open_endpoints(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


def test_image_create_is_a_pull_the_gate_checks() -> None:
    assert route_of("POST", "/v1.41/images/create") == Route("pull")


CLOSED_VARIANTS = [
    ("POST", "/_ping"), ("HEAD", "/version"), ("HEAD", "/info"), ("POST", "/version"), ("DELETE", "/info"),
    ("POST", "/images/json"), ("GET", "/images/create"), ("GET", "/images/busybox"), ("POST", "/images/busybox/json"),
    ("GET", "/images/search"), ("GET", "/images/get"), ("POST", "/images/busybox/push"),
    ("POST", "/images/busybox/tag"), ("POST", "/images/prune"), ("GET", "/images"), ("DELETE", "/images"),
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
    ("GET", "/containers/json", Route("list_containers")),
    ("POST", "/containers/create", Route("create_container")),
    ("POST", "/containers/prune", Route("prune_containers")),
    ("GET", "/events", Route("events")),
    ("GET", "/volumes", Route("list_volumes")),
    ("POST", "/volumes/create", Route("create_volume")),
    ("POST", "/volumes/prune", Route("prune_volumes")),
    ("GET", "/networks", Route("list_networks")),
    ("POST", "/networks/create", Route("create_network")),
    ("POST", "/networks/prune", Route("prune_networks")),
    ("GET", "/containers/json/", Route("list_containers")),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes(LIST_KINDS))
def test_list_create_prune_and_events(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


OBJECTS = [
    ("GET", "/containers/abc/json", Route("container", "abc", "json")),
    ("POST", "/containers/abc/start", Route("container", "abc", "start")),
    ("POST", "/containers/abc/stop", Route("container", "abc", "stop")),
    ("POST", "/containers/my_app-1.2/exec", Route("container", "my_app-1.2", "exec")),
    ("POST", "/containers/abc/attach", Route("container", "abc", "attach")),
    ("GET", "/containers/abc/logs", Route("container", "abc", "logs")),
    ("POST", "/containers/abc/update", Route("container", "abc", "update")),
    ("PUT", "/containers/abc/archive", Route("container", "abc", "archive")),
    ("POST", "/containers/abc/resize", Route("container", "abc", "resize")),
    ("DELETE", "/containers/abc", Route("container", "abc", "")),
    ("GET", "/containers/abc/x/y", Route("container", "abc", "x/y")),
    ("POST", "/containers/json", Route("container", "json", "")),
    ("GET", "/containers/create", Route("container", "create", "")),
    ("POST", "/exec/e1/start", Route("exec", "e1", "start")),
    ("GET", "/exec/e1/json", Route("exec", "e1", "json")),
    ("POST", "/exec/e1/resize", Route("exec", "e1", "resize")),
    ("GET", "/volumes/data", Route("volume", "data", "")),
    ("DELETE", "/volumes/data", Route("volume", "data", "")),
    ("GET", "/volumes/create", Route("volume", "create", "")),
    ("GET", "/networks/net1", Route("network", "net1", "")),
    ("DELETE", "/networks/net1", Route("network", "net1", "")),
    ("POST", "/networks/net1/connect", Route("network", "net1", "connect")),
    ("POST", "/networks/net1/disconnect", Route("network", "net1", "disconnect")),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes(OBJECTS))
def test_object_endpoints(method: str, path: str, route: Route) -> None:
    assert route_of(method, path) == route


def test_object_id_is_percent_decoded() -> None:
    assert route_of("GET", "/containers/ab%63/json") == Route("container", "abc", "json")
    assert route_of("GET", "/volumes/my%2Dvol") == Route("volume", "my-vol", "")


GATED = [
    ("POST", "/build", "build"),
    ("POST", "/build/prune", "build"),
    ("POST", "/session", "session"),
    ("POST", "/grpc", "session"),
    ("GET", "/plugins", "plugins"),
    ("POST", "/plugins/pull", "plugins"),
    ("POST", "/swarm/init", "swarm"),
    ("GET", "/swarm", "swarm"),
    ("GET", "/nodes", "swarm"),
    ("POST", "/services/create", "swarm"),
    ("GET", "/tasks", "swarm"),
    ("GET", "/secrets", "swarm"),
    ("POST", "/configs/create", "swarm"),
    ("POST", "/commit", "commit"),
    ("POST", "/images/load", "image_load"),
]


@pytest.mark.parametrize(("method", "path", "group"), [(m, prefix + p, g) for prefix in PREFIXES for m, p, g in GATED])
def test_gated_groups(method: str, path: str, group: str) -> None:
    assert route_of(method, path) == Route("gated", group=group)


def test_gated_groups_are_the_configurable_ones() -> None:
    assert {route_of(m, p).group for m, p, _ in GATED} == set(ENDPOINT_GROUPS)


def test_images_load_needs_post() -> None:
    assert route_of("GET", "/images/load") == UNKNOWN


ADMIN = [
    ("DELETE", "/images/busybox"),
    ("DELETE", "/images/busybox:latest"),
    ("DELETE", "/images/library/ubuntu"),
    ("DELETE", "/images/sha256:abcdef"),
    ("GET", "/system/df"),
]


@pytest.mark.parametrize(("method", "path", "route"), all_prefixes([(m, p, Route("admin_only")) for m, p in ADMIN]))
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
    assert route.kind in KINDS
    if route.kind == "gated":
        assert route.group in ENDPOINT_GROUPS
    if route.kind in ("container", "exec", "volume", "network"):
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
