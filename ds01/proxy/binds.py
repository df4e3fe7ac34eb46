"""Bind sources opened once and pinned, so that what the engine mounts is exactly what the policy checked.

A source is opened with the kernel resolving every symlink in one step; the open descriptor then names the
checked file or directory whatever is renamed later. After the policy accepts it, the descriptor is bind-mounted
onto a staging path under a root-only directory that ds01 manages, and the container is created with the
staging path as its source. Renaming the original path, or putting a symlink in its place, changes nothing that
is mounted. The staging mount carries nosuid and nodev (and the source mount's ro and noexec) itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ds01 import procfs
from ds01.errors import Ds01Error
from ds01.proxy import policy, runas

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 8, 32, 4096
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        code = ctypes.get_errno()
        raise Ds01Error(f"cannot bind-mount {source} on {target}: {os.strerror(code)}")


def _unmount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (any more)
            raise Ds01Error(f"cannot unmount the pinned bind source {target}: {os.strerror(code)}")


@dataclass(frozen=True)
class OpenedSource:
    fd: int  # O_PATH, symlinks resolved by the kernel at open
    resolved: policy.ResolvedPath
    device: int
    inode: int


def open_source(path: str, caller: runas.Caller) -> OpenedSource | None:
    """The object a bind source names now, held open; None when it does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        mount = procfs.mount_of_fd(fd)
        real = os.readlink(f"/proc/self/fd/{fd}")
    except BaseException:
        os.close(fd)
        raise
    hardened = {"nosuid", "nodev"} <= mount.options
    resolved = policy.ResolvedPath(real=real, is_socket=stat.S_ISSOCK(info.st_mode), mount_point=mount.mount_point,
                                   mount_hardened=hardened, closed_at=_first_closed(real, caller))
    return OpenedSource(fd=fd, resolved=resolved, device=info.st_dev, inode=info.st_ino)


# The first argument the caller may not enter (search permission, ACLs included), printed; exit 1 then.
_FIRST_CLOSED = 'for d do [ -x "$d" ] || { printf %s "$d"; exit 1; }; done'


def _first_closed(real: str, caller: runas.Caller) -> str | None:
    """The first directory above `real` that the caller may not enter, asked of the kernel as the caller. Moving an
    entry takes write access to the directory holding it, so a directory that bars the caller stays above what
    it holds, whatever the caller renames."""
    if caller.uid == 0:
        return None
    parents = [str(parent) for parent in reversed(PurePosixPath(real).parents)]
    try:
        walk = subprocess.run(["/bin/sh", "-c", _FIRST_CLOSED, "sh", *parents], user=caller.uid, group=caller.gid,
                              extra_groups=sorted(caller.gids), capture_output=True, text=True, check=False,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Ds01Error(f"cannot check the way to {real} as uid {caller.uid}: {exc}") from exc
    if walk.returncode == 0:
        return None
    if walk.returncode == 1 and walk.stdout:
        return walk.stdout
    raise Ds01Error(f"cannot check the way to {real} as uid {caller.uid}: {walk.stderr.strip() or walk.returncode}")


@contextlib.contextmanager
def opened(paths: Sequence[str], caller: runas.Caller) -> Iterator[dict[str, OpenedSource]]:
    """Each existing path opened for the block (a missing one is left out: the policy refuses it)."""
    sources: dict[str, OpenedSource] = {}
    try:
        for path in paths:
            if path not in sources and (source := open_source(path, caller)) is not None:
                sources[path] = source
        yield sources
    finally:
        for source in sources.values():
            os.close(source.fd)


class Pins:
    """The staging tree ROOT/KEY/N: one directory of pinned sources per container."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # a delete's answer and the engine's destroy event release the same key
        root.mkdir(parents=True, exist_ok=True)
        os.chown(root, 0, 0)
        root.chmod(0o700)  # only root (the engine) goes through it

    def path(self, key: str, index: int) -> Path:
        if not key.isalnum():
            raise Ds01Error(f"bad bind key {key!r}")
        return self.root / key / str(index)

    def pin(self, key: str, index: int, source: OpenedSource) -> Path:
        """Bind-mount an opened source onto its staging path (made to match: a directory or a file)."""
        target = self.path(key, index)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        if stat.S_ISDIR(os.fstat(source.fd).st_mode):
            target.mkdir(mode=0o700, exist_ok=True)
        else:
            target.touch(mode=0o600, exist_ok=True)
        # The descriptor, not a path: the kernel mounts the very object that was checked.
        _mount(f"/proc/self/fd/{source.fd}", str(target), _MS_BIND)
        options = procfs.mount_of_fd(source.fd).options
        flags = _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV
        flags |= (_MS_RDONLY if "ro" in options else 0) | (_MS_NOEXEC if "noexec" in options else 0)
        try:
            _mount("none", str(target), flags)
        except Ds01Error:
            _unmount(target)
            raise
        return target

    def pinned(self, key: str, index: int) -> tuple[int, int] | None:
        """(device, inode) of what is mounted on a staging path, or None when nothing is (as after a reboot)."""
        target = self.path(key, index)
        try:
            fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if procfs.mount_of_fd(fd).mount_id == procfs.mount_of_path(target.parent).mount_id:
                return None
            info = os.fstat(fd)
            return info.st_dev, info.st_ino
        finally:
            os.close(fd)

    def release(self, key: str) -> None:
        """Unmount and remove one container's staging directory."""
        folder = self.root / key
        with self._lock:
            if not key.isalnum() or not folder.is_dir():
                return
            for entry in folder.iterdir():
                _unmount(entry)
            # Only after every unmount, and never recursively: a mounted source would lose its contents.
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    entry.rmdir()
                else:
                    entry.unlink()
            folder.rmdir()

    def release_unused(self, in_use: set[str]) -> list[str]:
        """Release the staging directories no container refers to; returns their keys."""
        unused = sorted(entry.name for entry in self.root.iterdir() if entry.is_dir() and entry.name not in in_use)
        for key in unused:
            self.release(key)
        return unused

