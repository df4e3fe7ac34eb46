"""Strict loading of resource-limits.yaml into `ds01.config.schema.Config`.

Every error names the file, the line and the key. Unknown keys, duplicate keys, wrong types and invalid values
are all errors: nothing an admin writes is silently ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from ds01.config import fleet, validators
from ds01.config.schema import (
    BUILTIN_DEFAULTS,
    ENDPOINT_GROUPS,
    EXEMPTIBLE,
    IDLE_RECLAIM_MODES,
    LIMIT_KEYS,
    LIMIT_KEYS_BY_NAME,
    AllocationSettings,
    BareMetalSettings,
    CleanupSettings,
    Config,
    ContainerDefaults,
    EventLogSettings,
    Exemption,
    FleetSettings,
    GroupRule,
    HostService,
    ImageSettings,
    LdapSettings,
    NetworkSettings,
    ProxySettings,
    SchedulerSettings,
    SecuritySettings,
    UserRule,
)
from ds01.errors import ConfigError
from ds01.paths import paths_from_env

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = ("version", "identity", "admins", "allocation", "security", "containers", "events", "cleanup",
                  "bare_metal", "proxy", "networks", "images", "scheduler", "default_group", "defaults", "groups",
                  "users", "exemptions", "fleet")
_T = TypeVar("_T")
_Entries = dict[str, tuple[yaml.Node, yaml.Node]]


class _Reader:
    """Walks the YAML node tree, so every message can point at a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.path}:{node.start_mark.line + 1}: {key}: {problem}")

    def mapping(self, node: yaml.Node, key: str, allowed: Collection[str] | None = None) -> _Entries:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, "must be a mapping of keys to values")
        entries: _Entries = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str) or key_node.tag != "tag:yaml.org,2002:str":
                self.fail(key_node, key or "(top level)", "keys must be plain names")
            if name in entries:
                first = entries[name][0].start_mark.line + 1
                self.fail(key_node, where, f"duplicate key (first written on line {first})")
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(key_node, where, f"unknown key; {hint}known keys: {', '.join(allowed)}")
            entries[name] = (key_node, value_node)
        return entries

    def value(self, node: yaml.Node, key: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.fail(node, key, "must be a single value or a list, not a mapping")
        return self._constructor.construct_object(node, deep=True)

    def parsed(self, node: yaml.Node, key: str, parse: Callable[[Any], _T]) -> _T:
        try:
            return parse(self.value(node, key))
        except ValueError as exc:
            self.fail(node, key, str(exc))

    def parsed_mapping(self, node: yaml.Node, key: str, parse: Callable[[Any], _T]) -> _T:
        self.mapping(node, key)  # plain keys, each once
        try:
            return parse(self._constructor.construct_object(node, deep=True))
        except ValueError as exc:
            self.fail(node, key, str(exc))

    def names(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        value = self.value(node, key)
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            self.fail(node, key, "must be a list of names, like [alice, bob]")
        return tuple(value)

    def text(self, node: yaml.Node, key: str) -> str:
        value = self.value(node, key)
        if not isinstance(value, str) or not value:
            self.fail(node, key, "must be a non-empty text value")
        return value


def _limit_overrides(reader: _Reader, entries: _Entries, key: str) -> dict[str, Any]:
    overrides = {}
    for name, (_, value_node) in entries.items():
        if name in LIMIT_KEYS_BY_NAME:
            spec = LIMIT_KEYS_BY_NAME[name]
            if isinstance(value_node, yaml.MappingNode) and name == "ulimits":  # the one limit that is a map
                overrides[spec.field] = reader.parsed_mapping(value_node, f"{key}.{name}", spec.parse)
                continue
            overrides[spec.field] = reader.parsed(value_node, f"{key}.{name}", spec.parse)
    return overrides


def _expiry(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):  # a date is good through the end of that day, UTC
        return datetime(value.year, value.month, value.day, tzinfo=UTC) + timedelta(days=1)
    raise ValueError(f"{value!r} is not a date (2026-12-31) or a time (2026-12-31T18:00:00Z)")


def _exemptions(reader: _Reader, node: yaml.Node) -> tuple[Exemption, ...]:
    if not isinstance(node, yaml.SequenceNode):
        reader.fail(node, "exemptions", "must be a list of {user, exempt_from, expires, reason}")
    result = []
    for index, item in enumerate(node.value):
        key = f"exemptions[{index}]"
        entries = reader.mapping(item, key, ("user", "exempt_from", "expires", "reason"))
        for required in ("user", "exempt_from", "expires", "reason"):
            if required not in entries:
                reader.fail(item, key, f"{required!r} is required")
        exempt_node = entries["exempt_from"][1]
        exempt_from = reader.names(exempt_node, f"{key}.exempt_from")
        for name in exempt_from:
            if name not in EXEMPTIBLE:
                reader.fail(exempt_node, f"{key}.exempt_from", f"{name!r} cannot be exempted; choose from {EXEMPTIBLE}")
        result.append(Exemption(
            user=reader.text(entries["user"][1], f"{key}.user"),
            exempt_from=frozenset(exempt_from),
            expires_at=reader.parsed(entries["expires"][1], f"{key}.expires", _expiry),
            reason=reader.text(entries["reason"][1], f"{key}.reason"),
        ))
    return tuple(result)


def _allocation(reader: _Reader, node: yaml.Node) -> AllocationSettings:
    return AllocationSettings(**_section(reader, node, "allocation", ALLOCATION_FIELDS))


def _absolute_dirs(reader: _Reader, entries: _Entries, name: str) -> tuple[str, ...]:
    """A list of absolute directories below /, written without a trailing slash."""
    if name not in entries:
        return ()
    node = entries[name][1]
    paths = reader.names(node, f"security.{name}")
    for path in paths:
        if not path.startswith("/") or path.rstrip("/") == "":
            reader.fail(node, f"security.{name}", f"{path!r} must be an absolute path below /")
    return tuple(path.rstrip("/") for path in paths)


def _security(reader: _Reader, node: yaml.Node) -> SecuritySettings:
    entries = reader.mapping(node, "security", ("data_dirs", "home_roots", "cap_add", "allow_endpoints",
                                                "admin_root", "require_nosuid_mounts"))
    caps = reader.names(entries["cap_add"][1], "security.cap_add") if "cap_add" in entries else ()
    endpoints = reader.names(entries["allow_endpoints"][1], "security.allow_endpoints") \
        if "allow_endpoints" in entries else ()
    for name in endpoints:
        if name not in ENDPOINT_GROUPS:
            reader.fail(entries["allow_endpoints"][1], "security.allow_endpoints",
                        f"{name!r} is not one of {', '.join(ENDPOINT_GROUPS)}")
    flags = {name: reader.parsed(entries[name][1], f"security.{name}", validators.flag)
             for name in ("admin_root", "require_nosuid_mounts") if name in entries}
    return SecuritySettings(
        data_dirs=_absolute_dirs(reader, entries, "data_dirs"),
        home_roots=_absolute_dirs(reader, entries, "home_roots") if "home_roots" in entries else ("/home",),
        cap_add_allowed=frozenset(cap.upper().removeprefix("CAP_") for cap in caps),
        allowed_endpoints=frozenset(endpoints),
        **flags,
    )


def _container_defaults(reader: _Reader, node: yaml.Node) -> ContainerDefaults:
    entries = reader.mapping(node, "containers", ("default_image", "workspace_root"))
    values = {name: reader.text(value, f"containers.{name}") for name, (_, value) in entries.items()}
    root = values.get("workspace_root", "~/workspace")
    if not root.startswith(("~/", "/")):
        reader.fail(entries["workspace_root"][1], "containers.workspace_root", "must start with ~/ or /")
    return ContainerDefaults(default_image=values.get("default_image"), workspace_root=root)


def _section(reader: _Reader, node: yaml.Node, key: str,
             fields: dict[str, tuple[str, Callable[[Any], Any]]]) -> dict[str, Any]:
    """A flat section: each YAML key maps to (dataclass field, parser)."""
    entries = reader.mapping(node, key, tuple(fields))
    return {fields[name][0]: reader.parsed(value, f"{key}.{name}", fields[name][1])
            for name, (_, value) in entries.items()}


ALLOCATION_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "store": ("store", validators.choice(("file", "etcd"))),
    "strategy": ("strategy", validators.choice(("spread", "pack"))),
    "mig_preference": ("mig_preference", validators.choice(("restricted", "all", "none"))),
    "reservation_ttl": ("reservation_ttl_seconds", validators.positive_duration),
    "lock_timeout": ("lock_timeout_seconds", validators.positive_duration),
    "xid_quarantine": ("xid_quarantine_seconds", validators.positive_duration),
    "critical_xids": ("critical_xids", validators.xids),
}
EVENT_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "max_size": ("max_bytes", validators.size),
    "max_age": ("max_age_seconds", validators.positive_duration),
    "keep": ("keep", validators.positive_count),
}
CLEANUP_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "idle_gpu_percent": ("idle_gpu_percent", validators.percent),
    "idle_cpu_percent": ("idle_cpu_percent", validators.percent),
    "warn_at": ("warn_at", validators.fractions),
    "keepalive_file": ("keepalive_file", validators.file_name),
    "keepalive_max_age": ("keepalive_max_age_seconds", validators.positive_duration),
    "min_age": ("min_age_seconds", validators.positive_duration),
    "stop_timeout": ("stop_timeout_seconds", validators.positive_duration),
    "remove_after_release": ("remove_after_release", validators.flag),
    "idle_reclaim": ("idle_reclaim", validators.choice(IDLE_RECLAIM_MODES)),
}
BARE_METAL_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "group": ("group", validators.group_name),
    "default_duration": ("default_duration_seconds", validators.positive_duration),
    "max_duration": ("max_duration_seconds", validators.positive_duration),
}


