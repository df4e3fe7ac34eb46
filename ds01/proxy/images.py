"""Users' images through the proxy: each user's own (made by their builds and commits, recorded in the image
store) are theirs alone, as their containers are; pulled images are shared, and nobody but an admin removes
them. Another user's image answers 404 whatever is asked of it: run, inspect, history, save, tag, push, remove.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

from ds01 import eventlog
from ds01.errors import Denied, EngineError
from ds01.eventlog.types import EventType
from ds01.identity import nss
from ds01.proxy import imagenames
from ds01.proxy.imagestore import ImageStore, OwnImage, PendingImage, own_image_sizes
from ds01.proxy.interfaces import EngineCalls
from ds01.proxy.outcomes import Deny, Forward, Outcome, Reply, Request
from ds01.proxy.runas import Caller
from ds01.reasons import Reason
from ds01.units import format_bytes

COMMIT_PARAMETERS = frozenset({"container", "repo", "tag", "comment", "author", "pause", "changes"})
TAG_PARAMETERS = frozenset({"repo", "tag"})
DELETE_PARAMETERS = frozenset({"force", "noprune"})
PUSH_PARAMETERS = frozenset({"tag"})
LIST_PARAMETERS = frozenset({"all", "filters", "digests", "shared-size"})
SAVE_PARAMETERS = frozenset({"names"})
_CHAIN_LIMIT = 1000  # parents followed from one image: far beyond any Dockerfile's steps


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_parameters(query: str, allowed: frozenset[str], what: str) -> dict[str, list[str]]:
    """The query's parameters, each allowed for `what`; any other is refused by name."""
    found: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        found.setdefault(name, []).append(value)
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise Denied(Reason.BAD_REQUEST, f"{what} parameter(s) {', '.join(unknown)} are not allowed through the ds01 "
                                         f"proxy; it takes {', '.join(sorted(allowed))}.")
    return found


