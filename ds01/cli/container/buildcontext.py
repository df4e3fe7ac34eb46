"""A build's context as the docker CLI sends it: DIR as an uncompressed tar stream, less what DIR/.dockerignore
leaves out, read from disk as it is sent (never whole in memory).

`.dockerignore` is read the way the docker CLI reads it: `#` lines are comments, patterns are relative to DIR
(a leading `/` is dropped), `*` and `?` stop at `/`, `**` spans any number of directories, a pattern that names a
directory covers everything in it, `!` brings back what an earlier pattern left out, and the last matching
pattern decides. The Dockerfile and `.dockerignore` are always sent, as the engine needs them. A left-out
directory is not entered unless a `!` pattern names something below it, as docker does. Files, directories and
symbolic links are sent (links as links, wherever they point); sockets, FIFOs and devices are left out.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ds01.errors import Ds01Error, UsageError

IGNORE_FILE = ".dockerignore"
BLOCK_BYTES = 512  # tar's unit: each header and each file's padded content
END_BYTES = 2 * BLOCK_BYTES  # two zero blocks end an archive
READ_BYTES = 1 << 20
FLUSH_BYTES = 256 << 10  # small headers and files go out together, not one write each
Kind = Literal["file", "directory", "symlink"]


@dataclass(frozen=True)
class Pattern:
    text: str  # as cleaned, without its `!`
    exception: bool  # a `!` pattern: brings back what an earlier one left out
    regex: re.Pattern[str]


def _translate(pattern: str) -> str:
    """A cleaned pattern as a regular expression, with the docker CLI's meaning of `*`, `?`, `**` and `[...]`."""
    out, i = ["^"], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 3 if pattern.startswith("**/", i) else 2
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        end = pattern.find("]", i + 1) if ch == "[" else -1
        if end > 0:  # a character class, as Go's filepath.Match reads it
            out.append(pattern[i:end + 1])
            i = end + 1
            continue
        if ch == "\\" and i + 1 < len(pattern):  # the next character as itself
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(ch) or re.escape(ch))
        i += 1
    return "".join(out) + "$"


def parse_ignore(text: str, source: str = IGNORE_FILE) -> list[Pattern]:
    patterns = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if line.startswith("#") or not line.strip():
            continue
        body = line.strip()
        exception = body.startswith("!")
        body = body[1:].strip() if exception else body
        if not body:
            raise UsageError(f"{source} line {number}: {line.strip()!r} names nothing; write !PATTERN to bring a "
                             "left-out path back.")
        cleaned = posixpath.normpath(body)
        cleaned = cleaned.lstrip("/") or cleaned
        try:
            patterns.append(Pattern(cleaned, exception, re.compile(_translate(cleaned))))
        except re.error as exc:
            raise UsageError(f"{source} line {number}: {line.strip()!r} is not a pattern ({exc}).") from None
    return patterns


def _kept(name: str) -> Pattern:
    return Pattern(name, True, re.compile(f"^{re.escape(name)}$"))


def excluded(path: str, patterns: Sequence[Pattern]) -> bool:
    """Whether the .dockerignore patterns leave out `path` (relative to DIR, with `/`), or a directory it is in."""
    parents = path.split("/")[:-1]
    above = ["/".join(parents[:depth]) for depth in range(1, len(parents) + 1)]
    matched = False
    for pattern in patterns:
        if pattern.exception != matched:  # only a `!` can undo a match, and only a match needs undoing
            continue
        if pattern.regex.match(path) or any(pattern.regex.match(parent) for parent in above):
            matched = not pattern.exception
    return matched


def _may_bring_back(directory: str, patterns: Sequence[Pattern]) -> bool:
    return any(pattern.exception and f"{pattern.text}/".startswith(f"{directory}/") for pattern in patterns)


@dataclass(frozen=True)
class Member:
    name: str  # the path in the archive, relative to DIR, with `/`
    kind: Kind
    mode: int  # permission bits
    mtime: int
    size: int = 0  # of a file's content
    source: Path | bytes = b""  # where a file's content is read from, or the content itself
    link: str = ""  # where a symbolic link points


@dataclass(frozen=True)
class Context:
    directory: Path
    dockerfile: str  # its name in the archive: the build's `dockerfile` parameter
    members: tuple[Member, ...]
    left_out_special: int  # sockets, FIFOs and devices in DIR, not sent
    size_bytes: int  # the tar stream's exact length

    @property
    def files(self) -> int:
        return sum(member.kind == "file" for member in self.members)


