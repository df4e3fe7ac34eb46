"""The owner-only reach rules, computed from the engine's state without I/O; the keeper that applies them, over
fakes of the engine and of iptables; and `networks.host_services` in the configuration."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ds01 import iptables, labels
from ds01.config import HostService, NetworkSettings, load_config
from ds01.errors import ConfigError, Ds01Error, EngineError
from ds01.eventlog.types import EventType
from ds01.proxy import janitor, reach
from ds01.proxy.imagestore import ImageStore
from ds01.proxy.reach import FORWARD_CHAIN, HOST_CHAIN, LOOPBACK_CHAIN, REACH_CHAIN
from tests.unit.test_config_reference import row, section

REPO = Path(__file__).resolve().parents[2]
REJECT = "-j REJECT --reject-with icmp-port-unreachable"
ALICE_ID = "a1" * 32
BOB_ID = "b2" * 32
ADMIN_ID = "c3" * 32


def network(name: str, net_id: str, subnet: str, *, user: str = "", uid: str = "", driver: str = "bridge",
            options: dict[str, str] | None = None, extra_subnets: tuple[str, ...] = ()) -> dict[str, Any]:
    found_labels = {"ds01.user": user, "ds01.uid": uid} if user else {}
    return {"Name": name, "Id": net_id, "Driver": driver, "Labels": found_labels, "Options": options or {},
            "IPAM": {"Config": [{"Subnet": s} for s in (subnet, *extra_subnets) if s]}}


ENGINE_NETWORKS = [
    network("bridge", "d" * 64, "172.18.0.0/16", options={"com.docker.network.bridge.name": "docker0"}),
    network("host", "e" * 64, "", driver="host"),
    network("none", "f" * 64, "", driver="null"),
    network("ds01-bob", BOB_ID, "192.168.160.0/20", user="bob", uid="1002", extra_subnets=("fd00::/64",)),
    network("ds01-alice", ALICE_ID, "192.168.144.0/20", user="alice", uid="1001"),
    network("lab", ADMIN_ID, "10.50.0.0/24"),
]


# --- reading the engine's state -----------------------------------------------------------------------------


def test_networks_are_read_with_their_bridge_subnets_and_owner() -> None:
    found = {n.name: n for n in reach.networks(ENGINE_NETWORKS)}
    assert set(found) == {"bridge", "ds01-alice", "ds01-bob", "lab"}  # host and none have neither
    assert found["bridge"].bridge == "docker0" and not found["bridge"].ds01 and found["bridge"].uid is None
    assert found["ds01-alice"].bridge == f"br-{ALICE_ID[:12]}" and found["ds01-alice"].uid == 1001
    assert [str(s) for s in found["ds01-bob"].subnets] == ["192.168.160.0/20"]  # IPv6 is not in the rules
    assert [n.name for n in reach.networks(ENGINE_NETWORKS)] == ["lab", "bridge", "ds01-alice", "ds01-bob"]


def test_a_bridge_name_iptables_would_read_as_a_wildcard_is_not_used() -> None:
    odd = network("odd", "9" * 64, "10.9.0.0/24", options={"com.docker.network.bridge.name": "br+x"})
    assert reach.networks([odd])[0].bridge is None


# --- the rules ------------------------------------------------------------------------------------------------


ENGINE_CGROUP = "/system.slice/docker.service"


def test_reach_rules_owner_and_root_only_and_what_is_not_known_refused() -> None:
    rules = reach.reach_rules(reach.networks(ENGINE_NETWORKS), ENGINE_CGROUP)
    chain = f"-A {REACH_CHAIN}"
    engine = f'-m cgroup --path "{ENGINE_CGROUP}"'
    assert rules == (
        f"{chain} -m conntrack --ctstate RELATED -j RETURN",
        f"{chain} -p tcp -m conntrack --ctstate ESTABLISHED -j RETURN",  # UDP: every packet is checked
        f"{chain} -d 192.168.144.0/20 {engine} {REJECT}",  # the engine fetches for whoever asks: not for users'
        f"{chain} -d 192.168.160.0/20 {engine} {REJECT}",
        f"{chain} -o br-{ADMIN_ID[:12]} {engine} -j RETURN",
        f"{chain} -o br-+ {engine} {REJECT}",
        f"{chain} -m owner --uid-owner 0 -j RETURN",
        f"{chain} -m addrtype --dst-type LOCAL -j RETURN",
        f"{chain} -d 10.50.0.0/24 -j RETURN",
        f"{chain} -d 172.18.0.0/16 -j RETURN",
        f"{chain} -d 192.168.144.0/20 -m owner --uid-owner 1001 -j RETURN",
        f"{chain} -d 192.168.144.0/20 {REJECT}",
        f"{chain} -d 192.168.160.0/20 -m owner --uid-owner 1002 -j RETURN",
        f"{chain} -d 192.168.160.0/20 {REJECT}",
        f"{chain} -o br-+ {REJECT}",
        f"{chain} -m conntrack --ctstate DNAT --ctorigdst 127.0.0.0/8 {REJECT}",
    )


@pytest.mark.parametrize("path", ["/", "", "docker.service", '/a"b', "/a b"])
def test_an_engine_cgroup_that_cannot_name_it_apart_is_refused(path: str) -> None:
    with pytest.raises(Ds01Error, match="cgroup of its own"):
        reach.reach_rules(reach.networks(ENGINE_NETWORKS), path)


def test_a_ds01_network_without_an_owner_uid_is_roots_alone() -> None:
    rules = reach.reach_rules(reach.networks([network("ds01-x", "7" * 64, "10.7.0.0/24", user="x", uid="")]),
                              ENGINE_CGROUP)
    assert [r for r in rules if "10.7.0.0/24" in r and "cgroup" not in r] == [
        f"-A {REACH_CHAIN} -d 10.7.0.0/24 {REJECT}"]
    root_owned = reach.networks([network("ds01-root", "8" * 64, "10.8.0.0/24", user="root", uid="0")])
    assert [r for r in reach.reach_rules(root_owned, ENGINE_CGROUP) if "10.8.0.0/24" in r and "cgroup" not in r] == [
        f"-A {REACH_CHAIN} -d 10.8.0.0/24 {REJECT}"]  # root passes above, before any network


def test_host_rules_let_through_replies_and_the_listed_services_only_from_ds01_bridges() -> None:
    services = (HostService("", 53, "udp"), HostService("10.0.0.1", 3128, "tcp"))
    chain = f"-A {HOST_CHAIN}"
    assert reach.host_rules(reach.networks(ENGINE_NETWORKS), services) == (
        f"{chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"{chain} -p udp -m udp --dport 53 -j RETURN",
        f"{chain} -d 10.0.0.1/32 -p tcp -m tcp --dport 3128 -j RETURN",
        f"{chain} -i br-{ADMIN_ID[:12]} -j RETURN",
        f"{chain} -i docker0 -j RETURN",
        f"{chain} -i br-{ALICE_ID[:12]} {REJECT}",
        f"{chain} -i br-{BOB_ID[:12]} {REJECT}",
        f"{chain} -i br-+ {REJECT}",
    )


# --- applying them --------------------------------------------------------------------------------------------

DESIRED = reach.ruleset(reach.networks(ENGINE_NETWORKS), (), ENGINE_CGROUP)


EMPTY_RAW = iptables.parse_save("*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
JUMP_OUT, JUMP_IN, JUMP_FORWARD = (f"-A OUTPUT -j {REACH_CHAIN}", f"-A INPUT -j {HOST_CHAIN}",
                                   f"-A FORWARD -j {FORWARD_CHAIN}")
RAW_IN_PLACE = iptables.parse_save("\n".join(["*raw", ":PREROUTING ACCEPT [0:0]", f":{LOOPBACK_CHAIN} - [0:0]",
                                              f"-A PREROUTING -j {LOOPBACK_CHAIN}", *reach.LOOPBACK_RULES, "COMMIT"]))


def test_the_first_restore_declares_every_chain_and_puts_each_jump_first() -> None:
    live = iptables.parse_save("*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j OTHER\nCOMMIT\n")
    assert not reach.in_place(DESIRED, live, EMPTY_RAW)
    lines = reach.restore_text(DESIRED, live, EMPTY_RAW).splitlines()
    filter_end = lines.index("COMMIT")
    assert lines[:4] == ["*filter", f":{REACH_CHAIN} - [0:0]", f":{HOST_CHAIN} - [0:0]", f":{FORWARD_CHAIN} - [0:0]"]
    assert lines[4:filter_end - 3] == [*DESIRED.reach, *DESIRED.host, *DESIRED.forward]
    assert lines[filter_end - 3:filter_end] == [f"-I OUTPUT 1 -j {REACH_CHAIN}", f"-I INPUT 1 -j {HOST_CHAIN}",
                                                f"-I FORWARD 1 -j {FORWARD_CHAIN}"]
    assert lines[filter_end + 1:] == ["*raw", f":{LOOPBACK_CHAIN} - [0:0]", *reach.LOOPBACK_RULES,
                                      f"-I PREROUTING 1 -j {LOOPBACK_CHAIN}", "COMMIT"]


def saved(reach_rules: tuple[str, ...], host_rules: tuple[str, ...], output: tuple[str, ...],
          inputs: tuple[str, ...], forward: tuple[str, ...] = DESIRED.forward) -> iptables.Table:
    text = "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                      f":{HOST_CHAIN} - [0:0]", f":{REACH_CHAIN} - [0:0]", f":{FORWARD_CHAIN} - [0:0]", *inputs,
                      *output, JUMP_FORWARD, *host_rules, *reach_rules, *forward, "COMMIT"])
    return iptables.parse_save(text)


def test_rules_in_place_need_no_restore_and_anything_else_is_rewritten() -> None:
    assert reach.in_place(DESIRED, saved(DESIRED.reach, DESIRED.host, (JUMP_OUT,), (JUMP_IN,)), RAW_IN_PLACE)
    assert not reach.in_place(DESIRED, saved(DESIRED.reach, DESIRED.host, (JUMP_OUT,), (JUMP_IN,)), EMPTY_RAW)
    assert not reach.in_place(DESIRED, saved(DESIRED.reach[:-1], DESIRED.host, (JUMP_OUT,), (JUMP_IN,)),
                              RAW_IN_PLACE)
    assert not reach.in_place(DESIRED, saved(DESIRED.reach, (), (JUMP_OUT,), (JUMP_IN,)), RAW_IN_PLACE)
    assert not reach.in_place(DESIRED, saved(DESIRED.reach, DESIRED.host, (JUMP_OUT,), (JUMP_IN,), ()), RAW_IN_PLACE)
    later = saved(DESIRED.reach, DESIRED.host, ("-A OUTPUT -j OTHER", JUMP_OUT), (JUMP_IN, JUMP_IN))
    assert not reach.in_place(DESIRED, later, RAW_IN_PLACE)
    lines = reach.restore_text(DESIRED, later, RAW_IN_PLACE).splitlines()
    filter_end = lines.index("COMMIT")
    assert lines[filter_end - 5:filter_end] == [f"-D OUTPUT -j {REACH_CHAIN}", f"-I OUTPUT 1 -j {REACH_CHAIN}",
                                                f"-D INPUT -j {HOST_CHAIN}", f"-D INPUT -j {HOST_CHAIN}",
                                                f"-I INPUT 1 -j {HOST_CHAIN}"]
    settled = reach.restore_text(DESIRED, saved((), (), (JUMP_OUT,), (JUMP_IN,)), RAW_IN_PLACE).splitlines()
    assert not [line for line in settled if line.startswith(("-D", "-I"))]


def test_forwarding_into_a_ds01_network_from_elsewhere_is_dropped_and_loopback_from_the_network_too() -> None:
    chain = f"-A {FORWARD_CHAIN}"
    alice, bob = f"br-{ALICE_ID[:12]}", f"br-{BOB_ID[:12]}"
    assert reach.forward_rules(reach.networks(ENGINE_NETWORKS)) == (
        f"{chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"{chain} -o br-{ADMIN_ID[:12]} -j RETURN",  # an admin's network: the admin's to guard
        f"{chain} -o docker0 -j RETURN",
        f"{chain} ! -i {alice} -o {alice} -j DROP",
        f"{chain} ! -i {bob} -o {bob} -j DROP",
        f"{chain} ! -i br-+ -o br-+ -j DROP",  # a bridge made since
    )
    assert (f"-A {LOOPBACK_CHAIN} -d 127.0.0.0/8 ! -i lo -j DROP",) == reach.LOOPBACK_RULES


def nat(rule: str) -> iptables.Table:
    return iptables.parse_save(f"*nat\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n{rule}\nCOMMIT\n")


USERLAND_ON = "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"
TRANSLATED = "-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER"


def test_the_userland_proxy_is_read_from_the_engines_nat_output_rule_and_must_be_off() -> None:
    assert reach.userland_proxy(nat(USERLAND_ON)) is True
    assert reach.userland_proxy(nat(TRANSLATED)) is False
    assert reach.userland_proxy(nat("")) is None
    reach.check_translation(nat(TRANSLATED))
    with pytest.raises(Ds01Error, match=r'userland proxy is on.*"userland-proxy": false'):
        reach.check_translation(nat(USERLAND_ON))
    with pytest.raises(Ds01Error, match="no nat OUTPUT rule"):
        reach.check_translation(nat(""))


def inspected(name: str, user: str, bindings: dict[str, list[dict[str, str]]], *, every: bool = False
              ) -> dict[str, Any]:
    return {"Name": f"/{name}", "Config": {"Labels": {"ds01.user": user}},
            "HostConfig": {"PortBindings": bindings, "PublishAllPorts": every}}


def test_ports_published_beyond_loopback_are_listed_by_owner() -> None:
    found = reach.public_bindings([
        inspected("ok", "alice", {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                  "81/tcp": [{"HostIp": "::1", "HostPort": ""}]}),
        inspected("wide", "bob", {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],  # noqa: S104
                                  "53/udp": [{"HostIp": "", "HostPort": "5353"}]}),
        inspected("all", "bob", {}, every=True),
        inspected("quiet", "carol", {}),
    ])
    assert found == {"bob": ["wide: 53/udp on every address, 80/tcp on 0.0.0.0",
                             "all: every exposed port on every address (-P)"]}


def test_iptables_save_is_read_chain_by_chain() -> None:
    table = iptables.parse_save("# Generated by iptables-nft-save\n*filter\n:INPUT ACCEPT [0:0]\n:EMPTY - [0:0]\n"
                                "-A INPUT -j X\n-A INPUT -i lo -j RETURN\nCOMMIT\n# Completed\n")
    assert table.rules("INPUT") == ("-A INPUT -j X", "-A INPUT -i lo -j RETURN")
    assert table.rules("EMPTY") == () and table.rules("MISSING") is None


def test_the_door_says_what_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables, "SAVE", "ds01-no-such-iptables-save")
    with pytest.raises(iptables.IptablesError, match="is not installed"):
        iptables.save()
    monkeypatch.setattr(iptables, "RESTORE", "false")
    with pytest.raises(iptables.IptablesError, match=r"false --noflush --wait failed \(exit 1\)"):
        iptables.restore("*filter\nCOMMIT\n")


# --- the keeper, over a fake engine and fake iptables -----------------------------------------------------------


class FakeEngine:
    def __init__(self) -> None:
        self.networks: list[dict[str, Any]] = list(ENGINE_NETWORKS)
        self.down = False

    def call(self, method: str, path: str, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
        assert (method, path, body) == ("GET", "/networks", None)
        if self.down:
            raise EngineError("cannot reach the Docker engine")
        return 200, self.networks


class FakeIptables:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.table = iptables.Table({})
        self.raw = iptables.Table({})
        self.nat = nat(TRANSLATED)
        self.restored: list[str] = []
        self.refuse = False
        monkeypatch.setattr(iptables, "save", self.save)
        monkeypatch.setattr(iptables, "restore", self.restore)

    def save(self, table: str = "filter") -> iptables.Table:
        return {"filter": self.table, "raw": self.raw, "nat": self.nat}[table]

    def restore(self, text: str) -> None:
        if self.refuse:
            raise iptables.IptablesError("iptables-restore --noflush --wait failed (exit 1): line 3 failed")
        self.restored.append(text)
        tables = {"filter": self.table, "raw": self.raw}
        chains: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith("*"):
                table, chains = line[1:], {name: list(rules) for name, rules in tables[line[1:]].chains.items()}
            elif line.startswith(":"):
                chains[line[1:].split()[0]] = []  # declared: emptied
            elif line.startswith("-A "):
                chains[line.split()[1]].append(line)
            elif line.startswith("-D "):
                chains[line.split()[1]].remove(f"-A {line[3:]}")
            elif line.startswith("-I "):
                _, base, _, *jump = line.split()
                chains.setdefault(base, []).insert(0, " ".join(["-A", base, *jump]))
            elif line == "COMMIT":
                tables[table] = iptables.Table({name: tuple(rules) for name, rules in chains.items()})
        self.table, self.raw = tables["filter"], tables["raw"]


@pytest.fixture
def fake_iptables(monkeypatch: pytest.MonkeyPatch) -> FakeIptables:
    return FakeIptables(monkeypatch)


def keeper_of(engine: FakeEngine, services: tuple[HostService, ...] = ()) -> janitor.ReachKeeper:
    return janitor.ReachKeeper(engine, lambda: services, ENGINE_CGROUP)  # type: ignore[arg-type]


def test_the_keeper_applies_what_the_engine_implies_once_and_follows_changes(fake_iptables: FakeIptables) -> None:
    engine = FakeEngine()
    keeper = keeper_of(engine)
    assert keeper.refresh() is True
    assert fake_iptables.table.rules(REACH_CHAIN) == DESIRED.reach
    assert fake_iptables.table.rules("OUTPUT") == (f"-A OUTPUT -j {REACH_CHAIN}",)
    assert keeper.refresh() is False and len(fake_iptables.restored) == 1  # idempotent: nothing to change
    engine.networks = [n for n in engine.networks if n["Name"] != "ds01-alice"]
    assert keeper.refresh() is True
    assert not [r for r in fake_iptables.table.rules(REACH_CHAIN) or () if "192.168.144.0/20" in r]  # none left


def test_the_keeper_writes_nothing_while_the_userland_proxy_is_on(fake_iptables: FakeIptables) -> None:
    fake_iptables.nat = nat(USERLAND_ON)
    with pytest.raises(Ds01Error, match="userland proxy is on"):
        keeper_of(FakeEngine()).refresh()
    assert fake_iptables.restored == []


def test_a_failure_is_reported_and_counted_and_the_rules_in_place_stay(
        fake_iptables: FakeIptables, event_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = FakeEngine()
    keeper = keeper_of(engine)
    keeper.refresh()
    before = fake_iptables.table
    engine.networks = engine.networks[:-1]
    fake_iptables.refuse = True
    keeper.keep("network destroy")
    engine.down = True
    keeper.keep("the periodic check")
    assert fake_iptables.table == before
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert [(e["type"], e["details"]["trigger"], e["details"]["failures"]) for e in events] == [
        (EventType.PROXY_REACH_FAILED, "network destroy", 1), (EventType.PROXY_REACH_FAILED, "the periodic check", 2)]
    assert "line 3 failed" in events[0]["details"]["error"]
    assert "ds01 proxy: ERROR the reach rules were not updated after network destroy" in capsys.readouterr().err


def test_the_keeper_knows_the_engines_namespace_by_its_bridges(monkeypatch: pytest.MonkeyPatch) -> None:
    here: dict[str, str] = {}
    monkeypatch.setattr(iptables, "interface_address",
                        lambda name: ipaddress.IPv4Address(here[name]) if name in here else None)
    engine = FakeEngine()
    keeper = keeper_of(engine)
    assert keeper.outside_engine_namespace() == (
        "none of the engine's bridges (br-c3c3c3c3c3c3, docker0, br-a1a1a1a1a1a1) is here")
    here["docker0"] = "172.17.0.1"  # another engine's default bridge, on another subnet
    assert keeper.outside_engine_namespace() is not None
    here["docker0"] = "172.18.0.1"
    assert keeper.outside_engine_namespace() is None


class FakeAllocator:
    def __init__(self) -> None:
        self.released: list[str] = []

    def release_removed(self, container_id: str) -> None:
        self.released.append(container_id)


class FakePins:
    def release(self, key: str) -> None:
        assert key == ""


class CountingKeeper:
    def __init__(self) -> None:
        self.triggers: list[str] = []

    def keep(self, trigger: str) -> None:
        self.triggers.append(trigger)


def test_the_janitor_refreshes_on_network_changes_only_and_kicks_the_queue_on_exits(tmp_path: Path) -> None:
    allocator, keeper, kicks, died = FakeAllocator(), CountingKeeper(), [], []
    watch = janitor.Janitor(FakeEngine(), allocator, FakePins(), "/var/lib/ds01", keeper,  # type: ignore[arg-type]
                            ImageStore(tmp_path), lambda: kicks.append(1), died.append)
    for kind, action in (("container", "create"), ("container", "die"), ("network", "create"),
                         ("network", "connect"), ("network", "destroy"), ("container", "destroy")):
        watch.on_event({"Type": kind, "Action": action, "Actor": {"ID": f"{kind}-id", "Attributes": {}}})
    assert keeper.triggers == ["network create", "network destroy"]  # containers change no rule
    assert allocator.released == ["container-id"]  # a network's destroy releases no grant
    assert len(kicks) == 2  # a container's exit and its removal each run a queue pass
    assert died == []  # none was a batch job's
    job = {labels.USER: "alice", labels.TYPE: "job", labels.INSTANCE: "/var/lib/ds01"}
    watch.on_event({"Type": "container", "Action": "die", "Actor": {"ID": "job-id", "Attributes": job}})
    assert died == ["job-id"]


# --- networks.host_services in the configuration ----------------------------------------------------------------


def config_with(tmp_path: Path, networks: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(f"version: 1\nnetworks:\n{networks}")
    return path


def test_host_services_load_in_both_forms_and_default_to_none(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, "  host_services: [53/udp, 10.0.0.1:3128/tcp]\n"))
    assert config.networks.host_services == (HostService("", 53, "udp"), HostService("10.0.0.1", 3128, "tcp"))
    assert load_config(REPO / "config" / "resource-limits.yaml").networks == NetworkSettings()
    assert load_config(config_with(tmp_path, "  {}\n")).networks.host_services == ()


@pytest.mark.parametrize(("value", "message"), [
    ("[53]", r"53 is not PORT/PROTO"),
    ("[53/icmp]", r"'53/icmp' is not PORT/PROTO"),
    ("[0/tcp]", r"'0/tcp' is not PORT/PROTO .* from 1 to 65535"),
    ("[70000/tcp]", r"'70000/tcp'"),
    ("['[::1]:53/udp']", r"'\[::1\]:53/udp': '\[::1\]' is not an IPv4 address \(containers' networks are IPv4"),
    ("[myhost:53/udp]", r"'myhost:53/udp': 'myhost' is not an IPv4 address"),
    ("[53/udp, 53/udp]", r"'53/udp' is listed twice"),
    ("53/udp", r"is not a list"),
])
def test_a_bad_host_service_is_named_with_its_line(tmp_path: Path, value: str, message: str) -> None:
    path = config_with(tmp_path, f"  host_services: {value}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:3: networks.host_services: {message}"):
        load_config(path)


def test_an_unknown_networks_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"networks\.host_service: unknown key; did you mean 'host_services'"):
        load_config(config_with(tmp_path, "  host_service: []\n"))


def test_the_configuration_reference_lists_host_services() -> None:
    assert row(section("Top level"), "networks")
    assert row(section("`networks`"), "host_services")[1] == "`[]`"


def test_reserved_ports_replace_the_defaults_and_must_be_port_numbers(tmp_path: Path) -> None:
    assert load_config(config_with(tmp_path, "  {}\n")).networks.reserved_ports == {3000, 9090, 9093, 9401}
    assert load_config(config_with(tmp_path, "  reserved_ports: [5432]\n")).networks.reserved_ports == {5432}
    assert load_config(config_with(tmp_path, "  reserved_ports: []\n")).networks.reserved_ports == frozenset()
    for bad in ("[0]", "[65536]", "['9401']", "[true]", "9401"):
        with pytest.raises(ConfigError, match=r"networks.reserved_ports: is not a list of port numbers"):
            load_config(config_with(tmp_path, f"  reserved_ports: {bad}\n"))
