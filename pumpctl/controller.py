"""The controller: wires clock, machine, driver, watchdog and log; the only code that fires
triggers.

Every request returns ``None`` when done or the one-line reason it was refused; a refusal
is logged and never raises. Every state change, alarm, override and pump command is
logged (and, on SQLite, committed) before it takes effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from pumpctl.alarms import FROM_PUMP, KINDS, Alarm, AlarmList
from pumpctl.clock import Clock, TimerHandle
from pumpctl.drivers.base import FLOW_STOPPING_ALARMS, PumpAlarm, PumpDriver, PumpStatus
from pumpctl.errors import CommunicationError, PumpctlError, PumpError
from pumpctl.eventlog import Event, EventLog, MemoryEventLog
from pumpctl.machine import TRANSITIONS, PumpMachine, State
from pumpctl.order import Build, Order, build
from pumpctl.setting import DrugSetting
from pumpctl.watchdog import Watchdog

Log = EventLog | MemoryEventLog
Listener = Callable[[Event], None]


@dataclass(slots=True)
class Bag:
    """One bag from pharmacy request to its end."""

    n: int
    mg: float
    bag_ml: int
    content_ml: float
    real_conc_mg_per_ml: float
    vtbi_ml: float
    rate_ml_per_h: float
    dose_mg_per_day: float
    requested_s: float | None = None
    compounded_s: float | None = None
    delivered_s: float | None = None
    hung_s: float | None = None
    ended_s: float | None = None
    light_protected: bool = False

    @property
    def status(self) -> str:
        """requested, compounded, delivered (at bedside), hung or ended."""
        for name, value in (
            ("ended", self.ended_s),
            ("hung", self.hung_s),
            ("delivered", self.delivered_s),
            ("compounded", self.compounded_s),
            ("requested", self.requested_s),
        ):
            if value is not None:
                return name
        return "planned"

    def to_json(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self) | {"status": self.status}


def bag_from_build(n: int, b: Build) -> Bag:
    """A bag record for build ``b``."""
    return Bag(
        n=n,
        mg=float(b.mg_per_bag),
        bag_ml=b.bag_ml,
        content_ml=float(b.final_volume_ml),
        real_conc_mg_per_ml=float(b.real_concentration_mg_per_ml),
        vtbi_ml=float(b.vtbi_ml),
        rate_ml_per_h=float(b.rate_ml_per_h),
        dose_mg_per_day=float(b.achieved_mg_per_day),
    )


class Controller:
    """One pump channel under protocol control."""

    def __init__(
        self,
        clock: Clock,
        driver: PumpDriver,
        log: Log,
        setting: DrugSetting,
        *,
        reservoir_change: str = "running",
        pump_name: str = "pump1",
        poll_s: float | None = None,
    ) -> None:
        self.clock = clock
        self.driver = driver
        self.log = log
        self.setting = setting
        self.reservoir_change = reservoir_change
        self.pump_name = pump_name
        self.poll_s = poll_s
        self.machine = PumpMachine(self)
        self.alarms = AlarmList()
        self.watchdog = Watchdog(clock, setting, self._on_stage)
        self.listeners: list[Listener] = []
        self.order: Order | None = None
        self.build: Build | None = None  # the program running now
        self.order_build: Build | None = None  # what pharmacy builds next (after titration)
        self.bags: list[Bag] = []
        self.next_bag: Bag | None = None
        self.line_primed = False
        self.override_logged = False
        self.link_ok = True
        self.last_status: PumpStatus | None = None
        self._light_pending = False
        self._bag_builds: dict[int, Build] = {}
        self._fault_in_bag_change = False
        self._silence_timers: dict[int, TimerHandle] = {}
        self._poll_timer: TimerHandle | None = None
        if hasattr(driver, "listener"):
            driver.listener = self._on_pump_alarms
        if poll_s:
            self._poll_timer = clock.call_later(poll_s, self._poll)

    # ------------------------------------------------------------------ log
    @property
    def state(self) -> State:
        """Current machine state."""
        return self.machine.state

    @property
    def current_bag(self) -> Bag | None:
        """The bag hanging now (hung and not ended)."""
        if self.bags and self.bags[-1].hung_s is not None and self.bags[-1].ended_s is None:
            return self.bags[-1]
        return None

    def _log(
        self, event: str, detail: dict[str, Any] | None = None, operator: str = "system"
    ) -> Event:
        ev = self.log.append(
            self.clock.now(), self.pump_name, self.machine.state.value, event, detail, operator
        )
        for cb in self.listeners:
            cb(ev)
        return ev

    def _refuse(self, request: str, reason: str, operator: str) -> str:
        self._log("refused", {"request": request, "reason": reason}, operator)
        return reason

    def _go(self, trigger: str, operator: str, detail: dict[str, Any] | None = None) -> None:
        """Log the state change, then make it (the guard was checked by the caller)."""
        src = self.machine.state.value
        dest = next(d for t, _s, d, _g in TRANSITIONS if t == trigger).value
        self._log(
            "state", {"from": src, "to": dest, "trigger": trigger, **(detail or {})}, operator
        )
        reason = self.machine.request(trigger)
        if reason is not None:  # cannot happen after check(); keep the log honest if it does
            self._log("refused", {"request": trigger, "reason": reason}, operator)

    def _pump(self, operator: str, commands: list[tuple[str, float | None]]) -> str | None:
        """Log the pump commands, then send them; return the pump's refusal if any."""
        self._log("pump_command", {"commands": [[c, v] for c, v in commands]}, operator)
        try:
            for name, value in commands:
                fn = getattr(self.driver, name)
                fn() if value is None else fn(value)
        except CommunicationError as exc:
            self._comm_lost(str(exc))
            return f"pump did not answer: {exc}"
        except PumpError as exc:
            self._log("pump_refused", {"reason": str(exc)}, operator)
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
        if self.build is None:
            return "no program: build the order first"
        if self.next_bag is None or self.next_bag.delivered_s is None:
            return "no bag at the bedside to prime from"
        return self._why_not_light() or self._why_not_fresh(self.next_bag)

    def why_not_start(self) -> str | None:
        """Starting needs an installed setting, a valid program and a primed line."""
        if (reason := self._installed()) is not None:
            return reason
        if self.build is None:
            return "no program: build the order first"
        if self.build.limit == "hard":
            return "program is above a hard limit"
        if self.build.limit == "soft" and not self.override_logged:
            return "program is above a soft limit and no override is logged"
        if not self.line_primed:
            return "line not primed"
        return None

    def why_not_bag_change(self) -> str | None:
        """A bag change needs the next bag at the bedside."""
        if self.next_bag is None or self.next_bag.delivered_s is None:
            return "the next bag is not at the bedside"
        return None

    def why_not_hang(self) -> str | None:
        """Hanging needs light protection confirmed and a bag inside its compounding window."""
        if self.next_bag is None or self.next_bag.delivered_s is None:
            return "the next bag is not at the bedside"
        return self._why_not_light() or self._why_not_fresh(self.next_bag)

    def why_not_resume(self) -> str | None:
        """Leaving alarm needs every flow-stopping alarm acknowledged and its cause gone."""
        for a in self.alarms.active():
            if a.spec.flow_stopping and a.acknowledged_s is None:
                return f"acknowledge the {a.kind} alarm first"
            if a.kind == "bag_empty":
                return "the bag is empty: hang the next bag"
        return None

    def _why_not_light(self) -> str | None:
        if self.setting.light_protection and not self._light_pending:
            return "confirm light protection on the bag AND the amber tubing"
        return None

    def _why_not_fresh(self, bag: Bag) -> str | None:
        window_s = self.setting.compounding_window_min * 60.0
        if bag.compounded_s is not None and self.clock.now() - bag.compounded_s > window_s:
            age = (self.clock.now() - bag.compounded_s) / 60.0
            return (
                f"bag {bag.n} was compounded {age:.0f} min ago; allowed: hung within "
                f"{self.setting.compounding_window_min:g} min; ask pharmacy for a fresh bag"
            )
        return None

    # ---------------------------------------------------------------- orders
    def program(self, order: Order, operator: str) -> str | None:
        """Build the order and make it the program (only before the infusion starts)."""
        if self.state is not State.IDLE or self.bags:
            return self._refuse("program", "already programmed and running; use titrate", operator)
        if (reason := self.why_not_program()) is not None:
            return self._refuse("program", reason, operator)
        try:
            b = build(order, self.setting)
        except PumpctlError as exc:
            return self._refuse("program", str(exc), operator)
        if b.limit == "soft":
            self._log(
                "override",
                {"limit": b.limit_detail, "reason": order.override_reason},
                order.operator or operator,
            )
            self.override_logged = True
        self._log("program", {"order": _order_json(order), "build": b.to_json()}, operator)
        self.order, self.build, self.order_build = order, b, b
        self.next_bag = bag_from_build(1, b)
        self._request_bag(self.next_bag)
        return None

    def titrate(self, order: Order, operator: str) -> str | None:
        """A new mg/day: the next bag is rebuilt; the current one runs on unchanged."""
        if self.build is None:
            return self._refuse("titrate", "no program yet: program the order first", operator)
        try:
            b = build(order, self.setting)
        except PumpctlError as exc:
            return self._refuse("titrate", str(exc), operator)
        if b.limit == "soft":
            self._log(
                "override",
                {"limit": b.limit_detail, "reason": order.override_reason},
                order.operator or operator,
            )
        nb = self.next_bag
        applies_to = len(self.bags) + 1
        if nb is not None and nb.compounded_s is not None:
            applies_to += 1
        self._log(
            "titration",
            {"order": _order_json(order), "build": b.to_json(), "applies_to_bag": applies_to},
            operator,
        )
        self.order, self.order_build = order, b
        if nb is not None and nb.compounded_s is None:
            rebuilt = bag_from_build(nb.n, b)
            rebuilt.requested_s = nb.requested_s
            self.next_bag = rebuilt
        return None

    # ------------------------------------------------------------- pharmacy
    def _request_bag(self, bag: Bag) -> None:
        bag.requested_s = self.clock.now()
        self._log("pharmacy_request", {"bag": bag.n, "mg": bag.mg, "bag_ml": bag.bag_ml})

    def bag_compounded(self, operator: str = "pharmacy") -> str | None:
        """Pharmacy has compounded the next bag (its compounding window starts now)."""
        nb = self.next_bag
        if nb is None or nb.requested_s is None:
            return self._refuse("bag_compounded", "no bag has been requested", operator)
        if nb.compounded_s is not None:
            return self._refuse("bag_compounded", f"bag {nb.n} is already compounded", operator)
        if self.order_build is not None:  # built from the order in force when compounded
            fresh = bag_from_build(nb.n, self.order_build)
            fresh.requested_s = nb.requested_s
            self.next_bag = nb = fresh
        self._log("bag_compounded", {"bag": nb.n, "mg": nb.mg, "bag_ml": nb.bag_ml}, operator)
        nb.compounded_s = self.clock.now()
        if self.order_build is not None:
            self._bag_builds[nb.n] = self.order_build
        return None

    def bag_delivered(self, operator: str = "pharmacy") -> str | None:
        """The next bag is at the bedside (hand-delivered, light-protected)."""
        nb = self.next_bag
        if nb is None or nb.compounded_s is None:
            return self._refuse("bag_delivered", "no compounded bag is on its way", operator)
        if nb.delivered_s is not None:
            return self._refuse("bag_delivered", f"bag {nb.n} is already at the bedside", operator)
        self._log("bag_at_bedside", {"bag": nb.n}, operator)
        nb.delivered_s = self.clock.now()
        for kind in ("next_bag_not_at_bedside", "no_bag_ready", "pharmacy_request"):
            self._clear(kind)
        return None

    def bag_expired(self) -> str | None:
        """Why the next bag may no longer be hung (compounding window passed), or None."""
        nb = self.next_bag
        return None if nb is None else self._why_not_fresh(nb)

    def replace_next_bag(self, operator: str, reason: str) -> str | None:
        """Discard the next bag (e.g. past its compounding window) and ask pharmacy again."""
        nb = self.next_bag
        if nb is None or nb.requested_s is None:
            return self._refuse("replace_next_bag", "no bag has been requested", operator)
        self._log("bag_discarded", {"bag": nb.n, "reason": reason}, operator)
        build_now = self.order_build or self.build
        assert build_now is not None
        self.next_bag = bag_from_build(nb.n, build_now)
        self._request_bag(self.next_bag)
        return None

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
        nb.light_protected = light_protected
        return None

    def primed(self, operator: str) -> str | None:
        """The nurse confirms the line is primed (fluid at the end, no air)."""
        reason = self.machine.check("primed")
        if reason is not None:
            return self._refuse("primed", reason, operator)
        self._go("primed", operator)
        self.line_primed = True
        return None

    def start(self, operator: str) -> str | None:
        """Program the pump from the build and start the continuous infusion."""
        reason = self.machine.check("start")
        if reason is not None:
            return self._refuse("start", reason, operator)
        nb, b = self.next_bag, self.build
        assert nb is not None and b is not None
        err = self._pump(
            operator,
            [
                ("set_rate", nb.rate_ml_per_h),
                ("clear_volume", None),
                ("set_vtbi", nb.vtbi_ml),
                ("start", None),
            ],
        )
        if err is not None:
            return self._refuse("start", err, operator)
        self._go("start", operator, {"bag": nb.n, "rate_ml_per_h": nb.rate_ml_per_h})
        self._hang_record(nb, operator)
        self.watchdog.gap_close(self.clock.now())
        return None

    def begin_bag_change(self, operator: str) -> str | None:
        """Start changing the bag; a running-change pump keeps pumping from its drip chamber."""
        reason = self.machine.check("begin_bag_change")
        if reason is not None:
            return self._refuse("begin_bag_change", reason, operator)
        self._go("begin_bag_change", operator, {"reservoir_change": self.reservoir_change})
        if self.reservoir_change == "stopped":
            self._gap_open("bag_change")
            err = self._pump(operator, [("stop", None)])
            if err is not None:
                self._log("pump_refused", {"reason": err}, operator)
        return None

    def hang_bag(self, operator: str, light_protected: bool) -> str | None:
        """Hang the next bag and carry on: from a bag change, or after a bag-empty alarm."""
        self._light_pending = light_protected
        from_alarm = self.state is State.ALARM
        if from_alarm:
            empty = self.alarms.find_active("bag_empty")
            if empty is None and not self._fault_in_bag_change:
                return self._refuse(
                    "hang_bag", "only after a bag-empty alarm or a bag change", operator
                )
            unacked = [
                a.kind
                for a in self.alarms.active()
                if a.spec.flow_stopping and a.acknowledged_s is None
            ]
            if unacked:
                return self._refuse(
                    "hang_bag", f"acknowledge the {unacked[0]} alarm first", operator
                )
            reason = self.why_not_hang()
        else:
            reason = self.machine.check("finish_bag_change")
        if reason is not None:
            return self._refuse("hang_bag", reason, operator)
        nb = self.next_bag
        assert nb is not None
        old = self.current_bag
        commands: list[tuple[str, float | None]] = [
            ("clear_volume", None),
            ("set_vtbi", nb.vtbi_ml),
        ]
        if old is None or abs(old.rate_ml_per_h - nb.rate_ml_per_h) > 1e-9:
            commands.insert(0, ("set_rate", nb.rate_ml_per_h))
        status = self.last_status
        if status is None or not status.running or from_alarm:
            commands.append(("start", None))
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
        if old is not None:
            old.ended_s = self.clock.now()
        self._hang_record(nb, operator)
        self.watchdog.gap_close(self.clock.now())
        return None

    def _hang_record(self, nb: Bag, operator: str) -> None:
        self._fault_in_bag_change = False
        nb.hung_s = self.clock.now()
        nb.light_protected = self._light_pending
        self._light_pending = False
        self.bags.append(nb)
        self.build = self._bag_builds.get(nb.n, self.build)
        self._log(
            "bag_hung",
            {
                "bag": nb.n,
                "mg": nb.mg,
                "bag_ml": nb.bag_ml,
                "rate_ml_per_h": nb.rate_ml_per_h,
                "light_protected": nb.light_protected,
                "compounded_min_ago": None
                if nb.compounded_s is None
                else round((nb.hung_s - nb.compounded_s) / 60.0, 2),
            },
            operator,
        )
        nxt_build = self.order_build or self.build
        assert nxt_build is not None
        self.next_bag = bag_from_build(nb.n + 1, nxt_build)
        for kind in (
            "prepare_bag_change",
            "no_bag_ready",
            "next_bag_not_at_bedside",
            "pharmacy_request",
        ):
            self._clear(kind)
        self._project()

    def stop(self, operator: str, reason: str = "") -> str | None:
        """Stop the infusion (an interruption of a continuous order; logged as such)."""
        check = self.machine.check("stop")
        if check is not None:
            return self._refuse("stop", check, operator)
        self._go("stop", operator, {"reason": reason})
        self._gap_open("stopped")
        self.watchdog.cancel()
        err = self._pump(operator, [("stop", None)])
        return err

    def resume(self, operator: str) -> str | None:
        """Restart after an alarm once it is acknowledged and its cause is gone."""
        reason = self.machine.check("resume")
        if reason is not None:
            return self._refuse("resume", reason, operator)
        bag, st = self.current_bag, self.last_status
        commands: list[tuple[str, float | None]] = []
        if bag is not None and (st is None or abs(st.rate_ml_per_h - bag.rate_ml_per_h) > 1e-9):
            commands.append(("set_rate", bag.rate_ml_per_h))  # e.g. lost after a pump reset
        if bag is not None and (st is None or st.vtbi_ml is None):
            commands.append(("set_vtbi", bag.vtbi_ml))
        commands.append(("start", None))
        err = self._pump(operator, commands)
        if err is not None:
            return self._refuse("resume", err, operator)
        for a in self.alarms.active():
            if a.spec.flow_stopping:
                self._clear(a.kind)
        self._go("resume", operator)
        self.watchdog.gap_close(self.clock.now())
        self._project()
        return None

    # ------------------------------------------------------------- alarms
    def _raise(self, kind: str, detail: str = "") -> Alarm | None:
        if self.alarms.find_active(kind) is not None:
            return None
        spec = KINDS[kind]
        bag = self.current_bag
        self._log(
            "alarm",
            {
                "kind": kind,
                "priority": spec.priority.value,
                "flow_stopping": spec.flow_stopping,
                "text": spec.text,
                "detail": detail,
                "bag": bag.n if bag else None,
            },
        )
        return self.alarms.raise_(kind, self.clock.now(), bag.n if bag else None, detail)

    def _clear(self, kind: str) -> None:
        a = self.alarms.find_active(kind)
        if a is None:
            return
        self._log("alarm_cleared", {"kind": kind, "id": a.id})
        a.cleared_s = self.clock.now()
        timer = self._silence_timers.pop(a.id, None)
        if timer is not None:
            timer.cancel()

    def _find(self, alarm: int | str) -> Alarm | None:
        return self.alarms.get(alarm) if isinstance(alarm, int) else self.alarms.find_active(alarm)

    def acknowledge(self, alarm: int | str, operator: str) -> str | None:
        """Acknowledge an alarm (by id or kind)."""
        a = self._find(alarm)
        if a is None or not a.active:
            return self._refuse("acknowledge", f"no active alarm {alarm!r}", operator)
        if a.acknowledged_s is not None:
            return None
        self._log("alarm_acknowledged", {"kind": a.kind, "id": a.id}, operator)
        a.acknowledged_s = self.clock.now()
        a.acknowledged_by = operator
        return None

    def silence(self, alarm: int | str, minutes: float, operator: str) -> str | None:
        """Silence an alarm's sound; flow-stopping alarms at most ``silence_max_min``."""
        a = self._find(alarm)
        if a is None or not a.active:
            return self._refuse("silence", f"no active alarm {alarm!r}", operator)
        if not math.isfinite(minutes) or minutes <= 0:
            return self._refuse("silence", f"silence for {minutes} min; allowed: > 0 min", operator)
        cap = self.setting.watchdog_min["silence_max_min"]
        granted = min(minutes, cap) if a.spec.flow_stopping or a.priority == "high" else minutes
        self._log(
            "alarm_silenced",
            {"kind": a.kind, "id": a.id, "requested_min": minutes, "granted_min": granted},
            operator,
        )
        a.silenced_until_s = self.clock.now() + granted * 60.0
        old = self._silence_timers.pop(a.id, None)
        if old is not None:
            old.cancel()
        self._silence_timers[a.id] = self.clock.call_at(
            a.silenced_until_s, lambda: self._unsilence(a)
        )
        return None

    def _unsilence(self, a: Alarm) -> None:
        self._silence_timers.pop(a.id, None)
        if a.active:
            a.silenced_until_s = None
            self._log("alarm_reannunciated", {"kind": a.kind, "id": a.id})

    def _on_stage(self, stage: str, bag_n: int, end_s: float) -> None:
        """A watchdog lead time has come for the current bag."""
        nb = self.next_bag
        at_bedside = nb is not None and nb.delivered_s is not None
        lead_min = self.watchdog.leads_s[stage] / 60.0
        self._log(
            "watchdog",
            {
                "stage": stage,
                "bag": bag_n,
                "lead_min": lead_min,
                "end_s": round(end_s, 3),
                "next_bag": nb.status if nb else None,
            },
        )
        if stage == "pharmacy_request":
            if nb is not None and nb.requested_s is None:
                self._raise("pharmacy_request", f"bag {nb.n}")
                self._request_bag(nb)
        elif stage in ("next_bag_not_at_bedside", "no_bag_ready"):
            if not at_bedside:
                self._raise(stage, f"bag {nb.n if nb else '?'}")
        elif stage == "prepare_bag_change":
            self._raise(stage, f"bag {bag_n} ends in {(end_s - self.clock.now()) / 60:.0f} min")

    def _project(self) -> None:
        bag, st = self.current_bag, self.last_status
        if bag is None or st is None or not st.running or st.rate_ml_per_h <= 0:
            self.watchdog.cancel()
            return
        left = st.vtbi_left_ml if st.vtbi_left_ml is not None else bag.vtbi_ml
        end = self.watchdog.project(bag.n, left, st.rate_ml_per_h)
        self._log(
            "projection", {"bag": bag.n, "end_s": round(end, 3), "vtbi_left_ml": round(left, 4)}
        )

    # ---------------------------------------------------------- pump events
    def _gap_open(self, cause: str) -> None:
        gap = self.watchdog.gap_open(self.clock.now(), cause)
        if gap is not None:
            self._log("gap_start", {"cause": cause})

    def _refresh_status(self) -> PumpStatus | None:
        try:
            st = self.driver.status()
        except CommunicationError as exc:
            self._comm_lost(str(exc))
            return None
        if not self.link_ok:
            self.link_ok = True
            self._log("comm_restored", {})
            self._clear("comm_loss")
        self.last_status = st
        return st

    def _comm_lost(self, why: str) -> None:
        if self.link_ok:
            self.link_ok = False
            self._raise("comm_loss", why)

    def _on_pump_alarms(self, raised: list[PumpAlarm]) -> None:
        """The pump reported something (pushed by the sim driver, or found by polling)."""
        st = self._refresh_status()
        for pa in raised:
            self._handle_pump_alarm(pa)
        if st is not None:
            reported = {FROM_PUMP[a] for a in st.alarms if a in FROM_PUMP}
            for kind in ("power_loss", "battery_low"):
                if kind not in reported:
                    self._clear(kind)

    def _handle_pump_alarm(self, pa: PumpAlarm) -> None:
        kind = FROM_PUMP.get(pa)
        if kind is None:
            return
        flow_stop = pa in FLOW_STOPPING_ALARMS or pa is PumpAlarm.VTBI_COMPLETE
        if flow_stop and self.state is State.IDLE:
            self._raise(kind)
            return
        if flow_stop:
            cause = "bag_empty" if pa is PumpAlarm.VTBI_COMPLETE else kind
            self._gap_open(cause)
            if self.state in (State.PRIMING, State.INFUSING, State.BAG_CHANGE):
                # A line that runs dry while the bag is off is finished by hanging the bag.
                self._fault_in_bag_change = self.state is State.BAG_CHANGE
                self._go("fault", "system", {"cause": cause})
            self.watchdog.cancel()
        self._raise(kind)

    def _poll(self) -> None:
        """Periodic read-back (real pumps, and simulated links that can fail)."""
        assert self.poll_s
        try:
            self._poll_once()
        finally:  # the next read-back counts from the end of this one
            self._poll_timer = self.clock.call_later(self.poll_s, self._poll)

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
        expect_running = self.state is State.INFUSING or (
            self.state is State.BAG_CHANGE and self.reservoir_change == "running"
        )
        if expect_running and not st.running:
            self._gap_open("pump_stopped")
            self._raise("pump_failure", f"pump reports {st.run_state.value} while infusing")
            self._go("fault", "system", {"cause": "pump_stopped"})
            self.watchdog.cancel()

    def close(self) -> None:
        """Stop polling; the pump keeps its last safe state."""
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self.watchdog.cancel()

    # ------------------------------------------------------------- display
    def snapshot(self) -> dict[str, Any]:
        """What a pump screen shows, as plain data."""
        b = self.build
        bag = self.current_bag
        st = self.last_status
        to_end = self.watchdog.seconds_to_end()
        return {
            "t_s": self.clock.now(),
            "state": self.state.value,
            "drug": self.setting.drug,
            "setting_name": self.setting.name,
            "setting_version": self.setting.version,
            "ordered_mg_per_day": float(self.order.dose_mg_per_day) if self.order else None,
            "achieved_mg_per_day": float(b.achieved_mg_per_day) if b else None,
            "dose_mg_per_kg_per_h": float(b.dose_mg_per_kg_per_h) if b else None,
            "concentration_mg_per_ml": bag.real_conc_mg_per_ml if bag else None,
            "rate_ml_per_h": st.rate_ml_per_h if st else None,
            "vtbi_ml": st.vtbi_ml if st else None,
            "volume_infused_ml": st.volume_infused_ml if st else None,
            "run_state": st.run_state.value if st else None,
            "min_to_bag_end": None if to_end is None else int(to_end // 60),
            "bag": bag.to_json() if bag else None,
            "next_bag": self.next_bag.to_json() if self.next_bag else None,
            "alarms": [a.to_json() for a in self.alarms.active()],
            "interrupted_s": self.watchdog.interrupted_s(self.clock.now()),
            "link_ok": self.link_ok,
        }


def _order_json(order: Order) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in asdict(order).items():
        out[k] = float(v) if isinstance(v, Decimal) else v
    return out


def restore(ctl: Controller, operator: str = "system") -> dict[str, Any]:
    """Rebuild a controller from its event log after a restart, then read the pump back.

    Nothing is sent to the pump unless the log and the pump disagree in a way that needs
    a person; the pump is never restarted or reprogrammed here. Returns what was found.
    """
    from pumpctl.order import Order

    events = ctl.log.events()
    state = State.IDLE
    bags: dict[int, Bag] = {}
    fired: dict[int, set[str]] = {}
    by_id: dict[int, Alarm] = {}
    for ev in events:
        d, t = ev.detail, ev.t_s
        if ev.event in ("program", "titration"):
            o = d["order"]
            order = Order(
                Decimal(str(o["dose_mg_per_day"])),
                Decimal(str(o["weight_kg"])),
                bag_ml=o.get("bag_ml"),
                interval_h=o.get("interval_h"),
                override_reason=o.get("override_reason"),
                operator=o.get("operator"),
            )
            b = build(order, ctl.setting)
            ctl.order, ctl.order_build = order, b
            if ev.event == "program":
                ctl.build = b
                ctl.next_bag = bag_from_build(1, b)
                bags[1] = ctl.next_bag
        elif ev.event == "override":
            ctl.override_logged = True
        elif ev.event == "pharmacy_request":
            n = d["bag"]
            if n not in bags:
                assert ctl.order_build is not None
                bags[n] = bag_from_build(n, ctl.order_build)
            bags[n].requested_s = t
        elif ev.event == "bag_compounded":
            n = d["bag"]
            if ctl.order_build is not None:
                fresh = bag_from_build(n, ctl.order_build)
                fresh.requested_s = bags[n].requested_s if n in bags else None
                bags[n] = fresh
                ctl._bag_builds[n] = ctl.order_build
            bags[n].compounded_s = t
        elif ev.event == "bag_at_bedside":
            bags[d["bag"]].delivered_s = t
        elif ev.event == "bag_hung":
            n = d["bag"]
            if n - 1 in bags and bags[n - 1].hung_s is not None:
                bags[n - 1].ended_s = t
            bags[n].hung_s = t
            bags[n].light_protected = bool(d.get("light_protected"))
            ctl.build = ctl._bag_builds.get(n, ctl.build)
        elif ev.event == "state":
            state = State(d["to"])
            if d.get("trigger") == "primed":
                ctl.line_primed = True
            if state is State.INFUSING:
                ctl.watchdog.gap_close(t)
        elif ev.event == "watchdog":
            fired.setdefault(d["bag"], set()).add(d["stage"])
        elif ev.event == "alarm":
            a = ctl.alarms.raise_(d["kind"], t, d.get("bag"), d.get("detail", ""))
            by_id[a.id] = a
        elif ev.event == "alarm_acknowledged":
            a2 = ctl.alarms.get(d["id"])
            if a2 is not None:
                a2.acknowledged_s, a2.acknowledged_by = t, ev.operator
        elif ev.event == "alarm_cleared":
            a3 = ctl.alarms.get(d["id"])
            if a3 is not None:
                a3.cleared_s = t
        elif ev.event == "gap_start":
            ctl.watchdog.gap_open(t, d["cause"])
    hung = [b for b in bags.values() if b.hung_s is not None]
    ctl.bags = sorted(hung, key=lambda b: b.n)
    pending = [b for b in bags.values() if b.hung_s is None]
    ctl.next_bag = (
        max(pending, key=lambda b: b.n)
        if pending
        else (bag_from_build(len(hung) + 1, ctl.order_build) if ctl.order_build else None)
    )
    ctl.machine.force(state)
    st = ctl._refresh_status()
    found = {
        "state": state.value,
        "bags_hung": len(ctl.bags),
        "next_bag": ctl.next_bag.status if ctl.next_bag else None,
        "pump": None if st is None else st.run_state.value,
        "volume_infused_ml": None if st is None else round(st.volume_infused_ml, 4),
        "active_alarms": [a.kind for a in ctl.alarms.active()],
        "events_read": len(events),
    }
    ctl._log("resume", found, operator)
    cur = ctl.current_bag
    if cur is not None:
        ctl.watchdog.bag_n = cur.n
        ctl.watchdog.fired = set(fired.get(cur.n, set()))
    if st is not None and state in (State.INFUSING, State.BAG_CHANGE) and not st.running:
        ctl._handle_pump_alarm(next(iter(st.alarms), PumpAlarm.PUMP_FAILURE))
    else:
        ctl._project()
    return found
