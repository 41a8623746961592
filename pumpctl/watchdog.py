"""Bag-change watchdog and gap accounting, scheduled on the clock.

The projected end of the current bag comes from what the pump says is left and the
rate it really runs at; it is re-projected after every rate change, bag change and
resume. Each stage (T-60 pharmacy, T-30 not at bedside, T-15 prepare, T-10 escalate)
fires once per bag; a stage whose time has already passed at projection fires at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pumpctl.clock import Clock, TimerHandle
from pumpctl.setting import DrugSetting

#: Stage name, setting key for its lead time.
STAGES: tuple[tuple[str, str], ...] = (
    ("pharmacy_request", "pharmacy_request_min"),
    ("next_bag_not_at_bedside", "not_at_bedside_min"),
    ("prepare_bag_change", "prepare_change_min"),
    ("no_bag_ready", "escalate_min"),
)


@dataclass(slots=True)
class Gap:
    """A measured interruption of flow."""

    start_s: float
    end_s: float | None
    cause: str

    def length_s(self, now_s: float) -> float:
        """Length so far (or in all, once closed)."""
        return (self.end_s if self.end_s is not None else now_s) - self.start_s


class Watchdog:
    """Stages of the bag change, projected on the clock; measures every gap."""

    def __init__(
        self,
        clock: Clock,
        setting: DrugSetting,
        on_stage: Callable[[str, int, float], None],
    ) -> None:
        self.clock = clock
        self.on_stage = on_stage
        leads = setting.watchdog_min
        self.leads_s = {stage: leads[key] * 60.0 for stage, key in STAGES}
        self.bag_n: int | None = None
        self.projected_end_s: float | None = None
        self.fired: set[str] = set()
        self._timers: list[TimerHandle] = []
        self.gaps: list[Gap] = []

    # -- projection ----------------------------------------------------------
    def project(self, bag_n: int, vtbi_left_ml: float, rate_ml_per_h: float) -> float:
        """(Re)project the end of bag ``bag_n`` and (re)schedule its stages."""
        self.cancel()
        if bag_n != self.bag_n:
            self.fired = set()
            self.bag_n = bag_n
        now = self.clock.now()
        end = now + vtbi_left_ml / rate_ml_per_h * 3600.0
        self.projected_end_s = end
        for stage, _key in STAGES:
            if stage in self.fired:
                continue
            at = end - self.leads_s[stage]
            self._timers.append(self.clock.call_at(at, self._fire_cb(stage, bag_n, end)))
        return end

    def _fire_cb(self, stage: str, bag_n: int, end_s: float) -> Callable[[], None]:
        def fire() -> None:
            if self.bag_n != bag_n or stage in self.fired:
                return
            self.fired.add(stage)
            self.on_stage(stage, bag_n, end_s)

        return fire

    def cancel(self) -> None:
        """Drop the projection (pump not flowing, or infusion stopped)."""
        for t in self._timers:
            t.cancel()
        self._timers = []
        self.projected_end_s = None

    def seconds_to_end(self) -> float | None:
        """Seconds until the projected bag end (None when not projected)."""
        if self.projected_end_s is None:
            return None
        return max(self.projected_end_s - self.clock.now(), 0.0)

    # -- gap accounting -----------------------------------------------------
    def gap_open(self, t_s: float, cause: str) -> Gap | None:
        """Start a gap unless one is open; returns the new gap."""
        if self.gaps and self.gaps[-1].end_s is None:
            return None
        gap = Gap(t_s, None, cause)
        self.gaps.append(gap)
        return gap

    def gap_close(self, t_s: float) -> Gap | None:
        """End the open gap, if any; returns it."""
        if self.gaps and self.gaps[-1].end_s is None:
            self.gaps[-1].end_s = t_s
            return self.gaps[-1]
        return None

    def open_gap(self) -> Gap | None:
        """The gap in progress, if any."""
        return self.gaps[-1] if self.gaps and self.gaps[-1].end_s is None else None

    def interrupted_s(self, now_s: float) -> float:
        """Total measured interruption so far."""
        return sum(g.length_s(now_s) for g in self.gaps)
