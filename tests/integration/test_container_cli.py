"""`container` end to end: real users (runuser) through a real ds01 proxy onto the test bed's engine."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01 import records
from tests.conftest import TEST_IMAGE, ProxyHandle

CONTAINER = str(Path(sys.executable).parent / "container")
USERS = ("alice", "bob")
COMMANDS = ("create", "list", "start", "stop", "remove", "open", "exec", "logs", "stats", "ports")


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def cli(proxy: ProxyHandle, user: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return proxy.as_user(user, CONTAINER, *args, stdin=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def inspect(engine: docker.DockerClient, name: str, user: str = "alice") -> dict[str, Any]:
    return dict(engine.api.inspect_container(f"{name}._.{uid(user)}"))


def exists(engine: docker.DockerClient, name: str, user: str = "alice") -> bool:
    try:
        inspect(engine, name, user)
    except docker.errors.NotFound:
        return False
    return True


def listed(proxy: ProxyHandle, user: str, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(ok(cli(proxy, user, "list", "--json", *args)).stdout))


@pytest.fixture
def names(proxy: ProxyHandle, engine: docker.DockerClient) -> Iterator[Callable[[], str]]:
    """Fresh container names; afterwards the test users' containers are removed (through the CLI, so their GPUs
    are released at once) and the workspaces the names got are deleted."""
    given: list[str] = []

    def new() -> str:
        given.append(f"t{uuid.uuid4().hex[:8]}")
        return given[-1]

    yield new
    for user in USERS:
        with contextlib.suppress(AssertionError, ValueError):
            for item in listed(proxy, user, "--all"):
                cli(proxy, user, "remove", "-f", item["name"])
    for container in engine.containers.list(all=True, filters={"label": "ds01.user"}):
        if container.labels.get("ds01.user") in USERS:  # left over if the proxy died
            container.remove(force=True)
    for user in USERS:
        for name in given:
            shutil.rmtree(home(user) / "workspace" / name, ignore_errors=True)


def test_every_help_ends_with_an_example() -> None:
    for argv in [["--help"], *([command, "--help"] for command in COMMANDS)]:
        shown = subprocess.run([CONTAINER, *argv], capture_output=True, text=True, check=False)
        assert shown.returncode == 0, shown.stderr
        assert "example:\n  container " in shown.stdout, argv
    remove_help = subprocess.run([CONTAINER, "remove", "--help"], capture_output=True, text=True, check=False).stdout
    assert "never" in remove_help and "deleted" in remove_help
    bare = subprocess.run([CONTAINER], capture_output=True, text=True, check=False)
    assert bare.returncode == 2 and "usage: container" in bare.stderr and "create" in bare.stderr


def test_create_default_gives_a_student_a_mig_slice_and_a_workspace(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    created = ok(cli(proxy, "alice", "create", name))
    assert f"creating {name}..." in created.stdout and "started" in created.stdout
    assert f"container open {name}" in created.stdout
    info = inspect(engine, name)
    assert info["Name"] == f"/{name}._.{uid('alice')}"
    assert info["State"]["Status"] == "running"
    labels = info["Config"]["Labels"]
    assert (labels["ds01.user"], labels["ds01.uid"], labels["ds01.type"]) == ("alice", str(uid("alice")), "container")
    [request] = info["HostConfig"]["DeviceRequests"]
    [device] = request["DeviceIDs"]
    assert device.startswith("MIG-") and device in created.stdout  # alice is a student: MIG slices only
    assert labels["ds01.gpu_equivalents"] == "3/7" and "ds01.allocation" in labels
    workspace = home("alice") / "workspace" / name
    assert workspace.is_dir() and workspace.stat().st_uid == uid("alice")
    assert workspace.stat().st_mode & 0o777 == 0o755
    [mount] = [m for m in info["Mounts"] if m["Destination"] == "/workspace"]
    assert mount["Type"] == "bind"
    assert records.original_bind_source(labels, mount["Source"]) == str(workspace)
    assert os.stat(mount["Source"]).st_ino == workspace.stat().st_ino  # the pin is the workspace itself
    assert info["Config"]["WorkingDir"] == "/workspace"
    assert info["Config"]["Cmd"] == ["sleep", "infinity"] and info["Config"]["Image"] == TEST_IMAGE


def test_create_with_a_mig_profile(proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    created = ok(cli(proxy, "alice", "create", name, "--mig", "2g.20gb"))
    info = inspect(engine, name)
    [device] = info["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    assert device.startswith("MIG-") and device in created.stdout
    assert info["Config"]["Labels"]["ds01.gpu_equivalents"] == "2/7"
    assert info["Config"]["Labels"]["ds01.request.mig"] == ""  # a request, consumed by the proxy (written empty)


def test_create_cpu_only_with_limits_and_a_command(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    created = ok(cli(proxy, "alice", "create", name, "--cpu-only", "--cpus", "1", "--memory", "1g",
                     "--shm-size", "64m", "--", "sh", "-c", "echo ready; sleep infinity"))
    assert "no GPU" in created.stdout
    info = inspect(engine, name)
    host = info["HostConfig"]
    assert not host.get("DeviceRequests") and not info["Config"]["Labels"]["ds01.allocation"]
    assert (host["NanoCpus"], host["Memory"], host["ShmSize"]) == (10**9, 2**30, 64 * 2**20)
    assert info["Config"]["Cmd"] == ["sh", "-c", "echo ready; sleep infinity"]


def test_create_with_a_workspace_of_ones_own(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    ok(cli(proxy, "alice", "create", name, "--cpu-only", "--workspace", f"~/workspace/{name}/deep/er"))
    workspace = home("alice") / "workspace" / name / "deep" / "er"
    assert workspace.is_dir() and workspace.owner() == "alice"
    info = inspect(engine, name)
    [mount] = [m for m in info["Mounts"] if m["Destination"] == "/workspace"]
    assert records.original_bind_source(info["Config"]["Labels"], mount["Source"]) == str(workspace)


@pytest.mark.parametrize(("option", "value", "reason"), [("--memory", "100g", "memory"), ("--cpus", "64", "CPUs"),
                                                         ("--shm-size", "64g", "shm")])
def test_above_the_limit_is_denied(proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str],
                                   option: str, value: str, reason: str) -> None:
    name = names()
    denied = cli(proxy, "alice", "create", name, "--cpu-only", option, value)
    assert denied.returncode == 3, denied.stderr
    assert reason in denied.stderr and "limit" in denied.stderr
    assert not exists(engine, name)
    assert not (home("alice") / "workspace" / name).exists()  # a create that did not happen leaves no directory


def test_a_mig_profile_beyond_the_users_is_denied(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    for extra in ([], ["--dry-run"]):
        denied = cli(proxy, "alice", "create", name, "--mig", "4g.40gb", *extra)
        assert denied.returncode == 3, denied.stderr
        assert "4g.40gb" in denied.stderr and "not allowed" in denied.stderr
    assert not exists(engine, name)


def test_dry_run_creates_nothing(proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    shown = ok(cli(proxy, "alice", "create", name, "--dry-run", "--memory", "2g"))
    assert "dry run: nothing was created" in shown.stdout
    assert "MIG-" in shown.stdout and "3/7" in shown.stdout
    assert "2g" in shown.stdout and "4096" in shown.stdout and "would be created" in shown.stdout
    assert TEST_IMAGE in shown.stdout
    assert not exists(engine, name)
    assert not (home("alice") / "workspace" / name).exists()
    assert listed(proxy, "alice", "--all") == []
    missing = cli(proxy, "alice", "create", name, "--dry-run", "--image", "ds01-test/nothing:here")
    assert missing.returncode == 1 and "not on this host" in missing.stderr and "--image" in missing.stderr


def test_list_all_and_json(proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    up, down = names(), names()
    ok(cli(proxy, "alice", "create", up))
    ok(cli(proxy, "alice", "create", down, "--cpu-only"))
    ok(cli(proxy, "alice", "stop", down, "-t", "0"))
    table = ok(cli(proxy, "alice", "list")).stdout
    assert table.startswith("NAME") and "GPUS" in table and up in table and down not in table
    assert f"._.{uid('alice')}" not in table  # users see plain names
    everything = ok(cli(proxy, "alice", "list", "--all")).stdout
    assert up in everything and down in everything and "exited" in everything
    by_name = {item["name"]: item for item in listed(proxy, "alice", "--all")}
    assert set(by_name) == {up, down}
    first = by_name[up]
    assert set(first) == {"name", "engine_name", "id", "origin", "status", "image", "gpus", "gpu_equivalents",
                          "created"}
    assert first["engine_name"] == f"{up}._.{uid('alice')}" and first["status"] == "running"
    assert first["origin"] == "container"
    assert first["id"] == inspect(engine, up)["Id"] and first["image"] == TEST_IMAGE
    assert first["gpus"] == inspect(engine, up)["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    assert first["gpu_equivalents"] == "3/7" and first["created"].endswith("+00:00")
    assert by_name[down]["gpus"] == [] and by_name[down]["gpu_equivalents"] is None
    assert [item["name"] for item in json.loads(ok(cli(proxy, "alice", "list", "--format", "json")).stdout)] == [up]


def test_stop_start_remove_keeps_the_workspace(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    ok(cli(proxy, "alice", "create", name))
    ok(cli(proxy, "alice", "exec", name, "--", "sh", "-c", "echo kept > /workspace/result.txt"))
    stopped = ok(cli(proxy, "alice", "stop", name, "-t", "1"))
    assert "stopped" in stopped.stdout and f"container start {name}" in stopped.stdout
    assert inspect(engine, name)["State"]["Status"] == "exited"
    assert "started" in ok(cli(proxy, "alice", "start", name)).stdout
    assert inspect(engine, name)["State"]["Status"] == "running"
    refused = cli(proxy, "alice", "remove", name)
    assert refused.returncode == 1 and "-f" in refused.stderr and exists(engine, name)
    removed = ok(cli(proxy, "alice", "remove", name, "-f"))
    assert f"removed {name}" in removed.stdout and "kept" in removed.stdout and "never deletes" in removed.stdout
    assert not exists(engine, name)
    assert (home("alice") / "workspace" / name / "result.txt").read_text() == "kept\n"
    gone = cli(proxy, "alice", "start", name)
    assert gone.returncode == 1 and "does not exist" in gone.stderr and "container list --all" in gone.stderr


def test_exec_passes_output_and_exit_code_through(proxy: ProxyHandle, names: Callable[[], str]) -> None:
    name = names()
    ok(cli(proxy, "alice", "create", name, "--cpu-only"))
    ran = cli(proxy, "alice", "exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (ran.returncode, ran.stdout, ran.stderr) == (7, "out\n", "err\n")
    assert ok(cli(proxy, "alice", "exec", name, "--", "pwd")).stdout == "/workspace\n"
    bare = cli(proxy, "alice", "exec", name)
    assert bare.returncode == 2 and "after '--'" in bare.stderr
    ok(cli(proxy, "alice", "stop", name, "-t", "0"))
    stopped = cli(proxy, "alice", "exec", name, "--", "true")
    assert stopped.returncode == 1 and "not running" in stopped.stderr and "container start" in stopped.stderr


def test_logs_and_follow(proxy: ProxyHandle, names: Callable[[], str]) -> None:
    name, brief = names(), names()
    ok(cli(proxy, "alice", "create", name, "--cpu-only", "--", "sh", "-c", "echo hello; echo oops >&2; sleep infinity"))
    deadline = time.monotonic() + 10
    while "hello" not in (shown := cli(proxy, "alice", "logs", name)).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (shown.returncode, shown.stdout, shown.stderr) == (0, "hello\n", "oops\n")
    ok(cli(proxy, "alice", "create", brief, "--cpu-only", "--", "sh", "-c", "echo one; sleep 2; echo two"))
    followed = ok(cli(proxy, "alice", "logs", "-f", brief))  # returns once the container's command ends
    assert followed.stdout == "one\ntwo\n"
    assert ok(cli(proxy, "alice", "logs", "--tail", "1", brief)).stdout == "two\n"


def test_stats_json_and_filters(proxy: ProxyHandle, names: Callable[[], str]) -> None:
    gpu, plain = names(), names()
    ok(cli(proxy, "alice", "create", gpu))
    ok(cli(proxy, "alice", "create", plain, "--cpu-only", "--memory", "1g"))

    def stats(*args: str) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in json.loads(ok(cli(proxy, "alice", "stats", "--json", *args)).stdout)}

    both = stats()
    assert set(both) == {gpu, plain}
    assert both[plain]["memory_limit_bytes"] == 2**30 and both[plain]["memory_used_bytes"] > 0
    assert isinstance(both[gpu]["cpu_percent"], float) and both[gpu]["gpus"][0].startswith("MIG-")
    assert both[plain]["gpus"] == [] and both[gpu]["status"] == "running"
    assert set(stats("--filter", "gpu=yes")) == {gpu}
    assert set(stats("--filter", "gpu=no")) == {plain}
    assert set(stats("--filter", f"name={plain[3:]}")) == {plain}
    assert set(stats("--filter", "gpu=no", "--filter", f"name={gpu}")) == set()
    table = ok(cli(proxy, "alice", "stats")).stdout
    assert table.startswith("NAME") and "CPU %" in table and gpu in table and "1.0GiB" in table
    ok(cli(proxy, "alice", "stop", plain, "-t", "0"))
    assert set(stats()) == {gpu}
    exited = stats("--filter", "status=exited")
    assert set(exited) == {plain} and exited[plain]["cpu_percent"] is None
    assert set(stats("--filter", "status=exited", "--filter", "status=running")) == {gpu, plain}
    for bad in ("colour=red", "gpu=maybe", "status=asleep", "name"):
        refused = cli(proxy, "alice", "stats", "--filter", bad)
        assert refused.returncode == 2 and "--filter" in refused.stderr, bad


@pytest.mark.parametrize("argv", [
    ["create", "bad name"], ["create", "a._.b"], ["create", "x" * 64], ["create", "ok", "--memory", "12q"],
    ["create", "ok", "--shm-size", "lots"], ["create", "ok", "--cpus", "none"], ["create", "ok", "--gpus", "0"],
    ["stop", "bob._.1002"], ["remove", "-x"], ["stop", "ok", "--", "extra"],
    ["create", "ok", "--gpus", "1", "--cpu-only"],
])
def test_bad_names_and_sizes_are_usage_errors(proxy: ProxyHandle, engine: docker.DockerClient,
                                              names: Callable[[], str], argv: list[str]) -> None:
    refused = cli(proxy, "alice", *argv)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip() and "Traceback" not in refused.stderr
    assert not exists(engine, "ok")


def test_users_see_and_touch_only_their_own(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    bobs = names()
    ok(cli(proxy, "bob", "create", bobs, "--cpu-only"))
    assert listed(proxy, "alice", "--all") == []
    for argv in (["stop", bobs], ["remove", "-f", bobs], ["logs", bobs], ["exec", bobs, "--", "true"]):
        hidden = cli(proxy, "alice", *argv)
        assert hidden.returncode == 1 and "does not exist" in hidden.stderr, argv
    assert exists(engine, bobs, "bob") and inspect(engine, bobs, "bob")["State"]["Status"] == "running"

    shared = "shared"
    ok(cli(proxy, "bob", "create", shared, "--cpu-only"))
    ok(cli(proxy, "alice", "create", shared, "--cpu-only"))  # same NAME: no collision, thanks to the uid suffix
    assert inspect(engine, shared, "alice")["Config"]["Labels"]["ds01.user"] == "alice"
    assert inspect(engine, shared, "bob")["Config"]["Labels"]["ds01.user"] == "bob"
    assert [item["name"] for item in listed(proxy, "alice", "--all")] == [shared]
    assert sorted(item["name"] for item in listed(proxy, "bob", "--all")) == sorted([bobs, shared])
    ok(cli(proxy, "alice", "remove", shared, "-f"))
    assert not exists(engine, shared, "alice") and exists(engine, shared, "bob")
    ok(cli(proxy, "bob", "remove", shared, "-f"))
    for user in USERS:
        shutil.rmtree(home(user) / "workspace" / shared, ignore_errors=True)


def test_open_needs_a_running_container_and_a_terminal(proxy: ProxyHandle, names: Callable[[], str]) -> None:
    name = names()
    ok(cli(proxy, "alice", "create", name, "--cpu-only"))
    no_tty = cli(proxy, "alice", "open", name)
    assert no_tty.returncode == 2 and "terminal" in no_tty.stderr and f"container exec {name}" in no_tty.stderr
    if shutil.which("script"):  # a pseudo-terminal, so the real `docker exec -it` runs through the proxy
        shell = proxy.as_user("alice", "script", "-qec", f"{CONTAINER} open {name}", "/dev/null",
                              stdin="pwd; echo inside-$((6*7)); exit\n")
        assert "inside-42" in shell.stdout and "/workspace" in shell.stdout, shell
    ok(cli(proxy, "alice", "stop", name, "-t", "0"))
    stopped = cli(proxy, "alice", "open", name)
    assert stopped.returncode == 1 and "not running" in stopped.stderr and f"container start {name}" in stopped.stderr


def test_no_proxy_is_a_clear_message(proxy: ProxyHandle) -> None:
    stale = proxy.root / "run" / "stale.sock"  # a socket nobody listens on, as a crashed proxy leaves it
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(stale))
        stale.chmod(0o777)
        for path, why in ((proxy.root / "run" / "absent.sock", "no socket there"), (stale, "connection refused")):
            failed = proxy.as_user("alice", "env", f"DOCKER_HOST=unix://{path}", CONTAINER, "list")
            assert failed.returncode == 1
            assert f"ds01 proxy is not running at {path} ({why})" in failed.stderr
            assert "systemctl status ds01-proxy" in failed.stderr
    stale.unlink()


def test_a_docker_host_other_than_a_unix_socket_is_a_usage_error(proxy: ProxyHandle) -> None:
    refused = proxy.as_user("alice", "env", "DOCKER_HOST=tcp://127.0.0.1:2375", CONTAINER, "list")
    assert refused.returncode == 2 and "only talks to the ds01 proxy on its unix socket" in refused.stderr


def test_no_image_anywhere_is_a_usage_error(proxy: ProxyHandle) -> None:
    config = proxy.config.with_name("no-image.yaml")  # where alice can read it
    config.write_text(proxy.config.read_text().replace("  default_image: ", "  # default_image: "))
    refused = proxy.as_user("alice", "env", f"DS01_CONFIG={config}", CONTAINER, "create", "x", "--dry-run")
    assert refused.returncode == 2 and "--image" in refused.stderr


def test_an_interrupted_logs_follow_leaves_the_proxy_running(
        proxy: ProxyHandle, names: Callable[[], str]) -> None:
    """Ctrl-C on `container logs -f`, then the log stream ends: the proxy must keep serving everyone.
    Kept last in this module: when it fails, the proxy is gone."""
    name = names()
    ok(cli(proxy, "alice", "create", name, "--cpu-only", "--", "sh", "-c", "echo started; sleep infinity"))
    alice = pwd.getpwnam("alice")
    follower = subprocess.Popen([CONTAINER, "logs", "-f", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                user=alice.pw_uid, group=alice.pw_gid, env={**proxy.env, "HOME": alice.pw_dir})
    assert follower.stdout is not None
    assert follower.stdout.readline() == b"started\n"
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=10) == 130
    stopped = cli(proxy, "alice", "stop", name, "-t", "0")  # ends the stream the proxy was relaying to nobody
    time.sleep(0.5)
    assert proxy.process.poll() is None, (
        f"the proxy died with exit status {proxy.process.returncode} (-13 is SIGPIPE) while `container stop` "
        f"waited for its answer: {stopped.stderr}")
    ok(stopped)
    assert os.path.exists(proxy.socket)
    ok(cli(proxy, "alice", "list"))


def test_a_port_is_published_on_loopback_with_the_ssh_line_to_reach_it(
        proxy: ProxyHandle, engine: docker.DockerClient, names: Callable[[], str]) -> None:
    name = names()
    made = ok(cli(proxy, "alice", "create", name, "--cpu-only", "--port", "8888"))
    info = inspect(engine, name)
    [binding] = info["NetworkSettings"]["Ports"]["8888/tcp"]
    assert binding["HostIp"] == "127.0.0.1" and int(binding["HostPort"]) >= 1024
    assert info["HostConfig"]["NetworkMode"] == "ds01-alice"
    line = f"ssh -N -L 8888:127.0.0.1:{binding['HostPort']} alice@"
    assert line in made.stdout
    [shown] = json.loads(ok(cli(proxy, "alice", "ports", name, "--json")).stdout)
    assert (shown["host_ip"], shown["host_port"], shown["container_port"]) == ("127.0.0.1", int(binding["HostPort"]),
                                                                              8888)
    assert line in ok(cli(proxy, "alice", "ports", name)).stdout
    refused = cli(proxy, "alice", "create", names(), "--cpu-only", "--port", "99999")
    assert refused.returncode == 2 and "not a port number" in refused.stderr
