"""A container create through the proxy: the allow-list and the policy, the caller's count and GPU grant, the
pinned bind sources, and the create itself, one at a time per user."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from ds01 import labels
from ds01.errors import Busy, Denied, Ds01Error
from ds01.gpus.allocator import Allocation, Allocator
from ds01.gpus.placement import Slot
from ds01.identity import nss
from ds01.names import DRY_RUN_HEADER, QUEUE_ID_HEADER
from ds01.proxy import allowlist, binds, bodies, devices, networks, policy, runas
from ds01.proxy.cgroups import CgroupParents
from ds01.proxy.http import Head
from ds01.proxy.interfaces import Callers, EngineCalls, Pinning
from ds01.proxy.outcomes import Deny, Forward, Outcome, Reply, Request
from ds01.proxy.ownership import ContainerOwners
from ds01.proxy.queue import JOB_ORIGIN, Queue
from ds01.proxy.userlocks import UserLocks
from ds01.reasons import Reason
from ds01.units import format_equivalents

CLIENT_HEADER_PREFIX = "ds01-container/"
_QUEUE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
JOB_WAIT_SECONDS = 10 * 365 * 86400  # a batch job waits until its turn, or until it is cancelled
OwnerOf = Callable[[str, str], tuple[dict[str, Any] | None, str | None]]  # (kind, name) -> (inspect, ds01.user)


@dataclasses.dataclass(frozen=True)
class JobTerms:
    """What a batch job's create (container run) adds to a user's create: its labels, and its GPU request's terms
    in the queue, where no connection waits for it."""

    labels: dict[str, str]
    queue_id: str
    runtime_seconds: float  # its time limit and grace: how long its grant holds the slots at the most
    joined_at: float  # when it was submitted, so that a restart or a requeue keeps its age
    cancelled: Callable[[], bool]


def network_owners(owner_of: OwnerOf, names: Iterable[str]) -> dict[str, str | None]:
    """The owner, now, of each named network: "" for one no user owns, None for one that does not exist."""
    owners: dict[str, str | None] = {}
    for name in names:
        found, owner = owner_of("network", name)
        owners[name] = None if found is None else (owner or "")
    return owners


def ensure_user_network(upstream: EngineCalls, owner_of: OwnerOf, caller: runas.Caller) -> None:
    """The caller's own network, made on first use and kept: the network their containers join by default. Called
    under the caller's lock, so that two creates do not make two networks of one name."""
    name = networks.user_network(caller)
    found, owner = owner_of("network", name)
    if found is None:
        made_labels = {labels.USER: caller.user, labels.UID: str(caller.uid)}
        status, made = upstream.call("POST", "/networks/create", body={
            "Name": name, "Driver": "bridge", "CheckDuplicate": True, "Labels": made_labels})
        if status != 201:
            raise Ds01Error(f"the engine answered {status} when creating your network {name}: {made}")
    elif owner != caller.user:
        raise Denied(Reason.NOT_OWNER, f"the network {name}, which your containers join, is not yours; ask an "
                                       "admin to remove it (docker network rm), then create again.")


def make_volume(upstream: EngineCalls, caller: runas.Caller, body: dict[str, Any]) -> dict[str, Any]:
    """A volume made as the caller's: labelled, and its top directory theirs (the engine makes it root's, and a
    container runs as its caller). The engine answers a create of an existing volume with that volume, so the
    answer's owner is checked: a volume someone else made in between is neither taken nor shown."""
    owned = {**(body.get("Labels") or {}), labels.USER: caller.user, labels.UID: str(caller.uid)}
    status, made = upstream.call("POST", "/volumes/create", body={**body, "Labels": owned})
    if status != 201 or not isinstance(made, dict):
        raise Ds01Error(f"the engine answered {status} when creating the volume {body.get('Name')}: {made}")
    name = str(made.get("Name") or "")
    if (made.get("Labels") or {}).get(labels.USER) != caller.user:
        raise Denied(Reason.NAME_TAKEN, f"a volume named {name} exists already; pick another name.")
    mountpoint = str(made.get("Mountpoint") or "")
    if mountpoint:
        os.chown(mountpoint, caller.uid, caller.gid, follow_symlinks=False)
    return made


