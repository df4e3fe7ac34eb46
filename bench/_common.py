"""What the benchmarks share: the test bed's engine, private ds01 directories and a private proxy, timed commands,
interleaved sampling and the side-by-side table of medians and ratios."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from ds01.proxy.binds import Pins

BIN = Path(sys.executable).parent
IMAGE = "ds01-test/busybox:latest"
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
NORMAL_USER = "alice"
PRIVATE_DIRS = ("etc", "state", "log", "run")


class BenchError(Exception):
    """The benchmark cannot go on (no test bed, a command failed, a daemon did not start)."""


def engine_url(*needed: str) -> str:
    """The test bed's engine (DOCKER_HOST), once `scripts/testbed env` has set it and the variables named."""
    url = os.environ.get("DOCKER_HOST", "")
    missing = [name for name in ("DS01_CONFIG", *needed) if not os.environ.get(name)]
    if not url.startswith("unix://") or missing:
        raise BenchError(f'run inside the test bed: eval "$(scripts/testbed env)" (DOCKER_HOST, '
                         f"{', '.join(('DS01_CONFIG', *needed))})")
    return url


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        raise BenchError(f"run as root: {why}")


def run_against_engine(prog: str, run: Callable[[str, docker.DockerClient], int]) -> int:
    """As root, `run(engine URL, client)` against the test bed's engine; a benchmark that cannot run says why and
    exits 1."""
    try:
        require_root("it starts a proxy and runs commands as the test user alice")
        upstream = engine_url()
        client = docker.DockerClient(base_url=upstream)
        try:
            return run(upstream, client)
        finally:
            client.close()
    except (BenchError, docker.errors.DockerException) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------------------------------
# private directories and daemons


def private_root(prefix: str, *extra: str) -> Path:
    """A fresh directory under the test bed's, with etc/, state/, log/, run/ and any `extra` subdirectories."""
    base = Path(os.environ.get("DS01_TESTBED_DIR") or tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base if base.is_dir() else None))
    for sub in (*PRIVATE_DIRS, *extra):
        (root / sub).mkdir()
    return root


def ds01_env(root: Path) -> dict[str, str]:
    """This process's environment with every DS01_* path inside `root`."""
    return {**os.environ, "DS01_CONFIG": str(root / "etc" / "resource-limits.yaml"),
            "DS01_STATE_DIR": str(root / "state"), "DS01_LOG_DIR": str(root / "log"),
            "DS01_RUN_DIR": str(root / "run")}


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a while to drain, then SIGKILL."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def roomy_config(shipped: str, data_dir: Path) -> str:
    """The test bed's config, with room for root's 100+ containers and alice's, and a data dir for workspaces."""
    replacements = (("data_dirs: []", f"data_dirs: [{data_dir}]"),
                    ("users: {}\n", "users:\n  root:\n    group: admin\n    max_containers: 10000\n"
                                    f"  {NORMAL_USER}:\n    max_containers: 1000\n"))
    for old, new in replacements:
        if old not in shipped:
            raise BenchError(f"the test bed config has no {old.strip()!r} line to replace; is it the shipped one?")
        shipped = shipped.replace(old, new)
    return shipped


@dataclass
class Proxy:
    root: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]  # DS01_* for the proxy and its clients
    data: Path  # its data dir (security.data_dirs), where workspaces go

    @property
    def socket(self) -> Path:
        return self.root / "run" / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def events_log(self) -> Path:
        return self.root / "log" / "events.jsonl"

    def event_count(self) -> int:
        return len(self.events())

    def events(self) -> list[dict[str, Any]]:
        if not self.events_log.exists():
            return []
        return [json.loads(line) for line in self.events_log.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def running_proxy(upstream: str, keep: bool) -> Iterator[Proxy]:
    """A private `ds01 proxy` in front of the test bed's engine (own config, state, log and run dirs); alice can
    reach its socket, and its data dir is on the test bed's nosuid,nodev data mount, as bind sources must be."""
    netns = os.environ.get("DS01_TESTBED_NETNS", "")
    if not netns:
        raise BenchError('run inside the test bed: eval "$(scripts/testbed env)" (DS01_TESTBED_NETNS)')
    root = private_root("bench-proxy-")
    data = Path(os.environ["DS01_TESTBED_DATA"]) / root.name
    data.mkdir()
    for directory in (root, root / "run", data):
        directory.chmod(0o755)
    config = root / "etc" / "resource-limits.yaml"
    config.write_text(roomy_config(Path(os.environ["DS01_CONFIG"]).read_text(), data))
    env = ds01_env(root)
    # In the engine's network namespace, where the proxy keeps its reach rules; nsenter execs the proxy itself.
    process = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", str(BIN / "ds01"), "proxy",
                                "--listen", str(root / "run" / "docker.sock"), "--upstream", upstream,
                                "--drain-seconds", "2"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proxy = Proxy(root, process, env, data)
    try:
        deadline = time.monotonic() + 30
        while not proxy.socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise BenchError(f"the proxy did not start: {process.communicate()[1].decode(errors='replace')}")
            time.sleep(0.05)
        yield proxy
    finally:
        stop_process(process)
        if keep:
            print(f"\nkept the proxy's dir: {root} (events: {proxy.events_log})")
        else:
            if (root / "state" / "binds").is_dir():  # unmount before any tree removal could reach through a pin
                Pins(root / "state" / "binds").release_unused(set())
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# timed commands


def user_env(user: str, docker_host: str, extra: dict[str, str] | None = None) -> list[str]:
    """`env NAME=VALUE...` words that give a command run through runuser a clean, fixed environment."""
    values = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pwd.getpwnam(user).pw_dir,
              "DOCKER_HOST": docker_host, **(extra or {})}
    return ["env", "-i", *(f"{k}={v}" for k, v in values.items())]


