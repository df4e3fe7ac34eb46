"""Who on the host reaches which container, and what containers reach on the host: the iptables rules that follow
from the engine's state, computed here without I/O (the janitor reads the state and applies them).

`DS01-REACH`, jumped to first from the filter table's OUTPUT chain, sees every connection a host process opens.
A ds01 network's subnet is its owner's: anyone else is refused, from the moment the network exists, whatever
container gets an address in it. A port published on 127.0.0.1 meets the same rule, since the engine's nat OUTPUT
rule turns it into the container's address before filter OUTPUT runs; that is why the engine's userland proxy must
be off (with it on, docker-proxy, a root process, would connect for everyone). Root (admins' tools) passes, but not
the engine itself: what a user makes it fetch (a pull from a registry of their choosing, a token realm that
registry names, a build's ADD URL) must not reach another user's container. The engine is told by its cgroup.
What the rules do not know yet is refused: a bridge made since (`-o br-+`), or a loopback port translated to an
unknown address.

`DS01-HOST`, jumped to first from INPUT, sees what arrives for the host's own addresses: from a ds01 network's
bridge (or a bridge not known yet), only replies and the `networks.host_services` pass.

`DS01-FORWARD`, first in FORWARD, drops what the host would forward into a ds01 network from anywhere else, and
`DS01-LOOPBACK`, first in the raw table's PREROUTING, drops packets for 127.0.0.0/8 that come from the network:
published ports are the host's own, never the network's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ds01 import labels
from ds01.config.schema import HostService
from ds01.errors import Ds01Error
from ds01.iptables import Table

REACH_CHAIN = "DS01-REACH"
HOST_CHAIN = "DS01-HOST"
FORWARD_CHAIN = "DS01-FORWARD"
LOOPBACK_CHAIN = "DS01-LOOPBACK"  # in the raw table
# Each first in its base chain, once: the filter table's, and the raw table's.
JUMPS = (("OUTPUT", REACH_CHAIN), ("INPUT", HOST_CHAIN), ("FORWARD", FORWARD_CHAIN))
RAW_JUMPS = (("PREROUTING", LOOPBACK_CHAIN),)
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
BRIDGE_PREFIX = "br-"  # the engine names a user-defined network's bridge br- and its id's first 12 digits
NEW_BRIDGES = f"{BRIDGE_PREFIX}+"
REJECT = "-j REJECT --reject-with icmp-port-unreachable"  # the caller gets "connection refused" at once
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"  # checked when it was opened
# Errors about a connection (the host's own "refused" to a container among them) pass for every protocol, an
# established connection only for TCP: a UDP flow's entry outlives its socket, and whoever binds the same source
# port next would join it.
RELATED = "-m conntrack --ctstate RELATED -j RETURN"
TCP_ESTABLISHED = "-p tcp -m conntrack --ctstate ESTABLISHED -j RETURN"
_INTERFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # no "+", which iptables reads as a wildcard
_CGROUP_PATH = re.compile(r"/[A-Za-z0-9_.@:/\\-]*")  # no quote or space, which the rule could not carry


@dataclass(frozen=True)
class Network:
    name: str
    bridge: str | None  # its bridge interface, when it has one
    subnets: tuple[ipaddress.IPv4Network, ...]
    ds01: bool  # made by ds01 for a user (labelled ds01.user)
    uid: int | None  # its owner (ds01.uid); None: nobody but root reaches it


@dataclass(frozen=True)
class Ruleset:
    reach: tuple[str, ...]  # DS01-REACH, each rule as iptables-save prints it
    host: tuple[str, ...]  # DS01-HOST
    forward: tuple[str, ...]  # DS01-FORWARD
    loopback: tuple[str, ...]  # DS01-LOOPBACK (raw)

    def filter_chains(self) -> dict[str, tuple[str, ...]]:
        return {REACH_CHAIN: self.reach, HOST_CHAIN: self.host, FORWARD_CHAIN: self.forward}


def _uid(text: object) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() else None


def _bridge(network: Mapping[str, Any]) -> str | None:
    if network.get("Driver") != "bridge":
        return None
    named = str((network.get("Options") or {}).get(BRIDGE_NAME_OPTION) or "")
    name = named or f"{BRIDGE_PREFIX}{str(network.get('Id') or '')[:12]}"
    return name if _INTERFACE.fullmatch(name) and name != BRIDGE_PREFIX else None


def _subnets(network: Mapping[str, Any]) -> tuple[ipaddress.IPv4Network, ...]:
    """Its IPv4 subnets (the rules are IPv4; ds01 makes no IPv6 network for users)."""
    found = []
    for config in (network.get("IPAM") or {}).get("Config") or []:
        try:
            subnet = ipaddress.ip_network(str(config.get("Subnet") or ""), strict=False)
        except ValueError:
            continue
        if isinstance(subnet, ipaddress.IPv4Network):
            found.append(subnet)
    return tuple(found)


def networks(listed: Iterable[Mapping[str, Any]]) -> tuple[Network, ...]:
    """The engine's networks (GET /networks) that have a bridge or a subnet, in a stable order."""
    found = []
    for network in listed:
        found_labels = network.get("Labels") or {}
        bridge, subnets = _bridge(network), _subnets(network)
        if bridge or subnets:
            found.append(Network(str(network.get("Name") or ""), bridge, subnets,
                                 ds01=bool(found_labels.get(labels.USER)), uid=_uid(found_labels.get(labels.UID))))
    return tuple(sorted(found, key=lambda n: (n.subnets, n.name)))


