"""Users' images: the names they may make, the ownership record, and the gate's image routes over the in-memory
engine of test_gate.py: another user's image answers as a missing one, shared images are everyone's and nobody's
to remove, commits land in the caller's namespace and are recorded before they are forwarded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ds01.config import ImageSettings
from ds01.errors import Denied, Ds01Error
from ds01.proxy import imagenames
from ds01.proxy.imagestore import STATE_FILE, ImageStore, PendingImage, own_image_sizes
from ds01.proxy.session import Session
from tests.unit.proxy_harness import container
from tests.unit.test_gate import ADMIN, ALICE, BOB, IMAGE, Reason, World, denied, forwarded, refused, world

__all__ = ["world"]  # the fixture, shared with test_gate.py

ALICES = "sha256:" + "a" * 64
SHARED = "sha256:" + "5" * 64


# --- names ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "registry", "path", "tag", "namespace"), [
    ("ubuntu", "docker.io", "library/ubuntu", None, None),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("alice/tools", "docker.io", "alice/tools", None, "alice"),
    ("docker.io/alice/tools:v1", "docker.io", "alice/tools", "v1", "alice"),
    ("index.docker.io/alice/tools", "docker.io", "alice/tools", None, "alice"),
    ("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io", "nvidia/pytorch", "24.01-py3", None),
    ("localhost:5000/x", "localhost:5000", "x", None, None),
    ("localhost/x", "localhost", "x", None, None),
])
def test_references_are_read_as_the_engine_reads_them(text: str, registry: str, path: str, tag: str | None,
                                                      namespace: str | None) -> None:
    reference = imagenames.parse(text)
    assert (reference.registry, reference.path, reference.tag, reference.namespace) == (registry, path, tag,
                                                                                         namespace)


@pytest.mark.parametrize("text", ["", "Alice/tools", "alice//tools", "alice/tools:", "alice/tools:-x", "a" * 300,
                                  "alice/tools@sha256:xyz", "-alice/tools", "alice/tools/"])
def test_a_malformed_reference_is_refused_not_guessed(text: str) -> None:
    with pytest.raises(Denied) as info:
        imagenames.parse(text)
    assert info.value.reason is Reason.BAD_REQUEST


def test_users_name_images_only_in_their_namespace() -> None:
    assert imagenames.check_own_name("alice", "alice/tools:v2", "docker tag").tagged() == "alice/tools:v2"
    assert imagenames.check_own_name("alice", "docker.io/alice/tools", "docker tag").tagged() == "alice/tools:latest"
    for foreign in ("bob/tools", "tools", "library/alice", "ghcr.io/alice/tools", "alice", "alicex/tools",
                    "alice/tools@sha256:" + "0" * 64):
        with pytest.raises(Denied) as info:
            imagenames.check_own_name("alice", foreign, "docker tag")
        assert info.value.reason is Reason.IMAGE_NAMESPACE, foreign


@given(st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}(:[a-z0-9]{1,5})?", fullmatch=True))
def test_only_a_name_under_the_users_own_first_component_passes(text: str) -> None:
    try:
        imagenames.check_own_name("alice", text, "build -t")
    except Denied:
        assert not text.startswith("alice/")
    else:
        assert text.startswith("alice/")


# --- the record -----------------------------------------------------------------------------------------------

def test_the_record_survives_a_restart_and_settles_what_was_left_pending(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    key = store.begin(PendingImage("alice", 1001, "commit", ("alice/x:latest",), "2026-01-01T00:00:00+00:00"))
    store.settle(key, [ALICES])
    left = store.begin(PendingImage("alice", 1001, "build", ("alice/y:latest",), "2026-01-01T00:00:01+00:00"))
    assert left in json.loads((tmp_path / STATE_FILE).read_text())["pending"]  # on disk before the forward
    again = ImageStore(tmp_path)  # a proxy killed with the build in flight, started again
    assert again.owner(ALICES) is not None and again.owner(ALICES).user == "alice"  # type: ignore[union-attr]
    settled = again.settle_interrupted(lambda pending: ["sha256:" + "b" * 64] if "alice/y:latest" in pending.tags
                                       else [])
    assert [(pending.tags, found) for pending, found in settled] == [(("alice/y:latest",), ["sha256:" + "b" * 64])]
    assert ImageStore(tmp_path).owner("sha256:" + "b" * 64) is not None
    assert json.loads((tmp_path / STATE_FILE).read_text())["pending"] == {}
    assert again.forget_missing([ALICES]) == ["sha256:" + "b" * 64]


def test_a_damaged_record_stops_the_proxy_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text('{"format": 1, "owned": {"x": {"user": 3}}')
    with pytest.raises(Ds01Error, match=r"is damaged.*Restore it from a backup"):
        ImageStore(tmp_path)


# --- the gate -------------------------------------------------------------------------------------------------

def alices_image(world: World) -> None:
    """alice/tools, made by alice's commit, and a shared image everyone pulled."""
    world.upstream.images["alice/tools"] = {"Id": ALICES, "RepoTags": ["alice/tools:latest"], "Size": 100,
                                            "Parent": SHARED, "Config": {}}
    world.upstream.images[ALICES] = world.upstream.images["alice/tools"]
    world.upstream.images[IMAGE] = {**world.upstream.images[IMAGE], "Id": SHARED, "RepoTags": [IMAGE], "Size": 40,
                                    "RepoDigests": ["ds01-test/busybox@sha256:" + "9" * 64]}
    world.upstream.images[SHARED] = world.upstream.images[IMAGE]
    key = world.gate._images.store.begin(PendingImage("alice", 2001, "commit", ("alice/tools:latest",), "t"))
    world.gate._images.store.settle(key, [ALICES])


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/v1.41/images/alice/tools/json"), ("GET", "/v1.41/images/alice/tools/history"),
    ("GET", "/v1.41/images/alice/tools/get"), ("GET", f"/v1.41/images/{ALICES}/json"),
    ("POST", "/v1.41/images/alice/tools/tag?repo=bob/x"), ("POST", "/v1.41/images/alice/tools/push"),
    ("DELETE", "/v1.41/images/alice/tools"), ("GET", "/v1.41/images/get?names=alice/tools"),
])
def test_another_users_image_answers_as_a_missing_one(world: World, method: str, target: str) -> None:
    alices_image(world)
    assert refused(world, BOB, method, target) is Reason.NOT_FOUND


