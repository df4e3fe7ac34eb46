"""The harness of the HTTP framing tests: a real `Proxy.serve` over socketpairs, a stub gate, and a small fake
engine that records every byte it receives. No engine, no test bed."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11

from ds01.config import BUILTIN_DEFAULTS, ProxySettings
from ds01.proxy.outcomes import Forward, Outcome, Request
from ds01.proxy.runas import Caller
from ds01.proxy.server import Proxy
from ds01.proxy.session import Session

REPO = Path(__file__).resolve().parents[2]
Answer = bytes | Callable[[socket.socket], None]


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


def caller_named(user: str) -> Caller:
    return Caller(uid=os.getuid(), user=user, home="", is_admin=False, limits=BUILTIN_DEFAULTS, gid=os.getgid(),
                  gids=frozenset(), login=user)


class StubSessions:
    def __init__(self, users: list[str]) -> None:
        self.users = users

    def for_uid(self, _uid: int) -> Session:
        user = self.users.pop(0) if len(self.users) > 1 else self.users[0]
        return Session(caller=caller_named(user), login=user)


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
