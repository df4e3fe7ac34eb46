"""The proxy daemon: a unix socket in front of the engine, one thread per connection, a graceful drain."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import socketserver
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ds01 import eventlog
from ds01.config import ProxySettings
from ds01.daemon import only_instance, stop_on_signals
from ds01.errors import Busy, Denied, Ds01Error, EngineError
from ds01.eventlog.types import EventType
from ds01.proxy import http
from ds01.proxy.builds import BUILDKIT_MESSAGE
from ds01.proxy.gate import Gate
from ds01.proxy.link import EngineLink
from ds01.proxy.outcomes import Deny, Forward, Reply, Request
from ds01.proxy.routes import RouteKind, classify
from ds01.proxy.session import Session, peer_uid
from ds01.proxy.upstream import Upstream
from ds01.reasons import Reason

# Refusals that are also image.deny events.
IMAGE_KINDS = frozenset({RouteKind.PULL, RouteKind.LIST_IMAGES, RouteKind.IMAGE, RouteKind.SAVE_IMAGES,
                         RouteKind.COMMIT, RouteKind.BUILD, RouteKind.BUILDKIT})
# A refusal is 403, except where the engine's own answer would be another: missing (404; someone else's looks
# the same), too large (413).
DENIAL_STATUS = {Reason.NOT_FOUND: 404, Reason.BODY_TOO_LARGE: 413, Reason.CONTEXT_TOO_LARGE: 413}

_ANSWER_BYTES = 16 * http.MAX_BODY_BYTES  # the most of an engine answer the proxy reads whole (for `after`)
DISCARD_LIMIT_BYTES = 64 * 2**20
DISCARD_SECONDS = 5.0


def _error_body(reason: str, message: str) -> tuple[bytes, list[tuple[str, str]]]:
    return json.dumps({"message": f"ds01: {message}"}).encode(), [("X-DS01-Reason", reason), ("Connection", "close")]


class _Link:
    """The engine connection that serves one client connection, opened on first use and kept alive."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self.link: EngineLink | None = None

    def open(self) -> EngineLink:
        if self.link is None:
            self.link = EngineLink(self._upstream.connect())
        return self.link

    def close(self) -> None:
        if self.link is not None:
            with contextlib.suppress(OSError):
                self.link.sock.close()
        self.link = None