PROXY_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "idle_timeout": ("idle_timeout_seconds", validators.positive_duration),
    "header_timeout": ("header_timeout_seconds", validators.positive_duration),
    "max_header_size": ("max_header_bytes", validators.size),
    "max_connections_per_user": ("max_connections_per_user", validators.positive_count),
}


def _host_services(value: Any) -> tuple[HostService, ...]:
    return tuple(HostService(*entry) for entry in validators.host_services(value))


NETWORK_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "host_services": ("host_services", _host_services),
    "reserved_ports": ("reserved_ports", validators.ports),
}
SCHEDULER_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "weight_fairshare": ("weight_fairshare", validators.weight),
    "weight_age": ("weight_age", validators.weight),
    "max_age": ("max_age_seconds", validators.positive_duration),
    "usage_half_life": ("usage_half_life_seconds", validators.positive_duration),
    "default_wait": ("default_wait_seconds", validators.positive_duration),
    "default_job_time": ("default_job_time_seconds", validators.positive_duration),
    "max_job_log": ("max_job_log_bytes", validators.size),
}
IMAGE_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "allowed_registries": ("allowed_registries", validators.registries),
    "max_context_size": ("max_context_size_bytes", validators.size),
    "prune_after": ("prune_after_seconds", validators.positive_duration),
}


