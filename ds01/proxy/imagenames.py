"""Image names as the engine reads them, and the rule for the names users make: only under their own namespace.

A reference is `[REGISTRY/]PATH[:TAG][@DIGEST]`; the first component is a registry when it has a `.` or a `:` or
is `localhost`, otherwise the registry is docker.io (and a one-component path is `library/NAME` there). A user's
namespace is `USER/...` on docker.io, USER their sanitized name: `alice/tools` is alice's to build, tag, commit
and load into, and nobody else's, not even by a pull from a registry of that name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ds01.errors import Denied
from ds01.reasons import Reason

DEFAULT_REGISTRY = "docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_REGISTRY = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                       r"(?::[0-9]+)?|\[[0-9A-Fa-f:]+\](?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
MAX_NAME_LENGTH = 255
_INSTEAD = {  # what to write instead, by how the name was made
    "docker build -t": "Use -t {wanted}", "docker commit": "Commit it as {wanted}: docker commit CONTAINER {wanted}",
    "docker tag": "Tag it {wanted}: docker tag IMAGE {wanted}",
    "docker load": "Save it under that name first (docker tag IMAGE {wanted}; docker save {wanted}), then load that",
    "docker push": "Push a name of yours: docker tag IMAGE {wanted}; docker push {wanted}",
}


@dataclass(frozen=True)
class Reference:
    registry: str
    path: str  # library/ubuntu, alice/tools
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """As the engine lists it in RepoTags: docker.io and library/ left out."""
        if self.registry != DEFAULT_REGISTRY:
            return f"{self.registry}/{self.path}"
        return self.path.removeprefix(OFFICIAL_PREFIX)

    @property
    def namespace(self) -> str | None:
        """The first path component on docker.io, where users' own images live; None elsewhere."""
        if self.registry != DEFAULT_REGISTRY or self.path.startswith(OFFICIAL_PREFIX):
            return None
        return self.path.split("/", 1)[0]

    def tagged(self) -> str:
        return f"{self.repository}:{self.tag or DEFAULT_TAG}"


def parse(text: str, what: str = "image name") -> Reference:
    """A reference as the engine normalises it; a malformed one is refused (400) rather than guessed at."""
    name, digest = text, None
    if "@" in name:
        name, digest = name.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise _bad(text, what, f"{digest!r} is not a digest")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise _bad(text, what, f"{tag!r} is not a tag")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise _bad(text, what, "the name is empty or too long")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _REGISTRY.fullmatch(first):
            raise _bad(text, what, f"{first!r} is not a registry host")
        registry, path = first.lower() if first != "localhost" else first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if not all(_COMPONENT.fullmatch(component) for component in path.split("/")):
        raise _bad(text, what, "each part of the path must be lowercase letters and digits, separated by . _ or -")
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return Reference(registry, path, tag, digest)


def _bad(text: str, what: str, why: str) -> Denied:
    return Denied(Reason.BAD_REQUEST, f"{text!r} is not an {what} the engine would read: {why}.")


def check_own_name(user: str, text: str, how: str) -> Reference:
    """A name a user makes (by `how`: build -t, docker tag, commit, load) lies in their namespace."""
    reference = parse(text)
    if reference.namespace != user or reference.digest is not None:
        wanted = f"{user}/{reference.path.rsplit('/', 1)[-1]}"
        raise Denied(Reason.IMAGE_NAMESPACE, (
            f"{how} may name images only {user}/NAME[:TAG] (your namespace on this server), not {text}: other "
            f"names are other users' or shared. {_INSTEAD.get(how, 'Name it {wanted}').format(wanted=wanted)}."))
    return reference

