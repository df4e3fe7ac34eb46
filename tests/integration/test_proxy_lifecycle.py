"""The proxy as a daemon: one instance, a graceful drain on SIGTERM, and a kill -9 in the middle of a create."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from ds01.gpus.allocator import STATE_NAME
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy

DS01 = str(Path(sys.executable).parent / "ds01")


@pytest.fixture
def own_proxy(testbed: Testbed, engine: docker.DockerClient) -> Iterator[ProxyHandle]:
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8], ttl="3s")
    yield handle
    stop_proxy(handle, engine)


def test_a_second_instance_refuses_to_start(own_proxy: ProxyHandle, testbed: Testbed) -> None:
    second = subprocess.run([DS01, "proxy", "--upstream", testbed.docker_host], env=own_proxy.env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert own_proxy.process.poll() is None and own_proxy.socket.exists()


def test_sigterm_lets_open_requests_finish_and_refuses_new_ones(own_proxy: ProxyHandle) -> None:
    slow = subprocess.Popen(["runuser", "-u", "alice", "--", "env", f"DOCKER_HOST=unix://{own_proxy.socket}",
                             "docker", "run", "--rm", TEST_IMAGE, "sh", "-c", "sleep 2; echo finished"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(e["details"].get("endpoint", "").endswith("/start") for e in own_proxy.events()):
        assert time.monotonic() < deadline, "the container never started"
        time.sleep(0.05)
    own_proxy.process.send_signal(signal.SIGTERM)
    out, err = slow.communicate(timeout=60)
    assert (slow.returncode, out.strip()) == (0, "finished"), err
    assert own_proxy.process.wait(timeout=30) == 0
    assert not own_proxy.socket.exists()
    late = own_proxy.as_user("alice", "docker", "ps")
    assert late.returncode != 0
    kinds = [e["type"] for e in own_proxy.events()]
    assert kinds[-1] == "proxy.stop"


class HoldingRelay:
    """Between proxy and engine: passes everything, but holds the first request for `marker` (a container create
    by default) at one point."""

    def __init__(self, engine_socket: str, listen: Path, hold: str, marker: bytes = b"/containers/create") -> None:
        self.engine_socket = engine_socket
        self.listen = listen
        self.hold = hold  # "request": the engine never sees the create; "response": it creates, the answer is held
        self.marker = marker
        self.reached = threading.Event()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(listen))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(self.engine_socket)
        creating = threading.Event()

        def downstream() -> None:
            with contextlib.suppress(OSError):  # the killed proxy's end of the connection is gone
                while data := engine.recv(65536):
                    if creating.is_set() and self.hold == "response":
                        self.reached.set()
                        return  # the proxy never hears back
                    client.sendall(data)

        threading.Thread(target=downstream, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.marker in data and not self.reached.is_set():
                    creating.set()
                    if self.hold == "request":
                        self.reached.set()
                        return
                engine.sendall(data)

    def close(self) -> None:
        self._server.close()


def relayed_proxy(testbed: Testbed, hold: str, marker: bytes = b"/containers/create",
                  ttl: str = "60s") -> tuple[HoldingRelay, ProxyHandle]:
    """A proxy whose engine is behind a HoldingRelay: the proxy can be killed with a request in flight."""
    root = testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    relay = HoldingRelay(testbed.docker_host.removeprefix("unix://"), root / "relay.sock", hold, marker)
    fake = Testbed(testbed.dir, {**testbed.env, "DOCKER_HOST": f"unix://{root / 'relay.sock'}"})
    return relay, start_proxy(fake, root, ttl=ttl, engine_cgroup=testbed.env["DS01_TESTBED_ENGINE_CGROUP"])


@pytest.mark.parametrize("hold", ["request", "response"])
def test_kill_9_in_the_middle_of_a_create_leaves_nothing_after_reconcile(
        testbed: Testbed, engine: docker.DockerClient, hold: str) -> None:
    relay, handle = relayed_proxy(testbed, hold, ttl="2s")
    root = handle.root
    name = f"doomed-{hold}"
    try:
        client = subprocess.Popen(["runuser", "-u", "bob", "--", "env", f"DOCKER_HOST=unix://{handle.socket}",
                                   "docker", "create", "--name", name, "--gpus", "1", TEST_IMAGE, "true"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert relay.reached.wait(60), "the create never reached the relay"
        time.sleep(0.3)  # the create is in flight: reserved, and (for "response") created
        handle.process.send_signal(signal.SIGKILL)
        handle.process.wait(timeout=30)
        client.wait(timeout=60)
        state = json.loads((root / "state" / STATE_NAME).read_text())
        assert [a["container"] for a in state["allocations"]] == [None]  # an unbound reservation was left
        time.sleep(2.5)  # past the reservation's TTL
        env = {**handle.env, "DOCKER_HOST": testbed.docker_host}
        reconcile = subprocess.run([DS01, "reconcile"], env=env, capture_output=True, text=True, check=False)
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        after = json.loads((root / "state" / STATE_NAME).read_text())["allocations"]
        made = engine.containers.list(all=True, filters={"name": name})
        if hold == "request":
            assert made == [] and after == []
        else:
            # The engine made the container: reconcile adopts the reservation its label names, so the container
            # keeps exactly the GPU it was given and nothing is orphaned or double-booked.
            [container] = made
            assert [(a["container"], a["slots"]) for a in after] == [
                (container.id, container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"])]
    finally:
        relay.close()
        stop_proxy(handle, engine)
