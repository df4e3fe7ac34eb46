"""The enforcement point: a Docker API proxy that knows its callers from the kernel and applies the policy."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ds01 import eventlog, labels
from ds01.daemon import only_instance
from ds01.engine import Engine
from ds01.errors import Denied, Ds01Error
from ds01.etcd import StoreUnavailable
from ds01.eventlog.types import EventType
from ds01.fleet.nodes import Membership
from ds01.gpus.allocator import Allocator, ReconcileReport
from ds01.gpus.etcdstore import EtcdStore, unavailable
from ds01.gpus.placement import Slot
from ds01.gpus.supply import current_slots, failed_slots, node_slots, open_allocator, slot_states
from ds01.paths import Paths
from ds01.proxy import builds, images, runas
from ds01.proxy.binds import Pins
from ds01.proxy.cgroups import CgroupParents
from ds01.proxy.fleetkeeper import FleetKeeper
from ds01.proxy.gate import MIN_API_VERSION, Gate
from ds01.proxy.images import ImageActions
from ds01.proxy.imagestore import ImageStore
from ds01.proxy.janitor import STREAM_ERRORS, Janitor, ReachKeeper, keep_reach, watch_engine
from ds01.proxy.server import Proxy, serve_forever
from ds01.proxy.session import Sessions
from ds01.proxy.upstream import Upstream
from ds01.reasons import Reason

SLOT_CACHE_SECONDS = 2.0


class SlotCache:
    """The healthy slots, refreshed from NVML at most every few seconds rather than on every create."""

    def __init__(self, paths: Paths, sessions: Sessions) -> None:
        self._paths = paths
        self._sessions = sessions
        self._lock = threading.Lock()
        self._taken = 0.0
        self._slots: list[Slot] = []

    def __call__(self) -> list[Slot]:
        with self._lock:
            if time.monotonic() - self._taken > SLOT_CACHE_SECONDS:
                self._slots = current_slots(self._paths, self._sessions.current_config())
                self._taken = time.monotonic()
            return self._slots


def start_reach(upstream: Upstream, sessions: Sessions, engine_cgroup: str | None) -> ReachKeeper:
    """The reach rules as the engine's state implies them, before serving; a failure stops the proxy (fail
    closed): rules left from an earlier run would stay as they were, stale or missing."""
    keeper = ReachKeeper(upstream, lambda: sessions.current_config().networks.host_services, engine_cgroup)
    elsewhere = keeper.outside_engine_namespace()
    if elsewhere is not None:
        raise Ds01Error(f"this proxy runs outside the engine's network namespace ({elsewhere}), and its rules decide "
                        "who reaches containers there: run it in the engine's namespace (on a test bed: nsenter "
                        "--net=/run/netns/$DS01_TESTBED_NETNS ds01 proxy ...)")
    try:
        keeper.refresh()
    except STREAM_ERRORS as exc:
        eventlog.emit(EventType.PROXY_REACH_FAILED, source="proxy", trigger="start-up", error=str(exc), failures=1)
        raise Ds01Error(f"the owner-only reach rules could not be put in place, so the proxy does not start: {exc}. "
                        "It needs root, iptables, and the engine's network namespace "
                        "(docs-admin/networks.md)") from exc
    return keeper


def _background(gate: Gate, janitor: Janitor, fleet: FleetKeeper | None) -> threading.Event:
    """The threads beside the server: the engine's events, the reach rules, the queue's passes, the jobs' time
    limits, and the fleet lease; the event stops them all."""
    stop = threading.Event()
    for target, arg in ((watch_engine, janitor), (keep_reach, janitor.keeper)):
        threading.Thread(target=target, args=(arg, stop), daemon=True).start()
    for loop in (gate.queue.run, gate.jobs.run, *((fleet.run,) if fleet is not None else ())):
        threading.Thread(target=loop, args=(stop,), daemon=True).start()
    return stop


def _reconcile(allocator: Allocator, upstream_url: str) -> ReconcileReport:
    with Engine(upstream_url) as engine:
        listed_at = time.time()
        found = engine.containers()
    return allocator.reconcile(found, listed_at)


def _startup_reconcile(allocator: Allocator, upstream_url: str, membership: Membership | None) -> None:
    """Crash recovery before serving. Skipped while the fleet's store does not answer, or before this node holds
    its name in it: containers without GPUs are served meanwhile, and the node reconciles at its first beat that
    reaches the store."""
    if membership is not None and not membership.claimed:
        return
    store = allocator.store
    generation = store.generation if isinstance(store, EtcdStore) else 0
    try:
        report = _reconcile(allocator, upstream_url)
    except Denied as denied:
        if denied.reason is not Reason.STORE_UNAVAILABLE:
            raise
        print(f"ds01 proxy: WARN {denied.message}", file=sys.stderr, flush=True)
        return
    if isinstance(store, EtcdStore):
        store.settled(generation)
    eventlog.emit(EventType.RECONCILE_STARTUP, source="proxy", released=len(report.released),
                  expired=len(report.expired), adopted=len(report.adopted), unallocated=len(report.unallocated))


def _membership(sessions: Sessions, allocator: Allocator) -> Membership | None:
    """With allocation.store: etcd, this node's claim on its name, made before anything is done on its behalf: a
    second proxy under a name in use would release the first one's allocations. None for the file store."""
    store = allocator.store
    if not isinstance(store, EtcdStore):
        return None
    store.reconcile_first = True  # and until the start-up reconcile is done with the store answering
    store.unsettle()
    membership = Membership(store.etcd, store.prefix, store.node, sessions.config.fleet.node_ttl_seconds,
                            instance=store.instance, on_lapse=store.unsettle)
    try:
        membership.claim()
    except StoreUnavailable as problem:  # claimed at the first beat that reaches etcd, before any reconcile
        print(f"ds01 proxy: WARN {unavailable(problem).message}", file=sys.stderr, flush=True)
    return membership


