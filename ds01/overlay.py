"""The only reader of a container's overlay2 layers on disk: what a path in its filesystem is, without mounting it.

The engine's own path stat mounts a container's binds and volumes to answer, making missing mount points as root
on the way. Reading the layers directly, upper first, touches nothing: a whiteout hides what lies below it, and an
opaque directory hides the lower layers' entries inside it, as the kernel's overlayfs does.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ds01.errors import Ds01Error

OPAQUE = "trusted.overlay.opaque"


@dataclass(frozen=True)
class Layers:
    dirs: tuple[Path, ...]  # the upper (the container's own writes) first, then the image's layers, top down


@dataclass(frozen=True)
class Symlink:
    path: str  # inside the container
    target: str


def layers_of(inspected: dict[str, Any]) -> Layers | None:
    """The layers of an inspected container, or None when its storage driver is not overlay2."""
    driver = inspected.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    if driver.get("Name") != "overlay2" or not data.get("UpperDir"):
        return None
    lower = [Path(part) for part in str(data.get("LowerDir") or "").split(":") if part]
    return Layers((Path(data["UpperDir"]), *lower))


def _opaque(directory: Path) -> bool:
    try:
        return os.getxattr(directory, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def first_symlink(layers: Layers, path: str) -> Symlink | None:
    """The first component of `path` (itself included) that is a symlink in the merged view, or None."""
    parts = PurePosixPath("/", path).parts[1:]
    active = list(layers.dirs)
    for depth in range(1, len(parts) + 1):
        relative = "/".join(parts[:depth])
        below: list[Path] = []
        for layer in active:
            try:
                info = os.lstat(layer / relative)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode) and not below:
                return Symlink("/" + relative, os.readlink(layer / relative))
            if not stat.S_ISDIR(info.st_mode):
                break  # a file, a whiteout (0/0 device) or a symlink shadowed above: nothing lower shows through
            below.append(layer)
            if _opaque(layer / relative):
                break
        if not below:
            return None  # missing, or not a directory: the runtime makes or refuses it without following anything
        active = below
    return None


def resolve(layers: Layers, path: str, hops: int = 40) -> str:
    """Where `path` leads in the merged view once every symlink on it is followed, as the runtime resolves paths
    inside a container's root (an absolute target starts again at the container's /)."""
    current = posixpath.normpath(posixpath.join("/", path))
    for _ in range(hops):
        link = first_symlink(layers, current)
        if link is None:
            return current
        rest = current[len(link.path):].lstrip("/")
        base = link.target if link.target.startswith("/") else posixpath.join(posixpath.dirname(link.path),
                                                                             link.target)
        current = posixpath.normpath(posixpath.join("/", base, rest))
    raise OverlayError(f"{path} goes through more than {hops} symlinks")


class OverlayError(Ds01Error):
    """A path in a container's layers that cannot be followed."""
