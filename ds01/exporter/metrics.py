"""The Prometheus view of a Snapshot: a custom collector, so a scrape only formats what the last cycle found.

Hardware metrics carry dcgm-exporter's label names (gpu, UUID, modelName, Hostname, GPU_I_ID,
GPU_I_PROFILE) so stock DCGM dashboards adapt with a metric rename. No metric has a pid label.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ds01 import labels, nvml
from ds01.exporter.snapshot import Snapshot

HW_LABELS = ["gpu", "UUID", "modelName", "Hostname", "GPU_I_ID", "GPU_I_PROFILE"]
PROCESS_LABELS = ["gpu", "UUID", "GPU_I_ID", "GPU_I_PROFILE", "Hostname", "user", "container", "kind"]


def _gauge(name: str, documentation: str, label_names: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=label_names)


def _hardware(snapshot: Snapshot) -> Iterator[Metric]:
    inventory = snapshot.inventory
    host = snapshot.hostname
    info = _gauge("ds01_gpu_info", "GPU and MIG device inventory (always 1)",
                  [*HW_LABELS, "pci_bus_id", "driver_version", "mig_mode", "parent_uuid"])
    families = {name: _gauge(name, doc, HW_LABELS) for name, doc in (
        ("ds01_gpu_utilization_ratio", "GPU utilization, 0 to 1 (whole GPUs; NVML has none for MIG devices)"),
        ("ds01_gpu_memory_utilization_ratio", "GPU memory controller utilization, 0 to 1"),
        ("ds01_gpu_memory_used_bytes", "GPU memory in use"),
        ("ds01_gpu_memory_total_bytes", "GPU memory in all"),
        ("ds01_gpu_temperature_celsius", "GPU temperature"),
        ("ds01_gpu_power_watts", "GPU power draw"),
        ("ds01_gpu_power_limit_watts", "GPU enforced power limit"),
    )}
    healthy = _gauge("ds01_gpu_healthy", "1 when NVML answers for the GPU, 0 when it is lost or failing",
                     ["gpu", "UUID", "Hostname", "reason"])
    last_xid = _gauge("ds01_gpu_last_xid", "The last XID code seen on the GPU (0: none)", ["gpu", "UUID", "Hostname"])
    xid_total = CounterMetricFamily("ds01_gpu_xid_errors", "XID events seen, by code",
                                    labels=["gpu", "UUID", "Hostname", "xid"])
    if inventory is not None:
        for gpu in inventory.gpus:
            if isinstance(gpu, nvml.UnavailableGpu):
                healthy.add_metric([str(gpu.index), gpu.uuid or "", host, gpu.health.reason], 0)
                continue
            healthy.add_metric([str(gpu.index), gpu.uuid, host, "ok"], 1)
            xids = snapshot.xids.get(gpu.uuid)
            last_xid.add_metric([str(gpu.index), gpu.uuid, host], xids.last if xids else 0)
            for code, count in sorted((xids.by_code if xids else {}).items()):
                xid_total.add_metric([str(gpu.index), gpu.uuid, host, str(code)], count)
            gpu_labels = [str(gpu.index), gpu.uuid, gpu.name, host, "", ""]
            info.add_metric([*gpu_labels, gpu.pci_bus_id, inventory.driver_version, str(gpu.mig_mode).lower(), ""], 1)
            values: dict[str, float | None] = {
                "ds01_gpu_utilization_ratio": None if gpu.mig_mode or gpu.utilization_gpu_percent is None
                else gpu.utilization_gpu_percent / 100,
                "ds01_gpu_memory_utilization_ratio": None if gpu.utilization_memory_percent is None
                else gpu.utilization_memory_percent / 100,
                "ds01_gpu_memory_used_bytes": gpu.memory_used_bytes,
                "ds01_gpu_memory_total_bytes": gpu.memory_total_bytes,
                "ds01_gpu_temperature_celsius": gpu.temperature_celsius,
                "ds01_gpu_power_watts": gpu.power_watts,
                "ds01_gpu_power_limit_watts": gpu.power_limit_watts,
            }
            for name, value in values.items():
                if value is not None:
                    families[name].add_metric(gpu_labels, value)
            for mig in gpu.mig_devices:
                mig_labels = [f"{gpu.index}.{mig.index}", mig.uuid, gpu.name, host, str(mig.gpu_instance_id),
                              mig.profile]
                info.add_metric([*mig_labels, gpu.pci_bus_id, inventory.driver_version, "true", gpu.uuid], 1)
                families["ds01_gpu_memory_used_bytes"].add_metric(mig_labels, mig.memory_used_bytes)
                families["ds01_gpu_memory_total_bytes"].add_metric(mig_labels, mig.memory_total_bytes)
    yield info
    yield from families.values()
    yield healthy
    yield last_xid
    yield xid_total


def _attribution(snapshot: Snapshot) -> Iterator[Metric]:
    count: Counter[tuple[str, ...]] = Counter()
    memory: Counter[tuple[str, ...]] = Counter()
    untracked: Counter[str] = Counter()
    untracked_memory: Counter[tuple[str, ...]] = Counter()
    unmanaged: Counter[str] = Counter()
    by_container: Counter[tuple[str, ...]] = Counter()
    by_user: Counter[str] = Counter()
    for row in snapshot.processes:
        key = (row.device.gpu, row.device.uuid, row.device.gpu_instance_id, row.device.profile, snapshot.hostname,
               row.user, row.container, row.kind)
        count[key] += 1
        memory[key] += row.memory_bytes
        by_user[row.user] += row.memory_bytes
        if row.kind == "container":
            by_container[(row.container, row.user)] += row.memory_bytes
            continue
        untracked[row.user] += 1
        untracked_memory[(row.user, row.device.parent_uuid)] += row.memory_bytes
        if row.kind == "unmanaged_container":
            unmanaged[row.container] += 1
    yield _filled("ds01_gpu_processes", "GPU processes by device, user and container", PROCESS_LABELS, count)
    yield _filled("ds01_gpu_process_memory_bytes", "GPU memory of those processes", PROCESS_LABELS, memory)
    yield _filled("ds01_untracked_gpu_processes", "GPU processes outside any ds01-managed container", ["user"],
                  {(u,): n for u, n in untracked.items()})
    yield _filled("ds01_untracked_gpu_memory_bytes", "GPU memory held outside ds01-managed containers",
                  ["user", "gpu_uuid"], untracked_memory)
    yield _filled("ds01_unmanaged_container_gpu_processes", "GPU processes in containers ds01 did not create",
                  ["container"], {(c,): n for c, n in unmanaged.items()})
    yield _filled("ds01_container_gpu_memory_bytes", "GPU memory per ds01-managed container", ["container", "user"],
                  by_container)
    yield _filled("ds01_user_gpu_memory_bytes", "GPU memory per user, in and out of containers", ["user"],
                  {(u,): n for u, n in by_user.items()})


def _filled(name: str, documentation: str, label_names: list[str],
            values: Mapping[tuple[str, ...], float]) -> GaugeMetricFamily:
    family = _gauge(name, documentation, label_names)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _allocation(snapshot: Snapshot) -> Iterator[Metric]:
    names = {s.id: s.name for s in snapshot.containers}
    slots = _gauge("ds01_allocation_gpu_equivalents", "GPU-equivalents per allocated slot",
                   ["UUID", "user", "container", "state"])
    per_container: dict[tuple[str, ...], Fraction] = defaultdict(Fraction)
    per_user: dict[str, Fraction] = defaultdict(Fraction)
    for allocation in snapshot.allocations:
        container = allocation.container_name or names.get(allocation.container or "", "") or ""
        state = "reserved" if allocation.container is None else "bound"
        share = allocation.gpu_equivalents / len(allocation.slots)
        for slot in allocation.slots:
            slots.add_metric([slot, allocation.user, container, state], float(share))
        per_user[allocation.user] += allocation.gpu_equivalents
        if allocation.container is not None:
            per_container[(container, allocation.user)] += allocation.gpu_equivalents
    yield slots
    yield _filled("ds01_container_gpu_equivalents", "GPU-equivalents allocated per container", ["container", "user"],
                  {k: float(v) for k, v in per_container.items()})
    yield _filled("ds01_user_gpu_equivalents", "GPU-equivalents allocated per user", ["user"],
                  {(u,): float(v) for u, v in per_user.items()})
    quota = _gauge("ds01_user_gpu_quota", "Each user's quota in GPU-equivalents", ["user", "group"])
    most = _gauge("ds01_user_max_containers", "Each user's container limit", ["user", "group"])
    for limits in snapshot.users:
        quota.add_metric([limits.user, limits.group], limits.gpu_quota)
        most.add_metric([limits.user, limits.group], limits.max_containers)
    yield quota
    yield most
    states: Counter[tuple[str, ...]] = Counter(
        (s.labels.get(labels.USER, "unmanaged"), s.status) for s in snapshot.containers)
    yield _filled("ds01_containers", "Containers by owner and engine state", ["user", "state"], states)


def _images(snapshot: Snapshot) -> Iterator[Metric]:
    yield _filled("ds01_image_storage_bytes", "The size of each user's own images: their layers beyond the shared "
                  "or others' images below them, as the image_storage limit counts them", ["user"],
                  {(user,): size for user, size in snapshot.image_storage.items()})


def _queue(snapshot: Snapshot) -> Iterator[Metric]:
    queue = snapshot.queue
    if queue is None:  # the proxy has not written its queue yet: no series rather than zeros
        return
    waiting: Counter[tuple[str, str]] = Counter((w.user, w.kind) for w in queue.waiting)
    requests = _gauge("ds01_queue_requests", "GPU requests waiting in the queue now, by user and kind (gpu, mig)",
                      ["user", "kind"])
    for (user, kind), count in sorted(waiting.items()):
        requests.add_metric([user, kind], count)
    yield requests
    yield GaugeMetricFamily("ds01_queue_waiting_gpu_equivalents", "GPU-equivalents the waiting requests ask for",
                            value=sum(w.needed_equivalents for w in queue.waiting))
    oldest = min((w.joined_at for w in queue.waiting), default=None)
    yield GaugeMetricFamily("ds01_queue_oldest_wait_seconds", "How long the longest-waiting request has waited "
                            "(0 when none waits)", value=max(0.0, snapshot.taken_at - oldest) if oldest else 0.0)
    histogram = HistogramMetricFamily("ds01_queue_wait_seconds", "Time from joining the queue to a grant")
    histogram.add_metric([], queue.waits.cumulative(), sum_value=queue.waits.total_seconds)
    yield histogram
    yield _filled("ds01_fairshare_factor", "Each user's fair-share factor 2^(-U/S): 1 with no recent use, 0.5 "
                  "at exactly their share", ["user"], {(u,): f for u, (f, _) in queue.fairshare.items()})
    yield _filled("ds01_usage_decayed_gpu_equivalent_hours", "Each user's GPU-equivalent-hours, decayed by "
                  "scheduler.usage_half_life, as the fair share counts them", ["user"],
                  {(u,): used for u, (_, used) in queue.fairshare.items()})


def _fleet(snapshot: Snapshot) -> Iterator[Metric]:
    """The node is Prometheus' `instance`: these carry no label of their own but the fleet node they tell of."""
    if snapshot.store is not None:
        yield GaugeMetricFamily("ds01_store_up", "1 when the allocation store answers (etcd: the proxy's last "
                                "lease renewal; file: its state file was read)", value=int(snapshot.store.up))
        yield CounterMetricFamily("ds01_store_transaction_retries", "Allocation changes run again after a "
                                  "conflicting change on etcd (always 0 with the file store)",
                                  value=snapshot.store.transaction_retries)
    if snapshot.fleet:
        yield _filled("ds01_fleet_node_up", "1 while the fleet node's lease (node_ttl) is renewed, 0 once it "
                      "lapsed", ["fleet_node"], {(n.node,): int(n.alive) for n in snapshot.fleet})
        yield _filled("ds01_fleet_node_last_seen_timestamp_seconds", "When the fleet node was last seen alive",
                      ["fleet_node"], {(n.node,): n.last_seen for n in snapshot.fleet if n.last_seen is not None})


