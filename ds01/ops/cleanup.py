"""Reclamation: idle GPU containers and containers past max_runtime are warned, then stopped; stopped containers
give their GPUs back after gpu_hold_after_stop, and are then removed or kept as the config says.

Idleness is a window of time, not a count of checks: the first check that finds a container idle records
since when, and later checks compare the clock with that moment. `now` is a parameter throughout, so windows
and expiries are tested without waiting.

With `cleanup.idle_reclaim: when_waiting` a container idle past its idle_timeout is stopped only while a request
in the queue waits for the kind of slot it holds (`ds01.ops.demand`); until then its idle window goes on, so the
run that first sees such a request stops it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import filelock

from ds01 import eventlog, labels, nvml
from ds01.config import CleanupSettings, Config, LimitValues, effective_limits
from ds01.engine import Engine
from ds01.errors import Ds01Error
from ds01.eventlog.types import EventType
from ds01.gpus import queuestate
from ds01.gpus.allocator import Allocator
from ds01.gpus.placement import Slot
from ds01.gpus.supply import slots_from_inventory
from ds01.identity import accounts
from ds01.ops.demand import Demand, held_kinds
from ds01.records import ContainerInfo
from ds01.statefile import write_json_atomic
from ds01.terminals import notify_user
from ds01.units import format_duration, format_elapsed

STATE_NAME = "cleanup.json"


@dataclass
class Tracked:
    """What one container's earlier checks found, kept in DS01_STATE_DIR/cleanup.json."""

    idle_since: float | None = None
    cpu_ns: int | None = None
    cpu_at: float | None = None
    warned: list[str] = field(default_factory=list)  # "idle@0.5", "runtime@0.9", ...


@dataclass(frozen=True)
class Decision:
    container: str  # name
    user: str
    action: str  # none, skip, warn, stop, release, remove
    reason: str


@dataclass(frozen=True)
class Outcome:
    decisions: list[Decision]
    errors: list[str]  # what the run could not read, and what it did instead; each also an event


def _load_state(path: Path) -> dict[str, Tracked]:
    try:
        raw = json.loads(path.read_bytes())
        return {cid: Tracked(**entry) for cid, entry in raw.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError) as exc:
        raise Ds01Error(f"{path} is corrupt ({exc}); move it aside and run again (idle windows restart).") from exc


@dataclass
class _Context:
    config: Config
    settings: CleanupSettings
    now: float
    dry_run: bool
    inventory: nvml.Inventory | None
    holdings: dict[str, list[str]]  # container id -> allocated slots
    demand: Demand | None  # the queue's waiters under idle_reclaim when_waiting; None: reclaimed whatever waits
    slots: dict[str, Slot]  # uuid -> the slot, for the kind of what a container holds
    reclaim_note: str = ""  # why an idle container is stopped whatever waits, when that is not the configuration


def _gpu_active(slots: Sequence[str], inventory: nvml.Inventory | None, threshold: float) -> bool:
    """Whole GPUs by utilization; MIG slices (no utilization in NVML) by processes holding memory."""
    if inventory is None:
        return True  # without NVML nothing can be judged idle
    for gpu in inventory.available:
        if gpu.uuid in slots and (gpu.utilization_gpu_percent is None or gpu.utilization_gpu_percent >= threshold):
            return True
        for mig in gpu.mig_devices:
            if mig.uuid in slots and any((p.used_memory_bytes or 0) > 0 for p in mig.processes):
                return True
    return False


def _keepalive_fresh(info: ContainerInfo, settings: CleanupSettings, now: float) -> bool:
    if not info.workspace:
        return False
    try:
        touched = (Path(info.workspace) / settings.keepalive_file).stat().st_mtime
    except OSError:
        return False
    return now - touched < settings.keepalive_max_age_seconds


def _waiting_for(slots: Sequence[str], ctx: _Context) -> tuple[int, str] | None:
    """Under idle_reclaim when_waiting: how many waiting requests could take one of a container's `slots` once it
    is free, and the kind of slot that is; None when an idle container is stopped whatever waits.

    A slot NVML no longer shows (a GPU lost) is of no kind: no waiter could be granted it, so none waits for it."""
    if ctx.demand is None:
        return None
    held = [ctx.slots[uuid] for uuid in slots if uuid in ctx.slots]
    return len(ctx.demand.waiters_for(held)), held_kinds(held)


