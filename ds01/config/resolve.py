"""Resolution of one user's limits: defaults, then their group's overrides, then their own, then exemptions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ds01.config.schema import LIMIT_KEYS_BY_NAME, Config, Exemption, LimitValues


@dataclass(frozen=True)
class Effective:
    """What applies to one user right now."""

    user: str
    group: str
    is_admin: bool
    limits: LimitValues
    exemptions: tuple[Exemption, ...]  # the ones in force


def ds01_group(config: Config, user: str, system_groups: Sequence[str]) -> str:
    rule = config.users.get(user)
    if rule is not None and rule.group is not None:
        return rule.group
    for group in config.groups:
        if set(group.system_groups) & set(system_groups):
            return group.name
    return config.default_group


def effective_limits(config: Config, user: str, system_groups: Sequence[str], now: datetime) -> Effective:
    group_name = ds01_group(config, user, system_groups)
    limits = config.defaults
    for group in config.groups:
        if group.name == group_name:
            limits = limits.with_overrides(group.overrides)
    rule = config.users.get(user)
    if rule is not None:
        limits = limits.with_overrides(rule.overrides)
    active = tuple(e for e in config.exemptions if e.user == user and e.expires_at > now)
    lifted = {LIMIT_KEYS_BY_NAME[name].field: None for e in active for name in e.exempt_from}
    return Effective(
        user=user,
        group=group_name,
        is_admin=user in config.admin_users or bool(config.admin_groups & set(system_groups)),
        limits=limits.with_overrides(lifted),
        exemptions=active,
    )
