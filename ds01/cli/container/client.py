"""The `container` command's client of the ds01 proxy: HTTP/1.1 with the standard library's http.client on the
proxy's unix socket. The command starts on every call, and docker-py with requests costs ~150 ms of imports.

What a failed call tells the user is refusals.py's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from ds01 import devicerequests, labels
from ds01.cli.container.refusals import ImageAction, Refusal, refusal_of, translate
from ds01.errors import UsageError
from ds01.names import DRY_RUN_HEADER, QUEUE_ID_HEADER, USER_AGENT, WORKSPACE
from ds01.paths import Paths
from ds01.records import Details, details
from ds01.unixhttp import UnixConnection

LOOPBACK = "127.0.0.1"
API = "/v1.40"  # the oldest version the proxy serves, so every proxy serves it; all sent here exists in 1.40
TIMEOUT_SECONDS = 60.0  # for an answer's head on a quiet socket; a stop adds its own grace time
SLOW_ANSWER_SECONDS = 600.0  # a build's head comes after the context is spooled and read; a commit's, its layer
FRAME = struct.Struct(">BxxxL")  # a multiplexed stream's frame head: stream (1 stdout, 2 stderr), length
_CONTAINER_ID = re.compile(r"\bcontainer ([0-9a-f]{12,64})\b")  # how the engine names a container using an image
_T = TypeVar("_T")


def proxy_url(paths: Paths, environ: Mapping[str, str] = os.environ) -> str:
    """unix://PATH of the proxy: DOCKER_HOST if set, else the ds01 socket in the run dir."""
    default = f"unix://{paths.run_dir}/docker.sock"
    url = environ.get("DOCKER_HOST") or default
    if not url.startswith("unix://") or url == "unix://":
        raise UsageError(f"DOCKER_HOST is {url}, but the container command only talks to the ds01 proxy on its unix "
                         f"socket ({default}). Unset DOCKER_HOST, or set it to unix://PATH of the proxy's socket.")
    return url


def create_body(image: str, command: list[str], *, workspace: str, gpus: int, mig: str | None, cpus: float | None,
                memory: int | None, shm_size: int | None, ports: tuple[int, ...] = ()) -> dict[str, Any]:
    """A create body: GPUs by count (-1: all) or by MIG label, the workspace at /workspace, limits if given."""
    host: dict[str, Any] = {"Binds": [f"{workspace}:{WORKSPACE}"], "NetworkMode": "default"}
    if gpus:
        host["DeviceRequests"] = devicerequests.by_count(gpus)
    if memory is not None:
        host["Memory"] = memory
    if shm_size is not None:
        host["ShmSize"] = shm_size
    if cpus is not None:
        host["NanoCpus"] = round(cpus * 1e9)
    if ports:  # each on a free host port of 127.0.0.1: the proxy publishes nowhere else
        host["PortBindings"] = {f"{port}/tcp": [{"HostIp": LOOPBACK, "HostPort": ""}] for port in ports}
    # Attached output, as docker-py and the docker CLI create: `docker start -a` shows it.
    exposed: dict[str, Any] = {"ExposedPorts": {f"{port}/tcp": {} for port in ports}} if ports else {}
    return {"Image": image, "Cmd": command, "WorkingDir": WORKSPACE, "AttachStdout": True, "AttachStderr": True,
            **exposed,
            "Labels": {labels.REQUEST_MIG: mig} if mig else {}, "HostConfig": host}


class _QuietSocket(socket.socket):
    """Every write with MSG_NOSIGNAL, however http.client sends (bytes, a file's blocks, an iterable's chunks)."""

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags | socket.MSG_NOSIGNAL)


class _Connection(UnixConnection):
    """A write to a socket the proxy has closed fails with EPIPE rather than raising SIGPIPE, whose default action
    (`container` keeps it, so that `| head` works) would end the command in the middle of sending a build."""

    def connect(self) -> None:
        super().connect()
        plain = self.sock
        self.sock = _QuietSocket(plain.family, plain.type, plain.proto, plain.detach())
        self.sock.settimeout(self.timeout)


