"""How to reach the LDAP directory: settings only, so reading the config does not load python-ldap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ds01.errors import ConfigError

# What each supported group attribute holds: the member's login name, or the member's DN.
NAME_VALUED = frozenset({"memberuid"})
DN_VALUED = frozenset({"member", "uniquemember"})


@dataclass(frozen=True)
class LdapSettings:
    uri: str  # e.g. "ldap://127.0.0.1:3890"
    base_dn: str
    group_attribute: str = "memberUid"  # or "member" / "uniqueMember"
    user_filter: str = "(objectClass=posixAccount)"
    group_filter: str = "(|(objectClass=posixGroup)(objectClass=groupOfNames))"
    bind_dn: str | None = None
    bind_password_file: Path | None = None  # read at connect time; never logged
    timeout_seconds: float = 3.0

    def __post_init__(self) -> None:
        if self.group_attribute.lower() not in NAME_VALUED | DN_VALUED:
            raise ConfigError(
                f"LDAP group attribute {self.group_attribute!r} is not supported: "
                "use memberUid (holds login names), member or uniqueMember (hold user DNs)"
            )
        if self.bind_dn is not None and self.bind_password_file is None:
            raise ConfigError(
                f"LDAP bind DN {self.bind_dn!r} has no password file: set bind_password_file, "
                "or drop bind_dn to search anonymously"
            )
        if self.timeout_seconds <= 0:
            raise ConfigError(f"LDAP timeout must be positive, not {self.timeout_seconds}")
