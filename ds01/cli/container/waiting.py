"""`container create --wait`: while the create waits in the proxy's queue, one status line (on a terminal) or a
plain line at each change (off one) says where the request is, what it waits for and when it starts at the
latest; Ctrl-C takes it out of the queue before the command ends."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from ds01.cli.container.client import ProxyClient
from ds01.errors import Ds01Error

POLL_SECONDS = 1.0


def new_queue_id() -> str:
    return f"q-{uuid.uuid4().hex[:16]}"


def status_text(entry: dict[str, Any] | None, length: int, waited: float) -> str:
    """One line: position, what it waits for, the estimated start."""
    if entry is None:
        return "asking for GPUs..."
    why = str(entry.get("waits_for") or "").split(":", 1)[0].split(". ", 1)[0].rstrip(".")
    start = (entry.get("start") or {}).get("text") or "unknown"
    return (f"waiting {_duration(waited)}: number {entry.get('position') or '?'} of {length} in the queue"
            f"{f' ({why})' if why else ''}; starts {start}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StatusLine:
    """Follows one queue id from a thread of its own, on a connection of its own, and shows its state."""

    def __init__(self, proxy: ProxyClient, queue_id: str, out: TextIO = sys.stderr) -> None:
        self._proxy = proxy
        self._queue_id = queue_id
        self._out = out
        self._terminal = out.isatty()
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._shown = ""
        self.problem: str | None = None  # why the line could not be kept up to date

    def _follow(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                answer = self._proxy.queue()
            except Ds01Error as exc:
                self.problem = str(exc)  # the create's own answer says what matters; the line just stops
                return
            entry = next((e for e in answer.get("waiting") or [] if e.get("id") == self._queue_id), None)
            self._show(status_text(entry, int(answer.get("length") or 0), time.monotonic() - self._began))

    def _show(self, text: str) -> None:
        if self._terminal:
            self._out.write(f"\r\033[K{text}")
            self._out.flush()
        elif text.split(":", 1)[-1] != self._shown.split(":", 1)[-1]:  # a new place, not just a longer wait
            self._out.write(text + "\n")
            self._out.flush()
        self._shown = text

    def end(self) -> None:
        self._stop.set()
        if self._terminal and self._shown:
            self._out.write("\r\033[K")
            self._out.flush()

    @contextlib.contextmanager
    def running(self) -> Iterator[StatusLine]:
        thread = threading.Thread(target=self._follow, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.end()
            thread.join(POLL_SECONDS * 2)


@contextlib.contextmanager
def withdrawn_on_interrupt(proxy: ProxyClient, queue_id: str, out: TextIO = sys.stderr) -> Iterator[None]:
    """Ctrl-C while the create waits: the request is withdrawn from the queue first, on a connection of its own,
    and only then does the interrupt close the create's (so the proxy records a withdrawal, not a lost client)."""
    def interrupted(_signal: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(Ds01Error):  # not waiting (any more): granted, or gone with the connection
            proxy.withdraw(queue_id)
        out.write("\nwithdrawn from the queue; nothing was created\n")
        out.flush()
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
