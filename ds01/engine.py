"""The only door to the Docker SDK: containers in, typed `ContainerInfo` out, engine errors as EngineError."""

from __future__ import annotations

from typing import Any

import docker
from docker.errors import DockerException, NotFound

from ds01.containers import ContainerInfo
from ds01.errors import EngineError


def _gpu_devices(host_config: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    device_ids: list[str] = []
    count = 0
    for request in host_config.get("DeviceRequests") or []:
        capabilities = {c for group in request.get("Capabilities") or [] for c in group}
        if request.get("Driver") == "nvidia" or "gpu" in capabilities:
            device_ids.extend(request.get("DeviceIDs") or [])
            count = -1 if request.get("Count") == -1 else count + int(request.get("Count") or 0)
    return tuple(device_ids), count


def container_info(inspected: dict[str, Any]) -> ContainerInfo:
    host_config = inspected.get("HostConfig") or {}
    device_ids, count = _gpu_devices(host_config)
    return ContainerInfo(
        id=inspected["Id"],
        name=inspected["Name"].lstrip("/"),
        labels=(inspected.get("Config") or {}).get("Labels") or {},
        status=inspected["State"]["Status"],
        device_ids=device_ids,
        gpu_count=count,
    )


class Engine:
    def __init__(self, base_url: str | None = None) -> None:
        try:
            self._client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
            self.url = self._client.api.base_url
        except DockerException as exc:
            raise EngineError(f"cannot set up a Docker client: {exc}. Check DOCKER_HOST.") from exc

    def _failed(self, action: str, exc: DockerException) -> EngineError:
        return EngineError(f"the Docker engine ({self.url}) failed to {action}: {exc}. "
                           "Is dockerd running, and is DOCKER_HOST right?")

    def containers(self) -> list[ContainerInfo]:
        """Every container, running or not, inspected (device requests are not in the list call)."""
        try:
            listed = self._client.api.containers(all=True)
        except DockerException as exc:
            raise self._failed("list containers", exc) from exc
        found = []
        for summary in listed:
            try:
                found.append(container_info(self._client.api.inspect_container(summary["Id"])))
            except NotFound:
                continue  # removed between the list and the inspect
            except DockerException as exc:
                raise self._failed(f"inspect container {summary['Id'][:12]}", exc) from exc
        return found

    def container(self, name_or_id: str) -> ContainerInfo:
        try:
            return container_info(self._client.api.inspect_container(name_or_id))
        except NotFound:
            raise EngineError(f"no container named {name_or_id!r}. See 'docker ps -a'.") from None
        except DockerException as exc:
            raise self._failed(f"inspect container {name_or_id}", exc) from exc

    def close(self) -> None:
        self._client.close()