class ImageActions:
    def __init__(self, upstream: EngineCalls, store: ImageStore) -> None:
        self.upstream = upstream
        self.store = store

    # --- whose an image is -----------------------------------------------------------------------------------

    def find(self, caller: Caller, name: str) -> dict[str, Any] | None:
        """The image of that name (its inspect), None when there is none; another user's is refused as a missing
        one would be (404 "No such image", on which the docker CLI tries a pull, refused in turn). So is a name in
        another user's namespace, even where it tags a shared image: it is theirs to name."""
        if not caller.is_admin and self._others_name(caller, name):
            raise Denied(Reason.NOT_FOUND, f"No such image: {name}")
        info = self.upstream.inspect("image", name)
        if info is not None and not caller.is_admin and not self._usable(caller, info):
            raise Denied(Reason.NOT_FOUND, f"No such image: {name}")
        return info

    def _usable(self, caller: Caller, info: dict[str, Any]) -> bool:
        """The caller's own, or shared: pulled (a registry digest) or named, other users' names left out. An image
        with neither that the record does not hold is what a failed build left of its finished steps: nobody's to
        use but an admin."""
        owner = self._owner(info)
        if owner is not None:
            return owner == caller.user
        # An image list says <none>:<none> and <none>@<none> where an inspect says nothing.
        return any(digest != "<none>@<none>" and not self._others_name(caller, digest)
                   for digest in info.get("RepoDigests") or ()) or bool(self._shown_tags(caller, info))

    def _others_name(self, caller: Caller, name: str) -> bool:
        """Whether `name` lies in another user's namespace (alice/x for bob); an id or a malformed name does not."""
        try:
            namespace = imagenames.parse(name).namespace
        except Denied:
            return False
        return namespace not in (None, caller.user) and self._a_users_namespace(namespace or "")

    def _shown_tags(self, caller: Caller, info: dict[str, Any]) -> list[str]:
        """The image's tags the caller sees: not other users' (alice's own tag on a shared image is hers)."""
        return [tag for tag in info.get("RepoTags") or ()
                if tag != "<none>:<none>" and not self._others_name(caller, tag)]

    def _as_shown(self, caller: Caller, info: dict[str, Any]) -> dict[str, Any]:
        """An image's inspect or list entry with other users' names on it left out."""
        return {**info, "RepoTags": self._shown_tags(caller, info),
                "RepoDigests": [digest for digest in info.get("RepoDigests") or ()
                                if not self._others_name(caller, digest)]}

    def visible(self, caller: Caller, name: str) -> tuple[dict[str, Any], str | None]:
        """An image the caller may use: (its inspect, its owner or None when shared)."""
        info = self.find(caller, name)
        if info is None:
            raise Denied(Reason.NOT_FOUND, f"No such image: {name}")
        return info, self._owner(info)

    def _owner(self, info: dict[str, Any]) -> str | None:
        """Whose image it is by the record, or by a build or commit of theirs that names it and is not settled."""
        owned = self.store.owner(str(info.get("Id")))
        if owned is not None:
            return owned.user
        return self.store.pending_owner(tag for tag in info.get("RepoTags") or () if tag != "<none>:<none>")

    def own_images(self, user: str) -> list[OwnImage]:
        """The user's images with the size of their own layers, largest first."""
        return own_image_sizes(self.store.owned_by(user), lambda image: self.upstream.inspect("image", image))

    def check_storage(self, caller: Caller) -> None:
        """Refused (exit 3) while the caller's own images fill image_storage: what a build or commit will add is
        not known before it runs."""
        limit = caller.limits.image_storage_bytes
        mine = self.own_images(caller.user)
        used = sum(own.size for own in mine)
        if used < limit:
            return
        listed = "; ".join(f"{', '.join(own.names)} {format_bytes(own.size)}" for own in mine[:10])
        raise Denied(Reason.IMAGE_STORAGE, (
            f"your images take {format_bytes(used)} and you may keep {format_bytes(limit)} (image_storage): {listed}. "
            "Remove some (container image remove NAME, or docker rmi NAME) and try again."))

    def check_pull(self, caller: Caller, query: dict[str, str], allowed: frozenset[str] | None) -> None:
        """A pull from an allowed registry, not into another user's namespace (docker.io/alice/x is where alice's
        own alice/x lives: a pull would move her tag), within the caller's image storage."""
        name, tag = query.get("fromImage") or "", query.get("tag") or ""
        # The docker CLI sends the tag apart, and a digest as the tag.
        self.check_pull_reference(caller, imagenames.parse(f"{name}{'@' if ':' in tag else ':'}{tag}" if tag
                                                           else name), allowed)
        self.check_storage(caller)

    def check_pull_reference(self, caller: Caller, reference: imagenames.Reference,
                             allowed: frozenset[str] | None) -> None:
        """What the engine may pull for the caller (a docker pull, a build's FROM that is not here yet)."""
        if allowed is not None and reference.registry not in allowed:
            raise Denied(Reason.REGISTRY_NOT_ALLOWED, (
                f"pulls from {reference.registry} are not allowed on this host; images come from "
                f"{', '.join(sorted(allowed))}. Ask an admin to add it to images.allowed_registries."))
        if reference.namespace not in (None, caller.user) and self._a_users_namespace(reference.namespace or ""):
            raise Denied(Reason.IMAGE_NAMESPACE, (
                f"{reference.namespace}/... names {reference.namespace}'s own images on this server, and a pull "
                f"would move their tags: pull it from a registry under another name, or ask "
                f"{reference.namespace} for theirs."))

    def _a_users_namespace(self, name: str) -> bool:
        return nss.account_by_name(name) is not None or any(
            owned.user == name for owned in self.store.owners())

    # --- the routes ------------------------------------------------------------------------------------------

    def listing(self, request: Request) -> Outcome:
        caller = request.session.caller
        check_parameters(request.query, LIST_PARAMETERS, "image list")
        status, listed = self.upstream.call("GET", "/images/json", query=dict(parse_qsl(request.query)))
        if status != 200 or not isinstance(listed, list):
            raise EngineError(f"the engine answered {status} to the image list: {str(listed)[:200]}")
        return Reply(200, [self._as_shown(caller, image) for image in listed if self._usable(caller, image)])

    def act(self, request: Request) -> Outcome:
        """One image named in the path: inspect, history, save, tag, push, remove."""
        caller, route, method = request.session.caller, request.route, request.method
        name = route.object_id or ""
        info, owner = self.visible(caller, name)
        others_names = any(self._others_name(caller, named)
                           for named in [*(info.get("RepoTags") or ()), *(info.get("RepoDigests") or ())])
        match route.action, method:
            case "json", "GET":
                check_parameters(request.query, frozenset(), "image inspect")
                return Reply(200, self._as_shown(caller, info)) if others_names else Forward(request.target)
            case "history", "GET":
                check_parameters(request.query, frozenset(), "image history")
                return self._history(caller, name)  # a layer below may carry another user's tag
            case "get", "GET":
                check_parameters(request.query, frozenset(), "image save")
                return Forward(request.target)
            case "tag", "POST":
                found = check_parameters(request.query, TAG_PARAMETERS, "image tag")
                repo, tag = (found.get("repo") or [""])[-1], (found.get("tag") or [""])[-1]
                imagenames.check_own_name(caller.user, f"{repo}:{tag}" if tag else repo, "docker tag")
                return Forward(request.target)
            case "push", "POST":
                check_parameters(request.query, PUSH_PARAMETERS, "image push")
                imagenames.check_own_name(caller.user, name, "docker push")
                return Forward(request.target)
            case "", "DELETE":
                found = check_parameters(request.query, DELETE_PARAMETERS, "image remove")
                if owner is None and not self._own_tag_of_shared(caller, name, info, found):
                    return Deny(Reason.IMAGE_SHARED, f"{name} is a shared image (pulled from a registry, used by "
                                                     "everyone): only an admin removes it. Your own images are those "
                                                     f"you build or commit as {caller.user}/NAME, and your own tags "
                                                     "on a shared image, which docker rmi untags.")
                return Forward(request.target, after=lambda status, answer: self._removed(caller, name, status, answer))
            case _:
                return Deny(Reason.UNKNOWN_ENDPOINT, f"{method} {request.path} is not allowed through the ds01 proxy.")

    def _own_tag_of_shared(self, caller: Caller, name: str, info: dict[str, Any],
                           found: dict[str, list[str]]) -> bool:
        """`docker rmi alice/x` of alice's own tag on a shared image, which keeps another name: the engine only
        untags it then. Not forced, which would remove the image under other users' containers."""
        try:
            reference = imagenames.parse(name)
        except Denied:
            return False
        if reference.namespace != caller.user or reference.digest is not None or any(
                value not in ("", "0", "false") for value in found.get("force") or ()):
            return False
        others = [tag for tag in info.get("RepoTags") or () if tag not in ("<none>:<none>", reference.tagged())]
        kept_digests = [digest for digest in info.get("RepoDigests") or ()
                        if imagenames.parse(digest).repository != reference.repository]
        return reference.tagged() in (info.get("RepoTags") or ()) and bool(others or kept_digests)

    def _history(self, caller: Caller, name: str) -> Reply:
        """An image's history with other users' tags on its layers left out (bob's tag on the shared base of
        alice's image is not hers to see)."""
        status, layers = self.upstream.call("GET", f"/images/{quote(name, safe='')}/history")
        if status != 200 or not isinstance(layers, list):
            raise EngineError(f"the engine answered {status} to the history of {name}: {str(layers)[:200]}")
        return Reply(200, [{**layer, "Tags": [tag for tag in layer.get("Tags") or ()
                                               if not self._others_name(caller, tag)] or None}
                           for layer in layers])

    def _removed(self, caller: Caller, name: str, status: int | None, answer: bytes) -> None:
        if status != 200:
            return
        entries = json.loads(answer)
        gone = [str(entry.get("Deleted")) for entry in entries if entry.get("Deleted")]
        untagged = [str(entry.get("Untagged")) for entry in entries if entry.get("Untagged")]
        self.store.forget(gone)
        eventlog.emit(EventType.IMAGE_REMOVE, source="proxy", user=caller.user, image=name, deleted=gone,
                      untagged=untagged)

    def save_many(self, request: Request) -> Outcome:
        """docker save of several images: each visible to the caller."""
        found = check_parameters(request.query, SAVE_PARAMETERS, "image save")
        for name in found.get("names") or []:
            self.visible(request.session.caller, name)
        return Forward(request.target)

    def commit(self, request: Request, owner_of_container: Callable[[str], str | None]) -> Outcome:
        """docker commit of the caller's own container, into their namespace."""
        caller = request.session.caller
        found = check_parameters(request.query, COMMIT_PARAMETERS, "commit")
        container = (found.get("container") or [""])[-1]
        if owner_of_container(container) != caller.user and not caller.is_admin:
            return Deny(Reason.NOT_FOUND, f"No such container: {container}", status=404)
        repo, tag = (found.get("repo") or [""])[-1], (found.get("tag") or [""])[-1]
        if not repo:
            raise Denied(Reason.IMAGE_NAMESPACE, f"name the image: docker commit CONTAINER {caller.user}/NAME "
                                                 "(an image without a name would be nobody's to find).")
        target = imagenames.check_own_name(caller.user, f"{repo}:{tag}" if tag else repo, "docker commit")
        self.check_storage(caller)
        key = self.store.begin(PendingImage(caller.user, caller.uid, "commit", (target.tagged(),), _now()))

        def settle(status: int | None, answer: bytes) -> None:
            made = [str(json.loads(answer).get("Id"))] if status == 201 else []
            self.store.settle(key, made)
            if made:
                eventlog.emit(EventType.IMAGE_COMMIT, source="proxy", user=caller.user, container=container,
                              image=target.tagged(), id=made[0])

        return Forward(request.target, after=settle)

    def made_by(self, user: str, tags: Iterable[str]) -> list[str]:
        """The images a finished build's tags name, with the chain of the classic builder's intermediate images
        below each, down to what is owned already or came from elsewhere: all of them the builder's."""
        found: list[str] = []
        for tag in tags:
            info = self.upstream.inspect("image", tag)
            while info is not None and len(found) < _CHAIN_LIMIT:
                image = str(info.get("Id"))
                if image in found or self.store.owner(image) is not None or _from_elsewhere(info, user):
                    break
                found.append(image)
                parent = str(info.get("Parent") or "")
                info = self.upstream.inspect("image", parent) if parent else None
        return found


def _from_elsewhere(info: dict[str, Any], user: str) -> bool:
    """Pulled (it has a registry digest) or named outside the user's namespace: a build that only says FROM
    ubuntu ends on ubuntu's own image, which stays shared."""
    names = [tag for tag in info.get("RepoTags") or () if tag != "<none>:<none>"]
    return bool(info.get("RepoDigests")) or any(not tag.startswith(f"{user}/") for tag in names)


def recover(actions: ImageActions, existing: Iterable[str]) -> None:
    """At start-up, before serving: builds and commits a killed proxy left pending are settled by what their tags
    name now, and the records of images removed meanwhile go."""
    for pending, found in actions.store.settle_interrupted(lambda pending: actions.made_by(pending.user,
                                                                                            pending.tags)):
        eventlog.emit({"build": EventType.IMAGE_BUILD, "commit": EventType.IMAGE_COMMIT}.get(pending.made_by,
                                                                                          EventType.IMAGE_LOAD),
                      source="proxy", user=pending.user, image=list(pending.tags), ids=found, interrupted=True)
    actions.store.forget_missing(existing)