class Cleanup:
    def __init__(self, state_dir: Path, engine: Engine, allocator: Allocator,
                 limits_of: Callable[[ContainerInfo], tuple[int, LimitValues]], *,
                 waiter_limits: Callable[[int], LimitValues | None],
                 notify: Callable[[int, str], int] = notify_user) -> None:
        self.state_path = state_dir / STATE_NAME
        self.queue_path = state_dir / queuestate.STATE_FILE
        self._lock = filelock.FileLock(state_dir / "cleanup.lock")
        self.engine = engine
        self.allocator = allocator
        self._limits_of = limits_of
        self._waiter_limits = waiter_limits
        self._notify = notify

    def run(self, config: Config, inventory: nvml.Inventory | None, now: float, dry_run: bool) -> Outcome:
        with self._lock.acquire(timeout=config.allocation.lock_timeout_seconds):
            state = _load_state(self.state_path)
            holdings: dict[str, list[str]] = {}
            for allocation in self.allocator.observed():
                if allocation.container:
                    holdings.setdefault(allocation.container, []).extend(allocation.slots)
            demand, errors = self._demand(config, dry_run)
            slots = {slot.uuid: slot for slot in slots_from_inventory(inventory, frozenset())} if inventory else {}
            note = "; the queue's state cannot be read, so stopped as with idle_reclaim: always" if errors else ""
            ctx = _Context(config, config.cleanup, now, dry_run, inventory, holdings, demand, slots, note)
            found = [c for c in self.engine.containers() if c.labels.get(labels.USER)]
            decisions = [self._judge(info, state.setdefault(info.id, Tracked()), ctx) for info in found]
            live = {c.id for c in found}
            if not dry_run:
                write_json_atomic(self.state_path, {cid: vars(t) for cid, t in state.items() if cid in live})
        return Outcome(decisions, errors)

    def _demand(self, config: Config, dry_run: bool) -> tuple[Demand | None, list[str]]:
        """The queue's waiters under idle_reclaim when_waiting (None under always), and what could not be read."""
        if config.cleanup.idle_reclaim == "always":
            return None, []
        try:
            waiting = queuestate.read(self.queue_path).waiting  # no file: nobody waits
        except Ds01Error as exc:
            # This run stops idle containers as `always` does. Reading a broken file as "nobody waits" would let
            # idle containers keep their GPUs from waiters who may well be there, unseen, for as long as the file
            # stays broken; a stop after idle_timeout is what every user was warned of, and the first run that
            # can read the file again waits for demand again.
            if not dry_run:
                eventlog.emit(EventType.CLEANUP_QUEUE_UNREADABLE, source="cleanup", path=str(self.queue_path),
                              error=str(exc))
            return None, [f"{exc}. Until it can be read, idle containers are stopped as with idle_reclaim: always."]
        return Demand(tuple(waiting), config.allocation, self._waiter_limits), []

    def _judge(self, info: ContainerInfo, tracked: Tracked, ctx: _Context) -> Decision:
        user = info.labels.get(labels.USER, "?")
        if info.labels.get(labels.PROTECTED, "").lower() in ("1", "true", "yes"):
            return Decision(info.name, user, "skip", f"label {labels.PROTECTED}: never touched")
        uid, limits = self._limits_of(info)
        if info.status == "running":
            return self._running(info, tracked, ctx, uid, limits)
        return self._stopped(info, tracked, ctx, limits)

    def _running(self, info: ContainerInfo, tracked: Tracked, ctx: _Context, uid: int,
                 limits: LimitValues) -> Decision:
        user = info.labels.get(labels.USER, "?")
        started = info.started_at or ctx.now
        age = ctx.now - started
        if age < ctx.settings.min_age_seconds:
            return Decision(info.name, user, "skip", f"started {format_elapsed(age)} ago; the minimum age "
                                                     f"is {format_duration(ctx.settings.min_age_seconds)}")
        if _keepalive_fresh(info, ctx.settings, ctx.now):
            return Decision(info.name, user, "skip", f"keep-alive file {ctx.settings.keepalive_file} was touched "
                                                     "recently")
        slots = ctx.holdings.get(info.id, [])
        idle_note = self._track_idleness(info, tracked, ctx, slots)
        timers = [("runtime", age, limits.max_runtime_seconds)]
        if slots and tracked.idle_since is not None:
            timers.append(("idle", ctx.now - tracked.idle_since, limits.idle_timeout_seconds))
        for kind, elapsed, limit in timers:
            if limit is None:
                continue
            what = "idle" if kind == "idle" else "running"
            if elapsed >= limit:
                waiting = _waiting_for(slots, ctx) if kind == "idle" else None
                if waiting is not None and waiting[0] == 0:
                    return Decision(info.name, user, "none", f"idle {format_elapsed(elapsed)} of "
                                                             f"{format_duration(limit)}, but nobody waits for "
                                                             f"{waiting[1]}")
                why = "" if waiting is None else f"; {waiting[0]} waiting request(s) could take {waiting[1]}"
                why += ctx.reclaim_note if kind == "idle" else ""
                if not ctx.dry_run:
                    self.engine.stop(info.id, ctx.settings.stop_timeout_seconds)
                    demand = {} if waiting is None else {"waiting_requests": waiting[0]}
                    eventlog.emit(EventType.CLEANUP_STOP, source="cleanup", user=user, container=info.name, reason=kind,
                                  elapsed_seconds=int(elapsed), limit_seconds=limit, **demand)
                    others = "" if waiting is None else ", and others wait for its GPUs"
                    self._notify(uid, f"your container {info.name} was stopped: {what} for "
                                      f"{format_elapsed(elapsed)} (limit {format_duration(limit)}){others}.")
                return Decision(info.name, user, "stop", f"{what} {format_elapsed(elapsed)}, limit "
                                                         f"{format_duration(limit)}{why}")
            due = [f for f in ctx.settings.warn_at if elapsed >= f * limit and f"{kind}@{f}" not in tracked.warned]
            if due:
                left = format_elapsed(limit - elapsed)
                later = ", or later, once someone waits for its GPUs" \
                    if kind == "idle" and ctx.settings.idle_reclaim == "when_waiting" else ""
                message = (f"your container {info.name} has been {what} for {format_elapsed(elapsed)}; it "
                           f"will be stopped in {left}{later} (touch {ctx.settings.keepalive_file} in its workspace "
                           "to keep it).")
                if not ctx.dry_run:
                    tracked.warned.extend(f"{kind}@{f}" for f in due)
                    eventlog.emit(EventType.CLEANUP_WARN, source="cleanup", user=user, container=info.name, reason=kind,
                                  fraction=due[-1], elapsed_seconds=int(elapsed), limit_seconds=limit)
                    self._notify(uid, message)
                return Decision(info.name, user, "warn", f"{what} {format_elapsed(elapsed)} of "
                                                         f"{format_duration(limit)} ({int(due[-1] * 100)}%)")
        return Decision(info.name, user, "none", idle_note)

    def _track_idleness(self, info: ContainerInfo, tracked: Tracked, ctx: _Context, slots: Sequence[str]) -> str:
        if not slots:
            return "no GPUs: not reclaimed for idleness"
        cpu_ns = self.engine.cpu_usage_ns(info.id)
        cpu_percent = None
        if tracked.cpu_ns is not None and tracked.cpu_at is not None and ctx.now > tracked.cpu_at:
            cpu_percent = max(0, cpu_ns - tracked.cpu_ns) / 1e9 / (ctx.now - tracked.cpu_at) * 100
        gpu_busy = _gpu_active(slots, ctx.inventory, ctx.settings.idle_gpu_percent)
        idle = not gpu_busy and cpu_percent is not None and cpu_percent < ctx.settings.idle_cpu_percent
        user = info.labels.get(labels.USER, "?")
        if not ctx.dry_run:
            tracked.cpu_ns, tracked.cpu_at = cpu_ns, ctx.now
        if idle and tracked.idle_since is None:
            if not ctx.dry_run:
                tracked.idle_since = ctx.now
                eventlog.emit(EventType.CLEANUP_IDLE_START, source="cleanup", user=user, container=info.name,
                              allocation=info.labels.get(labels.ALLOCATION), since=ctx.now)
            else:
                tracked.idle_since = ctx.now  # this run's view only; not saved
        elif not idle and tracked.idle_since is not None:
            if not ctx.dry_run:
                eventlog.emit(EventType.CLEANUP_IDLE_END, source="cleanup", user=user, container=info.name,
                              allocation=info.labels.get(labels.ALLOCATION))
            tracked.idle_since = None
            tracked.warned = [w for w in tracked.warned if not w.startswith("idle@")]
        cpu = "unknown until the next check" if cpu_percent is None else f"{cpu_percent:.1f}%"
        return f"{'idle' if idle else 'active'} (GPU {'busy' if gpu_busy else 'idle'}, CPU {cpu})"

    def _stopped(self, info: ContainerInfo, tracked: Tracked, ctx: _Context, limits: LimitValues) -> Decision:
        user = info.labels.get(labels.USER, "?")
        if info.id not in ctx.holdings:
            return Decision(info.name, user, "none", f"{info.status}, holds no GPUs")
        stopped = info.finished_at or ctx.now
        held = ctx.now - stopped
        hold = limits.gpu_hold_after_stop_seconds
        if held < hold:
            return Decision(info.name, user, "none", f"{info.status} {format_elapsed(held)} ago; GPUs held "
                                                     f"for {format_duration(hold)} after a stop")
        remove = ctx.settings.remove_after_release
        if not ctx.dry_run:
            for gone in self.allocator.release_container(info.id):
                if tracked.idle_since is not None:
                    eventlog.emit(EventType.CLEANUP_IDLE_END, source="cleanup", user=user, container=info.name,
                                  allocation=gone.id)
                eventlog.emit(EventType.CLEANUP_RELEASE, source="cleanup", user=user, container=info.name,
                              allocation=gone.id,
                              slots=list(gone.slots))
            tracked.idle_since = None
            if remove:
                self.engine.remove(info.id)
                eventlog.emit(EventType.CLEANUP_REMOVE, source="cleanup", user=user, container=info.name,
                              workspace_kept=info.workspace)
        verb = "remove" if remove else "release"
        return Decision(info.name, user, verb, f"stopped {format_elapsed(held)} ago, past the "
                                               f"{format_duration(hold)} GPU hold; "
                                               f"{'removed' if remove else 'kept stopped'}, workspace kept")


