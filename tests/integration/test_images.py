"""Users' own images on the real engine, through the proxy, with the docker CLI: alice commits her container into
alice/NAME; bob can neither run it, inspect it, see its history, save it, tag it, push it, remove it nor find it
in his list; nobody but an admin removes a shared image; a commit in flight when the proxy is killed is settled
at the next start-up."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01.config import validators
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.test_alloc_cli import DS01
from tests.integration.test_container_cli import CONTAINER
from tests.integration.test_proxy import docker_as
from tests.integration.test_proxy_lifecycle import relayed_proxy


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


def test_a_users_tag_on_a_shared_image_is_theirs_to_see_and_to_untag(own_proxy: ProxyHandle,
                                                                      engine: docker.DockerClient) -> None:
    name = f"alice/bb{uuid.uuid4().hex[:4]}"
    assert docker_as(own_proxy, "alice", "tag", TEST_IMAGE, name).returncode == 0
    shared_id = engine.images.get(TEST_IMAGE).id
    for args in (("run", "--rm", name, "true"), ("image", "inspect", name), ("tag", name, "bob/x"), ("rmi", name)):
        tried = docker_as(own_proxy, "bob", *args)
        assert tried.returncode != 0, tried
        assert "No such image" in tried.stderr or "names alice's own images" in tried.stderr, tried
    assert not engine.images.list(name="bob/x")
    bobs = docker_as(own_proxy, "bob", "images", "--format", "{{.Repository}}")
    assert bobs.returncode == 0 and name not in bobs.stdout and TEST_IMAGE.split(":")[0] in bobs.stdout
    shown = json.loads(docker_as(own_proxy, "bob", "image", "inspect", TEST_IMAGE).stdout)[0]
    assert f"{name}:latest" not in shown["RepoTags"] and TEST_IMAGE in shown["RepoTags"]
    assert name in docker_as(own_proxy, "alice", "images", "--format", "{{.Repository}}").stdout
    assert docker_as(own_proxy, "alice", "rmi", "-f", name).returncode != 0  # forced, it could remove the image
    untagged = docker_as(own_proxy, "alice", "rmi", name)
    assert untagged.returncode == 0 and "Untagged" in untagged.stdout and "Deleted" not in untagged.stdout, untagged
    assert engine.images.get(TEST_IMAGE).id == shared_id and not engine.images.list(name=name)


def test_a_commit_in_flight_when_the_proxy_is_killed_is_its_users_after_the_restart(
        testbed: Testbed, engine: docker.DockerClient) -> None:
    relay, handle = relayed_proxy(testbed, "response", b"/commit")
    root = handle.root
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


def context(proxy: ProxyHandle, user: str, dockerfile: str, **files: bytes) -> Path:
    """A build context of `user`'s, in the proxy's data directory, owned by them."""
    root = proxy.data / f"ctx-{user}-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    (root / "Dockerfile").write_text(dockerfile)
    for name, data in files.items():
        (root / name).write_bytes(data)
    account = pwd.getpwnam(user)
    for path in (root, *root.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)
    return root


def settled(proxy: ProxyHandle) -> dict[str, Any]:
    """The ownership record once no build is pending: the proxy settles one after the last byte of its answer,
    which the client may have read a moment before."""
    deadline = time.monotonic() + 30
    while (record := json.loads((proxy.root / "state" / "images.json").read_text()))["pending"]:
        assert time.monotonic() < deadline, f"a build stayed pending: {record['pending']}"
        time.sleep(0.1)
    return dict(record)


def classic(proxy: ProxyHandle, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """docker build with the classic builder, as the docs tell users to."""
    return proxy.as_user(user, "env", "DOCKER_BUILDKIT=0", "docker", "build", *args, timeout=300)


def test_a_users_build_is_theirs_runs_in_their_cgroup_and_others_cannot_build_from_it(
        own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    built = classic(own_proxy, "alice", "-t", "alice/tools", str(context(own_proxy, "alice", (
        # the classic builder ignores syntax=: with no registry here, a fetched frontend would fail the build
        f"# syntax=docker/dockerfile:1\nFROM {TEST_IMAGE}\nRUN cat /proc/self/cgroup > /cgroup && "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes > /memory && echo tool > /tool\n"))))
    print(built.stdout[-600:], built.stderr[-600:])
    assert built.returncode == 0, built.stderr
    image = engine.images.get("alice/tools")
    record = settled(own_proxy)
    assert record["owned"][image.id]["user"] == "alice"
    ran = docker_as(own_proxy, "alice", "run", "--rm", "alice/tools", "sh", "-c", "cat /tool /memory /cgroup")
    assert ran.returncode == 0, ran.stderr
    tool, memory, *cgroups = ran.stdout.splitlines()
    limits = json.loads(subprocess.run([DS01, "limits", "alice", "--format", "json"], env=own_proxy.env,
                                       capture_output=True, text=True, check=True).stdout)
    print(f"the RUN step's memory limit {memory}, cgroups {cgroups[:3]}")
    assert tool == "tool" and int(memory) == validators.size(limits["limits"]["memory"])
    assert any("/ds01/alice/" in line for line in cgroups), cgroups  # under alice's cgroup parent
    for dockerfile in ("FROM alice/tools\n", f"FROM {TEST_IMAGE}\nCOPY --from=alice/tools /tool /tool\n"):
        before = {i.id for i in engine.images.list(all=True)}
        stolen = classic(own_proxy, "bob", "-t", "bob/x", str(context(own_proxy, "bob", dockerfile)))
        print(f"bob$ docker build ({dockerfile.splitlines()[-1]}) -> exit {stolen.returncode}: "
              f"{stolen.stderr.strip()[-300:]}")
        assert stolen.returncode != 0 and "No such image: alice/tools" in stolen.stderr
        assert {i.id for i in engine.images.list(all=True)} == before  # the daemon built nothing


@pytest.mark.parametrize(("args", "said"), [
    (("-t", "bob/x"), "only alice/NAME"),
    (("-t", "alice/x", "--build-arg", "HTTP_PROXY=http://10.0.0.1:3128"), "HTTP_PROXY"),
    (("-t", "alice/x", "--network", "host"), "no network host of yours"),
    (("-t", "alice/x", "--cgroup-parent", "/"), "cgroupparent"),
    (("-t", "alice/x", "--add-host", "x:10.0.0.1"), "extrahosts"),
    (("-t", "alice/x", "--platform", "linux/s390x"), "builds for linux/amd64 only"),
])
def test_each_refused_build_parameter_builds_nothing(own_proxy: ProxyHandle, engine: docker.DockerClient,
                                                      args: tuple[str, ...], said: str) -> None:
    before = {i.id for i in engine.images.list(all=True)}
    refused = classic(own_proxy, "alice", *args, str(context(own_proxy, "alice", f"FROM {TEST_IMAGE}\nRUN true\n")))
    print(f"alice$ docker build {' '.join(args)} -> exit {refused.returncode}: {refused.stderr.strip()[-300:]}")
    assert refused.returncode != 0 and said in refused.stderr, refused.stderr
    assert {i.id for i in engine.images.list(all=True)} == before


def test_raw_refusals_remote_outputs_and_buildkit(own_proxy: ProxyHandle) -> None:
    for query, said in (("t=alice/x&remote=https://example.org/ctx.tar", "remote"),
                        ("t=alice/x&outputs=type%3Dimage%2Cname%3Dbob%2Fx", "outputs"),
                        ("t=alice/x&version=2", "classic builder")):
        answered = own_proxy.as_user("alice", "curl", "-sS", "--unix-socket", str(own_proxy.socket), "-X", "POST",
                                     "-H", "Content-Type: application/x-tar", "--data-binary", "@/dev/null",
                                     f"http://docker/v1.41/build?{query}")
        print(f"alice$ POST /build?{query} -> {answered.stdout.strip()[:200]}")
        assert said in answered.stdout
    session = own_proxy.as_user("alice", "curl", "-sS", "--unix-socket", str(own_proxy.socket), "-X", "POST",
                                "http://docker/v1.41/session")
    assert "DOCKER_BUILDKIT=0" in session.stdout


def test_a_context_larger_than_allowed_is_413_and_a_full_quota_refuses_builds(
        testbed: Testbed, engine: docker.DockerClient) -> None:
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8],
                         extra_config="images:\n  max_context_size: 1m\n")
    try:
        big = context(handle, "alice", f"FROM {TEST_IMAGE}\n", blob=os.urandom(2 * 2**20))
        refused = classic(handle, "alice", "-t", "alice/big", str(big))
        print(f"alice$ docker build (2 MiB context) -> exit {refused.returncode}: {refused.stderr.strip()[-300:]}")
        assert refused.returncode != 0 and "larger than 1m" in refused.stderr
        assert not engine.images.list(name="alice/big")
        first = classic(handle, "alice", "-t", "alice/one",
                        str(context(handle, "alice", f"FROM {TEST_IMAGE}\nRUN head -c 300000 /dev/urandom > /x\n")))
        assert first.returncode == 0, first.stderr
        settled(handle)
        handle.config.write_text(handle.config.read_text().replace(
            "users:\n", "users:\n  alice:\n    image_storage: 100k\n", 1))
        deadline = time.monotonic() + 30
        while True:
            over = classic(handle, "alice", "-t", "alice/two", str(context(handle, "alice", f"FROM {TEST_IMAGE}\n")))
            if over.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(1)  # the proxy reloads its configuration when the file changes
        print(f"alice$ docker build (over quota) -> exit {over.returncode}: {over.stderr.strip()[-300:]}")
        assert over.returncode != 0 and "you may keep 100.0KiB" in over.stderr and "alice/one:latest" in over.stderr
        # Moving the name off her big image leaves it hers and usable by its id: it still counts.
        big_id = engine.images.get("alice/one").id
        assert docker_as(handle, "alice", "tag", TEST_IMAGE, "alice/one").returncode == 0
        assert docker_as(handle, "alice", "run", "--rm", big_id, "ls", "/x").returncode == 0
        still = classic(handle, "alice", "-t", "alice/three", str(context(handle, "alice", f"FROM {TEST_IMAGE}\n")))
        print(f"alice$ docker build (name moved off) -> exit {still.returncode}: {still.stderr.strip()[-300:]}")
        assert still.returncode != 0 and f"untagged {big_id.removeprefix('sha256:')[:12]}" in still.stderr
        assert not engine.images.list(name="alice/three")
    finally:
        stop_proxy(handle, engine)


def test_container_image_build_generates_a_dockerfile_and_tags_the_users_image(
        own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    directory = own_proxy.data / f"gen-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    os.chown(directory, pwd.getpwnam("alice").pw_uid, pwd.getpwnam("alice").pw_gid)
    built = own_proxy.as_user("alice", CONTAINER, "image", "build", "gen", str(directory), "--from", TEST_IMAGE,
                              timeout=300)
    print(f"alice$ container image build gen {directory} --from {TEST_IMAGE}\n{built.stdout}{built.stderr}")
    assert built.returncode == 0, built.stderr
    assert f"\nFROM {TEST_IMAGE}\n" in (directory / "Dockerfile").read_text()  # kept, to edit and build again
    assert engine.images.get("alice/gen")
    listed = own_proxy.as_user("alice", CONTAINER, "image", "list", "--format", "json")
    assert listed.returncode == 0 and "gen" in listed.stdout


def test_what_a_failed_build_left_nobody_but_an_admin_can_use(own_proxy: ProxyHandle,
                                                               engine: docker.DockerClient) -> None:
    key = context(own_proxy, "bob", f"FROM {TEST_IMAGE}\nCOPY key.txt /key.txt\nRUN exit 1\n", **{"key.txt": b"BOBKEY"})
    (key / "key.txt").chmod(0o600)
    failed = classic(own_proxy, "bob", "-t", "bob/leak", str(key))
    assert failed.returncode != 0
    steps = [line.split("---> ")[1].strip() for line in failed.stdout.splitlines()
             if "---> " in line and "Running in" not in line and "Using cache" not in line]
    left = steps[-1]  # the COPY step's image, committed before the RUN failed
    assert engine.images.get(left)  # the engine keeps it
    for user in ("alice", "carol", "bob"):
        listed = docker_as(own_proxy, user, "images", "-a", "-q")
        assert left[:12] not in listed.stdout, (user, listed.stdout)
        for args in (("save", "-o", f"/tmp/{user}-{uuid.uuid4().hex[:6]}.tar", left), ("run", "--rm", left, "true"),
                     ("tag", left, f"{user}/gotit")):
            tried = docker_as(own_proxy, user, *args)
            print(f"{user}$ docker {' '.join(args)} -> exit {tried.returncode}: {tried.stderr.strip()[:160]}")
            assert tried.returncode != 0 and "BOBKEY" not in tried.stdout
    engine.images.remove(left, force=True)


def test_repeated_tags_and_changes_are_each_checked(own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    built = classic(own_proxy, "alice", "-t", "alice/one", "-t", "alice/two:v2",
                    str(context(own_proxy, "alice", f"FROM {TEST_IMAGE}\nRUN echo x > /x\n")))
    assert built.returncode == 0, built.stderr
    assert engine.images.get("alice/one").id == engine.images.get("alice/two:v2").id
    mixed = classic(own_proxy, "alice", "-t", "alice/three", "-t", "bob/three",
                    str(context(own_proxy, "alice", f"FROM {TEST_IMAGE}\n")))
    assert mixed.returncode != 0 and "only alice/NAME" in mixed.stderr and not engine.images.list(name="bob/three")
    name = f"c-{uuid.uuid4().hex[:6]}"
    assert docker_as(own_proxy, "alice", "create", "--name", name, TEST_IMAGE, "true").returncode == 0
    committed_ = docker_as(own_proxy, "alice", "commit", "-c", "ENV A=1", "-c", "ENV B=2", name, "alice/envs")
    assert committed_.returncode == 0, committed_.stderr
    assert {"A=1", "B=2"} <= set(engine.images.get("alice/envs").attrs["Config"]["Env"])