def test_another_users_image_cannot_be_run(world: World) -> None:
    alices_image(world)
    with pytest.raises(Denied, match="No such image: alice/tools"):
        world.decide(BOB, "POST", "/v1.41/containers/create?name=x", {"Image": "alice/tools"})
    assert not world.gate.locks.locked("bob") and world.upstream.containers == {}
    made = world.decide(ALICE, "POST", "/v1.41/containers/create?name=x", {"Image": "alice/tools"})
    forwarded(made).close()


def test_the_list_shows_the_callers_own_and_the_shared_images(world: World) -> None:
    alices_image(world)
    for caller, expected in ((ALICE, {ALICES, SHARED}), (BOB, {SHARED}), (ADMIN, None)):
        outcome = world.decide(caller, "GET", "/v1.41/images/json")
        if expected is None:
            forwarded(outcome).close()  # admins see the engine's own list
            continue
        assert {image["Id"] for image in outcome.body} == expected  # type: ignore[union-attr]


def test_shared_images_are_not_users_to_remove_and_own_ones_are(world: World) -> None:
    alices_image(world)
    assert denied(world.decide(ALICE, "DELETE", f"/v1.41/images/{IMAGE}")) == (Reason.IMAGE_SHARED, 403)
    removal = forwarded(world.decide(ALICE, "DELETE", "/v1.41/images/alice/tools"))
    removal.settle(200, json.dumps([{"Untagged": "alice/tools:latest"}, {"Deleted": ALICES}]).encode())
    assert world.gate._images.store.owner(ALICES) is None


def test_tags_go_only_into_the_callers_namespace(world: World) -> None:
    alices_image(world)
    assert refused(world, ALICE, "POST", "/v1.41/images/alice/tools/tag?repo=bob/tools") is Reason.IMAGE_NAMESPACE
    assert refused(world, ALICE, "POST", f"/v1.41/images/{IMAGE}/tag?repo=busybox&tag=latest") is \
        Reason.IMAGE_NAMESPACE  # a shared name others run
    forwarded(world.decide(ALICE, "POST", f"/v1.41/images/{IMAGE}/tag?repo=alice/base&tag=v1")).close()
    assert refused(world, ALICE, "POST", "/v1.41/images/alice/tools/tag?repo=alice/t&force=1") is Reason.BAD_REQUEST


