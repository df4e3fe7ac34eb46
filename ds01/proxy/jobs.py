"""Batch jobs (`container run`): submitted through POST /ds01/jobs, they wait in the GPU queue with no connection
held open, and on their grant are created through the same create path as any container (policy, limits, labels,
cgroup parent, workspace) and started. When CMD exits, the record takes its exit code and times, the GPUs go back
at once, the output goes to WORKSPACE/.ds01/jobs/NAME.log and the container is removed. Every change of state
is written to the job's record before it is acted on, so a restart finds each job where it was."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from ds01 import eventlog, labels, terminals
from ds01.errors import Denied, Ds01Error
from ds01.eventlog.types import EventType
from ds01.gpus.allocator import Allocation, Allocator
from ds01.jobs import enginetext, joblog
from ds01.jobs.records import Job, JobState, JobStore
from ds01.names import DRY_RUN_HEADER, engine_name
from ds01.proxy.creates import ContainerCreates, JobTerms
from ds01.proxy.http import Head
from ds01.proxy.interfaces import Callers, EngineCalls
from ds01.proxy.outcomes import Deny, Forward, Outcome, Request
from ds01.proxy.queue import Queue
from ds01.proxy.routes import Route, RouteKind
from ds01.proxy.session import Session
from ds01.reasons import Reason

END_MARGIN_SECONDS = 30  # past the SIGKILL, for the engine to report the end
LOOP_SECONDS = 1.0
HEALTH_SECONDS = 5.0  # how often the GPUs under running jobs are checked
FailedSlots = Callable[[Iterable[str]], dict[str, tuple[int | None, float]]]  # slot -> (XID or None: lost, when)


def _no_body() -> Any:
    raise Ds01Error("a batch job's create has no body stream")


class JobRunner:
    def __init__(self, store: JobStore, creates: ContainerCreates, upstream: EngineCalls, sessions: Callers, *,
                 queue: Queue, allocator: Allocator, failed_slots: FailedSlots,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._creates = creates
        self._upstream = upstream
        self._sessions = sessions
        self._queue = queue
        self._allocator = allocator
        self._failed_slots = failed_slots
        self._clock = clock
        self._ending: set[tuple[int, str]] = set()  # jobs whose end is being recorded
        self._stopping: set[tuple[int, str]] = set()  # jobs asked to stop (time limit or cancel)
        self._lock = threading.Lock()
        queue.deadline_of = self.deadline_of

    # --- submission ------------------------------------------------------------------------------------------

    def submit(self, session: Session, name: str, body: dict[str, Any], *, time_seconds: int | None,
               workspace: str, requeue: bool) -> Job:
        """Check everything that can be checked now (policy, image, limits, time), then queue the job."""
        caller = session.caller
        config = self._sessions.current_config()
        limit = caller.limits.max_runtime_seconds
        chosen = time_seconds if time_seconds is not None else min(
            config.scheduler.default_job_time_seconds, limit if limit is not None else 10**12)
        if limit is not None and chosen > limit:
            raise Denied(Reason.JOB_TIME, f"--time {chosen}s is longer than your max_runtime ({limit}s); ask for "
                                          "at most that, or split the work into shorter jobs.")
        now = self._clock()
        job = Job(name, caller.user, caller.uid, JobState.QUEUED, now, chosen, body, workspace,
                  f"job-{uuid.uuid4().hex}", requeue=requeue)  # unguessable: no one else's request can take it
        self._check_room(caller.uid, name, caller.limits.max_queued_jobs)
        if self._upstream.inspect("container", engine_name(name, caller.uid)) is not None:
            raise Denied(Reason.NAME_TAKEN, f"you have a container named {name}; pick another name for the job, "
                                            "or remove the container (container remove NAME).")
        # Not under the store's lock: a queue pass holds the allocator's lock and reads the jobs' deadlines.
        checked = self._creates.create(_request(session, name, body, dry_run=True), self._terms(job))
        if isinstance(checked, Deny):
            raise Denied(checked.reason, checked.message)
        with self._store.lock:  # checked again: two submissions of one name may have raced
            self._check_room(caller.uid, name, caller.limits.max_queued_jobs)
            self._store.add(job)
        eventlog.emit(EventType.JOB_QUEUED, source="proxy", user=job.user, job=name, state=job.state.value,
                      time_seconds=chosen, queue_id=job.queue_id)
        self._spawn(self._dispatch, job)
        return job

    def _check_room(self, uid: int, name: str, max_queued: int) -> None:
        earlier = self._store.get(uid, name)
        if earlier is not None and not earlier.state.ended:
            raise Denied(Reason.NAME_TAKEN, f"you have a job named {name} already ({earlier.state}); pick another "
                                            f"name, or cancel it with `container cancel {name}`.")
        queued = sum(1 for j in self._store.of_user(uid) if j.state is JobState.QUEUED)
        if queued >= max_queued:
            raise Denied(Reason.MAX_QUEUED_JOBS, (
                f"you have {queued} jobs waiting and may have {max_queued}; wait for one to start, or cancel one "
                "(container cancel NAME)."))

    def _terms(self, job: Job) -> JobTerms:
        grace = self._sessions.current_config().cleanup.stop_timeout_seconds + END_MARGIN_SECONDS
        return JobTerms({labels.JOB: job.name, labels.JOB_TIME: str(job.time_seconds),
                         labels.JOB_WORKSPACE: job.workspace}, job.queue_id, float(job.time_seconds + grace),
                        job.submitted_at, lambda: self._cancel_asked(job))

    def _cancel_asked(self, job: Job) -> bool:
        current = self._store.get(job.uid, job.name)
        return current is None or current.cancel_asked

    def _spawn(self, target: Callable[[Job], None], job: Job) -> None:
        threading.Thread(target=self._reported, args=(target, job), daemon=True,
                         name=f"job-{job.user}-{job.name}").start()

    def _reported(self, target: Callable[[Job], None], job: Job) -> None:
        try:
            target(job)
        except (Ds01Error, OSError, ValueError) as exc:
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", user=job.user,
                          error=f"batch job {job.name}: {exc}")

    # --- its turn: create and start ----------------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        try:
            session = self._sessions.for_uid(job.uid)
            outcome = self._creates.create(_request(session, job.name, job.body, dry_run=False), self._terms(job))
            container_id = self._forward(outcome)
        except Denied as denied:
            cancelled = denied.reason is Reason.WAIT_CANCELLED or self._cancel_asked(job)
            self._end_unstarted(job, JobState.CANCELLED if cancelled else JobState.FAILED, denied.message)
            return
        except Ds01Error as exc:
            self._end_unstarted(job, JobState.FAILED, f"its container could not be created: {exc}")
            return
        self._start(self._store.update(job, state=JobState.RUNNING, container_id=container_id), container_id)

    def _forward(self, outcome: Outcome) -> str:
        """Send the create the policy made, as the server would, and settle it (the grant bound to it)."""
        if isinstance(outcome, Deny):
            raise Denied(outcome.reason, outcome.message)
        if not isinstance(outcome, Forward) or outcome.body is None:
            raise Ds01Error(f"the create path answered {type(outcome).__name__}, not a create to send")
        try:
            path, _, query = outcome.target.partition("?")
            status, answer = self._upstream.call("POST", path, query=dict(parse_qsl(query)),
                                                 body=json.loads(outcome.body))
            outcome.settle(status, json.dumps(answer).encode())
        finally:
            outcome.close()
        if status != 201 or not isinstance(answer, dict):
            raise Ds01Error(f"the engine answered {status}: {answer}")
        return str(answer["Id"])

    def _start(self, job: Job, container_id: str) -> None:
        if job.cancel_asked:
            self._finish(job)
            return
        allocation = next((a for a in self._allocator.allocations() if a.container == container_id), None)
        job = self._store.update(job, started_at=self._clock(), attempts=job.attempts + 1,
                                 gpus=list(allocation.slots) if allocation else [],
                                 gpu_equivalents=str(allocation.gpu_equivalents) if allocation else "0")
        status, answer = self._upstream.call("POST", f"/containers/{quote(container_id, safe='')}/start")
        if status not in (204, 304):
            self._finish(self._store.update(job, message=f"the engine would not start it: {answer}"))
            return
        eventlog.emit(EventType.JOB_START, source="proxy", user=job.user, job=job.name, state=job.state.value,
                      container=container_id, slots=job.gpus, attempt=job.attempts)
        terminals.notify_user(job.uid, f"your job {job.name} started on {', '.join(job.gpus) or 'no GPU'}")

    # --- its end ---------------------------------------------------------------------------------------------

    def container_died(self, container_id: str) -> None:
        """The engine reports a job container's end (the janitor's die event)."""
        job = next((j for j in self._store.all() if j.container_id == container_id and not j.state.ended), None)
        if job is not None:
            self._spawn(self._finish, job)

    def _end_unstarted(self, job: Job, state: JobState, message: str) -> None:
        job = self._store.update(job, state=state, ended_at=self._clock(), message=message)
        self._announce_end(job)

    def _finish(self, job: Job) -> None:
        key = (job.uid, job.name)
        with self._lock:
            if key in self._ending:
                return
            self._ending.add(key)
        try:
            self._record_end(job)
        finally:
            with self._lock:
                self._ending.discard(key)
                self._stopping.discard(key)

    def _record_end(self, job: Job) -> None:
        container_id = job.container_id or ""
        found = self._upstream.inspect("container", container_id) if container_id else None
        state_of = (found or {}).get("State") or {}
        if found is not None and state_of.get("Running"):
            return  # not over: a late or repeated event
        released = self._allocator.release_container(container_id) if container_id else []
        current = self._store.get(job.uid, job.name) or job
        started_at = enginetext.timestamp(state_of.get("StartedAt")) or current.started_at  # the engine's, when it ran
        ended_at = enginetext.timestamp(state_of.get("FinishedAt")) or self._clock()
        ran = found is not None and enginetext.timestamp(state_of.get("StartedAt")) is not None
        exit_code = int(state_of["ExitCode"]) if ran and "ExitCode" in state_of else None
        state, message = _outcome(current, found is not None, exit_code)
        log_path = None
        if ran:
            log_path, note = self._keep_log(current, container_id)
            message = "; ".join(part for part in (message, note) if part)
        if found is not None:
            self._upstream.call("DELETE", f"/containers/{quote(container_id, safe='')}", query={"force": "1"})
        held = max(0.0, ended_at - (started_at or ended_at))
        job = self._store.update(current, state=state, started_at=started_at, ended_at=ended_at,
                                 exit_code=exit_code, message=message, log_path=log_path)
        equivalents = sum((a.gpu_equivalents for a in released), Fraction(0)) if released else None
        self._announce_end(job, held, float(equivalents) * held / 3600 if equivalents is not None else 0.0)
        self._queue.kick()
        if job.requeues:
            self._requeue(job)

    def _requeue(self, job: Job) -> None:
        """Back to the queue at its old priority (its age counts from its submission); the failed GPU stays
        quarantined for allocation.xid_quarantine, so it is not handed to it, or anyone, meanwhile."""
        job = self._store.update(job, state=JobState.QUEUED, queue_id=f"{job.queue_id.split('.')[0]}.{job.attempts}",
                                 failed_on=[*job.failed_on, job.failed_gpu or ""], container_id=None, gpus=[],
                                 gpu_equivalents="0", started_at=None, ended_at=None, exit_code=None,
                                 failed_gpu=None, timed_out=False, log_path=None)
        eventlog.emit(EventType.JOB_QUEUED, source="proxy", user=job.user, job=job.name, state=job.state.value,
                      time_seconds=job.time_seconds, queue_id=job.queue_id, requeued=job.attempts)
        self._spawn(self._dispatch, job)

    def _keep_log(self, job: Job, container_id: str) -> tuple[str | None, str]:
        session = self._sessions.for_uid(job.uid)
        limit = self._sessions.current_config().scheduler.max_job_log_bytes
        chunks = enginetext.payloads(self._upstream.stream(f"/containers/{quote(container_id, safe='')}/logs",
                                                 {"stdout": "1", "stderr": "1"}))
        try:
            written = joblog.write_log(job.workspace, job.name, uid=job.uid, gid=session.caller.gid, chunks=chunks,
                                       max_bytes=limit)
        except Denied as denied:
            return None, denied.message
        cut = f"its log was cut at {limit} bytes" if written.bytes_dropped else ""
        return written.path, cut

    def _announce_end(self, job: Job, held_seconds: float = 0.0, equivalent_hours: float = 0.0) -> None:
        eventlog.emit(EventType.JOB_END, source="proxy", user=job.user, job=job.name, state=job.state.value,
                      exit_code=job.exit_code, held_seconds=round(held_seconds, 3),
                      gpu_equivalent_hours=round(equivalent_hours, 6), log=job.log_path, message=job.message)
        code = "" if job.exit_code is None else f" (exit code {job.exit_code})"
        terminals.notify_user(job.uid, f"your job {job.name} ended: {job.state.value}{code}"
                                       + (f"; log: {job.log_path}" if job.log_path else ""))

    def job(self, uid: int, name: str) -> Job | None:
        return self._store.get(uid, name)

    def jobs(self) -> list[Job]:
        return self._store.all()

    # --- cancel, time limits, restarts ------------------------------------------------------------------------

    def cancel(self, uid: int, name: str) -> Job:
        with self._store.lock:
            job = self._store.get(uid, name)
            if job is None:
                raise Denied(Reason.NOT_FOUND, f"you have no job named {name}; see yours with `container jobs`.")
            if job.state.ended:
                raise Denied(Reason.JOB_ENDED, f"the job {name} is over already ({job.state}); nothing to cancel.")
            job = self._store.update(job, cancel_asked=True)
        if job.state is JobState.QUEUED:
            self._queue.cancel(job.user, job.queue_id)
        elif job.container_id is not None:
            self._spawn(self._stop, job)
        return job

    def _stop(self, job: Job) -> None:
        with self._lock:
            if (job.uid, job.name) in self._stopping:
                return
            self._stopping.add((job.uid, job.name))
        grace = self._sessions.current_config().cleanup.stop_timeout_seconds
        self._upstream.call("POST", f"/containers/{quote(job.container_id or '', safe='')}/stop",
                            query={"t": str(grace)})

    def run(self, stop: threading.Event) -> None:
        """Time limits: a job past its --time is stopped (SIGTERM, stop_timeout of grace, SIGKILL). GPU health:
        a job whose GPU had a critical XID, or was lost, since it started is stopped as gpu_failed."""
        checked = 0.0
        while not stop.wait(LOOP_SECONDS):
            now = self._clock()
            running = [j for j in self._store.all() if j.state is JobState.RUNNING and j.started_at is not None]
            for job in running:
                if not job.timed_out and now >= (job.started_at or now) + job.time_seconds:
                    self._spawn(self._stop, self._store.update(job, timed_out=True))
            if running and now - checked >= HEALTH_SECONDS:
                checked = now
                self._check_gpus([j for j in running if j.failed_gpu is None])

    def _check_gpus(self, running: list[Job]) -> None:
        try:
            failed = self._failed_slots([slot for job in running for slot in job.gpus])
        except Ds01Error as exc:  # NVML did not answer: reported, and no job is judged on it
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=f"GPU health of jobs: {exc}")
            return
        for job in running:
            lost = next(((slot, xid) for slot in job.gpus if slot in failed
                         for xid, at in (failed[slot],) if at >= (job.started_at or 0)), None)
            if lost is not None:
                slot, xid = lost
                why = f"its GPU {slot} had a critical XID {xid}" if xid is not None else f"its GPU {slot} was lost"
                self._spawn(self._stop, self._store.update(job, failed_gpu=slot, xid=xid, message=why))

    def deadline_of(self, allocation: Allocation) -> float | None:
        """A job's grant frees by its start plus its time limit and the grace of its stop."""
        job = self._store.running_in(allocation.container) if allocation.container else None
        if job is None or job.started_at is None:
            return None
        grace = self._sessions.current_config().cleanup.stop_timeout_seconds + END_MARGIN_SECONDS
        return job.started_at + job.time_seconds + grace

    def restore(self) -> None:
        """At start-up: queued jobs queue again, at their old age; a running one whose container ended while the
        proxy was down is recorded with the engine's exit code and end time; job containers the records lack
        are adopted from their labels."""
        self._store.load()
        status, listed = self._upstream.call("GET", "/containers/json", query={
            "all": "1", "filters": json.dumps({"label": [f"{labels.TYPE}=job"]})})
        if status != 200 or not isinstance(listed, list):
            raise Ds01Error(f"the engine answered {status} when listing job containers: {listed}")
        by_id = {str(c.get("Id")): c for c in listed}
        by_job = {((c.get("Labels") or {}).get(labels.UID), (c.get("Labels") or {}).get(labels.JOB)): c
                  for c in listed}
        for job in self._store.all():
            made = by_job.get((str(job.uid), job.name))
            if job.state is JobState.QUEUED and made is not None:  # killed between its create and its record
                self._resume(self._store.update(job, state=JobState.RUNNING, container_id=str(made["Id"])), made)
            elif job.state is JobState.QUEUED:
                self._spawn(self._dispatch, job)
            elif job.state is JobState.RUNNING:
                self._resume(job, by_id.get(job.container_id or ""))
            elif job.requeues:  # killed between its gpu_failed and its return to the queue
                self._requeue(job)
        known = {j.container_id for j in self._store.all()}
        for container_id, summary in by_id.items():
            if container_id not in known:
                self._adopt(container_id, summary)

    def _resume(self, job: Job, summary: dict[str, Any] | None) -> None:
        if summary is None:
            self._finish(job)
        elif summary.get("State") == "created":
            self._start(job, str(summary["Id"]))
        elif summary.get("State") != "running":
            self._finish(job)

    def _adopt(self, container_id: str, summary: dict[str, Any]) -> None:
        found = summary.get("Labels") or {}
        try:
            uid, time_limit = int(found.get(labels.UID, "")), int(found.get(labels.JOB_TIME, ""))
        except ValueError:
            return  # not a job ds01 made: it has no record to rebuild
        started = enginetext.timestamp(((self._upstream.inspect("container", container_id) or {}).get("State") or {})
                             .get("StartedAt")) or self._clock()
        job = Job(found.get(labels.JOB, container_id[:12]), found.get(labels.USER, ""), uid, JobState.RUNNING,
                  started, time_limit, {}, found.get(labels.JOB_WORKSPACE, ""), f"adopted-{container_id[:12]}",
                  container_id=container_id, started_at=started, attempts=1, message="adopted at a restart")
        self._store.add(job)
        if summary.get("State") != "running":
            self._finish(job)


def _request(session: Session, name: str, body: dict[str, Any], *, dry_run: bool) -> Request:
    head = Head(((DRY_RUN_HEADER, "1"),) if dry_run else ())
    encoded = json.dumps(body).encode()
    return Request(session, "POST", "/containers/create", urlencode({"name": engine_name(name, session.caller.uid)}),
                   Route(RouteKind.CREATE_CONTAINER), head, lambda: encoded, _no_body)


def _outcome(job: Job, found: bool, exit_code: int | None) -> tuple[JobState, str]:
    if job.cancel_asked:
        return JobState.CANCELLED, "cancelled (container cancel)"
    if job.failed_gpu is not None:
        return JobState.GPU_FAILED, job.message
    if job.timed_out:
        return JobState.TIMEOUT, f"stopped at its time limit ({job.time_seconds}s)"
    if not found:
        return JobState.FAILED, job.message or "its container was removed outside ds01; its exit code is unknown"
    if exit_code == 0:
        return JobState.SUCCEEDED, ""
    return JobState.FAILED, job.message or f"CMD exited with {exit_code}"
