"""What the proxy does with each request: deny it, forward it (perhaps rewritten), or answer it itself."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, quote, urlencode

from ds01 import bodies, containers, identity, policy, rules, runas
from ds01.allocator import Allocation, Allocator
from ds01.engine import container_info
from ds01.errors import Denied, Ds01Error
from ds01.placement import GpuRequest, Slot
from ds01.proxy import archive, binds, starts
from ds01.proxy.cgroups import CgroupParents
from ds01.proxy.http import Head
from ds01.proxy.routes import Route
from ds01.proxy.session import Session, Sessions
from ds01.proxy.upstream import Upstream
from ds01.units import format_equivalents

DRY_RUN_HEADER = "X-DS01-Dry-Run"
CLIENT_HEADER_PREFIX = "ds01-container/"
MIN_API_VERSION = (1, 40)
PULL_PARAMETERS = frozenset({"fromImage", "tag", "platform"})


@dataclass
class Deny:
    reason: str
    message: str
    status: int = 403


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


@dataclass
class Forward:
    target: str  # the request target to send upstream (path and query), possibly rewritten
    body: bytes | None = None  # a replacement body; None streams the client's own
    after: Callable[[int | None, bytes], None] | None = None  # sees the buffered response (None: forward failed)
    hijack: bool = False  # attach / exec start: the connection may turn into a raw stream
    body_file: BinaryIO | None = None  # a replacement body spooled to a file, sent from its start
    warnings: tuple[str, ...] = ()  # added to the Warnings of a successful create's answer


Outcome = Deny | Reply | Forward
BodyReader = Callable[[], bytes]


@dataclass(frozen=True)
class Request:
    session: Session
    method: str
    path: str  # without the query string
    query: str
    route: Route
    head: Head
    read_body: BodyReader  # the client's body, buffered up to the size cap
    body_stream: Callable[[], BinaryIO]  # the client's body as a stream, for archives of any size

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def _with_owner_filter(query: str, user: str, key: str = "filters") -> str:
    """Add label=ds01.user=USER to a Docker filters query parameter, in either of its JSON shapes."""
    params = parse_qsl(query, keep_blank_values=True)
    raw = next((value for name, value in params if name == key), "") or "{}"
    try:
        filters = json.loads(raw)
    except ValueError:
        raise Denied("bad_request", f"the {key} parameter is not valid JSON") from None
    if not isinstance(filters, dict):
        raise Denied("bad_request", f"the {key} parameter must be a JSON object")
    labels = filters.get("label", {})
    labels = dict.fromkeys(labels, True) if isinstance(labels, list) else dict(labels)
    labels[f"{containers.USER}={user}"] = True
    filters["label"] = labels
    rest = [(name, value) for name, value in params if name != key]
    return urlencode([*rest, (key, json.dumps(filters))])


def _host_mounts(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The bind mounts of an inspected container: host directories the engine would reach as root."""
    return [m for m in info.get("Mounts") or [] if m.get("Type") == "bind"]


def _client_type(head: Head, body: dict[str, Any]) -> str:
    labels = bodies.field(body, "Labels") or {}
    if (head.get("User-Agent") or "").startswith(CLIENT_HEADER_PREFIX):
        return "container"
    if "com.docker.compose.project" in labels:
        return "compose"
    if any(key.startswith("devcontainer.") for key in labels):
        return "devcontainer"
    return "docker"


