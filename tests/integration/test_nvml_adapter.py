"""ds01.nvml against the simulated driver: typed inventory, partial failure, XID events, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ds01 import nvml
from ds01.errors import NvmlError
from tests.conftest import TopologyFile

MIB = 1024 * 1024
DS01 = [str(Path(sys.executable).parent / "ds01")]


def test_inventory_matches_topology(topology: TopologyFile) -> None:
    data = topology.read()
    data["gpus"][0]["processes"] = [{"pid": 4242, "used_memory_mib": 2048}, {"pid": 4243, "used_memory_mib": 512}]
    data["gpus"][6]["mig_devices"][1]["processes"] = [{"pid": 4343, "used_memory_mib": 1000}]
    topology.write(data)

    with nvml.session() as gpus:
        inventory = gpus.inventory()

    assert inventory.driver_version == data["driver_version"]
    assert inventory.cuda_driver_version == data["cuda_driver_version"]
    assert len(inventory.gpus) == len(data["gpus"]) == 8
    first = inventory.gpus[0]
    assert isinstance(first, nvml.Gpu)
    assert first.uuid == data["gpus"][0]["uuid"]
    assert first.name == data["gpus"][0]["name"]
    assert first.memory_total_bytes == data["gpus"][0]["memory_total_mib"] * MIB
    assert first.memory_used_bytes == 2560 * MIB
    assert first.utilization_gpu_percent == data["gpus"][0]["utilization_gpu"]
    assert first.power_watts == pytest.approx(data["gpus"][0]["power_w"])
    assert first.pci_bus_id.lower() == data["gpus"][0]["pci_bus_id"].lower()
    assert [(p.pid, p.used_memory_bytes, p.device_uuid) for p in first.processes] == [
        (4242, 2048 * MIB, first.uuid), (4243, 512 * MIB, first.uuid)]
    assert not first.mig_mode and first.mig_devices == ()


def test_mig_devices_are_typed_with_profile_and_slices(topology: TopologyFile) -> None:
    data = topology.read()
    data["gpus"][6]["mig_devices"][1]["processes"] = [{"pid": 4343, "used_memory_mib": 1000}]
    topology.write(data)
    with nvml.session() as gpus:
        inventory = gpus.inventory()

    for index in (6, 7):
        gpu = inventory.gpus[index]
        assert isinstance(gpu, nvml.Gpu) and gpu.mig_mode
        expected = data["gpus"][index]["mig_devices"]
        assert [m.uuid for m in gpu.mig_devices] == [m["uuid"] for m in expected]
        assert [m.profile for m in gpu.mig_devices] == [m["profile"] for m in expected]
        assert [m.slices for m in gpu.mig_devices] == [m["slices"] for m in expected]
        assert [(m.gpu_instance_id, m.compute_instance_id) for m in gpu.mig_devices] == [
            (m["gi_id"], m["ci_id"]) for m in expected]
        assert all(m.parent_uuid == gpu.uuid for m in gpu.mig_devices)
    mig = inventory.gpus[6].mig_devices[1]  # type: ignore[union-attr]
    assert [(p.pid, p.device_uuid) for p in mig.processes] == [(4343, mig.uuid)]
    assert mig.memory_used_bytes == 1000 * MIB
    assert [p.pid for p in inventory.gpus[6].processes] == [4343]  # type: ignore[union-attr]


def test_lost_gpu_is_data_and_the_others_still_answer(topology: TopologyFile) -> None:
    data = topology.read()
    data["gpus"][3]["lost"] = True
    topology.write(data)
    with nvml.session() as gpus:
        inventory = gpus.inventory()
    lost = inventory.gpus[3]
    assert isinstance(lost, nvml.UnavailableGpu)
    assert lost.health.reason == "lost"
    assert len(inventory.available) == 7
    assert [g.index for g in inventory.available] == [0, 1, 2, 4, 5, 6, 7]


def test_edits_are_seen_within_one_session(topology: TopologyFile) -> None:
    with nvml.session() as gpus:
        assert gpus.inventory().gpus[1].processes == ()  # type: ignore[union-attr]
        data = topology.read()
        data["gpus"][1]["processes"] = [{"pid": 777, "used_memory_mib": 64}]
        topology.write(data)
        assert [p.pid for p in gpus.inventory().gpus[1].processes] == [777]  # type: ignore[union-attr]


def test_xid_watcher_delivers_new_events_and_times_out(topology: TopologyFile) -> None:
    data = topology.read()
    uuid = data["gpus"][2]["uuid"]
    with nvml.session() as gpus:
        watcher = gpus.xid_watcher([uuid])
        try:
            assert watcher.wait(50) is None
            data["gpus"][2]["xid_events"] = [{"xid": 79}]
            topology.write(data)
            event = watcher.wait(2000)
            assert event is not None
            assert (event.gpu_uuid, event.xid) == (uuid, 79)
        finally:
            watcher.close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "no such file"), ("{not json", "json"), (json.dumps({"gpus": "eight"}), "gpus")],
)
def test_bad_topology_is_a_clear_error_naming_the_file(
    topology: TopologyFile, content: str | None, problem: str
) -> None:
    if content is None:
        topology.path.unlink()
    else:
        topology.path.write_text(content)
    with pytest.raises(NvmlError) as error, nvml.session():
        pass
    message = str(error.value)
    assert str(topology.path) in message
    assert problem in message.lower()


def test_cli_json_lists_every_gpu_and_mig_device(topology: TopologyFile) -> None:
    run = subprocess.run([*DS01, "gpus", "--json"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)
    expected = topology.read()["gpus"]
    assert [g["uuid"] for g in listed["gpus"]] == [g["uuid"] for g in expected]
    assert [m["uuid"] for m in listed["gpus"][7]["mig_devices"]] == [m["uuid"] for m in expected[7]["mig_devices"]]


def test_cli_table_shows_mig_rows(topology: TopologyFile) -> None:
    run = subprocess.run([*DS01, "gpus"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "6.0" in run.stdout and "3g.40gb" in run.stdout


def test_cli_bad_topology_exits_1_with_message_and_no_traceback(topology: TopologyFile) -> None:
    topology.path.write_text("[]")
    run = subprocess.run([*DS01, "gpus"], capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert str(topology.path) in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_without_driver_library_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([*DS01, "gpus"], capture_output=True, text=True, check=False, env=env)
    assert run.returncode == 1
    assert "libnvidia-ml.so.1" in run.stderr and "no NVIDIA driver" in run.stderr
    assert "Traceback" not in run.stderr