class Proxy:
    def __init__(self, gate: Gate, upstream: Upstream,
                 settings: Callable[[], ProxySettings] | None = None) -> None:
        self.gate = gate
        self.upstream = upstream
        self.settings = settings or (lambda: gate.sessions.current_config().proxy)
        self.draining = threading.Event()
        self._idle: dict[socket.socket, bool] = {}
        self._per_user: Counter[str] = Counter()
        self._connections_lock = threading.Lock()

    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._idle)

    def _mark(self, client: socket.socket, idle: bool) -> None:
        with self._connections_lock:
            self._idle[client] = idle

    def close_idle(self, everything: bool = False) -> None:
        """Wake connections waiting for their next request (or all of them) so they end."""
        with self._connections_lock:
            for client, idle in self._idle.items():
                if idle or everything:
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_RDWR)

    def _admit(self, user: str, most: int) -> bool:
        """Counts a connection of `user`, unless they have `most` open already."""
        with self._connections_lock:
            if self._per_user[user] >= most:
                return False
            self._per_user[user] += 1
            return True

    def _leave(self, user: str) -> None:
        with self._connections_lock:
            self._per_user[user] -= 1
            if self._per_user[user] <= 0:
                del self._per_user[user]

    def serve(self, client: socket.socket) -> None:
        self._mark(client, idle=True)
        settings = self.settings()
        side = http.ClientSide(client, idle_seconds=settings.idle_timeout_seconds,
                               header_seconds=settings.header_timeout_seconds,
                               max_head_bytes=settings.max_header_bytes)
        link = _Link(self.upstream)
        admitted = user = None
        try:
            session = self._session(peer_uid(client), settings.max_connections_per_user)
            if isinstance(session, Session):
                admitted = user = session.caller.user
            while not self.draining.is_set():
                self._mark(client, idle=True)
                incoming = side.next_request()
                if incoming is None:
                    return
                self._mark(client, idle=False)
                if isinstance(session, Deny):
                    # Answered to the first request, not at connect: a client still writing it would read a reset.
                    self._refuse(side, session)
                    return
                if not self._exchange(side, link, session, incoming):
                    return
        except http.HttpError as exc:
            # HTTP/2 is BuildKit's: the client is told how to build instead, not only that the framing is wrong.
            said = f"{exc} {BUILDKIT_MESSAGE}" if exc.reason is Reason.BUILDKIT else str(exc)
            eventlog.emit(EventType.PROXY_DENY, source="proxy", user=user, endpoint="framing", verdict="deny",
                          reason=exc.reason, message=said)
            with contextlib.suppress(OSError):
                if isinstance(exc, http.Http2Preface):
                    side.refuse_http2(f"ds01: {said}")
                elif side.can_answer():
                    side.send_whole(exc.status, *_error_body(exc.reason, said))
        except OSError:
            pass  # the client or the engine hung up; nothing is left to answer
        finally:
            link.close()
            if admitted is not None:
                self._leave(admitted)
            with self._connections_lock:
                self._idle.pop(client, None)

    def _session(self, uid: int, most: int) -> Session | Deny:
        """Who is calling, or why their connection is refused."""
        try:
            session = self.gate.sessions.for_uid(uid)
        except Ds01Error as exc:
            eventlog.emit(EventType.PROXY_DENY, source="proxy", user=None, uid=uid, endpoint="connect", verdict="deny",
                          reason=Reason.UNKNOWN_USER)
            return Deny(Reason.UNKNOWN_USER, str(exc))
        if self._admit(session.caller.user, most):
            return session
        message = (f"you have {most} connections open to the ds01 proxy, the most one user may have "
                   "(proxy.max_connections_per_user). Close some (docker logs -f, docker events, attached "
                   "sessions, idle clients) and try again.")
        eventlog.emit(EventType.PROXY_DENY, source="proxy", user=session.caller.user, uid=uid, endpoint="connect",
                      verdict="deny", reason=Reason.TOO_MANY_CONNECTIONS, message=message)
        return Deny(Reason.TOO_MANY_CONNECTIONS, message, 429)

    def _refuse(self, side: http.ClientSide, deny: Deny) -> None:
        if side.has_body() and not side.waiting_for_continue():
            _discard_body(side)
        side.send_whole(deny.status, *_error_body(deny.reason, deny.message))

    def _exchange(self, side: http.ClientSide, link: _Link, session: Session, incoming: http.Incoming) -> bool:
        """One request and its answer. Returns whether the connection can carry another."""
        method, head = incoming.method, incoming.head
        path, _, query = incoming.target.partition("?")
        buffered: list[bytes] = []

        def read_body() -> bytes:
            if not buffered:
                try:
                    buffered.append(side.read_body())
                except http.BodyTooLarge as exc:
                    raise Denied(Reason.BODY_TOO_LARGE, f"the request body is larger than {exc.limit} bytes") from None
            return buffered[0]

        streamed: list[BinaryIO] = []

        def body_stream() -> BinaryIO:
            if buffered:
                raise Ds01Error("the request body was already read")
            buffered.append(b"")  # consumed: nothing is left to relay
            streamed.append(side.body_stream())
            return streamed[0]

        request = Request(session, method, path, query, classify(method, path), head, read_body, body_stream,
                          side.peer_closed)
        decided = self._decide(request)
        try:
            return self._answer(side, link, request, incoming, decided, buffered=buffered, streamed=streamed)
        finally:
            if isinstance(decided, Forward):
                decided.close()  # whatever happened to it: the engine failed, the client left, the proxy refused it

    def _answer(self, side: http.ClientSide, link: _Link, request: Request, incoming: http.Incoming,
                outcome: Deny | Reply | Forward, *, buffered: list[bytes], streamed: list[BinaryIO]) -> bool:
        method, path = request.method, request.path
        if incoming.upgrade and not (isinstance(outcome, Forward) and outcome.hijack):
            outcome = Deny(Reason.BAD_REQUEST, (
                f"{method} {path} asked to upgrade the connection (Upgrade: tcp); only attach "
                "(POST /containers/ID/attach) and exec start (POST /exec/ID/start) upgrade. Send it without the "
                "Upgrade and Connection: Upgrade headers."), 400)
        user = request.session.caller.user
        if isinstance(outcome, Deny):
            eventlog.emit(EventType.PROXY_DENY, source="proxy", user=user, endpoint=f"{method} {path}", verdict="deny",
                          reason=outcome.reason, message=outcome.message)
            if request.route.kind in IMAGE_KINDS:  # images have their own event, for the image report
                eventlog.emit(EventType.IMAGE_DENY, source="proxy", user=user, endpoint=f"{method} {path}",
                              reason=outcome.reason, message=outcome.message)
            if (streamed or (not buffered and side.has_body())) and not side.waiting_for_continue():
                _discard_body(side)
            side.send_whole(outcome.status, *_error_body(outcome.reason, outcome.message))
            return False
        eventlog.emit(EventType.PROXY_ALLOW, source="proxy", user=user, endpoint=f"{method} {path}", verdict="allow",
                      reason=request.route.kind)
        if isinstance(outcome, Reply):
            return side.send_whole(outcome.status, json.dumps(outcome.body).encode(), [])
        return self._forward(side, link, request, incoming, outcome, buffered=buffered)

    def _decide(self, request: Request) -> Deny | Reply | Forward:
        try:
            return self.gate.decide(request)
        except Denied as denial:
            return Deny(denial.reason, denial.message, DENIAL_STATUS.get(denial.reason, 403))
        except http.HttpError as exc:  # the body's framing, found bad while the gate read it
            return Deny(exc.reason, str(exc), exc.status)
        except Busy as exc:
            return Deny(Reason.BUSY, str(exc), 503)
        except EngineError as exc:
            return Deny(Reason.ENGINE_ERROR, str(exc), 502)
        except Ds01Error as exc:
            return Deny(Reason.ERROR, str(exc), 500)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged in full; it never drops the client
            traceback.print_exc()
            eventlog.emit(EventType.PROXY_INTERNAL_ERROR, source="proxy", error=repr(exc), endpoint=request.path)
            return Deny(Reason.INTERNAL_ERROR,
                        f"internal error in the ds01 proxy ({type(exc).__name__}); it was logged "
                        "for the admin.", 500)

    def _forward(self, side: http.ClientSide, link: _Link, request: Request, incoming: http.Incoming,
                 forward: Forward, *, buffered: list[bytes]) -> bool:
        answered = False
        try:
            engine = link.open()
            _send_request(engine, side, incoming, forward, buffered)
            answer = engine.answer()
            headers = answer.head.end_to_end()
            if answer.switched:
                upward = side.switch(headers)
                answered = True
                http.splice(side.sock, engine.sock, to_upstream=upward, to_client=engine.raw_rest())
                return False
            if forward.awaits_answer or answer.status >= 400:  # errors are read whole: the gate filters them
                data = engine.read_body(_ANSWER_BYTES)
                try:
                    forward.settle(answer.status, data)
                except Ds01Error as exc:  # what the engine did was undone, and the client hears why
                    busy = isinstance(exc, Busy)
                    side.send_whole(503 if busy else 500, *_error_body(Reason.BUSY if busy else Reason.ERROR,
                                                                         str(exc)))
                    link.close()
                    return False
                data = _with_warnings(answer.status, data, forward.warnings)
                data = self.gate.error_answer(request, answer.status, data)
                side.send_head(answer.status, headers, len(data), answer.reason)
                answered = True
                side.send_data(data)
            else:
                side.send_head(answer.status, headers, answer.length, answer.reason)
                answered = True
                for block in engine.body():
                    side.send_data(block)
            if not engine.reusable():
                link.close()
            return side.end()
        except EngineError as exc:
            link.close()
            if not answered:
                side.send_whole(502, *_error_body(Reason.ENGINE_ERROR, str(exc)))
            return False


