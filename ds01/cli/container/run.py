"""`container run NAME ... -- CMD`: a batch job. Everything that can be checked is checked first (image, limits,
the time limit against max_runtime); then the job joins the GPU queue and the command returns with its place and
estimated start. On its turn the proxy creates the container, runs CMD, and when CMD exits records its exit
code, frees the GPUs at once, keeps the output in WORKSPACE/.ds01/jobs/NAME.log and removes the container.
--follow waits for it, streams its output, and exits with its exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ds01.cli.container.client import ProxyClient, create_body
from ds01.cli.container.common import write_stream
from ds01.cli.container.create import (
    cpus_asked,
    gpus_asked,
    make_dirs,
    missing_dirs,
    size_asked,
    workspace_path,
)
from ds01.cli.container.image import own_or_given
from ds01.cli.context import Context
from ds01.config import validators
from ds01.errors import ConfigError, Ds01Error, UsageError
from ds01.names import check_name, engine_name
from ds01.units import format_duration

POLL_SECONDS = 1.0
PLACED_SECONDS = 3.0
END_SECONDS = 120.0  # how long --follow waits for the proxy to record an end it has seen the output of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the job's name (its log: WORKSPACE/.ds01/jobs/NAME.log)")
    parser.add_argument("--image", help="image to run: one of yours (`container image list`), else as given "
                                         "(default: containers.default_image)")
    gpus = parser.add_mutually_exclusive_group()
    gpus.add_argument("--gpus", metavar="N", help="how many GPUs (default 1; 'all' for your per-container maximum)")
    gpus.add_argument("--mig", metavar="PROFILE", help="one MIG slice of this profile instead, e.g. 2g.20gb")
    gpus.add_argument("--cpu-only", action="store_true", help="no GPU at all")
    parser.add_argument("--cpus", help="CPUs, e.g. 4 (default and maximum: your per-container limit)")
    parser.add_argument("--memory", metavar="SIZE", help="memory, e.g. 32g (default and maximum: your limit)")
    parser.add_argument("--time", metavar="DURATION",
                        help="the time limit, e.g. 30m or 6h (default: scheduler.default_job_time, 4h as shipped, "
                             "at most your max_runtime). At it the job gets SIGTERM, then SIGKILL; a shorter "
                             "limit can start sooner, on GPUs reserved for later")
    parser.add_argument("--workspace", metavar="DIR",
                        help="host directory mounted at /workspace (default: WORKSPACE_ROOT/NAME, "
                             "~/workspace/NAME as shipped); created if missing")
    parser.add_argument("--requeue", action="store_true",
                        help="if a GPU fails under it, queue it again (up to 3 times) on another GPU; its own "
                             "non-zero exit is never retried")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="wait for it, print its output, and exit with its exit code")


def _time(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return validators.positive_duration(text)
    except ValueError:
        raise UsageError(f"--time {text}: give a duration such as 30m, 6h or 2d.") from None


def run(args: argparse.Namespace, context: Context) -> int:
    name = check_name(args.name)
    if not args.command:
        raise UsageError(f"give the command to run after --, for example: container run {name} -- python "
                         "train.py")
    gpus, cpus, memory = gpus_asked(args), cpus_asked(args.cpus), size_asked("--memory", args.memory)
    time_seconds = _time(args.time)
    config = context.config
    image = args.image or config.containers.default_image
    if not image:
        raise ConfigError(f"no image: give one with --image; the ds01 config ({config.source}) sets no "
                          "containers.default_image.")
    workspace = workspace_path(args.workspace, config.containers.workspace_root, name)
    with ProxyClient.of(context.paths) as proxy:
        if args.image:
            image = own_or_given(proxy, args.image)
        missing = missing_dirs(workspace)
        make_dirs(missing)
        body = create_body(image, list(args.command), workspace=str(workspace), gpus=gpus, mig=args.mig, cpus=cpus,
                           memory=memory, shm_size=None)
        try:
            job = proxy.submit_job({"name": name, "body": body, "time_seconds": time_seconds,
                                    "workspace": str(workspace), "requeue": args.requeue})
        except BaseException:
            for directory in reversed(missing):  # a job that was not queued leaves no directory behind
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        print(_queued_line(_placed(proxy, job)), flush=True)
        if not args.follow:
            print(f"see it with `container jobs`, its output with `container logs {name}`; "
                  f"`container cancel {name}` withdraws it", flush=True)
            return 0
        return _follow(proxy, name)


def _placed(proxy: ProxyClient, job: dict[str, Any]) -> dict[str, Any]:
    """The job once the queue has placed it (a moment after the submission), or as it was if that takes long."""
    deadline = time.monotonic() + PLACED_SECONDS
    while job["state"] == "queued" and not job.get("position") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = proxy.job(job["name"])
    return job


def _queued_line(job: dict[str, Any]) -> str:
    if job["state"] != "queued":
        return (f"job {job['name']} was granted at once and is {job['state']} (time limit "
                f"{format_duration(job['time_seconds'])})")
    start = (job.get("start") or {}).get("text") or "unknown"
    place = f"number {job['position']} in the queue" if job.get("position") else "in the queue"
    return (f"queued job {job['name']} ({place}; starts {start}; time limit "
            f"{format_duration(job['time_seconds'])})")


def _follow(proxy: ProxyClient, name: str) -> int:
    """Until the job runs (a status line), its output as it comes, then its end."""
    job = _until(proxy, name, lambda j: j["state"] != "queued", "waiting for its turn")
    if job["state"] == "running":
        print(f"job {name} started on {', '.join(job['gpus']) or 'no GPU'}", file=sys.stderr, flush=True)
        with contextlib.suppress(Ds01Error):  # ended and removed already: its log file has the output
            for stream, data in proxy.logs(engine_name(name, os.getuid()), True, None):
                write_stream(stream, data)
            job = _until(proxy, name, lambda j: j["state"] not in ("queued", "running"), "")
            return _ended(job, printed=True)
        job = _until(proxy, name, lambda j: j["state"] not in ("queued", "running"), "")
    return _ended(job, printed=False)


def _until(proxy: ProxyClient, name: str, done: Callable[[dict[str, Any]], bool], waiting: str) -> dict[str, Any]:
    shown = ""
    began = time.monotonic()
    while True:
        job = proxy.job(name)
        if done(job):
            if shown and sys.stderr.isatty():
                print(file=sys.stderr)
            return job
        if waiting:
            start = (job.get("start") or {}).get("text") or "unknown"
            line = f"{waiting}: number {job.get('position') or '?'} in the queue; starts {start}"
            if line != shown:
                print(f"\r{line}\x1b[K" if sys.stderr.isatty() else line, end="" if sys.stderr.isatty() else "\n",
                      file=sys.stderr, flush=True)
                shown = line
        elif time.monotonic() - began > END_SECONDS:
            raise Ds01Error(f"job {name}'s output ended, but ds01 has not recorded its end within "
                            f"{END_SECONDS:.0f}s; see `container jobs` later.")
        time.sleep(POLL_SECONDS)


def _ended(job: dict[str, Any], *, printed: bool) -> int:
    log = job.get("log")
    if not printed and log:
        with contextlib.suppress(OSError):
            sys.stdout.buffer.write(Path(log).read_bytes())
            sys.stdout.flush()
    code = job.get("exit_code")
    detail = f"exit code {code}" if code is not None else "no exit code"
    message = f"; {job['message']}" if job.get("message") else ""
    print(f"job {job['name']} ended: {job['state']} ({detail}){message}"
          + (f"; log: {log}" if log else ""), file=sys.stderr, flush=True)
    if code is not None:
        return int(code)
    return 3 if job["state"] == "cancelled" else 1

