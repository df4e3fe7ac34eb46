"""`ds01 doctor`'s checks of the engine's network model (docs-admin/networks.md) and builder: the default
bridge's icc, the proxy's reach rules, the userland proxy off, ports published on 127.0.0.1 only, BuildKit's
entitlements off. Read only, as every check."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ds01 import iptables, labels
from ds01.config import Config
from ds01.errors import Ds01Error, EngineError
from ds01.ops.checks import FAIL, PASS, TIMEOUT_SECONDS, WARN, Check, Options, regular_users
from ds01.proxy import reach
from ds01.proxy.janitor import ReachKeeper
from ds01.proxy.upstream import Upstream

ICC_OPTION = "com.docker.network.bridge.enable_icc"
DAEMON_JSON = "/etc/docker/daemon.json"
NETWORKS_DOC = "docs-admin/networks.md"


def icc_check(bridge: Mapping[str, Any] | None) -> Check:
    """The engine's default bridge network (None: it has none)."""
    if bridge is None:
        return Check("default bridge", PASS, "the engine has no default bridge network")
    icc = (bridge.get("Options") or {}).get(ICC_OPTION)
    if icc == "false":
        return Check("default bridge", PASS, "containers on the engine's default bridge cannot reach each other")
    return Check("default bridge", FAIL, f"containers on the engine's default bridge reach each other ({ICC_OPTION} "
                 f"is {icc or 'unset'})", f'set "icc": false in {DAEMON_JSON}, then systemctl restart docker')


def check_default_bridge(options: Options) -> Check:
    try:
        status, found = Upstream(options.engine, timeout=TIMEOUT_SECONDS).call("GET", "/networks/bridge")
    except EngineError as exc:
        return Check("default bridge", WARN, f"not checked: {exc}", "start the engine (see above)")
    return icc_check(found if status == 200 and isinstance(found, dict) else None)


def reach_check(table: iptables.Table) -> Check:
    """The proxy's chains in the filter table, each jumped to first from its base chain."""
    problems = []
    for base, chain in reach.JUMPS:
        rules = table.rules(chain)
        if rules is None:
            problems.append(f"there is no {chain} chain")
        elif (table.rules(base) or ())[:1] != (f"-A {base} -j {chain}",):
            problems.append(f"{base} does not begin with a jump to {chain}")
    if problems:
        return Check("reach rules", FAIL, "; ".join(problems) + ": who reaches containers is not limited to their "
                     "owners", "restart the proxy, which puts them in place before it serves: systemctl restart "
                     "ds01-proxy (journalctl -u ds01-proxy says why when it cannot)")
    counted = ", ".join(f"{chain} ({len(table.rules(chain) or ())} rules)" for _, chain in reach.JUMPS)
    return Check("reach rules", PASS, f"{counted} come first in {', '.join(base for base, _ in reach.JUMPS)}")


def userland_check(nat: iptables.Table) -> Check:
    """Whether the engine translates published ports itself: with docker-proxy, a root process, in between, the
    owner-only rules would not hold, and the proxy does not start."""
    try:
        reach.check_translation(nat)
    except Ds01Error as exc:
        return Check("userland proxy", FAIL, str(exc), f'set "userland-proxy": false (and "iptables": true) in '
                     f"{DAEMON_JSON}, then systemctl restart docker ds01-proxy ({NETWORKS_DOC})")
    return Check("userland proxy", PASS, "off: published ports lead to the container's address, guarded by its "
                 "network's rule from the start")


BUILDER_ENTITLEMENTS = ("network-host", "device")  # BuildKit's, daemon-wide: on by default (device from v29)


def builder_check(text: str | None) -> Check:
    """The daemon's BuildKit entitlements off: the proxy refuses BuildKit, and nothing past it should find them."""
    fix = f'set "builder": {{"entitlements": {{"network-host": false, "device": false}}}} in {DAEMON_JSON}'
    try:
        entitlements = ((json.loads(text) if text else {}).get("builder") or {}).get("entitlements") or {}
    except (ValueError, AttributeError) as exc:
        return Check("builder entitlements", FAIL, f"{DAEMON_JSON} cannot be read as JSON ({exc})", fix)
    on = [name for name in BUILDER_ENTITLEMENTS if entitlements.get(name) is not False]
    if on:
        return Check("builder entitlements", WARN, f"BuildKit's {', '.join(on)} entitlement is on for every build "
                     "that reaches the engine past ds01", f"{fix}, then systemctl restart docker")
    return Check("builder entitlements", PASS, "BuildKit's network-host and device entitlements are off")


def check_builder() -> Check:
    try:
        text: str | None = Path(DAEMON_JSON).read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    return builder_check(text)


def check_rules(options: Options, name: str, read: Callable[[iptables.Table], Check], table: str) -> Check:
    """A check of the engine's rules, read only in its network namespace (elsewhere they are another's)."""
    keeper = ReachKeeper(Upstream(options.engine, timeout=TIMEOUT_SECONDS), lambda: (), None)
    try:
        elsewhere = keeper.outside_engine_namespace()
    except Ds01Error as exc:
        elsewhere = str(exc)
    if elsewhere is not None:
        return Check(name, WARN, f"not checked: not the engine's network namespace ({elsewhere})",
                     "run it as root where dockerd runs: nsenter --net=/proc/$(pidof dockerd)/ns/net ds01 doctor")
    return read(iptables.save(table))


def check_published_addresses(options: Options, config: Config | None) -> Check:
    upstream = Upstream(options.engine, timeout=TIMEOUT_SECONDS)
    try:
        status, listed = upstream.call("GET", "/containers/json", query={
            "all": "1", "filters": json.dumps({"label": [labels.USER]})})
        if status != 200 or not isinstance(listed, list):
            raise EngineError(f"the engine answered {status} to the container list: {str(listed)[:200]}")
        inspected = [upstream.inspect("container", str(c.get("Id"))) for c in listed]
    except EngineError as exc:
        return Check("published ports", WARN, f"not checked: {exc}", "start the engine (see above)")
    found = reach.public_bindings(c for c in inspected if c is not None)
    if not found:
        return Check("published ports", PASS, f"{len(inspected)} ds01 containers publish on 127.0.0.1 or nothing")
    detail = "; ".join(f"{owner}'s {item}" for owner, items in sorted(found.items()) for item in items)
    fix = ("made past the proxy, which publishes on 127.0.0.1 only: remove each on the engine (docker rm -f NAME) "
           "and let its owner create it again through the proxy")
    regular = regular_users(found, config)
    return Check("published ports", FAIL if regular else WARN, f"open beyond this host: {detail}",
                 fix if regular else f"only admins' containers: {fix}, unless the admin meant it")
