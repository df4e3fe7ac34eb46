"""HTTP/1.1 on the proxy's client connections, parsed and written by h11 (strict, sans-IO).

Nothing a client sends for framing is ever relayed: h11 parses each request whole, the proxy writes every answer
anew (its own Content-Length or its own chunks), and `ds01.proxy.link` does the same towards the engine. Bodies
flow in blocks of at most BLOCK bytes; only the bodies the policy reads are buffered, with a cap. A client that
begins HTTP/2 is refused in HTTP/2's own frames, the one answer it can read.
"""

from __future__ import annotations

import contextlib
import io
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11

from ds01.reasons import Reason

MAX_BODY_BYTES = 1024 * 1024
BLOCK = 64 * 1024
MAX_CHUNK_EXTRA_BYTES = 1024  # chunk extensions and trailers in one body, all dropped; Docker clients send none
# Hop-by-hop headers (RFC 9110 7.6.1), and what the proxy sets or answers itself (Host, Expect).
NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                           "upgrade", "content-length", "host", "expect"})
_FOLDED = re.compile(rb"\n[ \t]")  # a header line that starts with blank space continues the one before
_LONGEST_CHUNK_LINE = 24  # CRLF, 20 hex digits (h11's bound) and CRLF: more than this is an extension
# HTTP/2 (RFC 9113), as far as refusing it takes: frame types, an error code, and room in the smallest frame.
_SETTINGS, _GOAWAY = 0x4, 0x7
_HTTP_1_1_REQUIRED = 0xD
_MAX_GOAWAY_DEBUG_BYTES = 16_384 - 8
STATUS_TEXT = {100: "Continue", 101: "Switching Protocols", 200: "OK", 400: "Bad Request", 403: "Forbidden",
               404: "Not Found", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
               429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
               502: "Bad Gateway", 503: "Service Unavailable"}


