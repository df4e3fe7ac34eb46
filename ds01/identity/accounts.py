"""Who a kernel uid is: the login name, a form of it safe in resource names, and the user's groups.

NSS (pwd/grp) answers first. An LDAP directory, when configured, adds the users NSS lacks and the group
memberships NSS does not know. A directory that cannot be asked is logged as an event and NSS alone answers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from ds01.config import LdapSettings
from ds01.errors import Ds01Error
from ds01.eventlog import emit
from ds01.eventlog.types import EventType
from ds01.identity import directory, nss
from ds01.identity.directory import DirectorySession, DirectoryUnavailable, DirectoryUser

MAX_SANITIZED_LENGTH = 32
_DIGEST_LENGTH = 6
_BASE_LENGTH = MAX_SANITIZED_LENGTH - 1 - _DIGEST_LENGTH
_EMPTY_BASE = "user"
_SAFE = re.compile(r"[a-z0-9][a-z0-9_]*")
_UNSAFE_RUN = re.compile(r"[^a-z0-9]+")
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "no user" to the kernel


class UnknownUser(Ds01Error):
    """Neither NSS nor the configured directory knows the uid or name."""


@dataclass(frozen=True)
class User:
    uid: int
    name: str  # the login name as the directory has it, e.g. "jane.doe@lab.example"
    sanitized: str  # safe in container names, Docker labels and systemd slice names
    groups: tuple[str, ...]  # group names, sorted, deduplicated, primary group included
    gid: int  # the primary group
    gids: tuple[int, ...]  # every group id the user is in, primary included, sorted
    home: str = ""  # pw_dir from NSS; "" for a user only the directory knows


def sanitize_username(name: str) -> str:
    """A form of `name` safe in container names, Docker labels and systemd slice names.

    The result matches `[a-z0-9][a-z0-9_]*` and has at most 32 characters: no `-` (systemd slices use it
    for hierarchy), no `.` or `@`. A name already of that form maps to itself. Any other name is lowercased,
    each run of characters other than `[a-z0-9]` becomes one `_`, `_` is trimmed from both ends, the rest is
    cut to 25 characters (or is "user" if nothing is left), and `_` plus the first 6 hex digits of the
    SHA-256 of the original name are appended: "Alice" -> "alice_<6 hex>", which differs from "alice".

    Two different names give different results unless their digests collide, or an already-safe name
    happens to spell another name's "<base>_<digest>" result. Never raises.
    """
    if len(name) <= MAX_SANITIZED_LENGTH and _SAFE.fullmatch(name):
        return name
    # surrogatepass: lone surrogates are valid in a str and must hash, not raise.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_LENGTH]
    base = _UNSAFE_RUN.sub("_", name.lower()).strip("_")[:_BASE_LENGTH].rstrip("_") or _EMPTY_BASE
    return f"{base}_{digest}"


def resolve_user(uid: int, ldap: LdapSettings | None = None) -> User:
    """The user with this kernel uid, from NSS and, if `ldap` is given, the directory."""
    what = f"uid {uid}"
    if not 0 <= uid <= _MAX_UID:
        raise UnknownUser(f"{what} is not a valid user id: uids run from 0 to {_MAX_UID}")
    return _resolve(what, nss.account_by_uid(uid), lambda session: session.find_user_by_uid(uid), ldap)


def resolve_name(name: str, ldap: LdapSettings | None = None) -> User:
    """The user with this login name, from NSS and, if `ldap` is given, the directory."""
    what = f"name {name!r}"
    if not name:
        raise UnknownUser("an empty user name names no user: pass a login name, e.g. --user jane.doe")
    return _resolve(what, nss.account_by_name(name), lambda session: session.find_user_by_name(name), ldap)


def _resolve(
    what: str,
    entry: nss.Account | None,
    lookup: Callable[[DirectorySession], DirectoryUser | None],
    settings: LdapSettings | None,
) -> User:
    failure: DirectoryUnavailable | None = None
    if settings is not None:
        try:
            with directory.session(settings) as session:
                return _with_directory(what, entry, lookup, session, settings)
        except DirectoryUnavailable as exc:
            failure = exc
            # The message names the URI and bind DN, never the password: it is only ever read from its file.
            emit(
                EventType.IDENTITY_LDAP_FALLBACK,
                source="identity",
                user=entry.pw_name if entry is not None else None,
                uri=settings.uri,
                error=str(exc),
            )
    if entry is None:
        raise _unknown(what, settings, failure)
    return _user(entry.pw_uid, entry.pw_name, entry.pw_gid, {}, None, home=entry.pw_dir)


def _with_directory(
    what: str,
    entry: nss.Account | None,
    lookup: Callable[[DirectorySession], DirectoryUser | None],
    session: DirectorySession,
    settings: LdapSettings,
) -> User:
    if entry is not None:
        # The directory may hold this NSS user too; its DN is what member/uniqueMember groups list.
        known = session.find_user_by_name(entry.pw_name)
        uid, name, gid, home = entry.pw_uid, entry.pw_name, entry.pw_gid, entry.pw_dir
        dn = known.dn if known is not None else None
    else:
        found = lookup(session)
        if found is None:
            raise _unknown(what, settings, None)
        uid, name, gid, dn, home = found.uid, found.name, found.gid, found.dn, ""
    return _user(uid, name, gid, session.groups_of(name, dn), session, home=home)


def _user(uid: int, name: str, gid: int, directory_groups: dict[str, int | None],
          session: DirectorySession | None, *, home: str) -> User:
    groups = set(directory_groups)
    gids = {gid, *(group_id for group_id in directory_groups.values() if group_id is not None)}
    for group_id in nss.group_ids_of(name, gid):
        gids.add(group_id)
        group_name = _group_name(group_id, session)
        # A gid neither source can name (a dangling primary gid) has no name to match policy against.
        if group_name is not None:
            groups.add(group_name)
    return User(uid=uid, name=name, sanitized=sanitize_username(name), groups=tuple(sorted(groups)), gid=gid,
                gids=tuple(sorted(gids)), home=home)


def _group_name(gid: int, session: DirectorySession | None) -> str | None:
    found = nss.group_name(gid)
    if found is None and session is not None:
        return session.group_name_by_gid(gid)
    return found


def _unknown(what: str, settings: LdapSettings | None, failure: DirectoryUnavailable | None) -> UnknownUser:
    if settings is None:
        sources = "the local account database (NSS) does not know it and no LDAP directory is configured"
    elif failure is None:
        sources = f"neither the local account database (NSS) nor the LDAP directory at {settings.uri} knows it"
    else:
        sources = (
            "the local account database (NSS) does not know it and the LDAP directory could not be asked "
            f"({failure})"
        )
    return UnknownUser(
        f"no user with {what}: {sources}; check the spelling, that the account exists (getent passwd), "
        "and the LDAP settings"
    )


