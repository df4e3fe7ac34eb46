"""The only door to the local account databases (pwd and grp, through NSS): lookups that answer None for
"no such entry" instead of raising KeyError."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

Account = pwd.struct_passwd


def account_by_uid(uid: int) -> Account | None:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def account_by_name(name: str) -> Account | None:
    try:
        return pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL byte, which no login name has
        return None


def login_name(uid: int) -> str | None:
    account = account_by_uid(uid)
    return account.pw_name if account is not None else None


def home_of(uid: int) -> Path:
    """The home directory the password database gives uid; ~ as the environment says when it has none."""
    account = account_by_uid(uid)
    return Path(account.pw_dir if account is not None else os.path.expanduser("~"))


def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def group_id(name: str) -> int | None:
    """The gid of a group, or None when NSS has no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def group_members(gid: int) -> set[str]:
    """Everyone in the group: its listed members, and the users whose primary group it is."""
    try:
        listed = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        listed = set()
    return listed | {account.pw_name for account in pwd.getpwall() if account.pw_gid == gid}


def group_ids_of(name: str, primary_gid: int) -> list[int]:
    """Every gid the user is in: the primary one and the supplementary ones NSS lists."""
    return os.getgrouplist(name, primary_gid)


def group_names_of(account: Account) -> set[str]:
    """The names of every group the user is in; a gid NSS cannot name is left out."""
    return {name for gid in group_ids_of(account.pw_name, account.pw_gid) if (name := group_name(gid)) is not None}
