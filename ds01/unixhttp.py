"""HTTP/1.1 with the standard library's http.client on a unix socket: how the `container` command and `doctor`
talk to the proxy (the proxy itself speaks h11, in ds01/proxy/)."""

from __future__ import annotations

import http.client
import select
import socket


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def closed_by_peer(self) -> bool:
        """Whether a kept-alive connection was closed by the other side while idle: readable with nothing pending
        means end of file (or an error), so a request sent on it could be lost after it was read."""
        if self.sock is None:
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)
