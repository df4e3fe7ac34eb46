"""What the gate needs of the world outside it, as protocols: the engine's answers to the proxy's own calls, the
callers' sessions, and the pins of bind sources. `Upstream`, `Sessions` and `binds.Pins` are the real ones; a
unit test passes its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ds01.config import Config
from ds01.proxy.binds import OpenedSource
from ds01.proxy.session import Session


class EngineCalls(Protocol):
    def call(self, method: str, path: str, query: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One JSON request: (status, decoded body or None)."""

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        """A container, exec, image, volume or network as the engine shows it; None when it does not exist."""

    def stream(self, path: str, query: dict[str, str]) -> Iterator[bytes]:
        """A GET's answer body block by block (a container's logs)."""


class Callers(Protocol):
    def current_config(self) -> Config:
        """The config now (reloaded when its file changed)."""

    def for_uid(self, uid: int) -> Session:
        """Who the kernel's uid is, and what applies to them; a `Ds01Error` for a uid that names no account."""


class Pinning(Protocol):
    def pin(self, key: str, index: int, source: OpenedSource) -> Path:
        """Mount an opened bind source on its staging path, which is returned."""

    def pinned(self, key: str, index: int) -> tuple[int, int] | None:
        """(device, inode) of what is pinned there, or None for nothing."""

    def release(self, key: str) -> None:
        """Unmount one container's pins; nothing for a key with none."""
