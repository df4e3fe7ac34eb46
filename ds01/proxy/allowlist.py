"""A request body read through the rule table before the policy sees it.

A key is matched case-insensitively (the engine's JSON decoder folds case) and rewritten to the API's own
spelling; a key with no rule is refused with its name, and each simple rule is checked on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ds01.errors import Denied
from ds01.proxy.rules import TABLES, FieldRule, Shape
from ds01.reasons import Reason

_BY_FOLDED = {table: {key.casefold(): key for key in rules} for table, rules in TABLES.items()}


def canonical(body: Mapping[str, Any], table: str, where: str = "") -> dict[str, Any]:
    """The body with every key spelled as the API spells it, each value's simple rule checked; a key with no
    rule is refused. Free-form maps (labels, options, tmpfs paths) keep their keys."""
    rules = TABLES[table]
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = _BY_FOLDED[table].get(key.casefold())
        path = f"{where}.{key}" if where else key
        if name is None:
            raise Denied(Reason.UNKNOWN_FIELD, (
                f"{path} is not a field the ds01 proxy knows in a {table} body, so it is refused (the proxy passes "
                "on only fields it has a rule for). Leave it out; if a client needs it, tell the admin."))
        if name in out:
            raise Denied(Reason.BAD_REQUEST, f"{path} is given twice, in different spellings; send it once.")
        rule = rules[name]
        if rule.check is not None:
            rule.check(value, f"{where}.{name}" if where else name)
        out[name] = _nested(value, rule, f"{where}.{name}" if where else name)
    return out


def _nested(value: Any, rule: FieldRule, path: str) -> Any:
    if value is None:
        return None
    if rule.shape is Shape.OBJECT:
        if not isinstance(value, dict):
            raise Denied(Reason.BAD_REQUEST, f"{path} must be a JSON object")
        return canonical(value, rule.of, path) if rule.of else value
    if rule.shape is Shape.LIST:
        if not isinstance(value, list):
            raise Denied(Reason.BAD_REQUEST, f"{path} must be a list")
        if rule.of is None:
            return value
        if not all(isinstance(item, dict) for item in value):
            raise Denied(Reason.BAD_REQUEST, f"{path} entries must be objects")
        return [canonical(item, rule.of, f"{path}[{index}]") for index, item in enumerate(value)]
    if rule.shape in (Shape.MAP, Shape.MAP_OF_LISTS):
        if not isinstance(value, dict):
            raise Denied(Reason.BAD_REQUEST, f"{path} must be a JSON object")
        if rule.of is None:
            return value
        item_shape = Shape.LIST if rule.shape is Shape.MAP_OF_LISTS else Shape.OBJECT
        item_rule = FieldRule(rule.rule, rule.why, item_shape, rule.of)
        return {key: _nested(item, item_rule, f"{path}[{key}]") for key, item in value.items()}
    return value
