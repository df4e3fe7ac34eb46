"""The queue of GPU requests that wait, inside the proxy service: who waits, the scheduling passes that grant
them, and the state file others read (the exporter; the next start-up).

A create that asks to wait and cannot be granted at once joins the queue and blocks in its connection's thread.
A pass runs under the allocator's lock (`Allocator.grant`): it places every waiter (`ds01.gpus.scheduler`) and
reserves the slots of those placed now, then tells them; a waiter is told only once its slots are its own. A
create that does not wait runs the same pass with itself added, so it cannot take slots reserved for those
ahead of it. Passes run when the allocations change (a release, by any process), when a reservation lapses, when
the config changes, when the janitor sees a container exit (`kick`), and every BACKSTOP_SECONDS.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ds01 import eventlog
from ds01.config import Config, LimitValues
from ds01.errors import Denied, Ds01Error
from ds01.eventlog.reader import EventLog
from ds01.eventlog.types import EventType
from ds01.gpus import queuestate, scheduler, usage
from ds01.gpus.allocator import Allocation, Allocator, Grant
from ds01.gpus.placement import GpuRequest, Slot
from ds01.gpus.queuestate import Entry
from ds01.identity import nss
from ds01.proxy.interfaces import Callers
from ds01.proxy.queuewords import refusal, timed_out
from ds01.reasons import Reason

BACKSTOP_SECONDS = 30.0
POLL_SECONDS = 0.25  # how often the allocations' file is looked at, and a waiter's client
HISTORY_SECONDS = 60.0  # the event log's releases are read again after this long
# A holder's slots are free by its deadline: max_runtime from its start, then cleanup's next run (its timer's
# period) to stop it, then gpu_hold_after_stop before the GPUs go back.
RECLAIM_MARGIN_SECONDS = 300
ClientGone = Callable[[], bool]
JOB_ORIGIN = "job"  # a batch job's request, which no connection waits for


class WaitEnded(Ds01Error):
    """The waiting request's client went away: nothing is answered."""


def runtime_of(limits: LimitValues) -> float:
    """How long a grant to someone of these limits may hold its slots, at the most."""
    if limits.max_runtime_seconds is None:
        return scheduler.FOREVER
    return float(limits.max_runtime_seconds + limits.gpu_hold_after_stop_seconds + RECLAIM_MARGIN_SECONDS)


class _Known:
    """What a pass needs to know of the users before it takes the allocator's lock (reading the log and the
    directory under it would hold it too long): each user's limits, share and group priority."""

    def __init__(self, config: Config, slots: list[Slot], history: list[usage.Held],
                 past: dict[str, float]) -> None:
        self.config = config
        self.slots = slots
        self.history = history  # the file store's: releases in this node's event log
        self.past = past  # the etcd store's: each user's decayed use of the whole fleet, from its releases
        self.limits: dict[str, LimitValues] = {}
        self.shares: dict[str, float] = {}
        self.priorities: dict[str, float] = {}

    def learn(self, user: str, group: str, limits: LimitValues) -> None:
        rule = next((g for g in self.config.groups if g.name == group), None)
        self.limits[user] = limits
        self.shares[user] = rule.share if rule is not None else 1.0
        self.priorities[user] = rule.priority if rule is not None else 0.0

    def waiter(self, entry: Entry) -> scheduler.Waiter:
        limits = self.limits.get(entry.user, self.config.defaults)
        runtime = runtime_of(limits) if entry.runtime_seconds is None else min(runtime_of(limits),
                                                                               entry.runtime_seconds)
        return scheduler.Waiter(entry.id, entry.user, entry.uid, limits, entry.request, entry.joined_at,
                                runtime, self.shares.get(entry.user, 1.0),
                                self.priorities.get(entry.user, 0.0))


