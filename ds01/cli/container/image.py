"""`container image build|list|remove`: the caller's own images. They are USER/NAME on this server (USER is the
caller's sanitized login name), and only their owner can see them, run them or build from them. A build uses the
engine's classic builder, with DIR's Dockerfile, or with one written there from a base image and packages."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ds01.cli import Handler, add_command, add_format_option
from ds01.cli.container import buildcontext
from ds01.cli.container.client import ProxyClient
from ds01.cli.context import Context
from ds01.cli.output import print_json, print_table
from ds01.errors import ConfigError, Ds01Error, EngineError, UsageError
from ds01.identity import nss
from ds01.units import format_bytes

DEFAULT_TAG = "latest"
MAX_REPOSITORY_LENGTH = 255  # USER/NAME, as the engine takes it
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")  # one part of a repository's path
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_NAME_RULE = "lowercase letters and digits, separated by '.', '_' or '-', starting and ending with a letter or digit"
_PACKAGE = re.compile(r"[^\s'\"\\-][^\s'\"\\]*")
PROGRESS_SECONDS = 0.2
ERASE = "\r\x1b[K"  # back to the start of the terminal's line, and clear it

ACTIONS = (
    ("build", "build an image of yours from DIR's Dockerfile; without one, from a base image with --pip and --apt "
              "packages, writing the Dockerfile into DIR to edit and build again",
     "container image build torch-env --from pytorch/pytorch:latest --pip transformers --apt git"),
    ("list", "list your images (--all: the shared ones too)", "container image list --all"),
    ("remove", "remove one of your images", "container image remove torch-env"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    for name, summary, example in ACTIONS:
        action = add_command(actions, name, summary, example, parser.get_default("handler"))
        action.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks for errors")
        match name:
            case "build":
                _build_arguments(action)
            case "list":
                action.add_argument("--all", "-a", action="store_true", help="the shared images too (pulled ones)")
                add_format_option(action)
            case "remove":
                action.add_argument("name", metavar="NAME", help="NAME or NAME:TAG of your image (tag latest unless "
                                                                 "given), as `container image list` shows it")
                action.add_argument("-f", "--force", action="store_true",
                                    help="remove the name even while a container uses the image (the image itself "
                                         "stays until that container is removed)")


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help=f"the image's name ({_NAME_RULE}), or NAME:TAG; it is saved "
                                                     "as USER/NAME:latest (USER: your user name) unless a tag is given")
    parser.add_argument("directory", metavar="DIR", nargs="?", default=".",
                        help="the build context: the directory sent to the builder (default: the current one)")
    parser.add_argument("-f", "--file", metavar="DOCKERFILE", help="the Dockerfile (default: DIR/Dockerfile)")
    parser.add_argument("--from", dest="base", metavar="BASE",
                        help="when DIR has no Dockerfile: the base image of the one written there (default: "
                             "containers.default_image from the ds01 config)")
    parser.add_argument("--pip", nargs="+", action="extend", default=[], metavar="PKG",
                        help="when DIR has no Dockerfile: Python packages, installed with pip install --no-cache-dir "
                             "(give DIR before --pip and --apt, which take every word up to the next option)")
    parser.add_argument("--apt", nargs="+", action="extend", default=[], metavar="PKG",
                        help="when DIR has no Dockerfile: Debian or Ubuntu packages, installed with apt-get")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                        help="a value for the Dockerfile's ARG K; K alone passes K from your environment")
    parser.add_argument("--no-cache", action="store_true", help="run every step again, reusing no cached layer")
    parser.add_argument("--pull", action="store_true", help="pull a newer version of the base image first")


def run(args: argparse.Namespace, context: Context) -> int:
    handlers: dict[str, Handler] = {"build": _build, "list": _list, "remove": _remove}
    return handlers[args.action](args, context)


# --- names ---------------------------------------------------------------------------------------------------


def _owner_or_none() -> str | None:
    from ds01.identity.accounts import sanitize_username  # noqa: PLC0415 - accounts loads LDAP and the config

    login = nss.login_name(os.getuid())
    return None if login is None else sanitize_username(login)


def owner() -> str:
    """USER of the caller's images: their sanitized login name, as the proxy names them."""
    user = _owner_or_none()
    if user is None:
        raise Ds01Error(f"your uid {os.getuid()} has no name in the password database, so ds01 cannot name your "
                        "images. Ask your admin.")
    return user


