"""The proxy's HTTP framing, driven over socketpairs (see proxy_harness): chunks, folding, Expect, interim answers,
hop-by-hop headers, upgrades and streams."""

from __future__ import annotations

import random
import socket
import threading

import pytest

from ds01.proxy.outcomes import Deny, Forward, Outcome, Request
from tests.unit.proxy_harness import (
    OK,
    SMUGGLED,
    FakeEngine,
    StubGate,
    exchange,
    message,
    read_all,
    responses,
    send_all,
    start,
)

pytestmark = pytest.mark.usefixtures("event_log")


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


def test_a_refused_body_is_drained_so_the_client_reads_the_refusal() -> None:
    body = b"x" * 300_000
    raw = exchange(b"PUT /v1.41/containers/x/archive HTTP/1.1\r\nHost: d\r\nContent-Length: " +
                   str(len(body)).encode() + b"\r\n\r\n" + body, gate=StubGate(_deny))
    [answer] = responses(raw)
    assert answer[0] == 403 and answer[1]["x-ds01-reason"] == "privileged" and answer[1]["connection"] == "close"