def as_user(user: str, docker_host: str, argv: list[str], extra: dict[str, str] | None = None) -> list[str]:
    return ["runuser", "-u", user, "--", *user_env(user, docker_host, extra), *argv]


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Seconds a command took, and its output; a failure stops the benchmark."""
    began = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} did not finish in {exc.timeout:g} s") from None
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed, done.stdout


# ---------------------------------------------------------------------------------------------------------------
# sampling and the report


def percentile(samples: list[float], fraction: float) -> float:
    """Linear between the closest ranks (statistics.quantiles' inclusive method); NaN without samples."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


@dataclass
class Case:
    """One comparison: `ours` against `theirs`, each a callable that runs once and returns its seconds."""

    key: str
    label: str
    target: float | None  # the ratio ours/theirs aimed at, at most; None: shown only
    ours: Callable[[], float]
    theirs: Callable[[], float]
    sides: tuple[str, str] = ("proxy", "direct")
    inner: int = 1  # samples per side in each repetition: quick commands take more, for steadier medians
    ours_samples: list[float] = field(default_factory=list)
    theirs_samples: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours_samples) / statistics.median(self.theirs_samples)

    @property
    def met(self) -> bool:
        return self.target is None or self.ratio <= self.target


def interleave(cases: list[Case], repeats: int, warmup: int, deadline: float,
               after_each: Callable[[], None] | None = None) -> int:
    """Each repetition runs every case once on each side (`inner` times), alternating which side goes first, so
    background noise hits both sides alike. Stops at `deadline` (monotonic) once 3 repetitions are made; returns
    how many were."""
    for case in cases:  # warm caches (the proxy's session cache, the page cache, the CLI's own files)
        for _ in range(warmup):
            case.ours()
            case.theirs()
    done = 0
    for repetition in range(repeats):
        if time.monotonic() > deadline and done >= 3:
            print(f"(time limit reached after {done} repetitions)", file=sys.stderr)
            break
        for case in cases:
            for sample in range(case.inner):
                if (repetition + sample) % 2 == 0:
                    case.ours_samples.append(case.ours())
                    case.theirs_samples.append(case.theirs())
                else:
                    case.theirs_samples.append(case.theirs())
                    case.ours_samples.append(case.ours())
        done += 1
        if after_each is not None:
            after_each()
    return done


def print_ratios(cases: list[Case], label_width: int = 50) -> bool:
    """Median and p90 of each side, the ratio of the medians and its target; whether every target is met."""
    header = (f"{'':5}{'command':<{label_width}}{'side':<11}{'median ms':>10}{'p90 ms':>9}{'ratio':>8}{'target':>8}"
              "  result")
    print(header)
    print("-" * len(header))
    for case in cases:
        for index, (side, samples) in enumerate(zip(case.sides, (case.ours_samples, case.theirs_samples),
                                                    strict=True)):
            first = index == 0
            ratio = f"{case.ratio:>7.2f}x" if first else ""
            if first and case.target is not None:
                ratio += f"{case.target:>7.2f}x  {verdict(case.met)}"
            print(f"{f'({case.key})' if first else '':5}{case.label if first else '':<{label_width}}{side:<11}"
                  f"{statistics.median(samples) * 1000:>10.1f}{percentile(samples, 0.9) * 1000:>9.1f}{ratio}")
    return all(case.met for case in cases)
