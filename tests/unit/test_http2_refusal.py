"""HTTP/2 on the proxy's socket, as BuildKit speaks it: refused with how to build through ds01 instead, and nothing
reaches the gate or the engine. A client that sent HTTP/2's connection preface reads the refusal as HTTP/2 (a
GOAWAY whose debug data says it); one that asked to upgrade to h2c reads an HTTP/1.1 answer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ds01.proxy.builds import BUILDKIT_MESSAGE
from ds01.reasons import Reason
from tests.unit.proxy_harness import OK, SMUGGLED, FakeEngine, StubGate, exchange, message, responses

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLIENT_SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"  # MAX_CONCURRENT_STREAMS 100
H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
SETTINGS, GOAWAY, HTTP_1_1_REQUIRED = 0x4, 0x7, 0xD

pytestmark = pytest.mark.usefixtures("event_log")


def frames(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    """The HTTP/2 frames in `raw`: (type, flags, stream, payload) each; every byte must belong to one."""
    found = []
    while raw:
        assert len(raw) >= 9, f"a partial frame header: {raw!r}"
        length, (kind, flags, stream) = int.from_bytes(raw[:3], "big"), struct.unpack("!BBI", raw[3:9])
        assert len(raw) >= 9 + length, f"a frame cut short: {raw!r}"
        found.append((kind, flags, stream, raw[9:9 + length]))
        raw = raw[9 + length:]
    return found


def the_denial(event_log: Path) -> dict[str, str]:
    [denial] = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert denial["type"] == "proxy.deny" and denial["details"]["reason"] == Reason.BUILDKIT
    return dict(denial["details"])


@pytest.mark.parametrize("after", [b"", CLIENT_SETTINGS, CLIENT_SETTINGS + SMUGGLED],
                         ids=["preface", "preface-then-settings", "preface-then-a-request"])
def test_the_http2_preface_is_answered_with_a_goaway_that_says_how_to_build(after: bytes, event_log: Path) -> None:
    gate, engine = StubGate(), FakeEngine(OK)
    raw = exchange(PREFACE + after, gate=gate, engine=engine)
    [(first, _, _, settings), (kind, _, stream, payload)] = frames(raw)
    assert (first, settings) == (SETTINGS, b"")  # the server's preface, which an HTTP/2 client reads first
    last_stream, code = struct.unpack("!II", payload[:8])
    said = payload[8:].decode()
    assert (kind, stream, last_stream, code) == (GOAWAY, 0, 0, HTTP_1_1_REQUIRED)
    assert said.startswith("ds01: ") and "HTTP/2" in said and said.endswith(BUILDKIT_MESSAGE)
    assert "DOCKER_BUILDKIT=0 docker build" in said and "container image build" in said
    assert engine.links == 0 and not engine.raw and gate.seen == []
    assert the_denial(event_log)["message"] == said.removeprefix("ds01: ")


@pytest.mark.parametrize("data", [
    b"POST /v1.41/session HTTP/1.1\r\nHost: d\r\n" + H2C + b"\r\n",
    b"POST /grpc HTTP/1.1\r\nHost: d\r\n" + H2C + b"\r\n" + SMUGGLED,
    b"POST /v1.41/build?t=alice/x HTTP/1.1\r\nHost: d\r\nContent-Length: 3\r\n" + H2C + b"\r\nabc",
], ids=["session", "grpc", "build"])
def test_an_upgrade_to_h2c_is_refused_with_how_to_build(data: bytes, event_log: Path) -> None:
    gate, engine = StubGate(), FakeEngine(OK)
    [answer] = responses(exchange(data, gate=gate, engine=engine))
    assert answer[0] == 400 and answer[1]["x-ds01-reason"] == Reason.BUILDKIT
    said = message(answer)
    assert "Upgrade: h2c" in said and said.endswith(BUILDKIT_MESSAGE)
    assert "DOCKER_BUILDKIT=0 docker build" in said and "container image build" in said
    assert engine.links == 0 and not engine.raw and gate.seen == []
    assert the_denial(event_log)["message"] == said.removeprefix("ds01: ")


@pytest.mark.parametrize("upgrade", [b"websocket", b"h2"])
def test_other_upgrades_are_still_a_framing_error(upgrade: bytes) -> None:
    engine = FakeEngine(OK)
    [answer] = responses(exchange(b"POST /v1.41/containers/x/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                                  b"Upgrade: " + upgrade + b"\r\n\r\n", engine=engine))
    assert answer[0] == 400 and answer[1]["x-ds01-reason"] == Reason.BAD_REQUEST
    assert "Upgrade: tcp" in message(answer) and BUILDKIT_MESSAGE not in message(answer)
    assert engine.links == 0


def test_http_1_0_is_still_served() -> None:
    engine = FakeEngine(OK)
    [answer] = responses(exchange(b"GET /v1.41/version HTTP/1.0\r\n\r\n", engine=engine))
    assert answer[0] == 200 and len(engine.requests) == 1
