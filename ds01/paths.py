"""Every filesystem location ds01 uses, read from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = {
    "DS01_CONFIG": "/etc/ds01/resource-limits.yaml",
    "DS01_STATE_DIR": "/var/lib/ds01",
    "DS01_LOG_DIR": "/var/log/ds01",
    "DS01_RUN_DIR": "/run/ds01",
}


@dataclass(frozen=True)
class Paths:
    config: Path
    state_dir: Path
    log_dir: Path
    run_dir: Path


def paths_from_env(environ: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ

    def pick(name: str) -> Path:
        return Path(env.get(name) or DEFAULTS[name])

    return Paths(
        config=pick("DS01_CONFIG"),
        state_dir=pick("DS01_STATE_DIR"),
        log_dir=pick("DS01_LOG_DIR"),
        run_dir=pick("DS01_RUN_DIR"),
    )