def _fleet_keeper(paths: Paths, sessions: Sessions, allocator: Allocator, upstream: Upstream,
                  membership: Membership | None, *, upstream_url: str, kick: Callable[[], None]) -> FleetKeeper | None:
    store = allocator.store
    if membership is None or not isinstance(store, EtcdStore):
        return None
    fleet = sessions.config.fleet
    return FleetKeeper(membership, store, upstream, lambda: node_slots(paths, sessions.current_config()),
                       ttl_seconds=fleet.node_ttl_seconds, run_dir=paths.run_dir,
                       reconcile=lambda: _reconcile(allocator, upstream_url), kick=kick)


def run(paths: Paths, listen: Path, upstream_url: str, drain_seconds: float, engine_cgroup: str | None) -> int:
    # A pipe's reader that exits early (an iptables-restore that fails at once) or a client that hangs up costs
    # an EPIPE, not the daemon its life: from the first step, start-up's rules included.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # A running proxy is named before any start-up work (reconcile, pins, rules); serve_forever holds the lock.
    with only_instance(paths.run_dir, "proxy"):
        pass
    upstream = Upstream(upstream_url)
    sessions = Sessions(paths.config)
    eventlog.configure(paths.log_dir, sessions.config.events)
    status, info = upstream.call("GET", "/info")
    if status != 200 or not isinstance(info, dict):
        raise Ds01Error(f"the engine at {upstream_url} answered {status} to /info: {info}")
    status, version = upstream.call("GET", "/version")
    if status != 200 or not isinstance(version, dict) or not str(version.get("ApiVersion", "")).count("."):
        raise Ds01Error(f"the engine at {upstream_url} answered {status} to /version: {version}")
    major, minor = (int(part) for part in str(version["ApiVersion"]).split(".")[:2])
    if (major, minor) < MIN_API_VERSION:
        raise Ds01Error(f"the engine at {upstream_url} speaks API {major}.{minor}; ds01 needs 1.40 or newer")
    allocator = open_allocator(paths, sessions.config, upstream_url)
    membership = _membership(sessions, allocator)  # before anything is changed on this node's behalf
    keeper = start_reach(upstream, sessions, engine_cgroup)
    with Engine(upstream_url) as engine:
        found = engine.containers()
    _startup_reconcile(allocator, upstream_url, membership)
    for legacy in runas.root_with_host_mounts(found):
        print(f"ds01 proxy: WARN {runas.root_container_warning(legacy)}", file=sys.stderr, flush=True)
        eventlog.emit(EventType.SECURITY_ROOT_CONTAINER, source="proxy", user=legacy.labels.get(labels.USER),
                      container=legacy.name, host_mounts=list(legacy.host_mounts))
    pins = Pins(paths.state_dir / "binds")
    in_use = {info.labels.get(labels.BIND_KEY) or "" for info in found}
    for key in pins.release_unused(in_use):
        eventlog.emit(EventType.PROXY_PIN_RELEASED, source="proxy", key=key)
    spool_dir = paths.state_dir / "spool"
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sockets = {os.path.realpath(p) for p in ("/var/run/docker.sock", "/run/docker.sock", str(listen))}
    if upstream.unix_path:
        sockets.add(os.path.realpath(upstream.unix_path))
    instance = str(paths.state_dir.resolve())
    image_store = ImageStore(paths.state_dir)
    status, listed = upstream.call("GET", "/images/json", query={"all": "1"})
    if status != 200 or not isinstance(listed, list):
        raise Ds01Error(f"the engine at {upstream_url} answered {status} to the image list: {str(listed)[:200]}")
    images.recover(ImageActions(upstream, image_store), [str(image.get("Id")) for image in listed])
    gate = Gate(sessions, upstream, allocator, slots=SlotCache(paths, sessions),
                all_slots=lambda: slot_states(paths, sessions.current_config()),
                failed_slots=lambda held: failed_slots(paths, sessions.current_config(), held),
                cgroups=CgroupParents(str(info.get("CgroupDriver", "cgroupfs")), str(info.get("CgroupVersion", "1"))),
                engine_sockets=frozenset(sockets), host_cpus=float(info.get("NCPU") or os.cpu_count() or 1),
                pins=pins, spool_dir=spool_dir, image_store=image_store, platform=builds.host_platform(info),
                api_versions=(MIN_API_VERSION, (major, minor)),
                log_driver=str(info.get("LoggingDriver") or "json-file"), instance=instance)
    gate.queue.restore()  # before serving: the last run's waiters are gone with their connections
    gate.jobs.restore()  # batch jobs are not: queued ones queue again, ended ones are recorded
    fleet = _fleet_keeper(paths, sessions, allocator, upstream, membership, upstream_url=upstream_url,
                          kick=gate.queue.kick)
    stop_janitor = _background(gate, Janitor(upstream, allocator, pins, instance, keeper, image_store,
                                             gate.queue.kick, gate.jobs.container_died), fleet)
    try:
        serve_forever(Proxy(gate, upstream), listen, paths.run_dir, drain_seconds,
                      on_ready=lambda: print(f"ds01 proxy: listening on {listen}, engine {upstream_url}", flush=True))
    finally:
        stop_janitor.set()
    return 0
