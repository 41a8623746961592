"""Alarm kinds with IEC 60601-1-8 priorities, and the alarm board of one channel.

The board is part of the channel state that events build (``pumpctl.events.apply``): it
never changes except by applying a logged event, live or when a log is replayed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Priority(enum.StrEnum):
    """IEC 60601-1-8 alarm priority (high: red, flashing; medium: yellow; low: cyan/steady)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class AlarmKind(enum.StrEnum):
    """Every alarm a channel can raise."""

    PHARMACY_REQUEST = "pharmacy_request"
    NEXT_BAG_NOT_AT_BEDSIDE = "next_bag_not_at_bedside"
    PREPARE_BAG_CHANGE = "prepare_bag_change"
    NO_BAG_READY = "no_bag_ready"
    BAG_PAST_HANG_BY = "bag_past_hang_by"
    BAG_BEYOND_USE = "bag_beyond_use"
    LINE_CANNOT_START = "line_cannot_start"
    BAG_EMPTY = "bag_empty"
    OCCLUSION = "occlusion"
    AIR_IN_LINE = "air_in_line"
    PUMP_FAILURE = "pump_failure"
    BATTERY_DEPLETED = "battery_depleted"
    PUMP_RESET = "pump_reset"
    POWER_LOSS = "power_loss"
    BATTERY_LOW = "battery_low"
    COMM_LOSS = "comm_loss"
    LOG_UNAVAILABLE = "log_unavailable"
    LOG_TAMPERED = "log_tampered"

    @property
    def spec(self) -> AlarmSpec:
        """Priority, whether it stops flow, and its screen text."""
        return SPECS[self]

    @property
    def priority(self) -> Priority:
        return SPECS[self].priority

    @property
    def flow_stopping(self) -> bool:
        return SPECS[self].flow_stopping


@dataclass(frozen=True, slots=True)
class AlarmSpec:
    """What an alarm kind means and how loud it is."""

    priority: Priority
    flow_stopping: bool
    text: str


_H, _M, _L = Priority.HIGH, Priority.MEDIUM, Priority.LOW
SPECS: dict[AlarmKind, AlarmSpec] = {
    AlarmKind.PHARMACY_REQUEST: AlarmSpec(
        _L, False, "ask pharmacy to compound and hand-deliver the next bag"
    ),
    AlarmKind.NEXT_BAG_NOT_AT_BEDSIDE: AlarmSpec(_M, False, "next bag not at bedside"),
    AlarmKind.PREPARE_BAG_CHANGE: AlarmSpec(_M, False, "prepare bag change"),
    AlarmKind.NO_BAG_READY: AlarmSpec(
        _H, False, "charge nurse: the bag ends soon and its change has not started"
    ),
    AlarmKind.BAG_PAST_HANG_BY: AlarmSpec(
        _M, False, "next bag past its hang-by time: pharmacist to replace or release"
    ),
    AlarmKind.BAG_BEYOND_USE: AlarmSpec(
        _M, False, "running bag reaches its beyond-use time before it ends: change it by then"
    ),
    # High, not flow-stopping: no flow ever started (nothing to resume); the bag cannot
    # prime the line and leave a volume to infuse, so the infusion cannot begin at all.
    AlarmKind.LINE_CANNOT_START: AlarmSpec(
        _H, False, "line cannot start: the bag cannot prime the line and leave a volume to infuse"
    ),
    AlarmKind.BAG_EMPTY: AlarmSpec(_H, True, "bag empty: infusion interrupted"),
    AlarmKind.OCCLUSION: AlarmSpec(_H, True, "occlusion: flow stopped"),
    AlarmKind.AIR_IN_LINE: AlarmSpec(_H, True, "air in line: flow stopped"),
    AlarmKind.PUMP_FAILURE: AlarmSpec(_H, True, "pump failure: flow stopped"),
    AlarmKind.BATTERY_DEPLETED: AlarmSpec(_H, True, "battery depleted: flow stopped"),
    AlarmKind.PUMP_RESET: AlarmSpec(_H, True, "pump was reset (power cut): flow stopped"),
    AlarmKind.POWER_LOSS: AlarmSpec(_M, False, "mains power lost: running on battery"),
    AlarmKind.BATTERY_LOW: AlarmSpec(_H, False, "battery low: under 15 min left"),
    AlarmKind.COMM_LOSS: AlarmSpec(_H, False, "no communication with the pump"),
    AlarmKind.LOG_UNAVAILABLE: AlarmSpec(_H, False, "event log unavailable: events kept in memory"),
    AlarmKind.LOG_TAMPERED: AlarmSpec(_H, False, "event log failed verification"),
}

