"""Shared fixtures: the test bed (private dockerd + simulated NVML) brought up through scripts/testbed."""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from ds01 import eventlog
from ds01.errors import Denied
from ds01.eventlog import EventFilter, EventLog
from ds01.proxy.binds import Pins
from ds01.proxy.http import HttpError
from ds01.proxy.outcomes import Deny
from ds01.reasons import Reason

REPO = Path(__file__).resolve().parents[1]
TESTBED_SCRIPT = REPO / "scripts" / "testbed"
TOPOLOGIES = REPO / "tests" / "fakes" / "topologies"
TEST_IMAGE = "ds01-test/busybox:latest"


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # a fixture value, not a test class

    dir: Path
    env: dict[str, str]

    @property
    def docker_host(self) -> str:
        return self.env["DOCKER_HOST"]

    @property
    def netns(self) -> str:
        """The network namespace the engine runs in: container IPs and ports published on 127.0.0.1 are there."""
        return self.env["DS01_TESTBED_NETNS"]

    @property
    def hook_records(self) -> Path:
        return self.dir / "hook-records.jsonl"

    def hook_record_for(self, container_id: str) -> dict[str, Any]:
        for line in self.hook_records.read_text().splitlines():
            record = json.loads(line)
            if record["container_id"] == container_id:
                return dict(record)
        raise AssertionError(f"the stand-in hook recorded nothing for container {container_id}")


