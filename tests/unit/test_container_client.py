"""The `container` command starts without the Docker SDK: `--help`, `list` and `create --dry-run` each run in a
fresh interpreter, against a stand-in for the proxy on a unix socket, and must not import docker, requests or
urllib3 (nor yaml, but for the dry run, which reads the config). The same stand-in checks what the command's
client sends and how it reads the answers; the proxy itself is the integration tests' business."""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ds01 import devicerequests
from ds01.cli.container.client import ProxyClient, create_body, proxy_url
from ds01.cli.container.refusals import Refusal, translate
from ds01.errors import Denied, Ds01Error, UsageError
from ds01.names import DRY_RUN_HEADER, USER_AGENT
from ds01.paths import paths_from_env
from ds01.reasons import Reason
from tests.unit.standin import Answer, Seen, StandIn, serving

REPO = Path(__file__).resolve().parents[2]
SDK = ("docker", "requests", "urllib3")
PROBE = """
import json, sys
from ds01.cli.container import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"docker", "requests", "urllib3", "yaml"})),
      file=sys.stderr)
"""


def _inspected(uid: int) -> dict[str, Any]:
    return {"Id": "c0ffee" * 10, "Name": f"/train._.{uid}", "Created": "2026-01-02T03:04:05.123456789Z",
            "State": {"Status": "running"}, "Config": {"Image": "img:1", "Labels": {}, "Tty": False},
            "HostConfig": {"DeviceRequests": [{"Count": 0, "DeviceIDs": ["MIG-1"], "Capabilities": [["gpu"]]}]},
            "Mounts": []}


def proxy_answers(seen: Seen) -> Answer:
    """Just enough of the proxy for `container list` and `container create --dry-run`."""
    uid = os.getuid()
    if seen.method == "GET" and seen.path == "/v1.40/containers/json" and seen.query:
        return Answer(body=[{"Id": "c0ffee" * 10, "Names": [f"/train._.{uid}"]}, {"Id": "other", "Names": ["/x"]}])
    if seen.method == "GET" and seen.path.startswith("/v1.40/containers/c0ffee"):
        return Answer(body=_inspected(uid))
    if seen.method == "POST" and seen.path.startswith("/v1.40/containers/create"):
        return Answer(body={"image": "img:1", "gpus": [], "gpu_equivalents": "0", "cpus": 2,
                            "memory_bytes": 2**30, "pids_limit": 4096})
    return Answer(404, {"message": f"no route {seen.method} {seen.path}"})


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    with serving(str(tmp_path / "docker.sock"), proxy_answers) as server:
        yield server


def _url(server: StandIn) -> str:
    return f"unix://{server.server_address}"


@pytest.mark.parametrize(("argv", "allowed"), [
    (["--help"], ()),
    (["list"], ()),
    (["create", "train", "--dry-run", "--cpu-only", "--image", "img:1"], ("yaml",)),
])
def test_the_command_starts_without_the_sdk(stand_in: StandIn, tmp_path: Path, argv: list[str],
                                            allowed: tuple[str, ...]) -> None:
    env = {**os.environ, "DOCKER_HOST": _url(stand_in), "DS01_CONFIG": str(REPO / "config" / "resource-limits.yaml"),
           "DS01_RUN_DIR": str(tmp_path)}
    if argv[0] == "create":
        argv = [*argv, "--workspace", str(tmp_path)]
    ran = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60, check=False)
    loaded = json.loads(ran.stderr.strip().splitlines()[-1])
    assert [name for name in loaded if name not in allowed] == [], ran.stderr
    assert "Traceback" not in ran.stderr
    shown = {"--help": "example:", "list": "MIG-1", "create": "dry run: nothing was created"}[argv[0]]
    assert shown in ran.stdout, ran


