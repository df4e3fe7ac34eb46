"""Users' own images on the real engine, through the proxy, with the docker CLI: alice commits her container into
alice/NAME; bob can neither run it, inspect it, see its history, save it, tag it, push it, remove it nor find it
in his list; nobody but an admin removes a shared image; a commit in flight when the proxy is killed is settled
at the next start-up."""

from __future__ import annotations

import json
import pwd
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.test_proxy import docker_as
from tests.integration.test_proxy_lifecycle import HoldingRelay


@pytest.fixture
def own_proxy(testbed: Testbed, engine: docker.DockerClient) -> Iterator[ProxyHandle]:
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8])
    try:
        yield handle
    finally:
        stop_proxy(handle, engine)


def committed(proxy: ProxyHandle, user: str, image: str) -> str:
    """A container of `user`'s with a file in it, committed as `image` with the docker CLI: the image's id."""
    name = f"snap-{uuid.uuid4().hex[:6]}"
    made = docker_as(proxy, user, "run", "--name", name, TEST_IMAGE, "sh", "-c", "echo mine > /tmp/secret")
    assert made.returncode == 0, made.stderr
    commit = docker_as(proxy, user, "commit", name, image)
    assert commit.returncode == 0, commit.stderr
    return commit.stdout.strip()


def test_a_committed_image_is_its_owners_alone(own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    image_id = committed(own_proxy, "alice", "alice/snap")
    ran = docker_as(own_proxy, "alice", "run", "--rm", "alice/snap", "cat", "/tmp/secret")
    assert ran.returncode == 0 and ran.stdout.strip() == "mine", ran.stderr
    saved = Path(f"/tmp/bob-saves-{uuid.uuid4().hex[:6]}.tar")
    for args in (("run", "--rm", "alice/snap", "cat", "/tmp/secret"), ("run", "--rm", image_id, "true"),
                 ("image", "inspect", "alice/snap"), ("history", "alice/snap"), ("save", "-o", str(saved),
                                                                                  "alice/snap"),
                 ("tag", "alice/snap", "bob/x"), ("push", "alice/snap"), ("rmi", "alice/snap")):
        tried = docker_as(own_proxy, "bob", *args)
        print(f"bob$ docker {' '.join(args)} -> exit {tried.returncode}: {tried.stderr.strip()}")
        assert tried.returncode != 0 and "mine" not in tried.stdout, tried
        # a run's create is refused as for a missing image; the CLI then tries a pull, refused in turn
        assert "No such image" in tried.stderr or "names alice's own images" in tried.stderr, tried
    assert not saved.exists() or saved.stat().st_size == 0
    saved.unlink(missing_ok=True)
    assert engine.images.get("alice/snap").id == image_id  # still there, still alice's only tag
    assert engine.images.get(image_id).tags == ["alice/snap:latest"]
    listed = docker_as(own_proxy, "bob", "images", "--format", "{{.Repository}}")
    assert listed.returncode == 0 and "alice/snap" not in listed.stdout and TEST_IMAGE.split(":")[0] in listed.stdout
    assert "alice/snap" in docker_as(own_proxy, "alice", "images", "--format", "{{.Repository}}").stdout
    denials = [e for e in own_proxy.events() if e["type"] == "image.deny" and e["user"] == "bob"]
    assert len(denials) >= 6 and {e["details"]["reason"] for e in denials} >= {"not_found"}


def test_names_only_in_ones_own_namespace_and_shared_images_are_nobodys_to_remove(
        own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    name = f"c-{uuid.uuid4().hex[:6]}"
    assert docker_as(own_proxy, "alice", "create", "--name", name, TEST_IMAGE, "true").returncode == 0
    foreign = docker_as(own_proxy, "alice", "commit", name, "bob/stolen")
    assert foreign.returncode != 0 and "alice/NAME" in foreign.stderr, foreign.stderr
    assert not engine.images.list(name="bob/stolen")
    shadow = docker_as(own_proxy, "alice", "tag", TEST_IMAGE, "busybox:latest")
    assert shadow.returncode != 0 and not engine.images.list(name="busybox")
    shared = docker_as(own_proxy, "alice", "rmi", TEST_IMAGE)
    assert shared.returncode != 0 and "shared image" in shared.stderr
    assert engine.images.get(TEST_IMAGE)
    other = f"c-{uuid.uuid4().hex[:6]}"
    assert docker_as(own_proxy, "bob", "create", "--name", other, TEST_IMAGE, "true").returncode == 0
    stolen = docker_as(own_proxy, "alice", "commit", f"{other}._.{pwd.getpwnam('bob').pw_uid}", "alice/bobs")
    assert stolen.returncode != 0 and "No such container" in stolen.stderr
    assert not engine.images.list(name="alice/bobs")
    image_id = committed(own_proxy, "alice", "alice/mine")
    removed = docker_as(own_proxy, "alice", "rmi", "alice/mine")
    assert removed.returncode == 0, removed.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(image_id)
    [removal] = [e["details"] for e in own_proxy.events() if e["type"] == "image.remove"]
    assert removal["image"] == "alice/mine" and removal["deleted"][0] == image_id  # then its layers


def test_a_commit_in_flight_when_the_proxy_is_killed_is_its_users_after_the_restart(
        testbed: Testbed, engine: docker.DockerClient) -> None:
    root = testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    relay = HoldingRelay(testbed.docker_host.removeprefix("unix://"), root / "relay.sock", "response",
                         marker=b"/commit")
    fake = Testbed(testbed.dir, {**testbed.env, "DOCKER_HOST": f"unix://{root / 'relay.sock'}"})
    handle = start_proxy(fake, root, engine_cgroup=testbed.env["DS01_TESTBED_ENGINE_CGROUP"])
    try:
        name = f"c-{uuid.uuid4().hex[:6]}"
        assert docker_as(handle, "alice", "run", "--name", name, TEST_IMAGE, "true").returncode == 0
        client = subprocess.Popen(["runuser", "-u", "alice", "--", "env", f"DOCKER_HOST=unix://{handle.socket}",
                                   "docker", "commit", name, "alice/inflight"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert relay.reached.wait(60), "the commit never reached the relay"
        deadline = time.monotonic() + 30
        while not engine.images.list(name="alice/inflight"):  # the engine made it; the proxy never heard
            assert time.monotonic() < deadline, "the engine never made the image"
            time.sleep(0.1)
        handle.process.send_signal(signal.SIGKILL)
        handle.process.wait(timeout=30)
        client.wait(timeout=60)
        pending = json.loads((root / "state" / "images.json").read_text())["pending"]
        assert [entry["tags"] for entry in pending.values()] == [["alice/inflight:latest"]]
        handle.socket.unlink()
        relay.close()
        handle = start_proxy(testbed, root)  # straight to the engine now
        record = json.loads((root / "state" / "images.json").read_text())
        image_id = engine.images.get("alice/inflight").id
        assert record["pending"] == {} and record["owned"][image_id]["user"] == "alice"
        assert docker_as(handle, "bob", "image", "inspect", "alice/inflight").returncode != 0
        assert docker_as(handle, "alice", "image", "inspect", "alice/inflight").returncode == 0
        settled = [e for e in handle.events() if e["type"] == "image.commit"]
        assert [(e["details"]["interrupted"], e["details"]["ids"]) for e in settled] == [(True, [image_id])]
    finally:
        relay.close()
        stop_proxy(handle, engine)
