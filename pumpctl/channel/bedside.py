"""The nurse's side of a channel: prime, start, bag change, hang, stop, resume."""

from __future__ import annotations

from typing import Any

from pumpctl.alarms import AlarmKind
from pumpctl.bags import Bag
from pumpctl.channel.base import (
    _STAGE_ALARMS,
    ChannelBase,
    E,
)
from pumpctl.errors import PumpError
from pumpctl.events import GapCause
from pumpctl.machine import State
from pumpctl.setting import programmable_vtbi_ml


class Bedside(ChannelBase):
    """What the nurse does at the pump; each step logs its event before it takes effect."""

    # ------------------------------------------------------------- nursing
    def prime(self, operator: str, light_protected: bool) -> str | None:
        """Hang the first bag and prime the line."""
        self._light_pending = light_protected
        reason = self.machine.check("prime")
        if reason is not None:
            return self._refuse("prime", reason, operator)
        nb = self.s.next_bag
        assert nb is not None
        self._go("prime", operator, {"bag": nb.n, "light_protected": light_protected})
        return None

    def primed(self, operator: str) -> str | None:
        """The nurse confirms the line is primed (fluid at the end, no air)."""
        reason = self.machine.check("primed")
        if reason is not None:
            return self._refuse("primed", reason, operator)
        self._go("primed", operator, {"prime_ml": self.prime_ml})
        return None

    def _vtbi_for(self, bag: Bag, first: bool) -> float:
        """The recipe's VTBI, never more than the bag can give at the pump's worst flow."""
        prime = self.prime_ml if first else 0.0
        safe = programmable_vtbi_ml(bag.recipe.content_ml, prime, self.stated_pct, self.rate_step)
        return round(min(bag.recipe.vtbi_ml, safe), 6)

    def _why_no_vtbi(self, bag: Bag, vtbi: float, first: bool) -> str | None:
        """A bag that leaves nothing to infuse (it cannot even prime the line) is refused
        with a high-priority alarm, not sent to a pump that refuses it again and again."""
        if vtbi > 0:
            return None
        prime = f" after priming the {self.prime_ml:g} mL line" if first else ""
        why = (
            f"bag {bag.n} holds {bag.recipe.content_ml:g} mL, which leaves nothing to "
            f"infuse{prime} (VTBI {vtbi:g} mL at +/-{self.stated_pct:g} %): the line cannot "
            "start; allowed: a bag that holds more than the priming volume"
        )
        self._raise(AlarmKind.LINE_CANNOT_START, why)
        return why

    def start(self, operator: str) -> str | None:
        """Program the pump from the first bag and start the continuous infusion."""
        # The confirmation given at the prime, as logged (a restart in between keeps it).
        self._light_pending = self.s.prime_light_protected or not self.setting.light_protection
        reason = self.machine.check("start")
        if reason is not None:
            return self._refuse("start", reason, operator)
        nb = self.s.next_bag
        assert nb is not None
        rate, vtbi = self._bag_rate(nb), self._vtbi_for(nb, first=True)
        why = self._why_no_vtbi(nb, vtbi, first=True)
        if why is not None:
            return self._refuse("start", why, operator)
        err = self._pump(
            operator,
            [("set_rate", rate), ("clear_volume", None), ("set_vtbi", vtbi), ("start", None)],
        )
        if err is not None:
            return self._refuse("start", err, operator)
        self._clear(AlarmKind.LINE_CANNOT_START)
        self._go("start", operator, {"bag": nb.n, "rate_ml_per_h": rate})
        self._hang_record(nb, operator, rate, vtbi)
        return None

    def begin_bag_change(self, operator: str) -> str | None:
        """Start changing the bag; a running-change pump keeps pumping from its drip chamber."""
        reason = self.machine.check("begin_bag_change")
        if reason is not None:
            return self._refuse("begin_bag_change", reason, operator)
        relay = self.reservoir_change == "stopped" and self._relay is not None
        stops = self.reservoir_change == "stopped" and not relay
        self._go(
            "begin_bag_change",
            operator,
            {"reservoir_change": self.reservoir_change, "stops_flow": stops, "relay": relay},
        )
        self._clear(AlarmKind.NO_BAG_READY)
        if relay:
            assert self._relay is not None
            self._relay.begin_load()  # the new reservoir goes on the idle pump
        elif stops:
            self.watchdog.cancel()
            self._gap_open(GapCause.BAG_CHANGE)
            err = self._pump(operator, [("stop", None)])
            if err is not None:
                self._emit(E.PUMP_REFUSED, {"reason": err}, operator)
        return None

    def _why_not_hang_from_alarm(self, light: bool) -> str | None:
        if (
            self.s.alarms.find_active(AlarmKind.BAG_EMPTY) is None
            and self.s.fault_from != "bag_change"
        ):
            return "only after a bag-empty alarm or a bag change"
        unacked = [
            a.kind
            for a in self.s.alarms.active()
            if a.spec.flow_stopping and a.acknowledged_s is None
        ]
        if unacked:
            return f"acknowledge the {unacked[0]} alarm first"
        pending = self._light_pending
        self._light_pending = light or pending
        try:
            return self.why_not_hang()
        finally:
            self._light_pending = pending

    def hang_bag(self, operator: str, light_protected: bool) -> str | None:
        """Hang the next bag and carry on: from a bag change, or after a bag-empty alarm."""
        self._light_pending = light_protected
        from_alarm = self.machine.state is State.ALARM
        if from_alarm:
            reason = self._why_not_hang_from_alarm(light_protected)
        else:
            reason = self.machine.check("finish_bag_change")
        if reason is not None:
            return self._refuse("hang_bag", reason, operator)
        nb = self.s.next_bag
        assert nb is not None
        old = self.s.current_bag
        rate, vtbi = self._bag_rate(nb), self._vtbi_for(nb, first=False)
        why = self._why_no_vtbi(nb, vtbi, first=False)
        if why is not None:
            return self._refuse("hang_bag", why, operator)
        if not from_alarm and self._relay is not None and self.reservoir_change == "stopped":
            return self._arm_relay(nb, rate, vtbi, operator)
        commands: list[tuple[str, float | None]] = [("clear_volume", None), ("set_vtbi", vtbi)]
        st = self.last_status
        if st is None or abs(st.rate_ml_per_h - rate) > 1e-9:
            commands.insert(0, ("set_rate", rate))
        if st is None or not st.running or from_alarm:
            commands.append(("start", None))
        left = (
            None
            if old is None or st is None
            else max(old.recipe.content_ml - st.volume_infused_ml, 0.0)
        )
        err = self._pump(operator, commands)
        if err is not None:
            return self._refuse("hang_bag", err, operator)
        if from_alarm:  # the pump restarted, so every flow-stopping cause is gone
            for a in self.s.alarms.active():
                if a.spec.flow_stopping:
                    self._clear(a.kind)
            self._go("resume", operator, {"bag": nb.n})
        else:
            self._go("finish_bag_change", operator, {"bag": nb.n})
        self._hang_record(nb, operator, rate, vtbi, old, left)
        return None

    def _hang_record(
        self,
        nb: Bag,
        operator: str,
        rate: float,
        vtbi: float,
        old: Bag | None = None,
        old_left_ml: float | None = None,
        relay_pump: str | None = None,
    ) -> None:
        detail: dict[str, Any] = {
            "bag": nb.n,
            "mg": nb.recipe.mg,
            "bag_ml": nb.recipe.bag_ml,
            "rate_ml_per_h": rate,
            "vtbi_ml": vtbi,
            "light_protected": self._light_pending,
            "compounded_min_ago": None
            if nb.compounded_s is None
            else round((self.clock.now() - nb.compounded_s) / 60.0, 2),
            "hang_by_s": nb.hang_by_s,
        }
        if relay_pump is not None:
            detail["relay_pump"] = relay_pump
        if old is not None and old_left_ml is not None:
            conc = old.recipe.conc_mg_per_ml
            early_ml = max((old.vtbi_ml or 0.0) - (old.recipe.content_ml - old_left_ml), 0.0)
            detail["previous_bag"] = old.n
            detail["previous_left_ml"] = round(old_left_ml, 4)
            detail["previous_residual_mg"] = round(old_left_ml * conc, 4)
            detail["previous_wasted_mg"] = round(early_ml * conc, 4) if early_ml > 0.05 else 0.0
        self._light_pending = False
        self._emit(E.BAG_HUNG, detail, operator)
        self._gap_close()
        t = self._timers.pop("hang_by", None)
        if t is not None:
            t.cancel()
        active = self.s.alarms.active_by_kind
        for kind in (
            *_STAGE_ALARMS,
            AlarmKind.BAG_PAST_HANG_BY,
            AlarmKind.BAG_BEYOND_USE,
            AlarmKind.LINE_CANNOT_START,  # a bag is on a running line now
        ):
            if kind in active:
                self._clear(kind)
        self._project()

    def _arm_relay(self, nb: Bag, rate: float, vtbi: float, operator: str) -> str | None:
        """Relay: the idle pump is loaded and programmed; it takes over when this bag ends."""
        relay = self._relay
        assert relay is not None
        self._emit(
            E.PUMP_COMMAND, {"commands": [["arm_idle_pump", rate], ["vtbi", vtbi]]}, operator
        )
        try:
            relay.arm(rate, vtbi)
        except PumpError as exc:
            return self._refuse("hang_bag", f"the idle pump refused: {exc}", operator)
        self._emit(
            E.RELAY_ARMED,
            {
                "bag": nb.n,
                "pump": relay.idle_name,
                "rate_ml_per_h": rate,
                "vtbi_ml": vtbi,
                "light_protected": self._light_pending,
            },
            operator,
        )
        self._go("finish_bag_change", operator, {"bag": nb.n, "relay_armed": relay.idle_name})
        for kind in _STAGE_ALARMS:
            self._clear(kind)
        return None

    def _take_over(self) -> bool:
        """Relay: the running pump stopped at the end of its bag; the idle one starts now."""
        relay, nb = self._relay, self.s.next_bag
        if relay is None or nb is None or self.s.relay_armed != nb.n:
            return False
        old = self.s.current_bag
        st = self.last_status
        left = (
            None
            if old is None or st is None
            else max(old.recipe.content_ml - st.volume_infused_ml, 0.0)
        )
        end = self.s.projected_end_s
        if end is not None and self.clock.now() - end > 0.5:
            # Found stopped by polling: the running pump ran out at its projected end.
            self._gap_open(GapCause.RELAY_HANDOVER, end)
        self._emit(E.PUMP_COMMAND, {"commands": [["take_over", None]], "to": relay.idle_name})
        try:
            relay.take_over()
        except PumpError as exc:
            self._emit(E.PUMP_REFUSED, {"reason": str(exc)})
            return False
        hang = self.s.relay_hang or {}
        loaded_rate = float(hang.get("rate_ml_per_h", self._bag_rate(nb)))
        vtbi = float(hang.get("vtbi_ml", nb.recipe.vtbi_ml))
        self._light_pending = bool(hang.get("light_protected", False))
        rate = self._bag_rate(nb)  # a titration since loading: the dose in force now
        if abs(rate - loaded_rate) > 1e-9:
            err = self._pump("system", [("set_rate", rate)])
            if err is not None:
                rate = loaded_rate
                self._emit(E.PUMP_REFUSED, {"reason": err})
        self._refresh_status()
        self._hang_record(nb, "system", rate, vtbi, old, left, relay_pump=relay.active_name)
        return True

    def stop(self, operator: str, reason: str = "") -> str | None:
        """Stop the infusion (an interruption of a continuous order; logged as such)."""
        check = self.machine.check("stop")
        if check is not None:
            return self._refuse("stop", check, operator)
        self._go("stop", operator, {"reason": reason})
        self._gap_open(GapCause.STOPPED)
        self.watchdog.cancel()
        return self._pump(operator, [("stop", None)])

    def resume(self, operator: str) -> str | None:
        """Restart after an alarm once it is acknowledged and its cause is gone."""
        reason = self.machine.check("resume")
        if reason is not None:
            return self._refuse("resume", reason, operator)
        bag, st = self.s.current_bag, self.last_status
        commands: list[tuple[str, float | None]] = []
        if bag is not None:
            rate = bag.rate_ml_per_h or bag.recipe.rate_ml_per_h
            if st is None or abs(st.rate_ml_per_h - rate) > 1e-9:
                commands.append(("set_rate", rate))  # e.g. lost after a pump reset
            if st is None or st.vtbi_ml is None:
                commands.append(("set_vtbi", bag.vtbi_ml or bag.recipe.vtbi_ml))
        commands.append(("start", None))
        err = self._pump(operator, commands)
        if err is not None:
            if self._pump_empty and bag is not None:
                # The bag ran dry before its VTBI (e.g. it was part-used): restarting
                # cannot work. A bag-empty alarm asks for the next bag, and the guard
                # refuses further resumes without sending the pump a start it refuses.
                self._raise(
                    AlarmKind.BAG_EMPTY,
                    f"bag {bag.n} ran dry before its VTBI: the pump refused to start (no "
                    "fluid in the reservoir); hang the next bag",
                )
                if self.s.plan is not None and self.s.next_bag is None:
                    self._request_bag(stat=True, why=f"bag {bag.n} ran dry before its VTBI")
            return self._refuse("resume", err, operator)
        for a in self.s.alarms.active():
            if a.spec.flow_stopping:
                self._clear(a.kind)
        self._go("resume", operator)
        self._gap_close()
        self._project()
        return None
