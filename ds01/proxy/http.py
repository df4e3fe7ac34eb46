"""Just enough HTTP/1.1 to proxy the Docker API: message heads, body framing, streaming and hijacked streams.

Bodies are relayed as they come (chunk by chunk for streams such as `logs --follow`), and only the few bodies
the policy must read are buffered, with a size cap.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
BLOCK = 64 * 1024


class HttpError(Exception):
    """The peer sent something that is not HTTP/1.1 as the Docker API speaks it."""


@dataclass
class Head:
    start: str  # request line or status line
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.headers.append((name, value))

    def remove(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    @property
    def status(self) -> int:
        parts = self.start.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {self.start!r}")
        return int(parts[1])

    def closes(self) -> bool:
        return "close" in (self.get("Connection") or "").lower()


def read_head(rfile: BinaryIO) -> Head | None:
    """The next message head, or None on a clean end of stream before it."""
    lines: list[str] = []
    size = 0
    while True:
        line = rfile.readline(MAX_HEAD_BYTES + 1)
        if not line:
            if lines:
                raise HttpError("connection closed in the middle of a message head")
            return None
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise HttpError("message head too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # tolerate a stray blank line between messages
            break
        lines.append(line.decode("latin-1").rstrip("\r\n"))
    head = Head(lines[0])
    for text in lines[1:]:
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(f"malformed header line {text!r}")
        head.headers.append((name, value.strip()))
    return head


def request_has_body(head: Head) -> bool:
    return head.get("Transfer-Encoding") is not None or int(head.get("Content-Length") or 0) > 0


def response_has_body(head: Head, request_method: str) -> bool:
    return request_method != "HEAD" and head.status not in (204, 304) and not 100 <= head.status < 200


def _chunked(head: Head) -> bool:
    encoding = (head.get("Transfer-Encoding") or "").lower()
    if encoding and encoding != "chunked":
        raise HttpError(f"unsupported transfer encoding {encoding!r}")
    return encoding == "chunked"


def _length(head: Head) -> int | None:
    value = head.get("Content-Length")
    if value is None:
        return None
    if not value.isdigit():
        raise HttpError(f"bad Content-Length {value!r}")
    return int(value)


def read_body(rfile: BinaryIO, head: Head, limit: int = MAX_BODY_BYTES) -> bytes:
    """A whole request or response body, de-chunked; more than `limit` bytes is an error."""
    if _chunked(head):
        parts: list[bytes] = []
        total = 0
        while True:
            size = _chunk_size(rfile.readline(MAX_CHUNK_LINE_BYTES))
            if size == 0:
                _skip_trailers(rfile)
                return b"".join(parts)
            total += size
            if total > limit:
                raise BodyTooLarge(limit)
            parts.append(_read_exact(rfile, size))
            _chunk_end(rfile)
    length = _length(head)
    if length is None:
        data = rfile.read(limit + 1)
        if len(data) > limit:
            raise BodyTooLarge(limit)
        return data
    if length > limit:
        raise BodyTooLarge(limit)
    return _read_exact(rfile, length)


class BodyStream(io.RawIOBase):
    """A request body read as a stream, de-chunked, never buffered whole."""

    def __init__(self, rfile: BinaryIO, head: Head) -> None:
        self._rfile = rfile
        self._chunked = _chunked(head)
        self._left = 0 if self._chunked else (_length(head) or 0)
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        if self._left == 0 and self._chunked:
            self._left = _chunk_size(self._rfile.readline(MAX_CHUNK_LINE_BYTES))
            if self._left == 0:
                _skip_trailers(self._rfile)
                self._done = True
                return 0
        if self._left == 0:
            self._done = True
            return 0
        data = self._rfile.read(min(len(buffer), self._left, BLOCK))
        if not data:
            raise HttpError("connection closed in the middle of a body")
        buffer[:len(data)] = data
        self._left -= len(data)
        if self._left == 0 and self._chunked:
            _chunk_end(self._rfile)
        return len(data)


class BodyTooLarge(HttpError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


def _read_exact(rfile: BinaryIO, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise HttpError("connection closed in the middle of a body")
    return data


MAX_CHUNK_LINE_BYTES = 1024


def _chunk_size(line: bytes) -> int:
    """The size on a chunk line read with readline(MAX_CHUNK_LINE_BYTES). A line cut at the limit is refused, never
    read in parts: the engine reads longer lines, and two readers disagreeing on where a body ends is smuggling."""
    if not line.endswith(b"\n"):
        raise HttpError(f"chunk size line longer than {MAX_CHUNK_LINE_BYTES} bytes, or cut off")
    digits = line.split(b";", 1)[0].strip()
    if not digits or any(c not in b"0123456789abcdefABCDEF" for c in digits):
        raise HttpError(f"bad chunk size line {line[:80]!r}")
    return int(digits, 16)


def _chunk_end(rfile: BinaryIO) -> None:
    if rfile.readline(3) not in (b"\r\n", b"\n"):
        raise HttpError("a chunk does not end where its size says")


def _skip_trailers(rfile: BinaryIO) -> None:
    while rfile.readline(MAX_HEAD_BYTES) not in (b"\r\n", b"\n", b""):
        pass


def relay_body(rfile: BinaryIO, out: socket.socket, head: Head) -> bool:
    """Copy a body as it arrives, chunks framed anew by the proxy (the peer's chunk lines, extensions and trailers
    are never passed on). Returns False when it ran until the peer closed."""
    if _chunked(head):
        while True:
            size = _chunk_size(rfile.readline(MAX_CHUNK_LINE_BYTES))
            if size == 0:
                _skip_trailers(rfile)
                out.sendall(b"0\r\n\r\n")
                return True
            out.sendall(f"{size:x}\r\n".encode() + _read_exact(rfile, size) + b"\r\n")
            _chunk_end(rfile)
    length = _length(head)
    if length is None:
        _copy_until_close(rfile, out)
        return False
    while length > 0:
        block = rfile.read1(min(length, BLOCK))  # type: ignore[attr-defined]
        if not block:
            raise HttpError("connection closed in the middle of a body")
        out.sendall(block)
        length -= len(block)
    return True


def _copy_until_close(rfile: BinaryIO, out: socket.socket) -> None:
    while block := rfile.read1(BLOCK):  # type: ignore[attr-defined]
        out.sendall(block)


def splice(client: socket.socket, client_r: BinaryIO, upstream: socket.socket, upstream_r: BinaryIO) -> None:
    """Both directions of a hijacked connection (attach, exec start) until both sides are done."""

    def one_way(source: BinaryIO, sink: socket.socket) -> None:
        try:
            _copy_until_close(source, sink)
        except OSError:
            pass  # the other side went away; the finally below tells the peer
        finally:
            with contextlib.suppress(OSError):  # already closed
                sink.shutdown(socket.SHUT_WR)

    upward = threading.Thread(target=one_way, args=(client_r, upstream), daemon=True)
    upward.start()
    one_way(upstream_r, client)
    upward.join()


def response(status: int, reason: str, body: bytes, content_type: str = "application/json",
             extra: list[tuple[str, str]] | None = None) -> bytes:
    head = Head(f"HTTP/1.1 {status} {reason}", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                                 *(extra or [])])
    return head.encode() + body
