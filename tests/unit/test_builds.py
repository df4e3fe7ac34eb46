"""Classic builds through the proxy, over the in-memory engine of test_gate.py: every query parameter has a rule,
the Dockerfile is read from the spooled context so that no build reads another user's image, and the build is
recorded before it is forwarded."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from ds01.errors import Denied
from ds01.proxy import builds
from ds01.proxy.builds import BuildSettings, plan_query
from ds01.proxy.imagestore import PendingImage
from tests.unit.test_gate import ADMIN, ALICE, BOB, IMAGE, Reason, World, forwarded, world

__all__ = ["world"]  # the fixture, shared with test_gate.py

SETTINGS = BuildSettings("ds01-alice.slice", "ds01-alice", "linux/amd64")
ALICES = "sha256:" + "a" * 64


def query(**params: str | list[str]) -> dict[str, list[str]]:
    return {name: value if isinstance(value, list) else [value] for name, value in params.items()}


def planned(**params: str | list[str]) -> dict[str, Any]:
    return plan_query(ALICE, query(**params), SETTINGS, lambda name: "alice" if name == "lab" else "bob")


def test_what_a_build_is_forced_to() -> None:
    plan = planned(t="alice/tools", labels=json.dumps({"ds01.user": "bob", "team": "vision"}))
    assert plan["t"] == ["alice/tools:latest"] and plan["networkmode"] == "ds01-alice"
    assert plan["cgroupparent"] == "ds01-alice.slice"
    assert (plan["memory"], plan["memswap"]) == (ALICE.limits.memory_bytes, ALICE.limits.memory_bytes)
    assert plan["shmsize"] == ALICE.limits.shm_size_bytes
    assert plan["cpuquota"] == int(ALICE.limits.cpus * 100_000) and plan["cpuperiod"] == 100_000
    assert json.loads(plan["labels"]) == {"team": "vision", "ds01.user": "alice", "ds01.uid": "2001"}
    assert planned(t="alice/tools", networkmode="none")["networkmode"] == "none"
    assert planned(t="alice/tools", networkmode="lab")["networkmode"] == "lab"
    assert planned(t="alice/tools", platform="linux/amd64")["platform"] == "linux/amd64"


@pytest.mark.parametrize(("params", "reason"), [
    ({"t": "bob/x"}, Reason.IMAGE_NAMESPACE),
    ({"t": "tools"}, Reason.IMAGE_NAMESPACE),
    ({}, Reason.IMAGE_NAMESPACE),
    ({"t": "alice/x", "cgroupparent": "/"}, Reason.BAD_REQUEST),
    ({"t": "alice/x", "memory": "0"}, Reason.BAD_REQUEST),
    ({"t": "alice/x", "networkmode": "host"}, Reason.NOT_OWNER),
    ({"t": "alice/x", "networkmode": "container:abc"}, Reason.NOT_OWNER),
    ({"t": "alice/x", "networkmode": "bobs-net"}, Reason.NOT_OWNER),
    ({"t": "alice/x", "buildargs": json.dumps({"HTTP_PROXY": "http://evil:3128"})}, Reason.BUILD_ARG),
    ({"t": "alice/x", "buildargs": json.dumps({"no_proxy": "x"})}, Reason.BUILD_ARG),
    ({"t": "alice/x", "buildargs": "[1]"}, Reason.BAD_REQUEST),
    ({"t": "alice/x", "version": "2"}, Reason.BUILDKIT),
    ({"t": "alice/x", "platform": "linux/arm64"}, Reason.BAD_REQUEST),
])
def test_what_a_build_may_not_ask_for(params: dict[str, str], reason: Reason) -> None:
    with pytest.raises(Denied) as info:
        planned(**params)
    assert info.value.reason is reason


@pytest.mark.parametrize("name", ["remote", "extrahosts", "outputs", "session", "buildid", "squash", "isolation",
                                  "securityopt", "ulimits", "cpusetcpus", "nosuchparameter"])
def test_any_other_parameter_is_refused_by_name(world: World, name: str) -> None:
    with pytest.raises(Denied, match=f"build parameter.*{name}") as info:
        world.decide(ALICE, "POST", f"/v1.41/build?t=alice/x&{name}=1")
    assert info.value.reason is Reason.BAD_REQUEST


def context(dockerfile: str, name: str = "Dockerfile") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = dockerfile.encode()
        member = tarfile.TarInfo(name)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


def build(world: World, caller: Any, dockerfile: str, **params: str) -> Any:
    query = urlencode({"t": f"{caller.user}/x", **params}, doseq=True)
    request = world.request(caller, "POST", f"/v1.41/build?{query}")
    raw = context(dockerfile)
    request = type(request)(request.session, request.method, request.path, request.query, request.route,
                            request.head, lambda: raw, lambda: io.BytesIO(raw))
    return world.gate.decide(request)


def alices_image(world: World) -> None:
    world.upstream.images["alice/tools"] = {"Id": ALICES, "RepoTags": ["alice/tools:latest"], "Config": {}}
    key = world.gate._images.store.begin(PendingImage("alice", 2001, "commit", ("alice/tools:latest",), "t"))
    world.gate._images.store.settle(key, [ALICES])


@pytest.mark.parametrize("dockerfile", [
    "FROM alice/tools\n",
    f"FROM {IMAGE}\nCOPY --from=alice/tools /x /x\n",
    "ARG BASE=alice/tools\nFROM $BASE\n",
])
def test_a_build_reading_another_users_image_is_refused_as_for_a_missing_one(world: World, dockerfile: str) -> None:
    alices_image(world)
    with pytest.raises(Denied, match="No such image: alice/tools") as info:
        build(world, BOB, dockerfile)
    assert info.value.reason is Reason.NOT_FOUND
    assert world.gate._images.store._pending == {}  # nothing recorded, nothing forwarded


def test_an_onbuild_trigger_of_a_base_counts_as_the_dockerfile(world: World) -> None:
    alices_image(world)
    world.upstream.images["shared/base"] = {"Id": "sha256:" + "b" * 64, "RepoTags": ["shared/base:latest"],
                                            "Config": {"OnBuild": ["COPY --from=alice/tools /secret /secret"]}}
    with pytest.raises(Denied, match="No such image: alice/tools"):
        build(world, BOB, "FROM shared/base\n")


def test_a_dockerfile_that_cannot_be_read_with_certainty_is_refused(world: World) -> None:
    with pytest.raises(Denied) as info:
        build(world, ALICE, "ARG X\nFROM ${X:?}\n")
    assert info.value.reason is Reason.DOCKERFILE


def test_a_build_is_recorded_before_it_is_forwarded_and_settled_after(world: World) -> None:
    outcome = forwarded(build(world, ALICE, f"FROM {IMAGE}\nRUN true\n", buildargs=json.dumps({"V": "1"})))
    sent = parse_qs(urlsplit(outcome.target).query)
    assert sent["t"] == ["alice/x:latest"] and sent["cgroupparent"] == [world.gate._cgroups.name("alice")]
    assert sent["nocache"] == ["1"]  # nothing of alice's to reuse: the engine's cache is everyone's
    store = world.gate._images.store
    assert [p.tags for p in store._pending.values()] == [("alice/x:latest",)]
    assert outcome.body_file is not None and outcome.body_file.read() == context(f"FROM {IMAGE}\nRUN true\n")
    world.upstream.images["alice/x:latest"] = {"Id": ALICES, "RepoTags": ["alice/x:latest"], "Config": {}}
    outcome.close()
    assert store._pending == {} and store.owner(ALICES) is not None


def test_a_build_reuses_only_the_callers_own_images_as_cache(world: World) -> None:
    alices_image(world)
    outcome = forwarded(build(world, ALICE, f"FROM {IMAGE}\n"))
    assert json.loads(parse_qs(urlsplit(outcome.target).query)["cachefrom"][0]) == [ALICES]
    outcome.close()
    with pytest.raises(Denied, match="No such image: alice/tools"):
        build(world, BOB, f"FROM {IMAGE}\n", cachefrom=json.dumps(["alice/tools"]))


def test_the_host_platform_in_dockers_words() -> None:
    assert builds.host_platform({"OSType": "linux", "Architecture": "x86_64"}) == "linux/amd64"
    assert builds.host_platform({"OSType": "linux", "Architecture": "aarch64"}) == "linux/arm64"


def archive(**members: object) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in members.items():
            data = json.dumps(content).encode()
            member = tarfile.TarInfo(name.replace("_", "."))
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


def load(world: World, caller: Any, raw: bytes) -> Any:
    request = world.request(caller, "POST", "/v1.41/images/load?quiet=1")
    request = type(request)(request.session, request.method, request.path, request.query, request.route,
                            request.head, lambda: raw, lambda: io.BytesIO(raw))
    return world.gate.decide(request)


def test_a_load_an_admin_allowed_names_images_only_in_the_callers_namespace(world: World) -> None:
    config = world.sessions.config
    world.sessions.config = dataclasses.replace(
        config, security=dataclasses.replace(config.security, allowed_endpoints=frozenset({"image_load"})))
    for members, reason in (({"manifest_json": [{"RepoTags": ["bob/x:latest"]}]}, Reason.IMAGE_NAMESPACE),
                            ({"manifest_json": [{"RepoTags": ["busybox:latest"]}]}, Reason.IMAGE_NAMESPACE),
                            ({"repositories": {"bob/y": {"latest": "0" * 64}}}, Reason.IMAGE_NAMESPACE),
                            ({"manifest_json": [{"RepoTags": None}]}, Reason.IMAGE_NAMESPACE),
                            ({"manifest_json": {"not": "a list"}}, Reason.BAD_REQUEST)):
        with pytest.raises(Denied) as info:
            load(world, ALICE, archive(**members))
        assert info.value.reason is reason, members
    assert world.gate._images.store._pending == {}
    outcome = forwarded(load(world, ALICE, archive(manifest_json=[{"RepoTags": ["alice/x:v1"]}])))
    assert [p.tags for p in world.gate._images.store._pending.values()] == [("alice/x:v1",)]
    outcome.close()
    assert world.gate._images.store._pending == {}
    forwarded(load(world, ADMIN, archive(manifest_json=[{"RepoTags": ["busybox:latest"]}]))).close()


def test_a_cachefrom_that_is_not_a_json_list_is_refused(world: World) -> None:
    with pytest.raises(Denied, match="cachefrom must be a JSON list") as info:
        build(world, ALICE, f"FROM {IMAGE}\n", cachefrom="alice/secret")
    assert info.value.reason is Reason.BAD_REQUEST


def test_the_parameters_the_engine_reads_every_value_of_may_repeat_and_each_is_checked(world: World) -> None:
    outcome = forwarded(build(world, ALICE, f"FROM {IMAGE}\n", t=["alice/x", "alice/y:v2"]))  # type: ignore[arg-type]
    assert parse_qs(urlsplit(outcome.target).query)["t"] == ["alice/x:latest", "alice/y:v2"]
    outcome.close()
    with pytest.raises(Denied) as info:
        build(world, ALICE, f"FROM {IMAGE}\n", t=["alice/x", "bob/y"])  # type: ignore[arg-type]
    assert info.value.reason is Reason.IMAGE_NAMESPACE
    repeated = world.decide(ALICE, "GET", "/v1.41/containers/json?all=1&all=0")  # elsewhere a repeat is refused
    assert repeated.reason is Reason.BAD_REQUEST  # type: ignore[union-attr]
