"""A base image that carries ds01.* labels (as anyone may publish one) gives the classic builder's RUN containers
those labels: bob's build, on a base labelled as alice's, runs in containers that claim to be alice's. On the real
engine through the proxy: alice can neither list, inspect, exec into, copy from nor commit them, and they do not
count against her containers, while the build goes on and its secret stays bob's."""

from __future__ import annotations

import io
import subprocess
import threading
import time
import uuid

import docker

from tests.conftest import TEST_IMAGE, ProxyHandle
from tests.integration.test_images import classic, context
from tests.integration.test_proxy import docker_as


def test_another_users_labels_on_a_base_image_give_them_none_of_the_builds_containers(
        own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    alice_uid = subprocess.run(["id", "-u", "alice"], capture_output=True, text=True, check=True).stdout.strip()
    base = f"ds01-test/labelled-{uuid.uuid4().hex[:6]}"
    # Built on the engine directly, as an image pulled from a registry would come.
    engine.images.build(fileobj=_dockerfile(f"FROM {TEST_IMAGE}\nLABEL ds01.user=alice ds01.uid={alice_uid} "
                                            'ds01.type=docker ds01.instance=""\n'), tag=base, rm=True)
    secret = f"BOB-SECRET-{uuid.uuid4().hex[:8]}"
    build_context = context(own_proxy, "bob", f"FROM {base}\nCOPY key /key\nRUN sleep 20 && rm /key\n",
                            key=secret.encode())
    build = threading.Thread(target=lambda: results.append(classic(own_proxy, "bob", "-t", "bob/app",
                                                                   str(build_context))))
    results: list[subprocess.CompletedProcess[str]] = []
    build.start()
    try:
        step = _running_step(engine)
        print(f"bob's RUN step {step.name} carries {step.labels.get('ds01.user')!r}, cgroup parent "
              f"{step.attrs['HostConfig']['CgroupParent']}")
        listed = docker_as(own_proxy, "alice", "ps", "-a", "--format", "{{.ID}}")
        assert listed.returncode == 0 and step.id[:12] not in listed.stdout, listed
        for args in (("inspect", step.id), ("exec", step.id, "cat", "/key"), ("cp", f"{step.id}:/key", "-"),
                     ("commit", step.id, "alice/stolen"), ("stop", step.id)):
            tried = docker_as(own_proxy, "alice", *args)
            print(f"alice$ docker {' '.join(args)} -> exit {tried.returncode}: {tried.stderr.strip()[:120]}")
            assert tried.returncode != 0 and secret not in tried.stdout, tried
            assert "No such container" in tried.stderr or "No such object" in tried.stderr, tried
        assert not engine.images.list(name="alice/stolen")
        assert engine.containers.get(step.id).status == "running"  # alice's stop did nothing
    finally:
        build.join(120)
    assert results and results[0].returncode == 0, results
    engine.images.remove(base, force=True)


def _dockerfile(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def _running_step(engine: docker.DockerClient) -> docker.models.containers.Container:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for found in engine.containers.list(filters={"label": "ds01.user=alice"}):
            if "sleep 20" in " ".join(found.attrs["Config"]["Cmd"] or []):
                return found
        time.sleep(0.2)
    raise AssertionError("bob's RUN step never ran")
