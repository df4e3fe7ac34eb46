"""Benchmark: what the ds01 proxy adds to users' image work, next to the same docker commands sent to the engine.

Starts a private `ds01 proxy` in front of the test bed's engine (bench/_common.py) and times, interleaving the
two sides of each row so background noise hits both alike, alice's commands through the proxy against root's
straight to the engine:

(a) `DOCKER_BUILDKIT=0 docker build --no-cache` of `FROM ds01-test/busybox:latest` + one LABEL, with a context
    of one small file. What the proxy adds per build: the parameter checks, the Dockerfile read, the pending
    record written before the forward and settled after. Target <= 1.3x.
(b) The same build with a context of --context-mib MiB (default 256) of random bytes, which the proxy spools to
    disk and reads through before the engine sees a byte. Target <= 1.6x. The proxy's peak resident memory is
    printed after the row: it must stay flat, far below the context.
(c) `docker images` (alice's list is filtered by the ownership record) and (d) `docker image inspect` of the
    image just built. Target <= 1.3x.

Each build's image is removed afterwards, untimed, on its own side. Times are medians of interleaved runs, the
exit status 0 when every target is met, 3 when one is missed, 1 when the benchmark could not run. Needs root
and the test bed: eval "$(scripts/testbed env)" first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
from _common import (
    DOCKER,
    IMAGE,
    NORMAL_USER,
    BenchError,
    Case,
    Proxy,
    as_user,
    interleave,
    print_ratios,
    run_against_engine,
    running_proxy,
    timed,
)

EXAMPLE = """example:
  eval "$(scripts/testbed env)"
  .venv/bin/python bench/images.py                      # 9 repetitions, about 2-4 minutes
  .venv/bin/python bench/images.py --repeats 5 --context-mib 64

Exit status: 0 when every target is met, 3 when one is missed, 1 when the benchmark could not run.
"""
DOCKERFILE = f"FROM {IMAGE}\nLABEL bench=ds01\n"
PROXIED_TAG, DIRECT_TAG = f"{NORMAL_USER}/bench-build", "ds01-bench/build"  # each timed build's, removed after it
PROXIED_KEPT, DIRECT_KEPT = f"{NORMAL_USER}/bench-kept", "ds01-bench/kept"  # what (d) inspects
_CHUNK = 1 << 20


def make_context(directory: Path, mib: int) -> Path:
    """A build context alice can read: the Dockerfile and `mib` MiB of random bytes (none compress them)."""
    directory.mkdir(mode=0o755)
    (directory / "Dockerfile").write_text(DOCKERFILE)
    with (directory / "data.bin").open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(_CHUNK))
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"/proc/{pid}/status has no VmHWM line")


class Commands:
    def __init__(self, proxy: Proxy, upstream: str, client: docker.DockerClient) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.client = client

    def through(self, *argv: str) -> list[str]:
        return as_user(NORMAL_USER, self.proxy.url, [DOCKER, *argv], {"DOCKER_BUILDKIT": "0"})

    def direct(self, *argv: str) -> list[str]:
        return as_user("root", self.upstream, [DOCKER, *argv], {"DOCKER_BUILDKIT": "0"})

    def build(self, context: Path) -> tuple[Callable[[], float], Callable[[], float]]:
        def side(argv: Callable[..., list[str]], tag: str) -> Callable[[], float]:
            def once() -> float:
                try:
                    return timed(argv("build", "--no-cache", "-q", "-t", tag, str(context)))[0]
                finally:
                    timed(argv("rmi", tag))
            return once
        return side(self.through, PROXIED_TAG), side(self.direct, DIRECT_TAG)

    def images(self) -> tuple[Callable[[], float], Callable[[], float]]:
        return (lambda: timed(self.through("images"))[0]), (lambda: timed(self.direct("images"))[0])

    def inspect(self) -> tuple[Callable[[], float], Callable[[], float]]:
        return (lambda: timed(self.through("image", "inspect", PROXIED_KEPT))[0],
                lambda: timed(self.direct("image", "inspect", DIRECT_KEPT))[0])

    def sweep(self) -> None:
        for tag in (PROXIED_TAG, DIRECT_TAG, PROXIED_KEPT, DIRECT_KEPT):
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(tag, force=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/images.py", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per side of each row (default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    parser.add_argument("--context-mib", type=int, default=256, help="the large context of (b), MiB (default 256)")
    parser.add_argument("--max-seconds", type=float, default=400,
                        help="stop repeating after this long (at least 3 repetitions are made; default 400)")
    parser.add_argument("--keep", action="store_true", help="keep the proxy's private dir (config, events.jsonl)")
    args = parser.parse_args()
    if args.repeats < 1 or args.context_mib < 1:
        parser.error("--repeats and --context-mib must be at least 1")
    return run_against_engine("bench/images.py", lambda upstream, client: bench(args, upstream, client))


def bench(args: argparse.Namespace, upstream: str, client: docker.DockerClient) -> int:
    started = time.monotonic()
    version = client.version()
    print(f"engine {version.get('Version')} (API {version.get('ApiVersion')}), {os.cpu_count()} CPUs; "
          f"large context {args.context_mib} MiB")
    with running_proxy(upstream, args.keep) as proxy:
        commands = Commands(proxy, upstream, client)
        contexts = proxy.root / "contexts"
        contexts.mkdir(mode=0o755)
        try:
            small, large = make_context(contexts / "small", 0), make_context(contexts / "large", args.context_mib)
            timed(commands.through("build", "-q", "-t", PROXIED_KEPT, str(small)))
            timed(commands.direct("build", "-q", "-t", DIRECT_KEPT, str(small)))
            before = peak_rss_mib(proxy.process.pid)
            cases = [Case("a", "docker build, small context", 1.3, *commands.build(small)),
                     Case("b", f"docker build, {args.context_mib} MiB context", 1.6, *commands.build(large)),
                     Case("c", "docker images", 1.3, *commands.images(), inner=3),
                     Case("d", "docker image inspect", 1.3, *commands.inspect(), inner=3)]
            repeats = interleave(cases, args.repeats, args.warmup, started + args.max_seconds)
            print(f"\n{repeats} repetitions; alice through the proxy against root straight to the engine\n")
            all_met = print_ratios(cases, label_width=40)
            after = peak_rss_mib(proxy.process.pid)
            print(f"\nthe proxy's peak resident memory: {before:.1f} MiB before the builds, {after:.1f} MiB after "
                  f"{repeats + args.warmup} builds of the {args.context_mib} MiB context")
        finally:
            commands.sweep()
            shutil.rmtree(contexts, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0 if all_met else 3


if __name__ == "__main__":
    sys.exit(main())