def _returns_for(uid: int | None) -> list[str]:
    """The owner's way through (root has its own, above; an owner not known has none)."""
    return [f"-m owner --uid-owner {uid} -j RETURN"] if uid else []


def engine_cgroup_match(path: str) -> str:
    """The cgroup match for the engine's connections, as iptables-save prints it."""
    if not _CGROUP_PATH.fullmatch(path) or path == "/":
        raise Ds01Error(f"the engine's cgroup {path!r} cannot name it apart from other processes: run the engine in a "
                        "cgroup of its own (systemd's docker.service is one)")
    return f'-m cgroup --path "{path}"'


def reach_rules(found: Sequence[Network], engine_cgroup: str) -> tuple[str, ...]:
    chain = f"-A {REACH_CHAIN}"
    engine = engine_cgroup_match(engine_cgroup)  # written where iptables-save prints it, after -d and -o
    rules = [f"{chain} {RELATED}", f"{chain} {TCP_ESTABLISHED}"]
    # The engine reaches the networks that are not ds01's (the admin's), and no bridge it does not know of.
    rules += [f"{chain} -d {subnet} {engine} {REJECT}" for network in found if network.ds01
              for subnet in network.subnets]
    rules += [f"{chain} -o {network.bridge} {engine} -j RETURN" for network in found
              if network.bridge and not network.ds01 and network.bridge.startswith(BRIDGE_PREFIX)]
    rules += [f"{chain} -o {NEW_BRIDGES} {engine} {REJECT}", f"{chain} -m owner --uid-owner 0 -j RETURN"]
    # The host's own addresses (a gateway's among them) are host services, not containers.
    rules.append(f"{chain} -m addrtype --dst-type LOCAL -j RETURN")
    for network in found:
        for subnet in network.subnets:
            if network.ds01:
                rules += [f"{chain} -d {subnet} {way}" for way in _returns_for(network.uid)]
                rules.append(f"{chain} -d {subnet} {REJECT}")
            else:
                rules.append(f"{chain} -d {subnet} -j RETURN")  # not ds01's: the admin's to guard
    rules += [f"{chain} -o {NEW_BRIDGES} {REJECT}",
              f"{chain} -m conntrack --ctstate DNAT --ctorigdst 127.0.0.0/8 {REJECT}"]
    return tuple(rules)


def host_rules(found: Sequence[Network], services: Sequence[HostService]) -> tuple[str, ...]:
    chain = f"-A {HOST_CHAIN}"
    rules = [f"{chain} {ESTABLISHED}"]
    for service in services:
        address = f"-d {service.address}/32 " if service.address else ""
        rules.append(f"{chain} {address}-p {service.protocol} -m {service.protocol} --dport {service.port} -j RETURN")
    bridged = [network for network in found if network.bridge]
    rules += [f"{chain} -i {network.bridge} -j RETURN" for network in bridged if not network.ds01]
    rules += [f"{chain} -i {network.bridge} {REJECT}" for network in bridged if network.ds01]
    rules.append(f"{chain} -i {NEW_BRIDGES} {REJECT}")
    return tuple(rules)


def forward_rules(found: Sequence[Network]) -> tuple[str, ...]:
    """What the host forwards into a ds01 network from elsewhere (a neighbour that routes the containers' range
    through the host, or sends to its 127.0.0.1 ports) is dropped: the engine's own rules accept it for every
    published port. Its containers' own traffic out, and the replies to it, pass."""
    chain = f"-A {FORWARD_CHAIN}"
    rules = [f"{chain} {ESTABLISHED}"]
    bridged = [network for network in found if network.bridge]
    rules += [f"{chain} -o {network.bridge} -j RETURN" for network in bridged if not network.ds01]
    rules += [f"{chain} ! -i {network.bridge} -o {network.bridge} -j DROP" for network in bridged if network.ds01]
    rules.append(f"{chain} ! -i {NEW_BRIDGES} -o {NEW_BRIDGES} -j DROP")
    return tuple(rules)


