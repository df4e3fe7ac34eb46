"""One collection cycle: every source read once, every GPU process attributed, the result frozen in a Snapshot.

Each source (NVML, the engine, /proc, the allocator's state, the config, the event log, the proxy's record of
whose each image is) fails on its own: a failure is counted and marked, the other sources still fill the
snapshot, and GPU data is never dropped because the engine or /proc had a bad moment. The GPUs, the containers,
the image inspects and the /proc root are handed in, so tests drive a collector with fakes.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ds01 import labels, names, nvml, procfs
from ds01.config import Config, effective_limits, load_config
from ds01.errors import Ds01Error
from ds01.exporter.fleet import FleetNode, StoreState, fleet_nodes, store_state
from ds01.gpus import queuestate
from ds01.gpus.allocator import Allocation
from ds01.gpus.queuestate import QueueState
from ds01.gpus.supply import open_allocator
from ds01.identity import accounts, nss
from ds01.paths import Paths
from ds01.proxy.imagestore import ImageStore, own_image_sizes
from ds01.records import ContainerSummary

SOURCES = ("nvml", "engine", "proc", "allocator", "config", "events", "images", "queue", "store", "fleet")
ImageInspect = Callable[[str], dict[str, Any] | None]


class GpuSource(Protocol):
    def inventory(self) -> nvml.Inventory:
        """Every GPU NVML counts; raises Ds01Error when NVML itself cannot answer."""
        ...


class ContainerSource(Protocol):
    def summaries(self) -> list[ContainerSummary]:
        """Every container the engine has; raises Ds01Error when the engine cannot answer."""
        ...


class ImageSource(Protocol):
    def inspector(self) -> AbstractContextManager[ImageInspect]:
        """The engine's image inspect for one cycle (None for an image it does not have); opening it or an
        inspect raises Ds01Error when the engine cannot answer."""
        ...


@dataclass(frozen=True)
class Device:
    """Where a process runs, labelled the way dcgm-exporter labels GPUs."""

    gpu: str  # "3", or "6.1" for MIG device 1 of GPU 6
    uuid: str
    parent_uuid: str
    gpu_instance_id: str  # "" for a whole GPU
    profile: str  # "" for a whole GPU


@dataclass(frozen=True)
class ProcessRow:
    device: Device
    user: str
    container: str  # name, or "" for a host process
    kind: str  # "container" (ds01-managed), "unmanaged_container" or "host"
    memory_bytes: int


@dataclass(frozen=True)
class UserLimits:
    user: str
    group: str
    gpu_quota: float
    max_containers: int


@dataclass(frozen=True)
class XidCounts:
    last: int
    by_code: dict[int, int]


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    duration_seconds: float
    hostname: str
    inventory: nvml.Inventory | None
    processes: tuple[ProcessRow, ...]
    containers: tuple[ContainerSummary, ...]
    allocations: tuple[Allocation, ...]
    users: tuple[UserLimits, ...]
    image_storage: dict[str, int]  # user -> bytes of their own images, for users with any
    xids: dict[str, XidCounts]
    events: dict[str, int]
    source_up: dict[str, bool]
    errors_total: dict[str, int]
    collections_total: int
    problems: tuple[str, ...] = field(default=())
    queue: QueueState | None = None  # the proxy's queue as it last wrote it; None before it first did
    store: StoreState | None = None  # None when it could not be told
    fleet: tuple[FleetNode, ...] = ()  # every node of the fleet (none with the file store)


def owner_of_container(summary: ContainerSummary) -> tuple[str, bool]:
    """(user, managed): the ds01.user label, else the legacy hints of the system ds01 replaces."""
    if summary.labels.get(labels.USER):
        return summary.labels[labels.USER], True
    if summary.labels.get(labels.LEGACY_USER):
        return summary.labels[labels.LEGACY_USER], False
    _, sep, uid = summary.name.rpartition(names.NAME_SEPARATOR)
    if sep and uid.isdigit():
        return nss.login_name(int(uid)) or f"uid:{uid}", False
    return "unknown", False


def _user_of_uid(uid: int) -> str:
    return nss.login_name(uid) or f"uid:{uid}"


class EventCounter:
    """Counts of each event type in the log, read incrementally; a shrunken file (rotation) is read anew."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode = 0
        self.counts: Counter[str] = Counter()

    def refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset = stat.st_ino, 0
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                self.counts[str(json.loads(line)["type"])] += 1
            except (ValueError, KeyError, TypeError):
                self.counts["unparsable"] += 1


