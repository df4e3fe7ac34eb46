"""ds01.proxy.buildcontext: build contexts spooled unchanged, and their Dockerfile found as the engine finds it.

The archives are real tar files written by Python's tarfile, some with a header patched the way other tar writers
(or attackers) write them; what the engine makes of each was checked against a Docker Engine 20.10."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import stat
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from ds01.errors import Ds01Error, UsageError
from ds01.proxy.buildcontext import (
    DOCKERFILE_LIMIT_BYTES,
    BuildContextError,
    ContextTooLarge,
    read_dockerfile,
    spool,
)

MIB = 1 << 20
UNPACKED_LIMIT = 64 * MIB
REG, SYM, LNK, DIR, FIFO = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE


def entry(name: str, data: bytes = b"", kind: bytes = REG, link: str = "",
          pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == REG else 0
    info.pax_headers = pax or {}
    return info, data


def archive(*entries: tuple[tarfile.TarInfo, bytes], form: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=form) as out:
        for info, data in entries:
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def patched(raw: bytes, offset: int, value: bytes, magic: bytes | None = None) -> bytes:
    """The archive with its first header changed at `offset`, and a checksum that fits again."""
    block = bytearray(raw[:512])
    block[offset:offset + len(value)] = value
    if magic is not None:
        block[257:265] = magic
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block) + raw[512:]


def special(kind: bytes, data: bytes) -> bytes:
    """A bare PAX (x, g) or GNU long-name (L, K) header and its data, as other writers emit them."""
    info = tarfile.TarInfo("././@meta")
    info.type, info.size = kind, len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\x00" * (-len(data) % 512)


def record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    length += len(str(length)) - len(str(len(body)))
    return str(length).encode() + body


def saved(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "context"
    path.write_bytes(raw)
    return path


def dockerfile_of(tmp_path: Path, raw: bytes, name: str = "", limit: int = UNPACKED_LIMIT) -> str:
    return read_dockerfile(saved(tmp_path, raw), name, limit)


A, B, C = b"FROM a\n", b"FROM b\n", b"FROM c\n"
PLAIN = archive(entry("sub", kind=DIR), entry("sub/app.py", b"print()\n"), entry("Dockerfile", A))


# --- spooling -----------------------------------------------------------------------------------------------------

class Zeros(io.RawIOBase):
    """A request body of `size` bytes that never exists in memory whole."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, 65536)  # a socket hands over a little at a time
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def test_spool_copies_the_body_unchanged_to_a_private_file_removed_afterwards(tmp_path: Path) -> None:
    body = gzip.compress(PLAIN)
    with spool(io.BytesIO(body), tmp_path, len(body)) as path:
        assert path.parent == tmp_path and path.read_bytes() == body
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_dockerfile(path, "", UNPACKED_LIMIT) == "FROM a\n"
    assert list(tmp_path.iterdir()) == []


def test_a_body_over_the_limit_stops_the_copy_and_leaves_no_file(tmp_path: Path) -> None:
    stream = Zeros(10 * MIB)
    with pytest.raises(ContextTooLarge) as caught, spool(stream, tmp_path, 3 * MIB):  # type: ignore[arg-type]
        pytest.fail("the block must not run")
    assert caught.value.limit_bytes == 3 * MIB and "3m" in str(caught.value)
    assert stream.left == 7 * MIB - 1  # it read the limit and one byte more, no further
    assert list(tmp_path.iterdir()) == []


def test_a_body_of_exactly_the_limit_is_spooled(tmp_path: Path) -> None:
    with spool(io.BytesIO(b"x" * 1000), tmp_path, 1000) as path:
        assert path.stat().st_size == 1000
    with pytest.raises(ContextTooLarge, match="larger than 1000 bytes"), spool(io.BytesIO(b"x" * 1001), tmp_path, 1000):
        pytest.fail("the block must not run")


def test_an_error_inside_the_block_still_removes_the_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), spool(io.BytesIO(b"body"), tmp_path, 100):
        raise RuntimeError("the engine went away")
    assert list(tmp_path.iterdir()) == []


