"""Debian's docker-compose (v1) as a real user through the proxy: services run as the user, with a bind mount."""

from __future__ import annotations

import pwd
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle

USER = "alice"


@pytest.fixture
def project() -> Iterator[Path]:
    account = pwd.getpwnam(USER)
    folder = Path(account.pw_dir) / f"compose-{uuid.uuid4().hex[:8]}"
    (folder / "data").mkdir(parents=True)
    (folder / "docker-compose.yml").write_text(
        "version: '2.4'\n"
        "services:\n"
        "  worker:\n"
        f"    image: {TEST_IMAGE}\n"
        "    command: ['sh', '-c', 'id -u > /data/whoami; sleep 300']\n"
        "    volumes: ['./data:/data']\n")
    for path in (folder, folder / "data", folder / "docker-compose.yml"):
        shutil.chown(path, USER, USER)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compose(proxy: ProxyHandle, project: Path, *args: str) -> str:
    result = proxy.as_user(USER, "env", f"HOME={pwd.getpwnam(USER).pw_dir}", "docker-compose", "--project-directory",
                           str(project), "-f", str(project / "docker-compose.yml"), *args, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compose_up_exec_down_as_the_user(proxy: ProxyHandle, engine: docker.DockerClient, project: Path) -> None:
    uid = str(pwd.getpwnam(USER).pw_uid)
    compose(proxy, project, "up", "-d")
    try:
        [container] = engine.containers.list(filters={"label": f"com.docker.compose.project={project.name}"})
        assert container.labels["ds01.type"] == "compose" and container.labels["ds01.user"] == USER
        assert compose(proxy, project, "exec", "-T", "worker", "id", "-u").strip() == uid
        written = project / "data" / "whoami"
        deadline = time.monotonic() + 10
        while not (written.exists() and written.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert written.read_text().strip() == uid
        assert written.owner() == USER  # the service's file is alice's own on the host
    finally:
        compose(proxy, project, "down", "--timeout", "1")
    assert not engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={project.name}"})


@pytest.fixture
def two_services() -> Iterator[Path]:
    account = pwd.getpwnam(USER)
    folder = Path(account.pw_dir) / f"compose-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "docker-compose.yml").write_text(
        "version: '2.4'\n"
        "services:\n"
        "  server:\n"
        f"    image: {TEST_IMAGE}\n"
        "    command: ['nc', '-ll', '-p', '8080', '-e', 'echo', 'pong']\n"
        "  client:\n"
        f"    image: {TEST_IMAGE}\n"
        "    command: ['sleep', '300']\n")
    for path in (folder, folder / "docker-compose.yml"):
        shutil.chown(path, USER, USER)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_compose_services_talk_by_name_on_the_users_own_network(
        proxy: ProxyHandle, engine: docker.DockerClient, two_services: Path) -> None:
    compose(proxy, two_services, "up", "-d")
    try:
        answer = compose(proxy, two_services, "exec", "-T", "client", "nc", "-w", "5", "server", "8080")
        assert answer.strip() == "pong"
        network = engine.networks.get(f"{two_services.name}_default")
        assert network.attrs["Labels"]["ds01.user"] == USER
        bobs = proxy.as_user("bob", "docker", "run", "--rm", "--network", f"{two_services.name}_default", TEST_IMAGE,
                             "true")
        assert bobs.returncode != 0 and f"there is no network {two_services.name}_default of yours" in bobs.stderr
    finally:
        compose(proxy, two_services, "down", "--timeout", "1")