# A packet for 127.0.0.0/8 that arrives from the network: the engine's route_localnet (userland proxy off) would
# turn it into a published port's container.
LOOPBACK_RULES = (f"-A {LOOPBACK_CHAIN} -d 127.0.0.0/8 ! -i lo -j DROP",)


def ruleset(found: Sequence[Network], services: Sequence[HostService], engine_cgroup: str) -> Ruleset:
    return Ruleset(reach=reach_rules(found, engine_cgroup), host=host_rules(found, services),
                   forward=forward_rules(found), loopback=LOOPBACK_RULES)


def check_translation(nat: Table) -> None:
    """The rules hold only where the engine translates loopback ports itself (its userland proxy off)."""
    match userland_proxy(nat):
        case None:
            raise Ds01Error("the engine has no nat OUTPUT rule of its own, so its published ports are not translated "
                            "where ds01's rules see them: run dockerd with iptables on and \"userland-proxy\": false")
        case True:
            raise Ds01Error("the engine's userland proxy is on: a port published on 127.0.0.1 would be docker-proxy's, "
                            "a root process, open to every local user. Set \"userland-proxy\": false in "
                            "/etc/docker/daemon.json and restart docker")


def _jump_in_place(live: Table, base: str, chain: str) -> bool:
    rules = live.rules(base) or ()
    jump = f"-A {base} -j {chain}"
    return rules[:1] == (jump,) and rules.count(jump) == 1


def in_place(desired: Ruleset, live: Table, raw: Table) -> bool:
    """Whether the live filter and raw tables already hold exactly the desired chains, each jumped to first, once."""
    return (all(live.rules(name) == rules for name, rules in desired.filter_chains().items())
            and all(_jump_in_place(live, base, chain) for base, chain in JUMPS)
            and raw.rules(LOOPBACK_CHAIN) == desired.loopback
            and all(_jump_in_place(raw, base, chain) for base, chain in RAW_JUMPS))


def _table_text(name: str, chains: dict[str, tuple[str, ...]], jumps: Sequence[tuple[str, str]],
                live: Table) -> list[str]:
    lines = [f"*{name}", *(f":{chain} - [0:0]" for chain in chains), *(rule for rules in chains.values()
                                                                       for rule in rules)]
    for base, chain in jumps:
        if not _jump_in_place(live, base, chain):
            lines += [f"-D {base} -j {chain}"] * (live.rules(base) or ()).count(f"-A {base} -j {chain}")
            lines.append(f"-I {base} 1 -j {chain}")
    return [*lines, "COMMIT"]


def restore_text(desired: Ruleset, live: Table, raw: Table) -> str:
    """iptables-restore --noflush input that replaces the chains whole and puts each jump first, once: each table
    in one transaction, with no moment of a chain half written or a jump missing."""
    lines = _table_text("filter", desired.filter_chains(), JUMPS, live)
    lines += _table_text("raw", {LOOPBACK_CHAIN: desired.loopback}, RAW_JUMPS, raw)
    return "\n".join([*lines, ""])


def public_bindings(inspected: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The containers (inspected) that publish beyond loopback, where these rules guard nothing, by owner
    (ds01.user): owner -> ['NAME: what', ...]."""
    found: dict[str, list[str]] = {}
    for container in inspected:
        host = container.get("HostConfig") or {}
        shown = sorted({f"{port} on {binding.get('HostIp') or 'every address'}"
                        for port, bindings in (host.get("PortBindings") or {}).items() for binding in bindings or []
                        if binding.get("HostIp") not in LOOPBACK_ADDRESSES})
        shown += ["every exposed port on every address (-P)"] if host.get("PublishAllPorts") else []
        owner = str(((container.get("Config") or {}).get("Labels") or {}).get(labels.USER) or "?")
        if shown:
            found.setdefault(owner, []).append(f"{str(container.get('Name') or '').lstrip('/')}: {', '.join(shown)}")
    return found


def userland_proxy(nat: Table) -> bool | None:
    """Whether the engine runs docker-proxy for published ports, from its nat OUTPUT rule: with the userland proxy
    on, the engine leaves loopback destinations out of its translation. None: no engine rule found."""
    jumps = [rule for rule in nat.rules("OUTPUT") or () if rule.endswith("-j DOCKER")]
    if not jumps:
        return None
    return any("! -d 127.0.0.0/8" in rule for rule in jumps)
