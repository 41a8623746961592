"""The driver protocol every pump implements (status types from ``pumpctl.pumpstatus``).

Template methods (as in python-can): the public methods check arguments against the
pump model's limits and then call the ``_do_*`` hooks a concrete driver implements.
Drivers never retry a command that changes delivery blindly: after a lost reply they
read the pump back (``status``) before deciding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pumpctl.errors import PumpCommandError
from pumpctl.pumpstatus import (
    FLOW_STOPPING_ALARMS,
    PumpAlarm,
    PumpIdentity,
    PumpStatus,
    RunState,
)
from pumpctl.setting import RateLimits

__all__ = [
    "FLOW_STOPPING_ALARMS",
    "PumpAlarm",
    "PumpDriver",
    "PumpIdentity",
    "PumpStatus",
    "RateLimits",
    "RunState",
]


class PumpDriver(ABC):
    """One pump channel. Concrete drivers implement the ``_do_*`` hooks."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits

    # -- public API (checks, then hooks) ---------------------------------
    def identify(self) -> PumpIdentity:
        """Model, firmware and address of the pump."""
        return self._do_identify()

    def set_rate(self, rate_ml_per_h: float) -> None:
        """Program the rate; works while running (the new rate applies at once)."""
        lim = self.limits
        if not (lim.min_ml_per_h <= rate_ml_per_h <= lim.max_ml_per_h):
            raise PumpCommandError(
                f"rate {rate_ml_per_h} mL/h is outside this pump's range "
                f"{lim.min_ml_per_h}-{lim.max_ml_per_h} mL/h"
            )
        steps = rate_ml_per_h / lim.resolution_ml_per_h
        if abs(steps - round(steps)) > 1e-6:
            raise PumpCommandError(
                f"rate {rate_ml_per_h} mL/h is not a multiple of the pump's resolution "
                f"{lim.resolution_ml_per_h} mL/h"
            )
        self._do_set_rate(rate_ml_per_h)

    def set_vtbi(self, vtbi_ml: float) -> None:
        """Program the volume to be infused (counted from the last ``clear_volume``)."""
        if not (0 < vtbi_ml <= self.limits.max_vtbi_ml):
            raise PumpCommandError(
                f"VTBI {vtbi_ml} mL is outside 0-{self.limits.max_vtbi_ml} mL (0 excluded)"
            )
        self._do_set_vtbi(vtbi_ml)

    def start(self) -> None:
        """Start infusing. Idempotent: a running pump is left as it is."""
        self._do_start()

    def stop(self) -> None:
        """Stop infusing."""
        self._do_stop()

    def clear_volume(self) -> None:
        """Zero the infused-volume counter (at a bag change)."""
        self._do_clear_volume()

    def status(self) -> PumpStatus:
        """Read the pump back."""
        return self._do_status()

    def close(self) -> None:
        """Release the link; the pump keeps its last safe state."""
        self._do_close()

    # -- hooks ------------------------------------------------------------
    @abstractmethod
    def _do_identify(self) -> PumpIdentity: ...

    @abstractmethod
    def _do_set_rate(self, rate_ml_per_h: float) -> None: ...

    @abstractmethod
    def _do_set_vtbi(self, vtbi_ml: float) -> None: ...

    @abstractmethod
    def _do_start(self) -> None: ...

    @abstractmethod
    def _do_stop(self) -> None: ...

    @abstractmethod
    def _do_clear_volume(self) -> None: ...

    @abstractmethod
    def _do_status(self) -> PumpStatus: ...

    def _do_close(self) -> None:
        return None
