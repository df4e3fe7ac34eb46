"""wrappers/docker: points the real docker CLI at the proxy, whatever the caller's environment says."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import REPO, ProxyHandle


def install_wrapper(proxy: ProxyHandle) -> Path:
    directory = proxy.root / "wrapper-bin"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    wrapper = directory / "docker"
    text = (REPO / "wrappers" / "docker").read_text()
    assert "DS01_SOCKET=/run/ds01/docker.sock" in text
    wrapper.write_text(text.replace("DS01_SOCKET=/run/ds01/docker.sock", f"DS01_SOCKET={proxy.socket}"))
    wrapper.chmod(0o755)
    return directory


def test_wrapper_routes_through_the_proxy_even_when_told_otherwise(proxy: ProxyHandle) -> None:
    directory = install_wrapper(proxy)
    real_dir = str(Path(shutil.which("docker") or "/usr/bin/docker").parent)
    before = len([e for e in proxy.events() if e["user"] == "carol"])
    result = proxy.as_user("carol", "env", f"PATH={directory}:{real_dir}:/usr/bin:/bin",
                           "DOCKER_HOST=unix:///tmp/ds01-testbed/docker.sock", "docker", "ps", "--format", "{{.ID}}")
    assert result.returncode == 0, result.stderr
    seen = [e for e in proxy.events() if e["user"] == "carol"][before:]
    assert any(e["details"]["endpoint"].endswith("/containers/json") for e in seen)


def test_wrapper_says_so_when_no_real_docker_exists(proxy: ProxyHandle) -> None:
    directory = install_wrapper(proxy)
    result = proxy.as_user("carol", "env", f"PATH={directory}", "/bin/bash", str(directory / "docker"), "ps")
    assert result.returncode == 127
    assert "real docker CLI is not on PATH" in result.stderr
