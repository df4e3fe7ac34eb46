"""The names ds01 gives things: a user's container in the engine (NAME._.UID), its workspace mount, and the
headers the `container` command and the proxy recognise each other by."""

from __future__ import annotations

import re

from ds01 import __version__
from ds01.errors import UsageError

USER_AGENT = f"ds01-container/{__version__}"  # the proxy recognises its own CLI by this prefix
DRY_RUN_HEADER = "X-DS01-Dry-Run"
QUEUE_ID_HEADER = "X-DS01-Queue-Id"  # the container CLI follows its waiting request, and withdraws it, by this id
NAME_SEPARATOR = "._."  # engine name = NAME._.UID, so two users' "train" never collide
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
ENGINE_NAME = re.compile(r"/?([a-zA-Z0-9][a-zA-Z0-9_.-]*?)\._\.\d+\b")  # NAME._.UID inside a message
WORKSPACE = "/workspace"  # where `container create` mounts the user's workspace directory
_NAME_RULE = "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, without '._.'"


def check_name(name: str) -> str:
    """A container name as users type it; UsageError (exit 2) when it breaks the rules."""
    if not _NAME.fullmatch(name) or NAME_SEPARATOR in name:
        raise UsageError(f"{name!r} is not a valid container name: use {_NAME_RULE} (for example train-1).")
    return name


def engine_name(name: str, uid: int) -> str:
    return f"{check_name(name)}{NAME_SEPARATOR}{uid}"


def plain_name(engine_name_: str, uid: int) -> str | None:
    """NAME from NAME._.UID, or None when the engine name is not one of uid's `container` names."""
    suffix = f"{NAME_SEPARATOR}{uid}"
    name = engine_name_.lstrip("/")
    plain = name[: -len(suffix)] if name.endswith(suffix) else ""
    return plain if _NAME.fullmatch(plain) and NAME_SEPARATOR not in plain else None
