"""The gate and the users' networks: the list and the built-in networks show only the caller's, the caller's own
network is made on first use and again at a start, ds01- names and IPv6 are not the users', published ports are
capped per user. The same in-memory engine and real allocator as test_gate.py."""

from __future__ import annotations

from tests.unit.proxy_harness import container
from tests.unit.test_gate import (
    ADMIN,
    ALICE,
    APP_ID,
    BOB,
    IMAGE,
    Reason,
    Reply,
    World,
    denied,
    forwarded,
    refused,
    sent_body,
    with_alices_objects,
    world,
)

__all__ = ["world"]  # the fixture, shared with test_gate.py


def test_a_network_list_shows_the_callers_own_and_the_built_in_ones_only(world: World) -> None:
    with_alices_objects(world)
    world.upstream.networks.update({
        "bridge": {"Name": "bridge", "Id": "b" * 64, "Labels": {}},
        "proj_default": {"Name": "proj_default", "Id": "p" * 64, "Labels": {"ds01.user": "bob"}},
        "ds01-bob": {"Name": "ds01-bob", "Id": "q" * 64, "Labels": {"ds01.user": "bob"}}})
    reply = world.decide(ALICE, "GET", "/v1.41/networks")
    assert isinstance(reply, Reply) and sorted(n["Name"] for n in reply.body) == ["bridge", "mine"]
    assert forwarded(world.decide(ADMIN, "GET", "/v1.41/networks")).target == "/v1.41/networks"
    assert denied(world.decide(ALICE, "GET", "/v1.41/networks/proj_default")) == (Reason.NOT_FOUND, 404)


def test_a_built_in_network_is_shown_with_the_callers_containers_only(world: World) -> None:
    with_alices_objects(world)
    world.add(container("bobs", BOB))
    bobs_id = next(i for i, c in world.upstream.containers.items() if c["Name"] == "/bobs")
    world.upstream.networks["bridge"] = {"Name": "bridge", "Id": "b" * 64, "Labels": {},
                                         "Containers": {APP_ID: {"Name": "app"}, bobs_id: {"Name": "bobs"}}}
    reply = world.decide(ALICE, "GET", "/v1.41/networks/bridge")
    assert isinstance(reply, Reply) and list(reply.body["Containers"]) == [APP_ID]
    assert denied(world.decide(ALICE, "DELETE", "/v1.41/networks/bridge")) == (Reason.NOT_FOUND, 404)


def test_a_create_makes_the_callers_network_once_and_keeps_it(world: World) -> None:
    outcome = world.decide(ALICE, "POST", "/v1.41/containers/create?name=job", {"Image": IMAGE})
    assert sent_body(outcome)["HostConfig"]["NetworkMode"] == "ds01-alice"
    forwarded(outcome).close()
    made = world.upstream.networks["ds01-alice"]
    assert made["Driver"] == "bridge" and made["Labels"] == {"ds01.user": "alice", "ds01.uid": "2001"}
    forwarded(world.decide(ALICE, "POST", "/v1.41/containers/create?name=job2", {"Image": IMAGE})).close()
    assert [call for call in world.upstream.calls if call == ("POST", "/networks/create")] == [
        ("POST", "/networks/create")]


def test_a_callers_network_someone_else_made_is_not_joined(world: World) -> None:
    world.upstream.networks["ds01-alice"] = {"Name": "ds01-alice", "Id": "x" * 64, "Labels": {"ds01.user": "bob"}}
    assert refused(world, ALICE, "POST", "/v1.41/containers/create?name=job", {"Image": IMAGE}) is Reason.NOT_OWNER
    assert not world.gate.locks.locked("alice") and world.reserved() == []


def test_users_may_not_name_networks_ds01_nor_ask_for_ipv6(world: World) -> None:
    assert refused(world, ALICE, "POST", "/v1.41/networks/create", {"Name": "ds01-bob"}) is Reason.NAME_TAKEN
    assert denied(world.decide(ALICE, "POST", "/v1.41/networks/create", {"Name": "v6", "EnableIPv6": True})) == (
        Reason.NETWORK_DRIVER, 403)
    assert "ds01-bob" not in world.upstream.networks and "v6" not in world.upstream.networks


def test_published_ports_are_capped_per_user_across_containers(world: World) -> None:
    ports = {"PortBindings": {"80/tcp": [{"HostPort": ""}, {"HostPort": ""}]}}
    world.add(container("web", ALICE, host_config={"PortBindings": {"8888/tcp": [{"HostPort": "8888"}] * 7}}))
    assert refused(world, ALICE, "POST", "/v1.41/containers/create?name=more",
                   {"Image": IMAGE, "HostConfig": ports}) is Reason.MAX_PUBLISHED_PORTS
    assert not world.gate.locks.locked("alice")
    one = {"PortBindings": {"80/tcp": [{"HostPort": ""}]}}
    created = sent_body(world.decide(ALICE, "POST", "/v1.41/containers/create?name=fits",
                                     {"Image": IMAGE, "HostConfig": one}))
    assert created["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}


def test_a_start_makes_the_callers_network_again_if_it_was_removed(world: World) -> None:
    world.add(container("app2", ALICE, host_config={"NetworkMode": "ds01-alice"}))
    outcome = world.decide(ALICE, "POST", "/v1.41/containers/app2/start")
    forwarded(outcome).close()
    assert world.upstream.networks["ds01-alice"]["Labels"] == {"ds01.user": "alice", "ds01.uid": "2001"}
    assert not world.gate.locks.locked("alice")
