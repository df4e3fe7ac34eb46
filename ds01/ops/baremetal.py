"""Bare-metal GPU grants: time-limited membership of the group that owns /dev/nvidia* (bare_metal.group).

ds01 manages only the memberships it granted. Each grant is a record in DS01_STATE_DIR/bare-metal.json,
written atomically under bare-metal.lock; `expire_grants` (run by `ds01 cleanup`) takes expired grants away.
Members ds01 did not add are reported by `members` as not managed by ds01 and never touched.

Order of operations, so that a crash never leaves a membership without its record: a grant writes the record
before it runs gpasswd (and takes the record back if gpasswd fails); a revoke runs gpasswd before it drops
the record. A record whose user is no longer in the group is harmless and is dropped at revoke or expiry.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import filelock

from ds01.config import BareMetalSettings
from ds01.errors import Busy, ConfigError, Ds01Error, UsageError
from ds01.eventlog import emit
from ds01.eventlog.types import EventType
from ds01.identity import nss
from ds01.paths import Paths
from ds01.statefile import write_json_atomic
from ds01.units import format_duration

STATE_NAME = "bare-metal.json"
LOCK_NAME = "bare-metal.lock"
STATE_VERSION = 1
LOCK_TIMEOUT_SECONDS = 10
SOURCE = "bare_metal"


@dataclass(frozen=True)
class Grant:
    user: str
    group: str
    granted_at: datetime
    until: datetime
    granted_by: str


@dataclass(frozen=True)
class Member:
    """One line of `ds01 bare-metal list`: a grant, or a member ds01 did not add."""

    user: str
    managed: bool
    in_group: bool
    until: datetime | None  # None when not managed
    granted_by: str | None

    def status(self, now: datetime) -> str:
        if not self.managed:
            return "not managed by ds01"
        if self.until is not None and self.until <= now:
            return "expired (removed at the next cleanup)"
        return "active" if self.in_group else "granted, but not in the group (run: ds01 bare-metal revoke)"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _check_now(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (datetime.now(UTC))")


def _run(argv: list[str], action: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as exc:
        raise Ds01Error(f"cannot {action}: {argv[0]} is not installed (Debian package: passwd)") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise Ds01Error(f"cannot {action}: {' '.join(argv)} failed: {detail}")


def group_members(group: str) -> set[str]:
    """Everyone in `group`. Empty if it does not exist."""
    gid = nss.group_id(group)
    return nss.group_members(gid) if gid is not None else set()


def ensure_group(group: str) -> bool:
    """Create `group` as a system group if it is missing; True if it was created."""
    if nss.group_id(group) is None:
        _run(["groupadd", "--system", group], f"create the group {group}")
        emit(EventType.BARE_METAL_GROUP_CREATE, source=SOURCE, group=group)
        return True
    return False


def _known_user(user: str) -> str:
    account = nss.account_by_name(user)
    if account is None:
        raise Ds01Error(f"no user named {user!r} on this host (getent passwd {user} finds nothing): "
                        "check the spelling; bare-metal access needs a local or NSS account")
    return account.pw_name


class GrantStore:
    """The grant records of one state directory. Use `locked()` around every read-modify-write."""

    def __init__(self, paths: Paths, settings: BareMetalSettings) -> None:
        self.paths = paths
        self.settings = settings
        self.file = paths.state_dir / STATE_NAME
        self._lock = filelock.FileLock(str(paths.state_dir / LOCK_NAME))

    @contextmanager
    def locked(self) -> Iterator[dict[str, Grant]]:
        """The records by user name, under the lock; call `save` before leaving to keep changes."""
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        except filelock.Timeout:
            raise Busy(f"{self.paths.state_dir / LOCK_NAME} stayed locked for {LOCK_TIMEOUT_SECONDS} s: "
                       "another ds01 bare-metal command is running; try again") from None
        try:
            yield self.read()
        finally:
            self._lock.release()

    def read(self) -> dict[str, Grant]:
        try:
            raw: Any = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.file}: cannot read the bare-metal grants: {exc}. Fix or remove the file "
                              "(members then show as not managed by ds01).") from exc
        try:
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {STATE_VERSION}")
            return {name: Grant(user=name, group=str(entry["group"]), granted_at=_parse_time(entry["granted_at"]),
                                until=_parse_time(entry["until"]), granted_by=str(entry["granted_by"]))
                    for name, entry in raw["grants"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.file}: not a bare-metal grants file ({exc!r}). Fix or remove it.") from exc

    def save(self, grants: dict[str, Grant]) -> None:
        write_json_atomic(self.file, {"version": STATE_VERSION, "grants": {
            name: {"group": g.group, "granted_at": _iso(g.granted_at), "until": _iso(g.until),
                   "granted_by": g.granted_by} for name, g in sorted(grants.items())}})


def _caller() -> str:
    return nss.login_name(os.getuid()) or str(os.getuid())


def grant(paths: Paths, settings: BareMetalSettings, user: str, now: datetime,
          duration_seconds: int | None = None) -> Grant:
    """Add `user` to the group until now + duration (default_duration; at most max_duration).

    A user who already has a grant gets the new end time. A user already in the group without a ds01 grant
    is refused: ds01 would otherwise take away a membership it did not give.
    """
    _check_now(now)
    duration = settings.default_duration_seconds if duration_seconds is None else duration_seconds
    if duration <= 0:
        raise UsageError("--for must be longer than 0 seconds, like 4h or 2d")
    if duration > settings.max_duration_seconds:
        raise UsageError(f"--for {format_duration(duration)} is longer than bare_metal.max_duration "
                         f"({format_duration(settings.max_duration_seconds)}); grant less, or raise max_duration "
                         "in resource-limits.yaml")
    name = _known_user(user)
    group = settings.group
    store = GrantStore(paths, settings)
    with store.locked() as grants:
        ensure_group(group)
        previous = grants.get(name)
        if previous is None and name in group_members(group):
            raise Ds01Error(f"{name} is already in {group}, but not through ds01, which leaves such members "
                            f"alone. To hand the membership to ds01: gpasswd --delete {name} {group}, then grant.")
        if previous is not None and previous.group != group:  # bare_metal.group changed since the grant
            _take_away(grants, name)
        record = Grant(user=name, group=group, granted_at=now, until=now + timedelta(seconds=duration),
                       granted_by=_caller())
        store.save({**grants, name: record})
        try:
            if name not in group_members(group):
                _run(["gpasswd", "--add", name, group], f"add {name} to {group}")
        except Ds01Error:
            store.save(grants)
            raise
    emit(EventType.BARE_METAL_GRANT, source=SOURCE, user=name, until=_iso(record.until), group=group,
         duration_seconds=duration, extended=previous is not None)
    return record


def _take_away(grants: dict[str, Grant], name: str) -> None:
    """Remove `name` from the group of their record (if still in it)."""
    group = grants[name].group
    if name in group_members(group):
        _run(["gpasswd", "--delete", name, group], f"remove {name} from {group}")


def revoke(paths: Paths, settings: BareMetalSettings, user: str, reason: str = "revoked by an administrator") -> Grant:
    """End `user`'s grant now. Only grants ds01 made can be revoked here."""
    store = GrantStore(paths, settings)
    with store.locked() as grants:
        record = grants.get(user)
        if record is None:
            if user in group_members(settings.group):
                raise Ds01Error(f"{user} is in {settings.group} but not through ds01, so ds01 leaves them alone; "
                                f"remove them by hand if you mean to: gpasswd --delete {user} {settings.group}")
            raise Ds01Error(f"{user} has no bare-metal grant (see: ds01 bare-metal list)")
        _take_away(grants, user)
        store.save({name: g for name, g in grants.items() if name != user})
    emit(EventType.BARE_METAL_REVOKE, source=SOURCE, user=user, reason=reason, group=record.group,
         until=_iso(record.until))
    return record


