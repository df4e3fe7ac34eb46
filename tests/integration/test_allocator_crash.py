"""The allocator's durability: kill -9 at every step of a write, a corrupt or missing state file, a full disk,
and a lock held by someone else.

The kills need no hook in production code: a runner process installs an audit hook (`sys.addaudithook`) and
sends itself SIGKILL when the N-th matching audit event fires (the open of the temp file, the link and rename
of the backup, the rename of the temp file onto allocations.json, ...), then makes one allocator call.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import DeviceRequest

from ds01 import labels, records
from ds01.config import BUILTIN_DEFAULTS, AllocationSettings
from ds01.engine import Engine
from ds01.errors import Busy, Ds01Error, EngineError
from ds01.gpus.allocator import (
    STATE_NAME,
    Allocation,
    Allocator,
    StateCorrupt,
    allocations_from_containers,
)
from ds01.gpus.filestore import STATE_VERSION, _parse_state
from ds01.gpus.placement import GpuRequest, Slot
from ds01.statefile import write_json_atomic
from tests.conftest import TEST_IMAGE, Testbed, load_topology

TTL = 60
TEST_LABEL = "ds01.test.crash"


def topology_slots() -> list[Slot]:
    """The 8-GPU topology's slots, built straight from its JSON (whole GPUs 0-5, MIG devices of GPUs 6 and 7)."""
    slots = []
    for index, gpu in enumerate(load_topology("a100-8gpu")["gpus"]):
        if not gpu.get("mig_mode"):
            slots.append(Slot(gpu["uuid"], gpu["uuid"], index, None, Fraction(1), 0, gpu["utilization_gpu"]))
        for device in gpu.get("mig_devices", []):
            slots.append(Slot(device["uuid"], gpu["uuid"], index, device["profile"], Fraction(device["slices"], 7),
                              0, gpu["utilization_gpu"]))
    return slots


SLOTS = topology_slots()
EQUIVALENTS = {s.uuid: s.equivalents for s in SLOTS}
WHOLE = [s for s in SLOTS if not s.is_mig]
MIG3G = next(s for s in SLOTS if s.profile == "3g.40gb")
SETTINGS = AllocationSettings(reservation_ttl_seconds=TTL, lock_timeout_seconds=10)
GENEROUS = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(8), "max_gpus_per_container": 8})


@pytest.fixture(autouse=True)
def private_event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log_dir = tmp_path / "log"
    monkeypatch.setenv("DS01_LOG_DIR", str(log_dir))
    return log_dir


def read_state(state_dir: Path) -> list[Allocation]:
    path = state_dir / STATE_NAME
    return _parse_state(path.read_bytes(), path)


