"""32 concurrent `container create --gpus 1` from 4 users on the 8-GPU topology: nothing double-booked, nobody
over quota, as the engine and the stand-in NVIDIA hook see it."""

from __future__ import annotations

import json
import pwd
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import docker
import pytest

from ds01.config import effective_limits, load_config
from ds01.gpus.allocator import STATE_NAME
from tests.conftest import ProxyHandle, Testbed, start_proxy, stop_proxy

CONTAINER = str(Path(sys.executable).parent / "container")
USERS = {"alice": [], "bob": [], "carol": [], "opsadmin": ["ds01-admin"]}  # user -> system groups


@pytest.fixture
def race_proxy(testbed: Testbed, engine: docker.DockerClient) -> Iterator[ProxyHandle]:
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8])
    yield handle
    stop_proxy(handle, engine)


def test_concurrent_creates_never_double_book(race_proxy: ProxyHandle, engine: docker.DockerClient,
                                              testbed: Testbed) -> None:
    jobs = [(user, f"race{i}") for i in range(8) for user in USERS]
    assert len(jobs) == 32
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda job: (job, race_proxy.as_user(
            job[0], CONTAINER, "create", job[1], "--gpus", "1", timeout=300)), jobs))
    outcomes = Counter(result.returncode for _, result in results)
    assert set(outcomes) <= {0, 3}, [r.stderr for _, r in results if r.returncode not in (0, 3)]
    assert outcomes[0] >= 4, outcomes  # everyone got something; the rest were refused (quota, count, capacity)

    ours = {f"{name}._.{pwd.getpwnam(user).pw_uid}" for user, name in jobs}
    running = [c for c in engine.containers.list(filters={"label": "ds01.user"}) if c.name in ours]
    config = load_config(race_proxy.config)
    held: dict[str, Fraction] = defaultdict(Fraction)
    seen: list[str] = []
    for container in running:
        devices = container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
        assert testbed.hook_record_for(container.id)["devices"] == devices  # what the container really got
        seen.extend(devices)
        held[container.labels["ds01.user"]] += Fraction(container.labels["ds01.gpu_equivalents"])
    assert len(seen) == len(set(seen)), f"double-booked: {[d for d, n in Counter(seen).items() if n > 1]}"
    assert len(running) == outcomes[0]
    for user, total in held.items():
        quota = effective_limits(config, user, USERS[user], datetime.now(UTC)).limits.gpu_quota
        assert total <= quota, (user, total, quota)
    state = json.loads((race_proxy.root / "state" / STATE_NAME).read_text())
    assert sorted(s for a in state["allocations"] for s in a["slots"]) == sorted(seen)
