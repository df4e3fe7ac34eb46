"""The VS Code dev containers CLI (@devcontainers/cli) as a real user, through the ds01 proxy onto the test bed."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed

USER = "alice"
NPM_PACKAGE = "@devcontainers/cli"
CREATE = re.compile(r"POST (/v[0-9.]+)?/containers/create")


@pytest.fixture(scope="module")
def devcontainer_cli(testbed: Testbed) -> Path:
    """The devcontainer CLI, installed from npm under the test bed dir once (kept for later sessions)."""
    prefix = testbed.dir / "node"
    cli = prefix / "node_modules" / ".bin" / "devcontainer"
    if not cli.exists():
        if shutil.which("npm") is None:
            pytest.fail("npm is not on PATH; the dev containers CLI cannot be installed")
        installed = subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", NPM_PACKAGE],
            capture_output=True, text=True, timeout=600, check=False)
        assert installed.returncode == 0, f"npm install {NPM_PACKAGE} failed:\n{installed.stderr}"
    prefix.chmod(0o755)  # users run it from here
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0, version.stderr
    return cli


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A project folder in alice's home with a devcontainer.json for the test image."""
    account = pwd.getpwnam(USER)
    folder = Path(account.pw_dir) / f"dc-{uuid.uuid4().hex[:8]}"
    config = {
        "name": "ds01 test",
        "image": TEST_IMAGE,
        "updateRemoteUserUID": False,  # that would build a derived image, and builds are denied by default
        "overrideCommand": True,  # keep the container alive with the CLI's own sleep loop
        # As docs-user/containers.md says: the user's own numeric uid, so the CLI never asks for an image's name.
        "containerUser": str(account.pw_uid),
        "remoteUser": str(account.pw_uid),
    }
    (folder / ".devcontainer").mkdir(parents=True)
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config, indent=2))
    for path in (folder, folder / ".devcontainer", folder / ".devcontainer" / "devcontainer.json"):
        os.chown(path, account.pw_uid, account.pw_gid)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def devcontainer(proxy: ProxyHandle, cli: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = pwd.getpwnam(USER).pw_dir
    return proxy.as_user(USER, "env", f"HOME={home}", str(cli), *args, timeout=300)


def last_json(stdout: str) -> dict[str, Any]:
    """The result object `devcontainer up` prints as its last stdout line."""
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    assert lines, f"no JSON result on stdout: {stdout!r}"
    return dict(json.loads(lines[-1]))


def decisions(proxy: ProxyHandle, since: int, user: str) -> list[dict[str, Any]]:
    return [e for e in proxy.events()[since:] if e["type"] in ("proxy.allow", "proxy.deny") and e["user"] == user]


def test_devcontainer_up_and_exec_through_the_proxy(
        proxy: ProxyHandle, engine: docker.DockerClient, devcontainer_cli: Path, workspace: Path) -> None:
    before = len(proxy.events())
    container_id = None
    try:
        up = devcontainer(proxy, devcontainer_cli, "up", "--workspace-folder", str(workspace))
        during_up = decisions(proxy, before, USER)
        denied = [(e["details"]["endpoint"], e["details"]["reason"], e["details"].get("message"))
                  for e in during_up if e["type"] == "proxy.deny"]
        # The CLI probes /etc/os-release in a root exec, which is refused; it carries on without it.
        unexpected = [d for d in denied if not (d[0].endswith("/exec") and "running as 'root'" in str(d[2]))]
        assert unexpected == [], f"the proxy refused requests devcontainer up made: {denied}\n{up.stderr[-4000:]}"
        assert up.returncode == 0, f"exit {up.returncode}\nstdout: {up.stdout}\nstderr: {up.stderr[-4000:]}"
        result = last_json(up.stdout)
        assert result["outcome"] == "success", result
        container_id = str(result["containerId"])
        endpoints = {e["details"]["endpoint"] for e in during_up}
        assert any(CREATE.fullmatch(endpoint) for endpoint in endpoints), endpoints  # it went through the proxy

        container = engine.containers.get(container_id)
        assert container.status == "running"
        assert container.labels["ds01.user"] == USER
        assert container.labels["ds01.type"] == "devcontainer"
        assert container.labels["devcontainer.local_folder"] == str(workspace)
        assert container.attrs["HostConfig"]["CgroupParent"] == f"/ds01/{USER}"

        execd = devcontainer(proxy, devcontainer_cli, "exec", "--workspace-folder", str(workspace), "sh", "-c",
                             "touch made-inside; id -u")
        assert execd.returncode == 0, f"exit {execd.returncode}\nstdout: {execd.stdout}\nstderr: {execd.stderr}"
        uid = pwd.getpwnam(USER).pw_uid
        assert execd.stdout.strip().splitlines()[-1] == str(uid), execd.stdout
        assert container.attrs["Config"]["User"] == f"{uid}:{pwd.getpwnam(USER).pw_gid}"
        assert (workspace / "made-inside").owner() == USER  # the workspace mount, written as alice

        # A second `up` finds the running container through the proxy's owner-filtered list and reuses it.
        again = devcontainer(proxy, devcontainer_cli, "up", "--workspace-folder", str(workspace))
        assert again.returncode == 0, again.stderr[-4000:]
        assert last_json(again.stdout)["containerId"] == container_id
        assert all(e["details"]["endpoint"].endswith("/exec")
                   for e in decisions(proxy, before, USER) if e["type"] == "proxy.deny")
    finally:
        if container_id is None:  # up failed after creating it, perhaps: find it by the CLI's own label
            found = engine.api.containers(all=True, filters={"label": f"devcontainer.local_folder={workspace}"})
            container_id = found[0]["Id"] if found else None
        if container_id is not None:
            with contextlib.suppress(docker.errors.NotFound):  # gone already: the failure above says why
                engine.api.remove_container(container_id, force=True)