def test_spooling_50_mib_holds_little_of_it_in_memory(tmp_path: Path) -> None:
    size = 50 * MIB
    tracemalloc.start()
    try:
        with spool(Zeros(size), tmp_path, size) as path:  # type: ignore[arg-type]
            _, peak = tracemalloc.get_traced_memory()
            assert path.stat().st_size == size
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"peak {peak} bytes while spooling {size}"


def test_context_errors_are_ds01_errors() -> None:
    assert issubclass(ContextTooLarge, Ds01Error) and issubclass(BuildContextError, UsageError)


# --- finding the Dockerfile ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [bytes, gzip.compress, bz2.compress, lzma.compress])
def test_plain_and_compressed_contexts_are_read(tmp_path: Path, compress: object) -> None:
    assert dockerfile_of(tmp_path, compress(PLAIN)) == "FROM a\n"  # type: ignore[operator]


def test_concatenated_gzip_members_are_one_stream(tmp_path: Path) -> None:
    raw = archive(entry("x", b"x" * 700), entry("Dockerfile", B))
    assert dockerfile_of(tmp_path, gzip.compress(raw[:1024]) + gzip.compress(raw[1024:])) == "FROM b\n"


FOUND = [
    ("the default name", [entry("Dockerfile", A)], "", A),
    ("a path inside", [entry("build/Dockerfile.dev", B)], "build/Dockerfile.dev", B),
    ("a leading slash and dots", [entry("build/Dockerfile", B)], "/x/../build/./Dockerfile", B),
    ("the lower-case fallback", [entry("dockerfile", C)], "", C),
    ("the fallback for the default name given", [entry("dockerfile", C)], "Dockerfile", C),
    ("Dockerfile before dockerfile", [entry("dockerfile", C), entry("Dockerfile", A)], "", A),
    ("the last of two entries", [entry("Dockerfile", A), entry("Dockerfile", B)], "", B),
    ("a symlink", [entry("sub/real", B), entry("Dockerfile", kind=SYM, link="sub/real")], "", B),
    ("an absolute symlink", [entry("sub/real", B), entry("Dockerfile", kind=SYM, link="/sub/real")], "", B),
    ("a symlink out of the root", [entry("sub/real", B), entry("Dockerfile", kind=SYM, link="../../../sub/real")],
     "", B),
    ("a symlinked directory", [entry("real/Dockerfile", B), entry("link", kind=SYM, link="real")],
     "link/Dockerfile", B),
    ("a chain of symlinks", [entry("z", C), entry("y", kind=SYM, link="z"), entry("x", kind=SYM, link="./y")], "x",
     C),
    ("a dangling symlink, then the fallback", [entry("Dockerfile", kind=SYM, link="gone"), entry("dockerfile", C)],
     "", C),
    ("a PAX name", [entry("Dockerfile", A, pax={"path": "Dockerfile", "mtime": "1.5"})], "", A),
    ("a long PAX name", [entry("d/" + "x" * 200, B)], "d/" + "x" * 200, B),
    ("a long GNU name", [entry("d/" + "x" * 200, B)], "d/" + "x" * 200, B),
    ("a directory entry replaced by a directory", [entry("d", kind=DIR), entry("d/Dockerfile", B),
                                                   entry("d", kind=DIR)], "d/Dockerfile", B),
    ("a symlink replaced by a directory", [entry("d", kind=SYM, link="e"), entry("d", kind=DIR),
                                           entry("d/Dockerfile", B)], "d/Dockerfile", B),
    ("a byte-order mark kept for the parser", [entry("Dockerfile", b"\xef\xbb\xbfFROM a\n")], "", "\ufeffFROM a\n"),
]


@pytest.mark.parametrize(("title", "entries", "name", "expected"), FOUND, ids=[case[0] for case in FOUND])
def test_the_dockerfile_is_found_as_the_engine_finds_it(tmp_path: Path, title: str, entries: list[
        tuple[tarfile.TarInfo, bytes]], name: str, expected: bytes | str) -> None:
    form = tarfile.GNU_FORMAT if "GNU" in title else tarfile.PAX_FORMAT
    text = expected if isinstance(expected, str) else expected.decode()
    assert dockerfile_of(tmp_path, archive(*entries, form=form), name) == text


