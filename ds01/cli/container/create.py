"""`container create`: one command from nothing to a running container with GPUs and a workspace."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ds01 import labels
from ds01.cli.container import waiting
from ds01.cli.container.client import ProxyClient, create_body
from ds01.cli.container.common import add_name, tunnels
from ds01.cli.container.image import own_or_given
from ds01.cli.context import Context
from ds01.config import validators
from ds01.errors import ConfigError, Ds01Error, UsageError
from ds01.identity import nss
from ds01.names import check_name, engine_name
from ds01.records import Details
from ds01.units import format_duration, format_equivalents, format_size, parse_size

KEEP_ALIVE = ["sleep", "infinity"]  # the default command: the container stays up until stopped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_name(parser)
    parser.add_argument("--image", help="image to run: NAME[:TAG] of one of yours (`container image list`), else as "
                                         "given (default: containers.default_image from the ds01 config)")
    gpus = parser.add_mutually_exclusive_group()
    gpus.add_argument("--gpus", metavar="N",
                      help="how many GPUs (default 1; 'all' for your per-container maximum). Users limited to MIG "
                           "slices get slices instead")
    gpus.add_argument("--mig", metavar="PROFILE", help="one MIG slice of this profile instead, e.g. 2g.20gb")
    gpus.add_argument("--cpu-only", action="store_true", help="no GPU at all")
    parser.add_argument("--cpus", help="CPUs, e.g. 4 or 0.5 (default and maximum: your per-container limit)")
    parser.add_argument("--memory", metavar="SIZE", help="memory, e.g. 32g (default and maximum: your limit)")
    parser.add_argument("--shm-size", metavar="SIZE", help="size of /dev/shm, e.g. 2g (default: your limit)")
    parser.add_argument("--workspace", metavar="DIR",
                        help="host directory mounted at /workspace (default: WORKSPACE_ROOT/NAME from the config, "
                             "~/workspace/NAME as shipped); created if missing, never deleted by ds01")
    parser.add_argument("--port", action="append", type=_port, default=[], metavar="PORT",
                        help="publish this container port (tcp) on a free port of the server's 127.0.0.1, for "
                             "ssh -L from your laptop; repeat for more (Jupyter: --port 8888)")
    parser.add_argument("--wait", nargs="?", const="", metavar="DURATION",
                        help="when the GPUs are taken, wait in the queue for them up to DURATION (e.g. 30m, 2h; "
                             "default: scheduler.default_wait from the ds01 config, 1h as shipped); Ctrl-C leaves "
                             "the queue")
    parser.add_argument("--dry-run", action="store_true",
                        help="ask the proxy what would be granted, and create nothing")


@dataclass(frozen=True)
class Request:
    image: str
    gpus: int  # 0: none, -1: all allowed
    mig: str | None
    cpus: float | None
    memory: int | None
    shm_size: int | None
    workspace: Path
    command: list[str]
    ports: tuple[int, ...] = ()
    wait_seconds: int = 0  # how long the GPU request may wait in the queue; 0: not at all


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return int(text)


def gpus_asked(args: argparse.Namespace) -> int:
    if args.cpu_only or args.mig:
        return 0
    if args.gpus is None:
        return 1
    if args.gpus == "all":
        return -1
    if not args.gpus.isdigit() or int(args.gpus) < 1:
        raise UsageError(f"--gpus {args.gpus}: give a whole number of at least 1, or 'all' (or --cpu-only for none).")
    return int(args.gpus)


def size_asked(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}.") from None
    if size <= 0:
        raise UsageError(f"{option}: {text!r} is no memory at all; give a size such as 512m or 8g.")
    return size


def cpus_asked(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        cpus = float(text)
    except ValueError:
        cpus = 0.0
    if not cpus > 0 or cpus == float("inf"):
        raise UsageError(f"--cpus {text}: give a positive number of CPUs, such as 4 or 0.5.")
    return cpus


def workspace_path(given: str | None, root: str, name: str) -> Path:
    """--workspace, or ROOT/NAME; a leading ~ is the caller's home from the password database."""
    home = str(nss.home_of(os.getuid()))

    def expand(path: str) -> str:
        return home + path[1:] if path == "~" or path.startswith("~/") else os.path.expanduser(path)

    return Path(os.path.abspath(expand(given) if given else f"{expand(root).rstrip('/')}/{name}"))


def _request(args: argparse.Namespace, context: Context) -> Request:
    gpus, cpus = gpus_asked(args), cpus_asked(args.cpus)
    memory, shm_size = size_asked("--memory", args.memory), size_asked("--shm-size", args.shm_size)
    config = context.config  # read after the options are checked: a bad flag is named before a bad config
    image = args.image or config.containers.default_image
    if not image:
        raise ConfigError(f"no image: give one with --image (for example --image pytorch/pytorch:latest); the "
                          f"ds01 config ({config.source}) sets no containers.default_image.")
    workspace = workspace_path(args.workspace, config.containers.workspace_root, args.name)
    return Request(image, gpus, args.mig, cpus, memory, shm_size, workspace, args.command or KEEP_ALIVE,
                   tuple(dict.fromkeys(args.port)), _wait(args, gpus, config.scheduler.default_wait_seconds))


def _wait(args: argparse.Namespace, gpus: int, default_seconds: int) -> int:
    if args.wait is None:
        return 0
    if args.cpu_only:
        raise UsageError("--wait waits for GPUs, and --cpu-only asks for none; leave one of them out.")
    if args.dry_run:
        raise UsageError("--dry-run asks what would be granted now and waits for nothing; leave --wait out.")
    if args.wait == "":
        return default_seconds
    try:
        return validators.positive_duration(args.wait)
    except ValueError:
        raise UsageError(f"--wait {args.wait}: give a duration such as 30m, 2h or 1d (or --wait alone for "
                         f"{format_duration(default_seconds)}).") from None


