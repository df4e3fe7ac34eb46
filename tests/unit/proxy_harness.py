"""The harness of the proxy's unit tests: a real `Proxy.serve` over socketpairs, with a stub gate or a real one;
a small fake engine that records every byte it receives; and for the real gate, an in-memory engine for its own
calls, pins without mounts and fixed accounts. No engine, no test bed."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from ds01.config import BUILTIN_DEFAULTS, Config, ProxySettings
from ds01.identity.accounts import UnknownUser
from ds01.proxy.binds import OpenedSource
from ds01.proxy.gate import Gate
from ds01.proxy.outcomes import Forward, Outcome, Request
from ds01.proxy.runas import Caller
from ds01.proxy.server import Proxy
from ds01.proxy.session import Session

REPO = Path(__file__).resolve().parents[2]
Answer = bytes | Callable[[socket.socket], None]


class FakeEngine:
    """The engine's end of each link the proxy opens: parses requests with h11, records the raw bytes, and sends
    the next canned answer (bytes, or a function that writes to the socket itself)."""

    url = "unix:///fake-engine.sock"

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.raw = bytearray()
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.links = 0

    def connect(self) -> socket.socket:
        proxy_end, engine_end = socket.socketpair()
        self.links += 1
        threading.Thread(target=self._serve, args=(engine_end,), daemon=True).start()
        return proxy_end

    def _serve(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        with sock:
            while self.answers:
                request, body = None, bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = sock.recv(65536)
                        if not data:
                            return
                        self.raw += data
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                self.requests.append((request, bytes(body)))
                answer = self.answers.pop(0)
                if callable(answer):
                    answer(sock)
                    return
                sock.sendall(answer)
                if conn.our_state is h11.DONE or b"Connection: close" in answer:
                    return
                conn = h11.Connection(h11.SERVER)  # the canned bytes were not written through h11


def caller_named(user: str) -> Caller:
    return Caller(uid=os.getuid(), user=user, home="", is_admin=False, limits=BUILTIN_DEFAULTS, gid=os.getgid(),
                  gids=frozenset(), login=user)


class StubSessions:
    def __init__(self, users: list[str]) -> None:
        self.users = users

    def for_uid(self, _uid: int) -> Session:
        user = self.users.pop(0) if len(self.users) > 1 else self.users[0]
        return Session(caller=caller_named(user), login=user)


@dataclass
class StubGate:
    """Decides as told, and records the requests it saw (and the bodies it read)."""

    decide_with: Callable[[Request], Outcome] = lambda request: Forward(request.target)
    sessions: StubSessions = field(default_factory=lambda: StubSessions(["alice"]))
    seen: list[Request] = field(default_factory=list)

    def decide(self, request: Request) -> Outcome:
        self.seen.append(request)
        return self.decide_with(request)

    def error_answer(self, _request: Request, status: int, data: bytes) -> bytes:
        return b'{"message": "filtered"}' if status == 409 else data


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _started(gate: StubGate | Gate, engine: FakeEngine,
             settings: ProxySettings | None) -> tuple[socket.socket, threading.Thread]:
    proxy = Proxy(gate, engine, settings=lambda: settings or ProxySettings())  # type: ignore[arg-type]
    client, served = socket.socketpair()

    def serve() -> None:
        with served:
            proxy.serve(served)

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    client.settimeout(10)
    return client, serving


def start(gate: StubGate | Gate, engine: FakeEngine, settings: ProxySettings | None = None) -> socket.socket:
    """A client socket on a proxy connection served in a thread."""
    return _started(gate, engine, settings)[0]


def read_all(sock: socket.socket) -> bytes:
    """Everything until the proxy closes; a reset after its answer (it closed with bytes of ours unread) ends it."""
    data = b""
    try:
        while block := sock.recv(65536):
            data += block
    except ConnectionResetError:
        pass
    return data


def send_all(sock: socket.socket, data: bytes, piece: int | None = None) -> None:
    """`data` as one write or in pieces; stops where the proxy has closed (after refusing)."""
    try:
        for offset in range(0, len(data), piece or len(data)):
            sock.sendall(data[offset:offset + (piece or len(data))])
            if piece and piece < 200:
                time.sleep(0.002)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass


def exchange(data: bytes, gate: StubGate | Gate | None = None, engine: FakeEngine | None = None,
             settings: ProxySettings | None = None) -> bytes:
    """What the proxy answers to `data`, once it is done with the connection (what it does on the way out, such
    as releasing a lock, done too)."""
    client, serving = _started(gate or StubGate(), engine or FakeEngine(OK), settings)
    with client:
        send_all(client, data)
        answered = read_all(client)
    serving.join(10)
    assert not serving.is_alive(), "the proxy still serves the connection"
    return answered


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in `raw`, parsed by h11 as a client would."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    while conn.trailing_data[0]:
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return out
        out.append((status, headers, body))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out
        conn.start_next_cycle()
    return out


def message(answer: tuple[int, dict[str, str], bytes]) -> str:
    return str(json.loads(answer[2])["message"])


SMUGGLED = (b"POST /v1.41/containers/create?name=smuggled HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 45\r\n\r\n" + json.dumps({"Image": "x", "HostConfig": {"Privileged": True}}).encode())


# --- what the real gate is given in place of the engine, the pins and the accounts ------------------------------


class FakeUpstream:
    """The engine as the gate's own calls see it (`interfaces.EngineCalls`), answered from its objects in dicts.
    Every call is recorded (inspects apart: they change nothing)."""

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}  # by id
        self.execs: dict[str, dict[str, Any]] = {}  # by id
        self.images: dict[str, dict[str, Any]] = {}  # by reference
        self.volumes: dict[str, dict[str, Any]] = {}  # by name
        self.networks: dict[str, dict[str, Any]] = {}  # by name
        self.calls: list[tuple[str, str]] = []
        # (method, path) -> what the engine answers instead, or the error its call meets
        self.answers: dict[tuple[str, str], tuple[int, Any] | Exception] = {}
        self.broken: Exception | None = None  # raised by every call and inspect

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        if self.broken is not None:
            raise self.broken
        if kind == "container":
            return next((found for found in self.containers.values()
                         if name in (found["Id"], found["Name"], found["Name"].lstrip("/"))), None)
        by_name = {"exec": self.execs, "image": self.images, "volume": self.volumes, "network": self.networks}[kind]
        return by_name.get(name)

    def call(self, method: str, path: str, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.calls.append((method, path))
        if self.broken is not None:
            raise self.broken
        answer = self.answers.get((method, path))
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        if (method, path) == ("GET", "/containers/json"):
            wanted = [label.partition("=") for label in json.loads((query or {}).get("filters") or "{}")["label"]]
            return 200, [found for found in self.containers.values()
                         if all(found["Config"]["Labels"].get(key) == value for key, _, value in wanted)]
        if (method, path) == ("POST", "/networks/create") and body is not None:
            made = {"Name": body["Name"], "Id": f"net-{len(self.networks)}", "Driver": body.get("Driver"),
                    "Labels": body.get("Labels") or {}, "Containers": {}}
            self.networks[body["Name"]] = made
            return 201, {"Id": made["Id"], "Warning": ""}
        if (method, path) == ("GET", "/images/json"):
            return 200, [{"Id": found.get("Id", name), "RepoTags": found.get("RepoTags", [name]),
                          "RepoDigests": found.get("RepoDigests", [])} for name, found in self.images.items()]
        if (method, path) == ("GET", "/networks"):
            return 200, list(self.networks.values())
        if (method, path) == ("POST", "/volumes/create") and body is not None:
            return 201, self.volumes.setdefault(body["Name"], {"Name": body["Name"], "Labels": body.get("Labels"),
                                                              "Mountpoint": ""})
        collection, _, rest = path.strip("/").partition("/")
        container_id, _, action = rest.partition("/")
        if collection == "containers" and container_id in self.containers:
            if method == "DELETE":
                del self.containers[container_id]
                return 204, None
            if (method, action) == ("POST", "stop"):
                self.containers[container_id]["State"]["Status"] = "exited"
                return 204, None
        return 404, {"message": f"the fake engine has no answer to {method} {path}"}


def container(name: str, owner: Caller | None, *, host_config: dict[str, Any] | None = None,
              mounts: Iterable[dict[str, Any]] = (), container_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An inspect record as the engine gives it, for a container ds01 made for `owner` (None: made by no one),
    under the owner's cgroup parent as the proxy sets it."""
    owned = {"ds01.user": owner.user, "ds01.uid": str(owner.uid)} if owner is not None else {}
    if owner is not None:
        host_config = {"CgroupParent": f"/ds01/{owner.user}", **(host_config or {})}
    return {"Id": name.encode().hex().ljust(64, "0")[:64], "Name": f"/{name}",
            "Config": {"Labels": {**owned, **(container_labels or {})},
                       "User": f"{owner.uid}:{owner.gid}" if owner is not None else ""},
            "HostConfig": host_config or {}, "Mounts": list(mounts), "State": {"Status": "created"},
            "ExecIDs": None, "GraphDriver": {"Name": "overlay2", "Data": {}}}


class FakePins:
    """`interfaces.Pinning` without mounts: the (device, inode) pinned at each (key, index)."""

    def __init__(self) -> None:
        self.pins: dict[tuple[str, int], tuple[int, int]] = {}

    def pin(self, key: str, index: int, source: OpenedSource) -> Path:
        self.pins[(key, index)] = (source.device, source.inode)
        return Path("/pins", key, str(index))

    def pinned(self, key: str, index: int) -> tuple[int, int] | None:
        return self.pins.get((key, index))

    def release(self, key: str) -> None:
        self.pins = {at: pinned for at, pinned in self.pins.items() if at[0] != key}


class FakeSessions:
    """`interfaces.Callers`: one config and fixed accounts; a uid with none is refused as `Sessions` refuses it."""

    def __init__(self, config: Config, callers: Iterable[Caller]) -> None:
        self.config = config
        self.by_uid = {caller.uid: Session(caller=caller, login=caller.login) for caller in callers}

    def current_config(self) -> Config:
        return self.config

    def for_uid(self, uid: int) -> Session:
        if uid not in self.by_uid:
            raise UnknownUser(f"uid {uid} is no user on this host")
        return self.by_uid[uid]
