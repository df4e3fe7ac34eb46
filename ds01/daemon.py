"""What ds01's long-running services share: one instance per run dir, and a stop on SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import filelock

from ds01.errors import Ds01Error


@contextmanager
def only_instance(run_dir: Path, service: str) -> Iterator[None]:
    """Hold run_dir/SERVICE.lock for the block; a second instance gets a clear error instead."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(run_dir / f"{service}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise Ds01Error(f"another ds01 {service} is already running (it holds {lock.lock_file}); stop it first "
                        f"(systemctl stop ds01-{service}).") from None
    try:
        yield
    finally:
        lock.release()


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
