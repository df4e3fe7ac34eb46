"""The proxy's bounds on its clients (timeouts, head size, connections per user, its settings), and the engine side
of its HTTP: the event stream and its own calls."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from ds01.config import ProxySettings, load_config
from ds01.errors import ConfigError
from ds01.proxy.outcomes import Reply
from ds01.proxy.server import Proxy
from ds01.proxy.upstream import Upstream
from tests.unit.proxy_harness import (
    OK,
    FakeEngine,
    StubGate,
    StubSessions,
    exchange,
    message,
    read_all,
    responses,
    start,
)

pytestmark = pytest.mark.usefixtures("event_log")


def test_half_a_head_is_cut_at_the_header_timeout() -> None:
    client = start(StubGate(), FakeEngine(OK), ProxySettings(header_timeout_seconds=1))
    with client:
        began = time.monotonic()
        client.sendall(b"GET /v1.41/_ping HTTP/1.1\r\nHo")
        [answer] = responses(read_all(client))
    assert 0.9 < time.monotonic() - began < 5
    assert answer[0] == 408 and "within 1s" in message(answer)


def test_an_idle_connection_is_closed_at_the_idle_timeout() -> None:
    client = start(StubGate(), FakeEngine(OK), ProxySettings(idle_timeout_seconds=1))
    with client:
        client.sendall(b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        first = b""
        while not first.endswith(b"{}"):
            first += client.recv(1000)
        began = time.monotonic()
        assert read_all(client) == b""
    assert 0.9 < time.monotonic() - began < 5


def test_a_body_that_stalls_is_refused_and_never_reaches_the_engine() -> None:
    engine = FakeEngine(OK)
    gate = StubGate(decide_with=lambda request: (request.read_body(), Reply(200, {}))[1])
    client = start(gate, engine, ProxySettings(idle_timeout_seconds=1))
    with client:
        client.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 40\r\n\r\n{\"Image\": ")
        [answer] = responses(read_all(client))
    assert answer[0] == 408 and answer[1]["x-ds01-reason"] == "body_timeout"
    assert "stalled for 1s" in message(answer)
    assert len(gate.seen) == 1 and engine.links == 0 and engine.raw == b""


def test_a_head_past_the_size_cap_is_refused() -> None:
    settings = ProxySettings(max_header_bytes=4096)
    for filler in (b"X-Big: " + b"b" * 5000 + b"\r\n", b"X-Big: " + b"b" * 100_000 + b"\r\n"):
        engine = FakeEngine(OK)
        [answer] = responses(exchange(b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n" + filler + b"\r\n",
                                      engine=engine, settings=settings))
        assert answer[0] == 431 and "larger than 4096 bytes" in message(answer)
        assert engine.links == 0


def test_connections_are_capped_per_user(event_log: Path) -> None:
    gate = StubGate(sessions=StubSessions(["alice", "alice", "alice", "bob"]))
    engine = FakeEngine(*[OK] * 4)
    proxy = Proxy(gate, engine, settings=lambda: ProxySettings(max_connections_per_user=2))  # type: ignore[arg-type]
    clients = []
    for _ in range(4):
        client, served = socket.socketpair()
        client.settimeout(10)
        threading.Thread(target=proxy.serve, args=(served,), daemon=True).start()
        client.sendall(b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        clients.append(client)
    answers = []
    for client in clients:
        received = b""
        while not (received.endswith(b"}") and b"\r\n\r\n" in received):
            received += client.recv(4096)
        answers.append(responses(received)[0])
    assert [a[0] for a in answers] == [200, 200, 429, 200]  # bob's is his first
    assert "you have 2 connections open" in message(answers[2])
    assert "proxy.max_connections_per_user" in message(answers[2])
    denied = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert [(e["user"], e["details"]["reason"]) for e in denied if e["type"] == "proxy.deny"] == \
        [("alice", "too_many_connections")]
    for client in clients:
        client.close()


class UnixEngine:
    """A fake engine on a unix socket, for `Upstream` (its own calls and the event stream)."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.answer = answer
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        with sock:
            while b"\r\n\r\n" not in self.received:
                self.received += sock.recv(4096)
            sock.sendall(self.answer)


def test_the_event_stream_is_read_by_h11_line_by_line(tmp_path: Path) -> None:
    lines = [json.dumps({"Action": "destroy", "id": f"c{n}"}).encode() + b"\n" for n in range(3)]
    stream = b"".join(lines)
    chunks = [stream[:10], stream[10:40], stream[40:]]
    body = b"".join(b"%x;ext\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    engine = UnixEngine(tmp_path / "engine.sock", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + body)
    upstream = Upstream(f"unix://{tmp_path}/engine.sock")
    got = list(upstream.events({"type": ["container"]}))
    assert [event["id"] for event in got] == ["c0", "c1", "c2"]
    assert engine.received.startswith(b"GET /v1.41/events?filters=") and b"Host: docker" in engine.received


def test_the_proxys_own_calls_read_an_answer_with_no_length_until_close(tmp_path: Path) -> None:
    UnixEngine(tmp_path / "engine.sock", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}")
    assert Upstream(f"unix://{tmp_path}/engine.sock").call("GET", "/info") == (200, {"a": 1})


def test_proxy_settings_are_read_with_their_units(tmp_path: Path) -> None:
    config = tmp_path / "resource-limits.yaml"
    config.write_text("version: 1\nproxy:\n  idle_timeout: 2m\n  header_timeout: 5s\n  max_header_size: 16k\n"
                      "  max_connections_per_user: 8\n")
    assert load_config(config).proxy == ProxySettings(120, 5, 16384, 8)
    load_config(config)
    config.write_text("version: 1\nproxy:\n  header_timeout: soon\n")
    with pytest.raises(ConfigError, match=r"proxy\.header_timeout"):
        load_config(config)
    config.write_text("version: 1\nproxy:\n  max_conections_per_user: 8\n")
    with pytest.raises(ConfigError, match="did you mean 'max_connections_per_user'"):
        load_config(config)
    config.write_text("version: 1\n")
    assert load_config(config).proxy == ProxySettings()