def test_requests_name_the_cli_one_api_version_and_the_dry_run(stand_in: StandIn, tmp_path: Path) -> None:
    with ProxyClient(_url(stand_in)) as proxy:
        listed = proxy.containers(os.getuid(), everything=True)
        body = create_body("img:1", ["true"], workspace=str(tmp_path), gpus=2, mig=None, cpus=1.5, memory=2**30,
                           shm_size=None)
        proxy.dry_run("train._.1", body)
    assert [item.info.device_ids for item in listed] == [("MIG-1",)]  # the other name is not the caller's
    assert all(seen.headers["User-Agent"] == USER_AGENT and seen.path.startswith("/v1.40/")
               for seen in stand_in.seen)
    listing, *_, created = stand_in.seen
    assert listing.query["all"] == "1" and "ds01.uid=" in listing.query["filters"]
    assert created.headers[DRY_RUN_HEADER] == "true" and created.path.endswith("/containers/create")
    assert created.query == {"name": "train._.1"}
    host = created.json()["HostConfig"]
    assert host["DeviceRequests"] == devicerequests.by_count(2)
    assert (host["NanoCpus"], host["Memory"], host["Binds"]) == (1_500_000_000, 2**30, [f"{tmp_path}:/workspace"])
    assert "ShmSize" not in host and created.json()["WorkingDir"] == "/workspace"


def test_docker_host_must_be_a_unix_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DS01_RUN_DIR", str(tmp_path))
    paths = paths_from_env()
    assert proxy_url(paths, {}) == f"unix://{tmp_path}/docker.sock"
    assert proxy_url(paths, {"DOCKER_HOST": "unix:///elsewhere.sock"}) == "unix:///elsewhere.sock"
    for other in ("tcp://127.0.0.1:2375", "ssh://host", "unix://"):
        with pytest.raises(UsageError, match="only talks to the ds01 proxy on its unix socket"):
            proxy_url(paths, {"DOCKER_HOST": other})


def _framed(*parts: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data for stream, data in parts)


def test_exec_reads_the_upgraded_stream_apart_and_returns_the_exit_code(stand_in: StandIn) -> None:
    def answers(seen: Seen) -> Answer:
        if seen.path.endswith("/exec"):
            return Answer(201, {"Id": "e1"})
        if seen.path.endswith("/start"):
            assert (seen.headers["Connection"], seen.headers["Upgrade"]) == ("Upgrade", "tcp")
            return Answer(stream=_framed((1, b"out\n"), (2, b"err\n"), (1, b"")))
        return Answer(body={"Running": False, "ExitCode": 7})

    stand_in.answer = answers
    written: list[tuple[int, bytes]] = []
    with ProxyClient(_url(stand_in)) as proxy:
        code = proxy.run("train._.1", ["sh", "-c", "exit 7"], lambda stream, data: written.append((stream, data)))
    assert code == 7 and written == [(1, b"out\n"), (2, b"err\n"), (1, b"")]
    assert stand_in.seen[0].json()["Cmd"] == ["sh", "-c", "exit 7"]


@pytest.mark.parametrize("tty", [False, True])
def test_logs_are_read_from_chunked_frames_or_as_a_terminal_wrote_them(stand_in: StandIn, tty: bool) -> None:
    payload = b"hello\nworld\n" if tty else _framed((1, b"hello\n"), (2, b"oops\n"))

    def answers(seen: Seen) -> Answer:
        if seen.path.startswith("/v1.40/containers/train._.1/json"):
            return Answer(body={"Config": {"Tty": tty}})
        assert seen.query["tail"] == "all" and seen.query["follow"] == "0"
        return Answer(chunks=[payload[:5], payload[5:]])  # frames cut across chunks

    stand_in.answer = answers
    with ProxyClient(_url(stand_in)) as proxy:
        got = list(proxy.logs("train._.1", follow=False, tail=None))
    if tty:
        assert b"".join(data for _, data in got) == payload and {stream for stream, _ in got} == {1}
    else:
        assert got == [(1, b"hello\n"), (2, b"oops\n")]


