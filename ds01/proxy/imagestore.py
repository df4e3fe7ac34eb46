"""Who owns which image: the proxy's own record, written atomically in the state directory.

An image's labels never count (anyone can bake `ds01.user` into an image and push it). An image is a user's when
the proxy made it for them (a build, a commit) and wrote so here; any other image is shared (pulled, or made by
an admin past the proxy). Each build or commit is recorded as pending before it is forwarded and settled once
the engine has answered; one still pending at start-up (the proxy was killed meanwhile) is settled then: a tag it
asked for that now exists names an image of the builder's, since only they may tag in their namespace.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ds01.errors import Ds01Error
from ds01.statefile import write_json_atomic

STATE_FILE = "images.json"
_FORMAT = 1
_CHAIN_LIMIT = 1000  # parents followed from one image: far beyond any Dockerfile's steps


@dataclass(frozen=True)
class OwnedImage:
    user: str
    uid: int
    made_by: str  # "build", "commit" or "load"
    at: str  # when it was recorded (ISO 8601)


@dataclass(frozen=True)
class PendingImage:
    user: str
    uid: int
    made_by: str
    tags: tuple[str, ...]  # what the build or commit names its result
    at: str


@dataclass(frozen=True)
class OwnImage:
    names: tuple[str, ...]  # its tags ("untagged ID" for one without)
    size: int  # of its own layers: its chain of the user's images, down to a shared or foreign base


def own_image_sizes(owned: Iterable[str], inspect: Callable[[str], dict[str, Any] | None]) -> list[OwnImage]:
    """The user's `owned` images (ids) with the size of their own layers, largest first: each tagged image with
    the owned chain below it, then each untagged image no other stands on (what a retag or a failed step left:
    as much theirs, and as usable by its id). Each owned image adds what it has beyond its parent, once, to the
    first of these that stands on it; layers of a shared base or of another owner's image are not the user's.
    `inspect`: the engine's image inspect."""
    owned = set(owned)
    sizes: dict[str, int] = {}
    parents: dict[str, str] = {}
    tags: dict[str, tuple[str, ...]] = {}
    for image in owned:
        info = inspect(image)
        if info is None:
            continue
        parent = str(info.get("Parent") or "")
        below = inspect(parent) if parent else None
        sizes[image] = int(info.get("Size") or 0) - (int(below.get("Size") or 0) if below else 0)
        parents[image] = parent
        tags[image] = tuple(tag for tag in info.get("RepoTags") or () if tag != "<none>:<none>")
    stood_on = set(parents.values())

    def depth(image: str) -> int:  # owned images below it
        count, at = 0, parents[image]
        while at in sizes and count < _CHAIN_LIMIT:
            count, at = count + 1, parents[at]
        return count

    # A tagged base claims its own layers before the tagged images built on it claim theirs.
    tops = sorted((image for image in sizes if tags[image]), key=lambda image: (depth(image), tags[image]))
    tops += sorted(image for image in sizes if not tags[image] and image not in stood_on)
    claimed: set[str] = set()
    found = []
    for top in tops:
        chain: list[str] = []
        at = top
        while at in sizes and at not in claimed and len(chain) < _CHAIN_LIMIT:
            chain.append(at)
            claimed.add(at)
            at = parents[at]
        if chain:
            names = tags[top] or (f"untagged {top.removeprefix('sha256:')[:12]}",)
            found.append(OwnImage(names, sum(sizes[link] for link in chain)))
    return sorted(found, key=lambda own: (-own.size, own.names))


class ImageStore:
    """The records, one writer at a time; every change is on disk before the method returns."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / STATE_FILE
        self._lock = threading.Lock()
        self._owned: dict[str, OwnedImage] = {}
        self._pending: dict[str, PendingImage] = {}
        self._load()

    def _load(self) -> None:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise Ds01Error(f"cannot read the image ownership record {self._path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, not {_FORMAT}")
            self._owned = {str(image): OwnedImage(**entry) for image, entry in data["owned"].items()}
            self._pending = {str(key): PendingImage(**{**entry, "tags": tuple(entry["tags"])})
                             for key, entry in data["pending"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Ds01Error(f"the image ownership record {self._path} is damaged ({exc}); without it no image can "
                            "be told to be a user's. Restore it from a backup, or move it away to start with every "
                            "image shared") from exc

    def _save(self) -> None:
        write_json_atomic(self._path, {
            "format": _FORMAT,
            "owned": {image: asdict(owned) for image, owned in self._owned.items()},
            "pending": {key: {**asdict(pending), "tags": list(pending.tags)} for key, pending in self._pending.items()},
        })

    def owner(self, image_id: str) -> OwnedImage | None:
        with self._lock:
            return self._owned.get(image_id)

    def pending_owner(self, tags: Iterable[str]) -> str | None:
        """Whose build or commit, not settled yet, names one of `tags`: its image is theirs already, from the last
        byte of the build's answer until the settle a moment later."""
        named = set(tags)
        with self._lock:
            return next((p.user for p in self._pending.values() if named & set(p.tags)), None)

    def owned_by(self, user: str) -> dict[str, OwnedImage]:
        with self._lock:
            return {image: owned for image, owned in self._owned.items() if owned.user == user}

    def owners(self) -> list[OwnedImage]:
        with self._lock:
            return list(self._owned.values())

    def begin(self, pending: PendingImage) -> str:
        """Record a build or commit about to be forwarded; the key settles it."""
        key = uuid.uuid4().hex
        with self._lock:
            self._pending[key] = pending
            self._save()
        return key

    def settle(self, key: str, image_ids: Iterable[str]) -> None:
        """The build or commit is over: the images it made (none when it failed) are its user's."""
        with self._lock:
            pending = self._pending.pop(key, None)
            if pending is None:
                return
            for image in image_ids:
                self._owned[image] = OwnedImage(pending.user, pending.uid, pending.made_by, pending.at)
            self._save()

    def settle_interrupted(self, resolve: Callable[[PendingImage], Iterable[str]]
                           ) -> list[tuple[PendingImage, list[str]]]:
        """At start-up: each build or commit left pending, settled with what its tags name now (`resolve`: the
        images that makes the builder's, none when no tag of it exists)."""
        with self._lock:
            pending = dict(self._pending)
        settled = []
        for key, interrupted in pending.items():
            found = list(resolve(interrupted))
            self.settle(key, found)
            settled.append((interrupted, found))
        return settled

    def forget_missing(self, existing: Iterable[str]) -> list[str]:
        """Drop the records of images the engine no longer has (removed, pruned); the ids dropped."""
        present = set(existing)
        with self._lock:
            gone = [image for image in self._owned if image not in present]
            for image in gone:
                del self._owned[image]
            if gone:
                self._save()
        return gone

    def forget(self, image_ids: Iterable[str]) -> None:
        with self._lock:
            dropped = [image for image in image_ids if self._owned.pop(image, None) is not None]
            if dropped:
                self._save()