class LimitsByUid:
    """Effective limits by uid, each resolved once: of containers' owners, from their ds01.uid label, and of the
    queue's waiters."""

    def __init__(self, config: Config, now_utc: datetime) -> None:
        self._config = config
        self._now_utc = now_utc
        self._cache: dict[int, LimitValues] = {}

    def of_uid(self, uid: int) -> LimitValues:
        if uid not in self._cache:
            user = accounts.resolve_user(uid, self._config.ldap)
            self._cache[uid] = effective_limits(self._config, user.name, user.groups, self._now_utc).limits
        return self._cache[uid]

    def of_container(self, info: ContainerInfo) -> tuple[int, LimitValues]:
        uid_text = info.labels.get(labels.UID, "")
        if not uid_text.isdigit():
            return -1, self._config.defaults
        return int(uid_text), self.of_uid(int(uid_text))

    def of_waiter(self, uid: int) -> LimitValues | None:
        """None for a waiter no longer known (the account went since it joined): it counts for every slot its
        request could take (`ds01.ops.demand.could_take`)."""
        try:
            return self.of_uid(uid)
        except accounts.UnknownUser:
            return None


def describe(decisions: Iterable[Decision], dry_run: bool) -> list[list[str]]:
    prefix = "would " if dry_run else ""
    return [[d.container, d.user, d.action if d.action in ("none", "skip") else prefix + d.action, d.reason]
            for d in decisions]
