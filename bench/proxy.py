"""Benchmark: what the ds01 proxy costs real clients, next to the same commands sent straight to the engine.

Starts its own `ds01 proxy` (private config, state, log and run dirs) in front of the test bed's engine, then
times, interleaving proxied and direct runs so background noise hits both sides alike:

(a) `docker ps` and `docker ps -a` with 100 stopped containers labelled ds01.user=root (and 20 for alice)
    on the engine. As root the proxy treats the caller as an admin and forwards the list unchanged; as alice
    (runuser) it adds a label=ds01.user=alice filter, so the direct run for that row passes the same filter.
    Target: proxy/direct <= 1.15.
(b) `docker run --rm ds01-test/busybox:latest true`. Target <= 1.10.
(c) create + start of a CPU-only container: `container create NAME --cpu-only -- true` through the proxy
    against `docker run -d ds01-test/busybox:latest true` direct; each container is removed afterwards,
    untimed. Target <= 1.3. Row (c') times `docker run -d` on both sides, which separates what the proxy
    adds from what the Python client's start-up costs.

Then, unless --no-explain, it looks at where the time goes: which API requests each proxied command made and
when (from the proxy's events.jsonl, one line per request), the added latency of single requests, proxy
against direct, (b) direct with and without the HostConfig the proxy writes, and the `container` CLI's
start-up cost.

The 120 stopped containers are created once, directly on the engine, and reused by later runs;
--cleanup removes them. Needs root and the test bed: eval "$(scripts/testbed env)" first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

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
    engine_url,
    interleave,
    print_ratios,
    require_root,
    running_proxy,
    timed,
)

from ds01.proxy.cgroups import CgroupParents

FIXTURE_LABEL = "ds01.bench-proxy"
FIXTURE_COUNTS = {"root": 100, "alice": 20}
PS_SAMPLES_PER_REPETITION = 3
EXAMPLE = """example:
  eval "$(scripts/testbed env)"
  .venv/bin/python bench/proxy.py                  # 15 repetitions of each, about 1-2 minutes
  .venv/bin/python bench/proxy.py --repeats 5 --no-explain
  .venv/bin/python bench/proxy.py --cleanup        # remove the 120 stopped benchmark containers

Exit status: 0 when every target is met, 3 when one is missed, 1 when the benchmark could not run.
"""


# ---------------------------------------------------------------------------------------------------------------
# setup: the engine's fixture containers


def fixture_name(user: str, index: int) -> str:
    return f"ds01-benchproxy-{user}-{index:03d}"


def listed(client: docker.DockerClient, filters: dict[str, str]) -> list[dict[str, Any]]:
    """Container summaries, without docker-py's inspect of each (which races with concurrent removals)."""
    return list(client.api.containers(all=True, filters=filters))


def ensure_fixture(client: docker.DockerClient) -> int:
    """The stopped, labelled containers (a) lists; only the missing ones are created. Returns how many were made."""
    present = {name.lstrip("/") for c in listed(client, {"label": FIXTURE_LABEL}) for name in c["Names"]}
    made = 0
    for user, count in FIXTURE_COUNTS.items():
        for index in range(count):
            name = fixture_name(user, index)
            if name in present:
                continue
            # Under the user's cgroup parent, as the proxy makes containers: the label alone makes no owner.
            client.api.create_container(IMAGE, ["true"], name=name, labels={
                FIXTURE_LABEL: "1", "ds01.user": user, "ds01.type": "docker"},
                host_config=client.api.create_host_config(cgroup_parent=cgroup_parent(client, user)))
            made += 1
    return made


def cgroup_parent(client: docker.DockerClient, user: str) -> str:
    info = client.info()
    return CgroupParents(str(info.get("CgroupDriver")), str(info.get("CgroupVersion"))).name(user)


def remove_fixture(client: docker.DockerClient) -> int:
    found = listed(client, {"label": FIXTURE_LABEL})
    for container in found:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container["Id"], force=True)
    return len(found)


# ---------------------------------------------------------------------------------------------------------------
# the timed commands


