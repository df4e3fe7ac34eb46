"""What is done with a caller's own existing container beyond sending the request on: an exec created under its
owner's lock, a start checked again as its owner's, docker cp, and a delete that frees its GPUs and pins."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from ds01 import labels, records
from ds01.errors import Denied, Ds01Error
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import GpuRequest
from ds01.proxy import archive, bodies, networks, policy, runas, starts
from ds01.proxy.creates import OwnerOf, ensure_user_network, network_owners
from ds01.proxy.interfaces import Callers, EngineCalls, Pinning
from ds01.proxy.outcomes import Forward, Outcome, Request
from ds01.proxy.queue import Queue
from ds01.proxy.session import Session
from ds01.proxy.userlocks import UserLocks
from ds01.reasons import Reason
from ds01.records import container_info


def host_mounts(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The bind mounts of an inspected container: host directories the engine would reach as root."""
    return [m for m in info.get("Mounts") or [] if m.get("Type") == "bind"]


class ContainerActions:
    def __init__(self, sessions: Callers, upstream: EngineCalls, allocator: Allocator, owner_of: OwnerOf,
                 locks: UserLocks, *, queue: Queue, pins: Pinning, engine_sockets: frozenset[str],
                 spool_dir: Path) -> None:
        self.sessions = sessions
        self.upstream = upstream
        self.allocator = allocator
        self._owner_of = owner_of
        self._locks = locks
        self._queue = queue
        self.pins = pins
        self._engine_sockets = engine_sockets
        self._spool_dir = spool_dir

    def _rules_of(self, info: dict[str, Any], caller: runas.Caller) -> runas.Caller:
        """The container owner's rules, whoever acts on it (an admin may start or exec into a user's)."""
        found_labels = (info.get("Config") or {}).get("Labels") or {}
        uid = found_labels.get(labels.UID) or ""
        return self.sessions.for_uid(int(uid)).caller if uid.isdigit() else caller

    def exec_create(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
        """An exec runs as the caller; a container has at most max_execs of them, created or running, counted and
        created one at a time per owner so that a burst cannot pass the count together."""
        caller = request.session.caller
        body = policy.check_exec(caller, bodies.parse_json_object(request.read_body(), "exec create body"),
                                 str((info.get("Config") or {}).get("User") or ""),
                                 self.sessions.current_config().security)
        owner = self._rules_of(info, caller)
        held = self._locks.hold(owner.user)  # handed to the Forward, released once the engine has answered
        try:
            current = self.upstream.inspect("container", str(info["Id"]))
            execs = len((current or {}).get("ExecIDs") or [])
            if execs >= owner.limits.max_execs:
                name = str(info.get("Name") or "").lstrip("/")
                raise Denied(Reason.MAX_EXECS, (
                    f"{name} has {execs} exec instances, and a container may have {owner.limits.max_execs} "
                    "(created and not yet finished). Let some finish, or restart the container to clear them."))
        except BaseException:
            held.release()
            raise
        return Forward(target, body=json.dumps(body).encode(), held=held)

    def start(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
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
            owners = self._network_owners(starting)
            starts.check_networks(starting, by_rules_of, owners)
        except Denied:
            self._removed_if_auto_remove(starting)
            raise
        own = networks.user_network(by_rules_of)
        # Removed while the container was stopped: the engine takes a new network of the same name at the start.
        if own in owners and owners[own] is None:
            with self._locks.hold(by_rules_of.user):
                ensure_user_network(self.upstream, self._owner_of, by_rules_of)
        self._regrant_on_start(request.session, starting)
        return Forward(target)

    def _network_owners(self, info: dict[str, Any]) -> dict[str, str | None]:
        """The owner, now, of each named network a container joins ("" none, None missing), read the way a create
        body's are."""
        joined = {"HostConfig": {"NetworkMode": (info.get("HostConfig") or {}).get("NetworkMode")},
                  "NetworkingConfig": {"EndpointsConfig": (info.get("NetworkSettings") or {}).get("Networks")}}
        return network_owners(self._owner_of, networks.networks_of(joined))

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
        # Through the queue's pass, as a create is: not on slots reserved for those waiting.
        allocation = self._queue.obtain(session.caller.uid, owner, GpuRequest(devices=container.device_ids),
                                        wait_seconds=0, origin="start", client_gone=lambda: False)
        with self._locks.hold(owner):
            self.allocator.bind(allocation.id, container.id, container.name)

    def released_on_delete(self, status: int | None, info: dict[str, Any]) -> None:
        if status == 204:
            self.allocator.release_removed(str(info["Id"]))
            self.pins.release(((info.get("Config") or {}).get("Labels") or {}).get(labels.BIND_KEY) or "")

    def archive(self, request: Request, info: dict[str, Any], target: str) -> Outcome:
        """docker cp, either way: only where no host directory is mounted (the engine reads and writes those as
        root, past the permissions on the host), and what goes in is only the caller's own files."""
        caller = request.session.caller
        mounted = host_mounts(info)
        if mounted:  # admins too: to answer, the engine mounts the binds and makes missing mount points
            found_labels = (info.get("Config") or {}).get("Labels") or {}
            origin = records.original_bind_source
            shown = ", ".join(f"{m.get('Destination')} (from {origin(found_labels, m.get('Source'))})"
                              for m in mounted)
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
