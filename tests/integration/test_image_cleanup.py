"""`ds01 cleanup` against the test bed's engine: a dangling image older than images.prune_after goes, with its
ownership record, and a dangling image a stopped container uses stays. The images are made as root, straight on
the engine: a commit, then a second commit to the same tag, leaves the first dangling. Each commit is of a
container that wrote random bytes of its own, so that the layer of a pruned image is its alone."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01.proxy.imagestore import STATE_FILE, ImageStore, PendingImage
from tests.conftest import REPO, TEST_IMAGE, Testbed

DS01 = str(Path(sys.executable).parent / "ds01")
LABEL = {"ds01-test": f"image-cleanup-{os.getpid()}"}


@dataclass
class Scene:
    root: Path
    client: docker.DockerClient
    env: dict[str, str]
    containers: list[Any] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def writer(self) -> Any:
        """A stopped container with 1 MB of its own."""
        container = self.client.containers.run(TEST_IMAGE, ["sh", "-c", "head -c 1000000 /dev/urandom > /blob"],
                                               detach=True, labels=LABEL)
        self.containers.append(container)
        assert container.wait(timeout=60)["StatusCode"] == 0
        return container

    def commit(self, source: Any, repository: str) -> str:
        image = source.commit(repository=repository, tag="t", conf={"Labels": LABEL})
        self.images.append(image.id)
        if f"{repository}:t" not in self.tags:
            self.tags.append(f"{repository}:t")
        return str(image.id)

    def record(self, user: str, made_by: str, *image_ids: str) -> None:
        store = ImageStore(self.root / "state")
        store.settle(store.begin(PendingImage(user, 1001, made_by, (), "2026-01-01T00:00:00Z")), image_ids)

    def cleanup(self, *args: str) -> list[dict[str, Any]]:
        result = subprocess.run([DS01, "cleanup", "--format", "json", *args], env=self.env, capture_output=True,
                                text=True, check=False, timeout=300)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def exists(self, image_id: str) -> bool:
        try:
            self.client.images.get(image_id)
        except docker.errors.ImageNotFound:
            return False
        return True


@pytest.fixture
def scene(testbed: Testbed, tmp_path: Path) -> Iterator[Scene]:
    config = tmp_path / "limits.yaml"
    config.write_text((REPO / "config" / "resource-limits.yaml").read_text() + "\nimages:\n  prune_after: 1s\n")
    (tmp_path / "state").mkdir()
    env = {**os.environ, "DS01_CONFIG": str(config), "DS01_STATE_DIR": str(tmp_path / "state"),
           "DS01_LOG_DIR": str(tmp_path / "log"), "DS01_RUN_DIR": str(tmp_path / "run"),
           "DOCKER_HOST": testbed.docker_host}
    client = docker.DockerClient(base_url=testbed.docker_host)
    made = Scene(tmp_path, client, env)
    try:
        yield made
    finally:
        for container in made.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for name in [*made.tags, *reversed(made.images)]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(name, noprune=False)
        client.close()


def test_cleanup_prunes_an_old_dangling_image_and_keeps_one_a_stopped_container_uses(scene: Scene) -> None:
    old = scene.commit(scene.writer(), "ds01-prune-test/old")
    newer = scene.commit(scene.writer(), "ds01-prune-test/old")  # takes the tag: `old` is dangling now
    used = scene.commit(scene.writer(), "ds01-prune-test/used")
    stopped = scene.client.containers.run(used, ["true"], detach=True, labels=LABEL)
    scene.containers.append(stopped)
    assert stopped.wait(timeout=60)["StatusCode"] == 0
    scene.commit(scene.writer(), "ds01-prune-test/used")  # `used` is dangling too, but a stopped container has it
    scene.record("alice", "commit", old, newer)
    scene.record("bob", "build", used)
    dangling = {image.id for image in scene.client.images.list(filters={"dangling": True})}
    assert {old, used} <= dangling
    time.sleep(2.5)  # both older than prune_after (1s): only the container protects `used`

    planned = scene.cleanup("--dry-run")
    assert {(row["image"], row["user"], row["action"]) for row in planned if "image" in row} >= {
        (old, "alice", "would prune")}
    assert used not in {row.get("image") for row in planned}
    assert scene.exists(old)

    done = scene.cleanup()
    assert (old, "alice", "prune") in {(row["image"], row["user"], row["action"]) for row in done if "image" in row}
    assert used not in {row.get("image") for row in done}
    [reclaimed] = [row for row in done if row["action"] == "reclaimed"]
    assert reclaimed["size_bytes"] >= 1_000_000  # at least the megabyte of `old`'s own layer
    assert not scene.exists(old)
    assert scene.exists(used) and scene.exists(newer)
    owned = json.loads((scene.root / "state" / STATE_FILE).read_text())["owned"]
    assert set(owned) == {newer, used}  # the pruned image's record went with it (no proxy runs on this run dir)
    events = [json.loads(line) for line in (scene.root / "log" / "events.jsonl").read_text().splitlines()]
    images = {event["details"]["image"]: event for event in events if event["type"] == "cleanup.prune_image"}
    assert (images[old]["user"], images[old]["details"]["record_dropped"]) == ("alice", True)
    assert used not in images
    [totals] = [event for event in events if event["type"] == "cleanup.prune"]
    assert totals["details"]["images"] == len(images) and totals["details"]["records_dropped"] == 1
    assert totals["details"]["images_reclaimed_bytes"] == reclaimed["size_bytes"]
