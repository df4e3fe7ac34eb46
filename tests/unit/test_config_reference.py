"""docs-admin/configuration.md lists every key the loader accepts, with the loader's built-in default."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from ds01.config import (
    LIMIT_KEYS,
    AllocationSettings,
    BareMetalSettings,
    CleanupSettings,
    ContainerDefaults,
    EventLogSettings,
    ImageSettings,
    ProxySettings,
    SchedulerSettings,
    SecuritySettings,
    fleet,
    format_ulimits,
    loader,
)
from ds01.config.schema import EtcdSettings, FleetSettings
from ds01.units import format_duration, format_size

REFERENCE = Path(__file__).resolve().parents[2] / "docs-admin" / "configuration.md"
TEXT = REFERENCE.read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", TEXT, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def row(text: str, key: str) -> list[str]:
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells and cells[0] == f"`{key}`":
            return cells
    raise AssertionError(f"{key} is not documented")


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, frozenset)):
        return "[" + ", ".join(str(v) for v in sorted(value)) + "]"
    return str(value)


def test_every_top_level_key_is_documented() -> None:
    for key in loader.TOP_LEVEL_KEYS:
        row(section("Top level"), key)


def test_every_limit_key_with_its_default() -> None:
    text = section("Limits: `defaults`, `groups.NAME`, `users.NAME`")
    for key in LIMIT_KEYS:
        default = key.default
        if key.field.endswith("_seconds"):
            expected = format_duration(default)
        elif key.field.endswith("_bytes"):
            expected = format_size(default)
        elif key.name == "ulimits":
            expected = format_ulimits(default)
        elif default is None:
            expected = "any"
        else:
            expected = shown(int(default) if isinstance(default, float) and default.is_integer() else default)
        cells = row(text, key.name)
        assert cells[1] == f"`{expected}`", (key.name, cells[1], expected)
        assert cells[3] == key.enforced_by


@pytest.mark.parametrize(("title", "table", "settings"), [
    ("`allocation`", loader.ALLOCATION_FIELDS, AllocationSettings()),
    ("`events`", loader.EVENT_FIELDS, EventLogSettings()),
    ("`cleanup`", loader.CLEANUP_FIELDS, CleanupSettings()),
    ("`bare_metal`", loader.BARE_METAL_FIELDS, BareMetalSettings()),
    ("`proxy`", loader.PROXY_FIELDS, ProxySettings()),
    ("`images`", loader.IMAGE_FIELDS, ImageSettings()),
    ("`scheduler`", loader.SCHEDULER_FIELDS, SchedulerSettings()),
])
def test_every_section_key_with_its_default(title: str, table: dict[str, tuple[str, object]],
                                            settings: object) -> None:
    text = section(title)
    for key, (field_name, _) in table.items():
        default = getattr(settings, field_name)
        if field_name.endswith("_seconds"):
            expected = format_duration(default)
        elif field_name.endswith("_bytes"):
            expected = format_size(default)
        elif isinstance(default, float) and default.is_integer():
            expected = str(int(default))
        elif default is None:
            expected = "any"
        else:
            expected = shown(default)
        assert row(text, key)[1] == f"`{expected}`", key
    assert len(table) == len(fields(type(settings)))  # no dataclass field without a YAML key


def test_security_containers_admins_identity_keys() -> None:
    for key in ("data_dirs", "cap_add", "allow_endpoints"):
        assert row(section("`security`"), key)[1] == "`[]`"
    defaults = SecuritySettings()
    assert row(section("`security`"), "home_roots")[1] == f"`[{', '.join(defaults.home_roots)}]`"
    for key in ("admin_root", "require_nosuid_mounts"):
        assert row(section("`security`"), key)[1] == f"`{shown(getattr(defaults, key))}`"
    assert {f.name for f in fields(SecuritySettings)} == {"data_dirs", "home_roots", "cap_add_allowed",
                                                           "allowed_endpoints", "admin_root", "require_nosuid_mounts"}
    row(section("`containers`"), "default_image")
    assert row(section("`containers`"), "workspace_root")[1] == f"`{ContainerDefaults().workspace_root}`"
    for key in ("users", "groups"):
        row(section("`admins`"), key)
    for key in ("source", "ldap.uri", "ldap.base_dn", "ldap.group_attribute", "ldap.user_filter",
                "ldap.group_filter", "ldap.bind_dn", "ldap.bind_password_file", "ldap.timeout"):
        row(section("`identity`"), key)
    for key in ("user", "exempt_from", "expires", "reason"):
        row(section("`exemptions`"), key)


def test_the_fleet_section_documents_every_key_with_its_default() -> None:
    text = section("`fleet`")
    settings = FleetSettings()
    assert row(text, "node_ttl")[1] == f"`{format_duration(settings.node_ttl_seconds)}`"
    assert settings.etcd.endpoints == () and row(text, "etcd.endpoints")[1] == "none: required with `store: etcd`"
    assert row(text, "etcd.prefix")[1] == f"`{settings.etcd.prefix}`"
    assert row(text, "etcd.timeout")[1] == f"`{format_duration(int(settings.etcd.timeout_seconds))}`"
    for key in ("node", "etcd.ca_file", "etcd.cert_file", "etcd.key_file"):
        assert row(text, key)[2]
    documented = {"node", "node_ttl", *(f"etcd.{key}" for key in fleet.ETCD_FIELDS)}
    assert len(fleet.ETCD_FIELDS) == len(fields(EtcdSettings)) and len(fleet.FLEET_FIELDS) + 1 == len(fields(settings))
    for key in documented:
        assert row(text, key)
