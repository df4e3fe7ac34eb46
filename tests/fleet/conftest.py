"""Fixtures of the fleet tests: the fleet test bed (scripts/fleetbed), three etcd members of one cluster and the
engines of three ds01 nodes, node 1 the main test bed's. The bed is brought up by `make test`, not here; a test
that stops or kills members has them started again after it, and each test gets a key prefix of its own."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import etcd3gw
import pytest

from tests.conftest import REPO, _parse_exports

FLEETBED_SCRIPT = REPO / "scripts" / "fleetbed"
MEMBERS = (1, 2, 3)
HEALTHY_WITHIN_SECONDS = 60.0


@dataclass(frozen=True)
class FleetNode:
    """One ds01 node of the fleet: its engine, where it runs, its fake GPUs and a scratch dir for its proxy."""

    name: str  # node1, node2, node3
    docker_host: str  # unix://…/docker.sock
    topology: Path  # its FAKE_NVML_TOPOLOGY, a copy of its own (replace it atomically to change it)
    netns: str  # the network namespace its engine runs in
    dir: Path  # scratch for its proxy: etc/, state/, log/, run/
    hook_records: Path  # what the stand-in nvidia hook of its engine recorded, one JSON line per container


@dataclass(frozen=True)
class Fleetbed:
    """The running fleet test bed, as `scripts/fleetbed env` names it; members are numbered 1..3."""

    __test__ = False

    endpoints: tuple[str, ...]  # http://127.0.0.1:PORT of each member, in member order
    nodes: tuple[FleetNode, ...]  # node1, node2, node3
    nvml_lib_dir: Path  # the simulated libnvidia-ml.so.1 every node loads (LD_LIBRARY_PATH)
    env: dict[str, str]  # every DS01_FLEET_* variable

    def endpoint(self, n: int) -> str:
        return self.endpoints[_member_index(n)]

    def client(self, n: int, *, timeout_seconds: float = 5.0) -> etcd3gw.Etcd3Client:
        """An etcd3gw client of member n alone (its v3 JSON gateway)."""
        url = urlsplit(self.endpoint(n))
        assert url.hostname is not None and url.port is not None, url
        return etcd3gw.Etcd3Client(host=url.hostname, port=url.port, timeout=timeout_seconds)

    def member_pid(self, n: int) -> int | None:
        """The pid of member n, or None when it is not running."""
        _member_index(n)
        run = subprocess.run([str(FLEETBED_SCRIPT), "member", "pid", str(n)], capture_output=True, text=True,
                             check=False, timeout=30)
        return int(run.stdout) if run.returncode == 0 else None

    def kill_member(self, n: int) -> None:
        """SIGKILL member n and wait until it is gone."""
        self._member("kill", n)

    def stop_member(self, n: int) -> None:
        """SIGTERM member n and wait until it is gone."""
        self._member("stop", n)

    def start_member(self, n: int) -> None:
        """Start member n again on its own data; it serves once a quorum of members runs."""
        self._member("start", n)

    def member_healthy(self, n: int) -> bool:
        """Member n answers its /health with true: it has a leader and serves reads and writes."""
        try:
            with urllib.request.urlopen(f"{self.endpoint(n)}/health", timeout=3) as response:  # noqa: S310
                return bool(json.loads(response.read()).get("health") == "true")
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError):
            return False

    def wait_healthy(self, timeout_seconds: float = HEALTHY_WITHIN_SECONDS) -> None:
        """Wait until every member is healthy; fail after timeout_seconds."""
        deadline = time.monotonic() + timeout_seconds
        while not all(self.member_healthy(n) for n in MEMBERS):
            if time.monotonic() > deadline:
                states = {n: (self.member_pid(n), self.member_healthy(n)) for n in MEMBERS}
                raise AssertionError(f"the etcd cluster is not healthy after {timeout_seconds} s: "
                                     f"(pid, healthy) by member {states}")
            time.sleep(0.2)

    def restore_members(self) -> None:
        """Start every member that is not running, and wait until the cluster is healthy again."""
        for n in MEMBERS:
            if self.member_pid(n) is None:
                self.start_member(n)
        self.wait_healthy()

    def _member(self, action: str, n: int) -> None:
        _member_index(n)
        run = subprocess.run([str(FLEETBED_SCRIPT), "member", action, str(n)], capture_output=True, text=True,
                             check=False, timeout=60)
        if run.returncode != 0:
            raise AssertionError(f"scripts/fleetbed member {action} {n} failed ({run.returncode}): {run.stderr}")


def _member_index(n: int) -> int:
    if n not in MEMBERS:
        raise ValueError(f"the fleet's etcd members are numbered 1..3, not {n}")
    return n - 1


def _read_fleetbed() -> Fleetbed:
    printed = subprocess.run([str(FLEETBED_SCRIPT), "env"], capture_output=True, text=True, check=True,
                             timeout=30).stdout
    env = _parse_exports(printed)
    nodes = tuple(FleetNode(name=f"node{n}",
                            docker_host=env[f"DS01_FLEET_NODE{n}_DOCKER_HOST"],
                            topology=Path(env[f"DS01_FLEET_NODE{n}_TOPOLOGY"]),
                            netns=env[f"DS01_FLEET_NODE{n}_NETNS"],
                            dir=Path(env[f"DS01_FLEET_NODE{n}_DIR"]),
                            hook_records=Path(env[f"DS01_FLEET_NODE{n}_HOOK_RECORDS"]))
                  for n in (1, 2, 3))
    return Fleetbed(endpoints=tuple(env["DS01_FLEET_ETCD_ENDPOINTS"].split(",")), nodes=nodes,
                    nvml_lib_dir=Path(env["DS01_FLEET_NVML_LIB_DIR"]), env=env)


def _why_not_up(bed: Fleetbed) -> str | None:
    """What of the bed is not running, or None when all of it is."""
    unhealthy = [n for n in MEMBERS if not bed.member_healthy(n)]
    if unhealthy:
        return f"etcd member(s) {unhealthy} not healthy"
    for node in bed.nodes:
        try:
            docker.DockerClient(base_url=node.docker_host, timeout=10).close()  # it asks the engine's version
        except docker.errors.DockerException as exc:
            return f"the engine of {node.name} does not answer on {node.docker_host}: {exc}"
    return None


@pytest.fixture(scope="session")
def fleetbed() -> Fleetbed:
    """The running fleet test bed. Not up: under CI=true the run fails, never skips; elsewhere the test skips."""
    bed = _read_fleetbed()
    why = "it needs root (it starts etcd and dockerd)" if os.geteuid() != 0 else _why_not_up(bed)
    if why is not None:
        message = f"the fleet test bed is not up: {why}; run scripts/fleetbed up (node 1: scripts/testbed up)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bed


@pytest.fixture(autouse=True)
def fleet_members_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the fleet bed: every member it stopped or killed is started again, the cluster healthy."""
    yield
    bed = request.node.funcargs.get("fleetbed") if isinstance(request.node, pytest.Function) else None
    if isinstance(bed, Fleetbed):
        bed.restore_members()


@pytest.fixture
def etcd_prefix(fleetbed: Fleetbed) -> Iterator[str]:
    """A key prefix of this test's own, /ds01-test/<uuid>/, whose keys are deleted afterwards."""
    prefix = f"/ds01-test/{uuid.uuid4().hex}/"
    yield prefix
    fleetbed.restore_members()  # a test that took the quorum away leaves nothing to delete through
    fleetbed.client(1).delete_prefix(prefix)
    assert fleetbed.client(2).get_prefix(prefix) == [], f"keys under {prefix} outlived the test"
