"""Fixtures of the integration tests: the attack tests' scratch directories, and a proxy whose every slot is held
(the queue's and the jobs' tests)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.attacks import account, owned_dir
from tests.integration.test_proxy import docker_as


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh directory of alice's in her (nosuid,nodev) home."""
    path = owned_dir(Path(account("alice").pw_dir) / f"attack-{uuid.uuid4().hex[:8]}", "alice")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


MIG_PROFILES = ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb", "4g.40gb", "2g.20gb", "1g.10gb")
USERS = """users:
  alice:
    group: researcher
  bob:
    group: researcher
  carol:
    gpu_quota: 8
    max_gpus_per_container: 8
    allow_full_gpu: true
    allowed_mig_profiles: any
    max_containers: 20
    max_runtime: 2h
"""


@pytest.fixture
def full(testbed: Testbed, engine: docker.DockerClient) -> Iterator[tuple[ProxyHandle, list[str]]]:
    """A proxy whose every slot carol holds, one container each; bob used a lot lately, alice nothing."""
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8])
    handle.config.write_text(handle.config.read_text().replace("users:\n  bob:\n    group: researcher\n", USERS))
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    with (handle.root / "log" / "events.jsonl").open("a") as log:  # 40 GPU-equivalent-hours of bob's, just ended
        log.write(json.dumps({"ts": stamp, "type": "allocation.release", "user": "bob", "source": "allocator",
                              "details": {"allocation": "a-history", "gpu_equivalents": "2",
                                          "held_seconds": 72000}}) + "\n")
    holders = []
    try:
        for index in range(6):
            holders.append(_hold(handle, f"whole-{index}", "--gpus", "1"))
        for index, profile in enumerate(MIG_PROFILES):
            holders.append(_hold(handle, f"mig-{index}", "--label", f"ds01.request.mig={profile}"))
        yield handle, holders
    finally:
        for container in engine.containers.list(all=True, filters={"label": "ds01.user"}):
            if container.labels.get("ds01.instance") == str((handle.root / "state").resolve()):
                container.remove(force=True)
        stop_proxy(handle, engine)


def _hold(proxy: ProxyHandle, name: str, *gpus: str) -> str:
    made = docker_as(proxy, "carol", "run", "-d", "--name", f"{name}-{uuid.uuid4().hex[:4]}", *gpus, TEST_IMAGE,
                     "sleep", "600")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()
