"""Events are the record: event kinds, the channel state, and the one ``apply``.

The controller decides, logs an event, then applies it; a restart folds the same
``apply`` over the log. There is no second copy of the rules, so a restored controller
is exactly the controller that was running (``tests/test_events.py`` checks it on random
request sequences). Reports, HL7 messages and the console are views made from events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pumpctl.alarms import Alarm, AlarmBoard, AlarmKind
from pumpctl.bags import Bag, BagStatus, Recipe
from pumpctl.eventkinds import EventKind, GapCause


class EventLike(Protocol):
    """What ``apply`` reads of an event (``pumpctl.eventlog.Event`` has it)."""

    @property
    def seq(self) -> int: ...
    @property
    def t_s(self) -> float: ...
    @property
    def event(self) -> str: ...
    @property
    def detail(self) -> dict[str, Any]: ...
    @property
    def operator(self) -> str: ...


@dataclass(slots=True)
class Gap:
    """A measured interruption of flow."""

    start_s: float
    end_s: float | None
    cause: str

    def length_s(self, now_s: float) -> float:
        """Length so far (or in all, once closed)."""
        return (self.end_s if self.end_s is not None else now_s) - self.start_s


@dataclass
class ChannelState:
    """Everything a channel knows, built only by ``apply``."""

    state: str = "idle"
    order: dict[str, Any] | None = None
    ordered_mg_per_day: float | None = None
    weight_kg: float | None = None
    build: dict[str, Any] | None = None  # the build of the order in force (JSON form)
    plan: Recipe | None = None  # the standard bag of the order in force
    plans: int = 0
    limit: str = "ok"
    override_logged: bool = False
    titration_mode: str | None = None
    line_primed: bool = False
    #: The light protection (bag and amber tubing) the nurse confirmed at the prime, for
    #: the first bag, until it is hung: logged with the ``prime``, so a restart keeps it.
    prime_light_protected: bool = False
    fault_from: str | None = None  # the state an alarm interrupted
    relay_armed: int | None = None  # bag loaded on the idle pump of a relay, waiting
    relay_hang: dict[str, Any] | None = None  # how it was loaded: rate, vtbi, light, pump
    relay_active: str | None = None  # which pump of a relay runs now (after a hand-over)
    bags: dict[int, Bag] = field(default_factory=dict)
    alarms: AlarmBoard = field(default_factory=AlarmBoard)
    gaps: list[Gap] = field(default_factory=list)
    fired: dict[int, list[str]] = field(default_factory=dict)
    link_ok: bool = True
    projected_end_s: float | None = None
    projected_bag: int | None = None
    #: When the running bag must come down though the pump would run on: its beyond-use
    #: time (a dose decrease slowed it past that), or None.
    change_by_s: float | None = None

    #: The bag hanging now, and the newest bag asked for and not yet hung or discarded:
    #: views of ``bags``, kept by the handlers that request, hang or discard a bag.
    current_bag: Bag | None = field(default=None, compare=False, repr=False)
    next_bag: Bag | None = field(default=None, compare=False, repr=False)
    #: The last requested recipe, as logged and as read (recipes are immutable; most
    #: requests repeat the one before).
    last_recipe: tuple[dict[str, Any], Recipe] | None = field(
        default=None, compare=False, repr=False
    )

    def _bags_changed(self) -> None:
        cur = nxt = None
        for b in reversed(self.bags.values()):
            if b.hung_s is None:
                if b.discarded_s is None and nxt is None:
                    nxt = b  # newer than the bag hanging now
            elif b.ended_s is None:
                cur = b
                break
            else:
                break  # every older bag has ended too
        self.current_bag, self.next_bag = cur, nxt

    @property
    def hung_bags(self) -> list[Bag]:
        """Every bag that was hung, in order."""
        return [b for b in self.bags.values() if b.hung_s is not None]

    @property
    def open_gap(self) -> Gap | None:
        """The gap in progress."""
        return self.gaps[-1] if self.gaps and self.gaps[-1].end_s is None else None

    def interrupted_s(self, now_s: float) -> float:
        """Total measured interruption so far."""
        return sum(g.length_s(now_s) for g in self.gaps)

    def next_bag_n(self) -> int:
        """Number of the next bag to request."""
        return max(self.bags, default=0) + 1


def _bag(s: ChannelState, d: dict[str, Any]) -> Bag:
    return s.bags[int(d["bag"])]


def apply(s: ChannelState, ev: EventLike) -> None:
    """Change the channel state by one event (live and when replaying a log)."""
    kind, d, t = ev.event, ev.detail, ev.t_s
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(s, d, t, ev.operator)


def fold(events: Iterable[EventLike]) -> ChannelState:
    """The channel state a log describes."""
    s = ChannelState()
    for ev in events:
        apply(s, ev)
    return s


# ------------------------------------------------------------------ handlers
def _program(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.order = d["order"]
    s.ordered_mg_per_day = float(d["order"]["dose_mg_per_day"])
    s.weight_kg = float(d["order"]["weight_kg"])
    s.build = d["build"]
    s.plan = Recipe.from_json(d["recipe"])
    s.plans = s.plan.plan
    s.limit = str(d["build"].get("limit", "ok"))
    if d.get("mode"):
        s.titration_mode = str(d["mode"])


def _override(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.override_logged = True


def _request(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    n = int(d["bag"])
    logged, last = d["recipe"], s.last_recipe
    # Equal fields read back the same, except 0.0 and -0.0 (equal, but read as themselves).
    if last is not None and last[0] == logged and 0.0 not in logged.values():
        recipe = last[1]
    else:
        recipe = Recipe.from_json(logged)
        s.last_recipe = (dict(logged), recipe)
    s.bags[n] = Bag(
        n=n,
        recipe=recipe,
        requested_s=t,
        stat=bool(d.get("stat", False)),
        needed_by_s=d.get("needed_by_s"),
    )
    s._bags_changed()


def _compounded(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    b = _bag(s, d)
    b.compounded_s = t
    b.hang_by_s = float(d["hang_by_s"])


def _delivered(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    _bag(s, d).delivered_s = t


def _relay_armed(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.relay_armed = int(d["bag"])
    s.relay_hang = dict(d)


def _hung(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.relay_armed = None
    s.relay_hang = None
    if d.get("relay_pump"):
        s.relay_active = str(d["relay_pump"])
    b = _bag(s, d)
    cur = s.current_bag
    if cur is not None and cur is not b:
        cur.ended_s = t
        cur.wasted_mg = float(d.get("previous_wasted_mg", 0.0))
    b.hung_s = t
    b.vtbi_ml = float(d["vtbi_ml"])
    b.rate_ml_per_h = float(d["rate_ml_per_h"])
    b.light_protected = bool(d.get("light_protected", False))
    s.prime_light_protected = False
    s._bags_changed()


def _discarded(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    b = _bag(s, d)
    b.discarded_s = t
    if s.relay_armed == b.n:  # the bag loaded on the idle pump is gone: nothing is armed
        s.relay_armed = None
        s.relay_hang = None
    b.wasted_mg = float(d.get("wasted_mg", b.recipe.mg))
    s._bags_changed()


def _released(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    _bag(s, d).released_by = op


def _state(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.fault_from = str(d["from"]) if d["to"] == "alarm" else None
    s.state = str(d["to"])
    if d.get("trigger") == "primed":
        s.line_primed = True
    elif d.get("trigger") == "prime":
        s.prime_light_protected = bool(d.get("light_protected", False))
    if s.state in ("idle", "alarm") or (s.state == "bag_change" and d.get("stops_flow")):
        s.projected_end_s = s.change_by_s = None


def _rate_change(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    _bag(s, d).rate_ml_per_h = float(d["rate_ml_per_h"])


def _alarm(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.alarms.add(
        Alarm(
            id=int(d["id"]),
            kind=AlarmKind(d["kind"]),
            raised_s=t,
            bag_n=d.get("bag"),
            detail=str(d.get("detail", "")),
        )
    )
    if d["kind"] == AlarmKind.COMM_LOSS:
        s.link_ok = False


def _ack(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    a = s.alarms.get(int(d["id"]))
    if a is not None:
        a.acknowledged_s, a.acknowledged_by = t, op


def _silenced(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    a = s.alarms.get(int(d["id"]))
    if a is not None:
        a.silenced_until_s = float(d["until_s"])


def _reannunciated(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    a = s.alarms.get(int(d["id"]))
    if a is not None:
        a.silenced_until_s = None


def _cleared(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    a = s.alarms.get(int(d["id"]))
    if a is not None:
        s.alarms.clear(a, t)


def _watchdog(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.fired.setdefault(int(d["bag"]), []).append(str(d["stage"]))


def _projection(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.projected_end_s = float(d["end_s"])
    s.projected_bag = int(d["bag"])
    change_by = d.get("change_by_s")
    s.change_by_s = None if change_by is None else float(change_by)


def _gap_start(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.gaps.append(Gap(float(d.get("start_s", t)), None, str(d["cause"])))


def _gap_end(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    if s.gaps and s.gaps[-1].end_s is None:
        s.gaps[-1].end_s = t


def _comm_restored(s: ChannelState, d: dict[str, Any], t: float, op: str) -> None:
    s.link_ok = True


_HANDLERS: dict[str, Any] = {
    EventKind.PROGRAM: _program,
    EventKind.TITRATION: _program,
    EventKind.OVERRIDE: _override,
    EventKind.PHARMACY_REQUEST: _request,
    EventKind.BAG_COMPOUNDED: _compounded,
    EventKind.BAG_AT_BEDSIDE: _delivered,
    EventKind.BAG_HUNG: _hung,
    EventKind.BAG_DISCARDED: _discarded,
    EventKind.BAG_RELEASED: _released,
    EventKind.RELAY_ARMED: _relay_armed,
    EventKind.STATE: _state,
    EventKind.RATE_CHANGE: _rate_change,
    EventKind.ALARM: _alarm,
    EventKind.ALARM_ACKNOWLEDGED: _ack,
    EventKind.ALARM_SILENCED: _silenced,
    EventKind.ALARM_REANNUNCIATED: _reannunciated,
    EventKind.ALARM_CLEARED: _cleared,
    EventKind.WATCHDOG: _watchdog,
    EventKind.PROJECTION: _projection,
    EventKind.GAP_START: _gap_start,
    EventKind.GAP_END: _gap_end,
    EventKind.COMM_RESTORED: _comm_restored,
}

__all__ = ["BagStatus", "ChannelState", "EventKind", "Gap", "GapCause", "apply", "fold"]