@dataclass(frozen=True)
class ImageName:
    """One of the caller's own images: USER/NAME:TAG."""

    user: str
    name: str
    tag: str = DEFAULT_TAG

    @property
    def repository(self) -> str:
        return f"{self.user}/{self.name}"

    @property
    def short(self) -> str:
        """How the caller names it: NAME, or NAME:TAG for another tag than latest."""
        return self.name if self.tag == DEFAULT_TAG else f"{self.name}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def own_image(text: str, user: str) -> ImageName:
    """NAME, NAME:TAG, USER/NAME or USER/NAME:TAG as one of the caller's images; a usage error otherwise."""
    path, _, tag = text.partition(":")
    given_user, slash, name = path.rpartition("/")
    if slash and given_user != user:
        raise UsageError(f"{text} is not one of your images: yours are {user}/NAME (NAME for short); `container "
                         "image list` shows them.")
    if not _COMPONENT.fullmatch(name) or len(user) + 1 + len(name) > MAX_REPOSITORY_LENGTH:
        raise UsageError(f"{name!r} is not a valid image name: use {_NAME_RULE} (for example torch-env or "
                         "tools_2.1).")
    if tag and not _TAG.fullmatch(tag):
        raise UsageError(f"{tag!r} is not a valid tag: use up to 128 letters, digits, '_', '.' and '-', not starting "
                         "with '.' or '-' (for example v2).")
    return ImageName(user, name, tag or DEFAULT_TAG)


def own_or_given(proxy: ProxyClient, image: str) -> str:
    """For `container create --image`: the caller's own USER/NAME when IMAGE is a NAME[:TAG] they have an image
    of (NAME alone: tag latest, or their only tag of NAME), else IMAGE as given."""
    if "/" in image or "@" in image or (user := _owner_or_none()) is None:
        return image
    name, _, tag = image.partition(":")
    try:
        listed = proxy.images()
    except EngineError:
        raise
    except Ds01Error:  # refused: a proxy that lists no images has none of the caller's to prefer
        return image
    prefix = f"{user}/{name}:"
    tags = sorted({found.removeprefix(prefix) for item in listed for found in item.get("RepoTags") or []
                   if found.startswith(prefix)})
    if tag:
        return f"{prefix}{tag}" if tag in tags else image
    if DEFAULT_TAG in tags or len(tags) == 1:
        return f"{prefix}{DEFAULT_TAG if DEFAULT_TAG in tags else tags[0]}"
    if tags:
        raise UsageError(f"your image {user}/{name} has the tags {', '.join(tags)} and none is latest: say which, "
                         f"for example --image {name}:{tags[0]}.")
    return image


def short_id(image_id: str) -> str:
    """The 12 hex digits the docker CLI shows."""
    return image_id.removeprefix("sha256:")[:12]


# --- build ---------------------------------------------------------------------------------------------------


def dockerfile_text(base: str, apt: list[str], pip: list[str]) -> str:
    lines = ["# Written by `container image build`. Edit it and build again; with this file in place, --from, --pip",
             "# and --apt no longer apply.", f"FROM {base}"]
    if apt:
        lines += ["RUN apt-get update \\",
                  "    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\",
                  f"       {shlex.join(apt)} \\",
                  "    && rm -rf /var/lib/apt/lists/*"]
    if pip:
        lines.append(f"RUN pip install --no-cache-dir {shlex.join(pip)}")
    return "\n".join(lines) + "\n"


def _check_packages(option: str, packages: list[str]) -> None:
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise UsageError(f"{option} {package!r}: give package names or specifiers (such as numpy or 'torch>=2.1'), "
                             "without spaces, quotes or options; for anything more, edit the Dockerfile.")


class BuildFailed(Ds01Error):
    """The builder's own error: a step failed, or the Dockerfile is wrong."""


