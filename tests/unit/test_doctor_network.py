"""`ds01 doctor`'s checks of the network model, on the engine's and iptables' answers as data."""

from __future__ import annotations

from typing import Any

from ds01 import iptables
from ds01.ops import doctornet as doctor
from ds01.ops.checks import FAIL, PASS
from ds01.proxy.reach import FORWARD_CHAIN, HOST_CHAIN, REACH_CHAIN


def bridge(icc: str | None) -> dict[str, Any]:
    return {"Name": "bridge", "Options": {} if icc is None else {"com.docker.network.bridge.enable_icc": icc}}


def test_inter_container_traffic_on_the_default_bridge_must_be_off() -> None:
    assert doctor.icc_check(bridge("false")).status == PASS
    for icc in ("true", None):
        check = doctor.icc_check(bridge(icc))
        assert check.status == FAIL and "reach each other" in check.detail
        assert check.fix is not None and '"icc": false in /etc/docker/daemon.json' in check.fix
    assert doctor.icc_check(None).status == PASS  # an engine without a default bridge


def filter_table(output: tuple[str, ...], inputs: tuple[str, ...], chains: tuple[str, ...]) -> iptables.Table:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", *(f":{c} - [0:0]" for c in chains),
             *inputs, *output, *(f"-A {c} -j RETURN" for c in chains), "COMMIT"]
    return iptables.parse_save("\n".join(lines))


JUMPS_OUT = (f"-A OUTPUT -j {REACH_CHAIN}",)
JUMPS_IN = (f"-A INPUT -j {HOST_CHAIN}", f"-A FORWARD -j {FORWARD_CHAIN}")
CHAINS = (REACH_CHAIN, HOST_CHAIN, FORWARD_CHAIN)


def test_the_reach_chains_must_exist_and_come_first() -> None:
    check = doctor.reach_check(filter_table(JUMPS_OUT, JUMPS_IN, CHAINS))
    assert check.status == PASS and f"{REACH_CHAIN} (1 rules)" in check.detail, check
    missing = doctor.reach_check(filter_table((), (), ()))
    assert missing.status == FAIL
    assert f"there is no {REACH_CHAIN} chain; there is no {HOST_CHAIN} chain" in missing.detail
    assert missing.fix is not None and "systemctl restart ds01-proxy" in missing.fix
    late = doctor.reach_check(filter_table(("-A OUTPUT -j OTHER", *JUMPS_OUT), (), CHAINS))
    assert late.status == FAIL
    assert f"OUTPUT does not begin with a jump to {REACH_CHAIN}; INPUT does not begin" in late.detail


def nat(rule: str) -> iptables.Table:
    return iptables.parse_save(f"*nat\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n{rule}\nCOMMIT\n")


def test_the_userland_proxy_fails_with_the_daemon_setting_that_ends_it() -> None:
    on = doctor.userland_check(nat("-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"))
    assert on.status == FAIL and "docker-proxy" in on.detail
    assert on.fix is not None and '"userland-proxy": false' in on.fix
    assert doctor.userland_check(nat("-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER")).status == PASS
    assert doctor.userland_check(nat("")).status == FAIL