def write_state(state_dir: Path, allocations: list[Allocation], with_backup: bool = True) -> None:
    """Lay down a state file (and a backup of the same content) as a previous ds01 run would have left it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    document = {"version": STATE_VERSION, "allocations": [a.to_json() for a in allocations]}
    write_json_atomic(state_dir / STATE_NAME, document)
    if with_backup:
        write_json_atomic(state_dir / STATE_NAME, document, state_dir / f"{STATE_NAME}.bak")


def bound(allocation_id: str, user: str, slots: list[Slot], container: str, at: float) -> Allocation:
    return Allocation(allocation_id, user, None, tuple(s.uuid for s in slots),
                      sum((s.equivalents for s in slots), Fraction(0)), at, None, container, f"job-{allocation_id}",
                      at)


def reserved(allocation_id: str, user: str, slots: list[Slot], at: float, expires: float) -> Allocation:
    return Allocation(allocation_id, user, None, tuple(s.uuid for s in slots),
                      sum((s.equivalents for s in slots), Fraction(0)), at, expires)


def summary(allocations: list[Allocation]) -> dict[str, tuple[str, tuple[str, ...], str | None]]:
    return {a.id: (a.user, a.slots, a.container) for a in allocations}


def assert_consistent(allocations: list[Allocation]) -> None:
    booked = [s for a in allocations for s in a.slots]
    assert len(booked) == len(set(booked)), f"double booked: {booked}"
    for allocation in allocations:
        assert allocation.gpu_equivalents == sum((EQUIVALENTS[s] for s in allocation.slots), Fraction(0))


def gpu_device_request(*uuids: str) -> DeviceRequest:
    return DeviceRequest(driver="nvidia", device_ids=list(uuids), capabilities=[["gpu"]])


class Containers:
    """Containers this module creates on the test bed, all carrying one run label, removed at teardown."""

    def __init__(self, client: docker.DockerClient, docker_host: str) -> None:
        self.client = client
        self.docker_host = docker_host
        self.run = uuid.uuid4().hex[:12]
        self.created: list[str] = []

    def create(self, name: str, labels: dict[str, str], devices: tuple[str, ...] = ()) -> str:
        container = self.client.containers.create(
            TEST_IMAGE, ["true"], name=f"ds01-crash-{self.run}-{name}",
            labels={TEST_LABEL: self.run, **labels},
            device_requests=[gpu_device_request(*devices)] if devices else None)
        self.created.append(container.id)
        return str(container.id)

    def listed(self) -> list[records.ContainerInfo]:
        """This module's containers as ds01 sees them: listed and inspected through ds01.engine."""
        engine = Engine(self.docker_host)
        try:
            return [info for info in engine.containers() if info.labels.get(TEST_LABEL) == self.run]
        finally:
            engine.close()

    def remove_all(self) -> None:
        for container_id in self.created:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.containers.get(container_id).remove(force=True)
        self.created.clear()


@pytest.fixture
def made(testbed: Testbed, engine: docker.DockerClient) -> Iterator[Containers]:
    made = Containers(engine, testbed.docker_host)
    try:
        yield made
    finally:
        made.remove_all()


def labels_for(allocation: Allocation) -> dict[str, str]:
    return {labels.ALLOCATION: allocation.id, labels.USER: allocation.user,
            labels.GPU_EQUIVALENTS: str(allocation.gpu_equivalents)}


# ---------------------------------------------------------------- kill -9 at every step

RUNNER = r"""
import json, os, signal, sys
from fractions import Fraction
from pathlib import Path

spec = json.loads(sys.argv[1])
from ds01.gpus.allocator import Allocator
from ds01.config import BUILTIN_DEFAULTS, AllocationSettings
from ds01.gpus.placement import GpuRequest, Slot

state_dir = Path(spec["state_dir"])
state = str(state_dir / "allocations.json")
allocator = Allocator(state_dir, AllocationSettings(reservation_ttl_seconds=spec["ttl"]))
slots = [Slot(uuid, gpu, index, profile, Fraction(amount), 0, 0) for uuid, gpu, index, profile, amount in spec["slots"]]


def is_temp(path):
    name = os.path.basename(str(path))
    return name.startswith(".allocations.json.") and name.endswith(".tmp") and ".bak." not in name


MATCHES = {
    "read": lambda event, args: event == "open" and str(args[0]) == state
    and not args[2] & (os.O_WRONLY | os.O_RDWR),
    "temp_open": lambda event, args: event == "open" and is_temp(args[0]),
    "backup_link": lambda event, args: event == "os.link" and str(args[0]) == state,
    "backup_rename": lambda event, args: event == "os.rename" and str(args[1]).endswith(".bak"),
    "state_rename": lambda event, args: event == "os.rename" and str(args[1]) == state and is_temp(args[0]),
    "event_log": lambda event, args: event == "open" and str(args[0]).endswith("events.jsonl"),
}
match = MATCHES[spec["step"]]
seen = 0


def hook(event, args):
    global seen
    if event.startswith(("open", "os.")) and match(event, args):
        seen += 1
        if seen == spec["nth"]:
            os.kill(os.getpid(), signal.SIGKILL)


sys.addaudithook(hook)
if spec["operation"] == "reserve":
    limits = BUILTIN_DEFAULTS.with_overrides({"gpu_quota": Fraction(2)})
    allocator.request("bob", None, limits, GpuRequest(count=1), slots=slots)
elif spec["operation"] == "bind":
    allocator.bind(spec["allocation"], spec["container"], "crash-target")
else:
    allocator.release(spec["allocation"])
print("survived", flush=True)
"""

