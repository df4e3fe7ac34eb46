"""Images made from what a user sends: a classic `docker build` through the proxy, where each query parameter has
a rule (allowed, forced or refused) and the context is spooled to disk and its Dockerfile read, so that every
image the build reads (FROM, COPY --from, the ONBUILD triggers of its bases) is one the caller may use; and
`docker load`, where an admin allows it, whose archive may name images only in the caller's namespace. Either
result is recorded as the caller's.

BuildKit is refused (`version=2`, `/session`, `/grpc`): it ignores per-build limits and cgroups, and its
entitlements are the daemon's, not the user's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ds01 import eventlog, labels
from ds01.config import ImageSettings
from ds01.errors import Denied
from ds01.eventlog.types import EventType
from ds01.proxy import buildcontext, dockerfile, imagenames, networks
from ds01.proxy.dockerfilelines import DockerfileError
from ds01.proxy.images import ImageActions, check_parameters
from ds01.proxy.imagestore import PendingImage
from ds01.proxy.outcomes import Forward, Outcome, Request
from ds01.proxy.runas import Caller
from ds01.reasons import Reason
from ds01.units import format_bytes

BUILDKIT_MESSAGE = ("ds01 builds use the classic builder: BuildKit ignores the limits and the cgroup of the user "
                    "who builds. Run DOCKER_BUILDKIT=0 docker build ..., or simply container image build NAME DIR.")
# What a user's build may ask for; what the proxy sets itself is forced over whatever the request said.
ALLOWED = frozenset({"t", "dockerfile", "buildargs", "labels", "target", "nocache", "pull", "rm", "forcerm", "q",
                     "cachefrom", "platform", "networkmode", "version"})
FORCED = frozenset({"cgroupparent", "memory", "memswap", "cpuquota", "cpuperiod", "shmsize"})
# Left out of the classic builder's cache key: a layer built through one user's proxy would serve another's build.
PROXY_ARGS = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"})
CPU_PERIOD = 100_000
DEFAULT_DOCKERFILE = "Dockerfile"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}  # the kernel's names, as /info gives them, and Docker's


def host_platform(info: Mapping[str, Any]) -> str:
    """The engine's platform (os/architecture) from its /info."""
    architecture = str(info.get("Architecture") or "")
    return f"{info.get('OSType') or 'linux'}/{_ARCHITECTURES.get(architecture, architecture)}"


@dataclass(frozen=True)
class BuildSettings:
    """What a build is forced to, for its caller."""

    cgroup_parent: str
    network: str  # the network its RUN steps join
    platform: str  # the host's, os/architecture


