"""The `etcd` allocation store, shared by the fleet's nodes. Under the fleet's prefix:

- `allocations/ID`: one allocation (JSON); a reservation's key carries a lease of its TTL, a bound one none, so a
  node cut off keeps its running containers counted;
- `slots/NODE/UUID`: the allocation holding that slot, with the same lease: a slot is taken by creating its key;
- `users/USER`: the user's decayed GPU-equivalent-hours, as of a time, added to on every release; every change
  to the user's allocations rewrites it, so two nodes' grants to one user conflict instead of both passing;
- `alive/NODE` and `owners/NODE`: which instance holds the node's name (ds01.fleet.nodes claims it): only that
  one reconciles the node's allocations, as another server's engine would show none of its containers.

A step is one read of the prefix and one transaction on what it read: the revisions of every key it changes,
the absence of every slot it takes, and the revision of every user whose allocations change. A conflict
reruns the step on a new read, with backoff; nothing is locked. No answer from etcd refuses the change
(store_unavailable): ds01 never grants from an old view."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import filelock

from ds01.errors import Busy, Denied, Ds01Error
from ds01.etcd import Compare, Delete, Entry, Etcd, Put, StoreRefused, StoreUnavailable
from ds01.fleet.names import confirm_name
from ds01.gpus.allocations import Allocation
from ds01.gpus.filestore import take_turn
from ds01.reasons import Reason

_T = TypeVar("_T")
Step = Callable[[list[Allocation], float], tuple[_T, list[Allocation] | None]]
MAX_ATTEMPTS = 50
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: compares, and changes, per transaction
TURN_SECONDS = 5.0
LEASE_SLACK_SECONDS = 30
QUIET_SECONDS = 10.0  # after no member answered, what needs no GPU does not ask etcd again for this long
ALLOCATIONS, SLOTS, USERS, NODES = "allocations/", "slots/", "users/", "nodes/"


@dataclass(frozen=True)
class Usage:
    hours: float  # decayed GPU-equivalent-hours as of `at`
    at: float

    def at_time(self, now: float, half_life_seconds: float) -> float:
        return self.hours * math.exp(-math.log(2) * max(0.0, now - self.at) / half_life_seconds)


def released_hours(allocation: Allocation, now: float, half_life_seconds: float) -> float:
    """What holding `allocation` from its creation until `now` adds to its user's decayed use at `now`."""
    rate = math.log(2) / half_life_seconds
    held = max(0.0, now - allocation.created_at)
    return float(allocation.gpu_equivalents) * (1 - math.exp(-rate * held)) / rate / 3600


def unavailable(problem: StoreUnavailable) -> Denied:
    return Denied(Reason.STORE_UNAVAILABLE, (
        f"ds01 cannot reach the fleet's etcd store, so this node grants no GPUs now: it never grants from an old "
        f"view of who holds what ({problem}). Running containers are untouched and containers without GPUs can "
        "still be made; try again in a minute, and tell an admin if it lasts (ds01 fleet status)."))


@dataclass
class _Read:
    allocations: dict[str, tuple[Allocation, Entry]]
    users: dict[str, tuple[Usage, Entry]]
    raw: dict[str, Entry]  # every key read, as read


@dataclass
class _Txn:
    """One transaction as a step's changes build it."""

    compares: list[Compare] = field(default_factory=list)
    changes: list[Put | Delete] = field(default_factory=list)
    users: dict[str, float] = field(default_factory=dict)  # user -> hours their releases add
    lapsed: list[tuple[Allocation, Entry]] = field(default_factory=list)  # other nodes' reservations past TTL