class Queue:
    def __init__(self, state_dir: Path, allocator: Allocator, slots: Callable[[], list[Slot]], sessions: Callers,
                 log: EventLog, *, clock: Callable[[], float] = time.time) -> None:
        self._file = state_dir / queuestate.STATE_FILE
        self._allocator = allocator
        self._slots = slots
        self._sessions = sessions
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._saving = threading.Lock()
        self._kicked = threading.Event()
        self._entries: dict[str, Entry] = {}
        self._history: tuple[float, list[usage.Held], dict[str, float]] = (-math.inf, [], {})
        self._fairshare: dict[str, tuple[float, float]] = {}
        self._waits = queuestate.WaitHistogram()
        self._next_expiry = math.inf
        # When a grant's slots are free at the latest, where something knows better than its holder's
        # max_runtime (a batch job's time limit); None: it does not.
        self.deadline_of: Callable[[Allocation], float | None] = lambda allocation: None

    def restore(self) -> None:
        """At start-up, before serving: the waiters of the last run had connections, and those died with it, so
        each leaves (a grant made just before is a reservation that lapses at its TTL)."""
        restored = queuestate.read(self._file)
        self._waits = restored.waits  # the histogram goes on across restarts, as a counter does
        for waiting in restored.waiting:
            if waiting.origin == JOB_ORIGIN:
                continue  # a batch job's request: the job runner asks again, under the same id
            eventlog.emit(EventType.QUEUE_LEAVE, source="proxy", user=waiting.user, queue_id=waiting.id,
                          reason="disconnected", waited_seconds=round(self._clock() - waiting.joined_at, 3),
                          restarted=True)
        self._save()

    # --- a create's request ----------------------------------------------------------------------------------

    def obtain(self, caller_uid: int, user: str, request: GpuRequest, *, wait_seconds: float, origin: str,
               client_gone: ClientGone, wait_id: str | None = None, runtime_seconds: float | None = None,
               joined_at: float | None = None) -> Allocation:
        """Slots for the request: at once when a pass with it added grants it; else, when it may wait, once a
        pass does. Raises Denied (capacity or quota with how to wait, wait_timeout, wait_cancelled, or what can
        never be granted) or WaitEnded."""
        now = self._clock()
        entry = Entry(wait_id or f"q-{uuid.uuid4().hex[:12]}", user, caller_uid, request, origin,
                      now if joined_at is None else joined_at, now + wait_seconds, runtime_seconds=runtime_seconds)
        known = self._known([entry])
        newcomer = known.waiter(entry)
        entry.needed = float(queuestate.needed_equivalents(request, newcomer.limits, known.slots))
        _check_grantable(known, newcomer)
        placement, granted = self._pass(known, newcomer)
        if entry.id in granted:
            return granted[entry.id]
        if placement is None or wait_seconds <= 0:
            raise refusal(placement, origin)
        entry.placement = placement
        with self._lock:
            if entry.id in self._entries:
                raise Denied(Reason.BAD_REQUEST, f"a request with the queue id {entry.id} waits already; give each "
                                                 "request its own id")
            self._entries[entry.id] = entry
        eventlog.emit(EventType.QUEUE_JOIN, source="proxy", user=user, queue_id=entry.id, origin=origin,
                      kind=entry.kind, wait_seconds=round(wait_seconds), position=placement.position,
                      waits_for=placement.waits_for)
        with self._waiting(entry):
            self._save()
            self.kick()
            return self._await(entry, client_gone)

    def check_grantable(self, caller_uid: int, user: str, request: GpuRequest) -> None:
        """Denied for what could never be granted (a batch job's check before it is queued)."""
        now = self._clock()
        entry = Entry("check", user, caller_uid, request, JOB_ORIGIN, now, now)
        known = self._known([entry])
        _check_grantable(known, known.waiter(entry))

    def _await(self, entry: Entry, client_gone: ClientGone) -> Allocation:
        while True:
            with self._changed:
                self._changed.wait(POLL_SECONDS)
                allocation, denied, cancelled = entry.allocation, entry.denied, entry.cancelled
            if allocation is not None:
                return allocation
            if denied is not None:
                self._leave(entry, "denied", message=denied.message)
                raise denied
            if cancelled:
                self._leave(entry, "cancelled")
                raise Denied(Reason.WAIT_CANCELLED, "the request was withdrawn from the queue; nothing was made.")
            if client_gone():
                self._leave(entry, "disconnected")
                raise WaitEnded("the client went away while its request waited")
            if self._clock() >= entry.wait_until:
                self._leave(entry, "timeout")
                raise timed_out(entry)

    @contextmanager
    def _waiting(self, entry: Entry) -> Iterator[None]:
        """However the wait ends, the entry is out of the queue after it; an error no branch saw is a leave."""
        try:
            yield
        finally:
            with self._lock:
                present = self._entries.pop(entry.id, None)
            if present is not None and present.allocation is None:
                self._leave(present, "disconnected")
            self._save()

    def cancel(self, user: str, wait_id: str, *, admin: bool = False) -> bool:
        """Withdraw a waiting request (the CLI's Ctrl-C); whether the caller had one by that id."""
        with self._changed:
            entry = self._entries.get(wait_id)
            if entry is None or (entry.user != user and not admin):
                return False
            entry.cancelled = True
            self._changed.notify_all()
        return True

    def _leave(self, entry: Entry, reason: str, **details: object) -> None:
        """The entry leaves ungranted: a reservation a pass made for it meanwhile goes back."""
        with self._lock:
            self._entries.pop(entry.id, None)
            allocation, entry.allocation = entry.allocation, None
        if allocation is not None:
            self._allocator.release(allocation.id)
        eventlog.emit(EventType.QUEUE_LEAVE, source="proxy", user=entry.user, queue_id=entry.id, reason=reason,
                      waited_seconds=round(self._clock() - entry.joined_at, 3), **details)

    # --- the passes ------------------------------------------------------------------------------------------

    def kick(self) -> None:
        """Run a pass within POLL_SECONDS."""
        self._kicked.set()

    def run(self, stop: threading.Event) -> None:
        """The pass loop, until `stop`; a failed pass is reported, and tried again at the next trigger."""
        seen: object = None
        config: Config | None = None
        backstop = self._clock() + BACKSTOP_SECONDS
        while not stop.is_set():
            kicked = self._kicked.wait(POLL_SECONDS)
            self._kicked.clear()
            stamp, current, now = self._allocator.store.stamp(), self._sessions.current_config(), self._clock()
            if not (kicked or stamp != seen or current is not config or now >= self._next_expiry or now >= backstop):
                continue
            seen, config, backstop = stamp, current, now + BACKSTOP_SECONDS
            try:
                self._pass(self._known([]), None)
            except Ds01Error as exc:
                eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=f"queue pass failed: {exc}")

    def _known(self, extra: list[Entry]) -> _Known:
        config = self._sessions.current_config()
        now = self._clock()
        read_at, history, past = self._history
        if now - read_at > HISTORY_SECONDS:
            half_life = config.scheduler.usage_half_life_seconds
            fleet = self._allocator.store.past_usage(now, half_life)
            history, unreadable = usage.history(self._log, now, half_life) if fleet is None else ([], 0)
            past = fleet or {}
            self._history = (now, history, past)
            if unreadable:  # reported at each read, not taken for no use
                eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=(
                    f"{unreadable} allocation.release events in the log say no held_seconds or gpu_equivalents; "
                    "the fair share leaves them out"))
        known = _Known(config, self._slots(), history, past)
        with self._lock:
            waiting = [*self._entries.values(), *extra]
        uids = {e.user: e.uid for e in waiting} | {
            a.user: a.uid for a in self._allocator.allocations() if a.uid is not None}
        for user in {*(held.user for held in history), *past}:  # recent users count with their own share
            if user not in uids and (account := nss.account_by_name(user)) is not None:
                uids[user] = account.pw_uid
        for user, uid in uids.items():
            try:
                session = self._sessions.for_uid(uid)
            except Ds01Error:
                continue  # an account gone since: the defaults apply to what it still holds
            known.learn(user, session.group, session.caller.limits)
        return known

    def _pass(self, known: _Known, newcomer: scheduler.Waiter | None
              ) -> tuple[scheduler.Placement | None, dict[str, Allocation]]:
        """One pass over the waiters and the create that is not queued yet (`newcomer`): its placement, and what
        was granted, by queue id."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.allocation is None and not e.cancelled]
        waiters = [*(known.waiter(e) for e in entries), *([newcomer] if newcomer is not None else [])]

        def decide(live: list[Allocation], now: float) -> tuple[list[scheduler.Placement], list[Grant]]:
            occupants = [scheduler.Occupant(a.holding(), self._free_by(a, known.limits.get(
                a.user, known.config.defaults))) for a in live]
            used = usage.decayed_hours([*known.history, *usage.holding_now(live, now)], now,
                                       known.config.scheduler.usage_half_life_seconds)
            for user, hours in known.past.items():
                used[user] = used.get(user, 0.0) + hours
            factors = usage.fairshare_factors(used, {u: known.shares.get(u, 1.0) for u in {*known.shares, *used}})
            self._fairshare = {u: (factors[u], used.get(u, 0.0)) for u in factors}
            self._next_expiry = min((a.expires_at for a in live if a.expires_at is not None), default=math.inf)
            placements = scheduler.plan(waiters, occupants, slots=known.slots, fairshare=factors,
                                        allocation=known.config.allocation, settings=known.config.scheduler, now=now)
            # The newcomer's first: a pass too big for one transaction grants the rest at the next, and the
            # newcomer, not queued yet, has no next.
            chosen = sorted((p for p in placements if p.granted),
                            key=lambda p: newcomer is None or p.waiter.id != newcomer.id)
            return placements, [Grant(p.waiter.id, p.waiter.user, p.waiter.uid, p.slots,
                                      scheduler.equivalents_of(p.slots, known.slots)) for p in chosen]

        placements, granted = self._allocator.grant(decide)
        self._tell(placements, granted, newcomer.id if newcomer is not None else None)
        return next((p for p in placements if newcomer is not None and p.waiter.id == newcomer.id), None), granted

    def _tell(self, placements: list[scheduler.Placement], granted: dict[str, Allocation],
              newcomer: str | None) -> None:
        """Each waiter learns its place or its grant; a grant for one that left meanwhile goes back."""
        told: list[tuple[scheduler.Placement, Allocation]] = []
        with self._changed:
            for placement in placements:
                entry = self._entries.get(placement.waiter.id)
                if entry is None:
                    continue
                entry.placement = placement
                if placement.never is not None:
                    entry.denied = placement.never
                if placement.waiter.id in granted:
                    entry.allocation = granted[placement.waiter.id]
                    told.append((placement, entry.allocation))
            orphans = [a for key, a in granted.items() if key != newcomer and key not in self._entries]
            self._changed.notify_all()
        for placement, allocation in told:
            waited = self._clock() - placement.waiter.joined_at
            with self._lock:
                self._waits.observe(waited)
            eventlog.emit(EventType.QUEUE_GRANT, source="proxy", user=placement.waiter.user,
                          queue_id=placement.waiter.id, allocation=allocation.id, slots=list(allocation.slots),
                          waited_seconds=round(waited, 3), position=placement.position)
        for allocation in orphans:
            self._allocator.release(allocation.id)
        self._save()

    def _save(self) -> None:
        with self._saving:  # one writer at a time, each writing what is true when it writes
            with self._lock:
                entries = list(self._entries.values())
                fairshare = dict(self._fairshare)
                waits = queuestate.WaitHistogram(list(self._waits.counts), self._waits.total_seconds)
            queuestate.write(self._file, entries, fairshare, waits, self._clock())

    # --- what users see --------------------------------------------------------------------------------------

    def waiting(self) -> list[Entry]:
        """The entries in queue order, as the last pass placed them."""
        with self._lock:
            entries = list(self._entries.values())
        return sorted(entries, key=lambda e: (e.placement.position if e.placement else math.inf, e.joined_at))

    def free_by(self, allocation: Allocation) -> float:
        """When the allocation's slots are free at the latest, by its holder's limits now (inf: no deadline)."""
        config = self._sessions.current_config()
        limits = config.defaults
        if allocation.uid is not None:
            try:
                limits = self._sessions.for_uid(allocation.uid).caller.limits
            except Ds01Error:
                limits = config.defaults  # an account gone since: the defaults, as a pass takes them
        return self._free_by(allocation, limits)

    def _free_by(self, allocation: Allocation, limits: LimitValues) -> float:
        by_limits = (allocation.bound_at or allocation.created_at) + runtime_of(limits)
        known = self.deadline_of(allocation)
        return by_limits if known is None else min(by_limits, known)


def _check_grantable(known: _Known, waiter: scheduler.Waiter) -> None:
    never = scheduler.never_grantable(waiter, known.config.allocation, known.slots)
    if never is not None:
        raise never
