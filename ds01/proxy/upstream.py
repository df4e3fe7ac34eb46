"""The proxy's door to the real engine: sockets for forwarding, small JSON calls for its own checks, and the
engine's event stream. All of it speaks HTTP through `ds01.proxy.link` (h11)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ds01.errors import ConfigError, EngineError
from ds01.proxy.link import EngineLink

API_PREFIX = "/v1.41"  # the oldest API every supported engine speaks, for the proxy's own calls
MAX_CALL_ANSWER_BYTES = 64 * 2**20
MAX_EVENT_BYTES = 2**20  # one line of the event stream


class Upstream:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        self.unix_path: str | None = None
        self.address = ("", 0)
        if parts.scheme == "unix" and parts.path:
            self.unix_path = parts.path
        elif parts.scheme in ("tcp", "http") and parts.hostname and parts.port:
            self.address = (parts.hostname, parts.port)
        else:
            raise ConfigError(f"upstream {url!r} is not unix:///path/to/docker.sock or tcp://host:port")
        self.url = url
        self.timeout = timeout

    def connect(self) -> socket.socket:
        try:
            if self.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(self.unix_path)
                except OSError:
                    sock.close()
                    raise
                return sock
            sock = socket.create_connection(self.address, timeout=self.timeout)
            sock.settimeout(None)  # forwarded answers may take as long as the engine needs (pull, wait, logs -f)
            return sock
        except OSError as exc:
            raise EngineError(f"cannot reach the Docker engine at {self.url}: {exc.strerror or exc}. "
                              "Is dockerd running?") from exc

    def call(self, method: str, path: str, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One JSON request on its own connection: (status, decoded body or None)."""
        target = API_PREFIX + path + (f"?{urlencode(query)}" if query else "")
        payload = b"" if body is None else json.dumps(body).encode()
        with contextlib.closing(self.connect()) as sock:
            sock.settimeout(self.timeout)
            link = EngineLink(sock)
            try:
                link.send_request(method, target, [("Content-Type", "application/json")] if payload else [],
                                  len(payload))
                link.send_data(payload)
                link.end_request()
                answer = link.answer()
                raw = link.read_body(MAX_CALL_ANSWER_BYTES)
            except OSError as exc:
                raise EngineError(f"the Docker engine at {self.url} failed on {method} {path}: {exc}") from exc
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        return answer.status, decoded

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        """GET /{kind}s/{name}/json (or /volumes/{name}); None when the engine says it does not exist."""
        quoted = quote(name, safe="")
        path = {"container": f"/containers/{quoted}/json", "exec": f"/exec/{quoted}/json",
                "image": f"/images/{quoted}/json", "volume": f"/volumes/{quoted}",
                "network": f"/networks/{quoted}"}[kind]
        status, body = self.call("GET", path)
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise EngineError(f"the Docker engine answered {status} to an inspect of {kind} {name}: {body}")
        return body

    def stream(self, path: str, query: dict[str, str]) -> Iterator[bytes]:
        """A GET's answer body block by block, as the engine sends it (a container's logs, its events)."""
        target = f"{API_PREFIX}{path}?{urlencode(query)}"
        with contextlib.closing(self.connect()) as sock:
            link = EngineLink(sock)
            link.send_request("GET", target, [], 0)
            link.end_request()
            answer = link.answer()
            if answer.status != 200:
                raise EngineError(f"the engine answered {answer.status} {answer.reason} to GET {path}")
            yield from link.body()

    def events(self, filters: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
        """The engine's events as they happen, until it ends the stream."""
        pending = b""
        for block in self.stream("/events", {"filters": json.dumps(filters)}):
            *lines, pending = (pending + block).split(b"\n")
            if len(pending) > MAX_EVENT_BYTES:
                raise EngineError(f"the engine sent an event longer than {MAX_EVENT_BYTES} bytes")
            for line in lines:
                if line.strip():
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise EngineError(f"the engine sent an event that is not an object: {line[:80]!r}")
                    yield event
