"""The fleet test bed itself: three etcd members of one cluster that keep a quorum through one loss and not two,
stopped, killed and started again by pid on their own data; three engines in namespaces of their own, each with
the test image, the stand-in nvidia hook, networks that do not collide and GPUs of its own."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import etcd3gw
import pytest
from docker.types import DeviceRequest
from etcd3gw.exceptions import Etcd3Exception

from tests.conftest import TEST_IMAGE
from tests.fleet.conftest import FLEETBED_SCRIPT, MEMBERS, Fleetbed, FleetNode

NODES = ("node1", "node2", "node3")


def leader(bed: Fleetbed) -> int:
    """The member number of the cluster's leader, as member 1..3 sees it (the first that answers)."""
    for n in MEMBERS:
        try:
            client = bed.client(n)
            leader_id = client.status()["leader"]
            names = {member["ID"]: member["name"] for member in client.members()}
        except Etcd3Exception:
            continue
        return int(names[leader_id].removeprefix("fleet"))
    raise AssertionError("no member answers its status")


def put_within(client: etcd3gw.Etcd3Client, key: str, value: str, seconds: float) -> float:
    """Put key, trying again until it is written or seconds have passed; the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            client.put(key, value)
            return time.monotonic() - started
        except Etcd3Exception as exc:
            if time.monotonic() - started > seconds:
                raise AssertionError(f"{key} was not written within {seconds} s: {exc}") from exc
            time.sleep(0.2)


@contextlib.contextmanager
def engine(node: FleetNode) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=node.docker_host, timeout=60)
    try:
        yield client
    finally:
        client.close()


def topology_uuids(topology: dict[str, Any]) -> set[str]:
    """The GPU and MIG UUIDs a topology (or `ds01 gpus --format json`) lists."""
    return {gpu["uuid"] for gpu in topology["gpus"]} | {
        mig["uuid"] for gpu in topology["gpus"] if gpu.get("mig_mode") for mig in gpu.get("mig_devices", [])}


def addresses_in_netns(netns: str, device: str) -> set[ipaddress.IPv4Interface]:
    shown = subprocess.run(["ip", "-n", netns, "-j", "-4", "addr", "show", "dev", device], capture_output=True,
                           text=True, check=True, timeout=30).stdout
    return {ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
            for link in json.loads(shown) for info in link["addr_info"]}


# --- etcd -----------------------------------------------------------------------------------------------------

def test_the_three_members_form_one_cluster(fleetbed: Fleetbed) -> None:
    clusters = set()
    for n in MEMBERS:
        client = fleetbed.client(n)
        members = client.members()
        assert sorted(member["name"] for member in members) == ["fleet1", "fleet2", "fleet3"]
        assert {url for member in members for url in member["clientURLs"]} == set(fleetbed.endpoints)
        clusters.add(client.status()["header"]["cluster_id"])
    assert len(clusters) == 1, clusters
    assert fleetbed.env["DS01_FLEET_ETCD_ENDPOINTS"] == ",".join(fleetbed.endpoints)
    assert [url.rsplit(":", 1)[1] for url in fleetbed.endpoints] == ["23791", "23792", "23793"]


def test_a_key_put_through_one_member_is_read_through_the_others(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    fleetbed.client(1).put(f"{etcd_prefix}greeting", "hello")
    assert fleetbed.client(2).get(f"{etcd_prefix}greeting") == [b"hello"]
    assert fleetbed.client(3).get(f"{etcd_prefix}greeting") == [b"hello"]


def test_writes_go_on_with_a_follower_killed(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    killed = next(n for n in MEMBERS if n != leader(fleetbed))
    pid = fleetbed.member_pid(killed)
    assert pid is not None
    fleetbed.kill_member(killed)
    assert fleetbed.member_pid(killed) is None
    assert not fleetbed.member_healthy(killed)
    for n in MEMBERS:
        if n != killed:
            fleetbed.client(n, timeout_seconds=3).put(f"{etcd_prefix}from-{n}", "written")
            assert fleetbed.client(n).get(f"{etcd_prefix}from-{n}") == [b"written"]


def test_writes_go_on_after_the_leader_is_killed(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    killed = leader(fleetbed)
    fleetbed.kill_member(killed)
    survivor = next(n for n in MEMBERS if n != killed)
    # The survivors elect a new leader (election timeout 1 s); a write waits for that and no more.
    took = put_within(fleetbed.client(survivor, timeout_seconds=3), f"{etcd_prefix}after", "written", 15)
    assert took < 15
    assert leader(fleetbed) != killed
    assert fleetbed.client(next(n for n in MEMBERS if n not in (killed, survivor))).get(f"{etcd_prefix}after") == [
        b"written"]


def test_with_two_members_killed_writes_fail_and_come_back_with_them(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    fleetbed.client(1).put(f"{etcd_prefix}before", "kept")
    old_pids = {n: fleetbed.member_pid(n) for n in (1, 2)}
    fleetbed.kill_member(1)
    fleetbed.kill_member(2)
    started = time.monotonic()
    with pytest.raises(Etcd3Exception):
        fleetbed.client(3, timeout_seconds=3).put(f"{etcd_prefix}without-quorum", "lost")
    assert time.monotonic() - started < 10
    fleetbed.start_member(1)
    fleetbed.start_member(2)
    fleetbed.wait_healthy()
    assert all(fleetbed.member_pid(n) not in (None, old_pids[n]) for n in (1, 2))
    fleetbed.client(1, timeout_seconds=3).put(f"{etcd_prefix}after", "written")
    assert fleetbed.client(3).get(f"{etcd_prefix}after") == [b"written"]
    assert fleetbed.client(2).get(f"{etcd_prefix}before") == [b"kept"]  # the restarted members kept their data


def test_a_stopped_member_starts_again_on_its_data_and_catches_up(fleetbed: Fleetbed, etcd_prefix: str) -> None:
    old_pid = fleetbed.member_pid(3)
    fleetbed.stop_member(3)
    assert fleetbed.member_pid(3) is None
    fleetbed.client(1).put(f"{etcd_prefix}while-away", "caught up")
    fleetbed.start_member(3)
    fleetbed.wait_healthy()
    assert fleetbed.member_pid(3) not in (None, old_pid)
    assert fleetbed.client(3).get(f"{etcd_prefix}while-away") == [b"caught up"]
    assert len(fleetbed.client(3).members()) == 3  # it rejoined as itself, not as a fourth member


def test_restoring_starts_what_was_stopped_or_killed(fleetbed: Fleetbed) -> None:
    # What the fixture fleet_members_restored does after every test.
    fleetbed.stop_member(1)
    fleetbed.kill_member(3)
    fleetbed.restore_members()
    assert all(fleetbed.member_pid(n) is not None and fleetbed.member_healthy(n) for n in MEMBERS)


def test_member_commands_refuse_a_member_that_is_not_one(fleetbed: Fleetbed) -> None:
    for argv in (["member", "kill", "4"], ["member", "stop"], ["member", "start", "0"], ["member", "restart", "1"]):
        run = subprocess.run([str(FLEETBED_SCRIPT), *argv], capture_output=True, text=True, check=False, timeout=30)
        assert run.returncode == 2, (argv, run.stderr)
        assert "usage: scripts/fleetbed" in run.stderr
    with pytest.raises(ValueError, match=r"numbered 1\.\.3"):
        fleetbed.kill_member(4)


def test_up_again_changes_nothing(fleetbed: Fleetbed) -> None:
    pids = {n: fleetbed.member_pid(n) for n in MEMBERS}
    dockerds = {node.name: (node.dir / "docker" / "dockerd.pid").read_text() for node in fleetbed.nodes[1:]}
    up = subprocess.run([str(FLEETBED_SCRIPT), "up"], capture_output=True, text=True, check=False, timeout=300)
    assert up.returncode == 0, up.stderr
    assert {n: fleetbed.member_pid(n) for n in MEMBERS} == pids
    assert {node.name: (node.dir / "docker" / "dockerd.pid").read_text() for node in fleetbed.nodes[1:]} == dockerds
    status = subprocess.run([str(FLEETBED_SCRIPT), "status"], capture_output=True, text=True, check=False,
                            timeout=60)
    assert status.returncode == 0, status.stdout
    assert "etcd cluster: healthy" in status.stdout


# --- the nodes' engines ---------------------------------------------------------------------------------------

def test_the_nodes_are_three_with_places_of_their_own(fleetbed: Fleetbed) -> None:
    assert [node.name for node in fleetbed.nodes] == list(NODES)
    for field in ("docker_host", "topology", "netns", "dir", "hook_records"):
        values = [getattr(node, field) for node in fleetbed.nodes]
        assert len(set(values)) == 3, (field, values)
    for node in fleetbed.nodes[1:]:
        assert node.topology.parent == node.dir  # a copy of its own, for tests to edit
        assert node.docker_host == f"unix://{node.dir}/docker.sock"


@pytest.mark.parametrize("index", range(3), ids=NODES)
def test_each_engine_runs_the_test_image_with_the_nvidia_stand_in(fleetbed: Fleetbed, index: int) -> None:
    node = fleetbed.nodes[index]
    gpu = next(gpu["uuid"] for gpu in json.loads(node.topology.read_text())["gpus"] if not gpu.get("mig_mode"))
    with engine(node) as client:
        client.images.get(TEST_IMAGE)
        container = client.containers.run(
            TEST_IMAGE, ["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"], name=f"fleetbed-{uuid.uuid4().hex[:8]}",
            detach=True, device_requests=[DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])])
        try:
            assert container.wait(timeout=60)["StatusCode"] == 0
            assert container.logs().decode().strip() == gpu
            records = [json.loads(line) for line in node.hook_records.read_text().splitlines()]
            assert [record["devices"] for record in records if record["container_id"] == container.id] == [[gpu]]
        finally:
            container.remove(force=True)


def test_the_engines_networks_do_not_collide(fleetbed: Fleetbed) -> None:
    bridges: dict[str, ipaddress.IPv4Network] = {}
    made: dict[str, ipaddress.IPv4Network] = {}
    for node in fleetbed.nodes:
        with engine(node) as client:
            subnet = client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
            bridges[node.name] = ipaddress.IPv4Network(subnet)
            # The default bridge is the engine's own, in its own namespace.
            assert {address.network for address in addresses_in_netns(node.netns, "docker0")} == {bridges[node.name]}
            network = client.networks.create(f"fleetbed-{uuid.uuid4().hex[:8]}", driver="bridge")
            try:
                made[node.name] = ipaddress.IPv4Network(network.attrs["IPAM"]["Config"][0]["Subnet"])
            finally:
                network.remove()
    subnets = [*bridges.values(), *made.values()]
    for a, b in itertools.combinations(subnets, 2):
        assert not a.overlaps(b), (bridges, made)


def test_the_nodes_gpus_are_their_own(fleetbed: Fleetbed) -> None:
    seen: dict[str, set[str]] = {}
    for node in fleetbed.nodes:
        # What a proxy of the node sees: the one simulated NVML library on the node's own topology.
        gpus = subprocess.run(
            [str(Path(sys.executable).parent / "ds01"), "gpus", "--format", "json"], capture_output=True, text=True,
            check=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(fleetbed.nvml_lib_dir),
                 "FAKE_NVML_TOPOLOGY": str(node.topology)}).stdout
        seen[node.name] = topology_uuids(json.loads(gpus))
        assert seen[node.name] == topology_uuids(json.loads(node.topology.read_text()))
    assert len(seen["node2"]) == 8 + 7  # eight A100s, two of them split into 4 and 3 MIG devices
    assert len(seen["node3"]) == 2
    for a, b in itertools.combinations(NODES, 2):
        assert not seen[a] & seen[b], (a, b, seen[a] & seen[b])
