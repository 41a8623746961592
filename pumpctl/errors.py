"""Error types. Each also subclasses the matching built-in so callers can catch either."""

from __future__ import annotations


class PumpctlError(Exception):
    """Base of every error pumpctl raises on purpose; carries the CLI exit code."""

    exit_code: int = 2


class InputError(PumpctlError, ValueError):
    """Bad user input: a setting file, an order, a scenario, a console entry (exit 2)."""

    exit_code = 2


class RefusedError(PumpctlError):
    """The order cannot be built or infused: a hard limit or no bag size fits (exit 3)."""

    exit_code = 3


class OverrideRequiredError(PumpctlError):
    """A soft limit is exceeded and no override reason was given (exit 4)."""

    exit_code = 4


class PumpError(PumpctlError):
    """Something a pump or its driver reported."""

    exit_code = 5


class CommunicationError(PumpError, IOError):
    """No valid reply from the pump: timeout, garbage, bad CRC, lost link."""


class PumpCommandError(PumpError, ValueError):
    """The pump refused a command (unknown, not applicable, out of range, bad packet)."""


class ReservoirEmptyError(PumpCommandError):
    """The pump refused to start: its reservoir (the bag) has no fluid left."""
