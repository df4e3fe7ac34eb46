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
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

from ds01 import containers, events
from ds01.allocator import Allocator
from ds01.daemon import only_instance, stop_on_signals
from ds01.errors import Busy, Denied, Ds01Error, EngineError
from ds01.proxy import http
from ds01.proxy.binds import Pins
from ds01.proxy.gate import Gate
from ds01.proxy.outcomes import Deny, Forward, Reply, Request
from ds01.proxy.routes import classify
from ds01.proxy.session import Session, peer_uid
from ds01.proxy.upstream import Upstream

_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
                500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_RAW_STREAMS = ("application/vnd.docker.raw-stream", "application/vnd.docker.multiplexed-stream")


def _error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"message": f"ds01: {message}"}).encode()
    return http.response(status, _STATUS_TEXT.get(status, "Error"), body,
                         extra=[("X-DS01-Reason", reason), ("Connection", "close")])


def _is_raw_stream(response: http.Head) -> bool:
    if response.status == 101:
        return True
    framed = response.get("Content-Length") is not None or response.get("Transfer-Encoding") is not None
    return response.status == 200 and not framed and (response.get("Content-Type") or "") in _RAW_STREAMS


class _Link:
    """The upstream connection that serves one client connection, opened on first use and kept alive."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self.sock: socket.socket | None = None
        self.rfile: BinaryIO | None = None

    def open(self) -> tuple[socket.socket, BinaryIO]:
        if self.sock is None or self.rfile is None:
            self.sock = self._upstream.connect()
            self.rfile = self.sock.makefile("rb")
        return self.sock, self.rfile

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = self.rfile = None


class Proxy:
    def __init__(self, gate: Gate, upstream: Upstream) -> None:
        self.gate = gate
        self.upstream = upstream
        self.draining = threading.Event()
        self._idle: dict[socket.socket, bool] = {}
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

    def serve(self, client: socket.socket) -> None:
        self._mark(client, idle=True)
        link = _Link(self.upstream)
        try:
            uid = peer_uid(client)
            try:
                session = self.gate.sessions.for_uid(uid)
            except Ds01Error as exc:
                events.emit("proxy.deny", source="proxy", user=None, uid=uid, endpoint="connect",
                            verdict="deny", reason="unknown_user")
                client.sendall(_error(403, "unknown_user", str(exc)))
                return
            rfile = client.makefile("rb")
            while not self.draining.is_set():
                self._mark(client, idle=True)
                head = http.read_head(rfile)
                if head is None:
                    return
                self._mark(client, idle=False)
                if not self._exchange(client, rfile, link, session, head):
                    return
        except http.HttpError as exc:
            with contextlib.suppress(OSError):
                client.sendall(_error(400, "bad_request", str(exc)))
        except OSError:
            pass  # the client or the engine hung up; nothing is left to answer
        finally:
            link.close()
            with self._connections_lock:
                self._idle.pop(client, None)

    def _exchange(self, client: socket.socket, rfile: BinaryIO, link: _Link, session: Session,
                  head: http.Head) -> bool:
        """One request and its response. Returns whether the connection can carry another."""
        parts = head.start.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise http.HttpError(f"bad request line {head.start!r}")
        method, target, _version = parts
        path, _, query = target.partition("?")
        _answer_expect(client, head)
        buffered: list[bytes] = []

        def read_body() -> bytes:
            if not buffered:
                try:
                    buffered.append(http.read_body(rfile, head) if http.request_has_body(head) else b"")
                except http.BodyTooLarge as exc:
                    raise Denied("body_too_large", f"the request body is larger than {exc.limit} bytes") from None
            return buffered[0]

        streamed: list[BinaryIO] = []

        def body_stream() -> BinaryIO:
            if buffered:
                raise Ds01Error("the request body was already read")
            buffered.append(b"")  # consumed: nothing is left to relay
            streamed.append(io.BufferedReader(http.BodyStream(rfile, head), http.BLOCK))
            return streamed[0]

        request = Request(session, method, path, query, classify(method, path), head, read_body, body_stream)
        outcome = self._decide(request)
        user = session.caller.user
        if isinstance(outcome, Deny):
            events.emit("proxy.deny", source="proxy", user=user, endpoint=f"{method} {path}", verdict="deny",
                        reason=outcome.reason, message=outcome.message)
            if streamed or (not buffered and http.request_has_body(head)):
                _discard_body(client, streamed[0] if streamed else http.BodyStream(rfile, head))
            client.sendall(_error(outcome.status, outcome.reason, outcome.message))
            return False
        events.emit("proxy.allow", source="proxy", user=user, endpoint=f"{method} {path}", verdict="allow",
                    reason=request.route.kind)
        if isinstance(outcome, Reply):
            client.sendall(http.response(outcome.status, "OK", json.dumps(outcome.body).encode()))
            return not head.closes()
        return self._forward(client, rfile, link, head, outcome, buffered=buffered)

    def _decide(self, request: Request) -> Deny | Reply | Forward:
        try:
            return self.gate.decide(request)
        except Denied as denial:
            return Deny(denial.reason, denial.message, 413 if denial.reason == "body_too_large" else 403)
        except http.HttpError as exc:  # the body's framing, found bad while the gate read it
            return Deny("bad_request", f"the request is not HTTP/1.1 as the Docker API speaks it: {exc}", 400)
        except Busy as exc:
            return Deny("busy", str(exc), 503)
        except EngineError as exc:
            return Deny("engine_error", str(exc), 502)
        except Ds01Error as exc:
            return Deny("error", str(exc), 500)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged in full; it never drops the client
            traceback.print_exc()
            events.emit("proxy.internal_error", source="proxy", error=repr(exc), endpoint=request.path)
            return Deny("internal_error", f"internal error in the ds01 proxy ({type(exc).__name__}); it was logged "
                                          "for the admin.", 500)

    def _forward(self, client: socket.socket, rfile: BinaryIO, link: _Link, head: http.Head, forward: Forward, *,
                 buffered: list[bytes]) -> bool:
        after: Callable[[int | None, bytes], None] | None = forward.after
        try:
            upstream, upstream_r = link.open()
            head.start = " ".join([head.start.split(" ")[0], forward.target, "HTTP/1.1"])
            _send_request(upstream, rfile, head, forward, buffered)
            answer = _final_answer(upstream_r)
            method = head.start.split(" ")[0]
            if after is not None:
                data = http.read_body(upstream_r, answer, limit=16 * http.MAX_BODY_BYTES) \
                    if http.response_has_body(answer, method) else b""
                callback, after = after, None
                callback(answer.status, data)
                data = _with_warnings(answer.status, data, forward.warnings)
                answer.remove("Transfer-Encoding")
                answer.set("Content-Length", str(len(data)))
                client.sendall(answer.encode() + data)
            elif forward.hijack and _is_raw_stream(answer):
                client.sendall(answer.encode())
                http.splice(client, rfile, upstream, upstream_r)
                return False
            else:
                client.sendall(answer.encode())
                if http.response_has_body(answer, method) and not http.relay_body(upstream_r, client, answer):
                    return False
            if answer.closes():
                link.close()
            return not head.closes()
        except EngineError as exc:
            client.sendall(_error(502, "engine_error", str(exc)))
            return False
        finally:
            if forward.body_file is not None:
                forward.body_file.close()
            if after is not None:
                after(None, b"")


def _answer_expect(client: socket.socket, head: http.Head) -> None:
    """The proxy answers `Expect: 100-continue` itself and never passes it on: the engine's interim 100 must not be
    taken for its answer (a create's grant would be released while the container holds the devices)."""
    expect = head.get("Expect")
    if expect is None:
        return
    if expect.lower() != "100-continue":
        raise http.HttpError(f"Expect: {expect[:40]!r} is not supported; only 100-continue is")
    head.remove("Expect")
    if http.request_has_body(head):
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


def _final_answer(upstream_r: BinaryIO) -> http.Head:
    """The engine's answer, past any interim 1xx (101, the switch to a raw stream, is final)."""
    while True:
        answer = http.read_head(upstream_r)
        if answer is None:
            raise EngineError("the engine closed the connection without answering")
        if not 100 <= answer.status < 200 or answer.status == 101:
            return answer


DISCARD_LIMIT_BYTES = 64 * 2**20
DISCARD_SECONDS = 5.0


def _discard_body(client: socket.socket, stream: BinaryIO | io.RawIOBase) -> None:
    """Read and drop the rest of a refused request's body (up to a bound), so that a client still sending it, such
    as docker cp, reads the refusal instead of failing on a closed socket."""
    client.settimeout(DISCARD_SECONDS)
    left = DISCARD_LIMIT_BYTES
    with contextlib.suppress(OSError, http.HttpError):
        while left > 0 and (block := stream.read(min(http.BLOCK, left))):
            left -= len(block)
    client.settimeout(None)


def _send_request(upstream: socket.socket, rfile: BinaryIO, head: http.Head, forward: Forward,
                  buffered: list[bytes]) -> None:
    """The request upstream: a replacement body (spooled or in memory), the buffered one, or the client's own."""
    body = forward.body if forward.body is not None else (buffered[0] if buffered else None)
    if forward.body_file is not None:
        _send_file(upstream, head, forward.body_file)
    elif body is not None:
        head.remove("Transfer-Encoding")
        head.set("Content-Length", str(len(body)))
        upstream.sendall(head.encode() + body)
    else:
        upstream.sendall(head.encode())
        if http.request_has_body(head):
            http.relay_body(rfile, upstream, head)


def _send_file(upstream: socket.socket, head: http.Head, body: BinaryIO) -> None:
    """A spooled body, sent with its own length from its first byte."""
    length = body.seek(0, io.SEEK_END)
    body.seek(0)
    head.remove("Transfer-Encoding")
    head.set("Content-Length", str(length))
    upstream.sendall(head.encode())
    while block := body.read(http.BLOCK):
        upstream.sendall(block)


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


def watch_engine(upstream: Upstream, allocator: Allocator, pins: Pins, stop: threading.Event) -> None:
    """From the engine's event stream: release the GPUs and pinned bind sources of the containers it removes on
    its own (--rm, prune), and record the containers the kernel's OOM killer hit."""
    query = urlencode({"filters": json.dumps({"type": ["container"], "event": ["destroy", "oom"]})})
    while not stop.is_set():
        try:
            sock = upstream.connect()
            with sock, sock.makefile("rb") as stream:
                sock.sendall(f"GET /v1.41/events?{query} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
                answer = http.read_head(stream)
                if answer is None or answer.status != 200:
                    raise EngineError(f"the engine refused its event stream: {answer and answer.start}")
                for line in _event_lines(stream, answer):
                    event = json.loads(line)
                    actor = event.get("Actor") or {}
                    container_id = event.get("id") or actor.get("ID", "")
                    if event.get("status") == "oom" or event.get("Action") == "oom":
                        attributes = actor.get("Attributes") or {}
                        events.emit("container.oom", source="engine", user=attributes.get(containers.USER),
                                    container=attributes.get("name"), id=container_id)
                    else:
                        allocator.release_container(container_id)
                        pins.release((actor.get("Attributes") or {}).get(containers.BIND_KEY) or "")
        except (OSError, EngineError, http.HttpError, ValueError, Ds01Error) as exc:
            events.emit("proxy.event_stream_lost", source="proxy", error=str(exc))
            stop.wait(2.0)


def _event_lines(stream: BinaryIO, answer: http.Head) -> Any:
    chunked = (answer.get("Transfer-Encoding") or "").lower() == "chunked"
    pending = b""
    while True:
        if chunked:
            size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            pending += stream.read(size)
            stream.readline()
        else:
            block = stream.read1(http.BLOCK)  # type: ignore[attr-defined]
            if not block:
                return
            pending += block
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())


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
        events.emit("proxy.start", source="proxy", listen=str(listen), upstream=proxy.upstream.url)
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
        events.emit("proxy.stop", source="proxy", cut_connections=left, event_write_failures=events.write_failures(),
                    event_rotation_failures=events.rotation_failures())
