"""The test bed itself: a private engine with the stand-in NVIDIA hook, and its env output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import TEST_IMAGE, TESTBED_SCRIPT, Testbed, load_topology


def _docker(testbed: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": testbed.docker_host}
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, check=False, timeout=120)


def test_mig_device_request_reaches_container_and_hook(testbed: Testbed, tmp_path: Path) -> None:
    mig_uuid = load_topology("a100-8gpu")["gpus"][6]["mig_devices"][0]["uuid"]
    cidfile = tmp_path / "cid"
    run = _docker(testbed, "run", "--rm", "--cidfile", str(cidfile), "--gpus", f'"device={mig_uuid}"',
                  TEST_IMAGE, "env")
    assert run.returncode == 0, run.stderr
    assert f"NVIDIA_VISIBLE_DEVICES={mig_uuid}" in run.stdout.splitlines()
    record = testbed.hook_record_for(cidfile.read_text().strip())
    assert record["devices"] == [mig_uuid]
    assert record["args"] == ["prestart"]


def test_two_devices_are_recorded_in_order(testbed: Testbed, tmp_path: Path) -> None:
    gpus = load_topology("a100-8gpu")["gpus"]
    wanted = [gpus[0]["uuid"], gpus[7]["mig_devices"][1]["uuid"]]
    cidfile = tmp_path / "cid"
    run = _docker(testbed, "run", "--rm", "--cidfile", str(cidfile), "--gpus", f'"device={",".join(wanted)}"',
                  TEST_IMAGE, "true")
    assert run.returncode == 0, run.stderr
    assert testbed.hook_record_for(cidfile.read_text().strip())["devices"] == wanted


def test_container_without_gpus_gets_no_hook_call(testbed: Testbed, tmp_path: Path) -> None:
    cidfile = tmp_path / "cid"
    run = _docker(testbed, "run", "--rm", "--cidfile", str(cidfile), TEST_IMAGE, "env")
    assert run.returncode == 0, run.stderr
    assert "NVIDIA_VISIBLE_DEVICES" not in run.stdout
    container_id = cidfile.read_text().strip()
    recorded = [json.loads(line)["container_id"] for line in testbed.hook_records.read_text().splitlines()]
    assert container_id not in recorded


def test_engine_is_private(testbed: Testbed) -> None:
    assert testbed.docker_host == f"unix://{testbed.dir}/docker.sock"
    info = _docker(testbed, "info", "--format", "{{json .}}")
    assert info.returncode == 0, info.stderr
    details = json.loads(info.stdout)
    assert details["DockerRootDir"].startswith(str(testbed.dir))
    assert details["CgroupDriver"] == "cgroupfs"


def test_env_output_works_in_a_new_shell(testbed: Testbed) -> None:
    script = f'eval "$({TESTBED_SCRIPT} env)" && env'
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                           env={"PATH": os.environ["PATH"]})
    seen = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    for name in ("DOCKER_HOST", "LD_LIBRARY_PATH", "FAKE_NVML_TOPOLOGY", "DS01_CONFIG", "DS01_STATE_DIR",
                 "DS01_LOG_DIR", "DS01_RUN_DIR"):
        assert seen[name] == testbed.env[name], name


def test_up_is_idempotent(testbed: Testbed) -> None:
    pid_before = (testbed.dir / "docker" / "dockerd.pid").read_text()
    again = subprocess.run([str(TESTBED_SCRIPT), "up"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert (testbed.dir / "docker" / "dockerd.pid").read_text() == pid_before


def test_test_users_exist(testbed: Testbed) -> None:
    for user in ("alice", "bob", "carol", "opsadmin"):
        assert subprocess.run(["id", user], capture_output=True, check=False).returncode == 0, user
    groups = subprocess.run(["id", "-nG", "opsadmin"], capture_output=True, text=True, check=True).stdout.split()
    assert "ds01-admin" in groups