#: Kept for callers that look kinds up by name.
KINDS: dict[str, AlarmKind] = {k.value: k for k in AlarmKind}
PRIORITY_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}


@dataclass(slots=True)
class Alarm:
    """One raised alarm and what was done about it."""

    id: int
    kind: AlarmKind
    raised_s: float
    bag_n: int | None = None
    detail: str = ""
    acknowledged_s: float | None = None
    acknowledged_by: str | None = None
    silenced_until_s: float | None = None
    cleared_s: float | None = None

    @property
    def spec(self) -> AlarmSpec:
        return SPECS[self.kind]

    @property
    def priority(self) -> Priority:
        return SPECS[self.kind].priority

    @property
    def active(self) -> bool:
        return self.cleared_s is None

    @property
    def text(self) -> str:
        """Screen text with its detail."""
        return self.spec.text + (f" ({self.detail})" if self.detail else "")

    def to_json(self) -> dict[str, Any]:
        """Plain dict for logs and reports."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "priority": self.priority.value,
            "flow_stopping": self.spec.flow_stopping,
            "raised_s": self.raised_s,
            "bag_n": self.bag_n,
            "acknowledged_s": self.acknowledged_s,
            "cleared_s": self.cleared_s,
            "text": self.text,
        }


class AlarmBoard:
    """The alarms of one channel, newest last; changed only by applied events."""

    __slots__ = ("active_by_kind", "all")

    def __init__(self) -> None:
        self.all: list[Alarm] = []
        #: kind -> its active alarms, oldest first; a kind with none is not a key. Read it
        #: (``kind in active_by_kind``); ``add`` and ``clear`` keep it, so clearing one
        #: alarm finds the next without a pass over every alarm of the run.
        self.active_by_kind: dict[str, list[Alarm]] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AlarmBoard) and self.all == other.all

    def next_id(self) -> int:
        """The id the next raised alarm gets."""
        return len(self.all) + 1

    def add(self, alarm: Alarm) -> None:
        """Record a raised alarm (from an ``alarm`` event)."""
        self.all.append(alarm)
        if alarm.cleared_s is None:
            self.active_by_kind.setdefault(alarm.kind, []).append(alarm)

    def clear(self, alarm: Alarm, t_s: float) -> None:
        """Record that ``alarm`` was cleared at ``t_s`` (from an ``alarm_cleared`` event)."""
        alarm.cleared_s = t_s
        alarm.silenced_until_s = None
        same = self.active_by_kind.get(alarm.kind, [])
        for i, a in enumerate(same):
            if a is alarm:
                del same[i]
                if not same:
                    del self.active_by_kind[alarm.kind]
                return

    def find_active(self, kind: str) -> Alarm | None:
        """The newest active alarm of this kind, if any (an old log may hold two)."""
        same = self.active_by_kind.get(kind)
        return same[-1] if same else None

    def active(self) -> list[Alarm]:
        """Active alarms: highest priority first, flow-stopping first, then oldest."""
        return sorted(
            (a for same in self.active_by_kind.values() for a in same),
            key=lambda a: (PRIORITY_RANK[a.priority], not a.spec.flow_stopping, a.id),
        )

    def get(self, alarm_id: int) -> Alarm | None:
        """Alarm by id."""
        return self.all[alarm_id - 1] if 0 < alarm_id <= len(self.all) else None