def _dockerfile(args: argparse.Namespace, context: Context, directory: Path, again: str) -> Path:
    """The Dockerfile to build with: -f, DIR/Dockerfile, or one written to DIR/Dockerfile from --from and packages."""
    path = Path(os.path.abspath(args.file)) if args.file else directory / "Dockerfile"
    if args.file and not path.is_file():
        raise UsageError(f"-f {args.file}: there is no such file. Leave -f out to use DIR/Dockerfile, or to have one "
                         "written from --from, --pip and --apt.")
    if path.is_dir():
        raise UsageError(f"{path} is a directory: give the Dockerfile with -f FILE.")
    if path.exists():
        if args.base or args.pip or args.apt:
            raise UsageError(f"{path} exists, and the build uses it as it is: --from, --pip and --apt only write a "
                             f"Dockerfile where there is none. Edit {path}, or remove it to have a new one written.")
        return path
    base = args.base or context.config.containers.default_image
    if not base:
        raise ConfigError(f"no base image: give one with --from (for example --from pytorch/pytorch:latest); the ds01 "
                          f"config ({context.config.source}) sets no containers.default_image.")
    if not _PACKAGE.fullmatch(base):
        raise UsageError(f"--from {base!r}: give an image name, such as pytorch/pytorch:latest.")
    _check_packages("--apt", args.apt)
    _check_packages("--pip", args.pip)
    try:
        with path.open("x", encoding="utf-8") as file:
            file.write(dockerfile_text(base, args.apt, args.pip))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}. Build from a directory of yours.") from None
    print(f"wrote {path} (FROM {base}); to change the image, edit it and build again with `{again}`", file=sys.stderr)
    return path


def _build_args(given: list[str]) -> dict[str, str]:
    found = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not key or (not sep and key not in os.environ):
            raise UsageError(f"--build-arg {item!r}: write K=V (for example --build-arg VERSION=2.1), or K alone for "
                             "a variable set in your environment.")
        found[key] = value if sep else os.environ[key]
    return found


def _sending(context: buildcontext.Context, out: TextIO) -> Iterator[bytes]:
    """The context's bytes on their way to the proxy; on a terminal, a line that counts them."""
    terminal, total, sent, shown = out.isatty(), format_bytes(context.size_bytes), 0, 0.0
    for chunk in buildcontext.stream(context):
        yield chunk
        sent += len(chunk)
        if terminal and time.monotonic() - shown >= PROGRESS_SECONDS:
            shown = time.monotonic()
            out.write(f"{ERASE}sending the build context: {format_bytes(sent)} of {total}")
            out.flush()
    files = f"{context.files} file{'' if context.files == 1 else 's'}"
    out.write(f"{ERASE if terminal else ''}sent the build context: {total}, {files}\n")
    out.flush()


def show_build(messages: Iterable[dict[str, Any]], out: TextIO, terminal: bool) -> str | None:
    """Print the builder's messages as the docker CLI does; the built image's id, None if none was named. On a
    terminal, each layer of a pull keeps one line that its progress rewrites."""
    lines: dict[str, int] = {}  # a layer's line, counted from the first of the block being rewritten
    said: dict[str, str] = {}  # off a terminal: each layer's last status, so its progress is not printed again
    built = None
    for message in messages:
        error = message.get("error") or (message.get("errorDetail") or {}).get("message")
        if error:
            raise BuildFailed(str(error).strip().rstrip("."))
        if isinstance(message.get("aux"), dict) and message["aux"].get("ID"):
            built = str(message["aux"]["ID"])
        elif "stream" in message:
            lines.clear()
            out.write(str(message["stream"]))
        elif message.get("status"):
            layer = str(message.get("id") or "")
            text = f"{layer}: {message['status']}" if layer else str(message["status"])
            if terminal and layer and ("progress" in message or "progressDetail" in message):
                if layer not in lines:
                    lines[layer] = len(lines)
                    out.write("\n")
                up = len(lines) - lines[layer]
                out.write(f"\x1b[{up}A\r\x1b[2K{text} {message.get('progress') or ''}\r\x1b[{up}B")
            elif terminal or said.get(layer) != text:
                lines.clear()
                said[layer] = text
                out.write(f"{text}\n")
        out.flush()
    return built


