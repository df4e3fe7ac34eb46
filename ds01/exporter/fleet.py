"""What the exporter tells of the allocation store and the fleet: whether the store answers the proxy
(DS01_RUN_DIR/store.json, which the proxy's fleet lease writes), the conflicts its transactions retried, and
each fleet node's liveness and last renewal, read from etcd."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ds01.config import Config
from ds01.errors import Ds01Error
from ds01.etcd import Etcd
from ds01.fleet.nodes import read_fleet

STORE_FILE = "store.json"


@dataclass(frozen=True)
class StoreState:
    kind: str  # file or etcd
    up: bool
    transaction_retries: int


@dataclass(frozen=True)
class FleetNode:
    node: str
    alive: bool
    last_seen: float | None


def store_state(config: Config, run_dir: Path, allocations_read: bool, now: float) -> StoreState:
    """For the file store, whether its file was read; for etcd, what the proxy last found, as long as it renews
    its lease (a report older than three renewals is not believed: the proxy is gone or stuck). Raises Ds01Error
    when the proxy has written nothing readable."""
    if config.allocation.store == "file":
        return StoreState("file", allocations_read, 0)
    path = run_dir / STORE_FILE
    try:
        raw = json.loads(path.read_text())
        fresh = now - float(raw["checked_at"]) <= config.fleet.node_ttl_seconds  # three beats of node_ttl/3
        return StoreState("etcd", bool(raw["up"]) and fresh, int(raw["transaction_retries"]))
    except FileNotFoundError as exc:
        raise Ds01Error(f"{path} is missing: the proxy has not renewed its fleet lease yet") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Ds01Error(f"{path} cannot be read ({exc})") from exc


def fleet_nodes(config: Config, now: float) -> tuple[FleetNode, ...]:
    if config.allocation.store != "etcd":
        return ()
    view = read_fleet(Etcd(config.fleet.etcd), config.fleet.etcd.prefix)
    return tuple(FleetNode(name, name in view.alive, view.last_seen(name, now)) for name in sorted(view.nodes))
