"""What the gate decides for a request: deny it, answer it itself, or forward it (perhaps rewritten)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ds01.proxy.http import Head
from ds01.proxy.routes import Route
from ds01.proxy.session import Session
from ds01.proxy.userlocks import Held
from ds01.reasons import Reason


@dataclass
class Deny:
    reason: Reason
    message: str
    status: int = 403


@dataclass
class Reply:
    status: int
    body: Any  # JSON: an object, or a list for a list the proxy filtered


@dataclass
class Forward:
    """A request to send on. The server owns it from the gate's return: it settles it once the engine has answered,
    and closes it however the request ends."""

    target: str  # the request target to send upstream (path and query), possibly rewritten
    body: bytes | None = None  # a replacement body; None streams the client's own
    after: Callable[[int | None, bytes], None] | None = None  # sees the buffered response (None: forward failed)
    hijack: bool = False  # attach / exec start: the connection may turn into a raw stream
    body_file: BinaryIO | None = None  # a replacement body spooled to a file, sent from its start
    warnings: tuple[str, ...] = ()  # added to the Warnings of a successful create's answer
    held: Held | None = None  # a per-user lock the request holds until the engine has answered it
    closed: Callable[[], None] | None = None  # runs once the exchange is over, a streamed answer's end included
    _settled: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def awaits_answer(self) -> bool:
        """Whether the engine's answer is read whole and settled before the client gets it."""
        return self.after is not None or self.held is not None

    def settle(self, status: int | None, answer: bytes) -> None:
        """The engine answered (status None: it did not, or the request went no further): `after` sees it, then the
        lock is released, even if `after` fails. Only the first call acts."""
        if self._settled:
            return
        self._settled = True
        try:
            if self.after is not None:
                self.after(status, answer)
        finally:
            if self.held is not None:
                self.held.release()

    def close(self) -> None:
        """The request is over, however it ended: settled if it was not yet, its spooled body closed."""
        try:
            self.settle(None, b"")
        finally:
            try:
                if self.body_file is not None:
                    self.body_file.close()
            finally:
                if self.closed is not None:
                    closed, self.closed = self.closed, None
                    closed()


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
    client_gone: Callable[[], bool] = field(default=lambda: False)  # whether the client hung up meanwhile

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")
