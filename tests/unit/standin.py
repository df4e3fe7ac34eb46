"""A stand-in for the ds01 proxy (a Docker API on a unix socket), shared by the unit tests of the `container`
command and its client: it records what each request sent and answers as a test says, so that the commands run
in-process (or in a fresh interpreter) without the proxy or an engine. One copy, so that every test reads requests
and shapes answers the same way."""

from __future__ import annotations

import io
import json
import socketserver
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Answer", "Seen", "StandIn", "serving"]


@dataclass
class Seen:
    """One request as the stand-in read it."""

    method: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        return json.loads(self.body)

    def members(self) -> dict[str, tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.body), mode="r:") as archive:
            return {member.name: member for member in archive.getmembers()}

    def content(self, name: str) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(self.body), mode="r:") as archive:
            extracted = archive.extractfile(name)
            assert extracted is not None
            return extracted.read()


@dataclass
class Answer:
    """What the stand-in answers: a JSON body unless one of the other shapes is given."""

    status: int = 200
    body: Any = None  # sent as JSON
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] | None = None  # a chunked body instead
    lines: list[dict[str, Any]] | None = None  # a chunked stream of JSON lines instead, as a build answers
    stream: bytes | None = None  # after a 101 switch: the raw stream, then the connection closes
    hang_up: bool = False  # close without answering
    then_close: bool = False  # close after answering, without saying so (as an idle timeout does, later)


class StandIn(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, answer: Callable[[Seen], Answer]) -> None:
        self.answer = answer
        self.early: Answer | None = None  # answered before the request body is read, then the connection closed
        self.seen: list[Seen] = []
        self.closed = threading.Semaphore(0)  # released each time the stand-in has closed a connection
        super().__init__(path, _Handler)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _chunked(self, chunks: list[bytes]) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _any(self) -> None:
        parts = urlsplit(self.path)
        seen = Seen(self.command, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)), dict(self.headers))
        self.server.seen.append(seen)
        early = self.server.early
        if early is None:
            seen.body = self._body()
        answer = early or self.server.answer(seen)
        if answer.hang_up:
            self.close_connection = True
            return
        if answer.stream is not None:
            self.wfile.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + answer.stream)
            self.close_connection = True
            return
        self.close_connection = early is not None or answer.then_close
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if early is not None:
            self.send_header("Connection", "close")
        if answer.lines is not None:
            self._chunked([json.dumps(line).encode() + b"\r\n" for line in answer.lines])
            return
        if answer.chunks is not None:
            self._chunked(answer.chunks)
            return
        body = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _any

    def log_message(self, *_args: object) -> None:
        """Quiet: the tests assert on what was seen."""


@contextmanager
def serving(path: str, answer: Callable[[Seen], Answer]) -> Iterator[StandIn]:
    """A stand-in on a unix socket at path, serving in a daemon thread until the block ends."""
    server = StandIn(path, answer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
