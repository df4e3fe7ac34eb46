"""The proxy's HTTP framing, driven over socketpairs: a client writes raw bytes to a real `Proxy.serve`, whose gate
is a stub and whose engine is a small fake that records every byte it receives. No engine, no test bed."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from ds01 import events
from ds01.config import load_config
from ds01.errors import ConfigError
from ds01.limits import BUILTIN_DEFAULTS, EventLogSettings, ProxySettings
from ds01.proxy.outcomes import Deny, Forward, Outcome, Request
from ds01.proxy.server import Proxy
from ds01.proxy.session import Session
from ds01.proxy.upstream import Upstream
from ds01.runas import Caller

REPO = Path(__file__).resolve().parents[2]
Answer = bytes | Callable[[socket.socket], None]


@pytest.fixture(autouse=True)
def event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DS01_LOG_DIR", str(tmp_path / "log"))
    events.configure(EventLogSettings())
    yield tmp_path / "log" / "events.jsonl"
    events.configure(None)


class FakeEngine:
    """The engine's end of each link the proxy opens: parses requests with h11, records the raw bytes, and sends
    the next canned answer (bytes, or a function that writes to the socket itself)."""

    url = "unix:///fake-engine.sock"

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.raw = bytearray()
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.links = 0

    def connect(self) -> socket.socket:
        proxy_end, engine_end = socket.socketpair()
        self.links += 1
        threading.Thread(target=self._serve, args=(engine_end,), daemon=True).start()
        return proxy_end

    def _serve(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        with sock:
            while self.answers:
                request, body = None, bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = sock.recv(65536)
                        if not data:
                            return
                        self.raw += data
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                self.requests.append((request, bytes(body)))
                answer = self.answers.pop(0)
                if callable(answer):
                    answer(sock)
                    return
                sock.sendall(answer)
                if conn.our_state is h11.DONE or b"Connection: close" in answer:
                    return
                conn = h11.Connection(h11.SERVER)  # the canned bytes were not written through h11


def _caller(user: str) -> Caller:
    return Caller(uid=os.getuid(), user=user, home="", is_admin=False, limits=BUILTIN_DEFAULTS, gid=os.getgid(),
                  gids=frozenset(), login=user)


class StubSessions:
    def __init__(self, users: list[str]) -> None:
        self.users = users

    def for_uid(self, _uid: int) -> Session:
        user = self.users.pop(0) if len(self.users) > 1 else self.users[0]
        return Session(caller=_caller(user), login=user)


@dataclass
class StubGate:
    """Decides as told, and records the requests it saw (and the bodies it read)."""

    decide_with: Callable[[Request], Outcome] = lambda request: Forward(request.target)
    sessions: StubSessions = field(default_factory=lambda: StubSessions(["alice"]))
    seen: list[Request] = field(default_factory=list)

    def decide(self, request: Request) -> Outcome:
        self.seen.append(request)
        return self.decide_with(request)

    def error_answer(self, _request: Request, status: int, data: bytes) -> bytes:
        return b'{"message": "filtered"}' if status == 409 else data


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def start(gate: StubGate, engine: FakeEngine, settings: ProxySettings | None = None) -> socket.socket:
    """A client socket on a proxy connection served in a thread."""
    proxy = Proxy(gate, engine, settings=lambda: settings or ProxySettings())  # type: ignore[arg-type]
    client, served = socket.socketpair()

    def serve() -> None:
        with served:
            proxy.serve(served)

    threading.Thread(target=serve, daemon=True).start()
    client.settimeout(10)
    return client


def read_all(sock: socket.socket) -> bytes:
    """Everything until the proxy closes; a reset after its answer (it closed with bytes of ours unread) ends it."""
    data = b""
    try:
        while block := sock.recv(65536):
            data += block
    except ConnectionResetError:
        pass
    return data


def send_all(sock: socket.socket, data: bytes, piece: int | None = None) -> None:
    """`data` as one write or in pieces; stops where the proxy has closed (after refusing)."""
    try:
        for offset in range(0, len(data), piece or len(data)):
            sock.sendall(data[offset:offset + (piece or len(data))])
            if piece and piece < 200:
                time.sleep(0.002)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass


def exchange(data: bytes, gate: StubGate | None = None, engine: FakeEngine | None = None,
             settings: ProxySettings | None = None) -> bytes:
    client = start(gate or StubGate(), engine or FakeEngine(OK), settings)
    with client:
        send_all(client, data)
        return read_all(client)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in `raw`, parsed by h11 as a client would."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    while conn.trailing_data[0]:
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return out
        out.append((status, headers, body))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out
        conn.start_next_cycle()
    return out


def message(answer: tuple[int, dict[str, str], bytes]) -> str:
    return str(json.loads(answer[2])["message"])


SMUGGLED = (b"POST /v1.41/containers/create?name=smuggled HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 45\r\n\r\n" + json.dumps({"Image": "x", "HostConfig": {"Privileged": True}}).encode())


def test_chunk_lines_extensions_and_trailers_never_reach_the_engine() -> None:
    engine = FakeEngine(OK)
    body = b"5;name=value\r\nhello\r\n6 \r\n world\r\n0;last=1\r\nX-Trailer: t\r\n\r\n"
    raw = exchange(b"POST /v1.41/build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
                   engine=engine)
    assert responses(raw)[0][0] == 200
    [(_, forwarded)] = engine.requests
    assert forwarded == b"hello world"
    for framing in (b"name=value", b"last=1", b"X-Trailer", b"6 \r\n"):
        assert framing not in engine.raw
    assert engine.raw.endswith(b"\r\n\r\nb\r\nhello world\r\n0\r\n\r\n")  # the proxy's own chunks


def test_a_body_the_gate_read_goes_with_the_proxys_own_length() -> None:
    def rewrite(request: Request) -> Outcome:
        assert request.read_body() == b"abc"
        return Forward(request.target)

    engine = FakeEngine(OK)
    exchange(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3;x=y\r\nabc\r\n0\r\n\r\n", gate=StubGate(rewrite), engine=engine)
    [(request, forwarded)] = engine.requests
    headers = dict(request.headers)
    assert forwarded == b"abc" and headers[b"content-length"] == b"3" and b"transfer-encoding" not in headers


@pytest.mark.parametrize("trickle", [False, True])
@pytest.mark.parametrize("line", [b"5;" + b"x" * 2000, b"5;" + b"a=b;" * 400, b"0" * 29 + b"5"],
                         ids=["one-long-extension", "many-extensions", "30-digits"])
def test_a_chunk_line_past_the_cap_is_refused(line: bytes, trickle: bool) -> None:
    gate, engine = StubGate(lambda r: (r.read_body(), Forward(r.target))[1]), FakeEngine(OK)
    data = b"POST /v1.41/containers/x/start HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n" + line + \
        b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    client = start(gate, engine)
    with client:
        send_all(client, data, 100 if trickle else None)
        [answer] = responses(read_all(client))
    assert answer[0] == 400 and answer[1]["x-ds01-reason"] == "bad_request"
    assert "chunk" in message(answer)
    assert engine.links == 0 and len(gate.seen) == 1  # nothing upstream; the smuggled create never a request


@pytest.mark.parametrize("piece", [997, 65_537])
def test_plain_chunks_of_any_size_pass_however_they_arrive(piece: int) -> None:
    rng = random.Random(piece)  # noqa: S311 - test data, not secrets
    sizes = [rng.choice([1, 2, 15, 16, 255, 256, 4095, 4096, 70_000]) for _ in range(200)]
    data = bytes(rng.randrange(256) for _ in range(sum(sizes)))
    body, offset = b"", 0
    for size in sizes:
        body += b"%x\r\n%s\r\n" % (size, data[offset:offset + size])
        offset += size
    engine = FakeEngine(OK)
    client = start(StubGate(), engine)  # streamed to the engine as it arrives
    with client:
        send_all(client, b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n" +
                 body + b"0\r\n\r\n", piece)
        assert responses(read_all(client))[0][0] == 200
    assert engine.requests[0][1] == data


def test_a_small_chunk_extension_is_dropped_and_what_follows_the_body_is_a_request_of_its_own() -> None:
    def only_starts(request: Request) -> Outcome:
        request.read_body()
        return Forward(request.target) if request.path.endswith("/start") else _deny(request)

    gate, engine = StubGate(only_starts), FakeEngine(b"HTTP/1.1 204 No Content\r\n\r\n")
    raw = exchange(b"POST /v1.41/containers/x/start HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0;ext=" + b"e" * 100 + b"\r\n\r\n" + SMUGGLED, gate=gate, engine=engine)
    assert [status for status, _, _ in responses(raw)] == [204, 403]
    assert [request.path for request in gate.seen] == ["/v1.41/containers/x/start", "/v1.41/containers/create"]
    assert b"smuggled" not in engine.raw and b"ext=" not in engine.raw


def _deny(request: Request) -> Outcome:
    return Deny("privileged", f"refused {request.path}")


def test_a_request_inside_a_body_is_never_seen_as_a_request() -> None:
    gate, engine = StubGate(lambda r: (r.read_body(), Forward(r.target))[1]), FakeEngine(OK)
    exchange(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: " +
             str(len(SMUGGLED)).encode() + b"\r\n\r\n" + SMUGGLED, gate=gate, engine=engine)
    assert len(gate.seen) == 1 and gate.seen[0].read_body() == SMUGGLED
    [(request, forwarded)] = engine.requests
    assert request.target == b"/v1.41/containers/create" and forwarded == SMUGGLED


@pytest.mark.parametrize("head", [
    b"Transfer-Encoding:\r\n chunked\r\n",
    b"Content-Length:\r\n\t5\r\n",
    b"X-Note: a\r\n  Transfer-Encoding: chunked\r\n",
])
def test_an_obsolete_line_folding_is_refused(head: bytes) -> None:
    engine = FakeEngine(OK)
    raw = exchange(b"POST /v1.41/containers/x/start HTTP/1.1\r\nHost: d\r\n" + head + b"\r\n0\r\n\r\n" + SMUGGLED,
                   engine=engine)
    [answer] = responses(raw)
    assert answer[0] == 400 and "obsolete line folding" in message(answer)
    assert engine.links == 0


@pytest.mark.parametrize(("head", "words"), [
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "both Content-Length and Transfer-Encoding"),
    (b"Transfer-Encoding: gzip, chunked\r\n", "chunked"),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", "Content-Length"),
    (b"Expect: 200-ok\r\n", "only 100-continue"),
    (b"Upgrade: h2c\r\nConnection: Upgrade\r\n", "Upgrade: tcp"),
])
def test_ambiguous_or_unsupported_framing_is_refused(head: bytes, words: str) -> None:
    engine = FakeEngine(OK)
    [answer] = responses(exchange(b"POST /v1.41/containers/x/start HTTP/1.1\r\nHost: d\r\n" + head + b"\r\n",
                                  engine=engine))
    assert answer[0] in (400, 501) and words in message(answer), message(answer)
    assert engine.links == 0


def test_expect_100_continue_is_answered_by_the_proxy_and_never_passed_on() -> None:
    gate, engine = StubGate(lambda r: (r.read_body(), Forward(r.target))[1]), FakeEngine(OK)
    client = start(gate, engine)
    with client:
        client.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 2\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 100 ")
        client.sendall(b"{}")
        client.shutdown(socket.SHUT_WR)
        assert responses(read_all(client))[0][0] == 200
    [(request, forwarded)] = engine.requests
    assert forwarded == b"{}" and b"expect" not in dict(request.headers)


def test_interim_answers_of_the_engine_are_never_taken_for_the_final_one() -> None:
    seen: list[int | None] = []

    def with_after(request: Request) -> Outcome:
        request.read_body()
        return Forward(request.target, after=lambda status, _body: seen.append(status))

    engine = FakeEngine(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                        b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n{\"Id\":\"c1\"}")
    raw = exchange(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}",
                   gate=StubGate(with_after), engine=engine)
    assert seen == [201]
    assert raw.startswith(b"HTTP/1.1 201 ") and [a[0] for a in responses(raw)] == [201]


def test_hop_by_hop_headers_are_dropped_both_ways_and_the_host_is_the_proxys() -> None:
    engine = FakeEngine(b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                        b"Trailer: X-T\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\n{}")
    raw = exchange(b"GET /v1.41/info HTTP/1.1\r\nHost: evil.example\r\nConnection: keep-alive, X-Private\r\n"
                   b"X-Private: p\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
                   b"Trailer: X-T\r\nX-Registry-Auth: token\r\n\r\n", engine=engine)
    [(request, _)] = engine.requests
    sent = {name.lower() for name, _ in request.headers}
    assert dict(request.headers)[b"host"] == b"docker" and b"x-registry-auth" in sent
    assert not sent & {b"x-private", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"connection"}
    [(status, headers, _)] = responses(raw)
    assert status == 200 and headers["api-version"] == "1.47"
    assert not set(headers) & {"x-secret", "keep-alive", "trailer"}


def test_an_engine_error_goes_through_the_gates_filter_with_its_own_length() -> None:
    engine = FakeEngine(b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                        b"\r\n11\r\n{\"message\": \"id\"}\r\n0\r\n\r\n")
    [(status, headers, body)] = responses(exchange(b"POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: d\r\n"
                                                   b"Content-Length: 2\r\n\r\n{}", engine=engine))
    assert (status, body) == (409, b'{"message": "filtered"}') and headers["content-length"] == str(len(body))


def test_upgrade_on_a_route_that_does_not_hijack_is_refused() -> None:
    engine = FakeEngine(OK)
    [answer] = responses(exchange(b"POST /v1.41/containers/x/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                                  b"Upgrade: tcp\r\n\r\n", engine=engine))
    assert answer[0] == 400 and "only attach" in message(answer)
    assert engine.links == 0


def test_attach_is_upgraded_by_the_proxy_and_spliced_both_ways() -> None:
    stdin: list[bytes] = []

    def upgraded(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                     b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\nfirst output ")
        stdin.append(sock.recv(100))
        sock.sendall(b"and more")

    gate = StubGate(lambda r: Forward(r.target, hijack=True))
    engine = FakeEngine(upgraded)
    client = start(gate, engine)
    with client:
        client.sendall(b"POST /v1.41/containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
                       b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        received = b""
        while b"first output " not in received:
            received += client.recv(1000)
        client.sendall(b"typed")
        client.shutdown(socket.SHUT_WR)
        received += read_all(client)
    head, _, stream = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and b"application/vnd.docker.raw-stream" in head
    assert stream == b"first output and more" and stdin == [b"typed"]
    [(request, _)] = engine.requests
    assert dict(request.headers)[b"upgrade"] == b"tcp"


def test_a_hijack_route_without_upgrade_reads_a_raw_answer_until_the_engine_closes() -> None:
    def raw_stream(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nall of it")

    gate = StubGate(lambda r: (r.read_body(), Forward(r.target, hijack=True))[1])
    raw = exchange(b"POST /v1.41/exec/e1/start HTTP/1.1\r\nHost: d\r\nContent-Length: 15\r\n\r\n{\"Detach\":true}",
                   gate=gate, engine=FakeEngine(raw_stream))
    [(status, headers, body)] = responses(raw)
    assert status == 200 and body == b"all of it" and headers["transfer-encoding"] == "chunked"


def test_a_streaming_answer_reaches_the_client_chunk_by_chunk() -> None:
    release = threading.Event()

    def follow(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6;x=1\r\nline1\n\r\n")
        release.wait(10)
        sock.sendall(b"6\r\nline2\n\r\n0\r\n\r\n")

    client = start(StubGate(), FakeEngine(follow))
    with client:
        client.sendall(b"GET /v1.41/containers/x/logs?follow=1 HTTP/1.1\r\nHost: d\r\n\r\n")
        received = b""
        while b"line1" not in received:
            received += client.recv(1000)
        assert b"line2" not in received and b"x=1" not in received
        release.set()
        client.shutdown(socket.SHUT_WR)
        received += read_all(client)
    assert responses(received)[0][2] == b"line1\nline2\n"


def test_keep_alive_carries_the_next_request_on_one_link() -> None:
    engine = FakeEngine(OK, OK)
    raw = exchange(b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\nGET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n",
                   engine=engine)
    assert [a[0] for a in responses(raw)] == [200, 200]
    assert engine.links == 1 and [r.target for r, _ in engine.requests] == [b"/v1.41/_ping", b"/v1.41/info"]


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


def test_a_refused_body_is_drained_so_the_client_reads_the_refusal() -> None:
    body = b"x" * 300_000
    raw = exchange(b"PUT /v1.41/containers/x/archive HTTP/1.1\r\nHost: d\r\nContent-Length: " +
                   str(len(body)).encode() + b"\r\n\r\n" + body, gate=StubGate(_deny))
    [answer] = responses(raw)
    assert answer[0] == 403 and answer[1]["x-ds01-reason"] == "privileged" and answer[1]["connection"] == "close"


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
