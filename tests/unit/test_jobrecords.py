"""jobs.json stays bounded: an ended job drops its create body (unless it goes back to the queue), and each
user keeps at most KEEP_ENDED_JOBS ended records, none older than KEEP_ENDED_SECONDS; the file is rewritten on
every change, so one user's history must not slow everyone's submissions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ds01.errors import Ds01Error
from ds01.jobs.records import KEEP_ENDED_JOBS, KEEP_ENDED_SECONDS, MAX_REQUEUES, Job, JobState, JobStore

BODY = {"Image": "busybox", "Cmd": ["sh", "-c", "x" * 1000]}
NOW = 1_000_000_000.0


def job(name: str, uid: int = 1000, **fields: object) -> Job:
    made = Job(name, f"user{uid}", uid, JobState.QUEUED, NOW - 100, 3600, dict(BODY), "/home/u/workspace/x",
               f"job-{name}")
    for key, value in fields.items():
        setattr(made, key, value)
    return made


def on_disk(path: Path) -> dict[str, dict[str, object]]:
    return {entry["name"]: entry for entry in json.loads((path / "jobs.json").read_text())["jobs"]}


def test_an_ended_job_drops_its_body_on_disk_and_in_memory(tmp_path: Path) -> None:
    store = JobStore(tmp_path, clock=lambda: NOW)
    store.add(job("train"))
    assert on_disk(tmp_path)["train"]["body"] == BODY  # kept while it waits: it is created from it
    running = store.update(job("train"), state=JobState.RUNNING)
    assert running.body == BODY
    ended = store.update(running, state=JobState.FAILED, ended_at=NOW, exit_code=3)
    assert ended.body == {} and on_disk(tmp_path)["train"]["body"] == {}
    assert (ended.exit_code, ended.state) == (3, JobState.FAILED)  # its result stays


@pytest.mark.parametrize(("requeue", "attempts", "keeps"), [
    (True, 1, True), (True, MAX_REQUEUES, True), (True, MAX_REQUEUES + 1, False), (False, 1, False)])
def test_a_gpu_failed_job_keeps_its_body_only_while_it_will_be_queued_again(
        tmp_path: Path, requeue: bool, attempts: int, keeps: bool) -> None:
    store = JobStore(tmp_path, clock=lambda: NOW)
    store.add(job("train", requeue=requeue, attempts=attempts, state=JobState.RUNNING))
    failed = store.update(job("train"), state=JobState.GPU_FAILED, ended_at=NOW)
    assert failed.requeues is keeps
    assert (failed.body == BODY) is keeps and (on_disk(tmp_path)["train"]["body"] == BODY) is keeps


def test_each_user_keeps_the_newest_ended_jobs_and_none_too_old(tmp_path: Path) -> None:
    store = JobStore(tmp_path, clock=lambda: NOW)
    for index in range(KEEP_ENDED_JOBS + 5):
        store.add(job(f"old-{index}", state=JobState.SUCCEEDED, ended_at=NOW - 1000 + index, body={}))
    store.add(job("ancient", state=JobState.SUCCEEDED, ended_at=NOW - KEEP_ENDED_SECONDS - 1, body={}))
    store.add(job("bob-ancient", uid=1001, state=JobState.SUCCEEDED, ended_at=NOW - KEEP_ENDED_SECONDS - 1))
    store.add(job("waiting"))
    store.add(job("last", state=JobState.RUNNING))
    store.update(job("last"), state=JobState.SUCCEEDED, ended_at=NOW)  # an end prunes its owner's records
    names = {j.name for j in store.all()}
    kept = {f"old-{index}" for index in range(KEEP_ENDED_JOBS + 5) if f"old-{index}" in names}
    assert len(kept) == KEEP_ENDED_JOBS - 1 and "old-0" not in kept and f"old-{KEEP_ENDED_JOBS + 4}" in kept
    assert {"last", "waiting", "bob-ancient"} <= names and "ancient" not in names  # bob's are his own to prune
    assert set(on_disk(tmp_path)) == names

    reloaded = JobStore(tmp_path, clock=lambda: NOW)  # a load prunes every user's, and drops ended bodies
    reloaded.load()
    assert "bob-ancient" not in {j.name for j in reloaded.all()}
    waiting = reloaded.get(1000, "waiting")
    assert waiting is not None and waiting.body == BODY


def test_a_queued_job_is_never_pruned_however_old(tmp_path: Path) -> None:
    store = JobStore(tmp_path, clock=lambda: NOW + 10 * KEEP_ENDED_SECONDS)
    store.add(job("patient"))
    store.add(job("other", state=JobState.RUNNING))
    store.update(job("other"), state=JobState.CANCELLED, ended_at=NOW + 10 * KEEP_ENDED_SECONDS)
    assert store.get(1000, "patient") is not None


def test_a_file_that_is_not_a_jobs_file_stops_the_load_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text('{"format": 1, "jobs": [{"name": "x", "surprise": 1}]}')
    with pytest.raises(Ds01Error, match="move it away"):
        JobStore(tmp_path).load()
