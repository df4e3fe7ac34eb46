"""One lock per user, for what must happen one at a time per user (count, reserve and create; count and create an
exec), handed from the gate to the server as a `Held` that is released once, whatever happens to the request."""

from __future__ import annotations

import threading
from types import TracebackType


class Held:
    """A user's lock, taken. Whoever has this object releases it; a second release does nothing, so every way out
    of a request (the engine's answer, an error, a client gone) may release it."""

    def __init__(self, lock: threading.Lock, user: str) -> None:
        self._lock = lock
        self.user = user
        self._released = False
        self._guard = threading.Lock()

    def release(self) -> None:
        with self._guard:
            if self._released:
                return
            self._released = True
        self._lock.release()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


class UserLocks:
    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_of(self, user: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(user, threading.Lock())

    def hold(self, user: str) -> Held:
        """The user's lock, once no one else holds it."""
        lock = self._lock_of(user)
        lock.acquire()
        return Held(lock, user)

    def locked(self, user: str) -> bool:
        """Whether someone holds the user's lock now."""
        return self._lock_of(user).locked()
