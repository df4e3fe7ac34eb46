"""The one exception tree of ds01; `ds01.cli.run` is the only place that turns it into an exit code."""

from __future__ import annotations

from ds01.reasons import Reason

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DENIED = 3


class Ds01Error(Exception):
    """Base of every error ds01 raises on purpose. The message says what happened, why and what to do."""

    exit_code = EXIT_FAILURE


class UsageError(Ds01Error):
    """The caller asked for something malformed: a bad flag, argument or request body."""

    exit_code = EXIT_USAGE


class ConfigError(Ds01Error):
    """A configuration or input file is missing or invalid."""

    exit_code = EXIT_USAGE


class Denied(Ds01Error):
    """Policy, quota or capacity refuses the request, for one of the `Reason`s."""

    exit_code = EXIT_DENIED

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Busy(Ds01Error):
    """A shared resource (the allocator lock) stayed contended; retrying later is safe."""


class NvmlError(Ds01Error):
    """The NVIDIA management library is missing or answered with an error."""


class EngineError(Ds01Error):
    """The Docker engine is unreachable or refused a call."""
