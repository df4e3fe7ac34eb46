"""`ds01 doctor` against the test bed: a real proxy and engine, the fake NVML, real groups and sockets.

Scratch groups stand in for `docker`; the real docker group is never changed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01.cli import new_parser, run
from ds01.cli.admin import doctor as doctor_cmd
from ds01.ops.install import Installer
from tests.conftest import REPO, ProxyHandle, Testbed, TopologyFile

SCRATCH = "ds01-doctest"


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    """Run `ds01 doctor --format json ARGV`: the exit code, the checks by name, and stderr."""
    parser = new_parser("ds01", "test", "ds01 doctor")
    doctor_cmd.register(parser.add_subparsers())
    code = run(parser, ["doctor", "--format", "json", *argv])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] == (code == 0)
    return code, {check["name"]: check for check in report["checks"]}, captured.err


@pytest.fixture
def scratch_group() -> Iterator[str]:
    """A docker-like group that exists only for one test."""
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(["groupdel", SCRATCH], check=True, capture_output=True)
    subprocess.run(["groupadd", SCRATCH], check=True)
    try:
        yield SCRATCH
    finally:
        subprocess.run(["groupdel", SCRATCH], check=True)


@pytest.fixture
def bed(testbed: Testbed, topology: TopologyFile, proxy: ProxyHandle,
        monkeypatch: pytest.MonkeyPatch) -> ProxyHandle:
    monkeypatch.setenv("DS01_CONFIG", str(proxy.config))
    monkeypatch.setenv("DS01_RUN_DIR", str(proxy.socket.parent))
    return proxy


def test_a_working_bed_passes_engine_proxy_nvml_and_config(
        testbed: Testbed, bed: ProxyHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks, err = doctor(capsys, "--proxy-socket", str(bed.socket), "--engine", testbed.docker_host,
                               "--root", str(tmp_path))
    assert err == ""
    for name in ("config", "engine", "proxy", "proxy socket", "engine socket", "docker group", "nvml"):
        assert checks[name]["status"] == "PASS", checks[name]
    assert "8 GPUs answer" in checks["nvml"]["detail"]
    assert str(bed.socket) in checks["proxy"]["detail"]
    # Nothing is installed under that root, and the doctor says so.
    assert checks["udev rules"]["status"] == "FAIL" and "ds01 install" in checks["udev rules"]["fix"]
    assert code == 1


def test_the_proxy_socket_defaults_to_the_run_dir(testbed: Testbed, bed: ProxyHandle,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, checks, _ = doctor(capsys, "--engine", testbed.docker_host)
    assert checks["proxy"]["status"] == "PASS"


def test_a_missing_proxy_socket_fails_with_a_fix(testbed: Testbed, bed: ProxyHandle, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "run" / "docker.sock"
    code, checks, _ = doctor(capsys, "--proxy-socket", str(missing), "--engine", testbed.docker_host)
    assert code == 1
    assert checks["proxy"]["status"] == "FAIL"
    assert f"no socket at {missing}" in checks["proxy"]["detail"]
    assert "systemctl enable --now ds01-proxy" in checks["proxy"]["fix"]
    assert checks["engine"]["status"] == "PASS"
    # The table form puts the fix under the failure.
    parser = new_parser("ds01", "test", "ds01 doctor")
    doctor_cmd.register(parser.add_subparsers())
    assert run(parser, ["doctor", "--proxy-socket", str(missing), "--engine", testbed.docker_host]) == 1
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  proxy "))
    assert "fix: start it: systemctl enable --now ds01-proxy" in lines[at + 1]
    assert lines[-1].endswith("failed")


def test_an_unreachable_engine_fails(bed: ProxyHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks, _ = doctor(capsys, "--proxy-socket", str(bed.socket), "--engine", f"unix://{tmp_path}/none.sock")
    assert code == 1
    assert checks["engine"]["status"] == "FAIL" and "dockerd" in checks["engine"]["fix"]
    assert checks["engine socket"]["status"] == "FAIL"


def test_regular_users_in_a_docker_like_group_are_reported(
        testbed: Testbed, bed: ProxyHandle, scratch_group: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, checks, _ = doctor(capsys, "--docker-group", scratch_group, "--engine", testbed.docker_host)
    assert checks["docker group"]["status"] == "PASS"
    for user in ("carol", "opsadmin"):  # opsadmin is an admin (group ds01-admin): allowed
        subprocess.run(["gpasswd", "--add", user, scratch_group], check=True, capture_output=True)
    code, checks, _ = doctor(capsys, "--docker-group", scratch_group, "--engine", testbed.docker_host)
    assert code == 1
    check = checks["docker group"]
    assert check["status"] == "FAIL"
    assert "carol" in check["detail"] and "opsadmin" not in check["detail"]
    assert f"gpasswd --delete carol {scratch_group}" in check["fix"]
    assert "docker-group.md" in check["fix"]


def test_engine_socket_modes_and_groups(bed: ProxyHandle, scratch_group: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "engine.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    try:
        shutil.chown(path, group=scratch_group)
        path.chmod(0o660)
        _, checks, _ = doctor(capsys, "--engine", f"unix://{path}")
        assert checks["engine socket"]["status"] == "PASS", checks["engine socket"]
        subprocess.run(["gpasswd", "--add", "carol", scratch_group], check=True, capture_output=True)
        _, checks, _ = doctor(capsys, "--engine", f"unix://{path}")
        assert checks["engine socket"]["status"] == "FAIL"
        assert "carol" in checks["engine socket"]["detail"]
        path.chmod(0o666)
        _, checks, _ = doctor(capsys, "--engine", f"unix://{path}")
        assert checks["engine socket"]["status"] == "FAIL"
        assert "world-writable" in checks["engine socket"]["detail"]
    finally:
        listener.close()


def test_a_proxy_socket_with_the_wrong_mode_fails(testbed: Testbed, bed: ProxyHandle,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bed.socket.chmod(0o660)
    try:
        _, checks, _ = doctor(capsys, "--engine", testbed.docker_host)
        assert checks["proxy socket"]["status"] == "FAIL" and "0660" in checks["proxy socket"]["detail"]
    finally:
        bed.socket.chmod(0o666)


def test_udev_rules_and_device_files_under_a_root(bed: ProxyHandle, scratch_group: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    config = root / "etc/ds01/resource-limits.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(bed.config.read_text().replace("group: ds01-gpu", f"group: {scratch_group}"))
    monkeypatch.setenv("DS01_CONFIG", str(config))
    Installer(REPO, root, report=lambda _: None).install()
    _, checks, _ = doctor(capsys, "--root", str(root))
    assert checks["udev rules"]["status"] == "PASS", checks["udev rules"]
    assert "no /dev/nvidia*" in checks["udev rules"]["detail"]
    assert checks["driver options"]["status"] == "PASS", checks["driver options"]

    devices = [root / "dev/nvidia0", root / "dev/nvidiactl", root / "dev/nvidia-caps/nvidia-cap1"]
    for device in devices:
        device.parent.mkdir(parents=True, exist_ok=True)
        device.write_text("")
        device.chmod(0o666)
    _, checks, _ = doctor(capsys, "--root", str(root))
    assert checks["udev rules"]["status"] == "FAIL"
    assert "nvidia-cap1 (0666" in checks["udev rules"]["detail"]
    for device in devices:
        shutil.chown(device, group=scratch_group)
        device.chmod(0o660)
    _, checks, _ = doctor(capsys, "--root", str(root))
    assert checks["udev rules"]["status"] == "PASS"
    assert "3 device files" in checks["udev rules"]["detail"]

    (root / "proc/driver/nvidia").mkdir(parents=True)
    (root / "proc/driver/nvidia/params").write_text("DeviceFileUID: 0\nDeviceFileGID: 0\nDeviceFileMode: 438\n")
    _, checks, _ = doctor(capsys, "--root", str(root))
    warned = checks["driver options"]
    assert warned["status"] == "WARN" and "reload the nvidia modules" in warned["fix"]


def test_turning_off_the_nosuid_check_is_a_fail(testbed: Testbed, bed: ProxyHandle, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    code, checks, _ = doctor(capsys, "--proxy-socket", str(bed.socket), "--engine", testbed.docker_host,
                             "--root", str(tmp_path))
    # The test bed's homes and data dir are nosuid,nodev; the machine may have other homes that are not (WARN).
    assert checks["bind mounts"]["status"] in ("PASS", "WARN")
    assert not any(f"/home/{user}" in checks["bind mounts"]["detail"] for user in ("alice", "bob", "carol"))
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(bed.config.read_text().replace("require_nosuid_mounts: true", "require_nosuid_mounts: false"))
    monkeypatch.setenv("DS01_CONFIG", str(relaxed))
    code, checks, _ = doctor(capsys, "--proxy-socket", str(bed.socket), "--engine", testbed.docker_host,
                             "--root", str(tmp_path))
    assert code == 1 and checks["bind mounts"]["status"] == "FAIL"
    assert "require_nosuid_mounts is false" in checks["bind mounts"]["detail"]


def test_root_containers_with_host_mounts_are_reported_with_the_fix(
        testbed: Testbed, bed: ProxyHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A container made before ds01 ran containers as their caller: root, with alice's home mounted."""
    client = docker.DockerClient(base_url=testbed.docker_host)
    old = client.containers.create("ds01-test/busybox:latest", ["sleep", "60"], name="old._.1001",
                                   labels={"ds01.user": "alice", "ds01.uid": "1001"},
                                   volumes={"/home/alice": {"bind": "/h", "mode": "rw"}})
    try:
        _, checks, _ = doctor(capsys, "--proxy-socket", str(bed.socket), "--engine", testbed.docker_host,
                                 "--root", str(tmp_path))
        check = checks["root containers"]
        assert check["status"] == "WARN" and "old._.1001 (alice) runs as root" in check["detail"]
        assert "container remove old, then create it again" in check["detail"]
        reconciled = subprocess.run([str(REPO / ".venv" / "bin" / "ds01"), "reconcile", "--dry-run"],
                                    capture_output=True, text=True, check=False,
                                    env={**bed.env, "DOCKER_HOST": testbed.docker_host})
        assert "WARN container old._.1001 (alice) runs as root with host directories mounted (/home/alice)" \
            in reconciled.stderr
    finally:
        old.remove(force=True)
        client.close()


