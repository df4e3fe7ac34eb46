"""Who is calling, from the kernel's word (SO_PEERCRED), and what applies to them under the current config."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ds01 import eventlog
from ds01.config import Config, effective_limits, load_config
from ds01.errors import ConfigError
from ds01.eventlog.types import EventType
from ds01.identity import accounts
from ds01.proxy.runas import Caller

_UCRED = struct.Struct("3i")
CACHE_SECONDS = 30.0


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket, as the kernel recorded it at connect()."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def bind_home(home: str, uid: int, roots: Sequence[str]) -> tuple[str, str]:
    """(the real home, "") when it counts for bind mounts: below a home root and owned by the user; else
    ("", why not). Service accounts with / for a home and directory-only users have none."""
    if not home:
        return "", "the account has no home directory on this host"
    try:
        real = os.path.realpath(home, strict=True)
        owner = os.stat(real).st_uid
    except OSError as exc:
        return "", f"{home} cannot be read ({exc.strerror})"
    real_roots = [os.path.realpath(root) for root in roots]
    if not any(real.startswith(root.rstrip("/") + "/") for root in real_roots):
        return "", f"{home} is not below the home roots ({', '.join(roots) or 'none configured'})"
    if owner != uid:
        return "", f"{home} is not owned by the account"
    return real, ""


@dataclass(frozen=True)
class Session:
    caller: Caller
    login: str  # the name as the directory has it
    group: str = ""  # the ds01 group their limits come from


class Sessions:
    """Config reloaded when its file changes (a broken edit keeps the last good one); callers cached briefly."""

    def __init__(self, config_path: Path) -> None:
        self._path = config_path
        self.config = load_config(config_path)
        self._stamp = self._file_stamp()
        self._cache: dict[int, tuple[float, Session]] = {}
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple[int, int]:
        stat = self._path.stat()
        return stat.st_mtime_ns, stat.st_size

    def current_config(self) -> Config:
        with self._lock:
            try:
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    self._stamp = stamp
                    self.config = load_config(self._path)
                    self._cache.clear()
                    eventlog.configure(eventlog.destination().log_dir, self.config.events)
                    eventlog.emit(EventType.CONFIG_RELOAD, source="proxy", file=str(self._path))
            except (ConfigError, OSError) as exc:
                eventlog.emit(EventType.CONFIG_RELOAD_FAILED, source="proxy", file=str(self._path), error=str(exc))
            return self.config

    def for_uid(self, uid: int) -> Session:
        config = self.current_config()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(uid)
            if cached and now - cached[0] < CACHE_SECONDS:
                return cached[1]
        user = accounts.resolve_user(uid, config.ldap)
        effective = effective_limits(config, user.name, user.groups, datetime.now(UTC))
        home, home_problem = bind_home(user.home, uid, config.security.home_roots)
        caller = Caller(uid=uid, user=user.sanitized, home=home, is_admin=uid == 0 or effective.is_admin,
                        limits=effective.limits, gid=user.gid, gids=frozenset(user.gids), login=user.name,
                        home_problem=home_problem)
        session = Session(caller=caller, login=user.name, group=effective.group)
        with self._lock:
            self._cache[uid] = (now, session)
        return session
