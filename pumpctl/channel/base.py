"""The core every part of a channel shares: its state, the log and how events are applied."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import fields
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, SupportsIndex

from pumpctl.alarms import AlarmBoard, AlarmKind
from pumpctl.bags import Bag
from pumpctl.clock import Clock, TimerHandle
from pumpctl.drivers.base import PumpAlarm, PumpDriver, PumpStatus
from pumpctl.drivers.relay import RelayPair
from pumpctl.errors import PumpctlError
from pumpctl.eventlog import Event, EventLog, MemoryEventLog
from pumpctl.events import _HANDLERS, ChannelState, EventKind
from pumpctl.machine import TRANSITIONS, PumpMachine, State
from pumpctl.order import Build, Order, build
from pumpctl.setting import DrugSetting, PumpModel
from pumpctl.watchdog import Lead, LeadPlanner, Watchdog

Log = EventLog | MemoryEventLog
Listener = Callable[[Event], None]
# The members as plain attributes (``EventKind.X`` costs ~0.25 us in Python 3.11).
E = SimpleNamespace(**{k.name: k for k in EventKind})

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


class Listeners(list[Listener]):
    """The controller's listeners, called in order with every event.

    A listener whose function has an ``event_kinds`` attribute is called only for those
    kinds: the simulated staff care about a handful of the kinds a run logs, and a call
    per event each is a good part of a simulation's time.
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_kind: dict[str, list[Listener]] = {}

    def for_kind(self, kind: str) -> list[Listener]:
        """The listeners of ``kind``, in order (a snapshot: one may unsubscribe meanwhile)."""
        cbs = self._by_kind.get(kind)
        if cbs is None:
            cbs = [cb for cb in self if kind in getattr(cb, "event_kinds", (kind,))]
            self._by_kind[kind] = cbs
        return cbs

    def append(self, listener: Listener) -> None:
        super().append(listener)
        self._by_kind.clear()

    def insert(self, index: SupportsIndex, listener: Listener) -> None:
        super().insert(index, listener)
        self._by_kind.clear()

    def remove(self, listener: Listener) -> None:
        super().remove(listener)
        self._by_kind.clear()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._by_kind.clear()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._by_kind.clear()

    def __iadd__(self, other: Iterable[Listener]) -> Listeners:  # type: ignore[override,misc]
        self.extend(other)
        return self

    def extend(self, listeners: Iterable[Listener]) -> None:
        super().extend(listeners)
        self._by_kind.clear()

    def pop(self, index: SupportsIndex = -1) -> Listener:
        out = super().pop(index)
        self._by_kind.clear()
        return out

    def clear(self) -> None:
        super().clear()
        self._by_kind.clear()


def order_json(order: Order) -> dict[str, Any]:
    """An order as plain JSON (decimals as numbers)."""
    out: dict[str, Any] = {}
    for f in fields(order):  # every field is flat: a number, a string or None
        v = getattr(order, f.name)
        out[f.name] = float(v) if isinstance(v, Decimal) else v
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


def _round_half_up(value: float, step: float) -> float:
    return round(math.floor(value / step + 0.5 + 1e-9) * step, 6)