def test_a_commit_is_of_the_callers_container_into_their_namespace_and_recorded_first(world: World) -> None:
    world.add(container("app", ALICE))
    world.add(container("bobs", BOB))
    assert denied(world.decide(ALICE, "POST", "/v1.41/commit?container=bobs&repo=alice/x")) == (Reason.NOT_FOUND,
                                                                                                 404)
    assert refused(world, ALICE, "POST", "/v1.41/commit?container=app&repo=bob/x") is Reason.IMAGE_NAMESPACE
    assert refused(world, ALICE, "POST", "/v1.41/commit?container=app") is Reason.IMAGE_NAMESPACE
    assert refused(world, ALICE, "POST", "/v1.41/commit?container=app&repo=alice/x&squash=1") is Reason.BAD_REQUEST
    commit = forwarded(world.decide(ALICE, "POST", "/v1.41/commit?container=app&repo=alice/x&tag=v1"))
    store = world.gate._images.store
    assert [p.tags for p in store._pending.values()] == [("alice/x:v1",)]
    commit.settle(201, json.dumps({"Id": ALICES}).encode())
    assert store.owner(ALICES) is not None and store._pending == {}


def test_a_full_image_storage_refuses_commits_and_pulls_with_the_images_by_size(world: World) -> None:
    alices_image(world)
    world.add(container("app", ALICE))
    small = dataclasses.replace(ALICE, limits=ALICE.limits.with_overrides({"image_storage_bytes": 50}))
    world.sessions.by_uid[ALICE.uid] = Session(caller=small, login=small.login)
    for target in ("/v1.41/commit?container=app&repo=alice/y", "/v1.41/images/create?fromImage=busybox&tag=1"):
        with pytest.raises(Denied, match=r"your images take 60B and you may keep 50B .*alice/tools:latest 60B") as info:
            world.decide(ALICE, "POST", target)
        assert info.value.reason is Reason.IMAGE_STORAGE


def test_pulls_stay_out_of_other_users_namespaces_and_off_registries_not_allowed(world: World) -> None:
    alices_image(world)
    assert refused(world, BOB, "POST", "/v1.41/images/create?fromImage=alice/tools&tag=latest") is \
        Reason.IMAGE_NAMESPACE
    forwarded(world.decide(BOB, "POST", "/v1.41/images/create?fromImage=pytorch/pytorch&tag=latest")).close()
    world.sessions.config = dataclasses.replace(world.sessions.config,
                                                images=ImageSettings(allowed_registries=frozenset({"nvcr.io"})))
    assert refused(world, BOB, "POST", "/v1.41/images/create?fromImage=pytorch/pytorch&tag=latest") is \
        Reason.REGISTRY_NOT_ALLOWED
    forwarded(world.decide(BOB, "POST", "/v1.41/images/create?fromImage=nvcr.io/nvidia/pytorch&tag=24.01")).close()


def test_what_a_failed_build_left_is_nobodys_to_use(world: World) -> None:
    """A failed build's finished steps are images with no tag, no digest and no record: not shared."""
    left = "sha256:" + "e" * 64
    world.upstream.images[left] = {"Id": left, "RepoTags": ["<none>:<none>"], "RepoDigests": ["<none>@<none>"],
                                   "Config": {}}  # as the image list shows it; an inspect gives []
    for caller in (ALICE, BOB):
        with pytest.raises(Denied, match="No such image"):
            world.decide(caller, "GET", f"/v1.41/images/{left}/json")
        assert left not in {image["Id"] for image in world.decide(caller, "GET", "/v1.41/images/json").body}
    forwarded(world.decide(ADMIN, "GET", f"/v1.41/images/{left}/json")).close()


def alices_tag_on_the_shared_image(world: World) -> None:
    """alice's `docker tag busybox alice/bb`: her name on the shared image."""
    alices_image(world)
    shared = world.upstream.images[IMAGE]
    shared["RepoTags"] = [IMAGE, "alice/bb:latest"]
    world.upstream.images["alice/bb"] = world.upstream.images["alice/bb:latest"] = shared


