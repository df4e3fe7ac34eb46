"""What the proxy does with each request: deny it, forward it (perhaps rewritten), or answer it itself."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, assert_never
from urllib.parse import parse_qsl, quote

from ds01 import eventlog, labels, procfs
from ds01.errors import Denied, Ds01Error
from ds01.eventlog.reader import EventLog
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import Slot
from ds01.jobs.records import JobStore
from ds01.proxy import allowlist, bodies, capacity, listings, networks, policy, runas
from ds01.proxy.builds import BUILDKIT_MESSAGE, BuildActions, BuildSettings
from ds01.proxy.cgroups import CgroupParents
from ds01.proxy.containers import ContainerActions, host_mounts
from ds01.proxy.creates import ContainerCreates, ensure_user_network, make_volume
from ds01.proxy.images import ImageActions
from ds01.proxy.imagestore import ImageStore
from ds01.proxy.interfaces import Callers, EngineCalls, Pinning
from ds01.proxy.jobroutes import JobRoutes
from ds01.proxy.jobs import FailedSlots, JobRunner
from ds01.proxy.outcomes import Deny, Forward, Outcome, Reply, Request
from ds01.proxy.ownership import ContainerOwners
from ds01.proxy.queue import Queue
from ds01.proxy.routes import ObjectKind, RouteKind
from ds01.proxy.userlocks import UserLocks
from ds01.reasons import Reason

MIN_API_VERSION = (1, 40)
PULL_PARAMETERS = frozenset({"fromImage", "tag", "platform"})
# Parameters the engine reads every value of, each of which the proxy checks: build -t, commit -c, save of many.
REPEATABLE = {RouteKind.BUILD: {"t"}, RouteKind.COMMIT: {"changes"}, RouteKind.SAVE_IMAGES: {"names"}}
_OBJECT_ID = re.compile(r"[0-9a-f]{64}")


def _now() -> datetime:
    return datetime.now(UTC)


class Gate:
    """Every outside thing it uses comes in here: the engine (`upstream`), the callers (`sessions`), the allocator,
    the slots, the pins and the clock; a unit test gives its own."""

    def __init__(self, sessions: Callers, upstream: EngineCalls, allocator: Allocator, *,
                 slots: Callable[[], list[Slot]], cgroups: CgroupParents, engine_sockets: frozenset[str],
                 host_cpus: float, pins: Pinning, spool_dir: Path, image_store: ImageStore, platform: str,
                 api_versions: tuple[tuple[int, int], tuple[int, int]] = (MIN_API_VERSION, MIN_API_VERSION),
                 log_driver: str = "json-file", instance: str = "", clock: Callable[[], datetime] = _now,
                 all_slots: Callable[[], tuple[list[Slot], frozenset[str]]] | None = None,
                 failed_slots: FailedSlots | None = None) -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.allocator = allocator
        self.api_versions = api_versions  # (oldest, newest) served: 1.40 up to the engine's own
        self._host_cpus = host_cpus
        self.locks = UserLocks()
        self._images = ImageActions(upstream, image_store)
        self._cgroups = cgroups
        self._owners = ContainerOwners(upstream, cgroups.name)
        self._listings = listings.Listings(upstream, self._owners)
        self._platform = platform
        self._builds = BuildActions(self._images, spool_dir, self._build_settings,
                                    lambda name: self._owner_of("network", name)[1],
                                    lambda: self.sessions.current_config().images)
        # log_driver: the engine's default, the only one users' containers may log with
        # The log its fair share reads is the one this process writes.
        self.queue = Queue(allocator.path.parent, allocator, slots, sessions, EventLog(eventlog.destination().log_dir))
        # Every slot and the GPUs out of use, for `container gpus`; without NVML's word, the healthy ones alone.
        self._capacity = capacity.Ds01Routes(self.queue, allocator, all_slots or (lambda: (slots(), frozenset())))
        self._creates = ContainerCreates(
            sessions=sessions, upstream=upstream, allocator=allocator, slots=slots, cgroups=cgroups,
            engine_sockets=engine_sockets, host_cpus=host_cpus, pins=pins, locks=self.locks, log_driver=log_driver,
            owner_of=self._owner_of, find_image=self._images.find, instance=instance, clock=clock, queue=self.queue,
            owners=self._owners)
        # Without NVML's word on health (a unit test), a job's GPUs stay as they are.
        self.jobs = JobRunner(JobStore(allocator.path.parent), self._creates, upstream, sessions, queue=self.queue,
                              allocator=allocator, failed_slots=failed_slots or (lambda held: {}))
        self._jobroutes = JobRoutes(self.jobs, self.queue)
        self._containers = ContainerActions(sessions, upstream, allocator, self._owner_of, self.locks,
                                            queue=self.queue, pins=pins, engine_sockets=engine_sockets,
                                            spool_dir=spool_dir)

    def decide(self, request: Request) -> Outcome:
        refused = self._outside_the_surface(request)
        return refused if refused is not None else self._by_kind(request)

    def _by_kind(self, request: Request) -> Outcome:
        caller, route, method, path, target = (request.session.caller, request.route, request.method, request.path,
                                               request.target)
        match route.kind:
            case RouteKind.OPEN:
                return Forward(target)
            case RouteKind.ADMIN_ONLY:
                return Forward(target) if caller.is_admin else Deny(Reason.ADMIN_ONLY,
                                                                    f"{method} {path} is for admins only.")
            case RouteKind.GATED:
                return self._gated(request)
            case (RouteKind.LIST_CONTAINERS | RouteKind.PRUNE_CONTAINERS | RouteKind.EVENTS | RouteKind.LIST_VOLUMES
                  | RouteKind.PRUNE_VOLUMES | RouteKind.PRUNE_NETWORKS | RouteKind.LIST_NETWORKS):
                return Forward(target) if caller.is_admin else self._listings.answer(request)
            case (RouteKind.PULL | RouteKind.LIST_IMAGES | RouteKind.IMAGE | RouteKind.SAVE_IMAGES | RouteKind.COMMIT
                  | RouteKind.BUILD | RouteKind.BUILDKIT):
                return self._image_route(request)
            case RouteKind.CREATE_CONTAINER:
                return self._creates.create(request)
            case RouteKind.CREATE_VOLUME | RouteKind.CREATE_NETWORK:
                return self._create_owned(request, "volume" if route.kind is RouteKind.CREATE_VOLUME else "network")
            case RouteKind.CONTAINER | RouteKind.EXEC | RouteKind.VOLUME | RouteKind.NETWORK:
                return self._object(request, route.kind)
            case RouteKind.CAPACITY | RouteKind.QUEUE:
                return self._capacity.answer(request)
            case RouteKind.JOBS:
                return self._jobroutes.answer(request)
            case RouteKind.UNKNOWN:
                return Deny(Reason.UNKNOWN_ENDPOINT, f"{method} {path} is not allowed through the ds01 proxy. Only "
                                                     "the endpoints docker, docker-py, compose and dev containers need "
                                                     "are open.")
            case _:
                assert_never(route.kind)

    def _gated(self, request: Request) -> Outcome:
        route, method, path = request.route, request.method, request.path
        if route.group in self.sessions.current_config().security.allowed_endpoints:
            # A load names its images itself: they must be the caller's, as a build's tags are.
            return self._builds.load(request) if route.group == "image_load" and not request.session.caller.is_admin \
                else Forward(request.target)
        if route.group == "plugins" and method == "GET" and path.endswith("/json") and path.count("/plugins/") == 1:
            # `docker inspect NAME` asks for a plugin last: with none to be had, its answer is "no such object".
            return Deny(Reason.NOT_FOUND, f"No such plugin: {path.split('/plugins/', 1)[1].removesuffix('/json')}",
                        status=404)
        return Deny(Reason.ENDPOINT_DISABLED, f"{route.group} is turned off on this host ({method} {path}); an "
                                              f"admin can allow it with security.allow_endpoints: [{route.group}].")

    def _image_route(self, request: Request) -> Outcome:
        if request.route.kind is RouteKind.BUILDKIT:
            return Deny(Reason.BUILDKIT, BUILDKIT_MESSAGE)
        if request.session.caller.is_admin and request.route.kind is not RouteKind.PULL:
            return Forward(request.target)  # admins' images are shared: nothing to record or hide
        match request.route.kind:
            case RouteKind.PULL:
                return self._pull(request)
            case RouteKind.BUILD:
                return self._builds.build(request)
            case RouteKind.LIST_IMAGES:
                return self._images.listing(request)
            case RouteKind.IMAGE:
                return self._images.act(request)
            case RouteKind.SAVE_IMAGES:
                return self._images.save_many(request)
            case _:
                return self._images.commit(request, lambda container: self._owner_of("container", container)[1])

    def _build_settings(self, caller: runas.Caller) -> BuildSettings:
        """What a build of the caller's runs in: their cgroup parent and network, made if need be."""
        with self.locks.hold(caller.user):
            ensure_user_network(self.upstream, self._owner_of, caller)
        self._cgroups.ensure(caller.user, caller.limits.user_cpus, caller.limits.user_memory_bytes)
        return BuildSettings(self._cgroups.name(caller.user), networks.user_network(caller), self._platform)

    def _outside_the_surface(self, request: Request) -> Deny | None:
        """Requests the engine could read otherwise than the proxy: a parameter given twice (the engine takes the
        first), or an API version outside the one range served."""
        route = request.route
        names = [name for name, _ in parse_qsl(request.query, keep_blank_values=True)]
        twice = sorted({name for name in names if names.count(name) > 1} - REPEATABLE.get(route.kind, set()))
        if twice:
            return Deny(Reason.BAD_REQUEST, f"the query parameter(s) {', '.join(twice)} are given more than once; the "
                                            "engine would read another of them than the proxy checked. Give each once.",
                        status=400)
        if route.version is not None and not self.api_versions[0] <= route.version <= self.api_versions[1]:
            low, high = (f"{major}.{minor}" for major, minor in self.api_versions)
            return Deny(Reason.API_VERSION, (
                f"API version {route.version[0]}.{route.version[1]} is not served here: the ds01 proxy speaks "
                f"{low} to {high}. Older versions let a start carry a whole new HostConfig. Upgrade the client, or "
                f"set DOCKER_API_VERSION={high}."), status=400)
        return None

    def _pull(self, request: Request) -> Outcome:
        """A pull from a registry is open (from `images.allowed_registries`, outside other users' namespaces, within
        the caller's image storage); `docker import` (fromSrc) is for admins: it can point any tag, one that others
        run, at an image of the caller's making, and makes the engine fetch any URL."""
        caller = request.session.caller
        params = {name for name, _ in parse_qsl(request.query, keep_blank_values=True)}
        if caller.is_admin:
            return Forward(request.target)
        if params <= PULL_PARAMETERS:
            self._images.check_pull(caller, dict(parse_qsl(request.query)),
                                    self.sessions.current_config().images.allowed_registries)
            return Forward(request.target)
        if "fromSrc" in params:
            return Deny(Reason.ADMIN_ONLY, "docker import is for admins only: it can replace an image tag that others "
                                           "use. Pull images from a registry (docker pull), or ask an admin.")
        unknown = ", ".join(sorted(params - PULL_PARAMETERS))
        return Deny(Reason.BAD_REQUEST, f"image pull parameter(s) {unknown} are not allowed; a pull takes "
                                        f"{', '.join(sorted(PULL_PARAMETERS))}.")

    def error_answer(self, request: Request, status: int, data: bytes) -> bytes:
        """An engine error that names someone else's object (a name conflict gives the other container's id)
        says nothing of it: what the caller would read if it were not there, or a conflict without the id."""
        caller = request.session.caller
        if caller.is_admin or status < 400:
            return data
        foreign = [found for found in set(_OBJECT_ID.findall(data.decode("utf-8", errors="replace")))
                   if self._someone_elses(found, caller.user)]
        if not foreign:
            return data
        match request.route.kind, status:
            case RouteKind.CREATE_CONTAINER, 409:
                name = dict(parse_qsl(request.query)).get("name") or ""
                message = (f'Conflict. The container name "/{name}" is already in use by a container that is not '
                           "yours. Pick another name.")
            case _, 409:
                message = "Conflict with an object that is not yours."
            case _:
                message = f"No such object: {request.route.object_id or request.path}"
        return json.dumps({"message": message}).encode()

    def _someone_elses(self, object_id: str, user: str) -> bool:
        """Whether an id in an engine error is a container or network that exists and is not `user`'s. Other ids
        (a network endpoint's or sandbox's, in the engine's reason a start failed) name nothing anyone can inspect,
        and the reason they carry is the caller's to read."""
        for kind in ("container", "network"):
            found, owner = self._owner_of(kind, object_id)
            if found is not None:
                return owner != user
        return False

    def _owner_of(self, kind: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """The object and its owner. A volume's and a network's labels are the proxy's own (only a create through
        it makes one); a container's may be an image's, so its cgroup parent must agree (`ContainerOwners`)."""
        info = self.upstream.inspect(kind, name)
        if info is None:
            return None, None
        if kind == "container":
            return info, self._owners.of_inspect(info)
        return info, (info.get("Labels") or {}).get(labels.USER)

    def _object(self, request: Request, kind: ObjectKind) -> Outcome:
        """An existing object: only the caller's own, by a fresh inspect, and sent on for its full id so that a name
        cannot be pointed elsewhere in between."""
        caller, route, path, query = request.session.caller, request.route, request.path, request.query
        name = route.object_id or ""
        if kind is RouteKind.EXEC:
            exec_info = self.upstream.inspect("exec", name)
            container_id = (exec_info or {}).get("ContainerID")
            info, owner = self._owner_of("container", container_id) if container_id else (None, None)
        else:
            info, owner = self._owner_of(kind, name)
        if kind is RouteKind.NETWORK and info is not None and listings.built_in(info) and request.method == "GET" \
                and not route.action:
            return Reply(200, self._listings.shown_network(info, caller))
        if info is None or (owner != caller.user and not caller.is_admin):
            # The same answer whether it is missing or someone else's: existence is not leaked.
            return Deny(Reason.NOT_FOUND, f"No such {kind}: {name}", status=404)
        real = name if kind is RouteKind.EXEC else str(info.get("Id") or info.get("Name") or name)
        collection = "exec" if kind is RouteKind.EXEC else f"{kind}s"
        prefix = path[:path.index(f"/{collection}/")]
        rewritten = "/".join([prefix, collection, quote(real, safe=""), *([route.action] if route.action else [])])
        return self._act(request, kind, info, rewritten + (f"?{query}" if query else ""))

    def _act(self, request: Request, kind: ObjectKind, info: dict[str, Any], target: str) -> Outcome:
        """What is done with the caller's own object, inspected as `info`, sent on as `target`."""
        caller, query, read_body = request.session.caller, request.query, request.read_body
        match kind, request.route.action, request.method:
            case RouteKind.CONTAINER, "exec", "POST":
                return self._containers.exec_create(request, info, target)
            case RouteKind.CONTAINER, "rename", "POST":
                policy.check_object_name(caller, "container", dict(parse_qsl(query)).get("name") or "")
                return Forward(target)
            case RouteKind.CONTAINER, "archive", _:
                return self._containers.archive(request, info, target)
            case RouteKind.CONTAINER, "update", "POST":
                body = policy.check_update(policy.within_host(caller, self._host_cpus),
                                           bodies.parse_json_object(read_body(), "update body"),
                                           bool(host_mounts(info)), info.get("HostConfig") or {})
                return Forward(target, body=json.dumps(body).encode())
            case RouteKind.NETWORK, ("connect" | "disconnect") as action, _:
                body = allowlist.canonical(bodies.parse_json_object(read_body(), f"network {action} body"),
                                           f"Network{action.capitalize()}Request")
                ref = str(bodies.field(body, "Container") or "")
                _, container_owner = self._owner_of("container", ref)
                if container_owner != caller.user and not caller.is_admin:
                    return Deny(Reason.NOT_FOUND, f"No such container: {ref}", status=404)
                return Forward(target, body=json.dumps(body).encode())
            case RouteKind.CONTAINER, _, "DELETE":
                return Forward(target, after=lambda status, _body: self._containers.released_on_delete(status, info))
            case RouteKind.CONTAINER, ("start" | "restart"), "POST":
                return self._containers.start(request, info, target)
            case RouteKind.EXEC, "start", "POST":
                raw = read_body()
                body = allowlist.canonical(bodies.parse_json_object(raw, "exec start body"), "ExecStartConfig") \
                    if raw.strip() else {}
                return Forward(target, body=json.dumps(body).encode(), hijack=True)
            case RouteKind.CONTAINER, "attach", _:
                return Forward(target, hijack=True)
            case _:
                return Forward(target)

    def _create_owned(self, request: Request, kind: Literal["volume", "network"]) -> Outcome:
        """A volume or network create: read through its allow-list table and stamped with the caller's labels; a
        network within the caller's max_networks."""
        caller = request.session.caller
        table = "VolumeCreateOptions" if kind == "volume" else "NetworkCreateRequest"
        body = allowlist.canonical(bodies.parse_json_object(request.read_body(), f"{kind} create body"), table)
        ipam = body.get("IPAM") or {}
        chosen = ipam.get("Config") or ipam.get("Options") or ipam.get("Driver") not in (None, "", "default")
        if kind == "network" and chosen and caller.is_admin:
            networks.check_subnets(ipam.get("Config"), procfs.ipv4_routes())
        if kind == "network" and chosen and not caller.is_admin:  # the docker CLI sends an empty IPAM
            return Deny(Reason.NETWORK_IPAM, "choosing a network's addresses (--subnet, --ip-range, --gateway, IPAM "
                                             "options) is for admins: a subnet can shadow the host's own networks. "
                                             "Leave them out; the engine picks a free range.")
        wanted = str(body.get("Name") or "")
        if kind == "volume" and wanted and not policy.VOLUME_NAME.fullmatch(wanted):
            return Deny(Reason.BAD_REQUEST,
                        f"{wanted!r} is not a volume name: letters, digits and _ . - only, starting "
                        "with a letter or digit.", status=400)
        policy.check_object_name(caller, kind, wanted)
        if kind == "network":
            networks.check_network_name(caller, wanted)
            if body.get("EnableIPv6") and not caller.is_admin:
                return Deny(Reason.NETWORK_DRIVER, "IPv6 networks are for admins: the engine turns on the host's "
                                                   "IPv6 forwarding for them. Leave --ipv6 out.")
        found, owner = self._owner_of(kind, wanted) if wanted else (None, None)
        # Creating an existing volume returns it, and a second network of a name makes the name ambiguous to
        # everyone: someone else's must not be shown, nor taken.
        if found is not None and not caller.is_admin and (kind == "network" or owner != caller.user):
            if owner != caller.user:  # a plain conflict: nothing of the other object, nor how the names clash
                return Deny(Reason.NAME_TAKEN, f"the {kind} name {wanted} is taken; pick another name.", status=409)
            if str(found.get("Name") or "") != wanted:  # the engine took it for the start of an id
                return Deny(Reason.NAME_TAKEN, f"the name {wanted} is the start of your {kind} {found.get('Name')}'s "
                                               "id, which it would shadow; pick another name.", status=409)
            return Deny(Reason.NAME_TAKEN, f"you have a {kind} named {wanted} already; pick another name.", status=409)
        if kind == "volume":  # made by the proxy, which checks whose the engine's answer is
            return Reply(201, make_volume(self.upstream, caller, body))
        body["Labels"] = {**(body.get("Labels") or {}), labels.USER: caller.user, labels.UID: str(caller.uid)}
        if caller.is_admin:
            return Forward(request.target, body=json.dumps(body).encode())
        # Count and create one at a time per user: the lock goes with the Forward, and is released once the engine
        # has answered the create (or here, if the count refuses it).
        held = self.locks.hold(caller.user)
        try:
            self._check_max_networks(caller)
        except BaseException:
            held.release()
            raise
        return Forward(request.target, body=json.dumps(body).encode(), held=held)

    def _check_max_networks(self, caller: runas.Caller) -> None:
        """Within the caller's max_networks, which counts their own network ds01-USER whether it exists yet or not:
        the proxy makes it when their containers need it, whatever the count, and it must fit in the limit too. Each
        network takes an address range from the engine's pools, which all users share."""
        status, listed = self.upstream.call("GET", "/networks")
        if status != 200 or not isinstance(listed, list):
            raise Ds01Error(f"the engine answered {status} when counting your networks: {listed}")
        mine = [str(network.get("Name") or "") for network in listed
                if isinstance(network, dict) and (network.get("Labels") or {}).get(labels.USER) == caller.user]
        own = networks.user_network(caller)
        count, limit = len(mine) + (0 if own in mine else 1), caller.limits.max_networks
        if count >= limit:
            raise Denied(Reason.MAX_NETWORKS, (
                f"you have {count} networks, counting your own network {own}, which ds01 makes for your containers, "
                f"and may have {limit}: the networks of all users share the engine's address ranges. Remove one you no "
                "longer use (docker network rm NAME, or docker network prune), then create again."))
