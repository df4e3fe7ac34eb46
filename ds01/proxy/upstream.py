"""The proxy's door to the real engine: raw sockets for forwarding, and small JSON calls for its own checks."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ds01.errors import ConfigError, EngineError

API_PREFIX = "/v1.41"  # the oldest API every supported engine speaks, for the proxy's own calls


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


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
                sock.connect(self.unix_path)
                return sock
            return socket.create_connection(self.address, timeout=self.timeout)
        except OSError as exc:
            raise EngineError(f"cannot reach the Docker engine at {self.url}: {exc.strerror or exc}. "
                              "Is dockerd running?") from exc

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix_path is not None:
            return _UnixConnection(self.unix_path, self.timeout)
        return http.client.HTTPConnection(*self.address, timeout=self.timeout)

    def call(self, method: str, path: str, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One JSON request on its own connection: (status, decoded body or None)."""
        target = API_PREFIX + path + (f"?{urlencode(query)}" if query else "")
        connection = self._connection()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, target, body=payload, headers=headers)
            answer = connection.getresponse()
            raw = answer.read()
        except OSError as exc:
            raise EngineError(f"the Docker engine at {self.url} failed on {method} {path}: {exc}") from exc
        finally:
            connection.close()
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