REFUSED = [
    ("no Dockerfile", [entry("app.py", b"")], "", "has no Dockerfile 'Dockerfile'"),
    ("no fallback for another name", [entry("dockerfile", C)], "./Dockerfile", "has no Dockerfile './Dockerfile'"),
    ("a name outside", [entry("Dockerfile", A)], "../Dockerfile", "not a path inside the build context"),
    ("a name with a NUL", [entry("Dockerfile", A)], "Docker\x00file", "not a path inside the build context"),
    ("a directory", [entry("Dockerfile", kind=DIR)], "", "is a directory"),
    ("the root", [entry("Dockerfile", A)], "/", "is a directory"),
    ("an implied directory", [entry("Dockerfile/x", A)], "", "is a directory"),
    ("a hard link", [entry("x", A), entry("Dockerfile", kind=LNK, link="x")], "", "is a hard link"),
    ("a FIFO", [entry("Dockerfile", kind=FIFO)], "", "is a FIFO"),
    ("a symlink loop", [entry("Dockerfile", kind=SYM, link="Dockerfile")], "", "too many symlinks"),
    ("an empty file", [entry("Dockerfile", b"")], "", "is empty"),
    ("text not UTF-8", [entry("Dockerfile", b"FROM caf\xe9\n")], "", "is not UTF-8"),
    ("a large file", [entry("Dockerfile", b"#" * (DOCKERFILE_LIMIT_BYTES + 1))], "", "larger than 1m"),
    ("an entry outside", [entry("../x", b"")], "", "outside the context"),
    ("a root entry that is a file", [entry("/", b"")], "", "root that is not a directory"),
    ("an entry through a symlink", [entry("d", kind=DIR), entry("a", kind=SYM, link="d"), entry("a/Dockerfile", B)],
     "d/Dockerfile", "beneath the symlink 'a'"),
    ("a directory replaced by a file", [entry("d/Dockerfile", B), entry("d", b"x")], "d/Dockerfile",
     "replaces the directory 'd'"),
    ("a directory replaced by a symlink", [entry("d/x", b""), entry("d", kind=SYM, link="e")], "",
     "replaces the directory 'd'"),
    ("a hard link to a symlink", [entry("s", kind=SYM, link="x"), entry("h", kind=LNK, link="s")], "",
     "hard link 'h' to or through a symlink"),
    ("a sparse file", [entry("x", b"", pax={"GNU.sparse.name": "Dockerfile"})], "x", "has a sparse file"),
    ("a contiguous file", [entry("x", b"", kind=tarfile.CONTTYPE)], "", "tar type '7'"),
]


@pytest.mark.parametrize(("title", "entries", "name", "message"), REFUSED, ids=[case[0] for case in REFUSED])
def test_refused(tmp_path: Path, title: str, entries: list[tuple[tarfile.TarInfo, bytes]], name: str,
                 message: str) -> None:
    with pytest.raises(BuildContextError, match=message):
        dockerfile_of(tmp_path, archive(*entries), name)


