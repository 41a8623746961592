"""What a pump reports: its alarms, run state, identity and status read-back.

These types sit below both the drivers and the simulated devices (the pump physics and
the NE-1000 emulator), which produce them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class PumpAlarm(enum.StrEnum):
    """Alarms a pump itself can report (technical and flow-stopping)."""

    OCCLUSION = "occlusion"
    AIR_IN_LINE = "air_in_line"
    POWER_LOSS = "power_loss"  # running on battery, mains lost
    BATTERY_LOW = "battery_low"
    BATTERY_DEPLETED = "battery_depleted"
    RESET = "reset"  # pump was reset / power-cycled (NE-1000 A?R)
    STALL = "stall"  # motor stall (NE-1000 A?S)
    SAFE_TIMEOUT = "safe_timeout"  # safe-mode heartbeat missed (NE-1000 A?T)
    PROGRAM_ERROR = "program_error"  # NE-1000 A?E
    OUT_OF_RANGE = "out_of_range"  # NE-1000 A?O
    VTBI_COMPLETE = "vtbi_complete"
    PUMP_FAILURE = "pump_failure"


#: Alarms during which the pump delivers nothing.
FLOW_STOPPING_ALARMS = frozenset(
    {
        PumpAlarm.OCCLUSION,
        PumpAlarm.AIR_IN_LINE,
        PumpAlarm.BATTERY_DEPLETED,
        PumpAlarm.RESET,
        PumpAlarm.STALL,
        PumpAlarm.SAFE_TIMEOUT,
        PumpAlarm.PUMP_FAILURE,
    }
)


class RunState(enum.StrEnum):
    """What the pump mechanism is doing."""

    STOPPED = "stopped"
    RUNNING = "running"  # infusing at the programmed rate
    KVO = "kvo"  # VTBI done, keep-vein-open trickle
    PAUSED = "paused"
    ALARM = "alarm"  # stopped by an alarm


@dataclass(frozen=True, slots=True)
class PumpIdentity:
    """Who answered: model, firmware and bus address."""

    model: str
    firmware: str
    address: int = 0


class PumpStatus(NamedTuple):
    """One read-back of the pump. Volumes are since the last ``clear_volume``.

    A named tuple: immutable, and cheap to make (a simulation reads the pump back after
    every command).
    """

    run_state: RunState
    rate_ml_per_h: float
    vtbi_ml: float | None
    volume_infused_ml: float
    alarms: frozenset[PumpAlarm] = frozenset()
    on_battery: bool = False
    battery_min_left: float | None = None

    @property
    def running(self) -> bool:
        """True while the mechanism delivers the programmed rate."""
        return self.run_state is RunState.RUNNING

    @property
    def vtbi_left_ml(self) -> float | None:
        """Volume still to be infused before VTBI complete."""
        if self.vtbi_ml is None:
            return None
        return max(self.vtbi_ml - self.volume_infused_ml, 0.0)
