"""ds01.proxy.networks: each user's containers on the user's own network, and published ports on 127.0.0.1 only
(pure: bodies in, bodies out, through the whole create policy)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from ds01 import procfs
from ds01.proxy import networks
from tests.unit.test_policy import ADMIN, ALICE, host, host_config, plan, refused


@pytest.mark.parametrize("mode", [None, "", "default", "bridge", "Bridge"])
def test_the_default_network_becomes_the_callers_own(mode: str | None) -> None:
    body = host() if mode is None else host(NetworkMode=mode)
    result = plan(body)
    assert host_config(result)["NetworkMode"] == "ds01-alice" and result.joins_user_network


def test_an_endpoint_on_the_default_network_is_moved_to_the_callers_own() -> None:
    body = {**host(NetworkMode="my-net"), "NetworkingConfig": {"EndpointsConfig": {
        "bridge": {"Aliases": ["web"]}, "my-net": {}}}}
    result = plan(body)
    assert result.body["NetworkingConfig"]["EndpointsConfig"] == {"ds01-alice": {"Aliases": ["web"]}, "my-net": {}}
    assert result.joins_user_network and host_config(result)["NetworkMode"] == "my-net"


def test_no_network_and_the_callers_own_networks_stay_as_asked() -> None:
    assert host_config(plan(host(NetworkMode="none")))["NetworkMode"] == "none"
    assert not plan(host(NetworkMode="none")).joins_user_network
    assert host_config(plan(host(NetworkMode="my-net")))["NetworkMode"] == "my-net"


@pytest.mark.parametrize("network", ["bobs-net", "shared-net", "never-made", "ds01-bob"])
def test_any_other_network_is_refused_naming_the_callers_own(network: str) -> None:
    denial = refused(host(NetworkMode=network), "not_owner")
    assert "ds01-alice" in denial.message
    endpoint = {**host(NetworkMode="none"), "NetworkingConfig": {"EndpointsConfig": {network: {}}}}
    assert "ds01-alice" in refused(endpoint, "not_owner").message


def test_an_admin_may_join_any_network() -> None:
    assert host_config(plan(host(NetworkMode="bobs-net"), caller=ADMIN))["NetworkMode"] == "bobs-net"


@pytest.mark.parametrize("address", ["", "0.0.0.0", "::"])  # noqa: S104 - the addresses confined
def test_a_port_on_every_address_is_published_on_loopback_and_the_reply_says_so(address: str) -> None:
    result = plan(host(PortBindings={"8888/tcp": [{"HostIp": address, "HostPort": "8888"}]}))
    assert host_config(result)["PortBindings"] == {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8888"}]}
    assert any("127.0.0.1 only" in note for note in result.notes)


@pytest.mark.parametrize(("bindings", "words"), [
    ({"80/tcp": [{"HostIp": "10.0.0.1", "HostPort": "8080"}]}, "on 10.0.0.1 is not allowed"),
    ({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "80"}]}, "below 1024"),
])
def test_other_addresses_and_low_ports_are_refused(bindings: dict[str, Any], words: str) -> None:
    assert words in refused(host(PortBindings=bindings), "host_port").message


def test_publishing_every_exposed_port_is_refused_for_users_only() -> None:
    assert "-P" in refused(host(PublishAllPorts=True), "host_port").message
    plan(host(PublishAllPorts=True), caller=ADMIN)


def test_ds01_network_names_are_the_proxys() -> None:
    with pytest.raises(networks.Denied, match="ds01-alice, made for you"):
        networks.check_network_name(ALICE, "ds01-bob")
    for spelled in ("DS01-bob", "Ds01-carol"):  # the engine's names are case-sensitive, users' eyes are not
        with pytest.raises(networks.Denied):
            networks.check_network_name(ALICE, spelled)
    networks.check_network_name(ALICE, "alice-net")
    networks.check_network_name(ADMIN, "ds01-lab")


def test_published_ports_are_counted_per_binding() -> None:
    assert networks.published_ports({"PortBindings": {"80/tcp": [{}, {}], "81/tcp": None}}) == 2
    assert networks.published_ports({}) == 0


def test_an_admins_subnet_must_not_overlap_what_the_host_routes_to() -> None:
    routes = [ipaddress.IPv4Network("10.231.0.4/30"), ipaddress.IPv4Network("192.168.0.0/16")]
    with pytest.raises(networks.Denied, match=r"overlaps 192\.168\.0\.0/16"):
        networks.check_subnets([{"Subnet": "192.168.7.0/24"}], routes)
    with pytest.raises(networks.Denied, match="is not a subnet"):
        networks.check_subnets([{"Subnet": "nonsense"}], routes)
    networks.check_subnets([{"Subnet": "10.77.0.0/24"}, {"Gateway": "10.77.0.1"}], routes)
    networks.check_subnets(None, routes)


def test_the_hosts_routes_are_read_from_proc(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert procfs.ipv4_routes(tmp_path) == [ipaddress.IPv4Network("10.0.2.0/24")]
