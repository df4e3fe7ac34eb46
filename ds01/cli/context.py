"""What every command handler is given: the paths of this installation, and its configuration, loaded the
first time a handler asks for it (and only then: `container list` never reads resource-limits.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from ds01.paths import Paths, paths_from_env

if TYPE_CHECKING:
    from ds01.config.schema import Config


@dataclass
class Context:
    paths: Paths = field(default_factory=paths_from_env)

    @cached_property
    def config(self) -> Config:
        from ds01.config.loader import load_config  # noqa: PLC0415 - only the commands that need it pay for YAML

        return load_config(self.paths.config)
