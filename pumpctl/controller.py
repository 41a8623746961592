"""The controller: decides, logs the event, applies it, and drives the pump.

Every request returns ``None`` when done or the one-line reason it was refused; a refusal
is logged and never raises. Every state change, alarm, override and pump command is
logged (and, on SQLite, committed) before it takes effect. State changes only by
``pumpctl.events.apply`` on a logged event, so ``restore`` (a replay of the log) gives
exactly the state the live controller had.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from pumpctl.alarms import AlarmBoard, AlarmKind
from pumpctl.bags import Bag, Recipe
from pumpctl.clock import Clock, TimerHandle
from pumpctl.drivers.base import FLOW_STOPPING_ALARMS, PumpAlarm, PumpDriver, PumpStatus
from pumpctl.errors import CommunicationError, PumpctlError, PumpError
from pumpctl.eventlog import Event, EventLog, MemoryEventLog
from pumpctl.events import ChannelState, EventKind, GapCause, apply, fold
from pumpctl.machine import TRANSITIONS, PumpMachine, State
from pumpctl.order import Build, Order, build
from pumpctl.setting import DrugSetting, PumpModel
from pumpctl.watchdog import Lead, LeadPlanner, Stage, Watchdog

Log = EventLog | MemoryEventLog
Listener = Callable[[Event], None]
E = EventKind

#: How a pump-reported alarm maps onto a controller alarm kind.
FROM_PUMP: dict[PumpAlarm, AlarmKind] = {
    PumpAlarm.VTBI_COMPLETE: AlarmKind.BAG_EMPTY,
    PumpAlarm.OCCLUSION: AlarmKind.OCCLUSION,
    PumpAlarm.AIR_IN_LINE: AlarmKind.AIR_IN_LINE,
    PumpAlarm.STALL: AlarmKind.PUMP_FAILURE,
    PumpAlarm.PUMP_FAILURE: AlarmKind.PUMP_FAILURE,
    PumpAlarm.PROGRAM_ERROR: AlarmKind.PUMP_FAILURE,
    PumpAlarm.OUT_OF_RANGE: AlarmKind.PUMP_FAILURE,
    PumpAlarm.SAFE_TIMEOUT: AlarmKind.PUMP_FAILURE,
    PumpAlarm.BATTERY_DEPLETED: AlarmKind.BATTERY_DEPLETED,
    PumpAlarm.RESET: AlarmKind.PUMP_RESET,
    PumpAlarm.POWER_LOSS: AlarmKind.POWER_LOSS,
    PumpAlarm.BATTERY_LOW: AlarmKind.BATTERY_LOW,
}
_STAGE_ALARMS = (
    AlarmKind.PREPARE_BAG_CHANGE,
    AlarmKind.NO_BAG_READY,
    AlarmKind.NEXT_BAG_NOT_AT_BEDSIDE,
    AlarmKind.PHARMACY_REQUEST,
)
_DEST = {t: d for t, _s, d, _g in TRANSITIONS}


def order_json(order: Order) -> dict[str, Any]:
    """An order as plain JSON (decimals as numbers)."""
    out: dict[str, Any] = {}
    for k, v in asdict(order).items():
        out[k] = float(v) if isinstance(v, Decimal) else v
    return out


def order_from_json(o: dict[str, Any]) -> Order:
    """Back from ``order_json``."""
    per_kg = o.get("dose_mg_per_kg_per_day")
    return Order(
        Decimal(str(o["dose_mg_per_day"])),
        Decimal(str(o["weight_kg"])),
        bag_ml=o.get("bag_ml"),
        interval_h=o.get("interval_h"),
        indication=o.get("indication", ""),
        approving_service=o.get("approving_service", ""),
        override_reason=o.get("override_reason"),
        operator=o.get("operator"),
        confirm_deviation=o.get("confirm_deviation"),
        dose_mg_per_kg_per_day=None if per_kg is None else Decimal(str(per_kg)),
    )


def _floor(value: float, step: float) -> float:
    return math.floor(value / step + 1e-9) * step


def _round_half_up(value: float, step: float) -> float:
    return round(math.floor(value / step + 0.5 + 1e-9) * step, 6)


class Controller:
    """One pump channel under protocol control."""

    def __init__(
        self,
        clock: Clock,
        driver: PumpDriver,
        log: Log,
        setting: DrugSetting,
        *,
        model: PumpModel | None = None,
        reservoir_change: str | None = None,
        pump_name: str = "pump1",
        poll_s: float | None = None,
    ) -> None:
        self.clock = clock
        self.driver = driver
        self.log = log
        self.setting = setting
        self.model = model
        self.reservoir_change = reservoir_change or (model.reservoir_change if model else "running")
        self.prime_ml = model.prime_ml if model else 0.0
        self.stated_pct = model.stated_accuracy_pct if model else 5.0
        self.rate_step = driver.limits.resolution_ml_per_h
        self.pump_name = pump_name
        self.poll_s = poll_s
        self.s = ChannelState()
        self.machine = PumpMachine(self)
        self.planner = LeadPlanner(setting)
        self.watchdog = Watchdog(clock, self.planner, self._on_stage)
        self.listeners: list[Listener] = []
        self.last_status: PumpStatus | None = None
        self._light_pending = False
        self._builds: dict[int, Build] = {}
        self._timers: dict[str, TimerHandle] = {}
        self._silence_timers: dict[int, TimerHandle] = {}
        self._poll_timer: TimerHandle | None = None
        if hasattr(driver, "listener"):
            driver.listener = self._on_pump_alarms
        self._storage_timer: TimerHandle | None = None
        also = getattr(log, "on_storage_change", None)  # another listener (not a controller)
        owner = getattr(also, "__self__", None)
        self._storage_also = None if isinstance(owner, Controller) else also
        log.on_storage_change = self._on_storage_change
        if poll_s:
            self._poll_timer = clock.call_later(poll_s, self._poll)

    # ------------------------------------------------------------ state views
    @property
    def state(self) -> State:
        """Current machine state."""
        return self.machine.state

    @property
    def alarms(self) -> AlarmBoard:
        return self.s.alarms

    @property
    def bags(self) -> list[Bag]:
        """Bags hung so far, in order."""
        return self.s.hung_bags

    @property
    def current_bag(self) -> Bag | None:
        return self.s.current_bag

    @property
    def next_bag(self) -> Bag | None:
        return self.s.next_bag

    @property
    def line_primed(self) -> bool:
        return self.s.line_primed

    @property
    def link_ok(self) -> bool:
        return self.s.link_ok

    @property
    def order(self) -> Order | None:
        """The order in force."""
        return None if self.s.order is None else order_from_json(self.s.order)

    @property
    def build(self) -> Build | None:
        """The pharmacy build of the order in force (for labels and screens)."""
        plan = self.s.plan
        if plan is None or self.s.order is None:
            return None
        if plan.plan not in self._builds:
            try:
                self._builds[plan.plan] = build(order_from_json(self.s.order), self.setting)
            except PumpctlError as exc:  # an overridden or confirmed build still shows
                b = getattr(exc, "build", None)
                if b is None:
                    return None
                self._builds[plan.plan] = b
        return self._builds[plan.plan]

    # ------------------------------------------------------------------ log
    def _emit(self, kind: str, detail: dict[str, Any], operator: str = "system") -> Event:
        """Log an event (committed first), then apply it, then tell the listeners."""
        ev = self.log.append(self.clock.now(), self.pump_name, self.s.state, kind, detail, operator)
        apply(self.s, ev)
        if kind == E.STATE:
            self.machine.force(State(self.s.state))
        for cb in self.listeners:
            cb(ev)
        return ev

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns the unsubscribe."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener) if listener in self.listeners else None

    def _refuse(self, request: str, reason: str, operator: str) -> str:
        self._emit(E.REFUSED, {"request": request, "reason": reason}, operator)
        return reason

    def _go(self, trigger: str, operator: str, detail: dict[str, Any] | None = None) -> None:
        """Log the state change and apply it (the guard was checked by the caller)."""
        src = self.s.state
        self._emit(
            E.STATE,
            {"from": src, "to": _DEST[trigger].value, "trigger": trigger, **(detail or {})},
            operator,
        )

    def _pump(self, operator: str, commands: list[tuple[str, float | None]]) -> str | None:
        """Log the pump commands, then send them; return the pump's refusal if any."""
        self._emit(E.PUMP_COMMAND, {"commands": [[c, v] for c, v in commands]}, operator)
        try:
            for name, value in commands:
                fn = getattr(self.driver, name)
                fn() if value is None else fn(value)
        except CommunicationError as exc:
            self._comm_lost(str(exc))
            return f"pump did not answer: {exc}"
        except PumpError as exc:
            self._emit(E.PUMP_REFUSED, {"reason": str(exc)}, operator)
            return f"pump refused: {exc}"
        self._refresh_status()
        return None

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
        nb = self.next_bag
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
        nb = self.next_bag
        if nb is None or nb.delivered_s is None:
            return "the next bag is not at the bedside"
        return self._why_not_hang_by(nb)

    def why_not_hang(self) -> str | None:
        """Hanging needs light protection confirmed and a bag inside its hang-by time."""
        nb = self.next_bag
        if nb is None or nb.delivered_s is None:
            return "the next bag is not at the bedside"
        return self._why_not_light() or self._why_not_hang_by(nb)

    def why_not_resume(self) -> str | None:
        """Leaving alarm needs every flow-stopping alarm acknowledged and its cause gone."""
        for a in self.alarms.active():
            if a.spec.flow_stopping and a.acknowledged_s is None:
                return f"acknowledge the {a.kind} alarm first"
            if a.kind == AlarmKind.BAG_EMPTY:
                return "the bag is empty: hang the next bag"
        return None

    def why_not(self, request: str) -> str | None:
        """Would ``request`` be accepted now? ``None`` if so, else the reason (no side effect)."""
        if request == "hang_bag":
            if self.state is State.ALARM:
                return self._why_not_hang_from_alarm(light=True)
            reason = self.machine.check("finish_bag_change")
        elif request in ("program", "titrate"):
            if request == "program" and (self.state is not State.IDLE or self.s.bags):
                return "already programmed and running; use titrate"
            if request == "titrate" and self.s.plan is None:
                return "no program yet: program the order first"
            reason = self._installed()
        else:
            trigger = {"bag_change": "begin_bag_change"}.get(request, request)
            if self.state is State.ALARM and trigger == "start":
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

    def _why_not_hang_by(self, bag: Bag) -> str | None:
        if bag.past_hang_by(self.clock.now()):
            assert bag.hang_by_s is not None and bag.compounded_s is not None
            return (
                f"bag {bag.n} is past its hang-by time ({bag.hang_by_s / 3600:.2f} h: compounded "
                f"+ {self.setting.beyond_use_h:g} h beyond-use - its duration); the pharmacist "
                "replaces or releases it"
            )
        return None

    def bag_expired(self) -> str | None:
        """Why the next bag may not be hung now (past its hang-by time), or None."""
        nb = self.next_bag
        return None if nb is None else self._why_not_hang_by(nb)

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
        if self.state is not State.IDLE or self.s.bags:
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
        nb = self.next_bag
        if nb is not None and nb.compounded_s is None:  # not made yet: make the new recipe
            self._discard(nb, "titration: rebuilt to the new dose before compounding", operator)
            self._request_bag(stat=plan["mode"] == "stat", why="titration")
        elif plan["mode"] == "stat":
            if nb is not None:
                self._discard(nb, "titration: replaced by a STAT bag at the new dose", operator)
            self._request_bag(stat=True, why="titration: STAT bag at the new dose")
        if plan["mode"] == "rate_now" and (cur := self.current_bag) is not None:
            self._set_rate(cur, float(plan["rate_ml_per_h"]), operator, "titration")
        return None

    def titration_plan(self, b: Build) -> dict[str, Any]:
        """How a new build would reach the patient: what the titrate dialog shows first."""
        cur, st = self.current_bag, self.last_status
        new_dose_h = float(b.achieved_mg_per_day) / 24.0
        if self.setting.titration_mode == "next_bag" or cur is None or st is None:
            return {"mode": "next_bag", "why": "the next bag is rebuilt; the running bag runs on"}
        rate = self._rate_for(cur, new_dose_h)
        left_ml = st.vtbi_left_ml if st.vtbi_left_ml is not None else cur.recipe.vtbi_ml
        lasts_s = left_ml / rate * 3600.0 if rate > 0 else math.inf
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
                "why": f"bag {cur.n} at {rate:g} mL/h still lasts {lasts_s / 60:.0f} min, more "
                f"than the pharmacy lead + margin ({need_s / 60:.0f} min)",
            }
        nb = self.next_bag
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
        if self.state not in (State.INFUSING, State.BAG_CHANGE):
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
        end = self.s.projected_end_s
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
        nb = self.next_bag
        assert nb is not None
        return nb

    def bag_compounded(self, operator: str = "pharmacy") -> str | None:
        """Pharmacy has compounded the next bag; its hang-by time is set now."""
        nb = self.next_bag
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
        old = self._timers.pop("hang_by", None)
        if old is not None:
            old.cancel()
        if nb.hang_by_s is not None and nb.released_by is None:
            self._timers["hang_by"] = self.clock.call_at(nb.hang_by_s, self._check_hang_by)

    def _check_hang_by(self) -> None:
        nb = self.next_bag
        if nb is not None and nb.past_hang_by(self.clock.now() + 1e-6):
            self._raise(AlarmKind.BAG_PAST_HANG_BY, f"bag {nb.n}")

    def bag_delivered(self, operator: str = "pharmacy") -> str | None:
        """The next bag is at the bedside (hand-delivered, light-protected)."""
        nb = self.next_bag
        if nb is None or nb.compounded_s is None:
            return self._refuse("bag_delivered", "no compounded bag is on its way", operator)
        if nb.delivered_s is not None:
            return self._refuse("bag_delivered", f"bag {nb.n} is already at the bedside", operator)
        self._emit(E.BAG_AT_BEDSIDE, {"bag": nb.n}, operator)
        if not nb.stat:
            self.planner.observe(Stage.PHARMACY_REQUEST, self.clock.now() - nb.requested_s)
        for kind in (AlarmKind.NEXT_BAG_NOT_AT_BEDSIDE, AlarmKind.PHARMACY_REQUEST):
            self._clear(kind)
        if self.state is State.INFUSING:  # escalation stays only if the change is still due
            self._clear(AlarmKind.NO_BAG_READY)
        return None

    def release_bag(self, operator: str, reason: str) -> str | None:
        """Pharmacist: the next bag past its hang-by time may be hung (reason logged)."""
        nb = self.next_bag
        if nb is None or nb.hang_by_s is None:
            return self._refuse("release_bag", "no compounded bag to release", operator)
        if not reason.strip():
            return self._refuse("release_bag", "a release needs a reason", operator)
        self._emit(E.BAG_RELEASED, {"bag": nb.n, "reason": reason}, operator)
        self._clear(AlarmKind.BAG_PAST_HANG_BY)
        return None

    def replace_next_bag(self, operator: str, reason: str) -> str | None:
        """Pharmacist: discard the next bag and request a fresh one at once."""
        nb = self.next_bag
        if nb is None:
            return self._refuse("replace_next_bag", "no bag has been requested", operator)
        self._discard(nb, reason, operator)
        self._clear(AlarmKind.BAG_PAST_HANG_BY)
        self._request_bag(stat=True, why=f"replaces bag {nb.n}: {reason}")
        return None

    def _discard(self, bag: Bag, reason: str, operator: str) -> None:
        wasted = bag.recipe.mg if bag.compounded_s is not None else 0.0
        self._emit(E.BAG_DISCARDED, {"bag": bag.n, "reason": reason, "wasted_mg": wasted}, operator)

    # ------------------------------------------------------------- nursing
    def prime(self, operator: str, light_protected: bool) -> str | None:
        """Hang the first bag and prime the line."""
        self._light_pending = light_protected
        reason = self.machine.check("prime")
        if reason is not None:
            return self._refuse("prime", reason, operator)
        nb = self.next_bag
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
        content = bag.recipe.content_ml - (self.prime_ml if first else 0.0)
        safe = _floor(content / (1.0 + self.stated_pct / 100.0), self.rate_step)
        return round(min(bag.recipe.vtbi_ml, safe), 6)

    def start(self, operator: str) -> str | None:
        """Program the pump from the first bag and start the continuous infusion."""
        self._light_pending = self._light_pending or not self.setting.light_protection
        reason = self.machine.check("start")
        if reason is not None:
            return self._refuse("start", reason, operator)
        nb = self.next_bag
        assert nb is not None
        rate, vtbi = self._bag_rate(nb), self._vtbi_for(nb, first=True)
        err = self._pump(
            operator,
            [("set_rate", rate), ("clear_volume", None), ("set_vtbi", vtbi), ("start", None)],
        )
        if err is not None:
            return self._refuse("start", err, operator)
        self._go("start", operator, {"bag": nb.n, "rate_ml_per_h": rate})
        self._hang_record(nb, operator, rate, vtbi)
        return None

    def begin_bag_change(self, operator: str) -> str | None:
        """Start changing the bag; a running-change pump keeps pumping from its drip chamber."""
        reason = self.machine.check("begin_bag_change")
        if reason is not None:
            return self._refuse("begin_bag_change", reason, operator)
        stops = self.reservoir_change == "stopped"
        self._go(
            "begin_bag_change",
            operator,
            {"reservoir_change": self.reservoir_change, "stops_flow": stops},
        )
        self._clear(AlarmKind.NO_BAG_READY)
        if stops:
            self.watchdog.cancel()
            self._gap_open(GapCause.BAG_CHANGE)
            err = self._pump(operator, [("stop", None)])
            if err is not None:
                self._emit(E.PUMP_REFUSED, {"reason": err}, operator)
        return None

    def _why_not_hang_from_alarm(self, light: bool) -> str | None:
        if (
            self.alarms.find_active(AlarmKind.BAG_EMPTY) is None
            and self.s.fault_from != "bag_change"
        ):
            return "only after a bag-empty alarm or a bag change"
        unacked = [
            a.kind
            for a in self.alarms.active()
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
        from_alarm = self.state is State.ALARM
        if from_alarm:
            reason = self._why_not_hang_from_alarm(light_protected)
        else:
            reason = self.machine.check("finish_bag_change")
        if reason is not None:
            return self._refuse("hang_bag", reason, operator)
        nb = self.next_bag
        assert nb is not None
        old = self.current_bag
        rate, vtbi = self._bag_rate(nb), self._vtbi_for(nb, first=False)
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
            for a in self.alarms.active():
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
        for kind in (*_STAGE_ALARMS, AlarmKind.BAG_PAST_HANG_BY):
            self._clear(kind)
        self._project()

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
        bag, st = self.current_bag, self.last_status
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
            return self._refuse("resume", err, operator)
        for a in self.alarms.active():
            if a.spec.flow_stopping:
                self._clear(a.kind)
        self._go("resume", operator)
        self._gap_close()
        self._project()
        return None

    # ------------------------------------------------------------- alarms
    def _raise(self, kind: AlarmKind, detail: str = "") -> None:
        if self.alarms.find_active(kind) is not None:
            return
        spec = kind.spec
        bag = self.current_bag
        self._emit(
            E.ALARM,
            {
                "id": self.alarms.next_id(),
                "kind": kind.value,
                "priority": spec.priority.value,
                "flow_stopping": spec.flow_stopping,
                "text": spec.text,
                "detail": detail,
                "bag": bag.n if bag else None,
            },
        )

    def _clear(self, kind: AlarmKind) -> None:
        a = self.alarms.find_active(kind)
        if a is None:
            return
        self._emit(E.ALARM_CLEARED, {"kind": kind.value, "id": a.id})
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
        if self.log.storage_ok:
            self._clear(AlarmKind.LOG_UNAVAILABLE)
        else:
            self._raise(AlarmKind.LOG_UNAVAILABLE, getattr(self.log, "storage_problem", ""))

    def _find(self, alarm: int | str) -> Any:
        return self.alarms.get(alarm) if isinstance(alarm, int) else self.alarms.find_active(alarm)

    def acknowledge(self, alarm: int | str, operator: str) -> str | None:
        """Acknowledge an alarm (by id or kind)."""
        a = self._find(alarm)
        if a is None or not a.active:
            return self._refuse("acknowledge", f"no active alarm {alarm!r}", operator)
        if a.acknowledged_s is not None:
            return None
        self._emit(E.ALARM_ACKNOWLEDGED, {"kind": a.kind.value, "id": a.id}, operator)
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
                "kind": a.kind.value,
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
        a = self.alarms.get(alarm_id)
        if a is not None and a.active and a.silenced_until_s is not None:
            self._emit(E.ALARM_REANNUNCIATED, {"kind": a.kind.value, "id": a.id})

    # ----------------------------------------------------------- watchdog
    def _on_stage(self, stage: str, bag_n: int, end_s: float, lead: Lead) -> None:
        """A watchdog lead time has come for the current bag."""
        cur = self.current_bag
        if cur is None or cur.n != bag_n or stage in self.s.fired.get(bag_n, []):
            return
        nb = self.next_bag
        self._emit(
            E.WATCHDOG,
            {
                "stage": stage,
                "bag": bag_n,
                "lead_min": round(lead.s / 60.0, 2),
                "why": lead.why,
                "end_s": round(end_s, 3),
                "next_bag": nb.status.value if nb else None,
            },
        )
        at_bedside = nb is not None and nb.delivered_s is not None
        if stage == Stage.PHARMACY_REQUEST:
            if nb is None:
                self._raise(AlarmKind.PHARMACY_REQUEST, f"bag {self.s.next_bag_n()}")
                self._request_bag(stat=False, why=f"T-{lead.s / 60:.0f} min", lead=lead)
        elif stage == Stage.NOT_AT_BEDSIDE:
            if not at_bedside:
                self._raise(AlarmKind.NEXT_BAG_NOT_AT_BEDSIDE, f"bag {nb.n if nb else '?'}")
        elif stage == Stage.PREPARE:
            left_min = (end_s - self.clock.now()) / 60.0
            self._raise(AlarmKind.PREPARE_BAG_CHANGE, f"bag {bag_n} ends in {left_min:.0f} min")
        elif stage == Stage.ESCALATE and self.state is State.INFUSING:
            # The bag change has not started, whatever the reason: call the charge nurse.
            why = "no bag at the bedside" if not at_bedside else "bag change not started"
            self._raise(AlarmKind.NO_BAG_READY, f"bag {bag_n}: {why}")

    def _project(self) -> None:
        bag, st = self.current_bag, self.last_status
        if bag is None or st is None or not st.running or st.rate_ml_per_h <= 0:
            self.watchdog.cancel()
            return
        left = st.vtbi_left_ml if st.vtbi_left_ml is not None else (bag.vtbi_ml or 0.0)
        end = self.clock.now() + left / st.rate_ml_per_h * 3600.0
        self._emit(
            E.PROJECTION,
            {
                "bag": bag.n,
                "end_s": round(end, 3),
                "vtbi_left_ml": round(left, 4),
                "rate_ml_per_h": st.rate_ml_per_h,
            },
        )
        self.watchdog.schedule(bag.n, end, self.s.fired.get(bag.n, []))

    # ---------------------------------------------------------- pump events
    def _gap_open(self, cause: str, start_s: float | None = None) -> None:
        if self.s.open_gap is None:
            d: dict[str, Any] = {"cause": str(cause)}
            if start_s is not None and start_s < self.clock.now():
                d["start_s"] = round(start_s, 3)
            self._emit(E.GAP_START, d)

    def _gap_close(self) -> None:
        g = self.s.open_gap
        if g is not None:
            now = self.clock.now()
            self._emit(
                E.GAP_END,
                {
                    "cause": g.cause,
                    "start_s": round(g.start_s, 3),
                    "length_s": round(now - g.start_s, 3),
                },
            )

    def _refresh_status(self) -> PumpStatus | None:
        try:
            st = self.driver.status()
        except CommunicationError as exc:
            self._comm_lost(str(exc))
            return None
        if not self.s.link_ok:
            self._emit(E.COMM_RESTORED, {})
            self._clear(AlarmKind.COMM_LOSS)
        self.last_status = st
        return st

    def _comm_lost(self, why: str) -> None:
        if self.s.link_ok:
            self._raise(AlarmKind.COMM_LOSS, why)

    def _on_pump_alarms(self, raised: list[PumpAlarm]) -> None:
        """The pump reported something (pushed by the sim driver, or found by polling)."""
        st = self._refresh_status()
        for pa in raised:
            self._handle_pump_alarm(pa)
        if st is not None:
            reported = {FROM_PUMP[a] for a in st.alarms if a in FROM_PUMP}
            for kind in (AlarmKind.POWER_LOSS, AlarmKind.BATTERY_LOW):
                if kind not in reported:
                    self._clear(kind)

    def _handle_pump_alarm(self, pa: PumpAlarm, gap_from_s: float | None = None) -> None:
        kind = FROM_PUMP.get(pa)
        if kind is None:
            return
        flow_stop = pa in FLOW_STOPPING_ALARMS or pa is PumpAlarm.VTBI_COMPLETE
        if flow_stop and self.state is State.IDLE:
            self._raise(kind)
            return
        if flow_stop:
            cause = GapCause.BAG_EMPTY if pa is PumpAlarm.VTBI_COMPLETE else kind.value
            self._gap_open(cause, gap_from_s)
            if self.state in (State.PRIMING, State.INFUSING, State.BAG_CHANGE):
                self._go("fault", "system", {"cause": str(cause)})
            self.watchdog.cancel()
        self._raise(kind)

    def _poll(self) -> None:
        """Periodic read-back (real pumps, and simulated links that can fail)."""
        assert self.poll_s
        try:
            self._poll_once()
        finally:  # the next read-back counts from the end of this one
            self._poll_timer = self.clock.call_later(self.poll_s, self._poll)

    def _expects_running(self) -> bool:
        return self.state is State.INFUSING or (
            self.state is State.BAG_CHANGE and self.reservoir_change == "running"
        )

    def _poll_once(self) -> None:
        # A status read-back is also the safe-mode heartbeat: any valid packet counts.
        prev = self.last_status
        st = self._refresh_status()
        if st is None:
            return
        new = st.alarms - (prev.alarms if prev else frozenset())
        if new:
            self._on_pump_alarms(sorted(new))
            return
        if self._expects_running() and not st.running:
            self._gap_open(GapCause.PUMP_STOPPED)
            self._raise(AlarmKind.PUMP_FAILURE, f"pump reports {st.run_state.value} while infusing")
            self._go("fault", "system", {"cause": GapCause.PUMP_STOPPED.value})
            self.watchdog.cancel()

    def stop_record(self) -> None:
        """Log that the controller stops supervising now (the pump keeps running)."""
        self._emit(E.RUN_END, {"end_s": round(self.clock.now(), 3), "controller_stopped": True})

    def close(self) -> None:
        """Stop timers; the pump keeps its last safe state."""
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        for t in [*self._timers.values(), *self._silence_timers.values()]:
            t.cancel()
        if self._storage_timer is not None:
            self._storage_timer.cancel()
        self.watchdog.cancel()

    # ------------------------------------------------------------- display
    def snapshot(self) -> dict[str, Any]:
        """What a pump screen shows, as plain data."""
        b = self.build
        bag = self.current_bag
        st = self.last_status
        to_end = self.watchdog.seconds_to_end()
        nb = self.next_bag
        return {
            "t_s": self.clock.now(),
            "state": self.state.value,
            "drug": self.setting.drug,
            "setting_name": self.setting.name,
            "setting_version": self.setting.version,
            "ordered_mg_per_day": self.s.ordered_mg_per_day,
            "achieved_mg_per_day": float(b.achieved_mg_per_day) if b else None,
            "nominal_mg_per_day": float(b.nominal_mg_per_day) if b else None,
            "dose_mg_per_kg_per_h": float(b.dose_mg_per_kg_per_h) if b else None,
            "concentration_mg_per_ml": bag.recipe.conc_mg_per_ml if bag else None,
            "dose_mg_per_h": None
            if bag is None or st is None
            else round(st.rate_ml_per_h * bag.recipe.conc_mg_per_ml, 4),
            "rate_ml_per_h": st.rate_ml_per_h if st else None,
            "vtbi_ml": st.vtbi_ml if st else None,
            "volume_infused_ml": st.volume_infused_ml if st else None,
            "run_state": st.run_state.value if st else None,
            "min_to_bag_end": None if to_end is None else int(to_end // 60),
            "s_to_bag_end": to_end,
            "bag": bag.to_json() if bag else None,
            "next_bag": nb.to_json() if nb else None,
            "alarms": [a.to_json() for a in self.alarms.active()],
            "interrupted_s": self.s.interrupted_s(self.clock.now()),
            "link_ok": self.s.link_ok,
            "line_primed": self.s.line_primed,
        }


def restore(ctl: Controller, operator: str = "system") -> dict[str, Any]:
    """Rebuild a controller from its event log after a restart, then read the pump back.

    The state is the fold of the log (``pumpctl.events``): the same ``apply`` the live
    controller used. Nothing is sent to the pump unless the log and the pump disagree in a
    way that needs a person; the pump is never restarted or reprogrammed here. An outage
    during which the bag ran out is dated from the projected end, not from the restart.
    """
    events = ctl.log.events()
    ctl.s = fold(events)
    ctl.machine.force(State(ctl.s.state))
    _replay_observations(ctl, events)
    st = ctl._refresh_status()
    found = {
        "state": ctl.s.state,
        "bags_hung": len(ctl.bags),
        "next_bag": ctl.next_bag.status.value if ctl.next_bag else None,
        "pump": None if st is None else st.run_state.value,
        "volume_infused_ml": None if st is None else round(st.volume_infused_ml, 4),
        "active_alarms": [a.kind.value for a in ctl.alarms.active()],
        "events_read": len(events),
        "setting_version": ctl.setting.version,
    }
    last_end = ctl.s.projected_end_s
    ctl._emit(E.RESUME, found, operator)
    ctl.sync_storage_alarm()  # a log-unavailable alarm from before the restart ends here
    for a in ctl.alarms.active():
        if a.silenced_until_s is not None:
            ctl._arm_silence(a.id, a.silenced_until_s)
    nb = ctl.next_bag
    if nb is not None:
        ctl._arm_hang_by(nb)
    state = ctl.state
    if st is not None and state in (State.INFUSING, State.BAG_CHANGE) and not st.running:
        pa, when = _what_stopped(ctl, st, last_end)
        ctl._handle_pump_alarm(pa, gap_from_s=when)
    else:
        ctl._project()
    if ctl.s.plan is not None and ctl.next_bag is None and ctl.state is State.ALARM:
        ctl._request_bag(stat=True, why="resume: the bag ran out while the controller was down")
    return found


def _what_stopped(
    ctl: Controller, st: PumpStatus, last_end_s: float | None
) -> tuple[PumpAlarm, float | None]:
    """Why and since when the pump found stopped at a resume has not been delivering.

    The bag's end (VTBI complete) is the root cause even when the pump ran the line dry
    (air in line) afterwards. The time is the pump's own record where it keeps one (the
    simulated pump's journal, ``alarm_times``), else the projected end for a bag end,
    else unknown (the gap then starts at the resume)."""
    if PumpAlarm.VTBI_COMPLETE in st.alarms:
        pa = PumpAlarm.VTBI_COMPLETE
    else:
        stopping = sorted(a.value for a in st.alarms if a in FLOW_STOPPING_ALARMS)
        pa = PumpAlarm(stopping[0]) if stopping else next(iter(st.alarms), PumpAlarm.PUMP_FAILURE)
    seen: dict[PumpAlarm, float] = getattr(ctl.driver, "alarm_times", {})
    when = seen.get(pa)
    if when is None and pa is PumpAlarm.VTBI_COMPLETE:
        when = last_end_s
    return pa, when


def _replay_observations(ctl: Controller, events: list[Event]) -> None:
    """Feed the lead planner the staff times the log shows."""
    requested: dict[int, tuple[float, bool]] = {}
    prompts: dict[int, float] = {}
    for ev in events:
        d = ev.detail
        if ev.event == E.PHARMACY_REQUEST:
            requested[int(d["bag"])] = (ev.t_s, bool(d.get("stat")))
        elif ev.event == E.BAG_AT_BEDSIDE and int(d["bag"]) in requested:
            t0, stat = requested[int(d["bag"])]
            if not stat:
                ctl.planner.observe(Stage.PHARMACY_REQUEST, ev.t_s - t0)
        elif ev.event == E.ALARM and d.get("kind") == AlarmKind.PREPARE_BAG_CHANGE:
            prompts[int(d["id"])] = ev.t_s
        elif ev.event == E.ALARM_ACKNOWLEDGED and int(d["id"]) in prompts:
            ctl.planner.observe(Stage.PREPARE, ev.t_s - prompts[int(d["id"])])
