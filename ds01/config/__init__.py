"""resource-limits.yaml: its schema (`schema`), value checks (`validators`), loading (`loader`) and the
resolution defaults -> group -> user (`resolve`). The names most callers need are re-exported here."""

from ds01.config.loader import NETWORK_FIELDS, PROXY_FIELDS, SCHEMA_VERSION, TOP_LEVEL_KEYS, load_config
from ds01.config.resolve import Effective, ds01_group, effective_limits
from ds01.config.schema import (
    BUILTIN_DEFAULTS,
    DN_VALUED,
    ENDPOINT_GROUPS,
    EXEMPTIBLE,
    IDLE_RECLAIM_MODES,
    LIMIT_KEYS,
    LIMIT_KEYS_BY_NAME,
    NAME_VALUED,
    AllocationSettings,
    BareMetalSettings,
    CleanupSettings,
    Config,
    ContainerDefaults,
    EventLogSettings,
    Exemption,
    GroupRule,
    HostService,
    IdleReclaim,
    ImageSettings,
    LdapSettings,
    LimitKey,
    LimitValues,
    NetworkSettings,
    ProxySettings,
    SchedulerSettings,
    SecuritySettings,
    UserRule,
)
from ds01.config.validators import DEFAULT_ULIMITS, ULIMIT_NAMES, UNLIMITED, format_ulimits

__all__ = [
    "BUILTIN_DEFAULTS", "DEFAULT_ULIMITS", "DN_VALUED", "ENDPOINT_GROUPS", "EXEMPTIBLE", "IDLE_RECLAIM_MODES",
    "LIMIT_KEYS", "LIMIT_KEYS_BY_NAME", "NAME_VALUED", "NETWORK_FIELDS", "PROXY_FIELDS", "SCHEMA_VERSION",
    "TOP_LEVEL_KEYS", "ULIMIT_NAMES", "UNLIMITED", "AllocationSettings", "BareMetalSettings", "CleanupSettings",
    "Config", "ContainerDefaults", "Effective", "EventLogSettings", "Exemption", "GroupRule", "HostService",
    "IdleReclaim", "ImageSettings", "LdapSettings", "LimitKey", "LimitValues", "NetworkSettings", "ProxySettings",
    "SchedulerSettings", "SecuritySettings", "UserRule", "ds01_group", "effective_limits", "format_ulimits",
    "load_config",
]
