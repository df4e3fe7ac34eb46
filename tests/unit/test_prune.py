"""Cleanup's image part without a test bed: a fake engine that answers the list and prune endpoints as the Docker
engine does, the proxy's ownership record in tmp_path, and the event log of the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ds01.cli.admin.cleanup import describe_pruning
from ds01.daemon import only_instance
from ds01.errors import Ds01Error
from ds01.eventlog import format_ts
from ds01.ops.prune import PrunedImage, Pruning, cache_prunable, prune
from ds01.paths import Paths
from ds01.proxy.imagestore import STATE_FILE, ImageStore, PendingImage
from ds01.records import CacheRecord, ImageSummary, PruneResult, cache_record, image_summary

NOW = 1_800_000_000.0
WEEK = 7 * 24 * 3600
OLD, NEW, USED, STEP, TAGGED = ("sha256:" + c * 64 for c in "abcde")
LAYER = "sha256:" + "f" * 64  # a layer chain id: the engine lists them among the deleted images


def image(image_id: str, age_seconds: float, *tags: str) -> ImageSummary:
    return ImageSummary(image_id, tags, NOW - age_seconds, 100)


def cache(record_id: str, age_seconds: float | None, kind: str = "regular", in_use: bool = False,
          shared: bool = False) -> CacheRecord:
    return CacheRecord(record_id, kind, 10, in_use, shared, None if age_seconds is None else NOW - age_seconds)


class FakeEngine:
    """Dangling images OLD (2 weeks, its untagged parent STEP with it), NEW (a day) and USED (2 weeks, a
    stopped container's); TAGGED has a tag. What the prunes were asked is kept."""

    def __init__(self) -> None:
        self.all = [image(OLD, 2 * WEEK), image(STEP, 2 * WEEK), image(NEW, 86400), image(USED, 2 * WEEK),
                    image(TAGGED, 3 * WEEK, "alice/torch:latest")]
        self.dangling = {OLD, NEW, USED}
        self.cache = [cache("old", 2 * WEEK), cache("never", None), cache("recent", 3600),
                      cache("busy", 2 * WEEK, in_use=True), cache("inner", 2 * WEEK, kind="internal")]
        self.asked: list[tuple[str, float]] = []

    def images(self, dangling_only: bool = False) -> list[ImageSummary]:
        return [i for i in self.all if i.id in self.dangling or not dangling_only]

    def images_in_use(self) -> set[str]:
        return {USED, TAGGED}

    def build_cache(self) -> list[CacheRecord]:
        return self.cache

    def prune_images(self, until: float) -> PruneResult:
        self.asked.append(("images", until))
        self.all = [i for i in self.all if i.id not in (OLD, STEP)]
        return PruneResult((OLD, LAYER, STEP), 4096)

    def prune_build_cache(self, unused_for_seconds: int) -> PruneResult:
        self.asked.append(("build cache", unused_for_seconds))
        return PruneResult(("old", "never"), 20)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    state = tmp_path / "state"
    state.mkdir()
    store = ImageStore(state)
    for user, ids in (("alice", (OLD, STEP, TAGGED)), ("bob", (USED,))):
        store.settle(store.begin(PendingImage(user, 1001, "build", (f"{user}/x:latest",), "2026-01-01T00:00:00Z")),
                     ids)
    return Paths(config=tmp_path / "limits.yaml", state_dir=state, log_dir=tmp_path / "log", run_dir=tmp_path / "run")


def owned_ids(paths: Paths) -> set[str]:
    return set(json.loads((paths.state_dir / STATE_FILE).read_text())["owned"])


def logged(event_log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in event_log.read_text().splitlines()] if event_log.exists() else []


def test_a_dry_run_lists_what_would_go_and_removes_nothing(paths: Paths, event_log: Path) -> None:
    engine = FakeEngine()
    record = (paths.state_dir / STATE_FILE).read_bytes()
    found = prune(engine, paths, WEEK, NOW, dry_run=True)
    # Dangling, made before a week ago, used by no container; the parents that go with them are not listed.
    assert found.images == (PrunedImage(image(OLD, 2 * WEEK), "alice"),)
    assert (found.cache, found.cache_bytes, found.images_reclaimed_bytes) == (("old", "never"), 20, None)
    assert engine.asked == [] and logged(event_log) == []
    assert (paths.state_dir / STATE_FILE).read_bytes() == record


def test_a_real_run_prunes_with_the_engines_filters_and_reports_the_images_it_removed(paths: Paths,
                                                                                     event_log: Path) -> None:
    engine = FakeEngine()
    pruned = prune(engine, paths, WEEK, NOW, dry_run=False)
    assert engine.asked == [("images", NOW - WEEK), ("build cache", WEEK)]
    assert [(p.image.id, p.owner) for p in pruned.images] == [(OLD, "alice"), (STEP, "alice")]  # not the layer
    assert (pruned.cache, pruned.cache_bytes, pruned.images_reclaimed_bytes) == (("old", "never"), 20, 4096)
    assert set(pruned.forgotten) == {OLD, STEP}
    assert owned_ids(paths) == {TAGGED, USED}
    *per_image, totals = logged(event_log)
    assert [(e["type"], e["user"], e["details"]) for e in per_image] == [
        ("cleanup.prune_image", "alice", {"image": OLD, "made_at": format_ts(NOW - 2 * WEEK), "record_dropped": True}),
        ("cleanup.prune_image", "alice", {"image": STEP, "made_at": format_ts(NOW - 2 * WEEK), "record_dropped": True})]
    assert (totals["type"], totals["source"], totals["user"]) == ("cleanup.prune", "cleanup", None)
    assert totals["details"] == {"images": 2, "images_reclaimed_bytes": 4096, "build_cache": 2,
                                 "build_cache_ids": ["old", "never"], "build_cache_reclaimed_bytes": 20,
                                 "records_dropped": 2, "prune_after_seconds": WEEK}


def test_many_images_make_many_events_that_each_fit_a_line(paths: Paths, event_log: Path) -> None:
    many = [image("sha256:" + f"{n:064x}", 2 * WEEK) for n in range(300)]

    class Backlog(FakeEngine):
        def images(self, dangling_only: bool = False) -> list[ImageSummary]:
            return many

        def prune_images(self, until: float) -> PruneResult:
            return PruneResult(tuple(i.id for i in many), 300 * 2**20)

        def prune_build_cache(self, unused_for_seconds: int) -> PruneResult:
            return PruneResult(tuple(f"{n:025d}" for n in range(1000)), 2**30)

    prune(Backlog(), paths, WEEK, NOW, dry_run=False)
    events = logged(event_log)
    assert [e["details"]["image"] for e in events[:-1]] == [i.id for i in many]
    totals = events[-1]["details"]
    assert (totals["images"], totals["build_cache"], len(totals["build_cache_ids"])) == (300, 1000, 256)


def test_while_the_proxy_runs_its_record_is_left_to_it(paths: Paths, event_log: Path) -> None:
    record = (paths.state_dir / STATE_FILE).read_bytes()
    with only_instance(paths.run_dir, "proxy"):  # the proxy forgets each image on the engine's delete event
        pruned = prune(FakeEngine(), paths, WEEK, NOW, dry_run=False)
    assert [p.image.id for p in pruned.images] == [OLD, STEP] and pruned.forgotten == ()
    assert (paths.state_dir / STATE_FILE).read_bytes() == record
    *per_image, totals = logged(event_log)
    assert [e["details"]["record_dropped"] for e in per_image] == [False, False]
    assert totals["details"]["records_dropped"] == 0


def test_a_run_that_removes_nothing_writes_no_event(paths: Paths, event_log: Path) -> None:
    class Clean(FakeEngine):
        def prune_images(self, until: float) -> PruneResult:
            return PruneResult((), 0)

        def prune_build_cache(self, unused_for_seconds: int) -> PruneResult:
            return PruneResult((), 0)

    ImageStore(paths.state_dir).forget([OLD, STEP])
    pruned = prune(Clean(), paths, WEEK, NOW, dry_run=False)
    assert (pruned.images, pruned.cache, pruned.forgotten) == ((), (), ())
    assert logged(event_log) == []


def test_a_damaged_ownership_record_stops_the_run_before_any_removal(paths: Paths) -> None:
    (paths.state_dir / STATE_FILE).write_text("[]")
    engine = FakeEngine()
    with pytest.raises(Ds01Error, match="image ownership record"):
        prune(engine, paths, WEEK, NOW, dry_run=False)
    assert engine.asked == []


@pytest.mark.parametrize(("record", "prunable"), [
    (cache("old", 2 * WEEK), True),
    (cache("never used since it was made", None), True),
    (cache("recent", WEEK - 1), False),
    (cache("in use", 2 * WEEK, in_use=True), False),
    (cache("shared", 2 * WEEK, shared=True), False),
    (cache("internal", 2 * WEEK, kind="internal"), False),
    (cache("frontend", 2 * WEEK, kind="frontend"), False),
    (cache("a local source", 2 * WEEK, kind="source.local"), True),
])
def test_the_dry_run_reads_the_build_cache_as_buildkits_prune_does(record: CacheRecord, prunable: bool) -> None:
    assert cache_prunable(record, NOW - WEEK) is prunable


def test_the_engines_lists_are_read_into_typed_records() -> None:
    listed = {"Id": OLD, "RepoTags": ["<none>:<none>"], "Created": 1_799_000_000, "Size": 1984241}
    assert image_summary(listed) == ImageSummary(OLD, (), 1_799_000_000.0, 1984241)
    assert image_summary({**listed, "RepoTags": None}).tags == ()
    df = {"ID": "k1", "Type": "regular", "Size": 512, "InUse": False, "Shared": True,
          "LastUsedAt": "2026-12-01T16:39:31.123456789Z"}
    assert cache_record(df) == CacheRecord("k1", "regular", 512, False, True, 1_796_143_171.123456789)
    assert cache_record({**df, "LastUsedAt": None}).last_used_at is None


def test_the_output_names_each_image_and_what_was_reclaimed() -> None:
    pruned = Pruning((PrunedImage(image(OLD, 2 * WEEK), "alice"), PrunedImage(image(STEP, 2 * WEEK), None)),
                     ("old",), 3 * 2**20, 5 * 2**30)
    rows = describe_pruning(pruned, WEEK, NOW, dry_run=False)
    assert [(r["user"], r["action"]) for r in rows] == [("alice", "prune"), ("-", "prune"), ("-", "prune"),
                                                        ("-", "reclaimed")]
    assert rows[0]["reason"] == f"untagged image {'a' * 12}, made 14d ago (images.prune_after 1w)"
    assert rows[0]["image"] == OLD
    assert rows[2]["reason"] == "build cache unused for 1w: 1 record, 3.0MiB reclaimed"
    assert (rows[3]["reason"], rows[3]["size_bytes"]) == ("5.0GiB of image layers from the 2 images pruned", 5 * 2**30)
    dry = describe_pruning(Pruning(pruned.images[:1], (), 0, None), WEEK, NOW, dry_run=True)
    assert [(r["action"], r["image"]) for r in dry] == [("would prune", OLD)]