class Commands:
    """Builds the cases. Every container it makes is named bp-RUNID-N, so the sweep finds any a failure left."""

    def __init__(self, proxy: Proxy, upstream: str, client: docker.DockerClient) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.client = client
        self.run_id = uuid.uuid4().hex[:6]
        self.serial = 0
        self.root_env = {**os.environ, "DOCKER_HOST": upstream}
        self.root_proxy_env = {**proxy.env, "DOCKER_HOST": proxy.url}

    def ps(self, *args: str) -> tuple[Callable[[], float], Callable[[], float]]:
        def through() -> float:
            return timed([DOCKER, "ps", *args], self.root_proxy_env)[0]

        def direct() -> float:
            return timed([DOCKER, "ps", *args], self.root_env)[0]
        return through, direct

    def ps_as_user(self, *args: str) -> tuple[Callable[[], float], Callable[[], float]]:
        # Both sides pay for runuser; the direct side asks for the filter the proxy adds (alice cannot reach
        # the engine's socket, so it runs as root).
        def through() -> float:
            return timed(as_user(NORMAL_USER, self.proxy.url, [DOCKER, "ps", *args]))[0]

        def direct() -> float:
            return timed(as_user("root", self.upstream,
                                 [DOCKER, "ps", *args, "--filter", f"label=ds01.user={NORMAL_USER}"]))[0]
        return through, direct

    def run_rm(self) -> tuple[Callable[[], float], Callable[[], float]]:
        argv = [DOCKER, "run", "--rm", IMAGE, "true"]
        return (lambda: timed(argv, self.root_proxy_env)[0]), (lambda: timed(argv, self.root_env)[0])

    def next_name(self) -> str:
        self.serial += 1
        return f"bp-{self.run_id}-{self.serial}"

    def create_start(self) -> tuple[Callable[[], float], Callable[[], float]]:
        def through() -> float:
            name = self.next_name()
            workspace = self.proxy.data / name
            try:
                return timed([str(BIN / "container"), "create", name, "--cpu-only", "--image", IMAGE,
                              "--workspace", str(workspace), "--", "true"], self.root_proxy_env)[0]
            finally:
                self.remove(f"{name}._.0")

        return through, self.run_detached()[1]

    def run_detached(self) -> tuple[Callable[[], float], Callable[[], float]]:
        """(c) with the same client on both sides: what the proxy adds to a create+start, without Python's start-up."""
        def side(env: dict[str, str]) -> Callable[[], float]:
            def once() -> float:
                name = self.next_name()
                try:
                    return timed([DOCKER, "run", "-d", "--name", name, IMAGE, "true"], env)[0]
                finally:
                    self.remove(name)
            return once
        return side(self.root_proxy_env), side(self.root_env)

    def remove(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(name, force=True)

    def sweep(self) -> None:
        for container in listed(self.client, {"name": f"bp-{self.run_id}-"}):
            self.remove(container["Id"])


def build_cases(commands: Commands) -> list[Case]:
    cases = []
    for key, label, target, pair in (
            ("a", "docker ps (root, admin)", 1.15, commands.ps()),
            ("a", "docker ps -a (root, admin)", 1.15, commands.ps("-a")),
            ("a", f"docker ps ({NORMAL_USER}, filtered)", 1.15, commands.ps_as_user()),
            ("a", f"docker ps -a ({NORMAL_USER}, filtered)", 1.15, commands.ps_as_user("-a")),
            ("b", "docker run --rm IMAGE true", 1.10, commands.run_rm()),
            ("c", "create+start (container create vs docker run -d)", 1.30, commands.create_start()),
            ("c'", "create+start (docker run -d on both sides)", 1.30, commands.run_detached())):
        cases.append(Case(key, label, target, *pair, inner=PS_SAMPLES_PER_REPETITION if key == "a" else 1))
    return cases


def fixture_intact(client: docker.DockerClient) -> bool:
    """Whether all the listed containers are still there; anything that removes every ds01.user-labelled
    container (the test suite's proxy teardown does) takes them away mid-run. Missing ones are made again."""
    present = len(listed(client, {"label": FIXTURE_LABEL}))
    if present == sum(FIXTURE_COUNTS.values()):
        return True
    ensure_fixture(client)
    return False


def measure(cases: list[Case], repeats: int, warmup: int, deadline: float,
            client: docker.DockerClient) -> tuple[int, int]:
    """Interleaved repetitions; returns how many were made and how many of them found the fixture disturbed."""
    disturbed = 0

    def check() -> None:
        nonlocal disturbed
        disturbed += not fixture_intact(client)

    fixture_intact(client)
    return interleave(cases, repeats, warmup, deadline, check), disturbed


def print_table(cases: list[Case], repeats: int) -> bool:
    all_met = print_ratios(cases)
    print(f"\n{repeats} repetitions, interleaved; each gives one sample per side ({PS_SAMPLES_PER_REPETITION} for the "
          "quick (a) rows). ratio = median proxy / median direct.")
    return all_met


# ---------------------------------------------------------------------------------------------------------------
# where the time goes


def requests_made(proxy: Proxy, action: Callable[[], float]) -> tuple[float, list[tuple[float, str]]]:
    """One more run of a proxied command, with the API requests it made according to the proxy's event log:
    (ms after the first request, "METHOD /path") each; ids are shortened so runs read alike."""
    before = proxy.event_count()
    elapsed = action()
    made: list[tuple[float, str]] = []
    first = None
    for event in proxy.events()[before:]:
        if event["type"] not in ("proxy.allow", "proxy.deny"):
            continue
        stamp = datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()
        first = stamp if first is None else first
        method, _, path = str(event["details"]["endpoint"]).partition(" ")
        kept = [part if len(part) < 24 else "{id}" for part in path.split("/") if part and not part.startswith("v1.")]
        made.append(((stamp - first) * 1000, f"{method} /{'/'.join(kept)}"))
    return elapsed, made


def import_times() -> list[tuple[float, str]]:
    """The biggest imports of the `container` CLI (cumulative ms, module), from python -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ds01.cli.container"],
                          capture_output=True, text=True, check=False, timeout=60)
    found = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            module = name.strip()
            if (depth <= 2 and module.startswith("ds01")) or module in ("docker", "yaml", "ldap", "requests"):
                found.append((int(parts[1]) / 1000, module))
    return found


def raw_request(sock: socket.socket, rfile: Any, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request on an open connection: (status, body)."""
    extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
    sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: docker\r\n{extra}\r\n".encode() + body)
    status_line = rfile.readline()
    length = 0
    chunked = False
    while (line := rfile.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    answer = b""
    if chunked:
        while (size := int(rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
            answer += rfile.read(size + 2)[:-2]
        rfile.readline()
    elif length and method != "HEAD":
        answer = rfile.read(length)
    return int(status_line.split()[1]), answer


@dataclass(frozen=True)
class Probe:
    label: str
    method: str
    target: str
    body: bytes = b""
    after: Callable[[bytes], None] | None = None  # untimed, with the answer: e.g. remove what it created


def request_latency(path: str, probe: Probe, repeats: int, fresh: bool) -> float:
    """Median seconds of one request on a kept-alive connection (or a new connection each time)."""
    samples = []
    sock = rfile = None
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            if sock is None or fresh:
                if sock is not None:
                    sock.close()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                rfile = sock.makefile("rb")
            status, answer = raw_request(sock, rfile, probe.method, probe.target, probe.body)
            samples.append(time.perf_counter() - began)
            if status >= 400:
                raise BenchError(f"{probe.method} {probe.target} answered {status}: {answer[:300]!r}")
            if probe.after is not None:
                probe.after(answer)
    finally:
        if sock is not None:
            sock.close()
    return statistics.median(samples)


def engine_side_cost(commands: Commands, repeats: int) -> None:
    """(b) split: direct runs with and without the HostConfig the proxy writes into every create."""
    created = subprocess.run([DOCKER, "create", IMAGE, "true"], env=commands.root_proxy_env, capture_output=True,
                             text=True, check=False)
    if created.returncode != 0:
        raise BenchError(f"docker create through the proxy failed: {created.stderr}")
    host = commands.client.api.inspect_container(created.stdout.strip())["HostConfig"]
    commands.remove(created.stdout.strip())
    flags = ["--cgroup-parent", host["CgroupParent"], "--cpus", f"{host['NanoCpus'] / 1e9:g}",
             "--memory", str(host["Memory"]), "--memory-swap", str(host["MemorySwap"]),
             "--shm-size", str(host["ShmSize"]), "--pids-limit", str(host["PidsLimit"])]
    sides = {"proxied": ([], commands.root_proxy_env), "direct": ([], commands.root_env),
             "direct, with the proxy's HostConfig": (flags, commands.root_env)}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, (extra, env) in sides.items():
            samples[name].append(timed([DOCKER, "run", "--rm", *extra, IMAGE, "true"], env)[0])
    print(f"\n(b) split, median of {repeats} interleaved runs (ms); the proxy sets {' '.join(flags)}")
    for name, values in samples.items():
        print(f"  docker run --rm, {name:<46}{statistics.median(values) * 1000:>8.1f}")


def explain(commands: Commands, cases: list[Case]) -> None:
    proxy, upstream = commands.proxy, commands.upstream.removeprefix("unix://")
    fixture_intact(commands.client)
    print("\nwhere the time goes")
    print("-------------------")
    print("API requests per proxied command (one extra run each; +ms: when the proxy decided each, from events.jsonl):")
    for case in cases:
        if case.label.startswith(("docker ps (alice", "docker ps -a (root")):
            continue
        elapsed, made = requests_made(proxy, case.ours)
        listing = ", ".join(f"{what} +{offset:.0f}" for offset, what in made)
        print(f"  {case.label}: {len(made)} requests, {elapsed * 1000:.0f} ms in all:\n    {listing}")

    def remove_created(answer: bytes) -> None:
        commands.remove(str(json.loads(answer)["Id"]))

    mine = urlencode({"all": "1", "filters": json.dumps({"label": ["ds01.user=root"]})})
    probes = [Probe("HEAD /_ping", "HEAD", "/_ping"),
              Probe("GET /version", "GET", "/v1.41/version"),
              Probe("GET /containers/json?all=1 (all containers)", "GET", "/v1.41/containers/json?all=1"),
              Probe("GET /containers/json?all=1, label ds01.user=root", "GET", f"/v1.41/containers/json?{mine}"),
              Probe("GET /images/IMAGE/json", "GET", f"/v1.41/images/{IMAGE}/json"),
              Probe("POST /containers/create (then removed, untimed)", "POST", "/v1.41/containers/create",
                    json.dumps({"Image": IMAGE, "Cmd": ["true"]}).encode(), remove_created)]
    print("\nsingle requests as root, median of 20 (ms): kept-alive connection | new connection each time")
    print(f"  {'request':<52}{'proxy':>8}{'direct':>8}{'added':>8} |{'proxy':>8}{'direct':>8}{'added':>8}")
    for probe in probes:
        row = []
        for fresh in (False, True):
            through = request_latency(str(proxy.socket), probe, 20, fresh)
            direct = request_latency(upstream, probe, 20, fresh)
            row += [through * 1000, direct * 1000, (through - direct) * 1000]
        print(f"  {probe.label:<52}{row[0]:>8.2f}{row[1]:>8.2f}{row[2]:>8.2f} |{row[3]:>8.2f}{row[4]:>8.2f}"
              f"{row[5]:>8.2f}")
    print("  (a create through the proxy also makes its own calls to the engine first: it lists the caller's\n"
          "  containers to count them, inspects what the body refers to, and sets up the user's cgroup parent)")

    engine_side_cost(commands, 10)

    print("\nclient start-up alone (median of 10, ms): (c)'s proxied side pays it, its direct side does not")
    for label, argv in (("container --help (Python CLI)", [str(BIN / "container"), "--help"]),
                        ("docker --help (Go CLI)", [DOCKER, "--help"])):
        samples = [timed(argv, commands.root_proxy_env)[0] for _ in range(10)]
        print(f"  {label:<52}{statistics.median(samples) * 1000:>8.1f}")
    print("  biggest imports of the container CLI (python -X importtime, cumulative ms, one run):")
    for took, name in sorted(import_times(), reverse=True)[:9]:
        print(f"    {took:7.1f}  {name}")


# ---------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/proxy.py", epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per side of each command (default 15)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    parser.add_argument("--max-seconds", type=float, default=240,
                        help="stop repeating after this long (at least 3 repetitions are made; default 240)")
    parser.add_argument("--no-explain", action="store_true", help="skip the where-the-time-goes section")
    parser.add_argument("--keep", action="store_true", help="keep the proxy's private dir (config, events.jsonl)")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove the stopped benchmark containers from the engine, and measure nothing")
    parser.add_argument("--keep-fixture", action="store_true",
                        help="leave the stopped benchmark containers for the next run (they count against the "
                             "test users' container limits, so tests fail while they exist)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        require_root("it starts a proxy and runs commands as the test user alice")
        upstream = engine_url()
        client = docker.DockerClient(base_url=upstream)
        try:
            if args.cleanup:
                print(f"removed {remove_fixture(client)} benchmark containers")
                return 0
            return bench(args, upstream, client)
        finally:
            if not args.keep_fixture:
                print(f"removed {remove_fixture(client)} benchmark containers")
            client.close()
    except (BenchError, docker.errors.DockerException) as exc:
        print(f"bench/proxy.py: {exc}", file=sys.stderr)
        return 1


def bench(args: argparse.Namespace, upstream: str, client: docker.DockerClient) -> int:
    started = time.monotonic()
    made = ensure_fixture(client)
    total = len(listed(client, {}))
    versions = client.version()
    cli = subprocess.run([DOCKER, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True,
                         check=False).stdout.strip()
    print(f"engine {versions.get('Version')} (API {versions.get('ApiVersion')}), docker CLI {cli}, "
          f"{os.cpu_count()} CPUs")
    print(f"fixture: {sum(FIXTURE_COUNTS.values())} stopped containers ({made} created now); "
          f"{total} containers on the engine in all")
    load_before = os.getloadavg()
    with running_proxy(upstream, args.keep) as proxy:
        commands = Commands(proxy, upstream, client)
        try:
            cases = build_cases(commands)
            repeats, disturbed = measure(cases, args.repeats, args.warmup, started + args.max_seconds, client)
            load_after = os.getloadavg()
            print()
            all_met = print_table(cases, repeats)
            print("load average (1/5/15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
                *load_before, *load_after))
            if disturbed:
                print(f"warning: in {disturbed} of {repeats} repetitions something else removed benchmark "
                      "containers (they were made again); the (a) rows of those runs listed fewer")
            if not args.no_explain:
                explain(commands, cases)
        finally:
            commands.sweep()
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0 if all_met else 3


if __name__ == "__main__":
    sys.exit(main())
