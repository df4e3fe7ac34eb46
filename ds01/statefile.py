"""Durable state files: write to a temp file, fsync it, rename it over the old one."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from ds01.errors import Ds01Error


def write_atomic(path: Path, data: bytes, backup: Path | None = None) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content, never a mix.

    The caller holds the lock that serializes writers of `path`, so one fixed temp name suffices and a
    killed writer's leftover is simply overwritten. With `backup`, the previous content of `path` (already
    verified by the caller) is kept there. A full disk leaves the previous state untouched.
    """
    temp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:  # write(2) may write less than asked when the disk is nearly full
                written = os.write(fd, view)
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if backup is not None and path.exists():
            staged = backup.with_name(f".{backup.name}.tmp")
            staged.unlink(missing_ok=True)
            os.link(path, staged)
            os.replace(staged, backup)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise Ds01Error(f"no space left on the device holding {path}: the change was not saved and the "
                            "previous state is intact. Free some space and try again.") from exc
        raise Ds01Error(f"cannot write {path}: {exc.strerror}. The previous state is intact.") from exc


def write_json_atomic(path: Path, value: Any, backup: Path | None = None) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n", backup)
