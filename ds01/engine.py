"""The only door to the Docker SDK: containers and images in, typed records out, engine errors as EngineError.

`Engine` talks to the engine directly (admin tools). The `container` command does not use the SDK: its client of
the ds01 proxy is `ds01.cli.container.client`.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.errors import DockerException, NotFound

from ds01.errors import EngineError
from ds01.records import (
    CacheRecord,
    ContainerInfo,
    ContainerSummary,
    ImageSummary,
    PruneResult,
    cache_record,
    container_info,
    image_summary,
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

    def images(self, dangling_only: bool = False) -> list[ImageSummary]:
        """Every image, intermediate ones too; or only the dangling ones: untagged, with no image built on them."""
        try:
            if dangling_only:
                listed = self._client.api.images(filters={"dangling": True})
            else:
                listed = self._client.api.images(all=True)
        except DockerException as exc:
            raise self._failed("list images", exc) from exc
        return [image_summary(image) for image in listed]

    def image(self, image_id: str) -> dict[str, Any] | None:
        """The image's inspect; None when the engine no longer has it."""
        try:
            return dict(self._client.api.inspect_image(image_id))
        except NotFound:
            return None
        except DockerException as exc:
            raise self._failed(f"inspect image {image_id}", exc) from exc

    def images_in_use(self) -> set[str]:
        """The images of every container, running or not."""
        try:
            return {str(c["ImageID"]) for c in self._client.api.containers(all=True) if c.get("ImageID")}
        except DockerException as exc:
            raise self._failed("list containers", exc) from exc

    def build_cache(self) -> list[CacheRecord]:
        """BuildKit's build cache records (the engine lists none when it holds none)."""
        try:
            usage = self._client.api.df()
        except DockerException as exc:
            raise self._failed("report its disk usage", exc) from exc
        return [cache_record(record) for record in usage.get("BuildCache") or ()]

    def prune_images(self, until: float) -> PruneResult:
        """POST /images/prune for the dangling images made before `until` (epoch seconds); the engine skips those
        a container uses, and removes with each the untagged parents only it kept."""
        try:
            report = self._client.api.prune_images(filters={"dangling": True, "until": str(int(until))})
        except DockerException as exc:
            raise self._failed("prune dangling images", exc) from exc
        deleted = tuple(str(item["Deleted"]) for item in report.get("ImagesDeleted") or () if item.get("Deleted"))
        return PruneResult(deleted, int(report.get("SpaceReclaimed") or 0))

    def prune_build_cache(self, unused_for_seconds: int) -> PruneResult:
        """POST /build/prune for the build cache unused for that long; the engine keeps records in use."""
        try:
            # The build cache's `until` is a duration (the images' is a time): "168h", not a timestamp.
            report = self._client.api.prune_builds(filters={"until": f"{unused_for_seconds}s"})
        except DockerException as exc:
            raise self._failed("prune the build cache", exc) from exc
        return PruneResult(tuple(str(record) for record in report.get("CachesDeleted") or ()),
                           int(report.get("SpaceReclaimed") or 0))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