@dataclass
class _Exchange:
    """An answer being read, on the connection (and its socket, which http.client forgets at a closing answer)."""

    connection: UnixConnection
    sock: socket.socket
    response: http.client.HTTPResponse

    def stream(self) -> None:
        """The head is in: what follows may take as long as the container does (a follow, a long exec)."""
        self.sock.settimeout(None)


class ProxyClient:
    """The calling user's containers, through the ds01 proxy (DOCKER_HOST or ds01's own socket). Calls may come
    from several threads: each takes an idle kept-alive connection or opens one, and gives it back when done."""

    def __init__(self, url: str, timeout_seconds: float = TIMEOUT_SECONDS) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self._path = url.removeprefix("unix://")
        self._idle: list[UnixConnection] = []  # list.pop and append are atomic: no lock needed

    @classmethod
    def of(cls, paths: Paths) -> ProxyClient:
        return cls(proxy_url(paths))

    def _send(self, method: str, path: str, *, query: Mapping[str, str | int] | None = None,
              body: dict[str, Any] | None = None, stream: Iterable[bytes] | None = None,
              headers: Mapping[str, str] | None = None, grace_seconds: float = 0) -> _Exchange:
        """Send one request (a JSON `body`, or the bytes of `stream`) and read the head of its answer, on an idle
        kept-alive connection or a new one. A connection the proxy closed while idle is dropped before it is used,
        so a request is never sent twice."""
        target = API + path + (f"?{urlencode(query)}" if query else "")
        data = stream if stream is not None else None if body is None else json.dumps(body).encode()
        sent = {"User-Agent": USER_AGENT, **({"Content-Type": "application/json"} if body is not None else {}),
                **(headers or {})}
        connection = self._connection()
        try:
            if connection.sock is None:
                connection.connect()
            sock = connection.sock
            sock.settimeout(self.timeout_seconds + grace_seconds)
            # Refused before the whole body was read (too large, say): the answer is read next, if there is one.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.request(method, target, body=data, headers=sent)
            return _Exchange(connection, sock, connection.getresponse())
        except BaseException:
            connection.close()
            raise

    def _connection(self) -> UnixConnection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed_by_peer():
                return connection
            connection.close()
        return _Connection(self._path, self.timeout_seconds)

    def _done(self, exchange: _Exchange) -> None:
        """Keep the connection for the next call, unless the answer ends it."""
        if exchange.response.will_close:
            exchange.connection.close()
        else:
            self._idle.append(exchange.connection)

    def _read(self, exchange: _Exchange) -> bytes:
        try:
            data = exchange.response.read()
        except BaseException:
            exchange.connection.close()
            raise
        self._done(exchange)
        if exchange.response.status >= 400:
            raise refusal_of(exchange.response, data)
        return data

    def _json(self, method: str, path: str, *, query: Mapping[str, str | int] | None = None,
              body: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None,
              grace_seconds: float = 0) -> Any:
        data = self._read(self._send(method, path, query=query, body=body, headers=headers,
                                     grace_seconds=grace_seconds))
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise http.client.HTTPException(f"an answer that is not JSON: {data[:200]!r}") from None

    def _call(self, name: str | None, action: Callable[[], _T], image: str | None = None,
              image_action: ImageAction | None = None) -> _T:
        try:
            return action()
        except (Refusal, OSError, http.client.HTTPException) as exc:
            raise translate(exc, self.url, name, image, image_action=image_action) from exc

    def containers(self, uid: int, everything: bool) -> list[Details]:
        """Every container of uid's, whatever made it (`container create`, docker run, compose, a dev container),
        running only unless `everything`, inspected for their GPUs."""
        def listing() -> list[Details]:
            filters = json.dumps({"label": [f"{labels.UID}={uid}"]})
            listed = self._json("GET", "/containers/json", query={"all": int(everything), "filters": filters})
            found = []
            for summary in listed:
                try:
                    found.append(details(self._json("GET", f"/containers/{quote(summary['Id'])}/json")))
                except Refusal as refused:
                    if refused.status != 404:  # 404: removed between the list and the inspect
                        raise
            return found
        return self._call(None, listing)

    def inspect(self, name: str) -> Details:
        return self._call(name, lambda: details(self._json("GET", f"/containers/{quote(name)}/json")))

    def create(self, name: str, body: dict[str, Any], *, queue_id: str | None = None, wait_seconds: float = 0) -> str:
        """Create it; with a queue id, its GPU request may wait in the queue up to `wait_seconds` for its grant."""
        headers = {QUEUE_ID_HEADER: queue_id} if queue_id else None
        created = self._call(name, lambda: self._json("POST", "/containers/create", query={"name": name}, body=body,
                                                      headers=headers, grace_seconds=wait_seconds),
                             body.get("Image"))
        return str(created["Id"])

    def queue(self, everyone: bool = False) -> dict[str, Any]:
        """The caller's waiting requests (everyone's for an admin), as GET /ds01/queue answers."""
        return dict(self._call(None, lambda: self._json("GET", "/ds01/queue", query={"all": int(everyone)})))

    def withdraw(self, queue_id: str) -> None:
        """Take a waiting request out of the queue (Ctrl-C while it waits)."""
        self._call(None, lambda: self._json("DELETE", f"/ds01/queue/{quote(queue_id)}"))

    def submit_job(self, submission: dict[str, Any]) -> dict[str, Any]:
        """Queue a batch job (POST /ds01/jobs): its record, with its place and estimated start."""
        return dict(self._call(None, lambda: self._json("POST", "/ds01/jobs", body=submission),
                               (submission.get("body") or {}).get("Image")))

    def jobs(self, everyone: bool = False, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        query: list[tuple[str, str]] = [("all", str(int(everyone))), *(("state", state) for state in states)]
        answer = self._call(None, lambda: self._json("GET", f"/ds01/jobs?{urlencode(query)}"))
        return list(answer["jobs"])

    def job(self, name: str) -> dict[str, Any]:
        return dict(self._call(None, lambda: self._json("GET", f"/ds01/jobs/{quote(name)}")))

    def cancel_job(self, name: str) -> dict[str, Any]:
        return dict(self._call(None, lambda: self._json("DELETE", f"/ds01/jobs/{quote(name)}")))

    def gpus(self, *, fleet: bool = False) -> dict[str, Any]:
        """Every slot and its state, the caller's quota and use, as GET /ds01/gpus answers; with `fleet`, where in
        the fleet slots are free for the caller."""
        return dict(self._call(None, lambda: self._json("GET", "/ds01/gpus?fleet=1" if fleet else "/ds01/gpus")))

    def dry_run(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """What the proxy would grant for this create, without creating anything."""
        def ask() -> Any:
            return self._json("POST", "/containers/create", query={"name": name}, body=body,
                              headers={DRY_RUN_HEADER: "true"})
        return dict(self._call(name, ask, body.get("Image")))

    def start(self, name: str) -> None:
        self._call(name, lambda: self._json("POST", f"/containers/{quote(name)}/start"))

    def stop(self, name: str, timeout: int) -> None:
        self._call(name, lambda: self._json("POST", f"/containers/{quote(name)}/stop", query={"t": timeout},
                                            grace_seconds=timeout))

    def remove(self, name: str, force: bool) -> None:
        self._call(name, lambda: self._json("DELETE", f"/containers/{quote(name)}", query={"force": int(force)}))

    def run(self, name: str, command: list[str], write: Callable[[int, bytes], None]) -> int:
        """Run a command in a running container, passing each (1 stdout | 2 stderr, bytes) to `write`; its exit code."""
        def go() -> int:
            made = self._json("POST", f"/containers/{quote(name)}/exec", body={
                "AttachStdin": False, "AttachStdout": True, "AttachStderr": True, "Tty": False, "Cmd": command})
            exec_id = quote(str(made["Id"]))
            exchange = self._send("POST", f"/exec/{exec_id}/start", body={"Detach": False, "Tty": False},
                                  headers={"Connection": "Upgrade", "Upgrade": "tcp"})
            if exchange.response.status >= 400:
                self._read(exchange)
            exchange.stream()
            # After the switch (101) the socket carries the stream; http.client has read the head only.
            upgraded = exchange.response.status == 101
            try:
                for stream, data in _frames(exchange.response.fp.read if upgraded else exchange.response.read):
                    write(stream, data)
            finally:
                exchange.connection.close()
            state: dict[str, Any] = {}
            for _ in range(50):  # the stream can end a moment before the engine records the exit code
                state = self._json("GET", f"/exec/{exec_id}/json")
                if not state.get("Running"):
                    break
                time.sleep(0.1)
            return int(state.get("ExitCode") or 0)
        return self._call(name, go)

    def logs(self, name: str, follow: bool, tail: int | None) -> Iterator[tuple[int, bytes]]:
        """(1 stdout | 2 stderr, bytes) frames of the container's log; with `follow`, until it stops."""
        try:
            tty = bool((self._json("GET", f"/containers/{quote(name)}/json").get("Config") or {}).get("Tty"))
            query = {"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all" if tail is None else tail}
            exchange = self._send("GET", f"/containers/{quote(name)}/logs", query=query)
            if exchange.response.status >= 400:
                self._read(exchange)
            exchange.stream()
            try:
                if tty:  # no frames: the terminal's bytes as they come
                    while data := exchange.response.read1(65536):
                        yield 1, data
                else:
                    yield from _frames(exchange.response.read)
            finally:
                exchange.connection.close()
        except (Refusal, OSError, http.client.HTTPException) as exc:
            raise translate(exc, self.url, name) from exc

    def stats(self, name: str) -> dict[str, Any]:
        """One snapshot (the engine samples twice, about a second apart, so CPU use can be computed)."""
        return dict(self._call(name, lambda: self._json("GET", f"/containers/{quote(name)}/stats",
                                                        query={"stream": 0})))

    def images(self) -> list[dict[str, Any]]:
        """The images the caller may see: their own and the shared ones (the proxy shows no one else's)."""
        return list(self._call(None, lambda: self._json("GET", "/images/json")))

    def build(self, query: Mapping[str, str | int], context: Iterable[bytes], length: int,
              image: str) -> Iterator[dict[str, Any]]:
        """POST /build of `image` with `context`, a tar stream of `length` bytes; the engine's messages as they
        come (the classic builder's JSON lines: stream, status and progress, aux, error)."""
        try:
            exchange = self._send("POST", "/build", query=query, stream=context, grace_seconds=SLOW_ANSWER_SECONDS,
                                  headers={"Content-Type": "application/x-tar", "Content-Length": str(length)})
            if exchange.response.status >= 400:
                self._read(exchange)
            exchange.stream()  # a step may run for hours without a word
            try:
                while line := exchange.response.readline():
                    if line.strip():
                        yield _message(line)
            finally:
                exchange.connection.close()
        except (Refusal, OSError, http.client.HTTPException) as exc:
            raise translate(exc, self.url, None, image, image_action="build") from exc

    def remove_image(self, image: str, force: bool) -> list[dict[str, Any]]:
        """DELETE one of the caller's images by name; the engine's list of what it untagged and deleted. A refusal
        names a container that uses the image by its id: by its name instead when the caller may see it (their
        own: NAME._.UID, which `translate` shows as NAME)."""
        def remove() -> Any:
            try:
                return self._json("DELETE", f"/images/{quote(image, safe='/:@')}", query={"force": int(force)})
            except Refusal as refused:
                if refused.status != 409 or (found := _CONTAINER_ID.search(refused.message)) is None:
                    raise
                try:
                    name = str(self._json("GET", f"/containers/{found[1]}/json").get("Name") or "").lstrip("/")
                except Refusal:
                    raise refused from None
                raise Refusal(409, refused.reason, refused.message.replace(found[1], name or found[1])) from None
        return list(self._call(None, remove, image, image_action="remove"))

    def commit(self, name: str, repository: str, tag: str) -> str:
        """Save the container `name` (an engine name) as the image repository:tag; the new image's id."""
        made = self._call(name, lambda: self._json("POST", "/commit", query={
            "container": name, "repo": repository, "tag": tag}, grace_seconds=SLOW_ANSWER_SECONDS))
        return str(made["Id"])

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _message(line: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        if isinstance(message := json.loads(line), dict):
            return message
    raise http.client.HTTPException(f"a build message that is not a JSON object: {line[:200]!r}")


def _frames(read: Callable[[int], bytes]) -> Iterator[tuple[int, bytes]]:
    """(1 stdout | 2 stderr, bytes) from a multiplexed stream, until it ends."""
    while len(head := read(FRAME.size)) == FRAME.size:
        stream, length = FRAME.unpack(head)
        yield (2 if stream == 2 else 1), read(length) if length else b""
