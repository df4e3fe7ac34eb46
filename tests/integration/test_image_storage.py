"""`ds01 exporter`'s ds01_image_storage_bytes against the test bed's engine: an image committed on the engine and
recorded as alice's in the ownership record counts its own layer, its Size less its parent's."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01.proxy.imagestore import STATE_FILE, ImageStore, PendingImage
from tests.conftest import REPO, TEST_IMAGE, Testbed, TopologyFile
from tests.integration.test_exporter import ExporterHandle, start_exporter, stop

TAG = f"alice/ds01-storage-test-{os.getpid()}:latest"


@pytest.fixture
def committed(engine: docker.DockerClient) -> Iterator[Any]:
    """alice/...: a commit of a container that wrote 3 MB of its own onto the test image."""
    container = engine.containers.run(TEST_IMAGE, ["sh", "-c", "head -c 3000000 /dev/urandom > /blob"], detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        image = container.commit(repository=TAG.rsplit(":", 1)[0], tag="latest")
    finally:
        container.remove(force=True)
    try:
        yield image
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(image.id, force=True)


@pytest.fixture
def exporter(testbed: Testbed, topology: TopologyFile, tmp_path: Path, committed: Any) -> Iterator[ExporterHandle]:
    state = tmp_path / "state"
    state.mkdir()
    store = ImageStore(state)
    store.settle(store.begin(PendingImage("alice", 1001, "commit", (TAG,), "2026-01-01T00:00:00Z")), [committed.id])
    env = {**os.environ, "DS01_CONFIG": str(REPO / "config" / "resource-limits.yaml"), "DS01_STATE_DIR": str(state),
           "DS01_LOG_DIR": str(tmp_path / "log"), "DS01_RUN_DIR": str(tmp_path / "run"),
           "DOCKER_HOST": testbed.docker_host, "FAKE_NVML_TOPOLOGY": str(topology.path)}
    handle = start_exporter(env)
    try:
        yield handle
    finally:
        stop(handle.process)


def test_a_users_committed_image_counts_its_own_layer(exporter: ExporterHandle, committed: Any,
                                                       engine: docker.DockerClient, tmp_path: Path) -> None:
    base = engine.images.get(committed.attrs["Parent"])
    own = committed.attrs["Size"] - base.attrs["Size"]
    assert own >= 3_000_000  # the blob, not the test image below it
    exporter.wait_for("ds01_image_storage_bytes", own, user="alice")
    assert exporter.value("ds01_exporter_source_up", source="images") == 1
    assert exporter.value("ds01_image_storage_bytes", user="bob") is None
    record = (tmp_path / "state" / STATE_FILE).read_bytes()
    engine.images.remove(committed.id, force=True)  # its record stays, but alice has no image left: no series
    deadline = time.monotonic() + 30
    while exporter.value("ds01_image_storage_bytes", user="alice") is not None:
        assert time.monotonic() < deadline, "alice still has an image size with her only image gone"
        time.sleep(0.2)
    assert (tmp_path / "state" / STATE_FILE).read_bytes() == record  # the exporter only reads it
