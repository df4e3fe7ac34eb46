"""16 processes emit 1,000 events each while the log rotates under them: every event lands exactly once, whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ds01 import eventlog

WRITERS = 16
EVENTS_EACH = 1000

WRITER = """
import os, sys, time
from pathlib import Path
from ds01 import eventlog
writer = int(sys.argv[1])
start = Path(sys.argv[2])
while not start.exists():  # all writers begin together
    time.sleep(0.001)
for seq in range(int(sys.argv[3])):
    eventlog.emit("test.concurrency", source="test", user=f"w{writer}", writer=writer, seq=seq, pad="x" * (seq % 50))
sys.exit(1 if eventlog.write_failures() else 0)
"""


def test_concurrent_writers_lose_and_tear_nothing_across_rotations(tmp_path: Path) -> None:
    config = tmp_path / "resource-limits.yaml"
    config.write_text("version: 1\nevents:\n  max_size: 64k\n  max_age: 1d\n  keep: 10000\n")
    log_dir = tmp_path / "log"
    start = tmp_path / "start"
    env = {**os.environ, "DS01_LOG_DIR": str(log_dir), "DS01_CONFIG": str(config)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(n), str(start), str(EVENTS_EACH)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(WRITERS)]
    time.sleep(0.5)  # let the interpreters start, so the writers overlap
    start.touch()
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err

    rotated = eventlog.rotated_files(log_dir)
    # How many rotations happen depends on the machine's load (a writer that finds another rotating writes on to
    # the old file): several are enough to have rotated under concurrent writers.
    assert len(rotated) >= 3, f"only {len(rotated)} rotations: the test did not exercise rotation"
    seen: Counter[tuple[int, int]] = Counter()
    lines = 0
    for path in [*rotated, log_dir / eventlog.LOG_NAME]:
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path.name} ends in a torn line"
        for line in data.splitlines():
            lines += 1
            record = json.loads(line)  # a torn or interleaved line fails here
            assert record["type"] == "test.concurrency"
            seen[(record["details"]["writer"], record["details"]["seq"])] += 1
    assert lines == WRITERS * EVENTS_EACH
    assert set(seen) == {(w, s) for w in range(WRITERS) for s in range(EVENTS_EACH)}
    assert max(seen.values()) == 1

    # The reader sees the same, in each writer's order.
    log = eventlog.EventLog(log_dir)
    by_writer: dict[int, list[int]] = {}
    for event in log.events():
        by_writer.setdefault(event.details["writer"], []).append(event.details["seq"])
    assert log.unparsable == 0
    assert all(seqs == list(range(EVENTS_EACH)) for seqs in by_writer.values())
    assert len(by_writer) == WRITERS