class EtcdStore:
    contended = True  # optimistic: a conflicting change is run again on a new read
    change_budget: int | None = MAX_TXN_OPS - 8  # keys to spare, for other nodes' lapsed reservations

    def __init__(self, etcd: Etcd, prefix: str, node: str, half_life_seconds: Callable[[], float], *,
                 clock: Callable[[], float] = time.time, turns_file: Path | None = None, instance: str = "") -> None:
        self.node = node
        self.instance = instance  # node_instance; "" (a benchmark's, a test's store): the name is not checked
        # This node's own changes take turns (a file lock in its state dir): they would only conflict with each
        # other over its slots. Correctness rests on the transactions alone; other nodes never wait for it.
        self._turns = filelock.FileLock(turns_file) if turns_file is not None else None
        self.etcd = etcd
        self.prefix = prefix
        self._half_life = half_life_seconds
        self._clock = clock
        self.lock_hold_seconds: deque[float] = deque(maxlen=100_000)  # read to commit, per successful step
        self.retries = 0  # conflicts: a step run again on a new read
        self.up = True  # the last call answered
        self._counter = threading.Lock()
        self._shared_lease: tuple[int, float] = (0, 0.0)  # (lease id, when it lapses on the monotonic clock)
        self._cache: _Read | None = None  # the keys as this process last read or wrote them
        self._cache_lock = threading.Lock()
        # The proxy sets reconcile_first: once the store failed it, no reservation is made until the node has
        # reconciled its slots with its engine (settled()), as its view of them may be stale, or forgotten.
        self.reconcile_first = False
        self.unsettled = False
        self._generation = 0  # of unsettle(): a reconcile settles only what was unsettled before it began

    def _down(self, problem: StoreUnavailable) -> Denied:
        self.up = False
        if not isinstance(problem, StoreRefused):  # a refused change was not made: the view is still true
            self.unsettle()
        return unavailable(problem)

    def unsettle(self) -> int:
        """No reservation until a reconcile that starts after this; the generation to hand to settled()."""
        with self._counter:
            if self.reconcile_first:
                self._generation += 1
                self.unsettled = True
            return self._generation

    @property
    def generation(self) -> int:
        with self._counter:
            return self._generation

    def settled(self, generation: int) -> None:
        """A reconcile that began at `generation` is done with the store answering: reservations may be made
        again, unless the store failed again since."""
        with self._counter:
            if generation == self._generation:
                self.unsettled = False

    def confirm_owner(self) -> None:
        """Refuse to reconcile under a node name another instance holds (ds01.fleet.nodes claims it)."""
        if not self.instance:
            return
        try:
            confirm_name(self.etcd, self.prefix, self.node, self.instance, undone="Nothing was reconciled.")
        except StoreUnavailable as problem:
            raise self._down(problem) from problem

    # --- reading ----------------------------------------------------------------------------------------------

    def _read(self) -> _Read:
        try:
            _, entries = self.etcd.read_prefix(self.prefix)
        except StoreUnavailable as problem:
            raise self._down(problem) from problem
        self.up = True
        return self._parse(entries)

    def _parse(self, entries: Iterable[Entry]) -> _Read:
        found = _Read({}, {}, {entry.key: entry for entry in entries})
        for entry in found.raw.values():
            key = entry.key.removeprefix(self.prefix)
            try:
                if key.startswith(ALLOCATIONS):
                    allocation = Allocation.from_json(json.loads(entry.value))
                    found.allocations[allocation.id] = (allocation, entry)
                elif key.startswith(USERS):
                    raw = json.loads(entry.value)
                    found.users[key.removeprefix(USERS)] = (Usage(float(raw["hours"]), float(raw["at"])), entry)
            except (KeyError, TypeError, ValueError) as exc:  # written by hand, or by another program
                raise Denied(Reason.STORE_UNAVAILABLE, (
                    f"the fleet's etcd store holds key {entry.key}, which is not a ds01 record ({exc}), so no GPU "
                    "is granted: who holds what cannot be read whole. Nothing was changed. An admin moves it aside "
                    "(etcdctl get, then del) and runs ds01 reconcile on its node.")) from exc
        return found

    def _view(self, allocation: Allocation) -> Allocation:
        """As a step sees it: another node's slots named NODE/UUID."""
        if allocation.node == self.node:
            return allocation
        return replace(allocation, slots=tuple(f"{allocation.node}/{slot}" for slot in allocation.slots))

    # --- a step -----------------------------------------------------------------------------------------------

    def run(self, step: Step[_T], write: bool) -> _T:
        if self._turns is None or not write:
            return self._run(step, write)
        if not take_turn(self._turns, TURN_SECONDS):
            return self._run(step, write)  # a stuck neighbour does not stop this node: the transaction decides
        try:
            return self._run(step, write)
        finally:
            self._turns.release()

    def _run(self, step: Step[_T], write: bool) -> _T:
        """A change starts from what this process last knew (its own commits included), committed against those
        revisions; a conflict's transaction brings back the keys as they are, for the next try. Only a grant is
        made that way: a refusal, or a step that changes nothing, is judged again on a fresh read."""
        delay = 0.002
        with self._cache_lock:
            read = self._cache if write else None
        for _attempt in range(MAX_ATTEMPTS):
            fresh = read is None
            if read is None:
                read = self._read()
            began = time.perf_counter()
            views = {a.id: self._view(a) for a, _ in read.allocations.values()}
            now = self._clock()
            try:
                result, changed = step(list(views.values()), now)
            except Denied:
                if fresh:
                    raise
                read = None
                continue
            compares, changes = self._changes(read, views, changed, now) if changed is not None and write \
                else ([], [])
            if not changes:
                if fresh:
                    self._remember(read)
                    return result
                read = None
                continue
            if max(len(compares), len(changes)) > MAX_TXN_OPS:  # the allocator keeps its steps within this
                raise Ds01Error(f"an allocation change of {len(changes)} keys is more than one etcd transaction "
                                f"may hold ({MAX_TXN_OPS}); nothing was changed. This is a bug in ds01: report it.")
            try:
                committed = self.etcd.commit(compares, changes, reread=self.prefix)
            except StoreUnavailable as problem:
                raise self._down(problem) from problem
            self.up = True
            if committed.succeeded:
                self.lock_hold_seconds.append(time.perf_counter() - began)
                self._remember(self._parse(_applied(read.raw, changes, committed.revision)))
                return result
            with self._counter:
                self.retries += 1
            read = self._parse(committed.found or [])
            time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, 0.1)
        raise Busy(f"the fleet's allocations kept changing under this request ({MAX_ATTEMPTS} tries); nothing was "
                   "changed. Try again.")

    def _remember(self, read: _Read) -> None:
        with self._cache_lock:
            self._cache = read

    def _changes(self, read: _Read, views: dict[str, Allocation], changed: list[Allocation],
                 now: float) -> tuple[list[Compare], list[Put | Delete]]:
        after = {a.id: a for a in changed}
        txn = _Txn()
        for allocation_id, (before, entry) in read.allocations.items():
            if after.get(allocation_id) != views[allocation_id]:
                self._change(txn, before, entry, after.get(allocation_id), now)
        lease = 0
        for allocation_id, added in after.items():
            if allocation_id in read.allocations:
                continue
            if added.expires_at is not None and lease == 0:
                lease = self._lease(added, now)
            self._add(txn, read, added, lease if added.expires_at is not None else 0)
        # The step did not count these: were one adopted meanwhile by its node, the user's count would be wrong.
        # As many as the transaction holds beside the users' compares: a dead node's are gone with its lease.
        room = MAX_TXN_OPS - len(txn.compares) - len(txn.users)
        txn.compares += [Compare(entry.key, entry.mod_revision) for before, entry in txn.lapsed
                         if before.user in txn.users][:max(0, room)]
        for user, hours in txn.users.items():
            key = f"{self.prefix}{USERS}{user}"
            known = read.users.get(user)
            txn.compares.append(Compare(key, known[1].mod_revision if known is not None else 0))
            total = (known[0].at_time(now, self._half_life()) if known is not None else 0.0) + hours
            txn.changes.append(Put(key, json.dumps({"hours": total, "at": now}).encode()))
        return txn.compares, txn.changes

    def _change(self, txn: _Txn, before: Allocation, entry: Entry, now_as: Allocation | None, now: float) -> None:
        """An allocation read that the step changed (now_as) or removed (None)."""
        if before.node != self.node and now_as is None and before.expires_at is not None \
                and before.expires_at <= now:
            txn.lapsed.append((before, entry))  # no step counts it, and its lease removes it
            return
        if before.node != self.node:
            raise Denied(Reason.NOT_OWNER, (
                f"allocation {before.id} is node {before.node}'s; change it on that node, or remove a node that is "
                f"gone for good with `ds01 fleet forget {before.node}`."))
        txn.compares.append(Compare(entry.key, entry.mod_revision))
        if now_as is None:
            txn.changes.append(Delete(entry.key))
            txn.changes.extend(Delete(self._slot_key(slot)) for slot in before.slots)
            used = before.expires_at is None or before.expires_at > now  # an expired one was never used
            txn.users[before.user] = txn.users.get(before.user, 0.0) + (
                released_hours(before, now, self._half_life()) if used else 0.0)
            return
        # A bind drops the lease (a bound allocation outlives its node's contact); a reservation keeps its own.
        leased = entry.lease if now_as.expires_at is not None else 0
        txn.changes.append(Put(entry.key, _encode(now_as), leased))
        txn.changes.extend(Put(self._slot_key(slot), before.id.encode(), leased) for slot in before.slots)
        txn.users.setdefault(before.user, 0.0)  # a bind, or an adoption that counts an expired one again

    def _add(self, txn: _Txn, read: _Read, added: Allocation, leased: int) -> None:
        if added.node != self.node:
            raise Denied(Reason.NOT_OWNER, f"allocation {added.id} names node {added.node}, not this node")
        if added.expires_at is not None and self.unsettled:
            raise Denied(Reason.STORE_UNAVAILABLE, (
                "the fleet's etcd store answers again after it did not; this node reconciles its GPUs with its "
                "engine before it grants any (within a third of fleet.node_ttl). Try again in a few seconds."))
        key = f"{self.prefix}{ALLOCATIONS}{added.id}"
        txn.compares.append(Compare(key, 0))
        txn.changes.append(Put(key, _encode(added), leased))
        for slot in added.slots:
            slot_key = self._slot_key(slot)
            if Delete(slot_key) in txn.changes:  # freed by this same change (an expired reservation's): one put,
                txn.changes.remove(Delete(slot_key))  # as etcd takes no transaction naming a key twice
                txn.compares.append(Compare(slot_key, read.raw[slot_key].mod_revision if slot_key in read.raw else 0))
            else:
                txn.compares.append(Compare(slot_key, 0))
            txn.changes.append(Put(slot_key, added.id.encode(), leased))
        txn.users.setdefault(added.user, 0.0)

    def _lease(self, allocation: Allocation, now: float) -> int:
        """A lease that outlasts the reservation: shared by this node's reservations for up to LEASE_SLACK_SECONDS,
        so a grant costs no round trip of its own for it. It only collects what a dead node left: every step
        drops a reservation by its expires_at, lease or not."""
        needed = (allocation.expires_at or now) - now
        lease, lapses = self._shared_lease
        if lease and lapses - time.monotonic() >= needed + 1:
            return lease
        ttl = math.ceil(needed) + LEASE_SLACK_SECONDS
        try:
            lease = self.etcd.grant_lease(ttl)
        except StoreUnavailable as problem:
            raise self._down(problem) from problem
        self._shared_lease = (lease, time.monotonic() + ttl)
        return lease

    def _slot_key(self, slot: str) -> str:
        return f"{self.prefix}{SLOTS}{self.node}/{slot}"

    # --- what else the allocator asks -------------------------------------------------------------------------

    def stamp(self) -> object:
        """The cluster's revision; None while it does not answer (no pass runs on that), a new one once it does."""
        try:
            revision = self.etcd.revision(self.prefix)
        except StoreUnavailable as problem:
            self._down(problem)
            return None
        self.up = True
        return revision

    def peek(self) -> list[Allocation]:
        return [allocation for allocation, _ in self._read().allocations.values()]

    def past_usage(self, now: float, half_life_seconds: float) -> dict[str, float] | None:
        read = self._read()
        return {user: usage.at_time(now, half_life_seconds) for user, (usage, _) in read.users.items()}

    def other_containers(self, user: str) -> int:
        """From the other nodes' liveness records (ds01.fleet.nodes writes them): their count as of their last
        renewal; 0 while the store does not answer, so containers without GPUs are still made. A record that is
        not ds01's counts nothing here; `ds01 fleet status` and `ds01 doctor` name it."""
        if self.etcd.failed_within(QUIET_SECONDS):
            return 0
        try:
            _, entries = self.etcd.read_prefix(f"{self.prefix}{NODES}")
        except StoreUnavailable as problem:
            self._down(problem)
            return 0
        self.up = True
        total = 0
        for entry in entries:
            if entry.key.removeprefix(f"{self.prefix}{NODES}") == self.node:
                continue
            try:
                total += int((json.loads(entry.value).get("containers") or {}).get(user, 0))
            except (AttributeError, TypeError, ValueError):
                continue
        return total


def _encode(allocation: Allocation) -> bytes:
    return json.dumps(allocation.to_json(), sort_keys=True).encode()


def _applied(raw: dict[str, Entry], changes: Iterable[Put | Delete], revision: int) -> list[Entry]:
    """The keys after a transaction that committed at `revision`: each put has that mod_revision."""
    after = dict(raw)
    for change in changes:
        if isinstance(change, Put):
            after[change.key] = Entry(change.key, change.value, revision, change.lease)
        elif change.prefix:
            for key in [key for key in after if key.startswith(change.key)]:
                del after[key]
        else:
            after.pop(change.key, None)
    return list(after.values())
