"""Whose a container is, over the in-memory engine of test_gate.py: the ds01.user label and the owner's cgroup
parent together. A container whose label says alice but which runs under bob's cgroup parent (a step of bob's
build on an image that carries alice's labels) is nobody's: alice can neither see, list, count, exec into,
copy from nor commit it."""

from __future__ import annotations

import pytest

from ds01.errors import Denied
from ds01.proxy.outcomes import Reply
from tests.unit.proxy_harness import container
from tests.unit.test_gate import ALICE, BOB, Reason, World, denied, forwarded, world

__all__ = ["world"]  # the fixture, shared with test_gate.py


def bobs_build_step(world: World) -> str:
    """A RUN step of bob's build, on a base image labelled as alice's: the engine copied the labels."""
    step = container("bob-build-step", ALICE, host_config={"CgroupParent": "/ds01/bob"})
    world.add(step)
    return str(step["Id"])


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/v1.41/containers/{}/json"), ("POST", "/v1.41/containers/{}/exec"),
    ("GET", "/v1.41/containers/{}/archive?path=/root"), ("POST", "/v1.41/containers/{}/stop"),
    ("DELETE", "/v1.41/containers/{}"), ("POST", "/v1.41/commit?container={}&repo=alice/stolen"),
])
def test_a_container_whose_cgroup_parent_belies_its_label_is_nobodys(world: World, method: str, target: str) -> None:
    step = bobs_build_step(world)
    try:
        outcome = world.decide(ALICE, method, target.format(step), {"Cmd": ["cat", "/root/.ssh/id_rsa"]}
                               if target.endswith("/exec") else None)
    except Denied as denial:
        assert denial.reason is Reason.NOT_FOUND
    else:
        assert denied(outcome) == (Reason.NOT_FOUND, 404)


def test_lists_and_counts_leave_it_out(world: World) -> None:
    bobs_build_step(world)
    mine = container("mine", ALICE)
    world.add(mine)
    listed = world.decide(ALICE, "GET", "/v1.41/containers/json?all=1")
    assert isinstance(listed, Reply) and [c["Id"] for c in listed.body] == [mine["Id"]]  # type: ignore[union-attr]
    assert isinstance(world.decide(BOB, "GET", "/v1.41/containers/json?all=1"), Reply)
    assert world.gate._creates._count_containers("alice") == 1  # bob's builds do not fill alice's max_containers


def test_the_owners_own_containers_stay_theirs(world: World) -> None:
    mine = container("mine", ALICE)
    world.add(mine)
    forwarded(world.decide(ALICE, "GET", f"/v1.41/containers/{mine['Id']}/json")).close()
    assert denied(world.decide(BOB, "GET", f"/v1.41/containers/{mine['Id']}/json")) == (Reason.NOT_FOUND, 404)
    assert world.gate._owners.of_inspect(mine) == "alice"
    assert world.gate._owners.of_inspect(container("unlabelled", None)) is None