def missing_dirs(path: Path) -> list[Path]:
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    if not path.is_dir():
        raise UsageError(f"workspace {path} is not a directory; choose another with --workspace DIR.")
    return missing[::-1]


def make_dirs(missing: list[Path]) -> None:
    for directory in missing:
        try:
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)
        except OSError as exc:
            raise UsageError(f"cannot create the workspace directory {directory}: {exc.strerror}. Choose another "
                             "with --workspace DIR.") from None


def _body(request: Request, workspace: Path) -> dict[str, Any]:
    body = create_body(request.image, request.command, workspace=str(workspace), gpus=request.gpus, mig=request.mig,
                       cpus=request.cpus, memory=request.memory, shm_size=request.shm_size, ports=request.ports)
    if request.wait_seconds:
        body["Labels"][labels.REQUEST_WAIT] = f"{request.wait_seconds}s"
    return body


def _create(proxy: ProxyClient, name: str, full: str, request: Request) -> None:
    """The create, and while it waits in the queue (--wait), its place on a status line."""
    if not request.wait_seconds:
        with progress(f"creating {name}... "):
            proxy.create(full, _body(request, request.workspace))
        return
    queue_id = waiting.new_queue_id()
    print(f"creating {name}, waiting up to {format_duration(request.wait_seconds)} for GPUs if they are taken "
          "(Ctrl-C leaves the queue)...", flush=True)
    with waiting.withdrawn_on_interrupt(proxy, queue_id), waiting.StatusLine(proxy, queue_id).running():
        proxy.create(full, _body(request, request.workspace), queue_id=queue_id, wait_seconds=request.wait_seconds)
    print(f"created {name}", flush=True)


def _equivalents(text: str | None) -> str:
    try:
        return format_equivalents(Fraction(text)) if text else "0"
    except ValueError:
        return text or "0"


def _gpu_line(gpus: list[str], equivalents: str) -> str:
    if not gpus:
        return "no GPU"
    return f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}: {', '.join(gpus)} ({equivalents} GPU-equivalents)"


def _dry_run(proxy: ProxyClient, name: str, full: str, request: Request) -> int:
    missing = missing_dirs(request.workspace)
    # The proxy checks the mount against the real directory; until it exists, its nearest existing parent.
    checked = missing[0].parent if missing else request.workspace
    reply = proxy.dry_run(full, _body(request, checked))
    print(f"dry run: nothing was created. `container create {name}` would get:")
    rows = [("image", reply.get("image") or request.image),
            ("GPUs", _gpu_line(list(reply.get("gpus") or []), str(reply.get("gpu_equivalents") or "0"))),
            ("CPUs", f"{reply.get('cpus') or 0:g}"),
            ("memory", format_size(int(reply["memory_bytes"])) if reply.get("memory_bytes") else "-"),
            ("shm", format_size(int(reply["shm_size_bytes"])) if reply.get("shm_size_bytes") else "-"),
            ("pids", str(reply.get("pids_limit") or "-")),
            ("workspace", f"{request.workspace} at /workspace{' (would be created)' if missing else ''}")]
    for label, value in rows:
        print(f"  {label:<10} {value}")
    if reply.get("stripped_env"):
        print(f"  (these variables would be dropped: {', '.join(reply['stripped_env'])})")
    print(f"Run it without --dry-run to create it: container create {name} ...")
    return 0


@contextlib.contextmanager
def progress(text: str) -> Iterator[None]:
    print(text, end="", flush=True)
    try:
        yield
    except BaseException:
        print("failed", flush=True)
        raise


def _report(name: str, found: Details, request: Request) -> None:
    info = found.info
    gpus = list(info.device_ids)
    equivalents = _equivalents(info.labels.get(labels.GPU_EQUIVALENTS))
    print(f"{name} is running with {_gpu_line(gpus, equivalents)}")
    print(f"  image      {found.image}")
    limits = [f"{found.cpus:g} CPU{'' if found.cpus == 1 else 's'}" if found.cpus else None,
              f"{format_size(found.memory_bytes)} memory" if found.memory_bytes else None,
              f"{format_size(found.shm_size_bytes)} shm" if found.shm_size_bytes else None]
    print(f"  limits     {', '.join(item for item in limits if item) or 'none'}")
    print(f"  workspace  {found.workspace or request.workspace} at /workspace (kept when the container is removed)")
    for _, line in tunnels(found):
        print(f"  port       from your laptop: {line}")
    print("next steps:")
    print(f"  container open {name}             a shell inside it")
    print(f"  container exec {name} -- CMD      run one command")
    print(f"  container stop {name}             when you are done; `container remove {name}` gives its GPUs back")


def run(args: argparse.Namespace, context: Context) -> int:
    name = check_name(args.name)
    full = engine_name(name, os.getuid())
    request = _request(args, context)
    with ProxyClient.of(context.paths) as proxy:
        if args.image:  # your own image first, as `container image build NAME` names it
            request = dataclasses.replace(request, image=own_or_given(proxy, args.image))
        if args.dry_run:
            return _dry_run(proxy, name, full, request)
        missing = missing_dirs(request.workspace)
        make_dirs(missing)
        try:
            _create(proxy, name, full, request)
        except BaseException:
            for directory in reversed(missing):  # leave no trace of a create that did not happen
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        with progress("starting... "):
            try:
                proxy.start(full)
            except Ds01Error as exc:
                raise Ds01Error(f"{name} was created but did not start: {exc} See `container logs {name}`, then "
                                f"`container remove {name}`.") from exc
            print("started", flush=True)
        _report(name, proxy.inspect(full), request)
    sys.stdout.flush()
    return 0
