"""The pieces every GPU grant needs, assembled once: the slots there are (healthy GPUs and MIG devices from
NVML), and an allocator that can rebuild its state from the engine's containers."""

from __future__ import annotations

import time
from collections.abc import Iterable
from fractions import Fraction

from ds01 import nvml
from ds01.config import Config
from ds01.engine import Engine
from ds01.etcd import Etcd
from ds01.fleet.names import node_instance
from ds01.gpus import quarantine
from ds01.gpus.allocator import Allocation, Allocator, allocations_from_containers
from ds01.gpus.etcdstore import EtcdStore
from ds01.gpus.placement import Slot
from ds01.paths import Paths
from ds01.units import mig_equivalents


def slots_from_inventory(inventory: nvml.Inventory, unhealthy_gpus: frozenset[str]) -> list[Slot]:
    """Healthy whole GPUs, and the MIG devices of healthy MIG-mode GPUs; unavailable GPUs give no slot."""
    slots = []
    for gpu in inventory.available:
        if gpu.uuid in unhealthy_gpus:
            continue
        if not gpu.mig_mode:
            slots.append(Slot(gpu.uuid, gpu.uuid, gpu.index, None, Fraction(1), gpu.memory_used_bytes,
                              gpu.utilization_gpu_percent))
        for mig in gpu.mig_devices:
            slots.append(Slot(mig.uuid, gpu.uuid, gpu.index, mig.profile, mig_equivalents(mig.slices),
                              gpu.memory_used_bytes, gpu.utilization_gpu_percent))
    return slots


def current_slots(paths: Paths, config: Config) -> list[Slot]:
    """Slots of healthy GPUs now: lost GPUs and those with a recent critical XID give none."""
    with nvml.session() as gpus:
        inventory = gpus.inventory()
    return slots_from_inventory(inventory, quarantine.quarantined(paths.state_dir, config.allocation, time.time()))


def slot_states(paths: Paths, config: Config) -> tuple[list[Slot], frozenset[str]]:
    """Every slot of the GPUs NVML answers for, and those GPUs quarantined after a critical XID, for a view of
    all (a GPU NVML lost has no slots to show)."""
    with nvml.session() as gpus:
        inventory = gpus.inventory()
    unhealthy = quarantine.quarantined(paths.state_dir, config.allocation, time.time())
    return slots_from_inventory(inventory, frozenset()), unhealthy


def failed_slots(paths: Paths, config: Config, held: Iterable[str]) -> dict[str, tuple[int | None, float]]:
    """Of the `held` slots, those whose GPU had a critical XID lately (that XID, and when), or that NVML no longer
    has (None, now): what a batch job on them lost. NVML failing as a whole raises, rather than look like every
    GPU lost."""
    now = time.time()
    with nvml.session() as gpus:
        inventory = gpus.inventory()
    present = {slot.uuid: slot.gpu_uuid for slot in slots_from_inventory(inventory, frozenset())}
    xids = quarantine.recent_xids(paths.state_dir, config.allocation, now)
    failed: dict[str, tuple[int | None, float]] = {}
    for slot in held:
        if slot not in present:
            failed[slot] = (None, now)
        elif present[slot] in xids:
            failed[slot] = xids[present[slot]]
    return failed


def open_allocator(paths: Paths, config: Config, engine_url: str | None = None) -> Allocator:
    def rebuild() -> list[Allocation]:
        with Engine(engine_url) as engine:
            found = engine.containers()
        known = {slot.uuid: slot.equivalents for slot in current_slots(paths, config)}
        # A device no longer in the inventory counts as a whole GPU: over-counting is the safe side.
        return allocations_from_containers(found, lambda uuid: known.get(uuid, Fraction(1)), time.time())

    if config.allocation.store == "etcd":
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        store = EtcdStore(Etcd(config.fleet.etcd), config.fleet.etcd.prefix, config.fleet.node,
                          lambda: float(config.scheduler.usage_half_life_seconds),
                          turns_file=paths.state_dir / "allocations.lock", instance=node_instance(paths.state_dir))
        return Allocator(paths.state_dir, config.allocation, store=store)
    return Allocator(paths.state_dir, config.allocation, rebuild=rebuild)


def node_slots(paths: Paths, config: Config) -> tuple[str, list[tuple[Slot, str, int, bool]]]:
    """The driver, and every slot with its GPU's model, its memory (MiB) and whether it is in use (not quarantined):
    what a fleet node publishes of itself."""
    with nvml.session() as gpus:
        inventory = gpus.inventory()
    unhealthy = quarantine.quarantined(paths.state_dir, config.allocation, time.time())
    models = {gpu.uuid: gpu for gpu in inventory.available}
    memory = {mig.uuid: mig.memory_total_bytes for gpu in inventory.available for mig in gpu.mig_devices}
    return inventory.driver_version, [
        (slot, models[slot.gpu_uuid].name, memory.get(slot.uuid, models[slot.gpu_uuid].memory_total_bytes) // 2**20,
         slot.gpu_uuid not in unhealthy) for slot in slots_from_inventory(inventory, frozenset())]
