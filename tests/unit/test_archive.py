"""ds01.proxy.archive: archives copied into containers become the caller's plain files, or are refused whole."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile

import pytest

from ds01.errors import Denied
from ds01.proxy.archive import rewrite

UID, GID = 1001, 1001


def member(name: str, *, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
           **extra: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.uname, info.gname = kind, mode, 0, 0, "root", "root"
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in extra.items():
        setattr(info, key, value)
    return info, data


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def rewritten(raw: bytes) -> list[tarfile.TarInfo]:
    spool = io.BytesIO()
    rewrite(io.BytesIO(raw), spool, UID, GID)
    spool.seek(0)
    with tarfile.open(fileobj=spool) as result:
        return result.getmembers()


def test_every_entry_becomes_the_callers_without_setuid_or_xattrs() -> None:
    raw = archive(member("d", kind=tarfile.DIRTYPE, mode=0o7755),
                  member("d/suid", data=b"#!/bin/sh\n", mode=0o6755,
                         pax_headers={"SCHILY.xattr.security.capability": "x", "uid": "0"}),
                  member("d/link", kind=tarfile.SYMTYPE, linkname="/etc/shadow"),
                  member("d/hard", kind=tarfile.LNKTYPE, linkname="d/suid"))
    result = rewritten(raw)
    assert [m.name for m in result] == ["d", "d/suid", "d/link", "d/hard"]
    for info in result:
        assert (info.uid, info.gid, info.uname, info.gname) == (UID, GID, "", "")
        assert not info.mode & (stat.S_ISUID | stat.S_ISGID)
        assert not info.pax_headers
    assert result[0].mode == 0o1755  # the sticky bit is harmless and kept
    assert result[2].linkname == "/etc/shadow"  # a symlink is a name: it resolves inside the container


def test_compressed_archives_are_read() -> None:
    result = rewritten(gzip.compress(archive(member("a", data=b"1"))))
    assert [(m.name, m.size) for m in result] == [("a", 1)]


@pytest.mark.parametrize(("bad", "words"), [
    (member("mem", kind=tarfile.CHRTYPE, devmajor=1, devminor=1), "device node"),
    (member("sda", kind=tarfile.BLKTYPE, devmajor=8), "device node"),
    (member("pipe", kind=tarfile.FIFOTYPE), "FIFO"),
    (member("shadow", kind=tarfile.LNKTYPE, linkname="/etc/shadow"), "not a file earlier in the archive"),
    (member("later", kind=tarfile.LNKTYPE, linkname="z"), "not a file earlier in the archive"),
    (member("../x", data=b"1"), "leaves the destination"),
    (member("a/../../x", data=b"1"), "leaves the destination"),
])
def test_a_bad_entry_refuses_the_whole_archive(bad: tuple[tarfile.TarInfo, bytes], words: str) -> None:
    with pytest.raises(Denied) as denial:
        rewritten(archive(member("ok", data=b"1"), bad, member("z", data=b"2")))
    assert denial.value.reason == "archive_entry"
    assert words in denial.value.message and "nothing was copied" in denial.value.message


@pytest.mark.parametrize("raw", [b"not a tar archive at all" * 40, archive(member("a", data=b"123"))[:700],
                                 gzip.compress(b"\0" * 10)[:-4]])
def test_a_broken_archive_is_a_clear_denial(raw: bytes) -> None:
    with pytest.raises(Denied) as denial:
        rewritten(raw)
    assert denial.value.reason == "bad_archive" and "nothing was copied" in denial.value.message