def test_another_users_tag_on_a_shared_image_is_theirs_to_see_and_name(world: World) -> None:
    alices_tag_on_the_shared_image(world)
    for method, target in (("GET", "/v1.41/images/alice/bb/json"), ("POST", "/v1.41/images/alice/bb/tag?repo=bob/x"),
                           ("DELETE", "/v1.41/images/alice/bb")):
        assert refused(world, BOB, method, target) is Reason.NOT_FOUND, target
    with pytest.raises(Denied, match="No such image: alice/bb"):
        world.decide(BOB, "POST", "/v1.41/containers/create?name=x", {"Image": "alice/bb"})
    listed = {image["Id"]: image["RepoTags"] for image in world.decide(BOB, "GET", "/v1.41/images/json").body}
    assert listed == {SHARED: [IMAGE]}
    shown = world.decide(BOB, "GET", f"/v1.41/images/{IMAGE}/json")
    assert shown.body["RepoTags"] == [IMAGE]  # type: ignore[union-attr]
    world.upstream.answers[("GET", f"/images/{quote(IMAGE, safe='')}/history")] = (
        200, [{"Id": SHARED, "Tags": [IMAGE, "alice/bb:latest"]}, {"Id": "<missing>", "Tags": None}])
    history = world.decide(BOB, "GET", f"/v1.41/images/{IMAGE}/history").body
    assert [layer["Tags"] for layer in history] == [[IMAGE], None]  # type: ignore[union-attr]
    mine = {image["Id"]: image["RepoTags"] for image in world.decide(ALICE, "GET", "/v1.41/images/json").body}
    assert mine[SHARED] == [IMAGE, "alice/bb:latest"]


def test_a_user_untags_their_own_name_on_a_shared_image_but_never_removes_it(world: World) -> None:
    alices_tag_on_the_shared_image(world)
    for target in ("/v1.41/images/alice/bb?force=1", f"/v1.41/images/{SHARED}"):
        assert denied(world.decide(ALICE, "DELETE", target)) == (Reason.IMAGE_SHARED, 403), target
    untag = forwarded(world.decide(ALICE, "DELETE", "/v1.41/images/alice/bb"))
    untag.settle(200, json.dumps([{"Untagged": "alice/bb:latest"}]).encode())
    world.upstream.images[IMAGE]["RepoTags"] = ["alice/bb:latest"]  # its only name: a removal would delete it
    world.upstream.images[IMAGE]["RepoDigests"] = []
    assert denied(world.decide(ALICE, "DELETE", "/v1.41/images/alice/bb")) == (Reason.IMAGE_SHARED, 403)


def test_image_storage_counts_every_owned_image_once_tagged_or_not() -> None:
    """An image its tag was moved off stays usable by id, so it counts; two tags on one chain count it once."""
    base, mid, top, left = ("sha256:" + c * 64 for c in "1234")
    images = {
        SHARED: {"Id": SHARED, "Size": 40, "RepoTags": ["ds01-test/busybox:latest"]},
        base: {"Id": base, "Parent": SHARED, "Size": 50, "RepoTags": ["alice/base:latest"]},
        mid: {"Id": mid, "Parent": base, "Size": 80, "RepoTags": []},  # a build step under alice/app
        top: {"Id": top, "Parent": mid, "Size": 100, "RepoTags": ["alice/app:latest"]},
        left: {"Id": left, "Parent": SHARED, "Size": 8_000_040, "RepoTags": []},  # retagged away: usable by id
    }
    sizes = own_image_sizes([base, mid, top, left], images.get)
    assert {own.names: own.size for own in sizes} == {
        ("untagged 444444444444",): 8_000_000, ("alice/app:latest",): 50, ("alice/base:latest",): 10}
    assert sum(own.size for own in sizes) == 8_000_060  # each of alice's layers once


def test_a_build_not_settled_yet_owns_what_it_named(world: World) -> None:
    """From the build's last byte to its settle, its image is the builder's already: never shared meanwhile."""
    fresh = "sha256:" + "f" * 64
    world.upstream.images["alice/fresh"] = world.upstream.images[fresh] = {
        "Id": fresh, "RepoTags": ["alice/fresh:latest"], "Size": 10, "Config": {}}
    store = world.gate._images.store
    key = store.begin(PendingImage("alice", 2001, "build", ("alice/fresh:latest",), "t"))
    assert refused(world, BOB, "GET", f"/v1.41/images/{fresh}/json") is Reason.NOT_FOUND
    forwarded(world.decide(ALICE, "GET", f"/v1.41/images/{fresh}/json")).close()
    forwarded(world.decide(ALICE, "DELETE", "/v1.41/images/alice/fresh")).close()
    store.settle(key, [fresh])
    assert store.pending_owner(["alice/fresh:latest"]) is None and store.owner(fresh) is not None
