"""HTTP/1.1 towards the engine, parsed and written by h11 as the client: requests framed by the proxy, answers
past any interim 1xx, bodies in blocks."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11

from ds01.errors import EngineError
from ds01.proxy.http import BLOCK, Head, wire

ENGINE_HOST = "docker"  # the Host of every request upstream, whatever the client said
MAX_ANSWER_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    head: Head
    length: int | None  # the body's length when the engine declared one; None for chunks or until-close

    @property
    def switched(self) -> bool:
        return self.status == 101


class EngineLink:
    """One connection to the engine, with h11 as the client; it carries one request after the other."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER_HEAD_BYTES)

    def _send(self, event: Any) -> None:
        if data := self._h11.send(event):  # the end of a body with a length is no byte at all
            self.sock.sendall(data)

    def _next(self) -> Any:
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise EngineError(f"the engine's answer is not HTTP/1.1 as the proxy reads it: {exc}") from None

    def _fill(self) -> bytes:
        data = self.sock.recv(BLOCK)
        self._h11.receive_data(data)
        return data

    def send_request(self, method: str, target: str, headers: list[tuple[str, str]], length: int | None, *,
                     upgrade: bool = False) -> None:
        """A request head with the proxy's own framing: Content-Length, or chunks when `length` is None."""
        framing = [] if length == 0 else [("Transfer-Encoding", "chunked")] if length is None \
            else [("Content-Length", str(length))]
        switch = [("Connection", "Upgrade"), ("Upgrade", "tcp")] if upgrade else []
        self._send(h11.Request(method=method, target=target,
                               headers=wire([("Host", ENGINE_HOST), *headers, *framing, *switch])))

    def send_data(self, data: bytes) -> None:
        if data:
            self._send(h11.Data(data=data))

    def end_request(self) -> None:
        self._send(h11.EndOfMessage())

    def answer(self) -> Answer:
        """The engine's final answer. Interim 1xx answers are skipped; 101 (the switch to a raw stream that the
        request asked for) is final."""
        while True:
            event = self._next()
            if event is h11.NEED_DATA:
                if not self._fill():
                    raise EngineError("the engine closed the connection without answering")
            elif isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            elif isinstance(event, (h11.Response, h11.InformationalResponse)):
                head = Head.parsed(event.headers)
                declared = head.get("Content-Length")
                chunked = head.get("Transfer-Encoding") is not None
                return Answer(event.status_code, event.reason.decode("latin-1"), head,
                              int(declared) if declared is not None and not chunked else None)
            else:
                raise EngineError(f"the engine sent {type(event).__name__} before its answer")

    def body(self) -> Iterator[bytes]:
        """The answer's body as it arrives (the stream of logs -f or events, chunk by chunk)."""
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif event is h11.NEED_DATA:
                self._fill()
            else:
                raise EngineError(f"the engine sent {type(event).__name__} in the middle of its answer")

    def read_body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        for block in self.body():
            total += len(block)
            if total > limit:
                raise EngineError(f"the engine's answer is larger than {limit} bytes")
            parts.append(block)
        return b"".join(parts)

    def raw_rest(self) -> bytes:
        """After a 101: the first bytes of the raw stream, read along with the answer."""
        return self._h11.trailing_data[0]

    def reusable(self) -> bool:
        """After an answer read whole: whether the link can carry the next request."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False
