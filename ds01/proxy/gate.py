"""What the proxy does with each request: deny it, forward it (perhaps rewritten), or answer it itself."""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from ds01 import labels, records
from ds01.errors import Denied, Ds01Error
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest, Slot
from ds01.proxy import allowlist, archive, binds, bodies, policy, runas, starts
from ds01.proxy.cgroups import CgroupParents
from ds01.proxy.creates import ContainerCreates, make_volume, network_owners
from ds01.proxy.outcomes import Deny, Forward, Outcome, Reply, Request
from ds01.proxy.session import Session, Sessions
from ds01.proxy.upstream import Upstream
from ds01.reasons import Reason
from ds01.records import container_info

MIN_API_VERSION = (1, 40)
PULL_PARAMETERS = frozenset({"fromImage", "tag", "platform"})
_OBJECT_ID = re.compile(r"[0-9a-f]{64}")


def _with_owner_filter(query: str, user: str, key: str = "filters") -> str:
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


def _host_mounts(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The bind mounts of an inspected container: host directories the engine would reach as root."""
    return [m for m in info.get("Mounts") or [] if m.get("Type") == "bind"]


class Gate:
    def __init__(self, sessions: Sessions, upstream: Upstream, allocator: Allocator, *,
                 slots: Callable[[], list[Slot]], cgroups: CgroupParents, engine_sockets: frozenset[str],
                 host_cpus: float, pins: binds.Pins, spool_dir: Path,
                 api_versions: tuple[tuple[int, int], tuple[int, int]] = (MIN_API_VERSION, MIN_API_VERSION),
                 log_driver: str = "json-file", instance: str = "") -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.allocator = allocator
        self._slots = slots
        self._engine_sockets = engine_sockets
        self.pins = pins
        self.api_versions = api_versions  # (oldest, newest) served: 1.40 up to the engine's own
        self._spool_dir = spool_dir
        self._user_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        # log_driver: the engine's default, the only one users' containers may log with
        self._creates = ContainerCreates(sessions, upstream, allocator, slots, cgroups, engine_sockets, host_cpus,
                                         pins, self._user_locks, log_driver, self._owner_of, instance)

    def decide(self, request: Request) -> Outcome:
        caller, route, method, path, target = (request.session.caller, request.route, request.method, request.path,
                                               request.target)
        refused = self._outside_the_surface(request)
        if refused is not None:
            return refused
        kind = route.kind
        if kind == "open":
            return Forward(target)
        if kind == "admin_only":
            return Forward(target) if caller.is_admin else Deny(Reason.ADMIN_ONLY,
                                                                f"{method} {path} is for admins only.")
        if kind == "gated":
            allowed = self.sessions.current_config().security.allowed_endpoints
            if route.group in allowed:
                return Forward(target)
            return Deny(Reason.ENDPOINT_DISABLED, f"{route.group} is turned off on this host ({method} {path}); an "
                                                  f"admin can allow it with security.allow_endpoints: [{route.group}].")
        if kind in ("list_containers", "prune_containers", "events", "list_volumes", "prune_volumes"):
            return Forward(target if caller.is_admin else f"{path}?{_with_owner_filter(request.query, caller.user)}")
        if kind == "list_networks":
            return Forward(target)
        if kind == "pull":
            return self._pull(request)
        if kind == "create_container":
            return self._creates.create(request)
        if kind in ("create_volume", "create_network"):
            return self._create_owned(request, kind.removeprefix("create_"))
        if kind in ("container", "exec", "volume", "network"):
            return self._object(request)
        return Deny(Reason.UNKNOWN_ENDPOINT, f"{method} {path} is not allowed through the ds01 proxy. Only the "
                                             "endpoints docker, docker-py, compose and dev containers need are open.")

    def _outside_the_surface(self, request: Request) -> Deny | None:
        """Requests the engine could read otherwise than the proxy: a parameter given twice (the engine takes the
        first), or an API version outside the one range served."""
        route = request.route
        names = [name for name, _ in parse_qsl(request.query, keep_blank_values=True)]
        if len(names) != len(set(names)):
            twice = sorted({name for name in names if names.count(name) > 1})
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

    @staticmethod
    def _pull(request: Request) -> Outcome:
        """A pull from a registry is open; `docker import` (fromSrc) is for admins: it can point any tag, one that
        others run, at an image of the caller's making, and makes the engine fetch any URL."""
        params = {name for name, _ in parse_qsl(request.query, keep_blank_values=True)}
        if request.session.caller.is_admin or params <= PULL_PARAMETERS:
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
                   if self._owner_of("container", found)[1] != caller.user]
        if not foreign:
            return data
        if status == 409 and request.route.kind == "create_container":
            name = dict(parse_qsl(request.query)).get("name") or ""
            message = (f'Conflict. The container name "/{name}" is already in use by a container that is not '
                       "yours. Pick another name.")
        elif status == 409:
            message = "Conflict with an object that is not yours."
        else:
            message = f"No such object: {request.route.object_id or request.path}"
        return json.dumps({"message": message}).encode()

    def _owner_of(self, kind: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
        info = self.upstream.inspect(kind, name)
        if info is None:
            return None, None
        found_labels = (info.get("Config") or {}).get("Labels") if kind == "container" else info.get("Labels")
        return info, (found_labels or {}).get(labels.USER)

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
            return Deny(Reason.NOT_FOUND, f"No such {kind}: {name}", status=404)
        real = str(info.get("Id") or info.get("Name") or name) if kind != "exec" else name
        collection = "exec" if kind == "exec" else f"{kind}s"
        prefix = path[:path.index(f"/{collection}/")]
        rewritten = "/".join([prefix, collection, quote(real, safe=""), *([route.action] if route.action else [])])
        target = rewritten + (f"?{query}" if query else "")
        if kind == "container" and route.action == "exec" and method == "POST":
            return self._exec_create(request, info, target)
        if kind == "container" and route.action == "rename" and method == "POST":
            policy.check_object_name(caller, "container", dict(parse_qsl(query)).get("name") or "")
            return Forward(target)
        if kind == "container" and route.action == "archive":
            return self._archive(request, info, target)
        if kind == "container" and route.action == "update" and method == "POST":
            body = policy.check_update(policy.within_host(caller, self._creates.host_cpus),
                                       bodies.parse_json_object(read_body(), "update body"),
                                       bool(_host_mounts(info)), info.get("HostConfig") or {})
            return Forward(target, body=json.dumps(body).encode())
        if kind == "network" and route.action in ("connect", "disconnect"):
            body = allowlist.canonical(bodies.parse_json_object(read_body(), f"network {route.action} body"),
                                   f"Network{route.action.capitalize()}Request")
            ref = str(bodies.field(body, "Container") or "")
            _, container_owner = self._owner_of("container", ref)
            if container_owner != caller.user and not caller.is_admin:
                return Deny(Reason.NOT_FOUND, f"No such container: {ref}", status=404)
            return Forward(target, body=json.dumps(body).encode())
        if kind == "container" and method == "DELETE":
            return Forward(target, after=lambda status, _body: self._released_on_delete(status, info))
        if kind == "container" and route.action in ("start", "restart") and method == "POST":
            return self._start(request, info, target)
        if kind == "exec" and route.action == "start" and method == "POST":
            raw = read_body()
            body = allowlist.canonical(bodies.parse_json_object(raw, "exec start body"), "ExecStartConfig") \
                if raw.strip() else {}
            return Forward(target, body=json.dumps(body).encode(), hijack=True)
        return Forward(target, hijack=kind == "container" and route.action == "attach")

    def _rules_of(self, info: dict[str, Any], caller: runas.Caller) -> runas.Caller:
        """The container owner's rules, whoever acts on it (an admin may start or exec into a user's)."""
        found_labels = (info.get("Config") or {}).get("Labels") or {}
        uid = found_labels.get(labels.UID) or ""
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
                raise Denied(Reason.MAX_EXECS, (
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
            raise Denied(Reason.BAD_REQUEST, f"{route.action} takes no body (a HostConfig there is how old API "
                                             "versions changed a container at start); send it empty.")
        by_rules_of = self._rules_of(info, caller)
        starting = info
        if route.action == "restart" and any(m.get("Type") in ("bind", "volume") for m in info.get("Mounts") or []):
            # Checked while running, a container could change its own files before the engine starts it
            # again: the proxy stops it itself, checks the stopped container, and forwards a plain start.
            starting = self._stopped_for_restart(info, query)
            target = target.replace("/restart", "/start", 1).split("?", 1)[0]
        try:
            starts.check_start(starting, by_rules_of, self.pins, self.sessions.current_config().security,
                               self._engine_sockets)
            starts.check_networks(starting, by_rules_of, self._network_owners(starting))
        except Denied:
            self._removed_if_auto_remove(starting)
            raise
        self._regrant_on_start(request.session, starting)
        return Forward(target)

    def _network_owners(self, info: dict[str, Any]) -> dict[str, str | None]:
        """The owner, now, of each named network a container joins ("" none, None missing), read the way a create
        body's are."""
        joined = {"HostConfig": {"NetworkMode": (info.get("HostConfig") or {}).get("NetworkMode")},
                  "NetworkingConfig": {"EndpointsConfig": (info.get("NetworkSettings") or {}).get("Networks")}}
        return network_owners(self._owner_of, policy.networks_of(joined))

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
            raise Denied(Reason.NOT_FOUND, f"No such container: {container_id}")
        return stopped

    def _regrant_on_start(self, session: Session, info: dict[str, Any]) -> None:
        """A stopped container whose GPUs were reclaimed asks for the same devices again before it may run."""
        container = container_info(info)
        if not container.device_ids or any(a.container == container.id for a in self.allocator.allocations()):
            return
        owner = container.labels.get(labels.USER, "")
        if owner != session.caller.user:
            raise Denied(Reason.GPUS_RELEASED, f"the GPUs of {container.name} were released; its owner must start it.")
        lock = self._user_locks[owner]
        with lock:
            allocation = self.allocator.request(owner, session.caller.uid, session.caller.limits,
                                                GpuRequest(devices=container.device_ids), slots=self._slots())
            self.allocator.bind(allocation.id, container.id, container.name)

    def _released_on_delete(self, status: int | None, info: dict[str, Any]) -> None:
        if status == 204:
            self.allocator.release_container(str(info["Id"]))
            self.pins.release(((info.get("Config") or {}).get("Labels") or {}).get(labels.BIND_KEY) or "")

    def _archive(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
        """docker cp, either way: only where no host directory is mounted (the engine reads and writes those as
        root, past the permissions on the host), and what goes in is only the caller's own files."""
        caller = request.session.caller
        host_mounts = _host_mounts(info)
        if host_mounts:  # admins too: to answer, the engine mounts the binds and makes missing mount points
            labels = (info.get("Config") or {}).get("Labels") or {}
            origin = records.original_bind_source
            shown = ", ".join(f"{m.get('Destination')} (from {origin(labels, m.get('Source'))})" for m in host_mounts)
            name = str(info.get("Name") or "").lstrip("/")
            if request.method == "PUT":
                what, fix = f"copying into {name}", "Copy on the host instead (cp FILE DIR)"
            else:
                what, fix = f"copying out of {name}", ("Read the files on the host, or copy them inside the container "
                                                       "into a mounted directory")
            raise Denied(Reason.ARCHIVE_WITH_HOST_MOUNTS, (
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
        body = allowlist.canonical(bodies.parse_json_object(request.read_body(), f"{kind} create body"), table)
        ipam = body.get("IPAM") or {}
        chosen = ipam.get("Config") or ipam.get("Options") or ipam.get("Driver") not in (None, "", "default")
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
        found, owner = self._owner_of(kind, wanted) if wanted else (None, None)
        # Creating an existing volume returns it, and a second network of a name makes the name ambiguous to
        # everyone: someone else's must not be shown, nor taken.
        if found is not None and not caller.is_admin and (kind == "network" or owner != caller.user):
            if str(found.get("Name") or "") != wanted:  # the engine took it for the start of an id
                return Deny(Reason.NAME_TAKEN, f"the name {wanted} is the start of another {kind}'s id, which it would "
                                               "shadow; pick another name.", status=409)
            return Deny(Reason.NAME_TAKEN, f"a {kind} named {wanted} exists already; pick another name.", status=409)
        if kind == "volume":  # made by the proxy, which checks whose the engine's answer is
            return Reply(201, make_volume(self.upstream, caller, body))
        body["Labels"] = {**(body.get("Labels") or {}), labels.USER: caller.user, labels.UID: str(caller.uid)}
        return Forward(request.target, body=json.dumps(body).encode())
