"""Batch jobs on the test bed, through a private proxy, with real containers: a failing job's exit code, log and
GPU release; a time limit; cancelling while queued and while running; a proxy restart while a job runs; a
workspace whose .ds01 is a symlink to /etc; and backfill by time limit behind a blocked request."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01.cli.container.client import create_body
from ds01.config import load_config
from ds01.gpus import quarantine
from ds01.nvml import XidEvent
from tests.conftest import TEST_IMAGE, ProxyHandle, Testbed, start_proxy, stop_proxy
from tests.integration.test_alloc_cli import DS01
from tests.integration.test_container_cli import CONTAINER
from tests.integration.test_proxy_bodies import api_as
from tests.integration.test_queue import events_of, popen_as, until

RUN = (CONTAINER, "run")


@pytest.fixture
def jobs_proxy(testbed: Testbed, engine: docker.DockerClient) -> Iterator[ProxyHandle]:
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8])
    try:
        yield handle
    finally:
        stop_proxy(handle, engine)


@pytest.fixture
def fresh_name() -> Iterator[str]:
    """A job name, and the workspaces of the jobs named after it under alice's and bob's homes removed afterwards."""
    name = f"job-{uuid.uuid4().hex[:6]}"
    yield name
    for user in ("alice", "bob"):
        for made in (Path(pwd.getpwnam(user).pw_dir) / "workspace").glob(f"{name}*"):  # NAME-run, NAME-long...
            shutil.rmtree(made, ignore_errors=True)


def job_of(proxy: ProxyHandle, user: str, name: str) -> dict[str, Any]:
    shown = proxy.as_user(user, CONTAINER, "jobs", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return next(job for job in json.loads(shown.stdout)["jobs"] if job["name"] == name)


def ended(proxy: ProxyHandle, user: str, name: str, seconds: float = 60) -> dict[str, Any]:
    return dict(until(lambda: (job := job_of(proxy, user, name))["state"] not in ("queued", "running") and job,
                      f"the end of {name}", seconds))


def run_job(proxy: ProxyHandle, user: str, name: str, *args: str) -> str:
    made = proxy.as_user(user, *RUN, name, "--image", TEST_IMAGE, *args)
    assert made.returncode == 0, made.stderr
    return made.stdout


def test_a_failing_job_records_its_exit_code_keeps_its_log_and_frees_its_gpu_at_once(
        jobs_proxy: ProxyHandle, engine: docker.DockerClient, fresh_name: str) -> None:
    followed = jobs_proxy.as_user("alice", *RUN, fresh_name, "--image", TEST_IMAGE, "--follow", "--", "sh", "-c",
                                  "echo hello; exit 3")
    print(f"alice$ container run {fresh_name} --follow -- sh -c 'echo hello; exit 3'\n{followed.stdout}"
          f"{followed.stderr}(exit {followed.returncode})")
    assert followed.returncode == 3 and "hello" in followed.stdout
    job = ended(jobs_proxy, "alice", fresh_name)
    assert (job["state"], job["exit_code"]) == ("failed", 3) and job["gpus"]
    log = Path(job["log"])
    assert log == Path(pwd.getpwnam("alice").pw_dir) / "workspace" / fresh_name / ".ds01" / "jobs" / \
        f"{fresh_name}.log"
    assert log.read_text() == "hello\n" and log.stat().st_uid == pwd.getpwnam("alice").pw_uid
    released = [e for e in jobs_proxy.events() if e["type"] == "allocation.release"
                and set(e["details"].get("slots") or job["gpus"]) == set(job["gpus"])]
    assert released, "its GPUs were never released"
    released_at = datetime.fromisoformat(released[-1]["ts"].replace("Z", "+00:00")).timestamp()
    assert released_at - job["ended_at"] < 2.0, (released_at, job["ended_at"])
    assert not engine.containers.list(all=True, filters={"label": f"ds01.job={fresh_name}"})  # removed
    assert jobs_proxy.as_user("alice", CONTAINER, "logs", fresh_name).stdout == "hello\n"
    end = events_of(jobs_proxy, "job.end", "alice")[-1]["details"]
    assert (end["state"], end["exit_code"]) == ("failed", 3)
    marker = Path(pwd.getpwnam("alice").pw_dir) / ".cache" / "ds01" / "last-login"
    marker.unlink(missing_ok=True)
    login = jobs_proxy.as_user("alice", CONTAINER, "jobs", "--since-login")  # what profile.d runs at a login
    print(f"(alice logs in)\n{login.stdout}")
    assert login.returncode == 0 and f"your job {fresh_name} ended" in login.stdout and "failed, exit code 3" in \
        login.stdout
    assert jobs_proxy.as_user("alice", CONTAINER, "jobs", "--since-login").stdout == ""  # told once


def test_a_job_past_its_time_ends_as_timeout(jobs_proxy: ProxyHandle, fresh_name: str) -> None:
    run_job(jobs_proxy, "alice", fresh_name, "--time", "2s", "--", "sh", "-c",
            "trap 'echo got TERM; exit 143' TERM; while :; do sleep 1; done")
    job = ended(jobs_proxy, "alice", fresh_name)
    assert job["state"] == "timeout" and job["exit_code"] == 143
    assert "got TERM" in Path(job["log"]).read_text()
    assert job["ended_at"] - job["started_at"] < 30  # stopped at its 2s, not at max_runtime
    over = jobs_proxy.as_user("alice", *RUN, f"{fresh_name}-long", "--image", TEST_IMAGE, "--time", "400d", "--",
                              "true")
    assert over.returncode == 3 and "max_runtime" in over.stderr  # checked before it is queued


def test_cancel_takes_a_queued_job_out_and_stops_a_running_one(full: tuple[ProxyHandle, list[str]],
                                                                  engine: docker.DockerClient,
                                                                  fresh_name: str) -> None:
    proxy, _ = full
    said = run_job(proxy, "alice", fresh_name, "--gpus", "1", "--", "true")
    print(f"alice$ container run {fresh_name} --gpus 1 -- true   (every slot held)\n{said}")
    assert "number 1 in the queue" in said
    assert job_of(proxy, "alice", fresh_name)["state"] == "queued"
    proxy.config.write_text(proxy.config.read_text().replace("  alice:\n    group: researcher\n",
                                                             "  alice:\n    group: researcher\n"
                                                             "    max_queued_jobs: 1\n"))
    second = proxy.as_user("alice", *RUN, f"{fresh_name}-2", "--image", TEST_IMAGE, "--gpus", "1", "--", "true")
    assert second.returncode == 3 and "may have 1" in second.stderr, second.stderr  # max_queued_jobs
    assert not Path(pwd.getpwnam("alice").pw_dir, "workspace", f"{fresh_name}-2").exists()  # nothing left
    cancelled = proxy.as_user("alice", CONTAINER, "cancel", fresh_name)
    assert cancelled.returncode == 0, cancelled.stderr
    job = ended(proxy, "alice", fresh_name)
    assert job["state"] == "cancelled" and job["started_at"] is None
    assert until(lambda: events_of(proxy, "queue.leave", "alice"), "the leave")[-1]["details"]["reason"] == "cancelled"
    assert not engine.containers.list(all=True, filters={"label": "ds01.user=alice"})

    running = f"{fresh_name}-run"
    run_job(proxy, "alice", running, "--cpu-only", "--", "sleep", "600")
    until(lambda: job_of(proxy, "alice", running)["state"] == "running", "the start")
    assert proxy.as_user("alice", CONTAINER, "cancel", running).returncode == 0
    job = ended(proxy, "alice", running, seconds=90)
    assert job["state"] == "cancelled"
    assert not engine.containers.list(all=True, filters={"label": f"ds01.job={running}"})
    assert proxy.as_user("alice", CONTAINER, "cancel", running).returncode == 3  # over already


def test_a_job_that_ends_while_the_proxy_is_down_is_recorded_with_its_real_end(
        jobs_proxy: ProxyHandle, testbed: Testbed, engine: docker.DockerClient, fresh_name: str) -> None:
    run_job(jobs_proxy, "alice", fresh_name, "--cpu-only", "--", "sh", "-c", "sleep 3; echo done; exit 7")
    until(lambda: job_of(jobs_proxy, "alice", fresh_name)["state"] == "running", "the start")
    jobs_proxy.process.send_signal(signal.SIGKILL)
    jobs_proxy.process.wait(30)
    [container] = engine.containers.list(all=True, filters={"label": f"ds01.job={fresh_name}"})
    until(lambda: (container.reload(), container.status == "exited")[1], "the job's exit", 30)
    finished = container.attrs["State"]["FinishedAt"]
    time.sleep(2)  # the restart comes well after the end
    again = start_proxy(testbed, jobs_proxy.root)
    try:  # the killed proxy's socket file is there before the new one listens on it
        until(lambda: again.as_user("alice", CONTAINER, "jobs").returncode == 0, "the restarted proxy", 60)
        job = ended(again, "alice", fresh_name)
        assert (job["state"], job["exit_code"]) == ("failed", 7)
        assert abs(job["ended_at"] - datetime.fromisoformat(finished[:26] + "+00:00").timestamp()) < 1
        assert Path(job["log"]).read_text() == "done\n"
        assert not engine.containers.list(all=True, filters={"label": f"ds01.job={fresh_name}"})
        assert_reconciled(again)
    finally:
        jobs_proxy.process = again.process


def assert_reconciled(proxy: ProxyHandle) -> None:
    """`ds01 reconcile` finds the allocator and the engine in agreement: no GPU held by a finished job."""
    reconciled = subprocess.run([DS01, "reconcile", "--format", "json"], env=proxy.env, capture_output=True,
                                text=True, check=False)
    assert reconciled.returncode == 0 and json.loads(reconciled.stdout)["consistent"], reconciled.stdout


def test_a_proxy_killed_just_after_a_submission_runs_the_job_once_after_its_restart(
        jobs_proxy: ProxyHandle, testbed: Testbed, engine: docker.DockerClient, fresh_name: str) -> None:
    run_job(jobs_proxy, "alice", fresh_name, "--", "sh", "-c", "sleep 2; echo once")
    jobs_proxy.process.send_signal(signal.SIGKILL)  # queued, or just granted, or just started
    jobs_proxy.process.wait(30)
    again = start_proxy(testbed, jobs_proxy.root)
    try:
        until(lambda: again.as_user("alice", CONTAINER, "jobs").returncode == 0, "the restarted proxy", 60)
        job = ended(again, "alice", fresh_name, seconds=90)
        assert (job["state"], job["exit_code"]) == ("succeeded", 0) and job["attempts"] == 1
        assert Path(job["log"]).read_text() == "once\n"  # it ran once: a second run would have cut it short
        records = json.loads((again.root / "state" / "jobs.json").read_text())["jobs"]
        assert [r["state"] for r in records if r["name"] == fresh_name] == ["succeeded"]
        held = json.loads((again.root / "state" / "allocations.json").read_text())["allocations"]
        assert not [a for a in held if a["user"] == "alice"]  # nothing held by the finished job
        assert not engine.containers.list(all=True, filters={"label": f"ds01.job={fresh_name}"})
        assert_reconciled(again)
    finally:
        jobs_proxy.process = again.process


def test_a_workspace_whose_ds01_is_a_symlink_to_etc_gets_no_log_and_nothing_is_written_outside(
        jobs_proxy: ProxyHandle, fresh_name: str) -> None:
    alice = pwd.getpwnam("alice")
    workspace = Path(alice.pw_dir) / "workspace" / fresh_name
    workspace.mkdir(parents=True)
    os.chown(workspace, alice.pw_uid, alice.pw_gid)
    (workspace / ".ds01").symlink_to("/etc")
    os.lchown(workspace / ".ds01", alice.pw_uid, alice.pw_gid)
    before = set(os.listdir("/etc"))
    run_job(jobs_proxy, "alice", fresh_name, "--cpu-only", "--", "echo", "secret-free")
    job = ended(jobs_proxy, "alice", fresh_name)
    assert job["state"] == "succeeded" and job["log"] is None and "symlink" in job["message"]
    assert set(os.listdir("/etc")) == before and not Path("/etc/jobs").exists()


def test_a_volume_as_workspace_or_an_outsized_body_is_refused_and_an_ended_job_keeps_no_body(
        jobs_proxy: ProxyHandle, engine: docker.DockerClient, fresh_name: str) -> None:
    alice = pwd.getpwnam("alice")
    workspace = str(Path(alice.pw_dir) / "workspace" / fresh_name)
    volume = f"{fresh_name}-vol"
    submission = {"name": fresh_name, "time_seconds": None, "requeue": False, "workspace": volume,
                  "body": create_body(TEST_IMAGE, ["true"], workspace=volume, gpus=0, mig=None, cpus=None,
                                      memory=None, shm_size=None)}
    status, answer = api_as(jobs_proxy, "alice", "POST", "/ds01/jobs", submission)
    assert status == 403 and "not an absolute path" in answer["message"], answer
    assert not engine.volumes.list(filters={"name": volume})  # no volume made, no path under the proxy's cwd
    assert not (jobs_proxy.root / volume).exists() and not Path(volume).exists()
    padded = create_body(TEST_IMAGE, ["echo", "x" * 70_000], workspace=workspace, gpus=0, mig=None, cpus=None,
                         memory=None, shm_size=None)
    status, answer = api_as(jobs_proxy, "alice", "POST", "/ds01/jobs",
                            {**submission, "workspace": workspace, "body": padded})
    assert status == 403 and "may be 65536" in answer["message"], answer
    records = jobs_proxy.root / "state" / "jobs.json"
    assert not records.exists() or not json.loads(records.read_text())["jobs"]  # neither was recorded

    run_job(jobs_proxy, "alice", fresh_name, "--cpu-only", "--", "true")
    job = ended(jobs_proxy, "alice", fresh_name)
    assert job["state"] == "succeeded", job
    [record] = [r for r in json.loads(records.read_text())["jobs"] if r["name"] == fresh_name]
    assert record["body"] == {}  # an ended job keeps its result, not its create body


def test_a_short_job_backfills_before_a_reservation_and_a_long_one_waits(
        full: tuple[ProxyHandle, list[str]], engine: docker.DockerClient, fresh_name: str) -> None:
    proxy, holders = full
    gpus = json.loads(proxy.as_user("alice", CONTAINER, "gpus", "--format", "json").stdout)["slots"]
    wholes = [row["slot"] for row in gpus if row["profile"] is None]
    # alice (no recent use: first in the queue) waits for two named whole GPUs; one frees now, the other at
    # carol's deadline. bob's jobs (much recent use: behind her) may use the free one only if they end before.
    alice = popen_as(proxy, "alice", "docker", "run", "-d", "--label", "ds01.request.wait=10m", "--gpus",
                     f'"device={wholes[0]},{wholes[1]}"', TEST_IMAGE, "sleep", "600")
    until(lambda: events_of(proxy, "queue.join", "alice"), "alice's join")
    by_slot = {engine.containers.get(h).attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"][0]: h
               for h in holders}
    engine.containers.get(by_slot[wholes[0]]).remove(force=True)
    reserved = until(lambda: [e for e in json.loads(proxy.as_user("alice", CONTAINER, "queue", "--format",
                                                                  "json").stdout)["waiting"]
                              if e["start"]["at"]], "alice's reservation")[0]
    assert set(reserved["reserved_slots"]) == {wholes[0], wholes[1]}
    short, long_one = f"{fresh_name}-short", f"{fresh_name}-long"
    run_job(proxy, "bob", long_one, "--gpus", "1", "--time", "3h", "--", "echo", "long")
    run_job(proxy, "bob", short, "--gpus", "1", "--time", "5m", "--", "echo", "short")
    job = ended(proxy, "bob", short)
    assert job["state"] == "succeeded" and job["gpus"] == [wholes[0]], job
    waiting = job_of(proxy, "bob", long_one)  # not on the free GPU, where it would delay alice: on a later one
    assert waiting["state"] == "queued" and waiting["start"]["at"] > time.time() + 3600, waiting
    mine = json.loads(proxy.as_user("alice", CONTAINER, "queue", "--format", "json").stdout)["waiting"][0]
    assert mine["start"]["at"] <= reserved["start"]["at"] and alice.poll() is None
    alice.kill()


def _gpu_of(testbed: Testbed, slot: str) -> str:
    topology = json.loads(Path(testbed.env["FAKE_NVML_TOPOLOGY"]).read_text())
    return next(gpu["uuid"] for gpu in topology["gpus"]
                if gpu["uuid"] == slot or slot in {m.get("uuid") for m in gpu.get("mig_devices") or []})


def test_a_critical_xid_under_a_requeue_job_marks_it_gpu_failed_and_it_runs_again_elsewhere(
        jobs_proxy: ProxyHandle, testbed: Testbed, fresh_name: str) -> None:
    run_job(jobs_proxy, "alice", fresh_name, "--requeue", "--", "sleep", "600")
    first = until(lambda: (job := job_of(jobs_proxy, "alice", fresh_name))["state"] == "running" and job,
                  "the start")
    sick = _gpu_of(testbed, first["gpus"][0])
    # What the exporter's XID watch records when NVML reports a critical XID (79: fallen off the bus).
    config = load_config(jobs_proxy.root / "etc" / "resource-limits.yaml")
    assert quarantine.record_xid(jobs_proxy.root / "state", XidEvent(sick, 79, None, None), config.allocation,
                                 time.time())
    failed = until(lambda: [e for e in events_of(jobs_proxy, "job.end", "alice")
                            if e["details"]["state"] == "gpu_failed"], "the gpu_failed end", 60)
    assert "XID 79" in failed[0]["details"]["message"]
    again = until(lambda: (job := job_of(jobs_proxy, "alice", fresh_name))["state"] == "running"
                  and job["attempts"] == 2 and job, "the second run", 60)
    assert _gpu_of(testbed, again["gpus"][0]) != sick and again["failed_on"] == first["gpus"][:1]
    held = json.loads((jobs_proxy.root / "state" / "allocations.json").read_text())["allocations"]
    assert all(_gpu_of(testbed, slot) != sick for allocation in held for slot in allocation["slots"])
    assert [e["details"].get("requeued") for e in events_of(jobs_proxy, "job.queued", "alice")] == [None, 1]
    assert jobs_proxy.as_user("alice", CONTAINER, "cancel", fresh_name).returncode == 0