def _json_map(found: dict[str, list[str]], name: str) -> dict[str, Any]:
    text = (found.get(name) or ["{}"])[-1] or "{}"
    try:
        value = json.loads(text)
    except ValueError:
        raise Denied(Reason.BAD_REQUEST, f"the build's {name} is not JSON: {text[:80]!r}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str | None) for v in value.values()):
        raise Denied(Reason.BAD_REQUEST, f"the build's {name} must map names to strings")
    return value


def plan_query(caller: Caller, found: dict[str, list[str]], settings: BuildSettings,
               network_owner: Callable[[str], str | None]) -> dict[str, Any]:
    """The query the engine gets: what the caller may ask, checked, and what ds01 sets itself."""
    if (found.get("version") or ["1"])[-1] != "1":
        raise Denied(Reason.BUILDKIT, BUILDKIT_MESSAGE)
    forced = sorted(FORCED & set(found))
    if forced:
        raise Denied(Reason.BAD_REQUEST, f"the build parameter(s) {', '.join(forced)} are ds01's to set: your builds "
                                         "run within your own limits and cgroup. Leave them out.")
    tags = found.get("t") or []
    if not tags:
        raise Denied(Reason.IMAGE_NAMESPACE, f"name what you build: docker build -t {caller.user}/NAME . (an image "
                                             "without a name would be nobody's to find).")
    named = [imagenames.check_own_name(caller.user, tag, "docker build -t").tagged() for tag in tags]
    args = _json_map(found, "buildargs")
    proxies = sorted(name for name in args if name.casefold() in PROXY_ARGS)
    if proxies:
        raise Denied(Reason.BUILD_ARG, (
            f"the build arg(s) {', '.join(proxies)} are not allowed: the engine leaves them out of its cache, so a "
            "layer built through your proxy would be reused by someone else's build. Configure the proxy in the "
            "Dockerfile (ENV) if the build needs one, or ask an admin."))
    build_labels = {key: value for key, value in _json_map(found, "labels").items()
                    if not key.casefold().startswith(labels.LABEL_PREFIX)}
    platform = (found.get("platform") or [""])[-1]
    if platform and platform.lower() not in (settings.platform, settings.platform.split("/")[0]):
        raise Denied(Reason.BAD_REQUEST, f"this host builds for {settings.platform} only, not {platform}.")
    mode = (found.get("networkmode") or [""])[-1]
    if mode in networks.DEFAULT_NAMES:
        mode = settings.network
    elif mode != networks.NO_NETWORK and network_owner(mode) != caller.user and not caller.is_admin:
        raise Denied(Reason.NOT_OWNER, f"there is no network {mode} of yours to build on; builds use your own "
                                       f"network {settings.network} by default.")
    query: dict[str, Any] = {
        "t": named, "buildargs": json.dumps(args), "networkmode": mode,
        "labels": json.dumps({**build_labels, labels.USER: caller.user, labels.UID: str(caller.uid)}),
        "cgroupparent": settings.cgroup_parent, "memory": caller.limits.memory_bytes,
        "memswap": caller.limits.memory_bytes, "shmsize": caller.limits.shm_size_bytes,
        "cpuperiod": CPU_PERIOD, "cpuquota": int(caller.limits.cpus * CPU_PERIOD), "rm": "1",
    }
    for name in ("dockerfile", "target", "nocache", "pull", "forcerm", "q", "platform"):
        if found.get(name):
            query[name] = found[name][-1]
    return query


class BuildActions:
    def __init__(self, images: ImageActions, spool_dir: Path, settings: Callable[[Caller], BuildSettings],
                 network_owner: Callable[[str], str | None], image_settings: Callable[[], ImageSettings]) -> None:
        self.images = images
        self._spool_dir = spool_dir
        self._settings = settings
        self._network_owner = network_owner
        self._image_settings = image_settings

    def build(self, request: Request) -> Outcome:
        caller = request.session.caller
        found = check_parameters(request.query, ALLOWED, "build")
        query = plan_query(caller, found, self._settings(caller), self._network_owner)
        args = json.loads(query["buildargs"])
        limit = self._image_settings().max_context_size_bytes
        try:
            with buildcontext.spool(request.body_stream(), self._spool_dir, limit) as spooled:
                text = buildcontext.read_dockerfile(spooled, str(query.get("dockerfile") or DEFAULT_DOCKERFILE),
                                                    limit)
                self._check_reads(caller, text, args)
                context = spooled.open("rb")  # kept open: the spooled file goes with the context manager
        except buildcontext.ContextTooLarge as exc:
            raise Denied(Reason.CONTEXT_TOO_LARGE, f"{exc} (images.max_context_size)") from None
        except buildcontext.BuildContextError as exc:
            raise Denied(Reason.DOCKERFILE, str(exc)) from None
        try:
            self._check_cache_sources(caller, found, query)
            self.images.check_storage(caller)
        except BaseException:
            context.close()
            raise
        tags = tuple(query["t"])
        key = self.images.store.begin(PendingImage(caller.user, caller.uid, "build", tags,
                                                   datetime.now(UTC).isoformat(timespec="seconds")))

        def settle() -> None:
            made = self.images.made_by(caller.user, tags)
            self.images.store.settle(key, made)
            eventlog.emit(EventType.IMAGE_BUILD, source="proxy", user=caller.user, image=list(tags), ids=made,
                          interrupted=False)

        target = f"{request.path}?{urlencode(query, doseq=True)}"
        return Forward(target, body_file=context, closed=settle)

    def _check_reads(self, caller: Caller, text: str, args: Mapping[str, str | None]) -> None:
        """Every image the Dockerfile reads is the caller's or shared; one not here yet would be pulled by the
        engine, so it must be a pull the caller may make. The bases' ONBUILD triggers count as the Dockerfile."""
        try:
            reads = dockerfile.image_reads(text, args)
            triggers = {}
            for read in reads:
                if read.kind is dockerfile.ReadKind.FROM:
                    info = self.images.find(caller, read.reference)
                    triggers[read.reference] = list(((info or {}).get("Config") or {}).get("OnBuild") or [])
            reads = dockerfile.image_reads(text, args, triggers)
        except DockerfileError as exc:
            raise Denied(Reason.DOCKERFILE, str(exc)) from None
        settings = self._image_settings()
        for read in reads:
            if self.images.find(caller, read.reference) is None:
                self.images.check_pull_reference(caller, imagenames.parse(read.reference, "image the build reads"),
                                                 settings.allowed_registries)

    def _check_cache_sources(self, caller: Caller, found: dict[str, list[str]], query: dict[str, Any]) -> None:
        """The classic builder's cache is the engine's, shared by everyone: a user's build reuses only the layers
        of images the user may use (their own and shared ones), never another user's steps."""
        try:
            asked = [str(name) for name in json.loads((found.get("cachefrom") or ["[]"])[-1] or "[]")]
        except (ValueError, TypeError):
            raise Denied(Reason.BAD_REQUEST, "the build's cachefrom must be a JSON list of image names, as "
                                             "docker build --cache-from sends it") from None
        for name in asked:
            self.images.visible(caller, name)
        sources = asked or list(self.images.store.owned_by(caller.user))
        if sources:
            query["cachefrom"] = json.dumps(sources)
        else:
            query["nocache"] = "1"  # nothing of the caller's to reuse

    def load(self, request: Request) -> Outcome:
        """docker load (an admin turned it on): every name the archive gives its images is in the caller's
        namespace, and at least one is given, so that the result is theirs to find (an unnamed image would be
        nobody's)."""
        caller = request.session.caller
        check_parameters(request.query, frozenset({"quiet"}), "image load")
        limit = self._image_settings().max_context_size_bytes
        try:
            with buildcontext.spool(request.body_stream(), self._spool_dir, limit) as spooled:
                tags = _archive_tags(spooled, limit)
                archive = spooled.open("rb")
        except buildcontext.ContextTooLarge as exc:
            raise Denied(Reason.CONTEXT_TOO_LARGE, (
                f"the image archive {'unpacks to more' if exc.unpacked else 'is larger'} than "
                f"{format_bytes(exc.limit_bytes)}, the most one load may bring (images.max_context_size); nothing "
                "was loaded. Save fewer images in it, or ask an admin.")) from None
        except buildcontext.BuildContextError as exc:
            raise Denied(Reason.BAD_REQUEST, str(exc)) from None
        try:
            if not tags:
                raise Denied(Reason.IMAGE_NAMESPACE, f"the archive names no image: save it with a name "
                                                     f"(docker save {caller.user}/NAME) and load that.")
            named = tuple(imagenames.check_own_name(caller.user, tag, "docker load").tagged() for tag in tags)
            self.images.check_storage(caller)
        except BaseException:
            archive.close()
            raise
        key = self.images.store.begin(PendingImage(caller.user, caller.uid, "load", named,
                                                   datetime.now(UTC).isoformat(timespec="seconds")))

        def settle() -> None:
            made = self.images.made_by(caller.user, named)
            self.images.store.settle(key, made)
            eventlog.emit(EventType.IMAGE_LOAD, source="proxy", user=caller.user, image=list(named), ids=made)

        return Forward(request.target, body_file=archive, closed=settle)


def _archive_tags(path: Path, unpacked_limit: int) -> list[str]:
    """The names an image archive gives: manifest.json's RepoTags, and the legacy `repositories` file's."""
    tags: list[str] = []
    for member in ("manifest.json", "repositories"):
        data = buildcontext.read_member(path, member, unpacked_limit)
        if data is None:
            continue
        try:
            parsed = json.loads(data)
        except ValueError:
            raise Denied(Reason.BAD_REQUEST, f"the archive's {member} is not JSON") from None
        if member == "manifest.json" and isinstance(parsed, list):
            tags += [str(tag) for entry in parsed if isinstance(entry, dict) for tag in entry.get("RepoTags") or []]
        elif member == "repositories" and isinstance(parsed, dict):
            tags += [f"{repository}:{tag}" for repository, named in parsed.items() if isinstance(named, dict)
                     for tag in named]
        else:
            raise Denied(Reason.BAD_REQUEST, f"the archive's {member} is not what docker save writes")
    return tags
