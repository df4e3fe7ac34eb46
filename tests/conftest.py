"""Shared fixtures: the test bed (private dockerd + simulated NVML) brought up through scripts/testbed."""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

REPO = Path(__file__).resolve().parents[1]
TESTBED_SCRIPT = REPO / "scripts" / "testbed"
TOPOLOGIES = REPO / "tests" / "fakes" / "topologies"
TEST_IMAGE = "ds01-test/busybox:latest"


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # a fixture value, not a test class

    dir: Path
    env: dict[str, str]

    @property
    def docker_host(self) -> str:
        return self.env["DOCKER_HOST"]

    @property
    def hook_records(self) -> Path:
        return self.dir / "hook-records.jsonl"

    def hook_record_for(self, container_id: str) -> dict[str, Any]:
        for line in self.hook_records.read_text().splitlines():
            record = json.loads(line)
            if record["container_id"] == container_id:
                return dict(record)
        raise AssertionError(f"the stand-in hook recorded nothing for container {container_id}")


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        name, _, value = words[1].partition("=")
        env[name] = value
    return env


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    """The running test bed. Under CI=true a test bed that cannot come up fails the run, never skips it."""
    if os.geteuid() != 0:
        message = "the test bed needs root (it starts a private dockerd and creates test users)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    up = subprocess.run([str(TESTBED_SCRIPT), "up"], capture_output=True, text=True, check=False)
    if up.returncode != 0:
        pytest.fail(f"scripts/testbed up failed ({up.returncode}):\n{up.stderr}")
    printed = subprocess.run([str(TESTBED_SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    env = _parse_exports(printed)
    os.environ.update(env)
    # glibc reads LD_LIBRARY_PATH once, at process start. Loading the fake by path registers its soname,
    # so pynvml's later dlopen("libnvidia-ml.so.1") finds it even when pytest was started outside the bed.
    ctypes.CDLL(str(Path(env["DS01_TESTBED_DIR"]) / "lib" / "libnvidia-ml.so.1"), mode=ctypes.RTLD_GLOBAL)
    return Testbed(dir=Path(env["DS01_TESTBED_DIR"]), env=env)


class TopologyFile:
    """A private, editable copy of a shipped topology; edits are atomic renames, as the fake expects."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))

    def write(self, topology: dict[str, Any]) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(topology))
        os.replace(staging, self.path)


def load_topology(name: str) -> dict[str, Any]:
    return dict(json.loads((TOPOLOGIES / f"{name}.json").read_text()))


@pytest.fixture
def topology(testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TopologyFile:
    """The 8-GPU topology in a file of this test's own, named by FAKE_NVML_TOPOLOGY for the test."""
    topology_file = TopologyFile(tmp_path / "topology.json")
    topology_file.write(load_topology("a100-8gpu"))
    monkeypatch.setenv("FAKE_NVML_TOPOLOGY", str(topology_file.path))
    return topology_file


@pytest.fixture
def engine(testbed: Testbed) -> Iterator[docker.DockerClient]:
    """A docker-py client on the test bed's private engine (direct, not through the proxy)."""
    client = docker.DockerClient(base_url=testbed.docker_host)
    try:
        yield client
    finally:
        client.close()
