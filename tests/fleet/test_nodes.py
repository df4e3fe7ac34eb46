"""Three ds01 nodes on the fleet bed, each a real proxy in front of its own engine and fake GPUs, sharing the
bed's three-member etcd: alice at her quota on node 1 is refused on node 2 with where her GPUs are; two members
killed refuse grants with store_unavailable while running containers and requests without GPUs go on, and once
they are back every node reconciles clean; a node whose proxy is killed -9 is shown down after node_ttl with its
containers still counted, and alive again once restarted; and a state file is imported exactly once."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import docker
import pytest

from ds01.config import effective_limits, load_config
from ds01.config.schema import EtcdSettings
from ds01.etcd import Etcd
from ds01.gpus.allocations import Allocation
from ds01.identity import accounts
from ds01.ops.doctor import check_fleet
from tests.conftest import TEST_IMAGE, ProxyHandle, ProxyNode, Testbed, start_proxy, stop_proxy
from tests.fleet.conftest import Fleetbed
from tests.integration.test_alloc_cli import DS01
from tests.integration.test_container_cli import CONTAINER
from tests.integration.test_exporter import start_exporter, stop

NODE_TTL_SECONDS = 6
# alice and bob are researchers (a quota of 2, whole GPUs, 2 per container), on the etcd store
RESEARCHERS = (("  store: file", "  store: etcd"),
               ("  bob:\n    group: researcher\n", "  bob:\n    group: researcher\n  alice:\n    group: researcher\n"))


@dataclass
class Fleet:
    proxies: list[ProxyHandle]
    engines: list[docker.DockerClient]
    start: Callable[[int], ProxyHandle]  # (re)start node n's proxy (0-based) on its old root

    def docker(self, node: int, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.proxies[node].as_user(user, "docker", *args)

    def ds01(self, node: int, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DS01, *args], env=self.proxies[node].env, capture_output=True, text=True,
                              check=False, timeout=120)

    def status(self, node: int = 0) -> dict[str, Any]:
        shown = self.ds01(node, "fleet", "status", "--format", "json")
        assert shown.returncode == 0, shown.stderr
        return {n["node"]: n for n in json.loads(shown.stdout)["nodes"]}


def until(check: Callable[[], Any], what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {seconds:.0f}s")


def fleet_config(fleetbed: Fleetbed, prefix: str, node: str) -> str:
    endpoints = ", ".join(fleetbed.endpoints)
    return (f"fleet:\n  node: {node}\n  node_ttl: {NODE_TTL_SECONDS}s\n  etcd:\n    endpoints: [{endpoints}]\n"
            f"    prefix: {prefix}\n")  # etcd.timeout as shipped (5s): a loaded CI machine is slow to answer


@pytest.fixture
def fleet(fleetbed: Fleetbed, testbed: Testbed, etcd_prefix: str) -> Iterator[Fleet]:
    roots = [testbed.dir / "proxy-tests" / f"fleet-{uuid.uuid4().hex[:6]}-{n + 1}" for n in range(3)]
    engines = [docker.DockerClient(base_url=node.docker_host) for node in fleetbed.nodes]

    def start(index: int) -> ProxyHandle:
        node = fleetbed.nodes[index]
        other = None if index == 0 else ProxyNode(node.netns, node.docker_host, node.topology)
        return start_proxy(testbed, roots[index], node=other, replaced=RESEARCHERS,
                           extra_config=fleet_config(fleetbed, etcd_prefix, node.name))

    made = Fleet([], engines, start)
    try:
        for index in range(3):
            made.proxies.append(start(index))
        until(lambda: all(n["alive"] for n in made.status().values()) and len(made.status()) == 3,
              "three nodes alive")
        yield made
    finally:
        for handle, engine in zip(made.proxies, engines, strict=False):
            stop_proxy(handle, engine)
        for engine in engines:
            engine.close()


def run_gpu(fleet: Fleet, node: int, user: str, gpus: str) -> subprocess.CompletedProcess[str]:
    return fleet.docker(node, user, "run", "-d", "--gpus", gpus, TEST_IMAGE, "sleep", "600")


def reconciled(fleet: Fleet, node: int) -> bool:
    shown = fleet.ds01(node, "reconcile", "--format", "json")
    return shown.returncode == 0 and bool(json.loads(shown.stdout)["consistent"])


def test_alice_at_her_quota_on_node1_is_refused_on_node2_with_where_her_gpus_are(fleet: Fleet) -> None:
    held = run_gpu(fleet, 0, "alice", "2")  # a researcher: a quota of 2 GPU-equivalents
    assert held.returncode == 0, held.stderr
    refused = run_gpu(fleet, 1, "alice", "1")
    print(f"alice@node2$ docker run -d --gpus 1 ...\n{refused.stderr}")
    assert refused.returncode != 0 and "quota of 2" in refused.stderr and "on node1" in refused.stderr
    assert not fleet.engines[1].containers.list(all=True, filters={"label": "ds01.user=alice"})  # nothing made
    created = fleet.proxies[1].as_user("alice", CONTAINER, "create", "again", "--gpus", "1")
    assert created.returncode == 3, created.stderr  # the quota's exit code
    assert run_gpu(fleet, 1, "bob", "1").returncode == 0  # others are not held up
    status = fleet.status(2)  # as node 3 sees it
    assert status["node1"]["held_gpu_equivalents"] == "2" and status["node2"]["held_gpu_equivalents"] == "1"
    shown = fleet.proxies[2].as_user("alice", CONTAINER, "gpus", "--fleet", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["held_in_fleet"] == "2" and {n["node"] for n in view["nodes"]} == {"node1", "node2", "node3"}
    text = fleet.proxies[2].as_user("alice", CONTAINER, "gpus", "--fleet")
    print(f"alice@node3$ container gpus --fleet\n{text.stdout}")
    assert "— ssh node2" in text.stdout and "(this server)" in text.stdout


def test_two_members_down_refuse_grants_spare_the_running_and_every_node_reconciles_once_back(
        fleet: Fleet, fleetbed: Fleetbed) -> None:
    running = run_gpu(fleet, 0, "alice", "1")
    assert running.returncode == 0, running.stderr
    container = running.stdout.strip()
    doctor = check_fleet(load_config(fleet.proxies[0].config))
    assert (doctor.status, "node node1 is alive") == ("WARN", doctor.detail.split(";")[0])  # alive, on plain http
    fleetbed.kill_member(1)
    one_down = run_gpu(fleet, 1, "bob", "1")
    print(f"one member killed; bob@node2$ docker run -d --gpus 1 ... -> {one_down.returncode}")
    assert one_down.returncode == 0, one_down.stderr  # a quorum answers: the fleet goes on
    fleetbed.kill_member(2)
    refused = fleet.proxies[0].as_user("bob", CONTAINER, "create", "later", "--gpus", "1")
    print(f"two members killed; bob@node1$ container create later --gpus 1 -> {refused.returncode}\n{refused.stderr}")
    assert refused.returncode == 3 and "cannot reach the fleet's etcd store" in refused.stderr
    assert not fleet.engines[0].containers.list(all=True, filters={"name": "later"})
    doctor = check_fleet(load_config(fleet.proxies[0].config))
    assert doctor.status == "FAIL" and "grants no GPUs" in doctor.detail
    plain = fleet.docker(0, "bob", "run", "--rm", TEST_IMAGE, "echo", "no GPU needed")
    assert plain.returncode == 0 and "no GPU needed" in plain.stdout, plain.stderr
    fleet.engines[0].containers.get(container).reload()
    assert fleet.engines[0].containers.get(container).status == "running"  # untouched
    fleetbed.start_member(1)
    fleetbed.start_member(2)
    fleetbed.wait_healthy()
    until(lambda: any(e["type"] == "fleet.rejoin" for e in fleet.proxies[0].events()), "node1's rejoin", 60)
    granted = until(lambda: (r := fleet.proxies[0].as_user("bob", CONTAINER, "create", "later", "--gpus", "1"))
                    .returncode == 0 and r, "a grant after the members' return", 30)
    print(f"members back; bob@node1$ container create later --gpus 1 -> {granted.returncode}")
    for node in range(3):
        assert reconciled(fleet, node), f"node{node + 1} does not reconcile clean"
    assert {n["node"]: n["alive"] for n in fleet.status().values()} == {"node1": True, "node2": True,
                                                                          "node3": True}


def test_a_node_killed_is_down_after_node_ttl_its_containers_still_count_and_it_comes_back(fleet: Fleet) -> None:
    held = run_gpu(fleet, 1, "alice", "2")
    assert held.returncode == 0, held.stderr
    killed_at = time.monotonic()
    fleet.proxies[1].process.kill()
    fleet.proxies[1].process.wait(30)
    status = until(lambda: (s := fleet.status())["node2"]["alive"] is False and s, "node2 shown down",
                   NODE_TTL_SECONDS * 4)
    print(f"node2's proxy killed -9; down after {time.monotonic() - killed_at:.1f}s (node_ttl {NODE_TTL_SECONDS}s)")
    assert status["node2"]["held_gpu_equivalents"] == "2"
    refused = run_gpu(fleet, 0, "alice", "1")
    assert refused.returncode != 0 and "on node2" in refused.stderr  # its containers still count
    shown = fleet.proxies[0].as_user("alice", CONTAINER, "gpus", "--fleet")
    assert "node2: DOWN" in shown.stdout, shown.stdout
    table = fleet.ds01(0, "fleet", "status")
    print(f"alice@node1$ container gpus --fleet\n{shown.stdout}\nroot@node1# ds01 fleet status\n{table.stdout}")
    assert table.returncode == 0 and "DOWN" in table.stdout
    fleet.proxies[1] = fleet.start(1)
    until(lambda: fleet.status()["node2"]["alive"], "node2 alive again", NODE_TTL_SECONDS * 4)
    assert reconciled(fleet, 1)
    assert fleet.status()["node2"]["held_gpu_equivalents"] == "2"  # its container runs on: still held


def test_a_second_server_under_a_name_in_use_starts_no_proxy_and_reconciles_nothing(
        fleet: Fleet, fleetbed: Fleetbed, testbed: Testbed, etcd_prefix: str) -> None:
    held = run_gpu(fleet, 0, "alice", "2")
    assert held.returncode == 0, held.stderr
    node = fleetbed.nodes[2]  # node3's engine, with nothing of node1's: its reconcile would release all of it
    root = testbed.dir / "proxy-tests" / f"impostor-{uuid.uuid4().hex[:6]}"
    with pytest.raises(AssertionError) as refused:
        start_proxy(testbed, root, node=ProxyNode(node.netns, node.docker_host, node.topology), replaced=RESEARCHERS,
                    extra_config=fleet_config(fleetbed, etcd_prefix, "node1"))
    assert "fleet node name node1 is held by another ds01 proxy" in str(refused.value)
    cleanup = subprocess.run([DS01, "cleanup"], capture_output=True, text=True, check=False, timeout=120, env={
        **fleet.proxies[0].env, "DS01_CONFIG": str(root / "etc" / "resource-limits.yaml"),
        "DS01_STATE_DIR": str(root / "state"), "DS01_LOG_DIR": str(root / "log"), "DS01_RUN_DIR": str(root / "run"),
        "FAKE_NVML_TOPOLOGY": str(node.topology), "DOCKER_HOST": node.docker_host})  # the impostor's timer
    assert cleanup.returncode == 1 and "allocations not reconciled: fleet node name node1 is held" in cleanup.stderr
    assert fleet.status()["node1"]["held_gpu_equivalents"] == "2"  # alice's container's GPUs stay booked
    again = run_gpu(fleet, 0, "bob", "2")
    assert again.returncode == 0, again.stderr
    assert fleet.status()["node1"]["held_gpu_equivalents"] == "4" and reconciled(fleet, 0)


def test_a_state_file_is_imported_once_through_the_cli(fleet: Fleet, fleetbed: Fleetbed) -> None:
    state = fleet.proxies[2].root / "state" / "allocations.json"
    allocation = {"id": "a-00112233aabb", "user": "carol", "uid": 1002, "slots": ["GPU-imported-0"],
                  "gpu_equivalents": "1", "created_at": 1.0e9, "expires_at": None, "container": "f" * 64,
                  "container_name": "legacy._.1002", "bound_at": 1.0e9}
    state.write_text(json.dumps({"version": 1, "allocations": [allocation]}))
    foreign = fleet.ds01(2, "fleet", "import")  # another node's file: its GPU is not one of node3's
    assert foreign.returncode == 2 and "GPU-imported-0, which this node's GPUs" in foreign.stderr, foreign.stderr
    allocation["slots"] = [json.loads(fleetbed.nodes[2].topology.read_text())["gpus"][0]["uuid"]]
    state.write_text(json.dumps({"version": 1, "allocations": [allocation]}))
    first = fleet.ds01(2, "fleet", "import", "--format", "json")
    second = fleet.ds01(2, "fleet", "import")
    print(f"ds01 fleet import\n{first.stdout}ds01 fleet import\n{second.stdout}")
    assert first.returncode == 0 and json.loads(first.stdout) == {"imported": True, "allocations": 1,
                                                                 "node": "node3"}
    assert second.returncode == 0 and "imported before; nothing was changed" in second.stdout
    assert fleet.status()["node3"]["held_gpu_equivalents"] == "1"
    forgetting = fleet.ds01(0, "fleet", "forget", "node3", "--yes")
    assert forgetting.returncode == 3 and "is alive" in forgetting.stderr  # a live node is not forgotten


def test_each_exporter_tells_the_store_and_every_node_and_reads_its_allocations_from_etcd(
        fleet: Fleet, fleetbed: Fleetbed) -> None:
    held = run_gpu(fleet, 0, "alice", "1")
    assert held.returncode == 0, held.stderr
    exporter = start_exporter({**fleet.proxies[0].env, "DOCKER_HOST": fleetbed.nodes[0].docker_host})
    try:
        exporter.wait_for("ds01_store_up", 1)
        exporter.wait_for("ds01_user_gpu_equivalents", 1, user="alice")  # this node's, read from etcd
        for node in ("node1", "node2", "node3"):
            exporter.wait_for("ds01_fleet_node_up", 1, fleet_node=node)
        assert exporter.value("ds01_fleet_node_last_seen_timestamp_seconds", fleet_node="node2") is not None
        assert exporter.value("ds01_store_transaction_retries_total") is not None
        fleet.proxies[1].process.kill()
        fleet.proxies[1].process.wait(30)
        exporter.wait_for("ds01_fleet_node_up", 0, fleet_node="node2")  # node 1's exporter tells of node 2
        fleet.proxies[1] = fleet.start(1)
        exporter.wait_for("ds01_fleet_node_up", 1, fleet_node="node2")
    finally:
        stop(exporter.process)


def test_48_concurrent_creates_by_4_users_over_the_3_proxies_book_nothing_twice_and_nobody_past_quota(
        fleet: Fleet, fleetbed: Fleetbed, etcd_prefix: str) -> None:
    users = ("alice", "bob", "carol", "opsadmin")
    commands = [(index % 3, users[index % 4]) for index in range(48)]
    running = [fleet.proxies[node].as_user_async(user, "docker", "create", "--gpus", "1", TEST_IMAGE, "true")
               for node, user in commands]
    outcomes = [process.communicate(timeout=300) for process in running]
    made = [out.strip() for (out, _), process in zip(outcomes, running, strict=True) if process.returncode == 0]
    refusals = [err for (_, err), process in zip(outcomes, running, strict=True) if process.returncode != 0]
    odd = [err for err in refusals if not ("quota" in err or "slot" in err or "free" in err)]
    assert not odd, odd  # refused for the quota or for capacity, nothing else
    _, entries = Etcd(EtcdSettings(endpoints=fleetbed.endpoints)).read_prefix(etcd_prefix)
    allocations = [Allocation.from_json(json.loads(e.value)) for e in entries
                   if e.key.startswith(f"{etcd_prefix}allocations/")]
    booked = [f"{a.node}/{slot}" for a in allocations for slot in a.slots]
    assert len(booked) == len(set(booked))  # no slot twice, fleet-wide
    held: dict[str, Fraction] = {}
    for allocation in allocations:
        held[allocation.user] = held.get(allocation.user, Fraction(0)) + allocation.gpu_equivalents
    config = load_config(fleet.proxies[0].config)
    for user, amount in held.items():
        account = accounts.resolve_name(user, config.ldap)
        quota = effective_limits(config, account.name, account.groups, datetime.now(UTC)).limits.gpu_quota
        assert amount <= quota, (user, amount, quota)
    assert {a.container for a in allocations} == set(made)  # every container made holds its grant, and only those
    engines = {cid for engine in fleet.engines for cid in
               (c.id for c in engine.containers.list(all=True, filters={"label": "ds01.user"}))}
    assert set(made) <= engines
    print(f"48 concurrent creates over 3 proxies: {len(made)} made, {len(refusals)} refused; held {held}")
