"""Builds through the proxy over their whole life, on the real engine with the docker CLI's classic builder: a
build in flight when the proxy is killed is its builder's after the restart, a build that fails leaves nothing
recorded, and a 1 GiB context goes through in blocks, never whole in the proxy's memory."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.test_images import classic, context
from tests.integration.test_proxy import docker_as
from tests.integration.test_proxy_lifecycle import relayed_proxy

BIG_CONTEXT_BYTES = 2**30
NEEDED_FREE_BYTES = 4 * 2**30  # the spooled context and the engine's unpacked copy, with room to spare
MEMORY_GROWTH_LIMIT_KIB = 64 * 1024


def images_record(handle: ProxyHandle) -> dict[str, dict[str, dict[str, object]]]:
    """STATE/images.json, parsed: it must be valid JSON whenever the proxy stops, however it stops."""
    return dict(json.loads((handle.root / "state" / "images.json").read_text()))


def test_a_build_in_flight_when_the_proxy_is_killed_is_its_builders_after_the_restart(
        testbed: Testbed, engine: docker.DockerClient) -> None:
    relay, handle = relayed_proxy(testbed, "response", b"/build")
    root = handle.root
    try:
        directory = context(handle, "alice", f"FROM {TEST_IMAGE}\nRUN echo inflight > /inflight\n")
        client = subprocess.Popen(["runuser", "-u", "alice", "--", "env", f"DOCKER_HOST=unix://{handle.socket}",
                                   "DOCKER_BUILDKIT=0", "docker", "build", "-t", "alice/inflight", str(directory)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert relay.reached.wait(120), "the build never reached the relay"
        deadline = time.monotonic() + 120
        while not engine.images.list(name="alice/inflight"):  # the engine built it; the proxy never heard
            assert time.monotonic() < deadline, "the engine never made the image"
            time.sleep(0.1)
        handle.process.send_signal(signal.SIGKILL)
        handle.process.wait(timeout=30)
        client.wait(timeout=60)
        pending = images_record(handle)["pending"]
        print(f"images.json after kill -9: pending {pending}")
        assert [(entry["user"], entry["made_by"], entry["tags"]) for entry in pending.values()] == [
            ("alice", "build", ["alice/inflight:latest"])]
        handle.socket.unlink()
        relay.close()
        handle = start_proxy(testbed, root)  # straight to the engine now
        record = images_record(handle)
        image_id = engine.images.get("alice/inflight").id
        assert record["pending"] == {} and record["owned"][image_id]["user"] == "alice"
        bobs = docker_as(handle, "bob", "image", "inspect", "alice/inflight")
        assert bobs.returncode != 0 and "No such image" in bobs.stderr, bobs
        assert docker_as(handle, "alice", "image", "inspect", "alice/inflight").returncode == 0
        settled = [e["details"] for e in handle.events() if e["type"] == "image.build"]
        print(f"image.build events after the restart: {settled}")
        assert [(e["interrupted"], e["image"], e["ids"][0]) for e in settled] == [
            (True, ["alice/inflight:latest"], image_id)]
    finally:
        relay.close()
        stop_proxy(handle, engine)


def test_a_build_whose_base_cannot_be_pulled_settles_with_nothing_recorded(
        own_proxy: ProxyHandle, engine: docker.DockerClient) -> None:
    # Not here, so the engine pulls it from docker.io, which the test bed cannot reach.
    failed = classic(own_proxy, "alice", "-t", "alice/badbase",
                     str(context(own_proxy, "alice", "FROM ds01-test/nonexistent:1\nRUN true\n")))
    print(f"alice$ docker build (FROM ds01-test/nonexistent:1) -> exit {failed.returncode}: "
          f"{failed.stderr.strip()[-300:]}")
    assert failed.returncode != 0 and "ds01:" not in failed.stderr  # the engine's failure, not a refusal
    assert not engine.images.list(name="alice/badbase")
    # The proxy settles the record once the engine's stream has ended, which the client may see first.
    deadline = time.monotonic() + 10
    while images_record(own_proxy)["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert images_record(own_proxy) == {"format": 1, "owned": {}, "pending": {}}
    settled = [e["details"] for e in own_proxy.events() if e["type"] == "image.build"]
    assert [(e["interrupted"], e["image"], e["ids"]) for e in settled] == [(False, ["alice/badbase:latest"], [])]


def _memory_kib(pid: int) -> dict[str, int]:
    """The process's peak (VmHWM) and current (VmRSS) resident memory, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: int(value.split()[0]) for name, _, value in (line.partition(":") for line in status)
            if name in ("VmHWM", "VmRSS")}


def _roomiest(*directories: Path) -> Path:
    return max(directories, key=lambda directory: shutil.disk_usage(directory).free)


def test_a_1_gib_context_streams_through_without_the_proxys_memory_growing(
        testbed: Testbed, engine: docker.DockerClient) -> None:
    # The proxy spools the context under its state directory and the engine unpacks it under its root: both need
    # the room. A CI runner has it; a developer's full disk skips.
    base = _roomiest(testbed.dir, Path(tempfile.gettempdir()))
    engine_root = Path(engine.info()["DockerRootDir"])
    for where in (base, engine_root):
        free = shutil.disk_usage(where).free
        if free < NEEDED_FREE_BYTES:
            reason = (f"{where} has {free / 2**30:.1f} GiB free; streaming a 1 GiB build context needs "
                      f"{NEEDED_FREE_BYTES / 2**30:.0f} GiB there")
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
    handle = start_proxy(testbed, base / f"ds01-big-context-{uuid.uuid4().hex[:8]}")
    try:
        warm = classic(handle, "alice", "-t", "alice/warm", str(context(handle, "alice", f"FROM {TEST_IMAGE}\n")))
        assert warm.returncode == 0, warm.stderr  # the build path's code loaded before measuring
        directory = context(handle, "alice", f"FROM {TEST_IMAGE}\n", **{".dockerignore": b"*.log\n"})
        big = directory / "weights.bin"
        big.touch()
        os.truncate(big, BIG_CONTEXT_BYTES)  # sparse on disk; the CLI's tar still sends every zero
        account = pwd.getpwnam("alice")
        os.chown(big, account.pw_uid, account.pw_gid)
        before = _memory_kib(handle.process.pid)
        built = classic(handle, "alice", "-t", "alice/big", str(directory))
        after = _memory_kib(handle.process.pid)
        sent = next((line for line in built.stdout.splitlines() if "Sending build context" in line), "")
        print(f"{sent.strip()}\nproxy VmHWM {before['VmHWM']} -> {after['VmHWM']} KiB "
              f"(+{after['VmHWM'] - before['VmHWM']}), VmRSS {before['VmRSS']} -> {after['VmRSS']} KiB, "
              f"for a {BIG_CONTEXT_BYTES} byte context")
        assert built.returncode == 0, built.stderr
        assert "GB" in sent, built.stdout[-600:]  # the whole gibibyte went, not a context the CLI cut short
        assert after["VmHWM"] - before["VmHWM"] < MEMORY_GROWTH_LIMIT_KIB
        image = engine.images.get("alice/big")
        assert images_record(handle)["owned"][image.id]["user"] == "alice"
        assert list((handle.root / "state" / "spool").iterdir()) == []
    finally:
        stop_proxy(handle, engine)
