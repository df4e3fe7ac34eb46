"""`container list|start|stop|remove|open|exec|logs`: everything after create, by the name the user gave."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import datetime
from typing import Any

from ds01 import containers
from ds01.cli.output import print_json, print_table
from ds01.engine import Details, UserEngine, engine_name, plain_name
from ds01.errors import Ds01Error, UsageError

SHELL = "command -v bash >/dev/null && exec bash || exec sh"


def created_at(created: str) -> datetime | None:
    """The engine's timestamp (nanoseconds, Z) as an aware datetime."""
    stamp, _, _fraction = created.partition(".")
    try:
        return datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")
    except ValueError:
        return None


def container_json(found: Details, uid: int) -> dict[str, Any]:
    info = found.info
    when = created_at(found.created)
    return {"name": plain_name(info.name, uid) or info.name, "engine_name": info.name, "id": info.id,
            "status": info.status, "image": found.image, "gpus": list(info.device_ids),
            "gpu_equivalents": info.labels.get(containers.GPU_EQUIVALENTS) or None,
            "created": when.isoformat(timespec="seconds") if when else found.created}


def gpus_cell(found: Details) -> str:
    info = found.info
    if info.device_ids:
        return ",".join(info.device_ids)
    return "all" if info.gpu_count == -1 else (str(info.gpu_count) if info.gpu_count else "-")


def list_containers(args: argparse.Namespace) -> int:
    uid = os.getuid()
    with UserEngine() as engine:
        found = engine.containers(uid, everything=args.all)
    found.sort(key=lambda item: item.info.name)
    if args.format == "json":
        print_json([container_json(item, uid) for item in found])
        return 0
    if not found:
        print("no stopped or running containers; create one with `container create NAME`" if args.all else
              "no running containers (`container list --all` shows stopped ones too); create one with "
              "`container create NAME`")
        return 0
    rows = []
    for item in found:
        when = created_at(item.created)
        rows.append((plain_name(item.info.name, uid) or item.info.name, item.info.status, item.image,
                     gpus_cell(item), when.astimezone().strftime("%Y-%m-%d %H:%M") if when else item.created))
    print_table(("NAME", "STATUS", "IMAGE", "GPUS", "CREATED"), rows)
    return 0


def _own(args: argparse.Namespace) -> tuple[str, str]:
    """(NAME, engine name) for the container the user named."""
    return args.name, engine_name(args.name, os.getuid())


def start(args: argparse.Namespace) -> int:
    name, full = _own(args)
    with UserEngine() as engine:
        if engine.inspect(full).info.status == "running":
            print(f"{name} is already running; open a shell with `container open {name}`")
            return 0
        print(f"starting {name}... ", end="", flush=True)
        try:
            engine.start(full)
        except Ds01Error:
            print("failed", flush=True)
            raise
        print("started")
    print(f"next: container open {name}")
    return 0


def stop(args: argparse.Namespace) -> int:
    name, full = _own(args)
    if args.time < 0:
        raise UsageError(f"-t {args.time}: give the seconds to wait as 0 or more.")
    with UserEngine() as engine:
        if engine.inspect(full).info.status != "running":
            print(f"{name} is not running; nothing to stop (`container remove {name}` removes it)")
            return 0
        print(f"stopping {name} (waiting up to {args.time}s)... ", end="", flush=True)
        try:
            engine.stop(full, args.time)
        except Ds01Error:
            print("failed", flush=True)
            raise
        print("stopped")
    print(f"start it again with `container start {name}`, or remove it with `container remove {name}` to give its "
          "GPUs back")
    return 0


def remove(args: argparse.Namespace) -> int:
    name, full = _own(args)
    with UserEngine() as engine:
        found = engine.inspect(full)
        if found.info.status in ("running", "restarting") and not args.force:
            raise Ds01Error(f"{name} is running. Stop it first (container stop {name}), or remove it anyway with "
                            f"`container remove {name} -f`.")
        engine.remove(full, force=args.force)
    print(f"removed {name}" + (" and released its GPUs" if found.info.holds_gpus else ""))
    if found.workspace:
        print(f"its workspace {found.workspace} was kept (ds01 never deletes workspaces); delete it yourself if you "
              "no longer need it")
    return 0


def _running(engine: UserEngine, name: str, full: str) -> None:
    status = engine.inspect(full).info.status
    if status != "running":
        raise Ds01Error(f"{name} is not running (it is {status}). Start it with `container start {name}`.")


def open_shell(args: argparse.Namespace) -> int:
    name, full = _own(args)
    with UserEngine() as engine:
        _running(engine, name, full)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(f"container open needs a terminal. In scripts, use `container exec {name} -- CMD`.")
    if shutil.which("docker") is None:
        raise Ds01Error(f"the docker command-line tool is not installed here, and `container open` uses it. Run "
                        f"commands with `container exec {name} -- CMD`, or ask your admin to install it.")
    os.environ["DOCKER_HOST"] = engine.url  # the docker CLI must go through the ds01 proxy too
    sys.stdout.flush()
    os.execvp("docker", ["docker", "exec", "-it", full, "sh", "-c", SHELL])  # noqa: S606 - argument list, no shell


def _write(stream: int, data: bytes) -> None:
    out = sys.stderr.buffer if stream == 2 else sys.stdout.buffer
    out.write(data)
    out.flush()


def execute(args: argparse.Namespace) -> int:
    name, full = _own(args)
    if not args.command:
        raise UsageError(f"give the command after '--', for example: container exec {name} -- nvidia-smi")
    with UserEngine() as engine:
        _running(engine, name, full)
        return engine.run(full, list(args.command), _write)


def logs(args: argparse.Namespace) -> int:
    _, full = _own(args)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail {args.tail}: give a number of lines, 0 or more.")
    with UserEngine() as engine:
        for stream, data in engine.logs(full, args.follow, args.tail):
            _write(stream, data)
    return 0
