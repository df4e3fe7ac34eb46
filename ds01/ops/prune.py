"""Dangling images and build cache: what `ds01 cleanup` removes once they are older than images.prune_after.

The engine's own prune endpoints remove them, each atomic on the engine's side. POST /images/prune with the
filters dangling=true and until (made before that time) never removes an image a container uses, running or
stopped, and takes with each image the untagged parents only it kept: the classic builder's intermediate
images, which are its cache. POST /build/prune with until (a duration there) removes BuildKit's cache records
unused for that long, none in use. A dry run puts the same question to the list endpoints instead.

The proxy records who owns which image (images.json) and forgets an image when the engine reports it deleted.
While the proxy is stopped nobody hears that, so a real run then drops the records of the images gone itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ds01 import eventlog
from ds01.daemon import while_stopped
from ds01.eventlog.types import EventType
from ds01.paths import Paths
from ds01.proxy.imagestore import ImageStore
from ds01.records import CacheRecord, ImageSummary, PruneResult

_KEPT_CACHE_KINDS = frozenset({"internal", "frontend"})  # BuildKit's prune keeps these unless asked for `all`
_CACHE_IDS_LOGGED = 256  # BuildKit's ids are 25 characters: this many fit an event line with room to spare


class ImageEngine(Protocol):
    def images(self, dangling_only: bool = False) -> list[ImageSummary]: ...

    def images_in_use(self) -> set[str]: ...

    def build_cache(self) -> list[CacheRecord]: ...

    def prune_images(self, until: float) -> PruneResult: ...

    def prune_build_cache(self, unused_for_seconds: int) -> PruneResult: ...


@dataclass(frozen=True)
class PrunedImage:
    image: ImageSummary
    owner: str | None  # the user whose build or commit made it; None for a shared image


@dataclass(frozen=True)
class Pruning:
    images: tuple[PrunedImage, ...]  # removed, or that a real run would remove
    cache: tuple[str, ...]  # build cache record ids, likewise
    cache_bytes: int  # a dry run: the size of those records; a real run: what the engine reclaimed with them
    images_reclaimed_bytes: int | None  # None in a dry run: the engine counts the layers it frees as it frees them
    forgotten: tuple[str, ...] = ()  # ownership records dropped (none while the proxy runs: it drops them itself)


def cache_prunable(record: CacheRecord, until: float) -> bool:
    """What BuildKit's prune without `all` removes: not in use, not shared, not internal, unused since `until`."""
    return (not record.in_use and not record.shared and record.kind not in _KEPT_CACHE_KINDS
            and (record.last_used_at is None or record.last_used_at <= until))


def prune(engine: ImageEngine, paths: Paths, prune_after_seconds: int, now: float, dry_run: bool) -> Pruning:
    until = now - prune_after_seconds
    store = ImageStore(paths.state_dir)  # whose each image is; a damaged record stops the run before any removal

    def owned(images: Iterable[ImageSummary]) -> tuple[PrunedImage, ...]:
        return tuple(PrunedImage(image, record.user if (record := store.owner(image.id)) else None)
                     for image in images)

    if dry_run:
        in_use = engine.images_in_use()
        cache = [record for record in engine.build_cache() if cache_prunable(record, until)]
        return Pruning(owned(image for image in engine.images(dangling_only=True)
                             if image.created_at <= until and image.id not in in_use),
                       tuple(record.id for record in cache), sum(record.size_bytes for record in cache), None)
    before = {image.id: image for image in engine.images()}
    images_pruned = engine.prune_images(until)
    cache_pruned = engine.prune_build_cache(prune_after_seconds)
    # The engine lists the layers it freed among the images it deleted: the images are those it had.
    removed = owned(before[deleted] for deleted in dict.fromkeys(images_pruned.deleted) if deleted in before)
    forgotten: list[str] = []
    with while_stopped(paths.run_dir, "proxy") as proxy_stopped:
        if proxy_stopped:  # listed under the lock: no build the proxy records can settle in between
            forgotten = ImageStore(paths.state_dir).forget_missing(image.id for image in engine.images())
    pruning = Pruning(removed, cache_pruned.deleted, cache_pruned.reclaimed_bytes, images_pruned.reclaimed_bytes,
                      tuple(forgotten))
    # An event per image, so that a long list never outgrows an event line (16 KiB), and the run's totals.
    dropped = set(forgotten)
    for pruned in removed:
        eventlog.emit(EventType.CLEANUP_PRUNE_IMAGE, source="cleanup", user=pruned.owner, image=pruned.image.id,
                      made_at=eventlog.format_ts(pruned.image.created_at), record_dropped=pruned.image.id in dropped)
    if removed or pruning.cache or forgotten:
        eventlog.emit(EventType.CLEANUP_PRUNE, source="cleanup", images=len(removed),
                      images_reclaimed_bytes=images_pruned.reclaimed_bytes, build_cache=len(pruning.cache),
                      build_cache_ids=list(pruning.cache[:_CACHE_IDS_LOGGED]),
                      build_cache_reclaimed_bytes=cache_pruned.reclaimed_bytes, records_dropped=len(forgotten),
                      prune_after_seconds=prune_after_seconds)
    return pruning
