"""Orders, titration and the bag ledger's pharmacy side: requests, compounding, hang-by."""

from __future__ import annotations

import math
from typing import Any

from pumpctl.alarms import AlarmKind
from pumpctl.bags import Bag, Recipe
from pumpctl.channel.base import (
    ChannelBase,
    E,
    _round_half_up,
    order_json,
)
from pumpctl.errors import PumpctlError
from pumpctl.machine import State
from pumpctl.order import Build, Order, build
from pumpctl.watchdog import Lead, Stage

#: How long after a bag's exact hang-by time the controller looks at it (past, not on it).
_HANG_BY_CHECK_S = 0.001


class PharmacyDesk(ChannelBase):
    """The pharmacy build becomes a bag plan once per order or titration; bags follow it."""

    # ---------------------------------------------------------------- orders
    def _build(self, order: Order, request: str, operator: str) -> Build | str:
        try:
            return build(order, self.setting)
        except PumpctlError as exc:
            return self._refuse(request, str(exc), operator)

    def _log_overrides(self, b: Build, order: Order, operator: str) -> None:
        who = order.operator or operator
        if b.limit == "soft":
            self._emit(E.OVERRIDE, {"limit": b.limit_detail, "reason": order.override_reason}, who)
        if b.needs_confirmation:
            self._emit(
                E.DEVIATION_CONFIRMED,
                {
                    "deviation_pct": float(b.deviation_pct),
                    "ordered_mg_per_day": float(b.ordered_mg_per_day),
                    "nominal_mg_per_day": float(b.nominal_mg_per_day),
                    "reason": order.confirm_deviation,
                    "alternatives": list(b.alternatives),
                },
                who,
            )

    def program(self, order: Order, operator: str) -> str | None:
        """Build the order and make it the program (only before the infusion starts)."""
        if self.machine.state is not State.IDLE or self.s.bags:
            return self._refuse("program", "already programmed and running; use titrate", operator)
        if (reason := self.why_not_program()) is not None:
            return self._refuse("program", reason, operator)
        b = self._build(order, "program", operator)
        if isinstance(b, str):
            return b
        self._log_overrides(b, order, operator)
        recipe = Recipe.from_build(1, b)
        self._builds[1] = b
        self._emit(
            E.PROGRAM,
            {"order": order_json(order), "build": b.to_json(), "recipe": recipe.to_json()},
            operator,
        )
        self._request_bag(stat=True, why="first bag of the order")
        return None

    def titrate(self, order: Order, operator: str) -> str | None:
        """A new dose: reaches the patient now (rate change or STAT bag) or with the next bag."""
        if self.s.plan is None:
            return self._refuse("titrate", "no program yet: program the order first", operator)
        b = self._build(order, "titrate", operator)
        if isinstance(b, str):
            return b
        plan = self.titration_plan(b)
        self._log_overrides(b, order, operator)
        recipe = Recipe.from_build(self.s.plans + 1, b)
        self._builds[recipe.plan] = b
        self._emit(
            E.TITRATION,
            {
                "order": order_json(order),
                "build": b.to_json(),
                "recipe": recipe.to_json(),
                "mode": plan["mode"],
                "plan": plan,
            },
            operator,
        )
        nb = self.s.next_bag
        if nb is not None and nb.compounded_s is None:  # not made yet: make the new recipe
            self._discard(nb, "titration: rebuilt to the new dose before compounding", operator)
            self._request_bag(stat=plan["mode"] == "stat" or nb.stat, why="titration")
        elif plan["mode"] == "stat":
            if nb is not None:
                self._discard(nb, "titration: replaced by a STAT bag at the new dose", operator)
            self._request_bag(stat=True, why="titration: STAT bag at the new dose")
        if plan["mode"] == "rate_now" and (cur := self.s.current_bag) is not None:
            self._set_rate(cur, float(plan["rate_ml_per_h"]), operator, "titration")
        self._check_hang_by()  # a slower rate can put a made bag past its beyond-use time
        return None

    def titration_plan(self, b: Build) -> dict[str, Any]:
        """How a new build would reach the patient: what the titrate dialog shows first."""
        cur, st = self.s.current_bag, self.last_status
        new_dose_h = float(b.achieved_mg_per_day) / 24.0
        if self.setting.titration_mode == "next_bag" or cur is None or st is None:
            return {"mode": "next_bag", "why": "the next bag is rebuilt; the running bag runs on"}
        rate = self._rate_for(cur, new_dose_h)
        end = self.s.projected_end_s
        if end is not None and st.running and st.rate_ml_per_h > 0:
            # What is left now, from the projection (the last read-back may be hours old).
            left_ml = max(end - self.clock.now(), 0.0) * st.rate_ml_per_h / 3600.0
        else:
            left_ml = st.vtbi_left_ml if st.vtbi_left_ml is not None else cur.recipe.vtbi_ml
        lasts_s = left_ml / rate * 3600.0 if rate > 0 else math.inf
        bud_s = self._beyond_use_s(cur)
        until = ""
        if bud_s is not None and bud_s - self.clock.now() < lasts_s:
            # A slower bag still comes down at its beyond-use time.
            until = f" until its beyond-use time (it would run {lasts_s / 60:.0f} min)"
            lasts_s = max(bud_s - self.clock.now(), 0.0)
        lead_s = self.planner.lead(Stage.PHARMACY_REQUEST).s
        need_s = lead_s + self.setting.titration_margin_min * 60.0
        lim = self.driver.limits
        in_range = lim.min_ml_per_h <= rate <= lim.max_ml_per_h
        if in_range and lasts_s > need_s:
            return {
                "mode": "rate_now",
                "rate_ml_per_h": rate,
                "bag": cur.n,
                "lasts_min": round(lasts_s / 60.0, 1),
                "why": f"bag {cur.n} at {rate:g} mL/h still lasts {lasts_s / 60:.0f} min{until}, "
                f"more than the pharmacy lead + margin ({need_s / 60:.0f} min)",
            }
        nb = self.s.next_bag
        if in_range and nb is not None and nb.compounded_s is not None:
            # A bag at the old concentration is already made: run both at the new dose rate.
            return {
                "mode": "rate_now",
                "rate_ml_per_h": rate,
                "bag": cur.n,
                "lasts_min": round(lasts_s / 60.0, 1),
                "why": f"bag {nb.n} is already made; bag {cur.n} at {rate:g} mL/h lasts "
                f"{lasts_s / 60:.0f} min and bag {nb.n} follows at the new dose rate",
            }
        return {
            "mode": "stat",
            "why": f"bag {cur.n} at the new rate would last {lasts_s / 60:.0f} min, not more than "
            f"the pharmacy lead + margin ({need_s / 60:.0f} min): a STAT bag is requested now",
        }

    def _rate_for(self, bag: Bag, dose_mg_per_h: float) -> float:
        """The rate that gives ``dose_mg_per_h`` from this bag, on the pump's resolution."""
        return _round_half_up(dose_mg_per_h / bag.recipe.conc_mg_per_ml, self.rate_step)

    def _bag_rate(self, bag: Bag) -> float:
        """Rate to run ``bag`` at: its recipe's, or the dose rate in force from its conc."""
        plan = self.s.plan
        if plan is None or bag.recipe.plan == plan.plan or self.setting.titration_mode != "now":
            return bag.recipe.rate_ml_per_h
        return self._rate_for(bag, plan.dose_mg_per_h)

    def _set_rate(self, bag: Bag, rate: float, operator: str, why: str) -> None:
        if self.machine.state not in (State.INFUSING, State.BAG_CHANGE):
            self._emit(E.RATE_CHANGE, {"bag": bag.n, "rate_ml_per_h": rate, "why": why}, operator)
            return
        err = self._pump(operator, [("set_rate", rate)])
        if err is not None:
            self._emit(E.REFUSED, {"request": "rate_change", "reason": err}, operator)
            return
        self._emit(
            E.RATE_CHANGE,
            {
                "bag": bag.n,
                "rate_ml_per_h": rate,
                "dose_mg_per_h": round(rate * bag.recipe.conc_mg_per_ml, 6),
                "why": why,
            },
            operator,
        )
        self._project()

    # ------------------------------------------------------------- pharmacy
    def _request_bag(self, *, stat: bool, why: str, lead: Lead | None = None) -> Bag:
        plan = self.s.plan
        assert plan is not None
        end = self.s.change_by_s or self.s.projected_end_s  # when this bag is needed
        self._emit(
            E.PHARMACY_REQUEST,
            {
                "bag": self.s.next_bag_n(),
                "recipe": plan.to_json(),
                "stat": stat,
                "needed_by_s": None if stat or end is None else round(end, 3),
                "why": why,
                "lead_min": None if lead is None else round(lead.s / 60.0, 2),
            },
        )
        nb = self.s.next_bag
        assert nb is not None
        return nb

    def bag_compounded(self, operator: str = "pharmacy") -> str | None:
        """Pharmacy has compounded the next bag; its hang-by time is set now."""
        nb = self.s.next_bag
        if nb is None:
            return self._refuse("bag_compounded", "no bag has been requested", operator)
        if nb.compounded_s is not None:
            return self._refuse("bag_compounded", f"bag {nb.n} is already compounded", operator)
        r = nb.recipe
        duration_s = r.vtbi_ml / r.rate_ml_per_h * 3600.0
        hang_by = self.clock.now() + self.setting.beyond_use_h * 3600.0 - duration_s
        self._emit(
            E.BAG_COMPOUNDED,
            {"bag": nb.n, "mg": r.mg, "bag_ml": r.bag_ml, "hang_by_s": round(hang_by, 3)},
            operator,
        )
        self._arm_hang_by(nb)
        return None

    def _arm_hang_by(self, nb: Bag) -> None:
        """Look at the next bag again when its hang-by time has passed: the exact time at
        the rate it will really run (the logged one is rounded, and a titration moves it)."""
        old = self._timers.pop("hang_by", None)
        if old is not None:
            old.cancel()
        hang_by = self._hang_by_s(nb)
        if hang_by is not None:
            self._timers["hang_by"] = self.clock.call_at(
                hang_by + _HANG_BY_CHECK_S, self._check_hang_by
            )

    def _check_hang_by(self) -> None:
        """Alarm if the next bag is past its hang-by time; else look again when it will be."""
        old = self._timers.pop("hang_by", None)
        if old is not None:  # (called directly after a titration, not by its timer)
            old.cancel()
        nb = self.s.next_bag
        if nb is None:
            return
        if self._why_not_hang_by(nb, slack_s=1e-6) is not None:
            self._raise(AlarmKind.BAG_PAST_HANG_BY, f"bag {nb.n}")
        else:
            self._arm_hang_by(nb)

    def bag_delivered(self, operator: str = "pharmacy") -> str | None:
        """The next bag is at the bedside (hand-delivered, light-protected)."""
        nb = self.s.next_bag
        if nb is None or nb.compounded_s is None:
            return self._refuse("bag_delivered", "no compounded bag is on its way", operator)
        if nb.delivered_s is not None:
            return self._refuse("bag_delivered", f"bag {nb.n} is already at the bedside", operator)
        self._emit(E.BAG_AT_BEDSIDE, {"bag": nb.n}, operator)
        if not nb.stat:
            self.planner.observe(Stage.PHARMACY_REQUEST, self.clock.now() - nb.requested_s)
        for kind in (AlarmKind.NEXT_BAG_NOT_AT_BEDSIDE, AlarmKind.PHARMACY_REQUEST):
            self._clear(kind)
        if self.machine.state is State.INFUSING:  # escalation stays only if the change is still due
            self._clear(AlarmKind.NO_BAG_READY)
        return None

    def release_bag(self, operator: str, reason: str) -> str | None:
        """Pharmacist: the next bag past its hang-by time may be hung (reason logged)."""
        nb = self.s.next_bag
        if nb is None or nb.hang_by_s is None:
            return self._refuse("release_bag", "no compounded bag to release", operator)
        if not reason.strip():
            return self._refuse("release_bag", "a release needs a reason", operator)
        self._emit(E.BAG_RELEASED, {"bag": nb.n, "reason": reason}, operator)
        self._clear(AlarmKind.BAG_PAST_HANG_BY)
        return None

    def replace_next_bag(self, operator: str, reason: str) -> str | None:
        """Pharmacist: discard the next bag and request a fresh one at once."""
        nb = self.s.next_bag
        if nb is None:
            return self._refuse("replace_next_bag", "no bag has been requested", operator)
        self._discard(nb, reason, operator)
        self._clear(AlarmKind.BAG_PAST_HANG_BY)
        self._request_bag(stat=True, why=f"replaces bag {nb.n}: {reason}")
        return None

    def _discard(self, bag: Bag, reason: str, operator: str) -> None:
        wasted = bag.recipe.mg if bag.compounded_s is not None else 0.0
        armed = self.s.relay_armed == bag.n
        self._emit(E.BAG_DISCARDED, {"bag": bag.n, "reason": reason, "wasted_mg": wasted}, operator)
        if armed and self._relay is not None:
            self._relay.disarm()
