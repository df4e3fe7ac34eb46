"""`ds01 gpus`: the NVML inventory, one row per GPU and per MIG device."""

from __future__ import annotations

import argparse

from ds01 import nvml
from ds01.cli import Commands, add_command, add_format_option
from ds01.cli.context import Context
from ds01.cli.output import gib, print_json, print_table

HEADERS = ("GPU", "UUID", "MODEL/PROFILE", "MEM USED/TOTAL GiB", "UTIL", "TEMP", "POWER", "PROCESSES")


def register(commands: Commands) -> None:
    command = add_command(commands, "gpus", "list GPUs and MIG devices with memory, utilization and processes",
                          "ds01 gpus --format json | jq '.gpus[].uuid'", show_gpus)
    add_format_option(command)


def _processes(processes: tuple[nvml.GpuProcess, ...]) -> str:
    return " ".join(f"{p.pid}({gib(p.used_memory_bytes)}G)" for p in processes) or "-"


def _unit(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def _rows(inventory: nvml.Inventory) -> list[list[object]]:
    rows: list[list[object]] = []
    for gpu in inventory.gpus:
        if isinstance(gpu, nvml.UnavailableGpu):
            rows.append([gpu.index, gpu.uuid or "?", f"UNAVAILABLE ({gpu.health.reason})", gpu.health.detail,
                         "-", "-", "-", "-"])
            continue
        model = f"{gpu.name} [MIG]" if gpu.mig_mode else gpu.name
        rows.append([
            gpu.index, gpu.uuid, model,
            f"{gib(gpu.memory_used_bytes)}/{gib(gpu.memory_total_bytes)}",
            _unit(gpu.utilization_gpu_percent, "%"), _unit(gpu.temperature_celsius, "C"),
            _unit(gpu.power_watts, "W"), "-" if gpu.mig_mode else _processes(gpu.processes),
        ])
        for mig in gpu.mig_devices:
            rows.append([
                f"{gpu.index}.{mig.index}", mig.uuid, mig.profile,
                f"{gib(mig.memory_used_bytes)}/{gib(mig.memory_total_bytes)}", "-", "-", "-",
                _processes(mig.processes),
            ])
    return rows


def show_gpus(args: argparse.Namespace, context: Context) -> int:
    with nvml.session() as gpus:
        inventory = gpus.inventory()
    if args.format == "json":
        print_json(inventory)
    else:
        print(f"driver {inventory.driver_version}, CUDA {inventory.cuda_driver_version or '-'}")
        print_table(HEADERS, _rows(inventory))
    return 0