def in_netns(testbed: Testbed, user: str, argv: Sequence[str], *, timeout: float = 60,
             **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run argv as a test user inside the test bed's network namespace (text, captured, unchecked)."""
    return subprocess.run(["ip", "netns", "exec", testbed.netns, "runuser", "-u", user, "--", *argv],
                          capture_output=True, text=True, check=False, timeout=timeout, **kwargs)


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        name, _, value = words[1].partition("=")
        env[name] = value
    return env


@pytest.fixture(autouse=True)
def event_log_of_the_test() -> Iterator[None]:
    """A process resolves its event log's place once; each test resolves it again, from its own environment."""
    eventlog.configure(None, None)
    yield
    eventlog.configure(None, None)


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    """The running test bed. Under CI=true a test bed that cannot come up fails the run, never skips it."""
    if os.geteuid() != 0:
        message = "the test bed needs root (it starts a private dockerd and creates test users)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    up = subprocess.run([str(TESTBED_SCRIPT), "up"], capture_output=True, text=True, check=False)
    if up.returncode != 0:
        pytest.fail(f"scripts/testbed up failed ({up.returncode}):\n{up.stderr}")
    printed = subprocess.run([str(TESTBED_SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    env = _parse_exports(printed)
    os.environ.update(env)
    # glibc reads LD_LIBRARY_PATH once, at process start. Loading the fake by path registers its soname,
    # so pynvml's later dlopen("libnvidia-ml.so.1") finds it even when pytest was started outside the bed.
    ctypes.CDLL(str(Path(env["DS01_TESTBED_DIR"]) / "lib" / "libnvidia-ml.so.1"), mode=ctypes.RTLD_GLOBAL)
    return Testbed(dir=Path(env["DS01_TESTBED_DIR"]), env=env)


class TopologyFile:
    """A private, editable copy of a shipped topology; edits are atomic renames, as the fake expects."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))

    def write(self, topology: dict[str, Any]) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(topology))
        os.replace(staging, self.path)


def load_topology(name: str) -> dict[str, Any]:
    return dict(json.loads((TOPOLOGIES / f"{name}.json").read_text()))


@pytest.fixture
def topology(testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TopologyFile:
    """The 8-GPU topology in a file of this test's own, named by FAKE_NVML_TOPOLOGY for the test."""
    topology_file = TopologyFile(tmp_path / "topology.json")
    topology_file.write(load_topology("a100-8gpu"))
    monkeypatch.setenv("FAKE_NVML_TOPOLOGY", str(topology_file.path))
    return topology_file


@pytest.fixture
def engine(testbed: Testbed) -> Iterator[docker.DockerClient]:
    """A docker-py client on the test bed's private engine (direct, not through the proxy)."""
    client = docker.DockerClient(base_url=testbed.docker_host)
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class ProxyNode:
    """An engine other than the test bed's, for a proxy of its own: a fleet node's."""

    netns: str
    docker_host: str
    topology: Path


@dataclass
class ProxyHandle:
    """A running `ds01 proxy` on the test bed, with its own config, state, log and run dirs."""

    __test__ = False

    root: Path
    process: subprocess.Popen[str]
    env: dict[str, str]  # for clients: DOCKER_HOST points at the proxy

    @property
    def socket(self) -> Path:
        return self.root / "run" / "docker.sock"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "resource-limits.yaml"

    @property
    def data(self) -> Path:
        """This proxy's data directory (security.data_dirs): on the test bed's nosuid,nodev data mount."""
        return Path(self.env["DS01_TESTBED_DATA"]) / self.root.name

    def events(self) -> list[dict[str, Any]]:
        log = self.root / "log" / "events.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def _as(self, user: str, argv: tuple[str, ...]) -> list[str]:
        passed = [f"{k}={v}" for k, v in self.env.items()
                  if k.startswith(("DS01_", "DOCKER_HOST", "LD_LIBRARY_PATH", "FAKE_NVML", "PATH", "PYTHONPATH"))]
        return ["runuser", "-u", user, "--", "env", *passed, *argv]

    def as_user(self, user: str, *argv: str, timeout: float = 120,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv as a real local user (runuser), with the proxy as their Docker host."""
        return subprocess.run(self._as(user, argv), capture_output=True, text=True, timeout=timeout, check=False,
                              input=stdin)

    def as_user_async(self, user: str, *argv: str) -> subprocess.Popen[str]:
        """As `as_user`, started and left running: for requests made at once."""
        return subprocess.Popen(self._as(user, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_proxy(testbed: Testbed, root: Path, *, ttl: str = "60s", extra_config: str = "",
                engine_cgroup: str | None = None, replaced: tuple[tuple[str, str], ...] = (),
                node: ProxyNode | None = None) -> ProxyHandle:
    """A proxy in the engine's network namespace, whose reach rules it keeps; `extra_config` is appended to the
    test bed's configuration (a section the shipped file leaves out), and `replaced` changes lines of it.
    `engine_cgroup`: named, for an upstream that is not the engine's own socket (by default the proxy reads it
    from the process serving the socket). `node`: another engine than the test bed's (a fleet node's)."""
    for sub in ("etc", "state", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "run").chmod(0o755)
    data = Path(testbed.env["DS01_TESTBED_DATA"]) / root.name
    data.mkdir(exist_ok=True)
    data.chmod(0o1777)
    text = (Path(testbed.env["DS01_CONFIG"])).read_text()
    for shipped, wanted in (("data_dirs: []", f"data_dirs: [{data}]"),
                            ("cap_add: []", "cap_add: [SYS_PTRACE]"),
                            ("reservation_ttl: 60s", f"reservation_ttl: {ttl}"),
                            ("users: {}\n", "users:\n  bob:\n    group: researcher\n"), *replaced):
        assert shipped in text, shipped
        text = text.replace(shipped, wanted)
    (root / "etc" / "resource-limits.yaml").write_text(text + extra_config)
    env = {**os.environ, "DS01_CONFIG": str(root / "etc" / "resource-limits.yaml"),
           "DS01_STATE_DIR": str(root / "state"), "DS01_LOG_DIR": str(root / "log"), "DS01_RUN_DIR": str(root / "run"),
           **({"FAKE_NVML_TOPOLOGY": str(node.topology), "DS01_TESTBED_NETNS": node.netns} if node else {})}
    netns, upstream = (node.netns, node.docker_host) if node else (testbed.netns, testbed.docker_host)
    # nsenter execs the proxy itself (its pid is the proxy's) and changes only the network namespace: the proxy
    # keeps the host's mounts, where the engine sees its pins.
    process = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{netns}", str(Path(sys.executable).parent / "ds01"), "proxy",
         "--upstream", upstream, "--drain-seconds", "5",
         *(["--engine-cgroup", engine_cgroup] if engine_cgroup else [])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (root / "run" / "docker.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the proxy did not start: {process.communicate()}")
        time.sleep(0.05)
    return ProxyHandle(root, process, {**env, "DOCKER_HOST": f"unix://{root}/run/docker.sock"})


def stop_proxy(handle: ProxyHandle, engine: docker.DockerClient) -> None:
    handle.process.terminate()
    try:
        handle.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        handle.process.kill()
        handle.process.wait()
    log = EventLog(handle.root / "log")
    REASONS_PRODUCED.update(str(e.details.get("reason")) for e in log.events(EventFilter(type_prefix="proxy.deny")))
    for container in engine.containers.list(all=True, filters={"label": "ds01.user"}):
        container.remove(force=True)
    for volume in engine.volumes.list(filters={"label": "ds01.user"}):
        volume.remove(force=True)
    for network in engine.networks.list(filters={"label": "ds01.user"}):
        network.remove()
    owned = handle.root / "state" / "images.json"
    remove_images(engine, list(json.loads(owned.read_text())["owned"]) if owned.exists() else [])
    release_pins(handle.root / "state" / "binds")
    shutil.rmtree(handle.data, ignore_errors=True)
    shutil.rmtree(handle.root, ignore_errors=True)


@pytest.fixture
def own_proxy(testbed: Testbed, engine: docker.DockerClient) -> Iterator[ProxyHandle]:
    """A proxy of the test's own: for tests whose proxy's rules or records must be theirs alone."""
    handle = start_proxy(testbed, testbed.dir / "proxy-tests" / uuid.uuid4().hex[:8])
    try:
        yield handle
    finally:
        stop_proxy(handle, engine)


def remove_images(engine: docker.DockerClient, images: list[str]) -> None:
    """Users' builds and commits: children before the intermediate images they stand on."""
    for _ in range(len(images) + 1):
        for image in list(images):
            try:
                engine.images.remove(image, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a child still stands on it, removed in this pass
                    raise
                continue
            images.remove(image)
    assert not images, f"images the test left could not be removed: {images}"


def release_pins(binds: Path) -> None:
    """Unmount what a stopped proxy left pinned (the containers are gone), so no tree removal reaches into it."""
    if binds.is_dir():
        Pins(binds).release_unused(set())


@pytest.fixture(scope="module")
def proxy(testbed: Testbed) -> Iterator[ProxyHandle]:
    """A proxy shared by one test module; the containers made through it are removed afterwards."""
    root = Path(testbed.dir) / "proxy-tests" / uuid.uuid4().hex[:8]
    handle = start_proxy(testbed, root)
    client = docker.DockerClient(base_url=testbed.docker_host)
    try:
        yield handle
    finally:
        stop_proxy(handle, client)
        client.close()


# --- every denial reason is produced by some test -------------------------------------------------------------
# Denials made in this process are seen as they are constructed; those of the proxies the integration tests run
# are read from each proxy's event log when it stops. A full run that leaves a Reason unproduced fails.
REASONS_PRODUCED: set[str] = set()


def _recording(cls: type[Any]) -> None:
    original = cls.__init__

    def init(self: Any, reason: Reason, *args: Any, **kwargs: Any) -> None:
        REASONS_PRODUCED.add(str(reason))
        original(self, reason, *args, **kwargs)

    cls.__init__ = init


_recording(Denied)
_recording(Deny)
_framing_error = HttpError.__init__


def _recording_framing_error(self: HttpError, *args: Any, **kwargs: Any) -> None:
    _framing_error(self, *args, **kwargs)
    REASONS_PRODUCED.add(str(self.reason))


HttpError.__init__ = _recording_framing_error  # type: ignore[method-assign]


def _whole_suite(config: pytest.Config) -> bool:
    tests = Path(__file__).resolve().parent
    options = config.option
    return (not options.keyword and not options.markexpr and not options.deselect
            and all(Path(arg).resolve() == tests for arg in config.args))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != 0 or not _whole_suite(session.config):
        return
    missing = sorted(reason.value for reason in Reason if reason.value not in REASONS_PRODUCED)
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED: no test produces the denial reason(s) {', '.join(missing)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
