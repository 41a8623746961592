"""Alarms with IEC 60601-1-8 priorities, acknowledge and capped silence."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pumpctl.drivers.base import PumpAlarm


class Priority(enum.StrEnum):
    """IEC 60601-1-8 alarm priority (high: red, flashing; medium: yellow; low: cyan/steady)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class AlarmKind:
    """What an alarm kind means and how loud it is."""

    name: str
    priority: Priority
    flow_stopping: bool
    text: str


_KINDS = [
    AlarmKind(
        "pharmacy_request",
        Priority.LOW,
        False,
        "ask pharmacy to compound and hand-deliver the next bag",
    ),
    AlarmKind("next_bag_not_at_bedside", Priority.MEDIUM, False, "next bag not at bedside"),
    AlarmKind("prepare_bag_change", Priority.MEDIUM, False, "prepare bag change"),
    AlarmKind("no_bag_ready", Priority.HIGH, False, "bag ends soon and no new bag is ready"),
    AlarmKind("bag_empty", Priority.HIGH, True, "bag empty: infusion interrupted"),
    AlarmKind("occlusion", Priority.HIGH, True, "occlusion: flow stopped"),
    AlarmKind("air_in_line", Priority.HIGH, True, "air in line: flow stopped"),
    AlarmKind("pump_failure", Priority.HIGH, True, "pump failure: flow stopped"),
    AlarmKind("battery_depleted", Priority.HIGH, True, "battery depleted: flow stopped"),
    AlarmKind("pump_reset", Priority.HIGH, True, "pump was reset (power cut): flow stopped"),
    AlarmKind("power_loss", Priority.MEDIUM, False, "mains power lost: running on battery"),
    AlarmKind("battery_low", Priority.HIGH, False, "battery low: under 15 min left"),
    AlarmKind("comm_loss", Priority.HIGH, False, "no communication with the pump"),
]
KINDS: dict[str, AlarmKind] = {k.name: k for k in _KINDS}

#: How a pump-reported alarm maps onto a controller alarm kind.
FROM_PUMP: dict[PumpAlarm, str] = {
    PumpAlarm.VTBI_COMPLETE: "bag_empty",
    PumpAlarm.OCCLUSION: "occlusion",
    PumpAlarm.AIR_IN_LINE: "air_in_line",
    PumpAlarm.STALL: "pump_failure",
    PumpAlarm.PUMP_FAILURE: "pump_failure",
    PumpAlarm.PROGRAM_ERROR: "pump_failure",
    PumpAlarm.OUT_OF_RANGE: "pump_failure",
    PumpAlarm.SAFE_TIMEOUT: "pump_failure",
    PumpAlarm.BATTERY_DEPLETED: "battery_depleted",
    PumpAlarm.RESET: "pump_reset",
    PumpAlarm.POWER_LOSS: "power_loss",
    PumpAlarm.BATTERY_LOW: "battery_low",
}


@dataclass(slots=True)
class Alarm:
    """One raised alarm and what was done about it."""

    id: int
    kind: str
    raised_s: float
    bag_n: int | None = None
    acknowledged_s: float | None = None
    acknowledged_by: str | None = None
    silenced_until_s: float | None = None
    cleared_s: float | None = None
    detail: str = ""

    @property
    def spec(self) -> AlarmKind:
        return KINDS[self.kind]

    @property
    def priority(self) -> Priority:
        return self.spec.priority

    @property
    def active(self) -> bool:
        return self.cleared_s is None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for logs and reports."""
        return {
            "id": self.id,
            "kind": self.kind,
            "priority": self.priority.value,
            "flow_stopping": self.spec.flow_stopping,
            "raised_s": self.raised_s,
            "bag_n": self.bag_n,
            "acknowledged_s": self.acknowledged_s,
            "cleared_s": self.cleared_s,
            "text": self.spec.text + (f" ({self.detail})" if self.detail else ""),
        }


class AlarmList:
    """The alarms of one channel, newest last."""

    def __init__(self) -> None:
        self.all: list[Alarm] = []

    def raise_(self, kind: str, t_s: float, bag_n: int | None = None, detail: str = "") -> Alarm:
        """Add a new alarm (callers check ``find_active`` first to avoid repeats)."""
        if kind not in KINDS:
            raise KeyError(kind)
        alarm = Alarm(len(self.all) + 1, kind, t_s, bag_n, detail=detail)
        self.all.append(alarm)
        return alarm

    def find_active(self, kind: str) -> Alarm | None:
        """The active alarm of this kind, if any."""
        for a in reversed(self.all):
            if a.kind == kind and a.active:
                return a
        return None

    def active(self) -> list[Alarm]:
        """Active alarms, highest priority first, then oldest."""
        order = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}
        return sorted((a for a in self.all if a.active), key=lambda a: (order[a.priority], a.id))

    def get(self, alarm_id: int) -> Alarm | None:
        """Alarm by id."""
        return self.all[alarm_id - 1] if 0 < alarm_id <= len(self.all) else None
