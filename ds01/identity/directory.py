"""The only door to LDAP: python-ldap calls in, typed users and group names out.

Every LDAP failure (server down, timeout, refused bind, malformed entry) becomes one `DirectoryUnavailable`,
so callers can fall back to NSS without knowing python-ldap's exception tree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import ldap
from ldap.dn import str2dn
from ldap.filter import escape_filter_chars

from ds01.config import NAME_VALUED, LdapSettings
from ds01.errors import Ds01Error

_USER_ATTRIBUTES = ["uid", "uidNumber", "gidNumber"]
_Attributes = dict[str, list[bytes]]
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no id" to the kernel


class DirectoryUnavailable(Ds01Error):
    """The LDAP server could not be asked or did not answer usefully; NSS alone is the fallback."""


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    name: str  # the login name (uid attribute) as the directory spells it
    uid: int
    gid: int  # the primary group's gidNumber


def _unavailable(settings: LdapSettings, action: str, why: str) -> DirectoryUnavailable:
    return DirectoryUnavailable(
        f"could not {action} (LDAP directory at {settings.uri}): {why}; "
        "check that the server is up and the bind settings are right"
    )


def _describe(exc: ldap.LDAPError) -> str:
    """python-ldap's error text: its args hold a dict with 'desc' and sometimes 'info'."""
    detail = exc.args[0] if exc.args else None
    if isinstance(detail, dict):
        parts = [str(detail[key]) for key in ("desc", "info") if detail.get(key)]
        if parts:
            return " - ".join(parts)
    return str(exc) or type(exc).__name__


class DirectorySession:
    """One connection, bound if settings say so. Every call shares one deadline of `timeout_seconds`."""

    def __init__(self, settings: LdapSettings) -> None:
        self._settings = settings
        self._deadline = time.monotonic() + settings.timeout_seconds
        with self._translated("connect"):
            self._conn = ldap.initialize(settings.uri)
            self._conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            self._conn.set_option(ldap.OPT_REFERRALS, 0)
            self._conn.set_option(ldap.OPT_NETWORK_TIMEOUT, settings.timeout_seconds)
            self._conn.set_option(ldap.OPT_TIMEOUT, settings.timeout_seconds)

    def close(self) -> None:
        # unbind, not unbind_s: a dying server must not hold the caller past the deadline.
        with suppress(ldap.LDAPError):
            self._conn.unbind()

    def _remaining(self, action: str) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _unavailable(self._settings, action, f"no answer within {self._settings.timeout_seconds} s")
        return left

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """The one place python-ldap exceptions and malformed values become DirectoryUnavailable."""
        try:
            yield
        except ldap.TIMEOUT as exc:
            raise _unavailable(
                self._settings, action, f"no answer within {self._settings.timeout_seconds} s"
            ) from exc
        except ldap.LDAPError as exc:
            raise _unavailable(self._settings, action, _describe(exc)) from exc
        except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
            raise _unavailable(self._settings, action, f"malformed entry ({exc})") from exc

    def bind(self) -> None:
        settings = self._settings
        if settings.bind_dn is None or settings.bind_password_file is None:
            return
        action = f"bind as {settings.bind_dn}"
        try:
            password = settings.bind_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise _unavailable(settings, action, f"cannot read the password file: {exc.strerror}") from exc
        with self._translated(action):
            self._conn.timeout = self._remaining(action)
            self._conn.simple_bind_s(settings.bind_dn, password)

    def _search(self, action: str, filterstr: str, attributes: list[str]) -> list[tuple[str, _Attributes]]:
        with self._translated(action):
            found = self._conn.search_ext_s(
                self._settings.base_dn,
                ldap.SCOPE_SUBTREE,
                filterstr,
                attributes,
                timeout=self._remaining(action),
            )
        # Referrals come back with a None DN; sorting makes duplicate matches resolve the same way every time.
        return sorted(((dn, attrs) for dn, attrs in found if dn is not None), key=lambda entry: entry[0])

    def _user(self, action: str, filterstr: str, wanted_name: str | None) -> DirectoryUser | None:
        found = self._search(action, filterstr, _USER_ATTRIBUTES)
        if not found:
            return None
        dn, attrs = found[0]
        with self._translated(action):
            names = [value.decode() for value in attrs["uid"] if b"\0" not in value]
            return DirectoryUser(
                dn=dn,
                name=_login_name(dn, names, wanted_name),
                uid=_id(attrs["uidNumber"][0]),
                gid=_id(attrs["gidNumber"][0]),
            )

    def find_user_by_uid(self, uid: int) -> DirectoryUser | None:
        value = escape_filter_chars(str(uid))
        return self._user(f"look up uid {uid}", f"(&{self._settings.user_filter}(uidNumber={value}))", None)

    def find_user_by_name(self, name: str) -> DirectoryUser | None:
        value = escape_filter_chars(name)
        return self._user(f"look up user {name!r}", f"(&{self._settings.user_filter}(uid={value}))", name)

    def group_name_by_gid(self, gid: int) -> str | None:
        value = escape_filter_chars(str(gid))
        action = f"look up group {gid}"
        found = self._search(action, f"(&{self._settings.group_filter}(gidNumber={value}))", ["cn"])
        if not found:
            return None
        with self._translated(action):
            return _group_name(*found[0])

    def groups_of(self, name: str, dn: str | None) -> dict[str, int | None]:
        """The groups whose member attribute lists this user (by login name, or by DN if known): cn -> gidNumber
        (None for a group without one, such as a groupOfNames)."""
        attribute = self._settings.group_attribute
        member = name if attribute.lower() in NAME_VALUED else dn
        if member is None:
            return {}  # DN-valued membership cannot name a user the directory does not hold
        action = f"look up the groups of {name!r}"
        filterstr = f"(&{self._settings.group_filter}({attribute}={escape_filter_chars(member)}))"
        found = self._search(action, filterstr, ["cn", "gidNumber"])
        with self._translated(action):
            return {_group_name(group_dn, attrs): _id(attrs["gidNumber"][0]) if attrs.get("gidNumber") else None
                    for group_dn, attrs in found}


def _id(value: bytes) -> int:
    number = int(value)
    if not 0 <= number <= _MAX_ID:
        raise ValueError(f"id {number} is outside 0..{_MAX_ID}")
    return number


def _rdn_value(dn: str, attribute: str, values: list[str]) -> str | None:
    for name, value, _ in str2dn(dn)[0]:
        if name.lower() == attribute and value in values:
            return str(value)
    return None


def _group_name(dn: str, attrs: _Attributes) -> str:
    """A group's cn; of several, the one in its DN."""
    names = [value.decode() for value in attrs["cn"]]
    return _rdn_value(dn, "cn", names) or names[0]


def _login_name(dn: str, names: list[str], wanted: str | None) -> str:
    """Of several uid values, the one asked for, else the one in the DN, else the first."""
    for name in names:
        if wanted is not None and name.casefold() == wanted.casefold():
            return name
    return _rdn_value(dn, "uid", names) or names[0]


@contextmanager
def session(settings: LdapSettings) -> Iterator[DirectorySession]:
    """A bound directory session for the block; the connection is closed on the way out."""
    directory = DirectorySession(settings)
    try:
        directory.bind()
        yield directory
    finally:
        directory.close()