@pytest.mark.parametrize(("title", "raw", "message"), [
    ("an empty body", b"", "has no Dockerfile"),
    ("not a tar", b"FROM a\n" + b"\x00" * 1024, "bad checksum"),
    ("a truncated entry", PLAIN[:512 * 5 + 3], "is truncated"),
    ("a truncated header", PLAIN[:100], "is truncated"),
    ("a truncated gzip stream", gzip.compress(PLAIN)[:60], "could not be read"),
    ("a corrupt bzip2 stream", b"BZh9" + b"\xff" * 100, "could not be read"),
    ("a corrupt xz stream", b"\xfd7zXZ\x00" + b"\xff" * 100, "could not be read"),
    ("a zstd stream", b"\x28\xb5\x2f\xfd" + b"\x00" * 100, "zstd"),
    ("data after a zero block", PLAIN[:512] + bytes(512) + PLAIN, "data after a zero block"),
    ("a malformed PAX record", special(b"x", b"8 path=x\n") + archive(entry("Dockerfile", A)), "malformed PAX"),
    ("a malformed size", patched(archive(entry("Dockerfile", A)), 124, b"9" * 11), "malformed size"),
    ("a bad checksum", archive(entry("Dockerfile", A))[:148] + b"0000000\x00" + archive(entry("Dockerfile", A))[156:],
     "bad checksum"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 40 else "")
def test_unreadable_archives_are_refused(tmp_path: Path, title: str, raw: bytes, message: str) -> None:
    with pytest.raises(BuildContextError, match=message):
        dockerfile_of(tmp_path, raw)


# --- where Python's tarfile and the engine's Go reader disagree, the engine is followed ----------------------------

USTAR = archive(entry("Dockerfile", A), form=tarfile.USTAR_FORMAT)


def test_an_old_v7_header_has_no_prefix(tmp_path: Path) -> None:
    raw = patched(USTAR, 345, b"evil\x00", magic=bytes(8))
    with tarfile.open(fileobj=io.BytesIO(raw)) as python_view:
        assert python_view.getnames() == ["evil/Dockerfile"]
    assert dockerfile_of(tmp_path, raw) == "FROM a\n"


def test_a_posix_header_has_a_prefix(tmp_path: Path) -> None:
    assert dockerfile_of(tmp_path, patched(USTAR, 345, b"sub\x00"), "sub/Dockerfile") == "FROM a\n"
    star = patched(patched(USTAR, 345, b"sub\x00"), 508, b"tar\x00")
    assert dockerfile_of(tmp_path, star, "sub/Dockerfile") == "FROM a\n"


def test_a_gnu_header_has_times_there_unless_they_do_not_parse(tmp_path: Path) -> None:
    gnu = b"ustar  \x00"
    assert dockerfile_of(tmp_path, patched(USTAR, 345, b"00000000017\x00", magic=gnu)) == "FROM a\n"
    with pytest.raises(BuildContextError, match="has no Dockerfile"):  # read as the prefix evil/
        dockerfile_of(tmp_path, patched(USTAR, 345, b"evil\x00", magic=gnu))


def test_a_gnu_long_name_wins_over_a_pax_path_in_either_order(tmp_path: Path) -> None:
    other = archive(entry("other", B), form=tarfile.USTAR_FORMAT)
    long_name, pax_path = special(b"L", b"Dockerfile\x00"), special(b"x", record("path", "elsewhere"))
    assert dockerfile_of(tmp_path, long_name + pax_path + other) == "FROM b\n"
    assert dockerfile_of(tmp_path, pax_path + long_name + other) == "FROM b\n"


def test_global_pax_headers_are_skipped_with_what_came_before(tmp_path: Path) -> None:
    other = archive(entry("other", B), form=tarfile.USTAR_FORMAT)
    global_path = special(b"g", record("path", "Dockerfile"))
    assert dockerfile_of(tmp_path, global_path + other, "other") == "FROM b\n"
    assert dockerfile_of(tmp_path, special(b"x", record("path", "Dockerfile")) + global_path + other,
                         "other") == "FROM b\n"


def test_an_archive_may_end_without_padding_or_end_blocks(tmp_path: Path) -> None:
    assert dockerfile_of(tmp_path, USTAR[:512 + len(A)]) == "FROM a\n"


def test_the_dockerfile_may_come_after_large_files(tmp_path: Path) -> None:
    raw = archive(entry("data.bin", bytes(3 * MIB)), entry("Dockerfile", A))
    assert dockerfile_of(tmp_path, gzip.compress(raw, compresslevel=1)) == "FROM a\n"


def test_a_compressed_context_that_unpacks_past_the_limit_is_too_large(tmp_path: Path) -> None:
    """A few KiB of gzip can unpack to gigabytes on the engine's disk: the unpacked size counts too."""
    raw = archive(entry("Dockerfile", A), entry("zeros.bin", bytes(8 * MIB)))
    body = gzip.compress(raw, compresslevel=9)
    assert len(body) < MIB
    with pytest.raises(ContextTooLarge, match="unpacks to more than 4m, the limit"):
        dockerfile_of(tmp_path, body, limit=4 * MIB)
    assert dockerfile_of(tmp_path, body, limit=9 * MIB) == "FROM a\n"


def test_spooled_context_hash_is_unchanged(tmp_path: Path) -> None:
    body = lzma.compress(PLAIN)
    with spool(io.BytesIO(body), tmp_path, 10 * MIB) as path:
        read_dockerfile(path, "Dockerfile", UNPACKED_LIMIT)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(body).digest()
