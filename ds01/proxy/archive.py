"""`docker cp` into a container, rewritten so that what lands there is the caller's own files.

The engine extracts an archive as root and keeps each entry's owner, mode and extended attributes. Any user
can write a tar header, so a copy could plant a setuid root program, a device node or a file capability. The
proxy reads the archive as a stream and writes a rewritten copy to a spool file: every entry owned by the
caller, setuid and setgid bits cleared, extended attributes dropped. A device, FIFO or other special entry, a
path leaving the destination, or a hard link to something outside the archive refuses the whole request
before the engine has seen a byte of it.
"""

from __future__ import annotations

import lzma
import posixpath
import stat
import tarfile
import zlib
from typing import BinaryIO

from ds01.errors import Denied
from ds01.reasons import Reason

_KEPT_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE}
_CLEARED_BITS = stat.S_ISUID | stat.S_ISGID


def _normal(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."


def _refuse(member: tarfile.TarInfo, why: str) -> Denied:
    return Denied(Reason.ARCHIVE_ENTRY, f"the archive entry {member.name!r} {why}; nothing was copied. Copy plain "
                                        "files, directories and symlinks only.")


def _checked(member: tarfile.TarInfo, regular_files: set[str]) -> None:
    if member.type not in _KEPT_TYPES:
        kind = ("a device node" if member.ischr() or member.isblk() else "a FIFO" if member.isfifo()
                else f"of tar type {member.type!r}")
        raise _refuse(member, f"is {kind}")
    name = _normal(member.name)
    if name == ".." or name.startswith("../"):
        raise _refuse(member, "leaves the destination directory")
    if member.islnk() and _normal(member.linkname) not in regular_files:
        raise _refuse(member, f"is a hard link to {member.linkname!r}, which is not a file earlier in the archive")


def rewrite(source: BinaryIO, spool: BinaryIO, uid: int, gid: int) -> int:
    """Copy the archive from `source` (plain, gzip, bzip2 or xz) to `spool` as a plain tar of the caller's files.
    Returns the number of entries; raises `Denied` on the first entry that is refused or unreadable."""
    regular_files: set[str] = set()
    count = 0
    try:
        with tarfile.open(fileobj=source, mode="r|*") as incoming, \
                tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as outgoing:
            for member in incoming:
                _checked(member, regular_files)
                member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
                member.mode &= ~_CLEARED_BITS
                member.pax_headers = {}  # xattrs (security.capability among them) and owner overrides
                content = incoming.extractfile(member) if member.isreg() else None
                outgoing.addfile(member, content)
                if member.isreg():
                    regular_files.add(_normal(member.name))
                count += 1
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise Denied(Reason.BAD_ARCHIVE,
                     f"the archive could not be read or spooled ({exc}); nothing was copied. Send a tar "
                     "archive, plain or compressed with gzip, bzip2 or xz.") from None
    return count
