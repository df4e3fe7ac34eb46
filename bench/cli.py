"""Benchmark: how quickly the users' `container` command starts and answers, next to the commands beside it.

Starts a private `ds01 proxy` in front of the test bed's engine (bench/_common.py), makes 20 running CPU-only
containers for alice through it, then times, interleaving the two sides of each row so background noise hits
both alike:

(a) `container --help` against `python3 -c pass` from the same virtualenv: Python's own start-up. Target <= 3x.
(b) `container list` as alice, with her 20 containers, against `docker ps` as alice; both through the proxy.
    Target <= 1.5x.
(c) `container create NAME --cpu-only --dry-run` as alice against `docker create IMAGE true` + `docker rm` as
    alice; both through the proxy. Target <= 1.5x.

Then before and after: (a) and (b) with the command as it was at an earlier commit (default 8be058d, before
issue 11), run from a git worktree on PYTHONPATH through the entry point that commit's pyproject.toml names,
against the command now.

Times are reported, never asserted: the exit status is 0 when the benchmark ran, 1 when it could not. Needs root
and the test bed: eval "$(scripts/testbed env)" first.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
from _common import (
    BIN,
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

REPO = Path(__file__).resolve().parent.parent
CONTAINER = str(BIN / "container")
LISTED = 20  # alice's running containers for (b)
QUICK_SAMPLES = 3  # samples per side in each repetition for the quick rows
BEFORE = "8be058d"  # the last commit before issue 11: the command on docker-py, every subcommand imported
EXAMPLE = """example:
  eval "$(scripts/testbed env)"
  .venv/bin/python bench/cli.py                    # 20 repetitions, about a minute
  .venv/bin/python bench/cli.py --repeats 5 --before 8105fd5