def _self(snapshot: Snapshot) -> Iterator[Metric]:
    events = CounterMetricFamily("ds01_events", "Events in the event log, by type", labels=["type"])
    for kind, count in sorted(snapshot.events.items()):
        events.add_metric([kind], count)
    yield events
    yield GaugeMetricFamily("ds01_exporter_collection_duration_seconds", "How long the last collection took",
                            value=snapshot.duration_seconds)
    yield CounterMetricFamily("ds01_exporter_collections", "Collections made", value=snapshot.collections_total)
    errors = CounterMetricFamily("ds01_exporter_errors", "Collection errors, by source", labels=["source"])
    up = _gauge("ds01_exporter_source_up", "1 when the source answered in the last collection", ["source"])
    for source, ok in snapshot.source_up.items():
        errors.add_metric([source], snapshot.errors_total.get(source, 0))
        up.add_metric([source], 1 if ok else 0)
    yield errors
    yield up
    yield GaugeMetricFamily("ds01_exporter_last_collection_timestamp_seconds", "When the last collection finished",
                            value=snapshot.taken_at)


class SnapshotCollector(Collector):
    def __init__(self, current: Callable[[], Snapshot | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        snapshot = self._current()
        if snapshot is None:
            return
        for part in (_hardware, _attribution, _allocation, _images, _queue, _fleet, _self):
            yield from part(snapshot)