STEPS_BEFORE_COMMIT = ("read", "temp_open", "backup_link", "backup_rename", "state_rename")
STEPS_AFTER_COMMIT = ("event_log",)


def run_killed(state_dir: Path, operation: str, step: str, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    spec = {"state_dir": str(state_dir), "ttl": TTL, "step": step, "nth": 1, "operation": operation,
            "slots": [[s.uuid, s.gpu_uuid, s.gpu_index, s.profile, str(s.equivalents)] for s in SLOTS], **extra}
    return subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], capture_output=True, text=True,
                          timeout=60, check=False, env=os.environ.copy())


@pytest.mark.parametrize("step", STEPS_BEFORE_COMMIT + STEPS_AFTER_COMMIT)
@pytest.mark.parametrize("operation", ["reserve", "bind", "release"])
def test_kill_at_each_step_leaves_old_or_new_state_and_reconcile_settles_it(
        operation: str, step: str, tmp_path: Path, made: Containers) -> None:
    now = time.time()
    state_dir = tmp_path / "state"
    holder = bound("a-holder", "alice", [WHOLE[0]], "pending", now - 600)
    holder_container = made.create("holder", labels_for(holder), holder.slots)
    holder = bound("a-holder", "alice", [WHOLE[0]], holder_container, now - 600)
    before = [holder]
    extra: dict[str, Any] = {}
    bind_container = None
    if operation == "bind":
        # The reservation outlives the reconcile clock below: only the container's label can settle it.
        reservation = reserved("a-bindme", "bob", [MIG3G], now - 5, now + 10 * TTL)
        bind_container = made.create("target", labels_for(reservation), reservation.slots)
        before.append(reservation)
        extra = {"allocation": "a-bindme", "container": bind_container}
    elif operation == "release":
        before.append(bound("a-releaseme", "carol", [WHOLE[1], WHOLE[2]], "0" * 64, now - 300))
        extra = {"allocation": "a-releaseme"}
    write_state(state_dir, before)

    killed = run_killed(state_dir, operation, step, extra)
    assert killed.returncode == -signal.SIGKILL, (
        f"the runner was not killed at {step} (rc {killed.returncode}): {killed.stdout} {killed.stderr}")

    # The file on disk is the whole old state or the whole new state, never a mix, never a temp file.
    after_crash = read_state(state_dir)
    assert_consistent(after_crash)
    if step in STEPS_BEFORE_COMMIT:
        assert summary(after_crash) == summary(before)
    elif operation == "reserve":
        new = [a for a in after_crash if a.id != "a-holder"]
        assert len(new) == 1 and new[0].user == "bob" and new[0].container is None
        assert summary([a for a in after_crash if a.id == "a-holder"]) == summary([holder])
    elif operation == "bind":
        assert summary(after_crash)["a-bindme"] == ("bob", (MIG3G.uuid,), bind_container)
    else:
        assert summary(after_crash) == summary([holder])
    backup = state_dir / f"{STATE_NAME}.bak"
    assert backup.exists()
    assert_consistent(_parse_state(backup.read_bytes(), backup))
    temps = [p for p in state_dir.iterdir() if p.name.endswith(".tmp")]
    survivor = Allocator(state_dir, SETTINGS)
    assert summary(survivor.allocations()) == summary(read_state(state_dir)), f"temp files {temps} were read"
    assert not list(state_dir.glob(f"{STATE_NAME}.corrupt-*")), "a crash must not look like corruption"

    # Reconcile with the engine's real containers, at a time past every TTL: nothing orphaned, nothing doubled.
    found = made.listed()
    assert {i.id for i in found} == {holder_container} | ({bind_container} if bind_container else set())
    late = time.time() + TTL + 1
    report = Allocator(state_dir, SETTINGS, clock=lambda: late).reconcile(found, listed_at=late)
    assert report.unallocated == []
    settled = read_state(state_dir)
    assert_consistent(settled)
    assert all(a.container in {i.id for i in found} and a.expires_at is None for a in settled), summary(settled)
    expected = {"a-holder": ("alice", holder.slots, holder_container)}
    if operation == "bind":
        expected["a-bindme"] = ("bob", (MIG3G.uuid,), bind_container)
        assert [a.id for a in report.adopted] == ([] if step in STEPS_AFTER_COMMIT else ["a-bindme"])
    assert summary(settled) == expected

    # And the allocator is usable afterwards: the lock was not left taken.
    fresh = Allocator(state_dir, AllocationSettings(lock_timeout_seconds=2))
    allocation = fresh.request("dave", None, GENEROUS, GpuRequest(count=2), slots=SLOTS)
    assert not set(allocation.slots) & {s for a in settled for s in a.slots}
    fresh.release(allocation.id)


