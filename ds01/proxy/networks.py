"""Where a user's containers are on the network, decided on the create body (pure, like the policy that calls it).

Each user has a bridge network of their own, `ds01-USER`, made by the proxy on first use: the default and the
`bridge` network of a create are rewritten to it, so that one user's containers never share a network with
another's. A container may also join networks the user made, or none. Ports are published on 127.0.0.1 only,
where the proxy's host rules let the owner alone connect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from ds01.errors import Denied
from ds01.proxy.bodies import field, set_field
from ds01.proxy.runas import Caller
from ds01.reasons import Reason

USER_NETWORK_PREFIX = "ds01-"  # reserved: only the proxy names networks so
DEFAULT_NAMES = frozenset({"", "default", "bridge"})  # what a client means by "the default network"
NO_NETWORK = "none"
LOOPBACK = "127.0.0.1"
OPEN_ADDRESSES = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - addresses recognised in order to confine them
MIN_HOST_PORT = 1024  # below it only root may listen on the host


def user_network(caller: Caller) -> str:
    return f"{USER_NETWORK_PREFIX}{caller.user}"


def networks_of(body: dict[str, Any]) -> tuple[str, ...]:
    """The named networks a create joins: its NetworkMode and each endpoint (not "none", not container:ID)."""
    host = field(body, "HostConfig") or {}
    mode = field(host, "NetworkMode") if isinstance(host, dict) else None
    endpoints = field(field(body, "NetworkingConfig") or {}, "EndpointsConfig") or {}
    joined = [mode] if isinstance(mode, str) and ":" not in mode else []
    joined += list(endpoints) if isinstance(endpoints, dict) else []
    return tuple(name for name in dict.fromkeys(joined) if name != NO_NETWORK)


def join_own_network(caller: Caller, body: dict[str, Any], host: dict[str, Any]) -> bool:
    """Rewrite the default network (no NetworkMode, `default`, `bridge`), as mode or endpoint, to the caller's own.
    Returns whether the container joins the caller's own network, which must then exist."""
    own = user_network(caller)
    mode = field(host, "NetworkMode")
    if mode is None or (isinstance(mode, str) and mode.lower() in DEFAULT_NAMES):
        set_field(host, "NetworkMode", own)
    networking = field(body, "NetworkingConfig")
    endpoints = field(networking, "EndpointsConfig") if isinstance(networking, dict) else None
    if isinstance(endpoints, dict):
        renamed = {own if str(name).lower() in DEFAULT_NAMES else name: settings
                   for name, settings in endpoints.items()}
        set_field(networking, "EndpointsConfig", renamed)
    return own in networks_of(body)


def check_networks(caller: Caller, body: dict[str, Any], owners: Mapping[str, str | None]) -> None:
    """Each named network joined is the caller's own network or one the caller made. `owners`: each name's owner
    now ("" none, None missing)."""
    own = user_network(caller)
    for name in networks_of(body):
        if name == own or caller.is_admin:
            continue
        if owners.get(name) != caller.user:  # missing or another's, told alike: nothing of others' networks shows
            raise Denied(Reason.NOT_OWNER, f"there is no network {name} of yours; your containers join your own "
                                           f"network {own} by default, or networks you create (docker network "
                                           "create NAME).")


def confine_ports(host: dict[str, Any], caller: Caller, reserved: frozenset[int]) -> tuple[str, ...]:
    """Published ports go on 127.0.0.1 (0.0.0.0, :: and no address are rewritten to it; others are refused), on a
    host port of 1024 or more that is not `reserved` (networks.reserved_ports). Returns a note for each rewritten
    binding."""
    notes: list[str] = []
    if field(host, "PublishAllPorts") and not caller.is_admin:
        raise Denied(Reason.HOST_PORT, "publishing every exposed port (-P) would open them on all the host's "
                                       "addresses; publish each on 127.0.0.1 instead (-p 127.0.0.1::PORT), or use "
                                       "container create --port PORT.")
    for port, bindings in (field(host, "PortBindings") or {}).items():
        for binding in bindings or []:
            _check_host_port(port, str(field(binding, "HostPort") or ""), caller, reserved)
            address = str(field(binding, "HostIp") or "")
            if address in OPEN_ADDRESSES:
                set_field(binding, "HostIp", LOOPBACK)
                notes.append(f"ds01: {port} is published on {LOOPBACK} only, not on {address or 'every address'}: "
                             "reach it over ssh -L from your laptop (container ports NAME shows how)")
            elif address != LOOPBACK and not caller.is_admin:
                raise Denied(Reason.HOST_PORT, f"publishing {port} on {address} is not allowed: ports are published "
                                               f"on {LOOPBACK} only (-p {LOOPBACK}:HOSTPORT:{_number(port)}), "
                                               "where only you can reach them.")
    return tuple(notes)


def check_network_name(caller: Caller, name: str) -> None:
    """Names beginning ds01- (in any case) are the proxy's: a user who made ds01-bob would own the network bob's
    containers join."""
    if name.casefold().startswith(USER_NETWORK_PREFIX) and not caller.is_admin:
        raise Denied(Reason.NAME_TAKEN, f"network names beginning {USER_NETWORK_PREFIX} are ds01's own (yours is "
                                        f"{user_network(caller)}, made for you); pick another name.")


def check_subnets(ipam_configs: Any, routes: Sequence[ipaddress.IPv4Network]) -> None:
    """An address range asked for (admins only) must not overlap a network the host routes to: containers on it
    would shadow those hosts, for the host and for each other."""
    for config in ipam_configs if isinstance(ipam_configs, list) else []:
        subnet = field(config, "Subnet") if isinstance(config, dict) else None
        if not subnet:
            continue
        try:
            wanted = ipaddress.ip_network(str(subnet), strict=False)
        except ValueError:
            raise Denied(Reason.BAD_REQUEST, f"{subnet!r} is not a subnet, such as 10.77.0.0/24") from None
        clash = next((route for route in routes if route.version == wanted.version and route.overlaps(wanted)), None)
        if clash is not None:
            raise Denied(Reason.NETWORK_IPAM, f"the subnet {wanted} overlaps {clash}, which the host routes to; "
                                              "pick a range the host does not use (ip route shows them).")


def published_ports(host: Mapping[str, Any]) -> int:
    """How many host ports a HostConfig publishes."""
    return sum(len(bindings or []) for bindings in (host.get("PortBindings") or {}).values())


def _check_host_port(port: str, text: str, caller: Caller, reserved: frozenset[int]) -> None:
    numbers = [part for part in text.split("-") if part]
    taken = sorted(reserved.intersection(int(n) for n in numbers if n.isdigit()))
    if taken and not caller.is_admin:
        raise Denied(Reason.HOST_PORT, (
            f"host port {taken[0]} is reserved on this host for a service of its own (networks.reserved_ports); "
            f"publish {_number(port)} on another (-p 127.0.0.1:8080:{_number(port)}), or leave the host port out "
            "for a free one."))
    free = numbers in ([], ["0"])  # the engine picks a free one
    if caller.is_admin or free or all(n.isdigit() and int(n) >= MIN_HOST_PORT for n in numbers):
        return
    raise Denied(Reason.HOST_PORT, (
        f"publishing {port} on host port {text} is not allowed: ports below {MIN_HOST_PORT} are root's on the host. "
        f"Use a port of {MIN_HOST_PORT} or more (-p 8080:{_number(port)}), or leave the host port out for a free one."))


def _number(port: str) -> str:
    """80 from 80/tcp."""
    return port.split("/", maxsplit=1)[0]
