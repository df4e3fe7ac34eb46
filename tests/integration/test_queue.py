"""The queue on the test bed, with real containers and the real clients: carol fills every slot (13 on the
a100-8gpu topology, each with a deadline); alice (no recent use) and bob (much) both wait with `docker run --label
ds01.request.wait=...`, bob first; a release gives alice's container its GPU first and bob's the next; a MIG
request backfills ahead of alice's blocked full-GPU request without moving her estimated start; Ctrl-C of
`container create --wait` and a timeout each leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import docker

from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy
from tests.integration.test_alloc_cli import DS01
from tests.integration.test_container_cli import CONTAINER
from tests.integration.test_proxy import DOCKER, docker_as


def popen_as(proxy: ProxyHandle, user: str, *argv: str) -> subprocess.Popen[str]:
    """A command of `user`'s left running, in a session of its own (so that Ctrl-C can be sent to it)."""
    passed = [f"{k}={v}" for k, v in proxy.env.items()
              if k.startswith(("DS01_", "DOCKER_HOST", "LD_LIBRARY_PATH", "FAKE_NVML", "PATH", "PYTHONPATH"))]
    return subprocess.Popen(["runuser", "-u", user, "--", "env", *passed, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def until(check: Callable[[], Any], what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds:g}s"
        time.sleep(0.1)
    return found


def events_of(proxy: ProxyHandle, kind: str, user: str) -> list[dict[str, Any]]:
    return [e for e in proxy.events() if e["type"] == kind and e["user"] == user]


def waiting(proxy: ProxyHandle, user: str) -> list[dict[str, Any]]:
    shown = proxy.as_user(user, CONTAINER, "queue", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return list(json.loads(shown.stdout)["waiting"])


def test_waiters_are_granted_in_fair_share_order_and_a_mig_request_backfills_without_delaying(
        full: tuple[ProxyHandle, list[str]], engine: docker.DockerClient) -> None:
    proxy, holders = full
    refused = docker_as(proxy, "alice", "run", "--rm", "--gpus", "1", TEST_IMAGE, "true")
    print(f"alice$ docker run --gpus 1 (no wait) -> exit {refused.returncode}: {refused.stderr.strip()}")
    assert refused.returncode != 0 and "--wait" in refused.stderr and "container gpus" in refused.stderr
    bob = popen_as(proxy, "bob", DOCKER, "run", "-d", "--label", "ds01.request.wait=5m", "--gpus", "1", TEST_IMAGE,
                   "sleep", "600")
    until(lambda: events_of(proxy, "queue.join", "bob"), "bob's join")
    alice = popen_as(proxy, "alice", DOCKER, "run", "-d", "--label", "ds01.request.wait=5m", "--gpus", "1",
                     TEST_IMAGE, "sleep", "600")
    until(lambda: events_of(proxy, "queue.join", "alice"), "alice's join")
    mine = until(lambda: [e for e in waiting(proxy, "alice") if e["position"] == 1], "alice at the head")
    print(f"alice$ container queue -> {mine}")
    assert mine[0]["priority"]["fairshare"] > 0.9 and mine[0]["start"]["at"] is not None  # carol's have deadlines
    estimate = mine[0]["start"]["at"]
    bobs = waiting(proxy, "bob")
    assert bobs[0]["position"] == 2 and bobs[0]["priority"]["fairshare"] < mine[0]["priority"]["fairshare"]
    gpus = json.loads(proxy.as_user("alice", CONTAINER, "gpus", "--format", "json").stdout)
    assert {row["state"] for row in gpus["slots"]} == {"held"} and gpus["queue_length"] == 2
    assert {row["holder"] for row in gpus["slots"]} == {"another user"}  # carol's name is not alice's to see

    # A MIG slice frees: carol's MIG request (below both in the queue) takes it, and alice's start holds.
    carols = popen_as(proxy, "carol", DOCKER, "run", "-d", "--label", "ds01.request.wait=5m", "--label",
                      "ds01.request.mig=1g.10gb", TEST_IMAGE, "sleep", "600")
    until(lambda: events_of(proxy, "queue.join", "carol"), "carol's join")
    engine.containers.get(holders[8]).remove(force=True)  # one of carol's 1g.10gb slices
    assert carols.wait(60) == 0, carols.stderr.read() if carols.stderr else ""
    assert alice.poll() is None and bob.poll() is None  # both still wait for a whole GPU
    assert waiting(proxy, "alice")[0]["start"]["at"] <= estimate

    # A whole GPU frees: alice's container is made first, bob's at the next release.
    released_at = time.monotonic()
    engine.containers.get(holders[0]).remove(force=True)
    assert alice.wait(60) == 0, alice.stderr.read() if alice.stderr else ""
    print(f"alice's waiting docker run was granted {time.monotonic() - released_at:.2f}s after the release")
    alice_id = (alice.stdout.read() if alice.stdout else "").strip()
    assert engine.containers.get(alice_id).status == "running" and bob.poll() is None
    engine.containers.get(holders[1]).remove(force=True)
    assert bob.wait(60) == 0
    grants = [e["user"] for e in proxy.events() if e["type"] == "queue.grant"]
    assert grants == ["carol", "alice", "bob"], grants
    reconciled = subprocess.run([DS01, "reconcile", "--format", "json"], env=proxy.env, capture_output=True,
                                text=True, check=False)
    assert reconciled.returncode == 0, reconciled.stderr
    assert json.loads(reconciled.stdout)["consistent"], reconciled.stdout


def test_ctrl_c_and_a_timeout_each_leave_no_trace(full: tuple[ProxyHandle, list[str]],
                                                   engine: docker.DockerClient) -> None:
    proxy, _ = full
    before = {a["id"] for a in _allocations(proxy)}
    waiter = popen_as(proxy, "alice", CONTAINER, "create", "patient", "--gpus", "1", "--wait", "1h")
    until(lambda: events_of(proxy, "queue.join", "alice"), "alice's join")
    os.killpg(waiter.pid, signal.SIGINT)
    waiter.wait(30)
    said = waiter.stderr.read() if waiter.stderr else ""
    print(f"alice$ container create patient --wait 1h, then Ctrl-C -> exit {waiter.returncode}: {said.strip()}")
    assert "withdrawn from the queue" in said
    left = until(lambda: events_of(proxy, "queue.leave", "alice"), "alice's leave")
    assert left[0]["details"]["reason"] == "cancelled"
    assert not engine.containers.list(all=True, filters={"name": "patient._."})
    timed = docker_as(proxy, "bob", "run", "--rm", "--label", "ds01.request.wait=2s", "--gpus", "1", TEST_IMAGE,
                      "true")
    print(f"bob$ docker run --label ds01.request.wait=2s -> exit {timed.returncode}: {timed.stderr.strip()}")
    assert timed.returncode != 0 and "waited 2s in the queue" in timed.stderr
    assert events_of(proxy, "queue.leave", "bob")[0]["details"]["reason"] == "timeout"
    assert {a["id"] for a in _allocations(proxy)} == before  # no reservation left behind
    assert json.loads((proxy.root / "state" / "queue.json").read_text())["waiting"] == []


def _allocations(proxy: ProxyHandle) -> list[dict[str, Any]]:
    return list(json.loads((proxy.root / "state" / "allocations.json").read_text())["allocations"])


def test_a_proxy_killed_while_a_request_waits_drops_it_at_the_restart_and_books_nothing_twice(
        full: tuple[ProxyHandle, list[str]], testbed: Testbed, engine: docker.DockerClient) -> None:
    proxy, holders = full
    waiter = popen_as(proxy, "alice", DOCKER, "run", "-d", "--label", "ds01.request.wait=5m", "--gpus", "1",
                      TEST_IMAGE, "sleep", "600")
    joined = until(lambda: events_of(proxy, "queue.join", "alice"), "alice's join")
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(30)
    assert waiter.wait(30) != 0  # its connection died with the proxy
    engine.containers.get(holders[0]).remove(force=True)  # a slot frees while no proxy runs
    again = start_proxy(testbed, proxy.root)
    try:
        left = until(lambda: [e for e in again.events() if e["type"] == "queue.leave"], "the restart's leave")
        assert left[0]["details"] == {**left[0]["details"], "queue_id": joined[0]["details"]["queue_id"],
                                      "reason": "disconnected", "restarted": True}
        assert json.loads((again.root / "state" / "queue.json").read_text())["waiting"] == []
        booked = [slot for allocation in _allocations(again) for slot in allocation["slots"]]
        assert len(booked) == len(set(booked)) == len(holders) - 1  # carol's 12, nothing for alice, none twice
        assert not engine.containers.list(all=True, filters={"label": "ds01.user=alice"})
        reconciled = subprocess.run([DS01, "reconcile", "--format", "json"], env=again.env, capture_output=True,
                                    text=True, check=False)
        assert reconciled.returncode == 0 and json.loads(reconciled.stdout)["consistent"], reconciled.stdout
    finally:
        proxy.process = again.process  # the fixture stops the proxy that runs now
