"""A job's log in its workspace, WORKSPACE/.ds01/jobs/NAME.log, written as the job's user would write it.

The proxy runs as root and the workspace is the user's, so every step is taken from a directory descriptor
with O_NOFOLLOW: a symlink the user planted anywhere on the way is refused, never followed. Each directory on
the way must be the user's own, and the log is a new file (the old one unlinked first), so a hard link to
someone else's file is never written through. The file is the user's (fchown) and at most `max_bytes` long."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from ds01.errors import Denied
from ds01.reasons import Reason

SUBDIRS = (".ds01", "jobs")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Written:
    path: str
    bytes_kept: int
    bytes_dropped: int


def _refuse(path: str, why: str) -> Denied:
    return Denied(Reason.NOT_OWNER, f"the job's log cannot be written to {path}: {why}. Nothing was written there; "
                                    "the job's output is still in `container logs NAME` until it is removed.")


def _own_dir(fd: int, shown: str, uid: int) -> None:
    info = os.fstat(fd)
    if info.st_uid != uid:
        raise _refuse(shown, f"it belongs to uid {info.st_uid}, not to you")


def _step(parent: int, name: str, shown: str, uid: int, gid: int) -> int:
    """The subdirectory `name` of `parent`, made (the user's, 0755) if it is missing."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    except FileExistsError:
        pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(shown, "it is a symlink or not a directory") from exc
        raise
    try:
        _own_dir(fd, shown, uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_log(workspace: str, name: str, *, uid: int, gid: int, chunks: Iterable[bytes], max_bytes: int) -> Written:
    """Write `chunks` to WORKSPACE/.ds01/jobs/NAME.log, keeping the first `max_bytes` and noting the cut."""
    shown = os.path.join(workspace, *SUBDIRS, f"{name}.log")
    try:
        top = os.open(workspace, _DIR_FLAGS)
    except OSError as exc:
        raise _refuse(workspace, f"the workspace cannot be opened ({exc.strerror})") from exc
    opened = [top]
    try:
        _own_dir(top, workspace, uid)
        for index, sub in enumerate(SUBDIRS):
            opened.append(_step(opened[-1], sub, os.path.join(workspace, *SUBDIRS[:index + 1]), uid, gid))
        where = opened[-1]
        file_name = f"{name}.log"
        try:
            os.unlink(file_name, dir_fd=where)
        except FileNotFoundError:
            pass
        except IsADirectoryError as exc:
            raise _refuse(shown, "a directory stands there") from exc
        fd = os.open(file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=where)
        try:
            os.fchown(fd, uid, gid)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refuse(shown, "it is not a regular file")
            kept, dropped = _copy(fd, chunks, max_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        return Written(shown, kept, dropped)
    finally:
        for fd in reversed(opened):
            os.close(fd)


def _copy(fd: int, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, int]:
    kept = dropped = 0
    for chunk in chunks:
        room = max(0, max_bytes - kept)
        if room:
            part = chunk[:room]
            _write_all(fd, part)
            kept += len(part)
        dropped += len(chunk) - min(len(chunk), room)
    if dropped:
        _write_all(fd, f"\n[ds01: the log was cut at {max_bytes} bytes (scheduler.max_job_log); {dropped} more "
                       "bytes of output were dropped]\n".encode())
    return kept, dropped


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
