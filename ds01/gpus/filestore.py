"""The `file` allocation store: DS01_STATE_DIR/allocations.json under one file lock, acquired with backoff and
jitter and never held across a call to the engine or NVML, with a verified backup; a corrupt file is rebuilt
from the containers' labels, else from the backup."""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import filelock

from ds01 import eventlog
from ds01.config import AllocationSettings
from ds01.errors import Busy, Ds01Error
from ds01.eventlog.types import EventType
from ds01.gpus.allocations import Allocation
from ds01.statefile import write_json_atomic

STATE_NAME = "allocations.json"
STATE_VERSION = 1
_T = TypeVar("_T")
Step = Callable[[list[Allocation], float], tuple[_T, list[Allocation] | None]]


class StateCorrupt(Ds01Error):
    pass


def _parse_state(raw: bytes, path: Path) -> list[Allocation]:
    try:
        document = json.loads(raw)
        if document["version"] != STATE_VERSION:
            raise ValueError(f"version {document['version']!r}")
        allocations = [Allocation.from_json(item) for item in document["allocations"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise StateCorrupt(f"{path} is corrupt ({exc!r})") from exc
    booked = [slot for a in allocations for slot in a.slots]
    if len(booked) != len(set(booked)):
        raise StateCorrupt(f"{path} books a slot twice")
    return allocations


def read_allocations(state_dir: Path) -> list[Allocation]:
    """The allocations on disk, for observers: no lock (writes are atomic renames) and no expiry."""
    path = state_dir / STATE_NAME
    try:
        return _parse_state(path.read_bytes(), path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise Ds01Error(f"cannot read {path}: {exc.strerror}") from exc


def take_turn(lock: filelock.FileLock, timeout_seconds: float) -> bool:
    """Acquire `lock` within `timeout_seconds`, polling with backoff and jitter (a busy wait would take the CPU
    from the holder); False when it stayed taken."""
    deadline = time.monotonic() + timeout_seconds
    delay = 0.0005
    while True:
        try:
            lock.acquire(timeout=0)
            return True
        except filelock.Timeout:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, delay * random.uniform(0.5, 1.5)))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, 0.02)


class FileStore:
    """DS01_STATE_DIR/allocations.json under a file lock, with its verified backup."""

    node = ""
    contended = False  # one lock: changes wait their turn
    change_budget: int | None = None  # a step may change any number of allocations

    def __init__(self, state_dir: Path, settings: AllocationSettings,
                 rebuild: Callable[[], list[Allocation]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STATE_NAME
        self.backup = state_dir / f"{STATE_NAME}.bak"
        self.settings = settings
        self._rebuild = rebuild
        self._clock = clock
        self._lock = filelock.FileLock(state_dir / "allocations.lock")
        self.lock_hold_seconds: deque[float] = deque(maxlen=100_000)
    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not take_turn(self._lock, self.settings.lock_timeout_seconds):
            raise Busy(f"the allocator is busy: its lock {self._lock.lock_file} stayed taken for "
                       f"{self.settings.lock_timeout_seconds}s. Nothing was changed; try again.")
        taken = time.perf_counter()
        try:
            yield
        finally:
            self._lock.release()
            self.lock_hold_seconds.append(time.perf_counter() - taken)

    def _read(self) -> tuple[bytes | None, list[Allocation]]:
        """Under the lock: the raw bytes and the allocations. A missing file with no backup is a first run."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.backup.exists():
                raise StateCorrupt(f"{self.path} is missing but its backup exists") from None
            return None, []
        return raw, _parse_state(raw, self.path)

    def _write(self, allocations: Sequence[Allocation], keep_backup: bool = True) -> None:
        document = {"version": STATE_VERSION, "allocations": [a.to_json() for a in allocations]}
        write_json_atomic(self.path, document, self.backup if keep_backup else None)

    def _recover(self, corrupt: StateCorrupt) -> None:
        """Rebuild from the containers' labels (engine call outside the lock), else from the verified backup."""
        eventlog.emit(EventType.ALLOCATOR_STATE_CORRUPT, source="allocator", error=str(corrupt))
        try:
            if self._rebuild is None:
                raise Ds01Error("no engine access was given to rebuild from")
            rebuilt, origin = self._rebuild(), "container labels"
        except Ds01Error as exc:
            try:
                rebuilt, origin = _parse_state(self.backup.read_bytes(), self.backup), "the backup"
            except (OSError, StateCorrupt) as backup_problem:
                raise Ds01Error(f"{corrupt}; rebuilding from container labels failed ({exc}) and the backup is "
                                f"unusable ({backup_problem}). Run 'ds01 reconcile' once the engine is up.") from exc
        with self._locked():
            try:
                self._read()
                return  # another process recovered first
            except StateCorrupt:
                if self.path.exists():
                    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(self._clock()))}-{secrets.token_hex(3)}"
                    self.path.rename(self.path.with_name(f"{STATE_NAME}.corrupt-{stamp}"))
                self._write(rebuilt, keep_backup=False)
        eventlog.emit(EventType.ALLOCATOR_STATE_REBUILT, source="allocator", origin=origin, allocations=len(rebuilt))

    def run(self, step: Step[_T], write: bool) -> _T:
        for _attempt in range(3):
            try:
                with self._locked():
                    raw, allocations = self._read()
                    result, changed = step(allocations, self._clock())
                    if write and changed is not None:
                        self._write(changed, keep_backup=raw is not None)
                return result
            except StateCorrupt as corrupt:
                self._recover(corrupt)
        raise Ds01Error(f"{self.path} kept turning corrupt while being recovered; see the event log.")

    def stamp(self) -> object:
        try:
            found = self.path.stat()
        except FileNotFoundError:
            return None
        return found.st_mtime_ns, found.st_size, found.st_ino

    def peek(self) -> list[Allocation]:
        return read_allocations(self.path.parent)

    def past_usage(self, now: float, half_life_seconds: float) -> dict[str, float] | None:
        return None

    def other_containers(self, user: str) -> int:
        return 0

    def confirm_owner(self) -> None:
        """This server's own state directory is its own."""