def _ldap(reader: _Reader, node: yaml.Node) -> LdapSettings | None:
    entries = reader.mapping(node, "identity", ("source", "ldap"))
    source = "nss"
    if "source" in entries:
        source = reader.parsed(entries["source"][1], "identity.source", validators.choice(("nss", "ldap")))
    if source == "nss":
        if "ldap" in entries:
            reader.fail(entries["ldap"][0], "identity.ldap", "is set but identity.source is nss; set source: ldap")
        return None
    if "ldap" not in entries:
        reader.fail(node, "identity", "source is ldap but the ldap section (uri, base_dn) is missing")
    ldap_node = entries["ldap"][1]
    texts = ("uri", "base_dn", "group_attribute", "user_filter", "group_filter", "bind_dn")
    ldap_entries = reader.mapping(ldap_node, "identity.ldap", (*texts, "bind_password_file", "timeout"))
    for required in ("uri", "base_dn"):
        if required not in ldap_entries:
            reader.fail(ldap_node, "identity.ldap", f"{required!r} is required")
    values: dict[str, Any] = {
        name: reader.text(value, f"identity.ldap.{name}") for name, (_, value) in ldap_entries.items() if name in texts}
    if "bind_password_file" in ldap_entries:
        values["bind_password_file"] = Path(reader.text(ldap_entries["bind_password_file"][1],
                                                        "identity.ldap.bind_password_file"))
    if "timeout" in ldap_entries:
        values["timeout_seconds"] = reader.parsed(ldap_entries["timeout"][1], "identity.ldap.timeout",
                                                  validators.positive_duration)
    try:
        return LdapSettings(**values)
    except ConfigError as exc:
        reader.fail(ldap_node, "identity.ldap", str(exc))


