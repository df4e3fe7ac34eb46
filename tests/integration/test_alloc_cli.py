"""`ds01 alloc|reconcile|limits` end to end: real config, fake NVML, real engine, real state files."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01 import nvml
from ds01.config import load_config
from ds01.exporter.service import XidLog
from ds01.gpus import quarantine
from ds01.gpus.supply import current_slots
from ds01.paths import paths_from_env
from tests.conftest import REPO, TEST_IMAGE, Testbed, TopologyFile

DS01 = str(Path(sys.executable).parent / "ds01")


@pytest.fixture
def env(testbed: Testbed, topology: TopologyFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private state dir, log dir and config for this test, in os.environ and for subprocesses."""
    config = tmp_path / "resource-limits.yaml"
    text = (REPO / "config" / "resource-limits.yaml").read_text()
    ldap = (f"identity:\n  source: ldap\n  ldap:\n    uri: {testbed.env['DS01_TEST_LDAP_URI']}\n"
            f"    base_dn: dc=ds01,dc=test\n    timeout: 2s\n")
    config.write_text(text.replace("identity:\n  source: nss\n", ldap).replace(
        "users: {}\n", "users:\n  bob:\n    group: researcher\n"))
    values = {"DS01_CONFIG": str(config), "DS01_STATE_DIR": str(tmp_path / "state"),
              "DS01_LOG_DIR": str(tmp_path / "log"), "FAKE_NVML_TOPOLOGY": str(topology.path)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


@pytest.fixture
def made(engine: docker.DockerClient) -> Iterator[list[Any]]:
    """Containers a test creates; removed at teardown."""
    containers: list[Any] = []
    yield containers
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def ds01(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DS01, *args], capture_output=True, text=True, env=env, check=False, timeout=60)


def events(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["DS01_LOG_DIR"]) / "events.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_request_bind_list_release(env: dict[str, str], engine: docker.DockerClient, made: list[Any]) -> None:
    requested = ds01(env, "alloc", "request", "--user", "alice", "--gpus", "1", "--json")
    assert requested.returncode == 0, requested.stderr
    grant = json.loads(requested.stdout)
    assert grant["user"] == "alice" and grant["expires_at"] and grant["container"] is None
    assert len(grant["slots"]) == 1 and grant["slots"][0].startswith("MIG-")  # students get MIG slices
    assert grant["gpu_equivalents"] == pytest.approx(3 / 7, abs=1e-4) and grant["gpu_equivalents_exact"] == "3/7"

    container = engine.containers.create(TEST_IMAGE, ["sleep", "60"], name=f"bind-{grant['id']}")
    made.append(container)
    bound = ds01(env, "alloc", "bind", grant["id"], container.name)
    assert bound.returncode == 0, bound.stderr
    [listed] = json.loads(ds01(env, "alloc", "list", "--json").stdout)
    assert (listed["id"], listed["container"], listed["expires_at"]) == (grant["id"], container.id, None)

    assert ds01(env, "alloc", "release", grant["id"]).returncode == 0
    assert json.loads(ds01(env, "alloc", "list", "--json").stdout) == []
    kinds = [e["type"] for e in events(env)]
    assert kinds == ["allocation.reserve", "allocation.bind", "allocation.release"]


def test_denials_exit_3_with_reason(env: dict[str, str], made: list[Any], engine: docker.DockerClient) -> None:
    profile = ds01(env, "alloc", "request", "--user", "alice", "--mig", "4g.40gb", "--json")
    assert profile.returncode == 3
    assert json.loads(profile.stdout) | {"message": ""} == {
        "denied": True, "reason": "mig_profile_not_allowed", "message": ""}
    too_many = ds01(env, "alloc", "request", "--user", "alice", "--gpus", "2", "--json")
    assert (too_many.returncode, json.loads(too_many.stdout)["reason"]) == (3, "per_container_max")

    first = json.loads(ds01(env, "alloc", "request", "--user", "alice", "--mig", "3g.40gb", "--json").stdout)
    container = engine.containers.create(TEST_IMAGE, ["true"], name=f"quota-{first['id']}")
    made.append(container)
    assert ds01(env, "alloc", "bind", first["id"], container.id).returncode == 0
    for _ in range(2):  # two 2g.20gb slices exist: 3/7 + 2/7 + 2/7 fills a quota of 1
        assert ds01(env, "alloc", "request", "--user", "alice", "--mig", "2g.20gb").returncode == 0
    over = ds01(env, "alloc", "request", "--user", "alice", "--mig", "1g.10gb", "--json")
    assert over.returncode == 3
    denial = json.loads(over.stdout)
    assert denial["reason"] == "quota"
    assert f"container {container.name}" in denial["message"]
    assert "Traceback" not in over.stderr and denial["message"] in over.stderr


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    assert ds01(env, "alloc", "request", "--user", "alice", "--gpus", "two").returncode == 2
    assert ds01(env, "alloc", "request", "--user", "alice", "--gpus", "1", "--ttl", "soon").returncode == 2
    assert ds01(env, "alloc", "request", "--user", "alice").returncode == 2


