"""What a `ds01 doctor` check is: its verdict (PASS, WARN or FAIL, and how to fix it), the options every check
reads, and who counts as a regular user, whose exposure is a FAIL rather than an admin's WARN."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ds01.config import Config
from ds01.identity import nss

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
UID_MIN = 1000  # Debian's first regular uid (UID_MIN in /etc/login.defs)
NOBODY_UID = 65534
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, WARN or FAIL
    detail: str
    fix: str | None = None  # what to do, for WARN and FAIL


@dataclass
class Options:
    engine: str
    proxy_socket: Path
    config: Path
    docker_group: str = "docker"
    root: Path = Path("/")  # where installed files, /dev and /proc are looked for
    debug: bool = False  # print the traceback of a check that broke


# --- Who is a regular user ------------------------------------------------------------------------------------


def regular_users(names: Iterable[str], config: Config | None) -> list[str]:
    """Of `names`, the regular users (uid >= 1000, not nobody) who are not ds01 administrators."""
    found = []
    for name in sorted(set(names)):
        user = nss.account_by_name(name)
        if user is None:
            continue  # a stale name in /etc/group: nobody can log in as it
        if user.pw_uid < UID_MIN or user.pw_uid == NOBODY_UID:
            continue
        if config is not None and (name in config.admin_users or nss.group_names_of(user) & config.admin_groups):
            continue
        found.append(name)
    return found
