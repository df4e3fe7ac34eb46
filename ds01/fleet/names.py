"""Which instance holds a fleet node's name. An instance is one server (its /etc/machine-id) with one state
directory; under the fleet's prefix:

- `alive/NODE`: on the node's lease, naming the instance whose proxy renews it;
- `owners/NODE`: that instance, without a lease, so the name stays its own while the node is down.

Only the instance that holds a name reconciles that node's allocations (another server's engine would show none
of its containers), and a proxy starts only under a name it holds (ds01.fleet.nodes.Membership claims it)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from ds01.errors import Denied, Ds01Error
from ds01.etcd import Entry, Etcd
from ds01.reasons import Reason

ALIVE, OWNERS = "alive/", "owners/"
LEGACY_ALIVE = b"1"  # what alive/NODE held before it named an instance


class NodeNameTaken(Ds01Error):
    """Another instance holds this node's fleet name: two proxies under one name would release each other's
    allocations."""


def node_instance(state_dir: Path) -> str:
    """The instance a node name belongs to: this server (/etc/machine-id, else the host name) and its state
    directory, hashed."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    seed = f"{machine or socket.gethostname()}\0{state_dir.resolve()}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def name_entries(etcd: Etcd, prefix: str, node: str) -> tuple[Entry | None, Entry | None]:
    """alive/NODE and owners/NODE, as they are."""
    found = []
    for key in (f"{prefix}{ALIVE}{node}", f"{prefix}{OWNERS}{node}"):
        found.append(next((e for e in etcd.read_prefix(key)[1] if e.key == key), None))
    return found[0], found[1]


def name_is_ours(alive: Entry | None, owner: Entry | None, instance: str) -> bool:
    """The name is this instance's while its live lease names it; while no lease does, when no other instance
    owns it. A lease from before instances were named (alive/NODE = "1", no owners/NODE) names nobody: the
    server upgraded in place takes its name over."""
    if alive is not None and not (alive.value == LEGACY_ALIVE and owner is None):
        return alive.value.decode(errors="replace") == instance
    return owner is None or owner.value.decode(errors="replace") == instance


def name_taken(node: str, *, alive_elsewhere: bool) -> str:
    if alive_elsewhere:
        return (f"fleet node name {node} is held by another ds01 proxy (its lease is alive): two proxies under one "
                "name would release each other's allocations. Give this server its own fleet.node in "
                "resource-limits.yaml, or stop the other proxy.")
    return (f"fleet node name {node} belongs to another server or state directory, whose allocations the fleet "
            "still counts. Give this server its own fleet.node; or, if it replaces that one for good, run "
            f"`ds01 fleet forget {node}` on another node first.")


def confirm_name(etcd: Etcd, prefix: str, node: str, instance: str, *, undone: str) -> None:
    """Raises Denied (not_owner) unless `instance` holds `node`'s name; `undone` says what was not done."""
    alive, owner = name_entries(etcd, prefix, node)
    if not name_is_ours(alive, owner, instance):
        raise Denied(Reason.NOT_OWNER, f"{name_taken(node, alive_elsewhere=alive is not None)} {undone}")
