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


def _instance_lock(run_dir: Path, service: str) -> filelock.FileLock:
    run_dir.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(run_dir / f"{service}.lock")


@contextmanager
def only_instance(run_dir: Path, service: str) -> Iterator[None]:
    """Hold run_dir/SERVICE.lock for the block; a second instance gets a clear error instead."""
    lock = _instance_lock(run_dir, service)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise Ds01Error(f"another ds01 {service} is already running (it holds {lock.lock_file}); stop it first "
                        f"(systemctl stop ds01-{service}).") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def while_stopped(run_dir: Path, service: str) -> Iterator[bool]:
    """Hold run_dir/SERVICE.lock for the block when no instance holds it: True then, False while one runs.
    Keep the block short: a service that starts meanwhile finds the lock held and says it is already running."""
    lock = _instance_lock(run_dir, service)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
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