class Collector:
    """Builds snapshots. Not thread-safe by itself: one collector thread calls `collect`."""

    def __init__(self, paths: Paths, gpus: GpuSource, containers: ContainerSource, images: ImageSource,
                 proc_root: Path, *, xids: Callable[[], dict[str, XidCounts]] = dict) -> None:
        self.paths = paths
        self.gpus = gpus
        self.containers = containers
        self.images = images
        self.proc_root = proc_root
        self._xids = xids
        self._errors: Counter[str] = Counter()
        self._collections = 0
        self._known_containers: dict[str, ContainerSummary] = {}
        self._known_storage: dict[str, int] = {}
        self._known_queue: QueueState | None = None
        self._config: Config | None = None
        self._config_stamp: tuple[int, int] | None = None
        self._events = EventCounter(paths.log_dir / "events.jsonl")
        self._users: dict[int, tuple[float, accounts.User]] = {}

    def _fail(self, source: str, problems: list[str], exc: Exception) -> None:
        self._errors[source] += 1
        problems.append(f"{source}: {exc}")

    def collect(self) -> Snapshot:
        started = time.perf_counter()
        up = dict.fromkeys(SOURCES, True)
        problems: list[str] = []
        inventory = self._inventory(up, problems)
        summaries = self._containers(up, problems)
        processes = self._attribute(inventory, summaries, up, problems)
        allocations = self._allocations(up, problems)
        users = self._user_limits(summaries, allocations, processes, up, problems)
        storage = self._image_storage(up, problems)
        queue = self._queue(up, problems)
        store, fleet = self._fleet(up, problems)
        try:
            self._events.refresh()
        except OSError as exc:
            up["events"] = False
            self._fail("events", problems, exc)
        self._collections += 1
        return Snapshot(
            taken_at=time.time(), duration_seconds=time.perf_counter() - started, hostname=socket.gethostname(),
            inventory=inventory, processes=tuple(processes), containers=tuple(summaries),
            allocations=tuple(allocations), users=tuple(users), image_storage=storage, xids=self._xids(),
            events=dict(self._events.counts), source_up=up, errors_total={s: self._errors[s] for s in SOURCES},
            collections_total=self._collections, problems=tuple(problems), queue=queue, store=store, fleet=fleet)

    def _inventory(self, up: dict[str, bool], problems: list[str]) -> nvml.Inventory | None:
        try:
            inventory = self.gpus.inventory()
        except Ds01Error as exc:
            up["nvml"] = False
            self._fail("nvml", problems, exc)
            return None
        for gpu in inventory.gpus:
            if isinstance(gpu, nvml.UnavailableGpu):
                up["nvml"] = False
                self._fail("nvml", problems, Ds01Error(f"GPU {gpu.index} is {gpu.health.reason}: {gpu.health.detail}"))
        return inventory

    def _containers(self, up: dict[str, bool], problems: list[str]) -> list[ContainerSummary]:
        try:
            summaries = self.containers.summaries()
        except Ds01Error as exc:
            up["engine"] = False
            self._fail("engine", problems, exc)
            return list(self._known_containers.values())  # stale but attributable; marked by source_up
        self._known_containers = {s.id: s for s in summaries}
        return summaries

    def _attribute(self, inventory: nvml.Inventory | None, summaries: list[ContainerSummary],
                   up: dict[str, bool], problems: list[str]) -> list[ProcessRow]:
        if inventory is None:
            return []
        by_id = {s.id: s for s in summaries}
        rows = []
        for device, process in _device_processes(inventory):
            try:
                info = procfs.read_process(process.pid, self.proc_root)
            except Ds01Error as exc:
                up["proc"] = False
                self._fail("proc", problems, exc)
                continue
            if info is None:
                continue  # the process ended while we looked
            memory = process.used_memory_bytes or 0
            if info.container_id is None:
                rows.append(ProcessRow(device, _user_of_uid(info.uid), "", "host", memory))
                continue
            summary = by_id.get(info.container_id)
            if summary is None:
                rows.append(ProcessRow(device, _user_of_uid(info.uid), info.container_id[:12], "unmanaged_container",
                                       memory))
                continue
            user, managed = owner_of_container(summary)
            rows.append(ProcessRow(device, user, summary.name, "container" if managed else "unmanaged_container",
                                   memory))
        return rows

    def _image_storage(self, up: dict[str, bool], problems: list[str]) -> dict[str, int]:
        """Each owner's images as image_storage counts them; on a failure the last sizes known, marked by
        source_up (a size that cannot be read is not 0)."""
        try:
            store = ImageStore(self.paths.state_dir)  # read anew each cycle: the proxy writes it
        except Ds01Error as exc:
            up["images"] = False
            self._fail("images", problems, exc)
            return dict(self._known_storage)
        owners = sorted({owned.user for owned in store.owners()})
        if not owners:  # no connection to the engine for nothing to inspect
            self._known_storage = {}
            return {}
        try:
            with self.images.inspector() as inspect:
                found = {user: own_image_sizes(store.owned_by(user), inspect) for user in owners}
        except Ds01Error as exc:
            up["engine"] = False
            self._fail("engine", problems, exc)
            return dict(self._known_storage)
        # A user whose recorded images are all gone, or untagged, has no images to count: no series, not 0.
        self._known_storage = {user: sum(own.size for own in mine) for user, mine in found.items() if mine}
        return dict(self._known_storage)

    def _queue(self, up: dict[str, bool], problems: list[str]) -> QueueState | None:
        """The queue as the proxy last wrote it; on a failure the last one read, marked by source_up."""
        try:
            self._known_queue = queuestate.read(self.paths.state_dir / queuestate.STATE_FILE)
        except Ds01Error as exc:
            up["queue"] = False
            self._fail("queue", problems, exc)
        return self._known_queue

    def _allocations(self, up: dict[str, bool], problems: list[str]) -> list[Allocation]:
        try:
            return open_allocator(self.paths, self._current_config()).observed()  # the file, or etcd's
        except Ds01Error as exc:
            up["allocator"] = False
            self._fail("allocator", problems, exc)
            return []

    def _fleet(self, up: dict[str, bool], problems: list[str]) -> tuple[StoreState | None, tuple[FleetNode, ...]]:
        store: StoreState | None = None
        nodes: tuple[FleetNode, ...] = ()
        try:
            config = self._current_config()
            store = store_state(config, self.paths.run_dir, up["allocator"], time.time())
        except Ds01Error as exc:
            up["store"] = False
            self._fail("store", problems, exc)
            return None, ()
        if not store.up:  # /health says so: this node grants no GPUs meanwhile
            problems.append(f"store: the {store.kind} allocation store does not answer this node's proxy")
        try:
            nodes = fleet_nodes(config, time.time())
        except Ds01Error as exc:
            up["fleet"] = False
            self._fail("fleet", problems, exc)
        return store, nodes

    def _current_config(self) -> Config:
        stat = self.paths.config.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._config is None or stamp != self._config_stamp:
            self._config, self._config_stamp = load_config(self.paths.config), stamp
        return self._config

    def _resolve(self, uid: int, config: Config) -> accounts.User:
        cached = self._users.get(uid)
        if cached and time.monotonic() - cached[0] < 300:
            return cached[1]
        user = accounts.resolve_user(uid, config.ldap)
        self._users[uid] = (time.monotonic(), user)
        return user

    def _user_limits(self, summaries: Iterable[ContainerSummary], allocations: Iterable[Allocation],
                     processes: Iterable[ProcessRow], up: dict[str, bool], problems: list[str]) -> list[UserLimits]:
        try:
            config = self._current_config()
        except (Ds01Error, OSError) as exc:
            up["config"] = False
            self._fail("config", problems, exc)
            return []
        uids = {a.uid for a in allocations if a.uid is not None}
        uids |= {int(s.labels[labels.UID]) for s in summaries if s.labels.get(labels.UID, "").isdigit()}
        limits = []
        now = datetime.now(UTC)
        for uid in sorted(uids):
            try:
                user = self._resolve(uid, config)
            except Ds01Error as exc:
                self._fail("config", problems, exc)
                continue
            effective = effective_limits(config, user.name, user.groups, now)
            limits.append(UserLimits(user.sanitized, effective.group, float(effective.limits.gpu_quota),
                                     effective.limits.max_containers))
        return limits


def _device_processes(inventory: nvml.Inventory) -> Iterable[tuple[Device, nvml.GpuProcess]]:
    for gpu in inventory.available:
        if not gpu.mig_mode:
            device = Device(str(gpu.index), gpu.uuid, gpu.uuid, "", "")
            for process in gpu.processes:
                yield device, process
        for mig in gpu.mig_devices:
            device = Device(f"{gpu.index}.{mig.index}", mig.uuid, gpu.uuid, str(mig.gpu_instance_id), mig.profile)
            for process in mig.processes:
                yield device, process