def _build(args: argparse.Namespace, context: Context) -> int:
    image = own_image(args.name, owner())
    directory = Path(os.path.abspath(args.directory))
    if not directory.exists() and not args.file and directory.parent.is_dir():
        # A new image's own directory: made here, to hold the Dockerfile written into it.
        try:
            directory.mkdir(mode=0o755)
        except OSError as exc:
            raise UsageError(f"cannot make the build context {args.directory}: {exc.strerror}.") from None
        print(f"made {args.directory} for the build context", file=sys.stderr)
    if not directory.is_dir():
        raise UsageError(f"{args.directory} is not a directory: give the build context as DIR (default: the current "
                         "directory).")
    build_args = _build_args(args.build_arg)
    again = shlex.join(["container", "image", "build", args.name, args.directory,
                        *(["-f", args.file] if args.file else [])])
    dockerfile = _dockerfile(args, context, directory, again)
    prepared = buildcontext.prepare(directory, dockerfile)
    if prepared.left_out_special:
        print(f"left out {prepared.left_out_special} sockets, FIFOs or devices in {directory}: a build context holds "
              "files, directories and links", file=sys.stderr)
    query: dict[str, str | int] = {"t": str(image), "dockerfile": prepared.dockerfile,
                                   "buildargs": json.dumps(build_args), "nocache": int(args.no_cache),
                                   "pull": int(args.pull), "rm": 1, "forcerm": 1}
    with ProxyClient.of(context.paths) as proxy:
        messages = proxy.build(query, _sending(prepared, sys.stderr), prepared.size_bytes, str(image))
        try:
            built = show_build(messages, sys.stdout, sys.stdout.isatty())
        except BuildFailed as exc:
            raise BuildFailed(f"the build of {image} failed: {exc}. Fix {dockerfile} and build again.") from exc
    if built is None:
        raise Ds01Error(f"the build of {image} ended without naming an image: the proxy or the engine may have "
                        "stopped. Build again; if it persists, tell your admin.")
    print(f"built {image}, image {short_id(built)}")
    print(f"run it: container create NAME --image {image.short}")
    return 0


# --- list and remove -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str  # NAME for the caller's own, the whole repository for a shared one
    tag: str
    image: str  # the whole name, REPOSITORY:TAG
    id: str
    size_bytes: int
    created: datetime | None
    shared: bool


def rows(listed: list[dict[str, Any]], user: str, everything: bool) -> list[Row]:
    """One row per name of each image: the caller's own first, then (`everything`) the shared ones."""
    found = []
    for item in listed:
        created = datetime.fromtimestamp(item["Created"], UTC) if isinstance(item.get("Created"), int) else None
        for tagged in item.get("RepoTags") or []:
            repository, _, tag = tagged.rpartition(":")
            own = repository.startswith(f"{user}/")
            if repository and repository != "<none>" and (own or everything):
                found.append(Row(repository.removeprefix(f"{user}/") if own else repository, tag, tagged,
                                 str(item.get("Id") or ""), int(item.get("Size") or 0), created, not own))
    return sorted(found, key=lambda row: (row.shared, row.name, row.tag))


def _list(args: argparse.Namespace, context: Context) -> int:
    user = owner()
    with ProxyClient.of(context.paths) as proxy:
        found = rows(proxy.images(), user, args.all)
    if args.format == "json":
        print_json([{**vars(row), "created": row.created.isoformat(timespec="seconds") if row.created else None}
                    for row in found])
        return 0
    if not found:
        print("you have no images" + (" and there are no shared ones" if args.all else "") +
              "; build one with `container image build NAME --pip PKG`")
        return 0
    print_table(("NAME", "TAG", "ID", "SIZE", "CREATED", *(("WHOSE",) if args.all else ())), [
        (row.name, row.tag, short_id(row.id), format_bytes(row.size_bytes),
         row.created.astimezone().strftime("%Y-%m-%d %H:%M") if row.created else "-",
         *(("shared" if row.shared else "yours",) if args.all else ())) for row in found])
    return 0


def _remove(args: argparse.Namespace, context: Context) -> int:
    image = own_image(args.name, owner())
    with ProxyClient.of(context.paths) as proxy:
        answer = proxy.remove_image(str(image), force=args.force)
    deleted = [str(entry["Deleted"]) for entry in answer if entry.get("Deleted")]
    if deleted:
        print(f"removed {image} (image {short_id(deleted[0])})")
    else:
        print(f"removed the name {image}; the image itself stays while another name or a container uses it")
    return 0
