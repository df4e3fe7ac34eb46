"""ds01.jobs.enginetext: a job's multiplexed log as plain bytes however the blocks cut the frames, and the
engine's times as epoch seconds."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from ds01.jobs.enginetext import payloads, timestamp


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=40)), max_size=12), st.data())
def test_frames_come_out_whole_however_the_stream_is_cut(frames: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(frame(kind, chunk) for kind, chunk in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    blocks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(payloads(blocks)) == b"".join(chunk for _, chunk in frames)


def test_engine_times() -> None:
    assert timestamp("0001-01-01T00:00:00Z") is None and timestamp(None) is None and timestamp("soon") is None
    expected = datetime(2026, 12, 1, 21, 36, 1, 123456, tzinfo=UTC).timestamp()
    assert timestamp("2026-12-01T21:36:01.123456789Z") == expected
    assert timestamp("2026-12-01T21:36:01Z") == datetime(2026, 12, 1, 21, 36, 1, tzinfo=UTC).timestamp()
