"""Batch jobs as the proxy records them: one entry per job in DS01_STATE_DIR/jobs.json, written atomically, each
in exactly one state. The record is the truth about a job; the engine's container is its running half."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ds01 import statefile
from ds01.errors import Ds01Error

FILE_NAME = "jobs.json"
FORMAT = 1
MAX_REQUEUES = 3  # a job that lost its GPU goes back to the queue at most this often
# Ended jobs kept per user, newest first, and for how long: the file is rewritten on every change, so it must
# not grow with a user's history (the event log keeps all of it, for reports).
KEEP_ENDED_JOBS = 100
KEEP_ENDED_SECONDS = 30 * 86400


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    GPU_FAILED = "gpu_failed"

    @property
    def ended(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass
class Job:
    name: str  # as the user typed it; the container is NAME._.UID
    user: str
    uid: int
    state: JobState
    submitted_at: float
    time_seconds: int  # the time limit: its deadline for estimated starts and backfill
    body: dict[str, Any]  # the create body as the CLI made it, created again through the policy when granted
    workspace: str  # host path, where .ds01/jobs/NAME.log goes
    queue_id: str
    requeue: bool = False
    attempts: int = 0  # how often it started
    failed_on: list[str] = field(default_factory=list)  # slots it lost to a GPU failure, one per requeue
    container_id: str | None = None
    gpus: list[str] = field(default_factory=list)
    gpu_equivalents: str = "0"
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    xid: int | None = None
    message: str = ""  # why it ended as it did, in words
    cancel_asked: bool = False
    timed_out: bool = False  # stopped at its time limit
    failed_gpu: str | None = None  # the slot whose GPU failed under it (a critical XID, or lost)
    log_path: str | None = None

    @property
    def requeues(self) -> bool:
        """It lost its GPU, asked for --requeue and has tries left: it goes back to the queue."""
        return self.state is JobState.GPU_FAILED and self.requeue and self.attempts <= MAX_REQUEUES

    @property
    def over(self) -> bool:
        """Ended for good: its create body is no longer needed."""
        return self.state.ended and not self.requeues

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return cls(**{**raw, "state": JobState(raw["state"])})


class JobStore:
    """jobs.json under one lock: every change is written before it is acted on, so a restart finds each job in
    the state it was last in."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = state_dir / FILE_NAME
        self._lock = threading.RLock()
        self._jobs: dict[tuple[int, str], Job] = {}
        self._clock = clock

    def load(self) -> None:
        """At start-up. A file that cannot be read stops the proxy: jobs silently forgotten would hold GPUs."""
        with self._lock:
            self._jobs = {(job.uid, job.name): job for job in _read(self._path)}
            for job in self._jobs.values():
                if job.over:
                    job.body = {}
            for uid in {job.uid for job in self._jobs.values()}:
                self._expire(uid)

    def _save(self) -> None:
        statefile.write_json_atomic(self._path, {"format": FORMAT,
                                                 "jobs": [job.to_json() for job in self._jobs.values()]})

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[(job.uid, job.name)] = job
            self._save()

    def update(self, job: Job, **changes: Any) -> Job:
        with self._lock:
            current = self._jobs[(job.uid, job.name)]
            for key, value in changes.items():
                setattr(current, key, value)
            if current.over:
                current.body = {}
                self._expire(current.uid)
            self._save()
            return dataclasses.replace(current)

    def _expire(self, uid: int) -> None:
        """Drop this user's ended jobs beyond the newest KEEP_ENDED_JOBS, and any that ended KEEP_ENDED_SECONDS
        ago."""
        ended = sorted((job for job in self._jobs.values() if job.uid == uid and job.over),
                       key=lambda job: job.ended_at or job.submitted_at, reverse=True)
        oldest = self._clock() - KEEP_ENDED_SECONDS
        for rank, job in enumerate(ended):
            if rank >= KEEP_ENDED_JOBS or (job.ended_at or job.submitted_at) < oldest:
                del self._jobs[(job.uid, job.name)]

    def forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop((job.uid, job.name), None)
            self._save()

    def get(self, uid: int, name: str) -> Job | None:
        with self._lock:
            found = self._jobs.get((uid, name))
            return None if found is None else dataclasses.replace(found)

    def all(self) -> list[Job]:
        with self._lock:
            return [dataclasses.replace(job) for job in self._jobs.values()]

    def running_in(self, container_id: str) -> Job | None:
        """The running job of this container, found without copying every record (a queue pass asks this for
        each allocation, under the allocator's lock)."""
        with self._lock:
            found = next((job for job in self._jobs.values()
                          if job.state is JobState.RUNNING and job.container_id == container_id), None)
            return None if found is None else dataclasses.replace(found)

    def of_user(self, uid: int) -> Iterator[Job]:
        return (job for job in self.all() if job.uid == uid)


def _read(path: Path) -> list[Job]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise Ds01Error(f"{path} cannot be read ({exc}); restore it from its backup or move it away, and the jobs "
                        "it held are then adopted from their containers' labels") from exc
    try:
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, not {FORMAT}")
        return [Job.from_json(entry) for entry in raw["jobs"]]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise Ds01Error(f"{path} is not a ds01 jobs file ({exc}); move it away to start with no jobs") from exc
