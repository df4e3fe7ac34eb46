"""The `fleet:` section and allocation.store: strict like every section, each error naming the file and line, and
the usage a release adds to etcd equal to what the event log's history gives for the same holding."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest

from ds01.config import load_config
from ds01.errors import ConfigError
from ds01.etcd import Delete, Entry, Put
from ds01.gpus.allocations import Allocation
from ds01.gpus.etcdstore import Usage, _applied, released_hours
from ds01.gpus.usage import Held, decayed_hours

FLEET = """\
version: 1
allocation:
  store: etcd
fleet:
  node: gpu2
  node_ttl: 30s
  etcd:
    endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
    prefix: /lab/
    ca_file: /etc/ds01/etcd/ca.crt
    cert_file: /etc/ds01/etcd/client.crt
    key_file: /etc/ds01/etcd/client.key
    timeout: 3s
"""


def test_a_full_fleet_section_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FLEET))
    assert config.allocation.store == "etcd"
    assert (config.fleet.node, config.fleet.node_ttl_seconds) == ("gpu2", 30)
    etcd = config.fleet.etcd
    assert etcd.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379") and etcd.prefix == "/lab/"
    assert (etcd.ca_file, etcd.cert_file, etcd.key_file, etcd.timeout_seconds) == (
        Path("/etc/ds01/etcd/ca.crt"), Path("/etc/ds01/etcd/client.crt"), Path("/etc/ds01/etcd/client.key"), 3.0)


@pytest.mark.parametrize("fleet", ["", "fleet:\n  node: gpu2\n", "fleet:\n  etcd:\n    prefix: /lab/\n"])
def test_an_etcd_store_without_endpoints_is_an_error(tmp_path: Path, fleet: str) -> None:
    with pytest.raises(ConfigError, match=r":3: allocation.store: is etcd, but fleet.etcd.endpoints names no etcd"):
        load_config(_write(tmp_path, "version: 1\nallocation:\n  store: etcd\n" + fleet))


def test_without_a_fleet_section_the_store_is_the_file_and_the_node_the_host(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "version: 1\n"))
    assert config.allocation.store == "file" and config.fleet.node and config.fleet.node == config.fleet.node.lower()


@pytest.mark.parametrize(("change", "message"), [
    (("store: etcd", "store: redis"), r":3: allocation.store: .*redis"),
    (("node: gpu2", "node: GPU_2"), r":5: fleet.node: 'GPU_2' is not a node name"),
    (("node_ttl: 30s", "node_ttl: 3s"), r":6: fleet.node_ttl: '3s': from 6s"),
    (("node_ttl: 30s", "node_ttl: 2h"), r":6: fleet.node_ttl: '2h': from 6s .* to 1h"),
    (("timeout: 3s", "timeout: 5m"), r":13: fleet.etcd.timeout: '5m' is longer than 60s"),
    (("node_ttl: 30s", "node_ttl: soon"), r":6: fleet.node_ttl: "),
    (("[https://10.0.0.1:2379, https://10.0.0.2:2379]", "[10.0.0.1:2379]"),
     r":8: fleet.etcd.endpoints: '10.0.0.1:2379' is not an etcd client URL"),
    (("[https://10.0.0.1:2379, https://10.0.0.2:2379]", "[http://10.0.0.1:x]"), r"fleet.etcd.endpoints: .* bad port"),
    (("[https://10.0.0.1:2379, https://10.0.0.2:2379]", "[]"), r"fleet.etcd.endpoints: must be a list of URLs"),
    (("prefix: /lab/", "prefix: lab"), r":9: fleet.etcd.prefix: 'lab' must be a key prefix"),
    (("    key_file: /etc/ds01/etcd/client.key\n", ""), r":5: fleet: etcd.cert_file and etcd.key_file go together"),
    (("ca_file: /etc/ds01/etcd/ca.crt", "ca_file: ca.crt"), r":10: fleet.etcd.ca_file: 'ca.crt' must be an absolute"),
    (("timeout: 3s", "timout: 3s"), r"fleet.etcd.timout: unknown key; did you mean 'timeout'"),
    (("  node: gpu2", "  nodes: gpu2"), r"fleet.nodes: unknown key; did you mean 'node'"),
])
def test_a_bad_fleet_value_is_an_error_naming_its_line(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in FLEET
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, FLEET.replace(old, new)))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "resource-limits.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("held_hours", "ago_hours"), [(1.0, 0.0), (10.0, 24.0), (0.01, 300.0)])
def test_the_usage_a_release_adds_is_the_event_logs_for_the_same_holding(held_hours: float, ago_hours: float) -> None:
    half_life, now = 7 * 86400.0, 1.0e9
    released = now - ago_hours * 3600
    allocation = Allocation("a-1", "alice", 1000, ("GPU-0", "GPU-1"), Fraction(3, 2), released - held_hours * 3600,
                            None, "c" * 64, "x", released - held_hours * 3600)
    added = Usage(released_hours(allocation, released, half_life), released)  # as kept in users/alice
    logged = decayed_hours([Held("alice", 1.5, allocation.created_at, released)], now, half_life)["alice"]
    assert math.isclose(added.at_time(now, half_life), logged, rel_tol=1e-9)


def test_a_committed_transaction_is_applied_to_what_the_process_knew() -> None:
    before = {key: Entry(key, b"old", 5, 0) for key in ("/p/allocations/a", "/p/slots/n/GPU-0", "/p/slots/n/GPU-1",
                                                        "/p/users/alice")}
    after = {e.key: e for e in _applied(before, [Put("/p/users/alice", b"new"), Delete("/p/allocations/a"),
                                                 Delete("/p/slots/n/", prefix=True),
                                                 Put("/p/allocations/b", b"b", lease=7)], 9)}
    assert set(after) == {"/p/users/alice", "/p/allocations/b"}
    assert after["/p/users/alice"] == Entry("/p/users/alice", b"new", 9, 0)
    assert after["/p/allocations/b"] == Entry("/p/allocations/b", b"b", 9, 7)