@dataclass(frozen=True)
class ExpiryReport:
    expired: tuple[Grant, ...]
    failed: tuple[tuple[Grant, str], ...]  # kept, to be retried at the next run


def due_grants(paths: Paths, settings: BareMetalSettings, now: datetime) -> list[Grant]:
    """The grants whose time is up, without touching them (for dry runs)."""
    _check_now(now)
    return [g for g in GrantStore(paths, settings).read().values() if g.until <= now]


def expire_grants(now: datetime, paths: Paths, settings: BareMetalSettings) -> ExpiryReport:
    """Take away every grant whose time is up. A user who cannot be removed keeps the record, for a retry."""
    _check_now(now)
    store = GrantStore(paths, settings)
    if not store.file.exists():
        return ExpiryReport((), ())
    expired: list[Grant] = []
    failed: list[tuple[Grant, str]] = []
    with store.locked() as grants:
        kept = dict(grants)
        for name, record in sorted(grants.items()):
            if record.until > now:
                continue
            try:
                _take_away(grants, name)
            except Ds01Error as exc:
                failed.append((record, str(exc)))
                emit(EventType.BARE_METAL_EXPIRE_FAILED, source=SOURCE, user=name, group=record.group, error=str(exc))
                continue
            del kept[name]
            expired.append(record)
        if expired:
            store.save(kept)
    for record in expired:
        emit(EventType.BARE_METAL_EXPIRE, source=SOURCE, user=record.user, group=record.group, until=_iso(record.until))
    return ExpiryReport(tuple(expired), tuple(failed))


def members(paths: Paths, settings: BareMetalSettings) -> list[Member]:
    """Every grant, and every other member of the group (reported, never changed), sorted by name."""
    grants = GrantStore(paths, settings).read()
    in_group = group_members(settings.group)
    found = [Member(user=g.user, managed=True, in_group=g.user in group_members(g.group), until=g.until,
                    granted_by=g.granted_by) for g in grants.values()]
    found += [Member(user=name, managed=False, in_group=True, until=None, granted_by=None)
              for name in in_group - set(grants)]
    return sorted(found, key=lambda member: member.user)
