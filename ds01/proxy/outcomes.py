"""What the gate decides for a request: deny it, answer it itself, or forward it (perhaps rewritten)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ds01.proxy.http import Head
from ds01.proxy.routes import Route
from ds01.proxy.session import Session
from ds01.reasons import Reason


@dataclass
class Deny:
    reason: Reason
    message: str
    status: int = 403


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


@dataclass
class Forward:
    target: str  # the request target to send upstream (path and query), possibly rewritten
    body: bytes | None = None  # a replacement body; None streams the client's own
    after: Callable[[int | None, bytes], None] | None = None  # sees the buffered response (None: forward failed)
    hijack: bool = False  # attach / exec start: the connection may turn into a raw stream
    body_file: BinaryIO | None = None  # a replacement body spooled to a file, sent from its start
    warnings: tuple[str, ...] = ()  # added to the Warnings of a successful create's answer


Outcome = Deny | Reply | Forward
BodyReader = Callable[[], bytes]


@dataclass(frozen=True)
class Request:
    session: Session
    method: str
    path: str  # without the query string
    query: str
    route: Route
    head: Head
    read_body: BodyReader  # the client's body, buffered up to the size cap
    body_stream: Callable[[], BinaryIO]  # the client's body as a stream, for archives of any size

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")
