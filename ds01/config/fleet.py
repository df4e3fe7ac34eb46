"""The `fleet:` section: this node's name, its lease, and the etcd cluster the fleet shares (allocation.store: etcd).
Strict like every section: unknown keys, bad values, TLS half given and an etcd store with no fleet are errors."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ds01.config import validators
from ds01.config.schema import EtcdSettings, FleetSettings

NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def node_name(value: Any) -> str:
    if not isinstance(value, str) or not NODE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a node name: lower-case letters, digits and '-', as in a host name")
    return value


def endpoints(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a list of URLs, like [http://10.0.0.1:2379, http://10.0.0.2:2379]")
    for url in value:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{url!r} is not an etcd client URL like http://10.0.0.1:2379")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{url!r} has a bad port") from exc
    return tuple(value)


def prefix(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/") or len(value) < 3 \
            or "//" in value:
        raise ValueError(f"{value!r} must be a key prefix like /ds01/ (starting and ending with /)")
    return value


def readable_file(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path to a PEM file")
    return Path(value)


def timeout(value: Any) -> float:
    seconds = validators.positive_duration(value)
    if seconds > 60:
        raise ValueError(f"{value!r} is longer than 60s: a grant would wait that long on each member that is down")
    return float(seconds)


def node_ttl(value: Any) -> int:
    seconds = validators.positive_duration(value)
    if not 6 <= seconds <= 3600:
        raise ValueError(f"{value!r}: from 6s (the lease is renewed every third of it) to 1h (a dead node is shown "
                         "down only after it)")
    return seconds


ETCD_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "endpoints": ("endpoints", endpoints),
    "prefix": ("prefix", prefix),
    "ca_file": ("ca_file", readable_file),
    "cert_file": ("cert_file", readable_file),
    "key_file": ("key_file", readable_file),
    "timeout": ("timeout_seconds", timeout),
}
FLEET_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "node": ("node", node_name),
    "node_ttl": ("node_ttl_seconds", node_ttl),
}


def fleet_settings(fields: dict[str, Any], etcd: dict[str, Any] | None) -> FleetSettings:
    """From the parsed keys; raises ValueError for what no single key shows (TLS half given)."""
    settings = FleetSettings(**fields)
    if etcd is not None:
        settings = dataclasses.replace(settings, etcd=EtcdSettings(**etcd))
    if (settings.etcd.cert_file is None) != (settings.etcd.key_file is None):
        raise ValueError("etcd.cert_file and etcd.key_file go together: give both for client TLS, or neither")
    return settings