"""


def command_of(tree: str | None) -> list[str]:
    """The `container` command now, or as the checkout at `tree` defines it: the entry point its pyproject names
    (the module moved in issue 11), run by this virtualenv's interpreter the way the installed script runs it."""
    if tree is None:
        return [CONTAINER]
    scripts = tomllib.loads((Path(tree) / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["container"].split(":")
    # -P: not the current directory first on the path, as for the installed script
    return [str(BIN / "python3"), "-P", "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A checkout of `commit` that alice can read, with its modules compiled (alice cannot write __pycache__)."""
    path = Path(tempfile.mkdtemp(prefix="wt-before-"))
    path.chmod(0o755)
    added = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
                           capture_output=True, text=True, check=False)
    if added.returncode != 0:
        path.rmdir()
        raise BenchError(f"git worktree add {commit} failed: {added.stderr.strip()}")
    try:
        compileall.compile_dir(path / "ds01", quiet=1)
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


class Commands:
    """The timed commands. Every container made is named bc-RUNID-N, so the sweep finds any a failure left."""

    def __init__(self, proxy: Proxy, client: docker.DockerClient) -> None:
        self.proxy = proxy
        self.client = client
        self.run_id = uuid.uuid4().hex[:6]
        self.serial = 0
        alice = pwd.getpwnam(NORMAL_USER)
        self.workspaces = proxy.data / NORMAL_USER  # on the data mount, alice's own
        self.workspaces.mkdir()
        os.chown(self.workspaces, alice.pw_uid, alice.pw_gid)
        # alice runs the ds01 this interpreter imports: a PYTHONPATH given to the benchmark goes along
        here = os.environ.get("PYTHONPATH")
        self.alice_env = {"DS01_CONFIG": proxy.env["DS01_CONFIG"], **({"PYTHONPATH": here} if here else {})}

    def next_name(self) -> str:
        self.serial += 1
        return f"bc-{self.run_id}-{self.serial}"

    def as_alice(self, argv: list[str], extra: dict[str, str] | None = None) -> float:
        return timed(as_user(NORMAL_USER, self.proxy.url, argv, {**self.alice_env, **(extra or {})}))[0]

    def make_listed(self) -> None:
        for _ in range(LISTED):
            name = self.next_name()
            self.as_alice([CONTAINER, "create", name, "--cpu-only", "--image", IMAGE,
                           "--workspace", str(self.workspaces / name)])

    def help(self, pythonpath: str | None = None) -> Callable[[], float]:
        env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        return lambda: timed([*command_of(pythonpath), "--help"], env)[0]

    def python(self) -> float:
        return timed([str(BIN / "python3"), "-c", "pass"])[0]

    def listing(self, pythonpath: str | None = None) -> Callable[[], float]:
        extra = {"PYTHONPATH": pythonpath} if pythonpath else None
        return lambda: self.as_alice([*command_of(pythonpath), "list"], extra)

    def ps(self) -> float:
        return self.as_alice([DOCKER, "ps"])

    def dry_run(self) -> float:
        return self.as_alice([CONTAINER, "create", self.next_name(), "--cpu-only", "--image", IMAGE,
                              "--workspace", str(self.workspaces), "--dry-run"])

    def create_rm(self) -> float:
        name = self.next_name()
        return self.as_alice([DOCKER, "create", "--name", name, IMAGE, "true"]) + self.as_alice([DOCKER, "rm", name])

    def listed_now(self) -> int:
        shown = timed(as_user(NORMAL_USER, self.proxy.url, [CONTAINER, "list", "--json"], self.alice_env))[1]
        return shown.count('"engine_name"')

    def sweep(self) -> None:
        for container in self.client.api.containers(all=True, filters={"name": f"bc-{self.run_id}-"}):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(container["Id"], force=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/cli.py", epilog=EXAMPLE, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="interleaved repetitions (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    parser.add_argument("--max-seconds", type=float, default=300,
                        help="stop repeating after this long (at least 3 repetitions are made; default 300)")
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare against (default {BEFORE})")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return run_against_engine("bench/cli.py", lambda upstream, client: bench(args, upstream, client))


def bench(args: argparse.Namespace, upstream: str, client: docker.DockerClient) -> int:
    started = time.monotonic()
    compileall.compile_dir(REPO / "ds01", quiet=1)  # as for the worktree: alice runs the compiled modules
    docker_cli = subprocess.run([DOCKER, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                                text=True, check=False).stdout.strip()
    print(f"Python {sys.version.split()[0]}, docker CLI {docker_cli}, {os.cpu_count()} CPUs")
    with running_proxy(upstream, keep=False) as proxy, worktree(args.before) as before:
        commands = Commands(proxy, client)
        try:
            commands.make_listed()
            print(f"alice has {commands.listed_now()} running containers through the proxy")
            cases = [
                Case("a", "container --help vs python3 -c pass", 3.0, commands.help(), commands.python,
                     ("container", "python3"), QUICK_SAMPLES),
                Case("b", f"container list vs docker ps ({LISTED} containers)", 1.5, commands.listing(), commands.ps,
                     ("container", "docker"), QUICK_SAMPLES),
                Case("c", "container create --dry-run vs docker create + rm", 1.5, commands.dry_run,
                     commands.create_rm, ("container", "docker")),
            ]
            history = [
                Case("a", "container --help", None, commands.help(), commands.help(str(before)),
                     ("now", args.before), QUICK_SAMPLES),
                Case("b", f"container list ({LISTED} containers)", None, commands.listing(),
                     commands.listing(str(before)), ("now", args.before), QUICK_SAMPLES),
            ]
            load_before = os.getloadavg()
            repeats = interleave([*cases, *history], args.repeats, args.warmup, started + args.max_seconds)
            load_after = os.getloadavg()
        finally:
            commands.sweep()
    print()
    print_ratios(cases)
    print(f"\nbefore and after: the command at {args.before} against now (ratio = now / before)")
    print_ratios(history)
    for case in history:
        saved = statistics.median(case.theirs_samples) - statistics.median(case.ours_samples)
        print(f"  {case.label}: {saved * 1000:.1f} ms less per call")
    print(f"\n{repeats} repetitions, interleaved ({QUICK_SAMPLES} samples per side each for the quick rows); "
          "times are reported, not asserted.")
    print("load average (1/5/15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
        *load_before, *load_after))
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