def _discard_body(side: http.ClientSide) -> None:
    """Read and drop the rest of a refused request's body (up to a bound), so that a client still sending it, such
    as docker cp, reads the refusal instead of failing on a closed socket."""
    deadline = time.monotonic() + DISCARD_SECONDS
    left = DISCARD_LIMIT_BYTES
    with contextlib.suppress(OSError, http.HttpError):
        for block in side.body_blocks(stall_seconds=DISCARD_SECONDS):
            left -= len(block)
            if left <= 0 or time.monotonic() > deadline:
                break


def _send_request(engine: EngineLink, side: http.ClientSide, incoming: http.Incoming, forward: Forward,
                  buffered: list[bytes]) -> None:
    """The request upstream, framed by the proxy: a replacement body (spooled or in memory), the buffered one, or
    the client's own as it arrives."""
    method, headers, upgrade = incoming.method, incoming.head.end_to_end(), incoming.upgrade and forward.hijack
    body = forward.body if forward.body is not None else (buffered[0] if buffered else None)
    if forward.body_file is not None:
        length = forward.body_file.seek(0, io.SEEK_END)
        forward.body_file.seek(0)
        engine.send_request(method, forward.target, headers, length, upgrade=upgrade)
        while block := forward.body_file.read(http.BLOCK):
            engine.send_data(block)
    elif body is not None:
        engine.send_request(method, forward.target, headers, len(body), upgrade=upgrade)
        engine.send_data(body)
    else:
        engine.send_request(method, forward.target, headers, side.declared_length(), upgrade=upgrade)
        for block in side.body_blocks():
            engine.send_data(block)
    engine.end_request()