def wire(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as h11 takes them: bytes, so that any obs-text a peer sent goes on as the same bytes."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class HttpError(Exception):
    """The peer sent something that is not HTTP/1.1 as the Docker API speaks it."""

    def __init__(self, message: str, status: int = 400, reason: Reason = Reason.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Http2Preface(HttpError):
    """The client opened HTTP/2 with its connection preface, so it reads only HTTP/2 frames back."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.BUILDKIT)


def http2_refusal(message: str) -> bytes:
    """HTTP/2's own refusal of a whole connection: the server's preface (an empty SETTINGS frame), then a GOAWAY
    with HTTP_1_1_REQUIRED and `message` as its debug data, which HTTP/2 clients (Go's, gRPC's) print."""
    payload = struct.pack("!II", 0, _HTTP_1_1_REQUIRED) + message.encode()[:_MAX_GOAWAY_DEBUG_BYTES]
    return _frame(_SETTINGS, b"") + _frame(_GOAWAY, payload)


def _frame(kind: int, payload: bytes) -> bytes:
    """An HTTP/2 frame on stream 0, without flags (RFC 9113 4.1)."""
    return struct.pack("!I", len(payload))[1:] + struct.pack("!BBI", kind, 0, 0) + payload


class BodyTooLarge(HttpError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes", 413, Reason.BODY_TOO_LARGE)
        self.limit = limit


@dataclass(frozen=True)
class Head:
    """The headers of one message, as sent (names in their own case)."""

    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parsed(cls, headers: Any) -> Head:
        return cls(tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw_items()))

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def tokens(self, name: str) -> set[str]:
        """The comma-separated values of every `name` header, lower-cased (as Connection lists them)."""
        wanted = name.lower()
        return {token.strip().lower() for key, value in self.headers if key.lower() == wanted
                for token in value.split(",") if token.strip()}

    def end_to_end(self) -> list[tuple[str, str]]:
        """The headers to pass on: no hop-by-hop header, nor any the Connection header names."""
        named = self.tokens("Connection")
        return [(key, value) for key, value in self.headers
                if key.lower() not in NOT_FORWARDED and key.lower() not in named]


@dataclass(frozen=True)
class Incoming:
    """A request head, checked."""

    method: str
    target: str
    head: Head
    upgrade: bool  # Connection: Upgrade with Upgrade: tcp, as attach and exec start ask


def _checked(event: h11.Request) -> Incoming:
    method, target, head = event.method.decode("ascii"), event.target.decode("ascii"), Head.parsed(event.headers)
    # HTTP/2 on this socket is BuildKit's (its session and gRPC streams); the server adds how to build instead.
    if event.http_version == b"2.0":
        raise Http2Preface(f"the client speaks HTTP/2 ({method} {target[:40]} HTTP/2.0, its connection preface); "
                           "the ds01 proxy serves HTTP/1.1 only.")
    if method == "CONNECT":
        raise HttpError("CONNECT is not part of the Docker API.")
    if head.get("Transfer-Encoding") is not None and head.get("Content-Length") is not None:
        raise HttpError("the request has both Content-Length and Transfer-Encoding; send one of them.")
    expect = head.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        raise HttpError(f"Expect: {expect[:40]!r} is not supported; only 100-continue is.")
    upgrade = head.get("Upgrade")
    if upgrade is not None:
        if "h2c" in head.tokens("Upgrade"):
            raise HttpError("Upgrade: h2c (HTTP/2) is not served: the ds01 proxy speaks HTTP/1.1, and only attach "
                            "and exec start upgrade, with Upgrade: tcp.", reason=Reason.BUILDKIT)
        if upgrade.strip().lower() != "tcp":
            raise HttpError(f"Upgrade: {upgrade[:40]!r} is not supported; attach and exec start take Upgrade: tcp.")
        if "upgrade" not in head.tokens("Connection"):
            raise HttpError("Upgrade: tcp must come with Connection: Upgrade.")
    return Incoming(method, target, head, upgrade is not None)


class _ChunkFraming:
    """How many bytes a chunked body spent beyond its chunk sizes (extensions, trailers, padding), from h11's
    events and byte counts: h11 drops those bytes, and the proxy bounds them."""

    def __init__(self, buffered: int) -> None:
        self.consumed_base = buffered  # bytes of this body h11 had buffered when the head was parsed
        self.fed = 0
        self.data = 0
        self.minimal = 0  # the framing of the chunks done, written plainly ("%x\r\n" DATA "\r\n")
        self.current = 0  # the size so far of a chunk not yet ended

    def on_data(self, event: h11.Data) -> None:
        self.data += len(event.data)
        self.current += len(event.data)
        if event.chunk_end:
            self.minimal += len(f"{self.current:x}") + 4
            self.current = 0

    def beyond_sizes(self, left: int, *, ended: bool) -> int:
        spent = self.consumed_base + self.fed - left - self.data
        if ended:
            return spent - self.minimal - 5  # the last chunk line and the end of the trailers: "0\r\n\r\n"
        line = len(f"{self.current:x}") + 2 if self.current else 0
        # Bytes still buffered are a line not yet ended: past the longest plain one, they are extra too.
        return spent - self.minimal - line + max(0, left - _LONGEST_CHUNK_LINE)


class ClientSide:
    """One client connection, with h11 as the server."""

    def __init__(self, sock: socket.socket, *, idle_seconds: float, header_seconds: float,
                 max_head_bytes: int) -> None:
        self.sock = sock
        self._idle_seconds = idle_seconds
        self._header_seconds = header_seconds
        self._max_head_bytes = max_head_bytes
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self._chunks: _ChunkFraming | None = None
        self._length: int | None = 0

    def _next(self) -> Any:
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HttpError(f"the request head is larger than {self._max_head_bytes} bytes.", 431,
                                Reason.HEADER_TOO_LARGE) from None
            said = str(exc) or "malformed request"
            said = said if len(said) <= 120 else f"{said[:120]}..."
            raise HttpError(f"the request is not HTTP/1.1 as the Docker API speaks it ({said}); send plain "
                            "HTTP/1.1, as current Docker clients do.", exc.error_status_hint) from None

    def _send(self, event: Any) -> None:
        if data := self._h11.send(event):  # the end of a body with a length is no byte at all
            self.sock.sendall(data)

    def peer_closed(self) -> bool:
        """Whether the client has hung up, seen without reading what it may have sent: a request held for long
        (one waiting in the queue) asks this while its client waits."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return bool(readable) and self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True  # reset, or closed under us

    def _recv(self, timeout: float | None) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv(BLOCK)
        self._h11.receive_data(data)
        return data

    def next_request(self) -> Incoming | None:
        """The next request head, or None when the client closed or stayed idle for the idle timeout. A head
        must arrive whole within the header timeout of its first byte."""
        raw = bytearray(self._h11.trailing_data[0])  # what came after the last request
        deadline = time.monotonic() + self._header_seconds if raw else None
        while True:
            event = self._next()
            if isinstance(event, h11.Request):
                break
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise HttpError(f"unexpected {type(event).__name__} before a request")
            try:
                data = self._recv(self._idle_seconds if deadline is None else max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                if deadline is None:
                    return None
                raise HttpError(f"the request head did not arrive whole within {self._header_seconds:g}s.", 408,
                                Reason.HEADER_TIMEOUT) from None
            if not data and not raw:
                return None
            raw += data
            if deadline is None:
                deadline = time.monotonic() + self._header_seconds
        left = len(self._h11.trailing_data[0])
        head_bytes = bytes(raw[:len(raw) - left])
        if len(head_bytes) > self._max_head_bytes:
            raise HttpError(f"the request head is larger than {self._max_head_bytes} bytes.", 431,
                            Reason.HEADER_TOO_LARGE)
        if _FOLDED.search(head_bytes):
            raise HttpError("a header is folded onto a second line (obsolete line folding); send each header on "
                            "one line.")
        incoming = _checked(event)
        chunked = incoming.head.get("Transfer-Encoding") is not None
        self._chunks = _ChunkFraming(left) if chunked else None
        self._length = None if chunked else int(incoming.head.get("Content-Length") or 0)
        return incoming

    def has_body(self) -> bool:
        """Whether the request declared a body (a length over 0, or chunks)."""
        return self._length != 0

    def declared_length(self) -> int | None:
        """The body's length as the client declared it; None for a chunked body."""
        return self._length

    def body_blocks(self, stall_seconds: float | None = None) -> Iterator[bytes]:
        """The request body as it arrives, in blocks of at most BLOCK bytes, each within `stall_seconds` (the idle
        timeout unless given) of the one before. A client that sent `Expect: 100-continue` is told to go on."""
        stall = self._idle_seconds if stall_seconds is None else stall_seconds
        if self._h11.they_are_waiting_for_100_continue and self._length != 0:
            self._send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        while self._h11.their_state is h11.SEND_BODY:
            pieces: list[bytes] = []
            while isinstance(event := self._next(), h11.Data):
                if self._chunks is not None:
                    self._chunks.on_data(event)
                pieces.append(bytes(event.data))
            ended = isinstance(event, h11.EndOfMessage)
            if not ended and event is not h11.NEED_DATA:
                raise HttpError(f"unexpected {type(event).__name__} in a request body")
            self._check_chunks(ended)
            if pieces:
                yield b"".join(pieces)
            if not ended:
                try:
                    fed = len(self._recv(stall))
                except TimeoutError:
                    raise HttpError(f"the request body stalled for {stall:g}s.", 408, Reason.BODY_TIMEOUT) from None
                if self._chunks is not None:
                    self._chunks.fed += fed

    def _check_chunks(self, ended: bool) -> None:
        if self._chunks is None:
            return
        extra = self._chunks.beyond_sizes(len(self._h11.trailing_data[0]), ended=ended)
        if extra > MAX_CHUNK_EXTRA_BYTES + (0 if ended else _LONGEST_CHUNK_LINE):
            raise HttpError(f"the chunked body carries {extra} bytes of chunk extensions or trailers; the proxy "
                            f"takes at most {MAX_CHUNK_EXTRA_BYTES} (and drops them). Send plain chunks.")

    def read_body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole request body; more than `limit` bytes is an error."""
        parts: list[bytes] = []
        total = 0
        for block in self.body_blocks():
            total += len(block)
            if total > limit:
                raise BodyTooLarge(limit)
            parts.append(block)
        return b"".join(parts)

    def body_stream(self) -> io.BufferedReader:
        return io.BufferedReader(_BlockReader(self.body_blocks()), BLOCK)

    def waiting_for_continue(self) -> bool:
        return self._h11.they_are_waiting_for_100_continue

    def send_head(self, status: int, headers: list[tuple[str, str]], length: int | None, reason: str = "") -> None:
        """A response head; with no length, the body goes in the proxy's own chunks."""
        framing = [] if length is None else [("Content-Length", str(length))]
        self.sock.settimeout(None)  # a streaming answer (logs -f, events) has no idle time
        phrase = (reason or STATUS_TEXT.get(status, "")).encode("latin-1")
        self._send(h11.Response(status_code=status, headers=wire([*headers, *framing]), reason=phrase))

    def send_data(self, data: bytes) -> None:
        if data:
            self._send(h11.Data(data=data))

    def end(self) -> bool:
        """Ends the response. Returns whether the connection can carry another request."""
        self._send(h11.EndOfMessage())
        if self._length == 0 and self._h11.their_state is h11.SEND_BODY:
            self._next()  # the end of an empty body, which needs no byte more
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    def can_answer(self) -> bool:
        """Whether no answer to the current request has begun."""
        return self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def refuse_http2(self, message: str) -> None:
        """Answers a client that began HTTP/2, in HTTP/2: h11 has no words for it, and no HTTP/1.1 answer reads."""
        self.sock.sendall(http2_refusal(message))

    def send_whole(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> bool:
        self.send_head(status, [("Content-Type", "application/json"), *headers], len(body))
        self.send_data(body)
        return self.end()

    def switch(self, headers: list[tuple[str, str]]) -> bytes:
        """Answers 101 and leaves HTTP; returns what the client sent past its request (raw stream bytes)."""
        self.sock.settimeout(None)
        self._send(h11.InformationalResponse(
            status_code=101, headers=wire([*headers, ("Connection", "Upgrade"), ("Upgrade", "tcp")]),
            reason=b"UPGRADED"))
        return self._h11.trailing_data[0]


class _BlockReader(io.RawIOBase):
    """Blocks from an iterator, read as a stream."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = next(self._blocks, b"")
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def splice(client: socket.socket, upstream: socket.socket, *, to_upstream: bytes, to_client: bytes) -> None:
    """Both directions of an upgraded connection (attach, exec start) until both sides are done, starting with
    the raw bytes each side sent along with its HTTP head."""

    def one_way(source: socket.socket, sink: socket.socket) -> None:
        try:
            while block := source.recv(BLOCK):
                sink.sendall(block)
        except OSError:
            pass  # the other side went away; the finally below tells the peer
        finally:
            with contextlib.suppress(OSError):  # already closed
                sink.shutdown(socket.SHUT_WR)

    client.settimeout(None)
    upstream.settimeout(None)
    upstream.sendall(to_upstream)
    client.sendall(to_client)
    upward = threading.Thread(target=one_way, args=(client, upstream), daemon=True)
    upward.start()
    one_way(upstream, client)
    upward.join()
