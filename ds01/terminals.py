"""Messages to a user's terminals: cleanup's warnings and a batch job's start and end reach whoever is logged in."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def notify_user(uid: int, message: str, dev: Path = Path("/dev")) -> int:
    """Write a message to every terminal the user owns; returns how many were reached."""
    reached = 0
    for tty in [*dev.glob("pts/[0-9]*"), *dev.glob("tty[0-9]*")]:
        try:
            info = tty.stat()
            if info.st_uid != uid or not stat.S_ISCHR(info.st_mode):
                continue
            fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, f"\r\n*** ds01: {message}\r\n".encode())
                reached += 1
            finally:
                os.close(fd)
        except OSError:
            continue  # a terminal that closed or will not take input is not an error of ours
    return reached
