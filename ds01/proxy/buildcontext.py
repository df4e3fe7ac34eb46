"""The build context of `POST /build`: the request body spooled to disk unchanged, and its Dockerfile read the way
the engine reads it.

The engine (moby daemon/builder/remotecontext) picks the decompressor by the body's magic bytes, unpacks the tar
with Go's archive/tar, then opens the `dockerfile` parameter inside the unpacked tree, following symlinks but
never out of it, and falls back to "dockerfile" when the default "Dockerfile" is missing. ds01 must check the
file the engine will build, so the archive is read as Go reads it (Python's tarfile disagrees with Go on the
ustar prefix of old headers, on GNU sparse names and on global PAX records), and an archive whose unpacked tree
could differ from a reading entry by entry is refused: an entry written through a symlink, a directory replaced
by a file (the engine would delete what is in it), a hard link to a symlink.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import posixpath
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ds01.errors import Ds01Error, UsageError
from ds01.units import format_size

DEFAULT_DOCKERFILE = "Dockerfile"
DOCKERFILE_LIMIT_BYTES = 1 << 20  # held in memory to parse; real Dockerfiles are kilobytes
_CHUNK_BYTES = 1 << 20
_BLOCK = 512
_SPECIAL_LIMIT_BYTES = 1 << 20  # Go's archive/tar refuses longer PAX records and GNU long names
_TRACKED_LIMIT = 250_000  # directories and symlinks remembered to resolve the Dockerfile's path
_FOLLOW_LIMIT = 255  # path steps moby/sys/symlink takes before it gives up
_REGULAR, _HARD_LINK, _SYMLINK, _DIRECTORY = 0x30, 0x31, 0x32, 0x35
_HEADER_ONLY = frozenset(b"123456")  # link, symlink, devices, directory, FIFO: no data follows
_KINDS = {0x31: "a hard link (copy the file instead of linking it)", 0x33: "a device", 0x34: "a device",
          0x35: "a directory", 0x36: "a FIFO"}
_GO_INT = re.compile(rb"[+-]?[0-9]+")


class ContextTooLarge(Ds01Error):
    """The request body is larger than the limit; the proxy answers 413."""

    def __init__(self, limit_bytes: int, unpacked: bool = False) -> None:
        size = format_size(limit_bytes)
        super().__init__(f"the build context {'unpacks to more' if unpacked else 'is larger'} than "
                         f"{size}{' bytes' * size.isdigit()}, the limit for one build; nothing was built. Leave files "
                         "out of it with a .dockerignore.")
        self.limit_bytes = limit_bytes
        self.unpacked = unpacked


class BuildContextError(UsageError):
    """The build context cannot be read, or its Dockerfile is missing, not a file or ambiguous."""


@contextmanager
def spool(stream: BinaryIO, directory: Path, limit: int) -> Iterator[Path]:
    """The request body copied byte for byte, in chunks, to a file only its owner can read in `directory`; the
    file is removed when the block ends. Raises ContextTooLarge once more than `limit` bytes arrive, leaving no
    file and reading at most `limit` + 1 bytes."""
    descriptor, name = tempfile.mkstemp(prefix="build-context-", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as out:
            total = 0
            while chunk := stream.read(min(_CHUNK_BYTES, limit + 1 - total)):
                total += len(chunk)
                if total > limit:
                    raise ContextTooLarge(limit)
                out.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


def read_dockerfile(path: Path, name: str, unpacked_limit: int) -> str:
    """The Dockerfile the engine builds from the spooled context at `path`; `name` is the `dockerfile` query
    parameter ("" for the default). Reads only the spooled file; raises BuildContextError, and ContextTooLarge
    when the archive unpacks to more than `unpacked_limit` bytes (a small compressed context can unpack to
    enough to fill the engine's disk)."""
    name = name or DEFAULT_DOCKERFILE
    relative = posixpath.normpath(name.lstrip("/"))  # the engine joins the name to the context's root
    if relative == ".." or relative.startswith("../") or "\x00" in relative:
        raise BuildContextError(f"the Dockerfile {name!r} is not a path inside the build context; name it by its "
                                "path there (docker build -f adds a Dockerfile from elsewhere for you)")
    tree = _scan(path, {relative, "dockerfile"}, unpacked_limit)
    found = _lookup(path, tree, relative, unpacked_limit)
    if found is None and name == DEFAULT_DOCKERFILE:  # the engine's fallback for the default name only
        found = _lookup(path, tree, "dockerfile", unpacked_limit)
    if found is None:
        raise BuildContextError(f"the build context has no Dockerfile {name!r}; put it at the context's root or "
                                "name its path with docker build -f")
    if found.kind != _REGULAR:
        raise BuildContextError(f"the Dockerfile {name!r} is {_KINDS.get(found.kind, 'not a file')} in the build "
                                "context; it must be a regular file")
    if found.data is None:
        raise BuildContextError(f"the Dockerfile {name!r} is larger than {format_size(DOCKERFILE_LIMIT_BYTES)}, "
                                "more than ds01 reads; move large content into files it COPYs")
    if not found.data:
        raise BuildContextError(f"the Dockerfile {name!r} is empty; write at least a FROM")
    try:
        return found.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BuildContextError(f"the Dockerfile {name!r} is not UTF-8 text ({exc}); save it as UTF-8") from None


def read_member(path: Path, name: str, unpacked_limit: int) -> bytes | None:
    """A regular file of the archive at `path` (an image archive's manifest.json, say), as the engine would find
    it unpacked, at most DOCKERFILE_LIMIT_BYTES; None when there is none. ContextTooLarge as read_dockerfile."""
    found = _lookup(path, _scan(path, {name}, unpacked_limit), name, unpacked_limit)
    if found is None:
        return None
    if found.kind != _REGULAR or found.data is None:
        raise BuildContextError(f"{name} in the archive is not a regular file of at most "
                                f"{format_size(DOCKERFILE_LIMIT_BYTES)}; send an archive as docker save makes it")
    return found.data


@dataclass(frozen=True)
class _Header:
    name: bytes
    kind: int  # the tar type flag
    size: int  # of the data that follows
    linkname: bytes


@dataclass(frozen=True)
class _Found:
    kind: int
    data: bytes | None  # a regular file's bytes; None when longer than the limit or not a regular file


@dataclass
class _Tree:
    """The unpacked tree as far as finding the Dockerfile needs it."""

    names: set[str]  # whose entries are kept in `found`
    links: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    found: dict[str, _Found] = field(default_factory=dict)


def _refused(what: str) -> BuildContextError:
    return BuildContextError(f"the build context {what}; nothing was built. Send a tar archive (plain, gzip, bzip2 "
                             "or xz) of plain files, directories and symlinks, as docker build makes it.")


def _lookup(path: Path, tree: _Tree, relative: str, unpacked_limit: int) -> _Found | None:
    target = _resolve(tree.links, relative)
    if target == "." or target in tree.dirs:
        return _Found(_DIRECTORY, None)
    if target not in tree.names:  # a symlink led elsewhere: read the archive again for that entry
        tree = _scan(path, {target}, unpacked_limit)
    return tree.found.get(target)


def _resolve(links: dict[str, str], relative: str) -> str:
    """The path with its symlinks followed inside the context, as moby/sys/symlink's FollowSymlinkInScope does:
    an absolute target starts again at the root, and '..' stops there."""
    pending, resolved, steps = posixpath.normpath("/" + relative), "", 0
    while pending:
        steps += 1
        if steps > _FOLLOW_LIMIT + 1:
            raise BuildContextError(f"the Dockerfile path {relative!r} meets too many symlinks in the build context")
        part, _, pending = pending.partition("/")
        if not part:
            continue
        clean = posixpath.normpath("/" + resolved + part).lstrip("/")
        if not clean:
            resolved = ""
        elif clean in links:
            resolved = "" if links[clean].startswith("/") else resolved
            pending = links[clean] + "/" + pending
        else:
            resolved = clean + "/"
    return posixpath.normpath(resolved or ".")


def _scan(path: Path, names: set[str], unpacked_limit: int) -> _Tree:
    tree = _Tree(names)
    try:
        with path.open("rb") as raw, _decompressed(raw) as stream:
            archive = _Tar(stream, unpacked_limit)
            for header in archive:
                name = _place(tree, header)
                if name in names:
                    data = archive.data(DOCKERFILE_LIMIT_BYTES) if header.kind == _REGULAR else None
                    tree.found[name] = _Found(header.kind, data)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _refused(f"could not be read ({exc})") from None
    return tree


@contextmanager
def _decompressed(raw: io.BufferedReader) -> Iterator[io.BufferedIOBase]:
    """The tar stream, decompressed by magic bytes in the engine's order: bzip2, gzip, xz, zstd, else plain."""
    magic = raw.peek(8)[:8]
    if magic.startswith(b"\x28\xb5\x2f\xfd") or int.from_bytes(magic[:4], "little") & ~0xF == 0x184D2A50:
        raise BuildContextError("the build context is compressed with zstd, which ds01 cannot read; send it plain "
                                "or compressed with gzip, bzip2 or xz")
    with _opener(magic)(raw) as stream:
        yield stream


def _opener(magic: bytes) -> Callable[[io.BufferedReader], io.BufferedIOBase]:
    if magic.startswith(b"BZh"):
        return bz2.BZ2File
    if magic.startswith(b"\x1f\x8b\x08"):
        return lambda raw: gzip.GzipFile(fileobj=raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lambda raw: lzma.LZMAFile(raw, format=lzma.FORMAT_XZ)
    return lambda raw: raw


def _place(tree: _Tree, header: _Header) -> str:
    """Record an entry as the engine unpacks it; refuse one that would make the tree differ from the entries."""
    name = _entry_name(header.name)
    if name == ".":
        if header.kind != _DIRECTORY:
            raise _refused("has an entry for its root that is not a directory")
        return name
    parts = name.split("/")
    parents = ["/".join(parts[:depth]) for depth in range(1, len(parts))]
    if through := next((parent for parent in parents if parent in tree.links), None):
        raise _refused(f"has {name!r} beneath the symlink {through!r}, which the engine would write through")
    if header.kind != _DIRECTORY and name in tree.dirs:
        raise _refused(f"replaces the directory {name!r} with a file, which makes the engine delete its contents")
    if header.kind == _HARD_LINK:
        target = _entry_name(header.linkname).split("/")
        if any("/".join(target[:depth]) in tree.links for depth in range(1, len(target) + 1)):
            raise _refused(f"has the hard link {name!r} to or through a symlink")
    tree.dirs.update(parents)
    if header.kind == _DIRECTORY:
        tree.dirs.add(name)
    if header.kind == _SYMLINK:
        tree.links[name] = header.linkname.decode("utf-8", "surrogateescape")
    else:
        tree.links.pop(name, None)
    if len(tree.dirs) + len(tree.links) > _TRACKED_LIMIT:
        raise _refused(f"has more than {_TRACKED_LIMIT} directories and symlinks")
    return name


def _entry_name(raw: bytes) -> str:
    name = posixpath.normpath(raw.decode("utf-8", "surrogateescape").lstrip("/"))
    if name == ".." or name.startswith("../"):
        raise _refused(f"has the entry {name!r}, outside the context")
    return name


class _Tar:
    """Go's archive/tar reader, for what the engine unpacks: entry names, types, sizes and link targets."""

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        self.stream = stream
        self.limit = limit  # bytes of the unpacked archive read at most
        self.total = 0
        self.remaining = 0  # data bytes of the current entry not read yet
        self.padding = 0

    def __iter__(self) -> Iterator[_Header]:
        while (header := self._next()) is not None:
            yield header

    def data(self, limit: int) -> bytes | None:
        """The current entry's data, or None when it is longer than `limit` (it is then skipped)."""
        if self.remaining > limit:
            return None
        data, self.remaining = self._read(self.remaining), 0
        return data

    def _read(self, size: int, partial: bool = False) -> bytes:
        data = b""
        while len(data) < size and (chunk := self.stream.read(min(size - len(data), _CHUNK_BYTES))):
            data += chunk
            self.total += len(chunk)
            if self.total > self.limit:
                raise ContextTooLarge(self.limit, unpacked=True)
        if len(data) < size and not (partial and not data):
            raise _refused("is truncated")
        return data

    def _next(self) -> _Header | None:
        meta: dict[int, bytes] = {}  # the data of the PAX and GNU headers before the entry, by type
        while True:
            while self.remaining:  # the rest of the previous entry, then its padding
                self.remaining -= len(self._read(min(self.remaining, _CHUNK_BYTES)))
            if self.padding and not self._read(self.padding, partial=True):
                return None  # Go ends cleanly when the data ends without its padding
            self.padding = 0
            if not (block := self._read(_BLOCK, partial=True)):
                return None
            if block == bytes(_BLOCK):
                if not (block := self._read(_BLOCK, partial=True)) or block == bytes(_BLOCK):
                    return None
                raise _refused("has data after a zero block")
            header = _header(block)
            self.remaining = 0 if header.kind in _HEADER_ONLY else header.size
            if self.remaining < 0:
                raise _refused("has an entry with a negative size")
            self.padding = -self.remaining % _BLOCK
            if header.kind not in b"xgLK":
                return self._entry(header, _pax(meta.get(0x78, b"")), _cstring(meta.get(0x4C, b"")),
                                   _cstring(meta.get(0x4B, b"")))
            if self.remaining > _SPECIAL_LIMIT_BYTES:
                raise _refused("has an extended header longer than 1 MiB")
            special, self.remaining = self._read(self.remaining), 0
            if header.kind in b"xg":
                _pax(special)  # Go refuses a malformed one at once
            # Go hands a global PAX header (g) to the engine as an entry, which skips it and what came before
            meta = {} if header.kind == 0x67 else {**meta, header.kind: special}

    def _entry(self, header: _Header, pax: dict[bytes, bytes], long_name: bytes, long_link: bytes) -> _Header:
        name, kind, size, linkname = header.name, header.kind, header.size, header.linkname
        for key, value in pax.items():
            if key.startswith(b"GNU.sparse."):
                raise _refused("has a sparse file")
            if value and key == b"path":
                name = value
            elif value and key == b"linkpath":
                linkname = value
            elif value and key == b"size":
                if not _GO_INT.fullmatch(value) or not -2**63 <= int(value) < 2**63:
                    raise _refused("has a malformed size record")
                size = int(value)
        name, linkname = long_name or name, long_link or linkname
        if kind == 0:  # the old regular-file flag; a trailing slash made it a directory
            kind = _DIRECTORY if name.endswith(b"/") else _REGULAR
        if kind not in b"0123456":
            raise _refused(f"has an entry of tar type {chr(kind)!r}, which the engine does not unpack")
        self.remaining = 0 if kind in _HEADER_ONLY else size
        if self.remaining < 0:
            raise _refused("has an entry with a negative size")
        self.padding = -self.remaining % _BLOCK
        return _Header(name, kind, size, linkname)


def _header(block: bytes) -> _Header:
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    signed = unsigned - 0x100 * len((block[:148] + block[156:]).translate(None, bytes(range(0x80))))
    if _octal(block[148:156]) not in (unsigned, signed):
        raise _refused("has a tar header with a bad checksum")
    size, prefix = _numeric(block[124:136]), b""
    if size is None:
        raise _refused("has a malformed size in a tar header")
    if block[257:263] == b"ustar\x00":  # POSIX and star headers have a prefix; v7 ones do not
        prefix = _cstring(block[345:476] if block[508:512] == b"tar\x00" else block[345:500])
    elif block[257:265] == b"ustar  \x00" and any(  # GNU: times there, unless they do not parse (old Go's files)
            times[0] and _numeric(times) is None for times in (block[345:357], block[357:369])):
        prefix = _cstring(block[345:500]) if _cstring(block[345:500]).isascii() else b""
    name = _cstring(block[:100])
    return _Header(prefix + b"/" + name if prefix else name, block[156], size, _cstring(block[157:257]))


def _cstring(field: bytes) -> bytes:
    return field.split(b"\x00")[0]


def _octal(field: bytes) -> int | None:
    digits = _cstring(field.strip(b" \x00"))
    if not digits:
        return 0
    return int(digits, 8) if re.fullmatch(rb"[0-7]+", digits) and not int(digits, 8) >> 64 else None


def _numeric(field: bytes) -> int | None:
    """Octal, or Go's base-256 (two's complement) when the top bit is set; None when malformed."""
    if not field[0] & 0x80:
        return _octal(field)
    inverted = bytes(byte ^ 0xFF for byte in field) if field[0] & 0x40 else field
    value = int.from_bytes(bytes([inverted[0] & 0x7F]) + inverted[1:], "big")
    if value >> 63:
        return None
    return ~value if field[0] & 0x40 else value


def _pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records, "LENGTH KEY=VALUE\\n" each, refused as Go refuses them."""
    records: dict[bytes, bytes] = {}
    while data:
        length, space, rest = data.partition(b" ")
        if not space or not _GO_INT.fullmatch(length) or not 5 <= int(length) <= len(data):
            raise _refused("has a malformed PAX record")
        size = int(length) - len(length) - 1
        record, newline, data = rest[:size - 1], rest[size - 1:size], rest[size:]
        key, equals, value = record.partition(b"=")
        nul = b"\x00" in (value if key in (b"path", b"linkpath", b"uname", b"gname") else key)
        if size <= 0 or newline != b"\n" or not equals or not key or nul:
            raise _refused("has a malformed PAX record")
        records[key] = value
    return records
