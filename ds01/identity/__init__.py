"""Who a caller is: the local account databases (`nss`), the LDAP directory (`directory`), and the one resolver
that combines them (`users`). Nothing else in ds01 calls pwd or grp."""

from ds01.identity.users import (
    MAX_SANITIZED_LENGTH,
    UnknownUser,
    User,
    resolve_name,
    resolve_user,
    sanitize_username,
)

__all__ = ["MAX_SANITIZED_LENGTH", "UnknownUser", "User", "resolve_name", "resolve_user", "sanitize_username"]
