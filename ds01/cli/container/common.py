"""What the `container` subcommands share: the caller's own container by name, and how one is shown."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from datetime import datetime
from typing import Any

from ds01 import labels
from ds01.cli.container.client import ProxyClient
from ds01.errors import Ds01Error
from ds01.identity import nss
from ds01.names import engine_name, plain_name
from ds01.records import Details, PublishedPort


def add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the container's name, as you gave it to `container create`")


def created_at(created: str) -> datetime | None:
    """The engine's timestamp (nanoseconds, Z) as an aware datetime."""
    stamp, _, _fraction = created.partition(".")
    try:
        return datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")
    except ValueError:
        return None


def shown_name(found: Details, uid: int) -> str:
    """NAME for a `container create` container, the engine's own name for one docker or compose made."""
    return plain_name(found.info.name, uid) or found.info.name.lstrip("/")


def origin(found: Details) -> str:
    """What made it, from ds01.type: container, docker, compose or devcontainer."""
    return found.info.labels.get(labels.TYPE) or "docker"


def container_json(found: Details, uid: int) -> dict[str, Any]:
    info = found.info
    when = created_at(found.created)
    return {"name": shown_name(found, uid), "engine_name": info.name, "id": info.id, "origin": origin(found),
            "status": info.status, "image": found.image, "gpus": list(info.device_ids),
            "gpu_equivalents": info.labels.get(labels.GPU_EQUIVALENTS) or None,
            "created": when.isoformat(timespec="seconds") if when else found.created}


def gpus_cell(found: Details) -> str:
    info = found.info
    if info.device_ids:
        return ",".join(info.device_ids)
    return "all" if info.gpu_count == -1 else (str(info.gpu_count) if info.gpu_count else "-")


def own(args: argparse.Namespace) -> tuple[str, str]:
    """(NAME, engine name) for the container the user named."""
    return args.name, engine_name(args.name, os.getuid())


def require_running(proxy: ProxyClient, name: str, full: str) -> None:
    status = proxy.inspect(full).info.status
    if status != "running":
        raise Ds01Error(f"{name} is not running (it is {status}). Start it with `container start {name}`.")


def write_stream(stream: int, data: bytes) -> None:
    out = sys.stderr.buffer if stream == 2 else sys.stdout.buffer
    out.write(data)
    out.flush()


def tunnels(found: Details) -> list[tuple[PublishedPort, str]]:
    """Each port published on 127.0.0.1, with the ssh line that brings it to the same port on a laptop."""
    login = nss.login_name(os.getuid()) or str(os.getuid())
    host = socket.gethostname()
    return [(port, f"ssh -N -L {port.container_port}:127.0.0.1:{port.host_port} {login}@{host}")
            for port in found.ports if port.host_ip == "127.0.0.1" and port.protocol == "tcp"]
