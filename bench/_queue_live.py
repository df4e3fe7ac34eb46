"""The live half of bench/scheduler.py: on the test bed, through a private proxy, with every slot held, the time
from a release to the waiting container running. ds01: alice's `docker run --label ds01.request.wait=...` waits
in the queue. Against it, today's way: a `docker run` refused and tried again every 10 seconds (the replaced
system's wrapper). Each round fills every slot (root's containers), starts alice's request, waits until it waits,
then a moment more (drawn evenly from the retry period: a release comes at no particular point of a retry's
wait), removes one of root's containers, and times until alice's container runs."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

import docker
from _common import BIN, DOCKER, IMAGE, NORMAL_USER, BenchError, Proxy, as_user

RETRY_SECONDS = 10.0  # how often the replaced system's docker wrapper tried again
ROUND_SECONDS = 120.0
_POLL = 0.02


class LiveQueue:
    def __init__(self, proxy: Proxy, client: docker.DockerClient) -> None:
        self.proxy = proxy
        self.client = client
        self.root_env = {**proxy.env, "DOCKER_HOST": proxy.url}
        self.holders: list[tuple[str, bool]] = []  # (container, holds a MIG slice)
        self._moments = random.Random(1)  # noqa: S311 - when to release, reproducibly, not a secret

    def fill(self) -> None:
        """Every free slot held by root, one container each, as `container gpus` lists them."""
        listed = subprocess.run([str(BIN / "container"), "gpus", "--format", "json"], env=self.root_env,
                                capture_output=True, text=True, check=False, timeout=60)
        if listed.returncode != 0:
            raise BenchError(f"container gpus failed: {listed.stderr.strip()}")
        for row in json.loads(listed.stdout)["slots"]:
            if row["state"] != "free":
                continue
            asked = ["--label", f"ds01.request.mig={row['profile']}"] if row["profile"] else ["--gpus", "1"]
            made = subprocess.run([DOCKER, "run", "-d", "--name", f"hold-{uuid.uuid4().hex[:6]}", *asked, IMAGE,
                                   "sleep", "3600"], env=self.root_env, capture_output=True, text=True, check=False,
                                  timeout=60)
            if made.returncode != 0:
                raise BenchError(f"filling slot {row['slot']} failed: {made.stderr.strip()}")
            self.holders.append((made.stdout.strip(), bool(row["profile"])))

    def _alices_running(self) -> str | None:
        for found in self.client.api.containers(filters={"label": f"ds01.user={NORMAL_USER}",
                                                         "status": "running"}):
            return str(found["Id"])
        return None

    def _round(self, start_waiter: Callable[[], None], waiting: Callable[[], bool]) -> float:
        self.fill()
        start_waiter()
        deadline = time.monotonic() + ROUND_SECONDS
        while not waiting():
            if time.monotonic() > deadline:
                raise BenchError("alice's request never started waiting")
            time.sleep(_POLL)
        time.sleep(self._moments.uniform(0, RETRY_SECONDS))
        # A MIG slice: alice, as the test bed's students are, may have slices only.
        holder = next(h for h in self.holders if h[1])
        self.holders.remove(holder)
        self.client.api.remove_container(holder[0], force=True)
        released = time.perf_counter()
        while (running := self._alices_running()) is None:
            if time.monotonic() > deadline:
                raise BenchError("alice's container never ran after the release")
            time.sleep(_POLL)
        elapsed = time.perf_counter() - released
        self.client.api.remove_container(running, force=True)
        return elapsed

    def queued(self) -> float:
        """ds01: the request waits in the queue."""
        joins = len(self._joins())
        process: list[subprocess.Popen[str]] = []

        def start() -> None:
            process.append(subprocess.Popen(as_user(NORMAL_USER, self.proxy.url, [
                DOCKER, "run", "-d", "--label", "ds01.request.wait=5m", "--gpus", "1", IMAGE, "sleep", "3600"]),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        try:
            return self._round(start, lambda: len(self._joins()) > joins)
        finally:
            for started in process:
                started.wait(60)

    def retried(self) -> float:
        """Today: refused, and tried again every RETRY_SECONDS."""
        stop, tried = threading.Event(), threading.Event()

        def retry() -> None:
            while not stop.is_set():
                made = subprocess.run(as_user(NORMAL_USER, self.proxy.url, [
                    DOCKER, "run", "-d", "--gpus", "1", IMAGE, "sleep", "3600"]), capture_output=True, text=True,
                    check=False, timeout=60)
                tried.set()
                if made.returncode == 0:
                    return
                stop.wait(RETRY_SECONDS)
        thread = threading.Thread(target=retry, daemon=True)
        try:
            return self._round(thread.start, tried.is_set)
        finally:
            stop.set()
            thread.join(RETRY_SECONDS + 60)

    def _joins(self) -> list[dict[str, object]]:
        return [e for e in self.proxy.events() if e.get("type") == "queue.join"]

    def sweep(self) -> None:
        for holder, _ in self.holders:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(holder, force=True)
        self.holders.clear()
        while (running := self._alices_running()) is not None:
            self.client.api.remove_container(running, force=True)
