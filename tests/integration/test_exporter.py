"""The exporter end to end: real containers made through the proxy, a real host process, the fake NVML
reporting their real host PIDs, and the metrics attributing each to the right user and container."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, TopologyFile, load_topology
from tests.integration.test_prometheus_assets import (
    DASHBOARD,
    panel_queries,
    query,
    start_prometheus,
    stop_prometheus,
    write_prometheus_config,
)

DS01 = str(Path(sys.executable).parent / "ds01")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ExporterHandle:
    process: subprocess.Popen[str]
    port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        status, text = self.get("/metrics")
        assert status == 200
        return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        found = [v for n, ls, v in self.samples() if n == name and all(ls.get(k) == w for k, w in labels.items())]
        return sum(found) if found else None

    def wait_for(self, name: str, expected: float, **labels: str) -> None:
        deadline = time.monotonic() + 30
        while self.value(name, **labels) != expected:
            assert time.monotonic() < deadline, (
                f"{name}{labels} is {self.value(name, **labels)}, not {expected}; health: {self.get('/health')}")
            time.sleep(0.2)


def start_exporter(env: dict[str, str], *extra: str) -> ExporterHandle:
    port = free_port()
    process = subprocess.Popen([DS01, "exporter", "--listen", f"127.0.0.1:{port}", "--interval", "0.5", *extra],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    handle = ExporterHandle(process, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if handle.get("/health")[0] in (200, 503):
                return handle
        except OSError:
            pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the exporter did not start: {process.communicate()}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Scene:
    topology: TopologyFile
    exporter: ExporterHandle
    alice: Any
    bob: Any
    rogue: Any
    carol_pid: int


@pytest.fixture(scope="module")
def scene(proxy: ProxyHandle, testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    client = docker.DockerClient(base_url=testbed.docker_host)
    topology = TopologyFile(tmp_path_factory.mktemp("exporter") / "topology.json")
    topology.write(load_topology("a100-8gpu"))
    env = {**proxy.env, "FAKE_NVML_TOPOLOGY": str(topology.path), "DOCKER_HOST": testbed.docker_host}
    for user, args in (("alice", ["--gpus", "1"]), ("bob", ["--gpus", "1"])):
        made = proxy.as_user(user, "docker", "run", "-d", "--name", f"exp-{user}", *args, TEST_IMAGE, "sleep", "600")
        assert made.returncode == 0, made.stderr
    rogue = client.containers.run(TEST_IMAGE, ["sleep", "600"], name="exp-legacy._.1003", detach=True)
    rogue.reload()  # the pid is known once it runs
    carol = subprocess.Popen(["setpriv", "--reuid", "carol", "--regid", "carol", "--init-groups", "sleep", "600"])
    alice, bob = client.containers.get("exp-alice"), client.containers.get("exp-bob")
    data = topology.read()
    by_uuid = {g["uuid"]: g for g in data["gpus"]}
    migs = {m["uuid"]: m for g in data["gpus"] for m in g.get("mig_devices", [])}
    for container, used in ((alice, 3000), (bob, 5000)):
        [device] = container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
        target = migs.get(device) or by_uuid[device]
        target["processes"] = [{"pid": container.attrs["State"]["Pid"], "used_memory_mib": used}]
    data["gpus"][0]["processes"] = [{"pid": carol.pid, "used_memory_mib": 14336},
                                    {"pid": rogue.attrs["State"]["Pid"], "used_memory_mib": 1024},
                                    {"pid": 999_999_999, "used_memory_mib": 1}]  # a process that is gone
    topology.write(data)
    exporter = start_exporter(env)
    try:
        yield Scene(topology, exporter, alice, bob, rogue, carol.pid)
    finally:
        stop(exporter.process)
        carol.kill()
        carol.wait()
        for container in (alice, bob, rogue):
            container.remove(force=True)
        client.close()


def test_processes_are_attributed_to_users_and_containers(scene: Scene) -> None:
    exporter = scene.exporter
    # carol's host process, and the legacy container her uid names: both outside ds01-managed containers.
    exporter.wait_for("ds01_untracked_gpu_processes", 2, user="carol")
    alice_device = scene.alice.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"][0]
    assert exporter.value("ds01_gpu_processes", user="alice", container="exp-alice", kind="container",
                          UUID=alice_device) == 1
    assert exporter.value("ds01_gpu_process_memory_bytes", user="bob", container="exp-bob") == 5000 * 2**20
    assert exporter.value("ds01_container_gpu_memory_bytes", container="exp-alice", user="alice") == 3000 * 2**20
    gpu0 = scene.topology.read()["gpus"][0]["uuid"]
    assert exporter.value("ds01_untracked_gpu_memory_bytes", user="carol", gpu_uuid=gpu0) == (14336 + 1024) * 2**20
    assert exporter.value("ds01_gpu_processes", user="carol", container="", kind="host") == 1
    # A container ds01 did not make, named NAME._.UID by the old system: its owner is inferred from the uid.
    assert exporter.value("ds01_unmanaged_container_gpu_processes", container="exp-legacy._.1003") == 1
    assert exporter.value("ds01_gpu_processes", kind="unmanaged_container", user="carol") == 1
    assert exporter.value("ds01_untracked_gpu_processes", user="alice") is None
    samples = exporter.samples()
    assert not any("pid" in labels for _, labels, _ in samples)


def test_allocations_limits_and_hardware_are_exported(scene: Scene) -> None:
    exporter = scene.exporter
    exporter.wait_for("ds01_user_gpu_equivalents", 1, user="bob")  # a researcher's whole GPU
    assert exporter.value("ds01_user_gpu_quota", user="bob", group="researcher") == 2
    assert exporter.value("ds01_container_gpu_equivalents", container="exp-alice", user="alice") == pytest.approx(
        float(scene.alice.labels["ds01.gpu_equivalents"].split("/")[0]) / 7)
    assert exporter.value("ds01_containers", user="alice", state="running") == 1
    assert exporter.value("ds01_gpu_info", gpu="6.0", GPU_I_PROFILE="3g.40gb") == 1
    assert exporter.value("ds01_gpu_utilization_ratio", gpu="0") == pytest.approx(0.37)
    assert exporter.value("ds01_gpu_healthy", gpu="2") == 1
    assert (exporter.value("ds01_events_total", type="proxy.allow") or 0) > 0
    assert exporter.value("ds01_exporter_source_up", source="engine") == 1
    assert exporter.get("/health")[0] == 200


def test_xid_events_are_counted_and_quarantine_the_gpu(scene: Scene, proxy: ProxyHandle) -> None:
    data = scene.topology.read()
    data["gpus"][4]["xid_events"] = [{"xid": 79}]
    scene.topology.write(data)
    scene.exporter.wait_for("ds01_gpu_last_xid", 79, gpu="4")
    assert scene.exporter.value("ds01_gpu_xid_errors_total", gpu="4", xid="79") == 1
    recorded = json.loads((proxy.root / "state" / "gpu-health.json").read_text())
    assert recorded[data["gpus"][4]["uuid"]]["xid"] == 79


def test_a_lost_gpu_degrades_health_but_not_the_other_gpus(scene: Scene) -> None:
    data = scene.topology.read()
    errors_before = scene.exporter.value("ds01_exporter_errors_total", source="nvml") or 0
    data["gpus"][3]["lost"] = True
    scene.topology.write(data)
    try:
        scene.exporter.wait_for("ds01_gpu_healthy", 0, gpu="3")
        assert scene.exporter.value("ds01_gpu_memory_total_bytes", gpu="5") == 81920 * 2**20
        assert (scene.exporter.value("ds01_exporter_errors_total", source="nvml") or 0) > errors_before
        status, body = scene.exporter.get("/health")
        assert status == 503 and json.loads(body)["status"] == "degraded"
    finally:
        data["gpus"][3]["lost"] = False
        scene.topology.write(data)
    scene.exporter.wait_for("ds01_gpu_healthy", 1, gpu="3")


def test_gpu_metrics_are_served_with_the_engine_down(scene: Scene, proxy: ProxyHandle) -> None:
    down = {**proxy.env, "FAKE_NVML_TOPOLOGY": str(scene.topology.path),
            "DS01_RUN_DIR": str(proxy.root / "run-down"), "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    exporter = start_exporter(down)
    try:
        exporter.wait_for("ds01_exporter_source_up", 0, source="engine")
        assert exporter.value("ds01_gpu_memory_total_bytes", gpu="0") == 81920 * 2**20
        assert (exporter.value("ds01_exporter_errors_total", source="engine") or 0) >= 1
        assert exporter.value("ds01_gpu_processes", user="carol", kind="host") == 1
        assert exporter.get("/health")[0] == 503
    finally:
        stop(exporter.process)


def test_a_second_exporter_refuses_to_start(scene: Scene, proxy: ProxyHandle) -> None:
    env = {**proxy.env, "FAKE_NVML_TOPOLOGY": str(scene.topology.path)}
    second = subprocess.run([DS01, "exporter", "--listen", f"127.0.0.1:{free_port()}"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1 and "already running" in second.stderr
    assert scene.exporter.process.poll() is None


def test_bad_listen_address_is_a_usage_error(proxy: ProxyHandle) -> None:
    result = subprocess.run([DS01, "exporter", "--listen", "nowhere"], env={**os.environ, **proxy.env},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "ADDRESS:PORT" in result.stderr


def test_a_real_prometheus_scrapes_and_every_dashboard_panel_has_data(scene: Scene, tmp_path: Path) -> None:
    data = scene.topology.read()  # the XID panels need an XID: the test above made one, or this does
    if not data["gpus"][4].get("xid_events"):
        data["gpus"][4]["xid_events"] = [{"xid": 79}]
        scene.topology.write(data)
    port = free_port()
    write_prometheus_config(tmp_path, port, f"127.0.0.1:{scene.exporter.port}")
    prometheus = start_prometheus(tmp_path, port)
    try:
        deadline = time.monotonic() + 60
        while not query(port, "ds01:gpu_allocated_equivalents:sum"):
            assert time.monotonic() < deadline, "Prometheus never scraped the exporter and recorded the rules"
            time.sleep(0.5)
        assert [float(s["value"][1]) for s in query(port, 'up{job="ds01"}')] == [1.0]
        time.sleep(3)  # a few scrapes, so range functions have two samples
        dashboard = json.loads(DASHBOARD.read_text())
        empty = [expr for expr in panel_queries(dashboard) if not query(port, expr)]
        assert empty == [], f"panels without data: {empty}"
    finally:
        stop_prometheus(prometheus)