@pytest.mark.parametrize(("refusal", "kind", "words"), [
    (Refusal(404, None, "No such container: train._.1"), Ds01Error, "container train does not exist"),
    (Refusal(404, Reason.IMAGE_MISSING, "ds01: no image"), Ds01Error, "image img:1 is not on this host"),
    (Refusal(404, None, "No such image: img:1"), Ds01Error, "docker pull img:1"),
    (Refusal(409, None, 'Conflict. The container name "/train._.1" is already in use'), Ds01Error,
     "you already have a container named train"),
    (Refusal(409, None, "is not running"), Ds01Error, "container train: is not running. See `container list"),
    (Refusal(503, Reason.BUSY, "ds01: the allocator is busy."), Ds01Error, "the allocator is busy. Try again"),
    (Refusal(500, None, "boom"), Ds01Error, "the ds01 proxy answered 500: boom"),
])
def test_refusals_become_messages_that_say_what_to_do(refusal: Refusal, kind: type[Ds01Error], words: str) -> None:
    found = translate(refusal, "unix:///p.sock", "train._.1", "img:1")
    assert type(found) is not Denied and isinstance(found, kind) and words in str(found)
    assert "._." not in str(found)


def test_denials_keep_their_reason_and_exit_code() -> None:
    denied = translate(Refusal(403, "limit_memory", "ds01: memory 100g is above your limit of 64g."), "unix:///p")
    assert isinstance(denied, Denied) and denied.reason == Reason.LIMIT_MEMORY and denied.exit_code == 3
    assert str(denied) == "memory 100g is above your limit of 64g."
    newer = translate(Refusal(413, "a_code_of_a_newer_proxy", "too much"), "unix:///p")
    assert isinstance(newer, Denied) and newer.reason == Reason.ERROR


def test_no_proxy_or_a_silent_one_says_so(stand_in: StandIn, tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(stale))
        for path, why in ((tmp_path / "absent.sock", "no socket there"), (stale, "connection refused")):
            with ProxyClient(f"unix://{path}") as proxy, pytest.raises(Ds01Error) as raised:
                proxy.inspect("train._.1")
            assert f"the ds01 proxy is not running at {path} ({why})" in str(raised.value)
    assert "permission denied" in str(translate(PermissionError(errno.EACCES, "denied"), "unix:///p"))
    assert "did not answer in time" in str(translate(TimeoutError(), "unix:///p"))
    cut = translate(http.client.IncompleteRead(b"{", 9), "unix:///p")
    assert "talking to the ds01 proxy at unix:///p failed: IncompleteRead(1 bytes read, 9 more expected)" in str(cut)
    stand_in.answer = lambda _seen: Answer(hang_up=True)
    with ProxyClient(_url(stand_in)) as proxy, pytest.raises(Ds01Error, match="closed the connection without"):
        proxy.inspect("train._.1")


def test_a_kept_alive_connection_the_proxy_dropped_is_replaced(stand_in: StandIn) -> None:
    stand_in.answer = lambda _seen: Answer(body=_inspected(os.getuid()), then_close=True)
    with ProxyClient(_url(stand_in)) as proxy:
        for _ in range(3):
            assert proxy.inspect("train._.1").info.device_ids == ("MIG-1",)
            # Closed while idle, before the next call: a close racing a request is another case (never resent).
            assert stand_in.closed.acquire(timeout=10)
    assert len(stand_in.seen) == 3


def test_a_request_that_reached_the_proxy_is_never_sent_again(stand_in: StandIn) -> None:
    # The first answer keeps the connection; the create is read and then the connection is cut without an answer.
    stand_in.answer = lambda seen: Answer(hang_up=True) if seen.method == "POST" else Answer(body=_inspected(0))
    with ProxyClient(_url(stand_in)) as proxy:
        proxy.inspect("train._.1")
        with pytest.raises(Ds01Error, match="closed the connection without answering"):
            proxy.create("train._.1", {"Image": "img:1"})
    assert [seen.method for seen in stand_in.seen] == ["GET", "POST"]


def test_a_proxy_that_never_answers_a_follow_times_out_before_its_head(stand_in: StandIn) -> None:
    released = threading.Event()

    def answers(seen: Seen) -> Answer:
        if "/logs" in seen.path:
            released.wait(10)  # silent until the test is over
        return Answer(body=_inspected(0))

    stand_in.answer = answers
    try:
        with ProxyClient(_url(stand_in), timeout_seconds=0.5) as proxy, \
                pytest.raises(Ds01Error, match="did not answer in time"):
            list(proxy.logs("train._.1", follow=True, tail=None))
    finally:
        released.set()
    assert stand_in.seen[-1].path == "/v1.40/containers/train._.1/logs"
