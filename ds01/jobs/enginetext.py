"""What the engine says of a job's container, read: its multiplexed log stream as plain bytes, and its
timestamps (RFC 3339 with nanoseconds; the zero time for never) as epoch seconds."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

_FRAME = struct.Struct(">BxxxL")  # a multiplexed stream's frame head: stream, length


def payloads(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of a multiplexed log stream (stdout and stderr as they came), frame heads left out."""
    pending = bytearray()
    for block in blocks:
        pending += block
        offset = 0
        while len(pending) - offset >= _FRAME.size:
            _, length = _FRAME.unpack_from(pending, offset)
            if len(pending) - offset < _FRAME.size + length:
                break
            yield bytes(pending[offset + _FRAME.size:offset + _FRAME.size + length])
            offset += _FRAME.size + length
        del pending[:offset]


def timestamp(text: Any) -> float | None:
    """Epoch seconds of an engine time, to the microsecond; None for the zero time (never) or no time."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None