def _unreadable(path: Path, exc: OSError) -> UsageError:
    return UsageError(f"cannot read {path} in the build context ({exc.strerror}). Make it readable, or leave it out "
                      f"with a line in {IGNORE_FILE}.")


def _member(name: str, path: Path, status: os.stat_result) -> Member:
    mode, mtime = stat.S_IMODE(status.st_mode), int(status.st_mtime)
    if stat.S_ISDIR(status.st_mode):
        return Member(name, "directory", mode, mtime)
    if stat.S_ISLNK(status.st_mode):
        try:
            return Member(name, "symlink", mode, mtime, link=os.readlink(path))
        except OSError as exc:
            raise _unreadable(path, exc) from None
    if not os.access(path, os.R_OK):
        raise _unreadable(path, PermissionError(13, "Permission denied"))
    return Member(name, "file", mode, mtime, size=status.st_size, source=path)


def _walk(directory: Path, prefix: str, patterns: Sequence[Pattern], special: list[str]) -> Iterator[Member]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise _unreadable(directory, exc) from None
    for entry in entries:
        name, path = prefix + entry.name, Path(entry.path)
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        is_directory = stat.S_ISDIR(status.st_mode)
        left_out = excluded(name, patterns)
        if left_out and not (is_directory and _may_bring_back(name, patterns)):
            continue
        if not (is_directory or stat.S_ISREG(status.st_mode) or stat.S_ISLNK(status.st_mode)):
            special.append(name)
            continue
        if not left_out:
            yield _member(name, path, status)
        if is_directory:
            yield from _walk(path, f"{name}/", patterns, special)


def _header(member: Member) -> bytes:
    """A member's tar header. Owner 0:0 and no owner names, as the docker CLI sends a context: who owned the
    files on this host means nothing in an image."""
    info = tarfile.TarInfo(member.name)
    info.mode, info.mtime = member.mode, member.mtime
    match member.kind:
        case "directory":
            info.type = tarfile.DIRTYPE
        case "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, member.link
        case "file":
            info.size = member.size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % BLOCK_BYTES


def prepare(directory: Path, dockerfile: Path) -> Context:
    """What a build of `directory` with `dockerfile` sends. A Dockerfile outside the directory goes in under a name
    of its own, as the docker CLI sends it."""
    ignore = directory / IGNORE_FILE
    try:
        patterns = parse_ignore(ignore.read_text(encoding="utf-8", errors="surrogateescape"), str(ignore))
    except FileNotFoundError:
        patterns = []
    except OSError as exc:
        raise _unreadable(ignore, exc) from None
    inside = dockerfile.is_relative_to(directory)
    name = dockerfile.relative_to(directory).as_posix() if inside else f".dockerfile.{os.urandom(10).hex()}"
    patterns += [_kept(kept) for kept in (IGNORE_FILE, name) if excluded(kept, patterns)]
    special: list[str] = []
    members = list(_walk(directory, "", patterns, special))
    if not inside:
        try:
            content = dockerfile.read_bytes()
        except OSError as exc:
            raise _unreadable(dockerfile, exc) from None
        members.append(Member(name, "file", 0o644, int(dockerfile.stat().st_mtime), len(content), content))
    size = sum(len(_header(member)) + member.size + _padding(member.size) for member in members) + END_BYTES
    return Context(directory, name, tuple(members), len(special), size)


def _content(member: Member) -> Iterator[bytes]:
    if isinstance(member.source, bytes):
        yield member.source
        return
    left = member.size
    try:
        with member.source.open("rb") as file:
            while left and (piece := file.read(min(left, READ_BYTES))):
                left -= len(piece)
                yield piece
    except OSError as exc:
        raise _unreadable(member.source, exc) from None
    if left:
        raise Ds01Error(f"{member.source} got shorter while it was being sent, so the build was not started. Run "
                        "the build again when nothing is writing to the directory.")


def _pieces(context: Context) -> Iterator[bytes]:
    for member in context.members:
        yield _header(member)
        if member.kind == "file":
            yield from _content(member)
            yield b"\0" * _padding(member.size)
    yield b"\0" * END_BYTES


def stream(context: Context) -> Iterator[bytes]:
    """The tar stream, exactly `context.size_bytes` long (a file that grew is sent as long as it was)."""
    held: list[bytes] = []
    size = 0
    for piece in _pieces(context):
        held.append(piece)
        size += len(piece)
        if size >= FLUSH_BYTES:
            yield b"".join(held)
            held, size = [], 0
    if held:
        yield b"".join(held)