class Gate:
    def __init__(self, sessions: Sessions, upstream: Upstream, allocator: Allocator, *,
                 slots: Callable[[], list[Slot]], cgroups: CgroupParents, engine_sockets: frozenset[str],
                 host_cpus: float, pins: binds.Pins, spool_dir: Path,
                 api_versions: tuple[tuple[int, int], tuple[int, int]] = (MIN_API_VERSION, MIN_API_VERSION),
                 log_driver: str = "json-file") -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.allocator = allocator
        self._slots = slots
        self._cgroups = cgroups
        self._engine_sockets = engine_sockets
        self._host_cpus = host_cpus
        self.pins = pins
        self.api_versions = api_versions  # (oldest, newest) served: 1.40 up to the engine's own
        self._spool_dir = spool_dir
        self._log_driver = log_driver  # the engine's default, the only one users' containers may log with
        self._user_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def decide(self, request: Request) -> Outcome:
        caller, route, method, path, target = (request.session.caller, request.route, request.method, request.path,
                                               request.target)
        if route.version is not None and not self.api_versions[0] <= route.version <= self.api_versions[1]:
            low, high = (f"{major}.{minor}" for major, minor in self.api_versions)
            return Deny("api_version", (
                f"API version {route.version[0]}.{route.version[1]} is not served here: the ds01 proxy speaks "
                f"{low} to {high}. Older versions let a start carry a whole new HostConfig. Upgrade the client, or "
                f"set DOCKER_API_VERSION={high}."), status=400)
        kind = route.kind
        if kind == "open":
            return Forward(target)
        if kind == "admin_only":
            return Forward(target) if caller.is_admin else Deny("admin_only", f"{method} {path} is for admins only.")
        if kind == "gated":
            allowed = self.sessions.current_config().security.allowed_endpoints
            if route.group in allowed:
                return Forward(target)
            return Deny("endpoint_disabled", f"{route.group} is turned off on this host ({method} {path}); an "
                                             f"admin can allow it with security.allow_endpoints: [{route.group}].")
        if kind in ("list_containers", "prune_containers", "events", "list_volumes", "prune_volumes"):
            return Forward(target if caller.is_admin else f"{path}?{_with_owner_filter(request.query, caller.user)}")
        if kind == "list_networks":
            return Forward(target)
        if kind == "pull":
            return self._pull(request)
        if kind == "create_container":
            return self._create(request)
        if kind in ("create_volume", "create_network"):
            return self._create_owned(request, kind.removeprefix("create_"))
        if kind in ("container", "exec", "volume", "network"):
            return self._object(request)
        return Deny("unknown_endpoint", f"{method} {path} is not allowed through the ds01 proxy. Only the "
                                        "endpoints docker, docker-py, compose and dev containers need are open.")

    @staticmethod
    def _pull(request: Request) -> Outcome:
        """A pull from a registry is open; `docker import` (fromSrc) is for admins: it can point any tag, one that
        others run, at an image of the caller's making, and makes the engine fetch any URL."""
        params = {name for name, _ in parse_qsl(request.query, keep_blank_values=True)}
        if request.session.caller.is_admin or params <= PULL_PARAMETERS:
            return Forward(request.target)
        if "fromSrc" in params:
            return Deny("admin_only", "docker import is for admins only: it can replace an image tag that others "
                                      "use. Pull images from a registry (docker pull), or ask an admin.")
        unknown = ", ".join(sorted(params - PULL_PARAMETERS))
        return Deny("bad_request", f"image pull parameter(s) {unknown} are not allowed; a pull takes "
                                   f"{', '.join(sorted(PULL_PARAMETERS))}.")

    def _owner_of(self, kind: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
        info = self.upstream.inspect(kind, name)
        if info is None:
            return None, None
        labels = (info.get("Config") or {}).get("Labels") if kind == "container" else info.get("Labels")
        return info, (labels or {}).get(containers.USER)

    def _object(self, request: Request) -> Outcome:
        caller, route, method, path, query, read_body = (request.session.caller, request.route, request.method,
                                                         request.path, request.query, request.read_body)
        kind, name = route.kind, route.object_id or ""
        if kind == "exec":
            exec_info = self.upstream.inspect("exec", name)
            container_id = (exec_info or {}).get("ContainerID")
            info, owner = self._owner_of("container", container_id) if container_id else (None, None)
        else:
            info, owner = self._owner_of(kind, name)
        if info is None or (owner != caller.user and not caller.is_admin):
            # The same answer whether it is missing or someone else's: existence is not leaked.
            return Deny("not_found", f"No such {kind}: {name}", status=404)
        real = str(info.get("Id") or info.get("Name") or name) if kind != "exec" else name
        collection = "exec" if kind == "exec" else f"{kind}s"
        prefix = path[:path.index(f"/{collection}/")]
        rewritten = "/".join([prefix, collection, quote(real, safe=""), *([route.action] if route.action else [])])
        target = rewritten + (f"?{query}" if query else "")
        if kind == "container" and route.action == "exec" and method == "POST":
            return self._exec_create(request, info, target)
        if kind == "container" and route.action == "archive":
            return self._archive(request, info, target)
        if kind == "container" and route.action == "update" and method == "POST":
            body = policy.check_update(caller, bodies.parse_json_object(read_body(), "update body"),
                                       bool(_host_mounts(info)), info.get("HostConfig") or {})
            return Forward(target, body=json.dumps(body).encode())
        if kind == "network" and route.action in ("connect", "disconnect"):
            body = rules.canonical(bodies.parse_json_object(read_body(), f"network {route.action} body"),
                                   f"Network{route.action.capitalize()}Request")
            ref = str(bodies.field(body, "Container") or "")
            _, container_owner = self._owner_of("container", ref)
            if container_owner != caller.user and not caller.is_admin:
                return Deny("not_found", f"No such container: {ref}", status=404)
            return Forward(target, body=json.dumps(body).encode())
        if kind == "container" and method == "DELETE":
            return Forward(target, after=lambda status, _body: self._released_on_delete(status, info))
        if kind == "container" and route.action in ("start", "restart") and method == "POST":
            return self._start(request, info, target)
        if kind == "exec" and route.action == "start" and method == "POST":
            raw = read_body()
            body = rules.canonical(bodies.parse_json_object(raw, "exec start body"), "ExecStartConfig") \
                if raw.strip() else {}
            return Forward(target, body=json.dumps(body).encode(), hijack=True)
        return Forward(target, hijack=kind == "container" and route.action == "attach")

    def _rules_of(self, info: dict[str, Any], caller: runas.Caller) -> runas.Caller:
        """The container owner's rules, whoever acts on it (an admin may start or exec into a user's)."""
        labels = (info.get("Config") or {}).get("Labels") or {}
        uid = labels.get(containers.UID) or ""
        return self.sessions.for_uid(int(uid)).caller if uid.isdigit() else caller

    def _exec_create(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
        """An exec runs as the caller; a container has at most max_execs of them, created or running, counted and
        created one at a time per owner so that a burst cannot pass the count together."""
        caller = request.session.caller
        body = policy.check_exec(caller, bodies.parse_json_object(request.read_body(), "exec create body"),
                                 str((info.get("Config") or {}).get("User") or ""),
                                 self.sessions.current_config().security)
        owner = self._rules_of(info, caller)
        lock = self._user_locks[owner.user]
        lock.acquire()
        try:
            current = self.upstream.inspect("container", str(info["Id"]))
            execs = len((current or {}).get("ExecIDs") or [])
            if execs >= owner.limits.max_execs:
                name = str(info.get("Name") or "").lstrip("/")
                raise Denied("max_execs", (
                    f"{name} has {execs} exec instances, and a container may have {owner.limits.max_execs} "
                    "(created and not yet finished). Let some finish, or restart the container to clear them."))
        except BaseException:
            lock.release()
            raise
        return Forward(target, body=json.dumps(body).encode(), after=lambda _status, _body: lock.release())

    def _start(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
        """A start or restart: no body, the container's checks again (as its owner's), its GPUs again if released."""
        caller, route, query, read_body = request.session.caller, request.route, request.query, request.read_body
        if read_body().strip():
            raise Denied("bad_request", f"{route.action} takes no body (a HostConfig there is how old API "
                                        "versions changed a container at start); send it empty.")
        by_rules_of = self._rules_of(info, caller)
        starting = info
        if route.action == "restart" and _host_mounts(info):
            # Checked while running, a container could change its own files before the engine starts it
            # again: the proxy stops it itself, checks the stopped container, and forwards a plain start.
            starting = self._stopped_for_restart(info, query)
            target = target.replace("/restart", "/start", 1).split("?", 1)[0]
        try:
            starts.check_start(starting, by_rules_of, self.pins, self.sessions.current_config().security,
                               self._engine_sockets)
        except Denied:
            self._removed_if_auto_remove(starting)
            raise
        self._regrant_on_start(request.session, starting)
        return Forward(target)

    def _removed_if_auto_remove(self, info: dict[str, Any]) -> None:
        """A --rm container whose start is refused goes, as the engine removes one whose start fails: docker run
        --rm waits for that removal."""
        if (info.get("HostConfig") or {}).get("AutoRemove"):
            container_id = quote(str(info["Id"]), safe="")
            status, answer = self.upstream.call("DELETE", f"/containers/{container_id}", query={"force": "1"})
            if status not in (204, 404):
                raise Ds01Error(f"the engine answered {status} when removing {info.get('Name')}: {answer}")

    def _stopped_for_restart(self, info: dict[str, Any], query: str) -> dict[str, Any]:
        container_id = str(info["Id"])
        stop_query = {k: v for k, v in parse_qsl(query) if k in ("t", "signal")}
        status, answer = self.upstream.call("POST", f"/containers/{quote(container_id, safe='')}/stop",
                                            query=stop_query)
        if status not in (204, 304):
            raise Ds01Error(f"the engine answered {status} when stopping {info.get('Name')} to restart it: {answer}")
        stopped = self.upstream.inspect("container", container_id)
        if stopped is None:
            raise Denied("not_found", f"No such container: {container_id}")
        return stopped

    def _regrant_on_start(self, session: Session, info: dict[str, Any]) -> None:
        """A stopped container whose GPUs were reclaimed asks for the same devices again before it may run."""
        container = container_info(info)
        if not container.device_ids or any(a.container == container.id for a in self.allocator.allocations()):
            return
        owner = container.labels.get(containers.USER, "")
        if owner != session.caller.user:
            raise Denied("gpus_released", f"the GPUs of {container.name} were released; its owner must start it.")
        lock = self._user_locks[owner]
        with lock:
            allocation = self.allocator.request(owner, session.caller.uid, session.caller.limits,
                                                GpuRequest(devices=container.device_ids), slots=self._slots())
            self.allocator.bind(allocation.id, container.id, container.name)

    def _released_on_delete(self, status: int | None, info: dict[str, Any]) -> None:
        if status == 204:
            self.allocator.release_container(str(info["Id"]))
            self.pins.release(((info.get("Config") or {}).get("Labels") or {}).get(containers.BIND_KEY) or "")

    def _archive(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
        """docker cp, either way: only where no host directory is mounted (the engine reads and writes those as
        root, past the permissions on the host), and what goes in is only the caller's own files."""
        caller = request.session.caller
        host_mounts = _host_mounts(info)
        if host_mounts:  # admins too: to answer, the engine mounts the binds and makes missing mount points
            labels = (info.get("Config") or {}).get("Labels") or {}
            origin = containers.original_bind_source
            shown = ", ".join(f"{m.get('Destination')} (from {origin(labels, m.get('Source'))})" for m in host_mounts)
            name = str(info.get("Name") or "").lstrip("/")
            if request.method == "PUT":
                what, fix = f"copying into {name}", "Copy on the host instead (cp FILE DIR)"
            else:
                what, fix = f"copying out of {name}", ("Read the files on the host, or copy them inside the container "
                                                       "into a mounted directory")
            raise Denied("archive_with_host_mounts", (
                f"{what} is refused: it mounts host directories ({shown}), and the engine copies as root, past the "
                f"permissions on the host. {fix}, where your own permissions apply."))
        if request.method != "PUT":
            return Forward(target)
        spool = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 - handed to the forwarder, which closes it
        try:
            archive.rewrite(request.body_stream(), spool, caller.uid, caller.gid)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return Forward(target, body_file=spool)


    def _create_owned(self, request: Request, kind: str) -> Outcome:
        """A volume or network create: read through its allow-list table and stamped with the caller's labels."""
        caller = request.session.caller
        table = "VolumeCreateOptions" if kind == "volume" else "NetworkCreateRequest"
        body = rules.canonical(bodies.parse_json_object(request.read_body(), f"{kind} create body"), table)
        if kind == "network" and body.get("IPAM") and not caller.is_admin:
            return Deny("network_ipam", "choosing a network's addresses (--subnet, --ip-range, --gateway, IPAM "
                                        "options) is for admins: a subnet can shadow the host's own networks. "
                                        "Leave them out; the engine picks a free range.")
        wanted = str(body.get("Name") or "") if kind == "volume" else ""
        found, owner = self._owner_of("volume", wanted) if wanted else (None, None)
        if found is not None and owner != caller.user and not caller.is_admin:
            # Creating an existing volume returns it: someone else's must not be shown, nor taken.
            return Deny("name_taken", f"a volume named {wanted} exists already; pick another name.", status=409)
        body["Labels"] = {**(body.get("Labels") or {}), containers.USER: caller.user, containers.UID: str(caller.uid)}
        return Forward(request.target, body=json.dumps(body).encode())

    def _facts(self, body: dict[str, Any], refs: policy.References,
               opened: dict[str, binds.OpenedSource]) -> policy.Facts:
        paths = {path: source.resolved for path, source in opened.items()}
        owners = {ref: self._owner_of("container", ref)[1] for ref in refs.containers}
        volumes = {name: self._owner_of("volume", name)[1] for name in refs.volumes}
        networks: dict[str, str | None] = {}
        for name in refs.networks:
            found, owner = self._owner_of("network", name)
            networks[name] = None if found is None else (owner or "")
        # Always inspected: its own labels and Env reach the container unless the body overrides them.
        image = self.upstream.inspect("image", str(bodies.field(body, "Image") or ""))
        image_config = (image or {}).get("Config") or {}
        return policy.Facts(paths, owners, volumes, self._engine_sockets, str(image_config.get("WorkingDir") or ""),
                            tuple(image_config.get("Volumes") or {}), image_labels=image_config.get("Labels") or {},
                            image_env=tuple(image_config.get("Env") or ()), log_driver=self._log_driver,
                            network_owners=networks)

    def _count_containers(self, user: str) -> int:
        query = {"all": "1", "filters": json.dumps({"label": [f"{containers.USER}={user}"]})}
        status, listed = self.upstream.call("GET", "/containers/json", query=query)
        if status != 200 or not isinstance(listed, list):
            raise Ds01Error(f"the engine answered {status} when counting containers: {listed}")
        return len(listed)

    def _create(self, request: Request) -> Outcome:
        caller = request.session.caller
        name = dict(parse_qsl(request.query)).get("name") or ""
        suffix = name.rpartition(containers.LEGACY_NAME_SEPARATOR)[2] if containers.LEGACY_NAME_SEPARATOR in name \
            else None
        if suffix is not None and suffix != str(caller.uid) and not caller.is_admin:
            raise Denied("foreign_name", (
                f"the name {name} ends in {containers.LEGACY_NAME_SEPARATOR}{suffix}, another user's name space "
                f"(container create uses NAME{containers.LEGACY_NAME_SEPARATOR}{caller.uid} for yours); pick "
                "another name."))
        # The engine refuses more CPUs than the host has, so the default is capped at the host's count.
        caller = dataclasses.replace(caller, limits=dataclasses.replace(
            caller.limits, cpus=min(caller.limits.cpus, self._host_cpus)))
        body = rules.canonical(bodies.parse_json_object(request.read_body(), "container create body"),
                               "ContainerConfig")
        refs = policy.references(body)
        with binds.opened(refs.bind_sources, caller) as opened:
            return self._create_checked(request, caller, body, refs, opened)

    def _create_checked(self, request: Request, caller: runas.Caller, body: dict[str, Any],
                        refs: policy.References, opened: dict[str, binds.OpenedSource]) -> Outcome:
        head, query = request.head, request.query
        config = self.sessions.current_config()
        plan = policy.plan_create(
            caller, body, self._facts(body, refs, opened), config.security,
            cgroup_parent=self._cgroups.name(caller.user), client_type=_client_type(head, body),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            gpu_gid=identity.group_id(config.bare_metal.group))
        dry_run = (head.get(DRY_RUN_HEADER) or "").lower() in ("1", "true")
        lock = self._user_locks[caller.user]
        key = uuid.uuid4().hex
        lock.acquire()  # count, reserve and create one at a time per user; released once the create is answered
        allocation: Allocation | None = None
        try:
            count = self._count_containers(caller.user)
            if count >= caller.limits.max_containers:
                raise Denied("max_containers", (
                    f"you have {count} containers and may have {caller.limits.max_containers}. Remove one "
                    "(container remove NAME) first."))
            if plan.gpu_request is not None:
                args = (caller.user, caller.uid, caller.limits, plan.gpu_request)
                allocation = (self.allocator.preview(*args, slots=self._slots()) if dry_run
                              else self.allocator.request(*args, slots=self._slots()))
                policy.apply_grant(plan.body, allocation.slots, allocation.id, str(allocation.gpu_equivalents))
            if dry_run:
                lock.release()
                return self._dry_run_reply(plan, allocation)
            self._cgroups.ensure(caller.user, caller.limits.user_cpus, caller.limits.user_memory_bytes)
            if plan.bind_sources:
                staged = {source: str(self.pins.pin(key, index, opened[source]))
                          for index, source in enumerate(plan.bind_sources)}
                policy.pin_bind_sources(plan.body, staged, key,
                                        [opened[source].resolved.real for source in plan.bind_sources])
        except BaseException:
            self.pins.release(key)
            if allocation is not None and not dry_run:
                self.allocator.release(allocation.id)
            lock.release()
            raise
        name = dict(parse_qsl(query)).get("name")

        def after(status: int | None, response: bytes) -> None:
            try:
                if status != 201:
                    self.pins.release(key)
                if allocation is None:
                    return
                if status == 201:
                    created = json.loads(response)["Id"]
                    self.allocator.bind(allocation.id, created, name)
                else:
                    self.allocator.release(allocation.id)
            finally:
                lock.release()

        return Forward(request.target, body=json.dumps(plan.body).encode(), after=after, warnings=plan.notes)

    def _dry_run_reply(self, plan: policy.CreatePlan, allocation: Allocation | None) -> Outcome:
        image = str(bodies.field(plan.body, "Image") or "")
        if image and self.upstream.inspect("image", image) is None:
            return Deny("image_missing", f"image {image} is not on this host; pull it or pick another.", status=404)
        host = bodies.field(plan.body, "HostConfig") or {}
        return Reply(200, {
            "dry_run": True, "image": image,
            "gpus": list(allocation.slots) if allocation else [],
            "gpu_equivalents": format_equivalents(allocation.gpu_equivalents) if allocation else "0",
            "cpus": (bodies.field(host, "NanoCpus") or 0) / 1e9, "memory_bytes": bodies.field(host, "Memory"),
            "shm_size_bytes": bodies.field(host, "ShmSize"), "pids_limit": bodies.field(host, "PidsLimit"),
            "cgroup_parent": bodies.field(host, "CgroupParent"), "stripped_env": list(plan.stripped_env),
            "user": bodies.field(plan.body, "User"), "group_add": bodies.field(host, "GroupAdd") or [],
            "cap_drop": bodies.field(host, "CapDrop") or [], "notes": list(plan.notes)})