def doctor_in_the_engines_namespace(testbed: Testbed, bed: ProxyHandle) -> dict[str, dict[str, Any]]:
    """`ds01 doctor --format json` run as root where the engine runs, as an admin runs it on a server."""
    ran = subprocess.run(["nsenter", f"--net=/run/netns/{testbed.netns}", str(REPO / ".venv" / "bin" / "ds01"),
                          "doctor", "--format", "json", "--engine", testbed.docker_host, "--proxy-socket",
                          str(bed.socket)], capture_output=True, text=True, check=False, env=bed.env, timeout=120)
    return {check["name"]: check for check in json.loads(ran.stdout)["checks"]}


def test_the_network_model_is_checked_where_the_engine_runs(testbed: Testbed, bed: ProxyHandle,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    checks = doctor_in_the_engines_namespace(testbed, bed)
    assert checks["default bridge"]["status"] == "PASS", checks["default bridge"]
    assert checks["reach rules"]["status"] == "PASS", checks["reach rules"]
    assert "DS01-REACH" in checks["reach rules"]["detail"] and "DS01-HOST" in checks["reach rules"]["detail"]
    # The test bed's engine runs as ds01 needs it, with the userland proxy off (unit tests cover the FAIL).
    assert checks["userland proxy"]["status"] == "PASS", checks["userland proxy"]
    assert checks["published ports"]["status"] == "PASS", checks["published ports"]
    # From another network namespace the rules are not read at all (they would be that namespace's).
    _, here, _ = doctor(capsys, "--engine", testbed.docker_host, "--proxy-socket", str(bed.socket))
    for name in ("reach rules", "userland proxy"):
        assert here[name]["status"] == "WARN", here[name]
        assert "not the engine's network namespace (none of the engine's bridges" in here[name]["detail"]


def test_a_ds01_container_published_beyond_loopback_fails(testbed: Testbed, bed: ProxyHandle) -> None:
    """Made straight on the engine, past the proxy that would have put the port on 127.0.0.1."""
    client = docker.DockerClient(base_url=testbed.docker_host)
    wide = client.containers.create("ds01-test/busybox:latest", ["sleep", "60"], name="wide._.1001",
                                    labels={"ds01.user": "alice", "ds01.uid": "1001"},
                                    ports={"80/tcp": ("0.0.0.0", 18999)})  # noqa: S104 - the mistake looked for
    try:
        check = doctor_in_the_engines_namespace(testbed, bed)["published ports"]
        assert check["status"] == "FAIL", check
        assert "alice's wide._.1001: 80/tcp on 0.0.0.0" in check["detail"]
        assert "docker rm -f NAME" in check["fix"]
    finally:
        wide.remove(force=True)
        client.close()
