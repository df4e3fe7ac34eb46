"""The only door to the Docker SDK: containers in, typed `ContainerInfo` out, engine errors as EngineError.

`Engine` talks to the engine directly (admin tools). The `container` command does not use the SDK: its client of
the ds01 proxy is `ds01.cli.container.client`.
"""

from __future__ import annotations

import docker
from docker.errors import DockerException, NotFound

from ds01.errors import EngineError
from ds01.records import ContainerInfo, ContainerSummary, container_info


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

    def summaries(self) -> list[ContainerSummary]:
        """Every container from one list call: enough to attribute processes, cheap enough for every cycle."""
        try:
            listed = self._client.api.containers(all=True)
        except DockerException as exc:
            raise self._failed("list containers", exc) from exc
        return [ContainerSummary(id=c["Id"], name=(c.get("Names") or ["/?"])[0].lstrip("/"),
                                 labels=c.get("Labels") or {}, status=c.get("State") or "unknown") for c in listed]

    def cpu_usage_ns(self, container_id: str) -> int:
        """Total CPU time the container has used, from one stats sample."""
        try:
            stats = self._client.api.stats(container_id, stream=False, one_shot=True)
        except DockerException as exc:
            raise self._failed(f"read the CPU use of {container_id[:12]}", exc) from exc
        return int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)

    def stop(self, container_id: str, grace_seconds: int) -> None:
        try:
            self._client.api.stop(container_id, timeout=grace_seconds)
        except DockerException as exc:
            raise self._failed(f"stop {container_id[:12]}", exc) from exc

    def remove(self, container_id: str) -> None:
        try:
            self._client.api.remove_container(container_id)
        except DockerException as exc:
            raise self._failed(f"remove {container_id[:12]}", exc) from exc

    def container(self, name_or_id: str) -> ContainerInfo:
        try:
            return container_info(self._client.api.inspect_container(name_or_id))
        except NotFound:
            raise EngineError(f"no container named {name_or_id!r}. See 'docker ps -a'.") from None
        except DockerException as exc:
            raise self._failed(f"inspect container {name_or_id}", exc) from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
