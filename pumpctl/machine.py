"""The pump state machine (on ``transitions``): idle, priming, infusing, bag_change, alarm.

Guards enforce the protocol. Each guard asks the controller a question and gets back
``None`` (allowed) or the reason it is not; a refused request never raises: the
machine keeps its state and ``refusal`` says why.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol, cast

from transitions import EventData, Machine, MachineError


class State(enum.Enum):
    """States of one pump channel."""

    IDLE = "idle"
    PRIMING = "priming"
    INFUSING = "infusing"
    BAG_CHANGE = "bag_change"
    ALARM = "alarm"


class Facts(Protocol):
    """What the guards need to know; the controller answers. ``None`` means allowed."""

    def why_not_program(self) -> str | None: ...
    def why_not_prime(self) -> str | None: ...
    def why_not_start(self) -> str | None: ...
    def why_not_bag_change(self) -> str | None: ...
    def why_not_hang(self) -> str | None: ...
    def why_not_resume(self) -> str | None: ...


_FLOWING = [State.PRIMING, State.INFUSING, State.BAG_CHANGE]

#: (trigger, sources, dest, guard name on Facts or None)
TRANSITIONS: list[tuple[str, list[State] | State, State, str | None]] = [
    ("prime", State.IDLE, State.PRIMING, "why_not_prime"),
    ("primed", State.PRIMING, State.IDLE, None),
    ("start", State.IDLE, State.INFUSING, "why_not_start"),
    ("begin_bag_change", State.INFUSING, State.BAG_CHANGE, "why_not_bag_change"),
    ("finish_bag_change", State.BAG_CHANGE, State.INFUSING, "why_not_hang"),
    ("fault", _FLOWING, State.ALARM, None),
    ("resume", State.ALARM, State.INFUSING, "why_not_resume"),
    ("stop", [*_FLOWING, State.ALARM], State.IDLE, None),
]


def _condition(name: str) -> Callable[[EventData], bool]:
    """A transitions condition that asks the event's model's facts (once per request)."""

    def check(event: EventData) -> bool:
        return cast(PumpMachine, event.model).guard(name)

    check.__name__ = name
    return check


def _build_machine() -> Machine:
    """The structure (states, transitions, guards), built once and shared by every channel.

    No model is registered: a channel fires ``_MACHINE.events[trigger].trigger(channel)``,
    so nothing holds on to a channel after its run (a campaign makes thousands).
    """
    m = Machine(
        model=None,
        states=State,
        initial=State.IDLE,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
    )
    for trigger, source, dest, guard in TRANSITIONS:
        conditions = [_condition(guard)] if guard is not None else []
        m.add_transition(trigger, source, dest, conditions=conditions)  # type: ignore[arg-type]
    return m


_MACHINE = _build_machine()
# transitions' own state objects, by member and by value (``force`` runs once per event)
_STATE_OBJECTS: dict[State | str, Any] = {s: _MACHINE.get_state(s) for s in State}
_STATE_OBJECTS.update({s._value_: _MACHINE.get_state(s) for s in State})
#: trigger -> (its source states, in order, and its guard): ``check`` runs for every request
_RULES: dict[str, tuple[list[State], str | None]] = {
    t: (list(source) if isinstance(source, list) else [source], guard)
    for t, source, _dest, guard in TRANSITIONS
}
if len(_RULES) != len(TRANSITIONS):  # one rule per trigger: check, allowed, request agree
    raise RuntimeError("pumpctl.machine: a trigger appears twice in TRANSITIONS")


class PumpMachine:
    """The machine for one channel; ``request(trigger)`` fires it or explains why not."""

    state: State

    def __init__(self, facts: Facts, initial: State = State.IDLE) -> None:
        self.facts = facts
        self.refusal: str | None = None
        _MACHINE.set_state(initial, model=self)

    def guard(self, name: str) -> bool:
        """Ask the facts ``name``; a refusal is kept in ``refusal``."""
        reason = getattr(self.facts, name)()
        if reason is not None:
            self.refusal = reason
            return False
        return True

    def allowed(self, trigger: str) -> list[State]:
        """States from which ``trigger`` is defined."""
        rule = _RULES.get(trigger)
        return [] if rule is None else list(rule[0])

    def check(self, trigger: str) -> str | None:
        """Would ``trigger`` be accepted now? ``None`` if so, else the reason (fires nothing)."""
        rule = _RULES.get(trigger)
        if rule is None:
            return f"unknown request '{trigger}'"
        sources, guard = rule
        if self.state not in sources:
            ok_in = ", ".join(s.value for s in sources)
            return f"'{trigger}' is not allowed while {self.state.value}; allowed in: {ok_in}"
        return getattr(self.facts, guard)() if guard else None

    def request(self, trigger: str) -> str | None:
        """Fire ``trigger``; return ``None`` on success or the reason it was refused."""
        self.refusal = None
        if trigger not in _RULES:
            return f"unknown request '{trigger}'"
        if self.state not in self.allowed(trigger):
            ok_in = ", ".join(s.value for s in self.allowed(trigger))
            return f"'{trigger}' is not allowed while {self.state.value}; allowed in: {ok_in}"
        try:
            done = _MACHINE.events[trigger].trigger(self)
        except MachineError as exc:  # defensive: should be caught by the check above
            return str(exc.value)
        if not done:
            return self.refusal or f"'{trigger}' refused"
        return None

    def force(self, state: State | str) -> None:
        """Set the state (or its value) as logged: no guards, the log already passed them."""
        _MACHINE.set_state(_STATE_OBJECTS[state], model=self)


def mermaid() -> str:
    """The machine as a mermaid state diagram (no graphviz needed)."""
    lines = ["stateDiagram-v2", "    direction LR", "    [*] --> idle"]
    for trigger, source, dest, guard in TRANSITIONS:
        sources = source if isinstance(source, list) else [source]
        label = trigger + (f" [{guard.removeprefix('why_not_')} ok]" if guard else "")
        for s in sources:
            lines.append(f"    {s.value} --> {dest.value}: {label}")
    return "\n".join(lines)