# ---------------------------------------------------------------- corrupt and missing state


def _events(log_dir: Path) -> list[dict[str, Any]]:
    path = log_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_corrupt_state_is_quarantined_and_rebuilt_from_container_labels(
        tmp_path: Path, made: Containers, private_event_log: Path) -> None:
    first = bound("a-rebuild-1", "alice", [WHOLE[3]], "x", 0)
    second = bound("a-rebuild-2", "bob", [MIG3G], "x", 0)
    first_id = made.create("first", labels_for(first), first.slots)
    second_id = made.create("second", {**labels_for(second), labels.UID: "1001"}, second.slots)
    made.create("no-gpu", {labels.USER: "carol"})  # holds no GPU: nothing to rebuild from it

    state_dir = tmp_path / "state"
    write_state(state_dir, [bound("a-stale", "carol", [WHOLE[5]], "y", 1.0)])
    garbage = b'{"version": 1, "allocations": [{"id": "a-half'
    (state_dir / STATE_NAME).write_bytes(garbage)

    calls = []

    def rebuild() -> list[Allocation]:
        calls.append(1)
        return allocations_from_containers(made.listed(), lambda u: EQUIVALENTS.get(u, Fraction(1)), time.time())

    allocator = Allocator(state_dir, SETTINGS, rebuild=rebuild)
    allocation = allocator.request("carol", None, GENEROUS, GpuRequest(count=5), slots=SLOTS)

    assert calls == [1]
    quarantined = list(state_dir.glob(f"{STATE_NAME}.corrupt-*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == garbage
    state = {a.id: a for a in read_state(state_dir)}
    assert set(state) == {"a-rebuild-1", "a-rebuild-2", allocation.id}
    assert (state["a-rebuild-1"].user, state["a-rebuild-1"].slots, state["a-rebuild-1"].container) == (
        "alice", (WHOLE[3].uuid,), first_id)
    assert (state["a-rebuild-2"].user, state["a-rebuild-2"].uid, state["a-rebuild-2"].container) == (
        "bob", 1001, second_id)
    assert state["a-rebuild-2"].gpu_equivalents == Fraction(3, 7)
    assert state["a-rebuild-1"].container_name == f"ds01-crash-{made.run}-first"
    # The new grant (every free whole GPU) avoided what the rebuilt state holds; the stale content is gone.
    assert set(allocation.slots) == {s.uuid for s in WHOLE} - {WHOLE[3].uuid}
    assert "a-stale" not in state
    kinds = [e["type"] for e in _events(private_event_log)]
    assert "allocator.state_corrupt" in kinds
    rebuilt = [e for e in _events(private_event_log) if e["type"] == "allocator.state_rebuilt"]
    assert rebuilt and rebuilt[0]["details"]["origin"] == "container labels"


def test_rebuild_failure_falls_back_to_the_verified_backup(tmp_path: Path, private_event_log: Path) -> None:
    state_dir = tmp_path / "state"
    allocator = Allocator(state_dir, SETTINGS)
    kept = allocator.request("alice", None, GENEROUS, GpuRequest(count=1), slots=SLOTS)
    allocator.bind(kept.id, "c" * 64, "kept-job")
    backed_up = read_state(state_dir)
    allocator.request("bob", None, GENEROUS, GpuRequest(count=1), slots=SLOTS)  # the backup is now `backed_up`
    backup = state_dir / f"{STATE_NAME}.bak"
    assert summary(_parse_state(backup.read_bytes(), backup)) == summary(backed_up)
    (state_dir / STATE_NAME).write_bytes(b"\x00\x00 not json")

    def engine_down() -> list[Allocation]:
        raise EngineError("the Docker engine is down")

    recovered = Allocator(state_dir, SETTINGS, rebuild=engine_down)
    assert summary(recovered.allocations()) == summary(backed_up)
    assert len(list(state_dir.glob(f"{STATE_NAME}.corrupt-*"))) == 1
    rebuilt = [e for e in _events(private_event_log) if e["type"] == "allocator.state_rebuilt"]
    assert rebuilt[-1]["details"]["origin"] == "the backup"


def test_missing_state_with_a_backup_is_recovered_not_started_empty(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    holder = bound("a-keep", "alice", [WHOLE[0]], "c" * 64, 1.0)
    write_state(state_dir, [holder])
    (state_dir / STATE_NAME).unlink()
    allocator = Allocator(state_dir, SETTINGS)  # no rebuild callback: the backup must serve
    assert summary(allocator.allocations()) == summary([holder])
    with pytest.raises(Ds01Error) as denied:
        allocator.request("bob", None, GENEROUS, GpuRequest(devices=(WHOLE[0].uuid,)), slots=SLOTS)
    assert getattr(denied.value, "reason", None) == "capacity"


def test_corrupt_state_with_no_rebuild_and_a_corrupt_backup_is_a_clear_error(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    write_state(state_dir, [])
    (state_dir / STATE_NAME).write_bytes(b"{")
    (state_dir / f"{STATE_NAME}.bak").write_bytes(b"[")
    with pytest.raises(Ds01Error, match="ds01 reconcile") as failed:
        Allocator(state_dir, SETTINGS).request("bob", None, GENEROUS, GpuRequest(count=1), slots=SLOTS)
    assert "backup is unusable" in str(failed.value)
    assert (state_dir / STATE_NAME).read_bytes() == b"{"  # nothing was made up


def test_rebuild_with_two_containers_naming_the_same_device_gives_a_usable_state(
        tmp_path: Path, made: Containers) -> None:
    """A stopped container keeps its device request after its GPUs were released and handed to another.

    Rebuilding from labels must then not book that device twice: the rebuilt file would be rejected by the
    allocator's own loader ("books a slot twice"), quarantined again on every call, and the allocator would stay
    unusable ("kept turning corrupt").
    """
    old = bound("a-old", "alice", [WHOLE[4]], "x", 0)
    new = bound("a-new", "bob", [WHOLE[4]], "x", 0)
    made.create("old", labels_for(old), old.slots)
    made.create("new", labels_for(new), new.slots)
    state_dir = tmp_path / "state"
    write_state(state_dir, [])
    (state_dir / STATE_NAME).write_bytes(b"garbage")

    def rebuild() -> list[Allocation]:
        return allocations_from_containers(made.listed(), lambda u: EQUIVALENTS.get(u, Fraction(1)), time.time())

    allocator = Allocator(state_dir, SETTINGS, rebuild=rebuild)
    allocations = allocator.allocations()
    assert_consistent(allocations)
    assert_consistent(read_state(state_dir))


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {mounted.stderr}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `directory` to the last byte, then free `leave` bytes again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            while True:
                try:
                    if os.write(fd, b"\xff" * chunk) < chunk:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_full_disk_is_a_clear_error_and_leaves_the_state_intact(small_tmpfs: Path) -> None:
    state_dir = small_tmpfs / "state"
    allocator = Allocator(state_dir, SETTINGS)
    held = allocator.request("alice", None, GENEROUS, GpuRequest(count=1), slots=SLOTS)
    allocator.bind(held.id, "c" * 64, "job")
    state = (state_dir / STATE_NAME).read_bytes()
    backup = (state_dir / f"{STATE_NAME}.bak").read_bytes()
    filler = fill(small_tmpfs)

    for attempt in (lambda: allocator.request("bob", None, GENEROUS, GpuRequest(count=1), slots=SLOTS),
                    lambda: allocator.release(held.id)):
        with pytest.raises(Ds01Error, match="no space") as failed:
            attempt()
        assert not isinstance(failed.value, Busy)
        assert "previous state is intact" in str(failed.value)
        assert (state_dir / STATE_NAME).read_bytes() == state
        assert (state_dir / f"{STATE_NAME}.bak").read_bytes() == backup
        assert not [p for p in state_dir.iterdir() if p.name.endswith(".tmp")], "a temp file was left behind"

    filler.unlink()
    granted = allocator.request("bob", None, GENEROUS, GpuRequest(count=1), slots=SLOTS)
    assert {a.id for a in read_state(state_dir)} == {held.id, granted.id}


def test_nearly_full_disk_never_truncates_the_state(small_tmpfs: Path) -> None:
    """With one page free, the new state is written only in part (a short write, not ENOSPC).

    The allocator must then either save all of it or raise "no space" and keep the old file; it must never
    rename a truncated temp file over allocations.json.
    """
    state_dir = small_tmpfs / "state"
    now = time.time()
    # Long container names make the state larger than one page, as a busy server's state is.
    crowd = [Allocation(f"a-{n}", f"user{n}", None, (s.uuid,), s.equivalents, now, None, f"{n:064x}",
                        f"job-{n}-" + "x" * 700, now) for n, s in enumerate(SLOTS[:10])]
    write_state(state_dir, crowd)
    state = (state_dir / STATE_NAME).read_bytes()
    assert len(state) > 2 * 4096
    allocator = Allocator(state_dir, SETTINGS)
    fill(small_tmpfs, leave=4096)

    try:
        allocator.request("bob", None, GENEROUS, GpuRequest(mig_profile="1g.10gb"), slots=SLOTS)  # one is free
    except Ds01Error as exc:
        assert "no space" in str(exc)
        assert (state_dir / STATE_NAME).read_bytes() == state
        return
    on_disk = (state_dir / STATE_NAME).read_bytes()
    try:
        _parse_state(on_disk, state_dir / STATE_NAME)
    except StateCorrupt as corrupt:
        pytest.fail(f"the request succeeded but allocations.json now holds {len(on_disk)} bytes, not a whole "
                    f"state: {corrupt}")


# ---------------------------------------------------------------- the lock held elsewhere

HOLDER = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_lock_held_by_another_process_gives_busy_and_changes_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    allocator = Allocator(state_dir, AllocationSettings(lock_timeout_seconds=1))
    held = allocator.request("alice", None, GENEROUS, GpuRequest(count=1), slots=SLOTS)
    before = (state_dir / STATE_NAME).read_bytes()
    inode = (state_dir / STATE_NAME).stat().st_ino
    holds = len(allocator.lock_hold_seconds)

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir / "allocations.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for attempt in (lambda: allocator.request("bob", None, GENEROUS, GpuRequest(count=1), slots=SLOTS),
                        lambda: allocator.bind(held.id, "c" * 64),
                        lambda: allocator.release(held.id),
                        allocator.allocations):
            with pytest.raises(Busy) as busy:
                attempt()
            assert "busy" in str(busy.value) and "Nothing was changed" in str(busy.value)
        assert (state_dir / STATE_NAME).read_bytes() == before
        assert (state_dir / STATE_NAME).stat().st_ino == inode
        assert len(allocator.lock_hold_seconds) == holds, "a hold was recorded without the lock"
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()

    assert allocator.release(held.id).id == held.id  # the lock is free again
    assert read_state(state_dir) == []
