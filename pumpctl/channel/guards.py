"""The guards of a channel: why a request would be refused now (the state machine asks)."""

from __future__ import annotations

from pumpctl.alarms import AlarmKind
from pumpctl.bags import Bag
from pumpctl.channel.base import (
    ChannelBase,
)
from pumpctl.machine import State


class Guards(ChannelBase):
    """Each ``why_not_*`` answers None (allowed) or the one-line reason."""

    # ------------------------------------------------------------ guard facts
    def _installed(self) -> str | None:
        if not self.log.is_installed(self.setting.version):
            return (
                f"setting '{self.setting.name}' version {self.setting.version} is not installed;"
                " install it with 'pumpctl setting install'"
            )
        return None

    def why_not_program(self) -> str | None:
        """Programming needs an installed setting."""
        return self._installed()

    def why_not_prime(self) -> str | None:
        """Priming needs a program and the first bag at the bedside, light-protected."""
        if self.s.plan is None:
            return "no program: build the order first"
        nb = self.s.next_bag
        if nb is None or nb.delivered_s is None:
            return "no bag at the bedside to prime from"
        return self._why_not_light() or self._why_not_hang_by(nb)

    def why_not_start(self) -> str | None:
        """Starting needs an installed setting, a valid program and a primed line."""
        if (reason := self._installed()) is not None:
            return reason
        if self.s.plan is None:
            return "no program: build the order first"
        if self.s.limit == "hard":
            return "program is above a hard limit"
        if self.s.limit == "soft" and not self.s.override_logged:
            return "program is above a soft limit and no override is logged"
        if not self.s.line_primed:
            return "line not primed"
        return None

    def why_not_bag_change(self) -> str | None:
        """A bag change needs the next bag at the bedside and inside its hang-by time."""
        nb = self.s.next_bag
        if nb is None or nb.delivered_s is None:
            return "the next bag is not at the bedside"
        return self._why_not_hang_by(nb)

    def why_not_hang(self) -> str | None:
        """Hanging needs light protection confirmed and a bag inside its hang-by time."""
        nb = self.s.next_bag
        if nb is None or nb.delivered_s is None:
            return "the next bag is not at the bedside"
        return self._why_not_light() or self._why_not_hang_by(nb)

    def why_not_resume(self) -> str | None:
        """Leaving alarm needs every flow-stopping alarm acknowledged and its cause gone."""
        for a in self.s.alarms.active():
            if a.spec.flow_stopping and a.acknowledged_s is None:
                return f"acknowledge the {a.kind} alarm first"
            if a.kind == AlarmKind.BAG_EMPTY:
                return "the bag is empty: hang the next bag"
        return None

    def why_not(self, request: str) -> str | None:
        """Would ``request`` be accepted now? ``None`` if so, else the reason (no side effect)."""
        if request == "hang_bag":
            if self.machine.state is State.ALARM:
                return self._why_not_hang_from_alarm(light=True)
            reason = self.machine.check("finish_bag_change")
        elif request in ("program", "titrate"):
            if request == "program" and (self.machine.state is not State.IDLE or self.s.bags):
                return "already programmed and running; use titrate"
            if request == "titrate" and self.s.plan is None:
                return "no program yet: program the order first"
            reason = self._installed()
        else:
            trigger = {"bag_change": "begin_bag_change"}.get(request, request)
            if self.machine.state is State.ALARM and trigger == "start":
                trigger = "resume"
            light = self._light_pending
            self._light_pending = True  # the confirmation is asked for by the screen
            try:
                reason = self.machine.check(trigger)
            finally:
                self._light_pending = light
        return reason

    def _why_not_light(self) -> str | None:
        if self.setting.light_protection and not self._light_pending:
            return "confirm light protection on the bag AND the amber tubing"
        return None

    def _hang_by_s(self, bag: Bag) -> float | None:
        """Hang-by time at the rate the bag would really run (a titration changes it)."""
        bud = self._beyond_use_s(bag)
        return None if bud is None else bud - self._duration_s(bag, self._bag_rate(bag))

    @staticmethod
    def _duration_s(bag: Bag, rate_ml_per_h: float) -> float:
        return bag.recipe.vtbi_ml / rate_ml_per_h * 3600.0 if rate_ml_per_h > 0 else 0.0

    def _why_not_hang_by(self, bag: Bag, slack_s: float = 0.0) -> str | None:
        """Past its hang-by time at the rate it would really run (a titration changes it)."""
        bud = self._beyond_use_s(bag)
        if bud is None:
            return None
        rate = self._bag_rate(bag)  # as in ``_hang_by_s``, with the rate kept for the reason
        duration_s = self._duration_s(bag, rate)
        hang_by = bud - duration_s
        if self.clock.now() + slack_s > hang_by:
            return (
                f"bag {bag.n} is past its hang-by time ({hang_by / 3600:.2f} h: compounded "
                f"+ {self.setting.beyond_use_h:g} h beyond-use - its {duration_s / 3600:.1f} h "
                f"at {rate:g} mL/h); the pharmacist replaces or releases it"
            )
        return None

    def bag_expired(self, slack_s: float = 0.0) -> str | None:
        """Why the next bag may not be hung now (past its hang-by time), or None."""
        nb = self.s.next_bag
        return None if nb is None else self._why_not_hang_by(nb, slack_s)
