"""The gate without an engine: its own calls answered by an in-memory engine, a real allocator on tmp_path, pins
without mounts. Every route kind; someone else's objects answered as missing ones, untouched; the per-user lock
given back on every way out of a create or an exec create; and the denials the gate, or the server around it, makes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from ds01.config import BUILTIN_DEFAULTS, AllocationSettings, Config, SecuritySettings
from ds01.errors import Denied
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest, Slot
from ds01.names import DRY_RUN_HEADER
from ds01.proxy.cgroups import CgroupParents
from ds01.proxy.gate import Gate
from ds01.proxy.http import Head
from ds01.proxy.imagestore import ImageStore
from ds01.proxy.outcomes import Deny, Forward, Outcome, Reply, Request
from ds01.proxy.routes import RouteKind, classify
from ds01.proxy.runas import Caller
from ds01.proxy.session import Session
from ds01.proxy.userlocks import UserLocks
from ds01.reasons import Reason
from tests.unit.proxy_harness import FakePins, FakeSessions, FakeUpstream, container

pytestmark = pytest.mark.usefixtures("event_log")

LIMITS = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(2), "max_gpus_per_container": 2, "max_containers": 2,
                                          "max_execs": 2})
ALICE = Caller(uid=2001, user="alice", home="", is_admin=False, limits=LIMITS, gid=2001, gids=frozenset({2001}),
               login="alice")
BOB = dataclasses.replace(ALICE, uid=2002, user="bob", gid=2002, gids=frozenset({2002}), login="bob")
ADMIN = dataclasses.replace(ALICE, uid=2003, user="opsadmin", gid=2003, gids=frozenset({2003}), login="opsadmin",
                            is_admin=True)
SLOTS = [Slot(f"GPU-{n}", f"GPU-{n}", n, None, Fraction(1), 0, 0) for n in range(3)]
IMAGE = "ds01-test/busybox:latest"
ONE_GPU = {"DeviceRequests": [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]}
OWN = urlencode({"filters": json.dumps({"label": {"ds01.user=alice": True}})})  # the filter added for alice


@dataclass
class World:
    gate: Gate
    upstream: FakeUpstream
    allocator: Allocator
    pins: FakePins
    sessions: FakeSessions

    def request(self, caller: Caller, method: str, target: str, body: dict[str, Any] | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> Request:
        path, _, query = target.partition("?")
        raw = b"" if body is None else json.dumps(body).encode()
        return Request(self.sessions.by_uid[caller.uid], method, path, query, classify(method, path), Head(headers),
                       lambda: raw, lambda: io.BytesIO(raw))

    def decide(self, caller: Caller, method: str, target: str, body: dict[str, Any] | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> Outcome:
        return self.gate.decide(self.request(caller, method, target, body, headers))

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        self.upstream.containers[record["Id"]] = record
        return record

    def reserved(self) -> list[tuple[str, str | None]]:
        """What the allocator holds: (user, bound container) of each allocation."""
        return [(allocation.user, allocation.container) for allocation in self.allocator.allocations()]


@pytest.fixture
def world(tmp_path: Path) -> World:
    config = Config(source=tmp_path / "resource-limits.yaml", defaults=LIMITS, default_group="default", groups=(),
                    users={}, admin_users=frozenset(), admin_groups=frozenset(), exemptions=(),
                    allocation=AllocationSettings(lock_timeout_seconds=0), ldap=None,
                    security=SecuritySettings(data_dirs=(str(tmp_path),), require_nosuid_mounts=False))
    upstream = FakeUpstream()
    upstream.images[IMAGE] = {"RepoTags": [IMAGE],
                              "Config": {"Labels": None, "Env": ["PATH=/bin"], "WorkingDir": "", "Volumes": None}}
    allocator = Allocator(tmp_path / "state", config.allocation)
    pins = FakePins()
    sessions = FakeSessions(config, [ALICE, BOB, ADMIN])
    (tmp_path / "cgroup").mkdir()
    gate = Gate(sessions, upstream, allocator, slots=lambda: SLOTS,
                cgroups=CgroupParents("cgroupfs", "2", root=tmp_path / "cgroup"), engine_sockets=frozenset(),
                host_cpus=8.0, pins=pins, spool_dir=tmp_path, image_store=ImageStore(tmp_path / "state"),
                platform="linux/amd64",
                api_versions=((1, 40), (1, 47)),
                clock=lambda: datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    return World(gate, upstream, allocator, pins, sessions)


def denied(outcome: Outcome) -> tuple[Reason, int]:
    assert isinstance(outcome, Deny), outcome
    return outcome.reason, outcome.status


def forwarded(outcome: Outcome) -> Forward:
    assert isinstance(outcome, Forward), outcome
    return outcome


def refused(world: World, caller: Caller, method: str, target: str, body: dict[str, Any] | None = None,
            headers: tuple[tuple[str, str], ...] = ()) -> Reason:
    """The reason of a denial the gate raises (the server turns it into a Deny)."""
    with pytest.raises(Denied) as info:
        world.decide(caller, method, target, body, headers)
    return info.value.reason


def sent_body(outcome: Outcome) -> dict[str, Any]:
    body = forwarded(outcome).body
    assert body is not None
    return dict(json.loads(body))


# --- every route kind ---------------------------------------------------------------------------------------------

APP = container("app", ALICE)
APP_ID = APP["Id"]
EXEC_ID = "e" * 64
# kind -> (method, target, body, what alice gets: a Reason denied, a target forwarded, or a status replied)
BY_KIND: dict[RouteKind, tuple[str, str, dict[str, Any] | None, Reason | str | int]] = {
    RouteKind.OPEN: ("GET", "/v1.41/info", None, "/v1.41/info"),
    RouteKind.ADMIN_ONLY: ("POST", "/v1.41/images/prune", None, Reason.ADMIN_ONLY),
    RouteKind.GATED: ("GET", "/v1.41/plugins", None, Reason.ENDPOINT_DISABLED),
    RouteKind.UNKNOWN: ("GET", "/v1.41/nope", None, Reason.UNKNOWN_ENDPOINT),
    RouteKind.PULL: ("POST", "/v1.41/images/create?fromImage=busybox&tag=1", None,
                     "/v1.41/images/create?fromImage=busybox&tag=1"),
    RouteKind.EVENTS: ("GET", "/v1.41/events", None, f"/v1.41/events?{OWN}"),
    RouteKind.LIST_CONTAINERS: ("GET", "/v1.41/containers/json", None, 200),
    RouteKind.CREATE_CONTAINER: ("POST", "/v1.41/containers/create?name=job", {"Image": IMAGE},
                                 "/v1.41/containers/create?name=job"),
    RouteKind.PRUNE_CONTAINERS: ("POST", "/v1.41/containers/prune", None, f"/v1.41/containers/prune?{OWN}"),
    RouteKind.CONTAINER: ("GET", "/v1.41/containers/app/json", None, f"/v1.41/containers/{APP_ID}/json"),
    RouteKind.EXEC: ("GET", f"/v1.41/exec/{EXEC_ID}/json", None, f"/v1.41/exec/{EXEC_ID}/json"),
    RouteKind.LIST_VOLUMES: ("GET", "/v1.41/volumes", None, f"/v1.41/volumes?{OWN}"),
    RouteKind.CREATE_VOLUME: ("POST", "/v1.41/volumes/create", {"Name": "scratch"}, 201),
    RouteKind.PRUNE_VOLUMES: ("POST", "/v1.41/volumes/prune", None, f"/v1.41/volumes/prune?{OWN}"),
    RouteKind.VOLUME: ("GET", "/v1.41/volumes/data", None, "/v1.41/volumes/data"),
    RouteKind.LIST_NETWORKS: ("GET", "/v1.41/networks", None, 200),
    RouteKind.CREATE_NETWORK: ("POST", "/v1.41/networks/create", {"Name": "lab"}, "/v1.41/networks/create"),
    RouteKind.PRUNE_NETWORKS: ("POST", "/v1.41/networks/prune", None, f"/v1.41/networks/prune?{OWN}"),
    RouteKind.NETWORK: ("GET", "/v1.41/networks/mine", None, f"/v1.41/networks/{'n' * 64}"),
    RouteKind.LIST_IMAGES: ("GET", "/v1.41/images/json", None, 200),
    RouteKind.IMAGE: ("GET", f"/v1.41/images/{IMAGE}/json", None, f"/v1.41/images/{IMAGE}/json"),
    RouteKind.SAVE_IMAGES: ("GET", f"/v1.41/images/get?names={IMAGE}", None, f"/v1.41/images/get?names={IMAGE}"),
    RouteKind.COMMIT: ("POST", "/v1.41/commit?container=app&repo=alice/app", None,
                       "/v1.41/commit?container=app&repo=alice/app"),
    RouteKind.BUILD: ("POST", "/v1.41/build?t=alice/x&remote=https://example.org/x.tar", None, Reason.BAD_REQUEST),
    RouteKind.BUILDKIT: ("POST", "/v1.41/session", None, Reason.BUILDKIT),
    RouteKind.CAPACITY: ("GET", "/ds01/gpus", None, 200),
    RouteKind.QUEUE: ("GET", "/v1.41/ds01/queue?all=1", None, Reason.ADMIN_ONLY),
    RouteKind.JOBS: ("GET", "/v1.41/ds01/jobs?all=1", None, Reason.ADMIN_ONLY),
}


def with_alices_objects(world: World) -> None:
    world.add(json.loads(json.dumps(APP)))
    world.upstream.execs[EXEC_ID] = {"ID": EXEC_ID, "ContainerID": APP_ID}
    world.upstream.volumes["data"] = {"Name": "data", "Labels": {"ds01.user": "alice"}}
    world.upstream.networks["mine"] = {"Name": "mine", "Id": "n" * 64, "Labels": {"ds01.user": "alice"}}


def test_the_table_has_every_route_kind() -> None:
    assert set(BY_KIND) == set(RouteKind)


@pytest.mark.parametrize("kind", list(RouteKind))
def test_each_route_kind(world: World, kind: RouteKind) -> None:
    with_alices_objects(world)
    method, target, body, expected = BY_KIND[kind]
    request = world.request(ALICE, method, target, body)
    assert request.route.kind is kind
    try:
        outcome = world.gate.decide(request)
    except Denied as denial:  # as the server answers it
        outcome = Deny(denial.reason, denial.message)
    if isinstance(expected, Reason):
        assert isinstance(outcome, Deny) and outcome.reason is expected
    elif isinstance(expected, int):
        assert isinstance(outcome, Reply) and outcome.status == expected
    else:
        assert forwarded(outcome).target == expected
        forwarded(outcome).close()
    assert not world.gate.locks.locked("alice")


def test_what_the_kinds_forward_is_rewritten_for_the_caller(world: World) -> None:
    outcome = world.decide(ALICE, "POST", "/v1.41/containers/create?name=job", {"Image": IMAGE})
    created = sent_body(outcome)
    forwarded(outcome).close()
    assert created["User"] == "2001:2001" and created["Labels"]["ds01.user"] == "alice"
    assert created["Labels"]["ds01.created_at"] == "2025-01-02T03:04:05+00:00"
    network = sent_body(world.decide(ALICE, "POST", "/v1.41/networks/create", {"Name": "lab"}))
    assert network["Labels"] == {"ds01.user": "alice", "ds01.uid": "2001"}
    reply = world.decide(ALICE, "POST", "/v1.41/volumes/create", {"Name": "scratch"})
    assert isinstance(reply, Reply) and world.upstream.volumes["scratch"]["Labels"]["ds01.user"] == "alice"


def test_an_admin_passes_what_is_for_admins(world: World) -> None:
    assert forwarded(world.decide(ADMIN, "DELETE", "/v1.41/images/busybox")).target == "/v1.41/images/busybox"
    assert forwarded(world.decide(ADMIN, "GET", "/v1.41/containers/json")).target == "/v1.41/containers/json"
    assert denied(world.decide(ALICE, "POST", "/v1.41/images/create?fromSrc=-")) == (Reason.ADMIN_ONLY, 403)
    assert forwarded(world.decide(ADMIN, "POST", "/v1.41/images/create?fromSrc=-"))


def test_a_gated_group_opens_when_the_config_allows_it(world: World) -> None:
    config = world.sessions.config
    world.sessions.config = dataclasses.replace(
        config, security=dataclasses.replace(config.security, allowed_endpoints=frozenset({"plugins"})))
    assert forwarded(world.decide(ALICE, "GET", "/v1.41/plugins")).target == "/v1.41/plugins"
    assert denied(world.decide(ALICE, "GET", "/v1.41/swarm")) == (Reason.ENDPOINT_DISABLED, 403)


def test_api_versions_outside_the_range_served_are_refused(world: World) -> None:
    assert denied(world.decide(ALICE, "GET", "/v1.24/containers/json")) == (Reason.API_VERSION, 400)
    assert denied(world.decide(ALICE, "GET", "/v1.48/info")) == (Reason.API_VERSION, 400)
    assert forwarded(world.decide(ALICE, "GET", "/v1.47/info")).target == "/v1.47/info"


# --- someone else's objects look missing, and are not touched -----------------------------------------------------

BOBS_ACTIONS = [("GET", "/v1.41/containers/{}/json"), ("POST", "/v1.41/containers/{}/start"),
                ("POST", "/v1.41/containers/{}/stop"), ("DELETE", "/v1.41/containers/{}?force=1"),
                ("POST", "/v1.41/containers/{}/exec"), ("PUT", "/v1.41/containers/{}/archive?path=/"),
                ("POST", "/v1.41/containers/{}/update"), ("GET", "/v1.41/containers/{}/logs")]


@pytest.mark.parametrize(("method", "target"), BOBS_ACTIONS)
@pytest.mark.parametrize("by", ["name", "id"])
def test_someone_elses_container_answers_as_a_missing_one(world: World, method: str, target: str, by: str) -> None:
    secret = world.add(container("secret", BOB))
    before = json.dumps(world.upstream.containers, sort_keys=True)
    named = "secret" if by == "name" else secret["Id"]
    outcome = world.decide(ALICE, method, target.format(named), {"Cmd": ["id"]} if method != "GET" else None)
    missing = world.decide(ALICE, method, target.format("nothing" if by == "name" else "f" * 64))
    assert denied(outcome) == denied(missing) == (Reason.NOT_FOUND, 404)
    assert isinstance(outcome, Deny) and outcome.message == f"No such container: {named}"
    assert world.upstream.calls == [] and json.dumps(world.upstream.containers, sort_keys=True) == before
    assert not world.gate.locks.locked("bob") and world.reserved() == []


def test_someone_elses_exec_volume_and_network_answer_as_missing_ones(world: World) -> None:
    secret = world.add(container("secret", BOB))
    world.upstream.execs["b" * 64] = {"ID": "b" * 64, "ContainerID": secret["Id"]}
    world.upstream.volumes["bobs"] = {"Name": "bobs", "Labels": {"ds01.user": "bob"}}
    world.upstream.networks["lab"] = {"Name": "lab", "Id": "l" * 64, "Labels": {"ds01.user": "bob"}}
    for method, target in [("POST", f"/v1.41/exec/{'b' * 64}/start"), ("DELETE", "/v1.41/volumes/bobs"),
                           ("DELETE", "/v1.41/networks/lab")]:
        assert denied(world.decide(ALICE, method, target)) == (Reason.NOT_FOUND, 404)
    with_alices_objects(world)
    connect = world.decide(ALICE, "POST", "/v1.41/networks/mine/connect", {"Container": "secret"})
    assert isinstance(connect, Deny) and (connect.reason, connect.message) == (Reason.NOT_FOUND,
                                                                                "No such container: secret")
    assert world.upstream.calls == [] and "bobs" in world.upstream.volumes


def test_an_admin_acts_on_anyones_container_for_its_full_id(world: World) -> None:
    secret = world.add(container("secret", BOB))
    assert forwarded(world.decide(ADMIN, "POST", "/v1.41/containers/secret/stop?t=1")).target == \
        f"/v1.41/containers/{secret['Id']}/stop?t=1"


def test_an_engine_error_naming_someone_elses_container_says_nothing_of_it(world: World) -> None:
    secret = world.add(container("secret", BOB))
    request = world.request(ALICE, "POST", "/v1.41/containers/create?name=secret", {"Image": IMAGE})
    conflict = json.dumps({"message": f'Conflict. The name "/secret" is in use by {secret["Id"]}.'}).encode()
    assert secret["Id"] not in world.gate.error_answer(request, 409, conflict).decode()
    assert "not yours" in json.loads(world.gate.error_answer(request, 409, conflict))["message"]
    assert world.gate.error_answer(world.request(ADMIN, "POST", request.target), 409, conflict) == conflict


# --- the per-user lock, given back on every way out ------------------------------------------------------------


def test_a_create_holds_the_lock_until_the_engine_answers_then_binds_its_gpus(world: World) -> None:
    outcome = forwarded(world.decide(ALICE, "POST", "/v1.41/containers/create?name=job",
                                     {"Image": IMAGE, "HostConfig": ONE_GPU}))
    assert outcome.held is not None and world.gate.locks.locked("alice")
    assert world.reserved() == [("alice", None)]
    outcome.settle(201, json.dumps({"Id": "c" * 64}).encode())
    outcome.close()
    assert not world.gate.locks.locked("alice") and world.reserved() == [("alice", "c" * 64)]


def test_a_create_the_policy_refuses_takes_no_lock(world: World) -> None:
    assert refused(world, ALICE, "POST", "/v1.41/containers/create",
                   {"Image": IMAGE, "HostConfig": {"Privileged": True}}) is Reason.PRIVILEGED
    assert not world.gate.locks.locked("alice") and world.reserved() == []


def test_a_create_past_the_quota_gives_the_lock_back(world: World) -> None:
    held = world.allocator.request("alice", ALICE.uid, LIMITS, GpuRequest(count=2), slots=SLOTS)
    assert refused(world, ALICE, "POST", "/v1.41/containers/create",
                   {"Image": IMAGE, "HostConfig": ONE_GPU}) is Reason.QUOTA
    assert not world.gate.locks.locked("alice")
    assert [a.id for a in world.allocator.allocations()] == [held.id]


def test_a_create_past_max_containers_gives_the_lock_back(world: World) -> None:
    world.add(container("one", ALICE))
    world.add(container("two", ALICE))
    world.add(container("bobs", BOB))
    assert refused(world, ALICE, "POST", "/v1.41/containers/create",
                   {"Image": IMAGE, "HostConfig": ONE_GPU}) is Reason.MAX_CONTAINERS
    assert not world.gate.locks.locked("alice") and world.reserved() == []


def test_a_dry_run_answers_itself_and_reserves_nothing(world: World) -> None:
    dry = (DRY_RUN_HEADER, "1")
    reply = world.decide(ALICE, "POST", "/v1.41/containers/create", {"Image": IMAGE, "HostConfig": ONE_GPU}, (dry,))
    assert isinstance(reply, Reply) and reply.body["dry_run"] is True and len(reply.body["gpus"]) == 1
    assert not world.gate.locks.locked("alice")
    missing = world.decide(ALICE, "POST", "/v1.41/containers/create", {"Image": "gone:1", "HostConfig": ONE_GPU},
                           (dry,))
    assert denied(missing) == (Reason.IMAGE_MISSING, 404)
    assert not world.gate.locks.locked("alice") and world.reserved() == [] and world.upstream.calls == [
        ("GET", "/containers/json"), ("GET", "/containers/json")]


def test_an_engine_error_answer_releases_the_reservation_and_the_lock(world: World) -> None:
    outcome = forwarded(world.decide(ALICE, "POST", "/v1.41/containers/create",
                                     {"Image": IMAGE, "HostConfig": ONE_GPU}))
    outcome.settle(500, b'{"message": "no space left on device"}')
    assert not world.gate.locks.locked("alice") and world.reserved() == []


def test_the_lock_is_released_even_when_after_fails_and_only_once(world: World) -> None:
    def failing(_status: int | None, _answer: bytes) -> None:
        raise ValueError("after failed")

    locks = world.gate.locks
    outcome = Forward("/v1.41/containers/create", after=failing, held=locks.hold("alice"))
    with pytest.raises(ValueError, match="after failed"):
        outcome.settle(201, b"{}")
    assert not locks.locked("alice")
    later = locks.hold("alice")
    outcome.close()  # settled already: releases nothing of the later holder's
    assert locks.locked("alice")
    later.release()
    later.release()
    assert not locks.locked("alice")


def test_a_held_lock_released_twice_frees_no_later_holder() -> None:
    locks = UserLocks()
    first = locks.hold("alice")
    first.release()
    with locks.hold("alice"):
        first.release()
        assert locks.locked("alice") and not locks.locked("bob")
    assert not locks.locked("alice")


# --- exec create: under the owner's lock, within max_execs --------------------------------------------------------


def test_an_exec_is_created_under_the_owners_lock(world: World) -> None:
    app = world.add(container("app", ALICE))
    outcome = forwarded(world.decide(ALICE, "POST", "/v1.41/containers/app/exec", {"Cmd": ["id"]}))
    assert outcome.target == f"/v1.41/containers/{app['Id']}/exec"
    assert sent_body(outcome)["User"] == "2001:2001"
    assert outcome.held is not None and outcome.held.user == "alice" and world.gate.locks.locked("alice")
    outcome.settle(201, b'{"Id": "e1"}')
    assert not world.gate.locks.locked("alice")
    by_admin = forwarded(world.decide(ADMIN, "POST", "/v1.41/containers/app/exec", {"Cmd": ["id"]}))
    assert by_admin.held is not None and by_admin.held.user == "alice"  # counted as the owner's
    by_admin.close()
    assert not world.gate.locks.locked("alice") and not world.gate.locks.locked("opsadmin")


def test_max_execs_refuses_the_next_exec_and_gives_the_lock_back(world: World) -> None:
    app = world.add(container("app", ALICE))
    app["ExecIDs"] = ["e1", "e2"]
    assert refused(world, ALICE, "POST", "/v1.41/containers/app/exec", {"Cmd": ["id"]}) is Reason.MAX_EXECS
    assert not world.gate.locks.locked("alice")
    app["ExecIDs"] = ["e1"]
    forwarded(world.decide(ALICE, "POST", "/v1.41/containers/app/exec", {"Cmd": ["id"]})).close()
    assert not world.gate.locks.locked("alice")


# --- starts, copies, volumes and networks -------------------------------------------------------------------------


def test_a_start_refused_for_its_mount_paths_removes_a_rm_container(world: World) -> None:
    app = world.add(container("app", ALICE, host_config={
        "AutoRemove": True, "Mounts": [{"Type": "volume", "Source": "data", "Target": "/data"}]}))
    app["GraphDriver"] = {"Name": "vfs", "Data": {}}
    assert refused(world, ALICE, "POST", "/v1.41/containers/app/start") is Reason.MOUNT_PATH_SYMLINK
    assert world.upstream.calls == [("DELETE", f"/containers/{app['Id']}")] and world.upstream.containers == {}


def test_a_start_with_a_replaced_bind_source_is_refused(world: World, tmp_path: Path) -> None:
    # Root's own container: the way to a source is checked as its owner (a process of theirs), which for uid 0
    # takes no check, so the test runs as any user.
    root = dataclasses.replace(ADMIN, uid=0, user="root", gid=0, gids=frozenset({0}), login="root")
    world.sessions.by_uid[0] = Session(caller=root, login="root")
    source = (tmp_path / "data").resolve()
    source.mkdir()
    (tmp_path / "upper").mkdir()
    job = world.add(container("job", root, host_config={"Binds": ["/pins/k1/0:/data"]}, container_labels={
        "ds01.bind_key": "k1", "ds01.bind_sources": json.dumps([str(source)])}))
    job["GraphDriver"] = {"Name": "overlay2", "Data": {"UpperDir": str(tmp_path / "upper"), "LowerDir": ""}}
    checked = os.stat(source)
    world.pins.pins[("k1", 0)] = (checked.st_dev, checked.st_ino)
    forwarded(world.decide(root, "POST", "/v1.41/containers/job/start"))
    source.rename(tmp_path / "moved")
    source.mkdir()
    assert refused(world, root, "POST", "/v1.41/containers/job/start") is Reason.BIND_SOURCE_CHANGED


def test_a_start_asks_for_released_gpus_again_only_as_their_owner(world: World) -> None:
    devices = {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["GPU-1"], "Capabilities": [["gpu"]]}]}
    app = world.add(container("app", ALICE, host_config=devices))
    assert refused(world, ADMIN, "POST", "/v1.41/containers/app/start") is Reason.GPUS_RELEASED
    assert world.reserved() == []
    forwarded(world.decide(ALICE, "POST", "/v1.41/containers/app/start"))
    assert [(a.container, a.slots) for a in world.allocator.allocations()] == [(app["Id"], ("GPU-1",))]
    assert not world.gate.locks.locked("alice")


def test_copies_are_refused_for_containers_with_host_mounts(world: World) -> None:
    world.add(container("app", ALICE, mounts=[{"Type": "bind", "Source": "/home/alice/x", "Destination": "/x"}]))
    for method in ("PUT", "GET"):
        assert refused(world, ALICE, method, "/v1.41/containers/app/archive?path=/x") is \
            Reason.ARCHIVE_WITH_HOST_MOUNTS
    assert world.upstream.calls == []


def test_names_of_others_volumes_and_networks_are_neither_shown_nor_taken(world: World) -> None:
    world.upstream.volumes["shared"] = {"Name": "shared", "Labels": {"ds01.user": "bob"}}
    world.upstream.networks["lab"] = {"Name": "lab", "Id": "l" * 64, "Labels": {"ds01.user": "bob"}}
    assert denied(world.decide(ALICE, "POST", "/v1.41/volumes/create", {"Name": "shared"})) == (Reason.NAME_TAKEN,
                                                                                                409)
    assert denied(world.decide(ALICE, "POST", "/v1.41/networks/create", {"Name": "lab"})) == (Reason.NAME_TAKEN, 409)
    assert world.upstream.volumes["shared"]["Labels"] == {"ds01.user": "bob"} and world.upstream.calls == []


def test_choosing_a_networks_addresses_is_for_admins(world: World) -> None:
    body = {"Name": "lab", "IPAM": {"Config": [{"Subnet": "10.9.0.0/16"}]}}
    assert denied(world.decide(ALICE, "POST", "/v1.41/networks/create", body)) == (Reason.NETWORK_IPAM, 403)
    assert sent_body(world.decide(ADMIN, "POST", "/v1.41/networks/create", body))["IPAM"] == body["IPAM"]
    assert sent_body(world.decide(ALICE, "POST", "/v1.41/networks/create", {"Name": "lab", "IPAM": {}}))