def test_lost_gpus_are_never_handed_out(env: dict[str, str], topology: TopologyFile) -> None:
    data = topology.read()
    for index in range(5):
        data["gpus"][index]["lost"] = True
    topology.write(data)
    healthy_whole = data["gpus"][5]["uuid"]
    grant = json.loads(ds01(env, "alloc", "request", "--user", "bob", "--gpus", "2", "--json").stdout or "{}")
    assert grant.get("reason") == "capacity", grant  # bob (researcher) wants 2 whole GPUs; only one is healthy
    one = json.loads(ds01(env, "alloc", "request", "--user", "bob", "--gpus", "1", "--json").stdout)
    assert one["slots"] == [healthy_whole]


def test_recent_critical_xid_quarantines_a_gpu(env: dict[str, str], topology: TopologyFile) -> None:
    paths, config = paths_from_env(), load_config()
    data = topology.read()
    sick = data["gpus"][2]["uuid"]
    xids, stop = XidLog(paths), threading.Event()
    with nvml.session() as gpus:
        watcher = gpus.xid_watcher([sick])  # registered before the events, which NVML gives only to those watching
        thread = threading.Thread(target=xids.follow, args=(watcher, config.allocation, stop))
        thread.start()
        try:
            data["gpus"][2]["xid_events"] = [{"xid": 31}, {"xid": 79}]  # 31 is not critical, 79 is
            topology.write(data)
            deadline = time.monotonic() + 10
            while sick not in quarantine.quarantined(paths.state_dir, config.allocation, time.time()):
                assert time.monotonic() < deadline, "the XID was never recorded"
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
            watcher.close()
    counted = xids.counts()[sick]
    assert (counted.last, counted.by_code) == (79, {31: 1, 79: 1})
    assert sick not in {slot.uuid for slot in current_slots(paths, config)}
    later = time.time() + config.allocation.xid_quarantine_seconds + 1
    assert sick not in quarantine.quarantined(paths.state_dir, config.allocation, later)
    logged = [(e["details"]["xid"], e["details"]["critical"]) for e in events(env) if e["type"] == "gpu.xid"]
    assert logged == [(31, False), (79, True)]


def test_reconcile_releases_orphans_and_reports_unallocated(
    env: dict[str, str], engine: docker.DockerClient, made: list[Any], topology: TopologyFile
) -> None:
    grant = json.loads(ds01(env, "alloc", "request", "--user", "bob", "--gpus", "1", "--json").stdout)
    doomed = engine.containers.create(TEST_IMAGE, ["true"], name=f"orphan-{grant['id']}")
    assert ds01(env, "alloc", "bind", grant["id"], doomed.id).returncode == 0
    doomed.remove()
    rogue_gpu = topology.read()["gpus"][0]["uuid"]
    rogue = engine.containers.create(TEST_IMAGE, ["true"], name=f"rogue-{grant['id']}", device_requests=[
        docker.types.DeviceRequest(driver="nvidia", device_ids=[rogue_gpu], capabilities=[["gpu"]])])
    made.append(rogue)

    dry = ds01(env, "reconcile", "--dry-run")
    assert dry.returncode == 1
    assert f"would release {grant['id']}" in dry.stdout and rogue.name in dry.stderr
    assert len(json.loads(ds01(env, "alloc", "list", "--json").stdout)) == 1  # dry run changed nothing

    real = ds01(env, "reconcile")
    assert real.returncode == 1
    assert json.loads(ds01(env, "alloc", "list", "--json").stdout) == []
    kinds = [e["type"] for e in events(env)]
    assert "reconcile.unallocated_gpu_container" in kinds
    released = [e for e in events(env) if e["type"] == "allocation.release" and e["source"] == "reconcile"]
    assert [e["details"]["allocation"] for e in released] == [grant["id"]]
    rogue.remove()
    made.remove(rogue)
    assert ds01(env, "reconcile").returncode == 0


def test_limits_shows_effective_values_and_usage(env: dict[str, str]) -> None:
    grant = json.loads(ds01(env, "alloc", "request", "--user", "bob", "--gpus", "1", "--json").stdout)
    shown = ds01(env, "limits", "bob", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["group"] == "researcher"
    assert report["limits"]["gpu_quota"] == "2" and report["limits"]["max_runtime"] == "3d"
    assert report["usage"] == {"gpu_equivalents": 1.0, "allocations": 1, "containers": 0}
    table = ds01(env, "limits", "bob")
    assert "gpu_quota" in table.stdout and "researcher" in table.stdout
    assert ds01(env, "alloc", "release", grant["id"]).returncode == 0


def test_ldap_user_gets_the_group_of_their_ldap_groups(env: dict[str, str]) -> None:
    shown = ds01(env, "limits", "jane.doe@lab.example", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["group"] == "researcher"  # ml-researchers, from LDAP memberUid
    assert report["sanitized"].startswith("jane_doe_lab_example_")
    grant = json.loads(ds01(env, "alloc", "request", "--user", "jane.doe@lab.example", "--gpus", "1", "--json").stdout)
    assert grant["user"] == report["sanitized"] and grant["slots"][0].startswith("GPU-")


def test_unknown_user_is_a_clear_error(env: dict[str, str]) -> None:
    result = ds01(env, "limits", "no-such-user-here")
    assert result.returncode == 1
    assert "no-such-user-here" in result.stderr and "Traceback" not in result.stderr
