"""The lists a user asks for, of their own things alone: containers, volumes and networks (with the built-in
networks), and the events and prunes of theirs. Lists the engine can filter by label are filtered so; containers
are also checked by cgroup parent (`ContainerOwners`), and networks by the proxy's own answer."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ds01 import labels
from ds01.errors import Denied
from ds01.proxy.interfaces import EngineCalls
from ds01.proxy.outcomes import Deny, Forward, Outcome, Reply, Request
from ds01.proxy.ownership import ContainerOwners
from ds01.proxy.routes import RouteKind
from ds01.proxy.runas import Caller
from ds01.reasons import Reason

BUILT_IN_NETWORKS = frozenset({"bridge", "host", "none"})


def with_owner_filter(query: str, user: str, key: str = "filters") -> str:
    """Add label=ds01.user=USER to a Docker filters query parameter, in either of its JSON shapes."""
    params = parse_qsl(query, keep_blank_values=True)
    raw = next((value for name, value in params if name == key), "") or "{}"
    try:
        filters = json.loads(raw)
    except ValueError:
        raise Denied(Reason.BAD_REQUEST, f"the {key} parameter is not valid JSON") from None
    if not isinstance(filters, dict):
        raise Denied(Reason.BAD_REQUEST, f"the {key} parameter must be a JSON object")
    found_labels = filters.get("label", {})
    if isinstance(found_labels, str):
        found_labels = [found_labels]
    if not isinstance(found_labels, (list, dict)):
        raise Denied(Reason.BAD_REQUEST, f"the label filter in {key} must be a list or an object of labels")
    found_labels = dict.fromkeys(found_labels, True) if isinstance(found_labels, list) else dict(found_labels)
    found_labels[f"{labels.USER}={user}"] = True
    # The engine takes one shape for the whole object: lists (docker-py) or maps of true (the docker CLI).
    as_lists = any(isinstance(value, list) for value in filters.values())
    filters["label"] = list(found_labels) if as_lists else found_labels
    rest = [(name, value) for name, value in params if name != key]
    return urlencode([*rest, (key, json.dumps(filters))])


def built_in(network: dict[str, Any]) -> bool:
    """bridge, host and none: the engine's own networks, which no user owns."""
    return str(network.get("Name") or "") in BUILT_IN_NETWORKS and not (network.get("Labels") or {}).get(labels.USER)


class Listings:
    def __init__(self, upstream: EngineCalls, owners: ContainerOwners) -> None:
        self.upstream = upstream
        self._owners = owners

    def answer(self, request: Request) -> Outcome:
        """A non-admin's list, prune or event stream, of their own."""
        match request.route.kind:
            case RouteKind.LIST_CONTAINERS:
                return self._containers(request)
            case RouteKind.LIST_NETWORKS:
                return self._networks(request)
            case _:
                return Forward(f"{request.path}?{with_owner_filter(request.query, request.session.caller.user)}")

    def _containers(self, request: Request) -> Outcome:
        """The caller's containers: the engine's list by their label, less those whose cgroup parent says the
        label came from an image (another user's build steps)."""
        user = request.session.caller.user
        query = dict(parse_qsl(with_owner_filter(request.query, user), keep_blank_values=True))
        status, listed = self.upstream.call("GET", "/containers/json", query=query)
        if status != 200 or not isinstance(listed, list):
            return Deny(Reason.ENGINE_ERROR, f"the engine answered {status} to the container list: {listed}", 502)
        return Reply(200, self._owners.mine(listed, user))

    def _networks(self, request: Request) -> Outcome:
        """The caller's own networks and the built-in ones: a list that names other users' networks would tell
        what they work on."""
        query = dict(parse_qsl(request.query))
        status, listed = self.upstream.call("GET", "/networks", query=query or None)
        if status != 200 or not isinstance(listed, list):
            return Deny(Reason.ENGINE_ERROR, f"the engine answered {status} to the network list: {listed}", 502)
        user = request.session.caller.user
        return Reply(200, [network for network in listed if isinstance(network, dict) and (
            built_in(network) or (network.get("Labels") or {}).get(labels.USER) == user)])

    def shown_network(self, info: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A built-in network as inspected, with only the caller's own containers in it."""
        containers = info.get("Containers") or {}
        mine = {container_id: endpoint for container_id, endpoint in containers.items()
                if caller.is_admin or self._owners.of_id(container_id) == caller.user}
        return {**info, "Containers": mine}
