"""ds01's job endpoints, for `container run`, `container jobs` and `container cancel`: POST /ds01/jobs submits,
GET /ds01/jobs[?all=1&state=S] lists, GET /ds01/jobs/NAME shows one, DELETE /ds01/jobs/NAME cancels. A job is
its owner's; admins see everyone's with all=1. The submission's every field has a rule, and any other is
refused."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ds01.errors import Denied, UsageError
from ds01.gpus.queuestate import Entry
from ds01.jobs.records import Job, JobState
from ds01.names import WORKSPACE, check_name
from ds01.proxy import bodies
from ds01.proxy.capacity import ANOTHER_USER, when
from ds01.proxy.images import check_parameters
from ds01.proxy.jobs import JobRunner
from ds01.proxy.outcomes import Outcome, Reply, Request
from ds01.proxy.queue import Queue
from ds01.proxy.runas import Caller
from ds01.reasons import Reason

# A job's create body is kept in jobs.json while it waits; the CLI's is under 4 KiB.
MAX_JOB_BODY_BYTES = 64 * 1024
SUBMISSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "body": dict, "time_seconds": (int, type(None)), "workspace": str, "requeue": bool}


class JobRoutes:
    def __init__(self, runner: JobRunner, queue: Queue) -> None:
        self._runner = runner
        self._queue = queue

    def answer(self, request: Request) -> Outcome:
        caller, name = request.session.caller, request.route.object_id
        if request.method == "POST":
            check_parameters(request.query, frozenset(), "POST /ds01/jobs")
            return Reply(201, self._submit(request))
        if request.method == "DELETE" and name is not None:
            check_parameters(request.query, frozenset(), "DELETE /ds01/jobs/NAME")
            job = self._runner.cancel(caller.uid, name)
            return Reply(200, view(job, caller, self._queue.waiting()))
        if name is not None:
            check_parameters(request.query, frozenset(), "GET /ds01/jobs/NAME")
            found = self._runner.job(caller.uid, name)
            if found is None:
                raise Denied(Reason.NOT_FOUND, f"you have no job named {name}; see yours with `container jobs`.")
            return Reply(200, view(found, caller, self._queue.waiting()))
        given = check_parameters(request.query, frozenset({"all", "state"}), "GET /ds01/jobs")
        everyone = given.get("all", ["0"])[-1]
        if everyone not in ("0", "1"):
            raise Denied(Reason.BAD_REQUEST, f"GET /ds01/jobs takes all=0 or all=1, not all={everyone}")
        if everyone == "1" and not caller.is_admin:
            raise Denied(Reason.ADMIN_ONLY, "only admins see everyone's jobs (--all); `container jobs` shows yours.")
        states = set(given.get("state", []))
        unknown = sorted(states - {state.value for state in JobState})
        if unknown:
            raise Denied(Reason.BAD_REQUEST, f"no job state {', '.join(unknown)}; the states are "
                                             f"{', '.join(state.value for state in JobState)}")
        waiting = self._queue.waiting()
        jobs = [job for job in self._runner.jobs() if (everyone == "1" or job.uid == caller.uid)
                and (not states or job.state.value in states)]
        jobs.sort(key=lambda job: job.submitted_at)
        return Reply(200, {"jobs": [view(job, caller, waiting) for job in jobs]})

    def _submit(self, request: Request) -> dict[str, Any]:
        raw = bodies.parse_json_object(request.read_body(), "job submission")
        unknown = sorted(set(raw) - set(SUBMISSION_FIELDS))
        missing = sorted(set(SUBMISSION_FIELDS) - set(raw))
        if unknown or missing:
            raise Denied(Reason.BAD_REQUEST, "a job submission has exactly the fields "
                                             f"{', '.join(SUBMISSION_FIELDS)}; " + "; ".join(
                                                 part for part in (f"unknown: {', '.join(unknown)}" if unknown else "",
                                                                   f"missing: {', '.join(missing)}" if missing else "")
                                                 if part))
        for field, kinds in SUBMISSION_FIELDS.items():
            if not isinstance(raw[field], kinds) or (field == "time_seconds" and isinstance(raw[field], bool)):
                raise Denied(Reason.BAD_REQUEST, f"the job submission's {field} has the wrong type")
        try:
            name = check_name(raw["name"])
        except UsageError as exc:
            raise Denied(Reason.BAD_REQUEST, str(exc)) from exc
        if raw["time_seconds"] is not None and raw["time_seconds"] < 1:
            raise Denied(Reason.BAD_REQUEST, "a job's time limit must be at least one second")
        size = len(json.dumps(raw["body"]))
        if size > MAX_JOB_BODY_BYTES:
            raise Denied(Reason.BAD_REQUEST, f"a job's create body is {size} bytes and may be {MAX_JOB_BODY_BYTES}; "
                                             "put long commands in a script in the workspace and run that.")
        workspace = raw["workspace"]
        if not os.path.isabs(workspace):
            raise Denied(Reason.BAD_REQUEST, f"the job's workspace {workspace!r} is not an absolute path: a job's "
                                             "workspace is a host directory, where its log is kept, not a volume; "
                                             "name one with `container run --workspace DIR`")
        binds = (bodies.field(raw["body"], "HostConfig") or {}).get("Binds") or []
        if f"{workspace}:{WORKSPACE}" not in binds:
            raise Denied(Reason.BAD_REQUEST, f"the job's workspace {workspace} must be what its body binds at "
                                             f"{WORKSPACE}")
        session = request.session
        job = self._runner.submit(session, name, raw["body"], time_seconds=raw["time_seconds"], workspace=workspace,
                                  requeue=raw["requeue"])
        return view(job, session.caller, self._queue.waiting())


def view(job: Job, caller: Caller, waiting: Sequence[Entry], now: float | None = None) -> dict[str, Any]:
    """A job as its owner (or an admin) sees it: state, place and estimated start while queued, GPUs, times,
    exit code and the GPU-equivalent-hours it used."""
    now = time.time() if now is None else now
    entry = next((e for e in waiting if e.id == job.queue_id), None)
    placement = entry.placement if entry is not None else None
    ran = (job.ended_at or now) - job.started_at if job.started_at is not None else 0.0
    hours = float(Fraction(job.gpu_equivalents)) * ran / 3600
    return {
        "name": job.name, "user": job.user if caller.is_admin or job.uid == caller.uid else ANOTHER_USER,
        "state": job.state.value, "time_seconds": job.time_seconds,
        "position": placement.position if job.state is JobState.QUEUED and placement else None,
        "waits_for": placement.waits_for if job.state is JobState.QUEUED and placement else "",
        "start": when(placement.start if placement and placement.start is not None else float("inf"), now)
        if job.state is JobState.QUEUED else None,
        "gpus": job.gpus, "gpu_equivalents": job.gpu_equivalents, "submitted_at": job.submitted_at,
        "started_at": job.started_at, "ended_at": job.ended_at, "exit_code": job.exit_code,
        "gpu_equivalent_hours": round(hours, 4), "attempts": job.attempts, "xid": job.xid, "failed_on": job.failed_on,
        "log": job.log_path,
        "workspace": job.workspace, "message": job.message,
    }
