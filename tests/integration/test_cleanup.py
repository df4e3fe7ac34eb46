"""Reclamation on the test bed with an injected clock: idle windows, warnings, max_runtime, GPU hold, removal,
protections, the dry run, and idle_reclaim's two modes against a queue.json written by the queue's own writer.
Containers, NVML data, CPU figures and users are real; only time is moved."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01 import nvml
from ds01.config import Config, load_config
from ds01.engine import Engine
from ds01.gpus import queuestate
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest
from ds01.gpus.supply import slots_from_inventory
from ds01.ops.cleanup import Cleanup, Decision, LimitsByUid
from ds01.terminals import notify_user
from tests.conftest import REPO, TEST_IMAGE, Testbed, TopologyFile

HOUR = 3600
BOB = pwd.getpwnam("bob")


class World:
    def __init__(self, testbed: Testbed, topology: TopologyFile, root: Path, engine: docker.DockerClient) -> None:
        self.topology = topology
        self.root = root
        self.docker = engine
        self.made: list[Any] = []
        self.config_path = root / "limits.yaml"
        text = (REPO / "config" / "resource-limits.yaml").read_text().replace(
            "users: {}\n", "users:\n  bob:\n    group: researcher\n    idle_timeout: 2h\n    max_runtime: 8h\n"
                           "    gpu_hold_after_stop: 30m\n  alice:\n    group: researcher\n")  # carol: a student
        self.config_path.write_text(text)
        self.messages: list[tuple[int, str]] = []
        self.engine = Engine(testbed.docker_host)

    def config(self, **cleanup: Any) -> Config:
        text = self.config_path.read_text()
        cleanup = {"stop_timeout": "1s", **cleanup}  # busybox's sleep ignores SIGTERM: keep the grace short
        for key, value in cleanup.items():
            text = text.replace(f"  {key}: ", f"  {key}: {value}  # was: ", 1)
        path = self.root / "limits-run.yaml"
        path.write_text(text)
        return load_config(path)

    def inventory(self) -> nvml.Inventory:
        with nvml.session() as gpus:
            return gpus.inventory()

    def gpu_container(self, allocator: Allocator, config: Config, request: GpuRequest, **labels: str) -> Any:
        slots = slots_from_inventory(self.inventory(), frozenset())
        allocation = allocator.request("bob", BOB.pw_uid, config.defaults.with_overrides(
            {"allow_full_gpu": True, "gpu_quota": config.defaults.gpu_quota * 8}), request, slots=slots)
        workspace = self.root / f"ws-{len(self.made)}"
        workspace.mkdir()
        container = self.docker.containers.run(
            TEST_IMAGE, ["sleep", "3600"], detach=True, name=f"cleanup-{os.getpid()}-{len(self.made)}",
            labels={"ds01.user": "bob", "ds01.uid": str(BOB.pw_uid), "ds01.allocation": allocation.id, **labels},
            volumes={str(workspace): {"bind": "/workspace", "mode": "rw"}},
            device_requests=[docker.types.DeviceRequest(driver="nvidia", device_ids=list(allocation.slots),
                                                        capabilities=[["gpu"]])])
        container.reload()
        allocator.bind(allocation.id, container.id, container.name)
        self.made.append(container)
        return container

    def cleanup(self, allocator: Allocator, config: Config) -> Cleanup:
        limits = LimitsByUid(config, datetime.now(UTC))
        return Cleanup(self.root / "state", self.engine, allocator, limits.of_container,
                       waiter_limits=limits.of_waiter,
                       notify=lambda uid, message: self.messages.append((uid, message)) or 1)

    def queue_waits(self, *requests: tuple[str, GpuRequest]) -> None:
        """DS01_STATE_DIR/queue.json as the proxy leaves it, by the queue's own writer: these users' requests wait."""
        now = time.time()
        entries = [queuestate.Entry(f"q-{index}", user, pwd.getpwnam(user).pw_uid, request, "container", now,
                                    now + HOUR) for index, (user, request) in enumerate(requests)]
        queuestate.write(self.root / "state" / queuestate.STATE_FILE, entries, {}, queuestate.WaitHistogram(), now)


@pytest.fixture
def world(testbed: Testbed, topology: TopologyFile, tmp_path: Path, engine: docker.DockerClient,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    (tmp_path / "state").mkdir()
    made = World(testbed, topology, tmp_path, engine)
    yield made
    for container in made.made:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    made.engine.close()


def engine_time(text: str) -> float:
    return datetime.fromisoformat(text[:26]).replace(tzinfo=UTC).timestamp()


def started(container: Any) -> float:
    return engine_time(container.attrs["State"]["StartedAt"])


def decide(world: World, cleanup: Cleanup, config: Config, now: float, dry: bool = False) -> dict[str, Decision]:
    return {d.container: d for d in cleanup.run(config, world.inventory(), now, dry).decisions}


def logged(world: World) -> list[dict[str, Any]]:
    log = world.root / "log" / "events.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def events(world: World) -> list[str]:
    return [event["type"] for event in logged(world)]


def set_utilization(world: World, gpu_uuid: str, percent: int) -> None:
    data = world.topology.read()
    for gpu in data["gpus"]:
        if gpu["uuid"] == gpu_uuid:
            gpu["utilization_gpu"] = percent
    world.topology.write(data)


def test_an_idle_gpu_container_is_warned_then_stopped_then_released_and_removed(world: World) -> None:
    config = world.config(idle_reclaim="always")
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(count=1))
    [gpu] = container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    set_utilization(world, gpu, 0)
    cleanup = world.cleanup(allocator, config)
    t0 = started(container) + HOUR  # past the minimum age
    first = decide(world, cleanup, config, t0)[container.name]
    assert (first.action, "CPU unknown" in first.reason) == ("none", True)  # a baseline is needed for CPU
    assert decide(world, cleanup, config, t0 + 60)[container.name].reason.startswith("idle")
    assert "cleanup.idle_start" in events(world)
    half = decide(world, cleanup, config, t0 + 60 + HOUR)[container.name]
    assert (half.action, "(50%)" in half.reason) == ("warn", True)
    assert world.messages and "will be stopped in 1h" in world.messages[-1][1]
    assert world.messages[-1][0] == BOB.pw_uid
    assert decide(world, cleanup, config, t0 + 60 + HOUR + 60)[container.name].action == "none"  # warned once
    assert decide(world, cleanup, config, t0 + 60 + int(1.8 * HOUR))[container.name].action == "warn"  # 90%
    stop = decide(world, cleanup, config, t0 + 60 + 2 * HOUR + 1)[container.name]
    assert stop.action == "stop" and "idle 2h" in stop.reason
    container.reload()
    assert container.status == "exited"
    assert world.messages[-1][1].startswith(f"your container {container.name} was stopped")
    finished = engine_time(container.attrs["State"]["FinishedAt"])
    held = decide(world, cleanup, config, finished + 29 * 60)[container.name]
    assert held.action == "none" and "GPUs held for 30m" in held.reason
    assert allocator.allocations() != []
    gone = decide(world, cleanup, config, finished + 31 * 60)[container.name]
    assert gone.action == "remove"
    assert allocator.allocations() == []
    with pytest.raises(docker.errors.NotFound):
        world.docker.containers.get(container.id)
    assert Path(world.root / "ws-0").is_dir()  # the workspace is never deleted
    kinds = events(world)
    for kind in ("cleanup.warn", "cleanup.stop", "cleanup.release", "cleanup.remove", "cleanup.idle_end"):
        assert kind in kinds, kind


def test_a_busy_gpu_is_never_idle_and_mig_slices_count_processes(world: World) -> None:
    config = world.config()
    allocator = Allocator(world.root / "state", config.allocation)
    whole = world.gpu_container(allocator, config, GpuRequest(count=1))
    [gpu] = whole.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    set_utilization(world, gpu, 60)
    mig = world.gpu_container(allocator, config, GpuRequest(mig_profile="1g.10gb"))
    [slice_uuid] = mig.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    data = world.topology.read()
    for parent in data["gpus"]:
        for device in parent.get("mig_devices", []):
            if device["uuid"] == slice_uuid:
                device["processes"] = [{"pid": mig.attrs["State"]["Pid"], "used_memory_mib": 500}]
    world.topology.write(data)
    cleanup = world.cleanup(allocator, config)
    t0 = started(whole) + HOUR
    for step in range(4):  # up to 2.5 hours: past the idle timeout, short of any max_runtime warning
        decisions = decide(world, cleanup, config, t0 + step * HOUR // 2)
        for container in (whole, mig):
            assert decisions[container.name].reason.startswith("active"), decisions[container.name]
    assert "cleanup.idle_start" not in events(world)


def test_protections_keepalive_label_and_min_age(world: World) -> None:
    config = world.config()
    allocator = Allocator(world.root / "state", config.allocation)
    protected = world.gpu_container(allocator, config, GpuRequest(count=1), **{"ds01.protected": "true"})
    kept_alive = world.gpu_container(allocator, config, GpuRequest(count=1))
    cleanup = world.cleanup(allocator, config)
    young = decide(world, cleanup, config, started(kept_alive) + 60)
    assert young[kept_alive.name].action == "skip" and "minimum age" in young[kept_alive.name].reason
    (world.root / "ws-1" / ".ds01-keepalive").touch()
    late = started(kept_alive) + 30 * HOUR  # past max_runtime, and the touch is older than keepalive_max_age
    decisions = decide(world, cleanup, config, started(kept_alive) + HOUR)
    assert decisions[kept_alive.name].action == "skip" and "keep-alive" in decisions[kept_alive.name].reason
    decisions = decide(world, cleanup, config, late)
    assert decisions[protected.name].action == "skip" and "ds01.protected" in decisions[protected.name].reason
    assert decisions[kept_alive.name].action == "stop"
    protected.reload()
    assert protected.status == "running"


def test_max_runtime_and_a_kept_stopped_container(world: World) -> None:
    config = world.config(remove_after_release="false")
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(count=1))
    set_utilization(world, container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"][0], 90)
    cleanup = world.cleanup(allocator, config)
    stop = decide(world, cleanup, config, started(container) + 8 * HOUR + 1)[container.name]
    assert stop.action == "stop" and "running 8h" in stop.reason
    container.reload()
    finished = engine_time(container.attrs["State"]["FinishedAt"])
    released = decide(world, cleanup, config, finished + HOUR)[container.name]
    assert released.action == "release" and "kept stopped" in released.reason
    container.reload()
    assert container.status == "exited" and allocator.allocations() == []


def test_dry_run_changes_nothing(world: World) -> None:
    config = world.config()
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(count=1))
    cleanup = world.cleanup(allocator, config)
    before = events(world)
    decision = decide(world, cleanup, config, started(container) + 9 * HOUR + 1, dry=True)[container.name]
    assert decision.action == "stop"
    container.reload()
    assert container.status == "running"
    assert events(world) == before and world.messages == []
    assert not (world.root / "state" / "cleanup.json").exists()


def test_cli_dry_run_prints_each_container_and_why(world: World, testbed: Testbed) -> None:
    config = world.config()
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(count=1))
    env = {**os.environ, "DS01_CONFIG": str(world.config_path), "DS01_STATE_DIR": str(world.root / "state"),
           "DS01_LOG_DIR": str(world.root / "log")}
    result = subprocess.run([str(Path(sys.executable).parent / "ds01"), "cleanup", "--dry-run"], env=env,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith(container.name))
    assert "skip" in line and "minimum age" in line


def idle_past_timeout(world: World, cleanup: Cleanup, config: Config, container: Any) -> float:
    """A CPU baseline an hour after the start, idle from a minute later and warned at 50% and 90% of its 2h
    idle_timeout, whatever waits; the moment that timeout is past."""
    t0 = started(container) + HOUR
    decide(world, cleanup, config, t0)
    assert decide(world, cleanup, config, t0 + 60)[container.name].reason.startswith("idle")
    for fraction in (0.5, 0.9):
        warned = decide(world, cleanup, config, t0 + 60 + fraction * 2 * HOUR)[container.name]
        assert (warned.action, warned.reason.endswith(f"({int(fraction * 100)}%)")) == ("warn", True)
    return t0 + 60 + 2 * HOUR + 1


def test_when_waiting_an_idle_whole_gpu_is_stopped_once_a_request_waits_for_one(world: World) -> None:
    config = world.config()
    assert config.cleanup.idle_reclaim == "when_waiting"  # the shipped file's, as the built-in default
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(count=1))
    set_utilization(world, container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"][0], 0)
    cleanup = world.cleanup(allocator, config)
    late = idle_past_timeout(world, cleanup, config, container)
    kept = decide(world, cleanup, config, late)[container.name]
    assert (kept.action, kept.reason) == ("none", "idle 2h of 2h, but nobody waits for a whole GPU")  # no queue.json
    world.queue_waits(("carol", GpuRequest(count=1)), ("carol", GpuRequest(mig_profile="1g.10gb")))
    kept = decide(world, cleanup, config, late + 600)[container.name]  # a student's --gpus 1 is served from slices
    assert kept.reason == "idle 2h10m of 2h, but nobody waits for a whole GPU"
    container.reload()
    assert container.status == "running"
    assert [e["details"]["fraction"] for e in logged(world) if e["type"] == "cleanup.warn"] == [0.5, 0.9]
    world.queue_waits(("carol", GpuRequest(count=1)), ("alice", GpuRequest(count=1)))  # a researcher's: whole GPUs
    stop = decide(world, cleanup, config, late + 1200)[container.name]  # before bob's max_runtime warning at 4h
    assert (stop.action, stop.reason) == ("stop", "idle 2h20m, limit 2h; 1 waiting request(s) could take a whole "
                                                  "GPU")
    container.reload()
    assert container.status == "exited"
    [stopped] = [e for e in logged(world) if e["type"] == "cleanup.stop"]
    assert (stopped["details"]["reason"], stopped["details"]["waiting_requests"]) == ("idle", 1)
    assert world.messages[-1][1].endswith("(limit 2h), and others wait for its GPUs.")


def test_when_waiting_an_idle_mig_slice_is_stopped_for_a_request_its_profile_serves(world: World) -> None:
    config = world.config()
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(mig_profile="1g.10gb"))
    cleanup = world.cleanup(allocator, config)
    late = idle_past_timeout(world, cleanup, config, container)
    world.queue_waits(("alice", GpuRequest(mig_profile="3g.40gb")), ("alice", GpuRequest(count=1)))
    kept = decide(world, cleanup, config, late)[container.name]
    assert (kept.action, kept.reason) == ("none", "idle 2h of 2h, but nobody waits for a MIG 1g.10gb slice")
    world.queue_waits(("carol", GpuRequest(count=1)))  # a student's --gpus 1: a slice of a profile she may have
    assert decide(world, cleanup, config, late + 60)[container.name].action == "stop"
    container.reload()
    assert container.status == "exited"


def test_when_waiting_with_a_damaged_queue_file_reclaims_as_always_and_says_so(world: World) -> None:
    config = world.config()
    allocator = Allocator(world.root / "state", config.allocation)
    container = world.gpu_container(allocator, config, GpuRequest(count=1))
    set_utilization(world, container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"][0], 0)
    cleanup = world.cleanup(allocator, config)
    late = idle_past_timeout(world, cleanup, config, container)
    (world.root / "state" / queuestate.STATE_FILE).write_text('{"version": 1, "waiting": [')
    outcome = cleanup.run(config, world.inventory(), late, False)
    [error] = outcome.errors
    assert "cannot read the queue's state" in error and "idle_reclaim: always" in error
    [stop] = [d for d in outcome.decisions if d.container == container.name]
    assert stop.action == "stop" and "the queue's state cannot be read" in stop.reason
    container.reload()
    assert container.status == "exited"
    assert "cleanup.queue_unreadable" in events(world)


def test_cli_dry_run_says_why_an_idle_container_is_kept_or_would_be_stopped(world: World) -> None:
    allocator = Allocator(world.root / "state", world.config().allocation)
    container = world.gpu_container(allocator, world.config(), GpuRequest(count=1))
    set_utilization(world, container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"][0], 0)
    now = time.time()
    idle = {"idle_since": now - 3 * HOUR, "cpu_ns": world.engine.cpu_usage_ns(container.id), "cpu_at": now - 60,
            "warned": ["idle@0.5", "idle@0.9"]}  # what earlier runs recorded: idle for 3h, warned twice

    time.sleep(1.5)  # past a min_age of 1s: the container was started a moment ago

    def dry_run(**cleanup: str) -> tuple[int, dict[str, Any], str]:
        world.config(min_age="1s", **cleanup)
        (world.root / "state" / "cleanup.json").write_text(json.dumps({container.id: idle}))
        env = {**os.environ, "DS01_CONFIG": str(world.root / "limits-run.yaml"),
               "DS01_STATE_DIR": str(world.root / "state"), "DS01_LOG_DIR": str(world.root / "log")}
        result = subprocess.run([str(Path(sys.executable).parent / "ds01"), "cleanup", "--dry-run", "--format",
                                 "json"], env=env, capture_output=True, text=True, check=False, timeout=120)
        [row] = [row for row in json.loads(result.stdout) if row["container"] == container.name]
        return result.returncode, row, result.stderr

    code, row, _ = dry_run()
    assert (code, row["action"], row["reason"]) == (0, "none", "idle 3h of 2h, but nobody waits for a whole GPU")
    world.queue_waits(("alice", GpuRequest(count=1)))
    code, row, _ = dry_run()
    assert (code, row["action"]) == (0, "would stop")
    assert row["reason"] == "idle 3h, limit 2h; 1 waiting request(s) could take a whole GPU"
    (world.root / "state" / queuestate.STATE_FILE).write_text("not json")
    code, row, stderr = dry_run()
    assert (code, row["action"]) == (1, "would stop")
    assert "ds01: error: cannot read the queue's state" in stderr and "Traceback" not in stderr
    (world.root / "state" / queuestate.STATE_FILE).unlink()
    code, row, _ = dry_run(idle_reclaim="always")
    assert (code, row["action"], row["reason"]) == (0, "would stop", "idle 3h, limit 2h")
    container.reload()
    assert container.status == "running"
    assert not (world.root / "log" / "events.jsonl").exists() or "cleanup.stop" not in events(world)


def test_notify_user_writes_to_the_users_terminals() -> None:
    master, replica = os.openpty()
    try:
        path = os.ttyname(replica)
        os.chown(path, 54321, -1)
        assert notify_user(54321, "hello from ds01") >= 1
        assert b"hello from ds01" in os.read(master, 4096)
        assert notify_user(54322, "not for you") == 0
    finally:
        os.close(master)
        os.close(replica)
