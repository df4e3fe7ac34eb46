"""What every command handler is given: the paths of this installation, and its configuration, loaded the
first time a handler asks for it (and only then: `container list` never reads resource-limits.yaml). Loading it
also sets this process's event log, so that the first event does not read the configuration again."""

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
        from ds01 import eventlog  # noqa: PLC0415 - only the commands that need them pay for YAML and the log
        from ds01.config.loader import load_config  # noqa: PLC0415

        config = load_config(self.paths.config)
        eventlog.configure(self.paths.log_dir, config.events)
        return config