def _groups(reader: _Reader, node: yaml.Node) -> tuple[GroupRule, ...]:
    allowed = ("system_groups", "share", "priority", *(key.name for key in LIMIT_KEYS))
    rules = []
    for name, (_, group_node) in reader.mapping(node, "groups").items():
        entries = reader.mapping(group_node, f"groups.{name}", allowed)
        system_groups = reader.names(entries["system_groups"][1], f"groups.{name}.system_groups") \
            if "system_groups" in entries else ()
        scheduling = {key: reader.parsed(entries[key][1], f"groups.{name}.{key}", parse)
                      for key, parse in (("share", validators.share), ("priority", validators.priority))
                      if key in entries}
        rules.append(GroupRule(name, system_groups, _limit_overrides(reader, entries, f"groups.{name}"),
                               **scheduling))
    return tuple(rules)


def _users(reader: _Reader, node: yaml.Node, group_names: set[str]) -> dict[str, UserRule]:
    allowed = ("group", *(key.name for key in LIMIT_KEYS))
    rules = {}
    for name, (_, user_node) in reader.mapping(node, "users").items():
        entries = reader.mapping(user_node, f"users.{name}", allowed)
        group = None
        if "group" in entries:
            group = reader.text(entries["group"][1], f"users.{name}.group")
            if group not in group_names:
                reader.fail(entries["group"][1], f"users.{name}.group", f"no ds01 group named {group!r} under groups")
        rules[name] = UserRule(name, group, _limit_overrides(reader, entries, f"users.{name}"))
    return rules


