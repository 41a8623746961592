"""The controller: wires the parts of a channel (bedside, pharmacy, guards, pump, alarms).

Every request returns ``None`` when done or the one-line reason it was refused; a refusal
is logged and never raises. Every state change, alarm, override and pump command is
logged (and, on SQLite, committed) before it takes effect. State changes only by
``pumpctl.events.apply`` on a logged event, so ``restore`` (a replay of the log) gives
exactly the state the live controller had.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pumpctl.alarms import AlarmKind
from pumpctl.channel.alarmdesk import AlarmDesk
from pumpctl.channel.base import E, Listeners, Log
from pumpctl.channel.bedside import Bedside
from pumpctl.channel.guards import Guards
from pumpctl.channel.pharmacy import PharmacyDesk
from pumpctl.channel.pumplink import PumpLink
from pumpctl.clock import Clock, TimerHandle
from pumpctl.drivers.base import FLOW_STOPPING_ALARMS, PumpAlarm, PumpDriver, PumpStatus
from pumpctl.drivers.relay import RelayPair
from pumpctl.eventlog import Event
from pumpctl.events import ChannelState, fold
from pumpctl.machine import PumpMachine, State
from pumpctl.order import Build, check_limits
from pumpctl.setting import DrugSetting, PumpModel, short_version
from pumpctl.watchdog import Lead, LeadPlanner, Stage, Watchdog


class Controller(Bedside, PharmacyDesk, Guards, PumpLink, AlarmDesk):
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
        self.listeners = Listeners()
        self.last_status: PumpStatus | None = None
        self._light_pending = False
        self._pump_empty = False  # the last pump refusal was "no fluid in the reservoir"
        self._builds: dict[int, Build] = {}
        self.settings_by_version: dict[str, DrugSetting] = {setting.version: setting}
        #: bag -> beyond-use hours of the library it was compounded under, for bags made
        #: before a newer library was accepted (they stay as built; a resume fills it from
        #: the log, ``pumpctl.library.earlier_libraries``)
        self.beyond_use_h_by_bag: dict[int, float] = {}
        self._timers: dict[str, TimerHandle] = {}
        self._silence_timers: dict[int, TimerHandle] = {}
        self._poll_timer: TimerHandle | None = None
        self._relay = driver if isinstance(driver, RelayPair) else None
        self._storage_timer: TimerHandle | None = None
        also = getattr(log, "on_storage_change", None)  # another listener (not a controller)
        owner = getattr(also, "__self__", None)
        self._storage_also = None if isinstance(owner, Controller) else also
        log.on_storage_change = self._on_storage_change
        if hasattr(driver, "listener"):
            driver.listener = self._on_pump_alarms
        if poll_s:
            self._poll_timer = clock.call_later(poll_s, self._poll)

    # ----------------------------------------------------------- watchdog
    def _on_stage(self, stage: str, bag_n: int, end_s: float, lead: Lead) -> None:
        """A watchdog lead time has come for the current bag."""
        cur = self.s.current_bag
        if cur is None or cur.n != bag_n or stage in self.s.fired.get(bag_n, []):
            return
        nb = self.s.next_bag
        self._emit(
            E.WATCHDOG,
            {
                "stage": stage,
                "bag": bag_n,
                "lead_min": round(lead.s / 60.0, 2),
                "why": lead.why,
                "end_s": round(end_s, 3),
                "next_bag": nb.status._value_ if nb else None,
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
        elif (
            self.s.relay_armed is not None
            and nb is not None
            and self.s.relay_armed == nb.n
            and stage in (Stage.PREPARE, Stage.ESCALATE)
        ):
            pass  # the next reservoir is loaded on the idle pump: the change is done
        elif stage == Stage.PREPARE:
            left_min = (end_s - self.clock.now()) / 60.0
            ends = "must come down (beyond-use time)" if self.s.change_by_s else "ends"
            self._raise(AlarmKind.PREPARE_BAG_CHANGE, f"bag {bag_n} {ends} in {left_min:.0f} min")
        elif stage == Stage.ESCALATE and self.machine.state is State.INFUSING:
            # The bag change has not started, whatever the reason: call the charge nurse.
            why = "no bag at the bedside" if not at_bedside else "bag change not started"
            self._raise(AlarmKind.NO_BAG_READY, f"bag {bag_n}: {why}")

    def _project(self) -> None:
        bag, st = self.s.current_bag, self.last_status
        if bag is None or st is None or not st.running or st.rate_ml_per_h <= 0:
            self.watchdog.cancel()
            return
        left = st.vtbi_left_ml if st.vtbi_left_ml is not None else (bag.vtbi_ml or 0.0)
        end = self.clock.now() + left / st.rate_ml_per_h * 3600.0
        detail: dict[str, Any] = {
            "bag": bag.n,
            "end_s": round(end, 3),
            "vtbi_left_ml": round(left, 4),
            "rate_ml_per_h": st.rate_ml_per_h,
        }
        change_by = self._beyond_use_s(bag)
        if change_by is not None and end > change_by + 1e-6:
            detail["change_by_s"] = round(change_by, 3)  # the bag comes down before it ends
        else:
            change_by = None
        self._emit(E.PROJECTION, detail)
        old = self._timers.pop("change_by", None)
        if old is not None:
            old.cancel()
        if change_by is not None:
            self._raise(
                AlarmKind.BAG_BEYOND_USE,
                f"bag {bag.n}: change it by {change_by / 3600:.2f} h of the run",
            )
            if self._relay is not None:  # the controller itself can hand over: it does
                self._timers["change_by"] = self.clock.call_at(change_by, self._change_by_due)
        else:
            self._clear(AlarmKind.BAG_BEYOND_USE)  # (a later dose change sped it up again)
        # The watchdog plans the change for when the bag must come down.
        plan_end = end if change_by is None else change_by
        self.watchdog.schedule(bag.n, plan_end, self.s.fired.get(bag.n, []))
        if self.poll_s and self._relay is not None:  # a polled relay: look at the bag's end
            old = self._timers.pop("end_poll", None)
            if old is not None:
                old.cancel()
            self._timers["end_poll"] = self.clock.call_at(end + 0.05, self._poll_once)

    def _change_by_due(self) -> None:
        """Relay: the running syringe reaches its beyond-use time; the loaded idle pump
        takes over now (the old one is stopped first). Not loaded yet: look again."""
        self._timers.pop("change_by", None)
        if self.s.change_by_s is None or self.machine.state not in (
            State.INFUSING,
            State.BAG_CHANGE,
        ):
            return
        nb = self.s.next_bag
        if nb is not None and self.s.relay_armed == nb.n:
            self._refresh_status()  # what is left in the old syringe, for the waste
            if self._take_over():
                return
        self._timers["change_by"] = self.clock.call_later(60.0, self._change_by_due)

    # ------------------------------------------------------------ drug library
    def order_against(self, setting: DrugSetting) -> tuple[str, str]:
        """How the order in force stands against ``setting``'s limits, checked as a build
        checks them: ("ok" | "soft" | "hard", why). Nothing is logged."""
        order = self.order
        if order is None:
            return "ok", "no order in force"
        low_kind, low_detail = check_limits(
            order.dose_mg_per_day, order.weight_kg, setting, lower_only=True
        )
        if low_kind == "hard":
            return "hard", f"ordered {low_detail}"
        b = self.build
        achieved_mg_per_day = (
            b.achieved_mg_per_day
            if b is not None
            else Decimal(str((self.s.build or {})["achieved_mg_per_day"]))
        )
        kind, detail = check_limits(achieved_mg_per_day, order.weight_kg, setting)
        if kind == "ok" and low_kind == "soft":
            return "soft", f"ordered {low_detail}"
        return kind, detail

    def why_not_use_setting(self, setting: DrugSetting) -> str | None:
        """Why ``setting`` may not take effect now: the order in force breaks its hard
        limit (None: it may)."""
        kind, detail = self.order_against(setting)
        if kind != "hard":
            return None
        return (
            f"not accepted: the order in force breaks the hard limit of library "
            f"{short_version(setting.version)}: {detail}; the order must be changed first "
            "(the library stays pending)"
        )

    def use_setting(self, setting: DrugSetting) -> str | None:
        """Switch to ``setting`` once its acceptance is logged (``setting_accept``).

        Every later build and check uses it: titration, the hang-by of bags compounded
        from now on, the watchdog's leads. The infusion in progress is not touched: no pump
        command, no state change, and bags already compounded keep their build and their
        beyond-use time. Returns the soft-limit warning for the order in force, or None.
        """
        old = self.setting
        kind, detail = self.order_against(setting)  # (keeps the build in force as made)
        for bag in self.s.bags.values():
            if bag.compounded_s is not None:
                self.beyond_use_h_by_bag.setdefault(bag.n, old.beyond_use_h)
        planner = LeadPlanner(setting)
        for stage, seen_s in self.planner.observed.items():  # staff times carry over
            for seconds in seen_s:
                planner.observe(stage, seconds)
        self.setting = setting
        self.settings_by_version[setting.version] = setting
        self.planner = self.watchdog.planner = planner
        cur, end_s = self.s.current_bag, self.watchdog.projected_end_s
        if cur is not None and end_s is not None:  # the same end, the new leads
            self.watchdog.schedule(cur.n, end_s, self.s.fired.get(cur.n, []))
        nb = self.s.next_bag
        if nb is not None:
            self._arm_hang_by(nb)
        return soft_review(kind, detail)

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
        bag = self.s.current_bag
        st = self.last_status
        to_end = self.watchdog.seconds_to_end()
        nb = self.s.next_bag
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
            "alarms": [a.to_json() for a in self.s.alarms.active()],
            "interrupted_s": self.s.interrupted_s(self.clock.now()),
            "link_ok": self.s.link_ok,
            "line_primed": self.s.line_primed,
        }


def soft_review(kind: str, detail: str) -> str | None:
    """The line a nurse sees when the order in force breaks a soft limit of a library she
    accepts (``kind`` and ``detail`` from ``Controller.order_against``), else None."""
    if kind != "soft":
        return None
    return f"the order in force needs review by a pharmacist or prescriber: {detail}"


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
    if ctl._relay is not None:  # which pump runs, and whether the idle one is armed
        ctl._relay.resume_roles(ctl.s.relay_active, ctl.s.relay_armed is not None)
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


__all__ = ["Controller", "restore", "soft_review"]