def _with_warnings(status: int, data: bytes, warnings: tuple[str, ...]) -> bytes:
    """A create's answer with the proxy's notes added to the engine's Warnings, which clients print."""
    if status != 201 or not warnings:
        return data
    answer = json.loads(data)
    answer["Warnings"] = [*(answer.get("Warnings") or []), *warnings]
    return json.dumps(answer).encode()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # the drain below waits for them, with a deadline
    block_on_close = False
    request_queue_size = 256  # a burst of clients (a make -j, a test matrix) must queue, not get EAGAIN

    def __init__(self, path: str, proxy: Proxy) -> None:
        self.proxy = proxy
        super().__init__(path, _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        server.proxy.serve(self.request)


def serve_forever(proxy: Proxy, listen: Path, run_dir: Path, drain_seconds: float,
                  on_ready: Callable[[], None] | None = None) -> None:
    """Listen until SIGTERM or SIGINT, then stop accepting and let open connections drain."""
    with only_instance(run_dir, "proxy"):
        listen.parent.mkdir(parents=True, exist_ok=True)
        listen.unlink(missing_ok=True)  # a stale socket from a crashed run; the lock above proves it is ours
        server = _Server(str(listen), proxy)
        os.chmod(listen, 0o666)  # noqa: S103 - everyone may connect; who they are comes from SO_PEERCRED
        stop = stop_on_signals()
        # A client that hangs up mid-stream must cost one connection an EPIPE, not the daemon its life.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        accepting.start()
        eventlog.emit(EventType.PROXY_START, source="proxy", listen=str(listen), upstream=proxy.upstream.url)
        if on_ready is not None:
            on_ready()
        stop.wait()
        server.shutdown()
        server.server_close()
        listen.unlink(missing_ok=True)
        proxy.draining.set()
        proxy.close_idle()
        deadline = time.monotonic() + drain_seconds
        while proxy.open_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = proxy.open_connections()
        proxy.close_idle(everything=True)
        eventlog.emit(EventType.PROXY_STOP, source="proxy", cut_connections=left,
                      event_write_failures=eventlog.write_failures(),
                      event_rotation_failures=eventlog.rotation_failures())