class ChannelBase:
    """State, views and the one way to change state: log an event, then apply it."""

    clock: Clock
    driver: PumpDriver
    log: Log
    setting: DrugSetting
    model: PumpModel | None
    reservoir_change: str
    prime_ml: float
    stated_pct: float
    rate_step: float
    pump_name: str
    poll_s: float | None
    s: ChannelState
    machine: PumpMachine
    planner: LeadPlanner
    watchdog: Watchdog
    listeners: Listeners
    last_status: PumpStatus | None
    _light_pending: bool
    _pump_empty: bool
    _builds: dict[int, Build]
    #: every library this controller ran, by version (builds keep the one they were made
    #: under; a restart fills it from the database)
    settings_by_version: dict[str, DrugSetting]
    _timers: dict[str, TimerHandle]
    _silence_timers: dict[int, TimerHandle]
    _poll_timer: TimerHandle | None
    _relay: RelayPair | None
    _storage_timer: TimerHandle | None
    _storage_also: Any
    beyond_use_h_by_bag: dict[int, float]

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
            # The build as made: under the library it was made with, not one accepted since
            # (the pump runs the logged recipe until someone titrates).
            made_under = (self.s.build or {}).get("setting_version", self.setting.version)
            setting = self.settings_by_version.get(made_under)
            if setting is None:
                return None  # a library this controller cannot read: the log has the figures
            try:
                self._builds[plan.plan] = build(order_from_json(self.s.order), setting)
            except PumpctlError as exc:  # an overridden or confirmed build still shows
                b = getattr(exc, "build", None)
                if b is None:
                    return None
                self._builds[plan.plan] = b
        return self._builds[plan.plan]

    def _beyond_use_s(self, bag: Bag) -> float | None:
        """When a bag's drug passes its beyond-use time (None: not known, or the
        pharmacist released the bag past its hang-by time)."""
        if bag.compounded_s is None or bag.released_by is not None:
            return None
        pinned = self.beyond_use_h_by_bag  # bags made under a library since replaced
        if pinned and bag.n in pinned:
            return bag.compounded_s + pinned[bag.n] * 3600.0
        return bag.compounded_s + self.setting.beyond_use_h * 3600.0

    # ------------------------------------------------------------------ log
    def _emit(self, kind: str, detail: dict[str, Any], operator: str = "system") -> Event:
        """Log an event (committed first), then apply it, then tell the listeners."""
        t = self.clock.now()
        ev = self.log.append(t, self.pump_name, self.s.state, kind, detail, operator)
        handler = _HANDLERS.get(kind)  # ``apply(self.s, ev)``, without re-reading the event
        if handler is not None:
            handler(self.s, detail, t, operator)
        if kind == E.STATE:
            self.machine.force(self.s.state)
        listeners = self.listeners
        cbs = listeners._by_kind.get(kind)
        for cb in listeners.for_kind(kind) if cbs is None else cbs:
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
            {"from": src, "to": _DEST[trigger]._value_, "trigger": trigger, **(detail or {})},
            operator,
        )

    # -- parts other mixins provide (declared here so each part type-checks alone)
    def _raise(self, kind: AlarmKind, detail: str = "") -> None:
        raise NotImplementedError

    def _clear(self, kind: AlarmKind) -> None:
        raise NotImplementedError

    def _pump(self, operator: str, commands: list[tuple[str, float | None]]) -> str | None:
        raise NotImplementedError

    def _refresh_status(self) -> PumpStatus | None:
        raise NotImplementedError

    def _project(self) -> None:
        raise NotImplementedError

    def _gap_open(self, cause: str, start_s: float | None = None) -> None:
        raise NotImplementedError

    def _gap_close(self) -> None:
        raise NotImplementedError

    def _arm_hang_by(self, nb: Bag) -> None:
        raise NotImplementedError

    def _hang_by_s(self, bag: Bag) -> float | None:
        raise NotImplementedError

    def _arm_silence(self, alarm_id: int, until_s: float) -> None:
        raise NotImplementedError

    def _request_bag(self, *, stat: bool, why: str, lead: Lead | None = None) -> Bag:
        raise NotImplementedError

    def _bag_rate(self, bag: Bag) -> float:
        raise NotImplementedError

    def _why_not_light(self) -> str | None:
        raise NotImplementedError

    def _why_not_hang_by(self, bag: Bag, slack_s: float = 0.0) -> str | None:
        raise NotImplementedError

    def _why_not_hang_from_alarm(self, light: bool) -> str | None:
        raise NotImplementedError

    def why_not_hang(self) -> str | None:
        raise NotImplementedError

    def _take_over(self) -> bool:
        raise NotImplementedError

    def why_not_program(self) -> str | None:
        raise NotImplementedError