def _top(path: Path) -> tuple[_Reader, yaml.Node, _Entries]:
    """The file's top-level entries, with the reader that points at their lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}. "
                          "Create it from config/resource-limits.yaml, or point DS01_CONFIG at it.") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if root is None:
        raise ConfigError(f"{path}: the file is empty; start from config/resource-limits.yaml")
    reader = _Reader(path)
    top = reader.mapping(root, "", TOP_LEVEL_KEYS)
    if "version" not in top or reader.value(top["version"][1], "version") != SCHEMA_VERSION:
        reader.fail(top["version"][1] if "version" in top else root, "version", f"must be {SCHEMA_VERSION}")
    return reader, root, top


def _fleet(reader: _Reader, node: yaml.Node) -> FleetSettings:
    entries = reader.mapping(node, "fleet", (*fleet.FLEET_FIELDS, "etcd"))
    fields = {fleet.FLEET_FIELDS[name][0]: reader.parsed(value, f"fleet.{name}", fleet.FLEET_FIELDS[name][1])
              for name, (_, value) in entries.items() if name != "etcd"}
    etcd = _section(reader, entries["etcd"][1], "fleet.etcd", fleet.ETCD_FIELDS) if "etcd" in entries else None
    try:
        return fleet.fleet_settings(fields, etcd)
    except ValueError as exc:
        reader.fail(node, "fleet", str(exc))


def _proxy(reader: _Reader, top: _Entries) -> ProxySettings:
    return ProxySettings(**_section(reader, top["proxy"][1], "proxy", PROXY_FIELDS)) if "proxy" in top \
        else ProxySettings()


def load_config(path: Path | None = None) -> Config:
    """Read and validate resource-limits.yaml (DS01_CONFIG unless a path is given)."""
    path = path or paths_from_env().config
    reader, root, top = _top(path)

    defaults_entries = reader.mapping(top["defaults"][1], "defaults", [k.name for k in LIMIT_KEYS]) \
        if "defaults" in top else {}
    defaults = BUILTIN_DEFAULTS.with_overrides(_limit_overrides(reader, defaults_entries, "defaults"))
    groups = _groups(reader, top["groups"][1]) if "groups" in top else ()
    group_names = {group.name for group in groups}
    default_group = reader.text(top["default_group"][1], "default_group") if "default_group" in top else "default"
    if groups and default_group not in group_names:
        where = top["default_group"][1] if "default_group" in top else root
        reader.fail(where, "default_group",
                    f"{default_group!r} is not one of the groups: {', '.join(sorted(group_names))}")
    admins = reader.mapping(top["admins"][1], "admins", ("users", "groups")) if "admins" in top else {}
    admin_users = reader.names(admins["users"][1], "admins.users") if "users" in admins else ()
    admin_groups = reader.names(admins["groups"][1], "admins.groups") if "groups" in admins else ()
    allocation = _allocation(reader, top["allocation"][1]) if "allocation" in top else AllocationSettings()
    fleet_settings = _fleet(reader, top["fleet"][1]) if "fleet" in top else FleetSettings()
    if allocation.store == "etcd" and not fleet_settings.etcd.endpoints:  # no default: the cluster must be named
        reader.fail(top["allocation"][1], "allocation.store", (
            "is etcd, but fleet.etcd.endpoints names no etcd cluster; list its members' client URLs there "
            "(docs-admin/fleet.md), or keep store: file"))
    return Config(
        source=path,
        defaults=defaults,
        default_group=default_group,
        groups=groups,
        users=_users(reader, top["users"][1], group_names) if "users" in top else {},
        admin_users=frozenset(admin_users),
        admin_groups=frozenset(admin_groups),
        exemptions=_exemptions(reader, top["exemptions"][1]) if "exemptions" in top else (),
        allocation=allocation,
        ldap=_ldap(reader, top["identity"][1]) if "identity" in top else None,
        security=_security(reader, top["security"][1]) if "security" in top else SecuritySettings(),
        containers=_container_defaults(reader, top["containers"][1]) if "containers" in top else ContainerDefaults(),
        events=EventLogSettings(**_section(reader, top["events"][1], "events", EVENT_FIELDS))
        if "events" in top else EventLogSettings(),
        cleanup=CleanupSettings(**_section(reader, top["cleanup"][1], "cleanup", CLEANUP_FIELDS))
        if "cleanup" in top else CleanupSettings(),
        bare_metal=BareMetalSettings(**_section(reader, top["bare_metal"][1], "bare_metal", BARE_METAL_FIELDS))
        if "bare_metal" in top else BareMetalSettings(),
        proxy=_proxy(reader, top),
        networks=NetworkSettings(**_section(reader, top["networks"][1], "networks", NETWORK_FIELDS))
        if "networks" in top else NetworkSettings(),
        images=ImageSettings(**_section(reader, top["images"][1], "images", IMAGE_FIELDS))
        if "images" in top else ImageSettings(),
        scheduler=SchedulerSettings(**_section(reader, top["scheduler"][1], "scheduler", SCHEDULER_FIELDS))
        if "scheduler" in top else SchedulerSettings(),
        fleet=fleet_settings,
    )