def queue_id(head: Head) -> str | None:
    """The id the container CLI gives a request that may wait, to follow it in the queue and withdraw it."""
    given = head.get(QUEUE_ID_HEADER)
    if given is None:
        return None
    if not _QUEUE_ID.fullmatch(given):
        raise Denied(Reason.BAD_REQUEST, f"the {QUEUE_ID_HEADER} header must be 8 to 64 letters, digits, - or _, "
                                         f"not {given[:80]!r}")
    return given


def client_type(head: Head, body: dict[str, Any]) -> str:
    body_labels = bodies.field(body, "Labels") or {}
    if (head.get("User-Agent") or "").startswith(CLIENT_HEADER_PREFIX):
        return "container"
    if "com.docker.compose.project" in body_labels:
        return "compose"
    if any(key.startswith("devcontainer.") for key in body_labels):
        return "devcontainer"
    return "docker"


@dataclasses.dataclass
class ContainerCreates:
    sessions: Callers
    upstream: EngineCalls
    allocator: Allocator
    slots: Callable[[], list[Slot]]
    cgroups: CgroupParents
    engine_sockets: frozenset[str]
    host_cpus: float
    pins: Pinning
    locks: UserLocks
    log_driver: str
    owner_of: OwnerOf
    find_image: Callable[[runas.Caller, str], dict[str, Any] | None]  # None: missing; another's raises
    instance: str  # stamped as ds01.instance
    clock: Callable[[], datetime]  # for ds01.created_at
    queue: Queue
    owners: ContainerOwners

    def _facts(self, caller: runas.Caller, body: dict[str, Any], refs: policy.References,
               opened: dict[str, binds.OpenedSource]) -> policy.Facts:
        paths = {path: source.resolved for path, source in opened.items()}
        owners = {ref: self.owner_of("container", ref)[1] for ref in refs.containers}
        volumes: dict[str, str | None] = {}
        missing: set[str] = set()
        for name in refs.volumes:
            found, owner = self.owner_of("volume", name)
            volumes[name] = owner
            if found is None:
                missing.add(name)
        networks = network_owners(self.owner_of, refs.networks)
        # Always inspected: its own labels and Env reach the container unless the body overrides them.
        name = str(bodies.field(body, "Image") or "")
        image = self.find_image(caller, name) if name else None  # none named or missing: the engine refuses it
        image_config = (image or {}).get("Config") or {}
        return policy.Facts(paths, owners, volumes, self.engine_sockets, str(image_config.get("WorkingDir") or ""),
                            tuple(image_config.get("Volumes") or {}), image_labels=image_config.get("Labels") or {},
                            image_env=tuple(image_config.get("Env") or ()), log_driver=self.log_driver,
                            missing_volumes=frozenset(missing),
                            network_owners=networks)

    def _count_containers(self, user: str) -> int:
        query = {"all": "1", "filters": json.dumps({"label": [f"{labels.USER}={user}"]})}
        status, listed = self.upstream.call("GET", "/containers/json", query=query)
        if status != 200 or not isinstance(listed, list):
            raise Ds01Error(f"the engine answered {status} when counting containers: {listed}")
        return len(self.owners.mine(listed, user))  # not another user's build steps, whatever their labels say

    def _check_count(self, caller: runas.Caller) -> None:
        here = self._count_containers(caller.user)
        elsewhere = self.allocator.store.other_containers(caller.user)  # the fleet's other nodes: 0 without one
        count = here + elsewhere
        if count >= caller.limits.max_containers:
            where = f" ({here} here, {elsewhere} on the fleet's other nodes)" if elsewhere else ""
            raise Denied(Reason.MAX_CONTAINERS, (
                f"you have {count} containers{where} and may have {caller.limits.max_containers}. Remove one "
                "(container remove NAME) first."))

    def _check_published_ports(self, caller: runas.Caller, publishing: int) -> None:
        query = {"all": "1", "filters": json.dumps({"label": [f"{labels.USER}={caller.user}"]})}
        status, listed = self.upstream.call("GET", "/containers/json", query=query)
        if status != 200 or not isinstance(listed, list):
            raise Ds01Error(f"the engine answered {status} when listing containers: {listed}")
        published = 0
        for summary in self.owners.mine(listed, caller.user):  # stopped ones too: theirs again at the next start
            found = self.upstream.inspect("container", str(summary.get("Id")))
            published += networks.published_ports((found or {}).get("HostConfig") or {})
        limit = caller.limits.max_published_ports
        if published + publishing > limit:
            raise Denied(Reason.MAX_PUBLISHED_PORTS, (
                f"your containers publish {published} host ports and this one would add {publishing}; you may "
                f"publish {limit}. Remove a container that publishes ports, or publish fewer."))

    def _ensure_user_network(self, caller: runas.Caller) -> None:
        ensure_user_network(self.upstream, self.owner_of, caller)

    def create(self, request: Request, job: JobTerms | None = None) -> Outcome:
        caller = request.session.caller
        policy.check_object_name(caller, "container", dict(parse_qsl(request.query)).get("name") or "")
        caller = policy.within_host(caller, self.host_cpus)
        body = allowlist.canonical(bodies.parse_json_object(request.read_body(), "container create body"),
                               "ContainerConfig")
        refs = policy.references(body)
        with binds.opened(refs.bind_sources, caller) as opened:
            return self._create_checked(request, caller, body, refs, opened, job=job)

    def _create_checked(self, request: Request, caller: runas.Caller, body: dict[str, Any],
                        refs: policy.References, opened: dict[str, binds.OpenedSource], *,
                        job: JobTerms | None) -> Outcome:
        head, query = request.head, request.query
        config = self.sessions.current_config()
        facts = self._facts(caller, body, refs, opened)
        plan = policy.plan_create(
            caller, body, facts, config.security, config.networks.reserved_ports,
            cgroup_parent=self.cgroups.name(caller.user),
            client_type=JOB_ORIGIN if job is not None else client_type(head, body),
            created_at=self.clock().isoformat(timespec="seconds"),
            gpu_gid=nss.group_id(config.bare_metal.group))
        plan.body["Labels"][labels.INSTANCE] = self.instance
        if job is not None:
            plan.body["Labels"].update(job.labels)
        dry_run = (head.get(DRY_RUN_HEADER) or "").lower() in ("1", "true")
        key = uuid.uuid4().hex
        # Granted by the queue, waiting there if the request may and must: before the user's lock, which their
        # other requests need meanwhile.
        allocation = None if dry_run else self._queued_grant(request, caller, plan, body, job)
        # Count and create one at a time per user: the lock goes with the Forward, and is released once the
        # engine has answered the create (or here, on any way out before it is sent).
        try:
            held = self.locks.hold(caller.user)
        except BaseException:
            if allocation is not None:
                self.allocator.release(allocation.id)
            raise
        try:
            self._check_count(caller)
            if plan.gpu_request is not None and dry_run and job is not None:
                self.queue.check_grantable(caller.uid, caller.user, plan.gpu_request)  # a job waits for the rest
            elif plan.gpu_request is not None and dry_run:
                allocation = self.allocator.preview(caller.user, caller.uid, caller.limits, plan.gpu_request,
                                                    slots=self.slots())
            if allocation is not None:
                devices.apply_grant(plan.body, allocation.slots, allocation.id, str(allocation.gpu_equivalents))
            publishing = networks.published_ports(plan.body["HostConfig"])
            if publishing:
                self._check_published_ports(caller, publishing)
            if dry_run:
                held.release()
                return self._dry_run_reply(plan, allocation)
            self._prepare(caller, plan, facts, opened, key)
        except BaseException:
            try:
                self.pins.release(key)
                if allocation is not None and not dry_run:
                    self.allocator.release(allocation.id)
            finally:
                held.release()
            raise
        after = self._settler(allocation, key, dict(parse_qsl(query)).get("name"))
        return Forward(request.target, body=json.dumps(plan.body).encode(), after=after, warnings=plan.notes,
                       held=held)

    def _settler(self, allocation: Allocation | None, key: str,
                 name: str | None) -> Callable[[int | None, bytes], None]:
        """What follows the engine's answer to the create: the grant bound to the container, or given back."""
        def after(status: int | None, response: bytes) -> None:
            if status != 201:
                self.pins.release(key)
            if allocation is None:
                return
            if status == 201:
                self._bind_or_undo(allocation, str(json.loads(response)["Id"]), name)
            else:
                self.allocator.release(allocation.id)
        return after

    def _queued_grant(self, request: Request, caller: runas.Caller, plan: policy.CreatePlan,
                      body: dict[str, Any], job: JobTerms | None) -> Allocation | None:
        """The create's GPU slots from the queue (None for a create without GPUs)."""
        if plan.gpu_request is None:
            return None
        if job is not None:
            return self.queue.obtain(caller.uid, caller.user, plan.gpu_request, wait_seconds=JOB_WAIT_SECONDS,
                                     origin=JOB_ORIGIN, client_gone=job.cancelled, wait_id=job.queue_id,
                                     runtime_seconds=job.runtime_seconds, joined_at=job.joined_at)
        if plan.wait_seconds:
            self._check_count(caller)  # before a wait that would end in this refusal
        return self.queue.obtain(caller.uid, caller.user, plan.gpu_request, wait_seconds=plan.wait_seconds,
                                 origin=client_type(request.head, body), client_gone=request.client_gone,
                                 wait_id=queue_id(request.head))

    def _prepare(self, caller: runas.Caller, plan: policy.CreatePlan, facts: policy.Facts,
                 opened: dict[str, binds.OpenedSource], key: str) -> None:
        """What the container needs before the engine makes it: the caller's cgroup parent and network, the
        volumes it names that are new, its bind sources pinned."""
        self.cgroups.ensure(caller.user, caller.limits.user_cpus, caller.limits.user_memory_bytes)
        if plan.joins_user_network:
            self._ensure_user_network(caller)
        for volume in sorted(facts.missing_volumes):
            self._make_volume(caller, volume)
        if plan.bind_sources:
            staged = {source: str(self.pins.pin(key, index, opened[source]))
                      for index, source in enumerate(plan.bind_sources)}
            policy.pin_bind_sources(plan.body, staged, key,
                                    [opened[source].resolved.real for source in plan.bind_sources])

    def _bind_or_undo(self, allocation: Allocation, container_id: str, name: str | None) -> None:
        """Bind the grant to the container the engine made. If the grant cannot be recorded, the container goes
        again: one that holds GPUs its reservation does not name would see them handed out at the reservation's
        TTL."""
        try:
            self.allocator.bind(allocation.id, container_id, name)
        except (Ds01Error, OSError) as exc:
            self.upstream.call("DELETE", f"/containers/{container_id}", query={"force": "1"})
            with contextlib.suppress(Ds01Error, OSError):  # else the reservation lapses at its TTL, unused
                self.allocator.release(allocation.id)
            failure = Busy if isinstance(exc, Busy) else Ds01Error
            raise failure(f"the GPUs of the new container could not be recorded ({exc}), so it was removed again "
                          "and nothing was created. Try again.") from exc

    def _make_volume(self, caller: runas.Caller, name: str) -> None:
        """A named volume the create mounts and nobody has yet, made as the caller's (the engine would make it
        without an owner)."""
        make_volume(self.upstream, caller, {"Name": name})

    def _dry_run_reply(self, plan: policy.CreatePlan, allocation: Allocation | None) -> Outcome:
        image = str(bodies.field(plan.body, "Image") or "")
        if image and self.upstream.inspect("image", image) is None:
            return Deny(Reason.IMAGE_MISSING,
                        f"image {image} is not on this host; pull it or pick another.", status=404)
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
