"""The alarm board's side of a channel: raise, clear, acknowledge, capped silence."""

from __future__ import annotations

import math
from typing import Any

from pumpctl.alarms import AlarmKind
from pumpctl.channel.base import (
    ChannelBase,
    E,
)
from pumpctl.watchdog import Stage


class AlarmDesk(ChannelBase):
    """Alarms by IEC 60601-1-8 priority; flow-stopping and high alarms silenced at most the cap."""

    # ------------------------------------------------------------- alarms
    def _raise(self, kind: AlarmKind, detail: str = "") -> None:
        if kind in self.s.alarms.active_by_kind:
            return
        spec = kind.spec
        bag = self.s.current_bag
        self._emit(
            E.ALARM,
            {
                "id": self.s.alarms.next_id(),
                "kind": kind._value_,
                "priority": spec.priority._value_,
                "flow_stopping": spec.flow_stopping,
                "text": spec.text,
                "detail": detail,
                "bag": bag.n if bag else None,
            },
        )

    def _clear(self, kind: AlarmKind) -> None:
        a = self.s.alarms.find_active(kind)
        if a is None:
            return
        self._emit(E.ALARM_CLEARED, {"kind": kind._value_, "id": a.id})
        timer = self._silence_timers.pop(a.id, None)
        if timer is not None:
            timer.cancel()

    def _on_storage_change(self, ok: bool, why: str) -> None:
        """The log can (not) be written: the alarm follows on the clock, not inside the
        log's write (an event being appended must be applied before the alarm's)."""
        if self._storage_also is not None:
            self._storage_also(ok, why)
        if self._storage_timer is None:
            self._storage_timer = self.clock.call_later(0.0, self.sync_storage_alarm)

    def sync_storage_alarm(self) -> None:
        """Raise the high-priority LOG_UNAVAILABLE alarm while the log cannot be written
        (events wait in memory; supervision goes on) and clear it once the backlog is
        written."""
        self._storage_timer = None
        if getattr(self.log, "storage_ok", True):
            self._clear(AlarmKind.LOG_UNAVAILABLE)
        else:
            self._raise(AlarmKind.LOG_UNAVAILABLE, getattr(self.log, "storage_problem", ""))

    def _find(self, alarm: int | str) -> Any:
        return (
            self.s.alarms.get(alarm) if isinstance(alarm, int) else self.s.alarms.find_active(alarm)
        )

    def acknowledge(self, alarm: int | str, operator: str) -> str | None:
        """Acknowledge an alarm (by id or kind)."""
        a = self._find(alarm)
        if a is None or not a.active:
            return self._refuse("acknowledge", f"no active alarm {alarm!r}", operator)
        if a.acknowledged_s is not None:
            return None
        self._emit(E.ALARM_ACKNOWLEDGED, {"kind": a.kind._value_, "id": a.id}, operator)
        if a.kind == AlarmKind.PREPARE_BAG_CHANGE:
            self.planner.observe(Stage.PREPARE, self.clock.now() - a.raised_s)
        return None

    def silence(self, alarm: int | str, minutes: float, operator: str) -> str | None:
        """Silence an alarm's sound; flow-stopping and high alarms at most ``silence_max_min``."""
        a = self._find(alarm)
        if a is None or not a.active:
            return self._refuse("silence", f"no active alarm {alarm!r}", operator)
        if not math.isfinite(minutes) or minutes <= 0:
            return self._refuse("silence", f"silence for {minutes} min; allowed: > 0 min", operator)
        cap = self.setting.watchdog_min["silence_max_min"]
        capped = a.spec.flow_stopping or a.priority == "high"
        granted = min(minutes, cap) if capped else minutes
        until = self.clock.now() + granted * 60.0
        self._emit(
            E.ALARM_SILENCED,
            {
                "kind": a.kind._value_,
                "id": a.id,
                "requested_min": minutes,
                "granted_min": granted,
                "until_s": until,
            },
            operator,
        )
        self._arm_silence(a.id, until)
        return None

    def _arm_silence(self, alarm_id: int, until_s: float) -> None:
        old = self._silence_timers.pop(alarm_id, None)
        if old is not None:
            old.cancel()
        self._silence_timers[alarm_id] = self.clock.call_at(
            until_s, lambda: self._unsilence(alarm_id)
        )

    def _unsilence(self, alarm_id: int) -> None:
        self._silence_timers.pop(alarm_id, None)
        a = self.s.alarms.get(alarm_id)
        if a is not None and a.active and a.silenced_until_s is not None:
            self._emit(E.ALARM_REANNUNCIATED, {"kind": a.kind._value_, "id": a.id})
