"""Docker API request bodies read the way the engine reads them: strict JSON, field names case-insensitive.

The engine decodes JSON field names case-insensitively, so every field is read case-insensitively here and
bodies with duplicate or case-variant keys are refused outright.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ds01.errors import Denied
from ds01.reasons import Reason

_GO_INT = re.compile(r"[+-]?[0-9]+")


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Strict JSON: an object, no duplicate keys and no keys differing only in case (the engine folds case)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for key, _ in items:
            folded = key.casefold()
            if folded in seen:
                raise Denied(Reason.BAD_REQUEST,
                             f"the {what} has the key {key!r} twice (as {seen[folded]!r} and {key!r}); "
                                           "send each field once, spelled as the Docker API spells it.")
            seen[folded] = key
        return dict(items)

    try:
        value = json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        raise Denied(Reason.BAD_REQUEST, f"the {what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Denied(Reason.BAD_REQUEST, f"the {what} must be a JSON object")
    return value


def field(obj: Mapping[str, Any] | None, name: str) -> Any:
    """A field read the way the engine reads it: case-insensitively."""
    if not obj:
        return None
    folded = name.casefold()
    for key, value in obj.items():
        if key.casefold() == folded:
            return value
    return None


def set_field(obj: dict[str, Any], name: str, value: Any) -> None:
    """Replace a field, whatever its spelling, by the canonical one."""
    folded = name.casefold()
    for key in [k for k in obj if k.casefold() == folded]:
        del obj[key]
    obj[name] = value


def host_config(body: dict[str, Any]) -> dict[str, Any]:
    host = field(body, "HostConfig")
    if host is None:
        host = {}
    if not isinstance(host, dict):
        raise Denied(Reason.BAD_REQUEST, "HostConfig must be a JSON object")
    set_field(body, "HostConfig", host)
    return host


def as_list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Denied(Reason.BAD_REQUEST, f"{name} must be a list")
    return value


def split_bind(bind: str) -> tuple[str, str]:
    """("source", "rest") of a -v style bind "src:dst[:opts]"."""
    if not isinstance(bind, str) or ":" not in bind:
        raise Denied(Reason.BAD_REQUEST, f"bind {bind!r} is not of the form SOURCE:TARGET[:OPTIONS]")
    source, _, rest = bind.partition(":")
    return source, rest


def is_volume_name(source: str) -> bool:
    return not source.startswith("/")


def mounts_of(host: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = as_list(field(host, "Mounts"), "HostConfig.Mounts")
    if not all(isinstance(m, dict) for m in mounts):
        raise Denied(Reason.BAD_REQUEST, "HostConfig.Mounts entries must be objects")
    return mounts


def go_int(text: str) -> int | None:
    """A number as the runtime parses one (Go's Atoi: an optional sign, ASCII digits), else None."""
    return int(text) if _GO_INT.fullmatch(text) else None


