"""Event lines and durations for people: one readable line per controller event.

Shared by ``pumpctl run`` (stdout) and the nurse console (its event log); plain Python,
no terminal library, so a command that prints events imports nothing heavy.
"""

from __future__ import annotations

import json
from typing import Any, Protocol


class EventLike(Protocol):
    """What a line needs from an event: its name, its detail and who did it."""

    @property
    def event(self) -> str: ...
    @property
    def detail(self) -> dict[str, Any]: ...
    @property
    def operator(self) -> str: ...


# --------------------------------------------------------------------------- durations
def hms(t_s: float) -> str:
    """Run time or a duration as H:MM:SS (hours may pass 24)."""
    t = max(int(t_s), 0)
    return f"{t // 3600}:{t % 3600 // 60:02d}:{t % 60:02d}"


def hm(t_s: float) -> str:
    """A long duration as H:MM (rounded down to the minute; hours may pass 24)."""
    t = max(int(t_s), 0) // 60
    return f"{t // 60}:{t % 60:02d}"


def min_sec(t_s: float) -> str:
    """A short duration as M:SS."""
    t = max(int(round(t_s)), 0)
    return f"{t // 60}:{t % 60:02d}"


def g(value: float | None) -> str:
    """A number without trailing zeros (100, 12.5, 0.1786), or an em dash when unknown."""
    if value is None:
        return "—"
    return f"{value:.4f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- events
#: Events a person rarely needs (shown dim in the console, left out of ``pumpctl run``).
ROUTINE = frozenset({"pump_command", "projection", "watchdog", "setting_install"})


def words(name: object) -> str:
    """``pump_stopped`` -> ``pump stopped``."""
    return str(name).replace("_", " ")


def _value(key: str, value: Any) -> str:
    """One detail value as a person reads it, the unit taken from the key's suffix."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, float | int):
        for suffix, unit in (
            ("_ml_per_h", " mL/h"),
            ("_ml", " mL"),
            ("_mg_per_day", " mg/day"),
            ("_mg", " mg"),
            ("_min", " min"),
            ("_kg", " kg"),
        ):
            if key.endswith(suffix):
                return f"{g(float(value))}{unit}"
        if key.endswith("_s"):
            return hms(float(value))
        return g(float(value))
    if isinstance(value, str):
        return words(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def details(detail: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """The remaining detail as ``key value, ...`` words (no Python reprs)."""
    parts = []
    for key, value in detail.items():
        if key in skip:
            continue
        if key == "light_protected":
            parts.append("light-protected" if value else "NOT light-protected")
        elif key == "bag":
            parts.append(f"bag {value}")
        else:
            name = key
            for suffix in ("_ml_per_h", "_mg_per_day", "_ml", "_mg", "_min", "_kg", "_s"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            parts.append(f"{words(name)} {_value(key, value)}")
    return ", ".join(parts)


def resume_text(found: dict[str, Any]) -> str:
    """What a restart found in the log and the pump, in one line."""
    alarms = found.get("active_alarms") or []
    text = (
        f"resumed from the log: {words(found.get('state'))}, {found.get('bags_hung')} bag(s) "
        f"hung, pump {words(found.get('pump') or 'not answering')}, "
        f"{found.get('events_read')} events read"
    )
    if found.get("next_bag"):
        text += f", next bag {words(found['next_bag'])}"
    if alarms:
        text += ", active alarms: " + ", ".join(words(a) for a in alarms)
    return text


def describe(ev: EventLike) -> tuple[str, str]:
    """A one-line summary of an event and a Rich style for it ("" when plain)."""
    d = ev.detail
    e = str(ev.event)
    style = "dim" if e in ROUTINE else ""
    if e == "program":
        b = d.get("build", {})
        o = d.get("order", {})
        text = (
            f"programmed {g(o.get('dose_mg_per_day'))} mg/day at {g(o.get('weight_kg'))} kg:"
            f" {g(b.get('mg_per_bag'))} mg in {b.get('bag_ml')} mL q{b.get('interval_h')}h,"
            f" {g(b.get('rate_ml_per_h'))} mL/h, limit {b.get('limit')}"
        )
        style = "bold"
    elif e == "titration":
        b = d.get("build", {})
        how = {"rate_now": "rate change now", "stat": "STAT bag", "next_bag": "next bag"}
        text = (
            f"titrated to {g(d.get('order', {}).get('dose_mg_per_day'))} mg/day"
            f" ({g(b.get('mg_per_bag'))} mg/bag): {how.get(str(d.get('mode')), d.get('mode'))}"
        )
        style = "bold"
    elif e == "deviation_confirmed":
        text = (
            f"DEVIATION {g(d.get('deviation_pct'))}% from the order confirmed by {ev.operator}:"
            f" {d.get('reason')} (prescriber to be told)"
        )
        style = "bold magenta"
    elif e == "rate_change":
        text = f"bag {d.get('bag')} rate {g(d.get('rate_ml_per_h'))} mL/h ({d.get('why')})"
        style = "bold"
    elif e == "bag_released":
        text = (
            f"bag {d.get('bag')} released past its hang-by time by {ev.operator}: {d.get('reason')}"
        )
        style = "yellow"
    elif e == "gap_end":
        text = f"interruption over: {words(d.get('cause'))}, {hms(float(d.get('length_s', 0)))}"
        style = "yellow"
    elif e == "override":
        text = f"SOFT-LIMIT OVERRIDE by {ev.operator}: {d.get('reason')} ({d.get('limit')})"
        style = "bold magenta"
    elif e == "refused":
        text = f"REFUSED {words(d.get('request'))}: {d.get('reason')}"
        style = "bold red"
    elif e == "state":
        tail = details(d, skip=("from", "to", "trigger"))
        text = f"{words(d.get('from'))} → {words(d.get('to'))} ({words(d.get('trigger'))})"
        text += f": {tail}" if tail else ""
        style = "bold red" if d.get("to") == "alarm" else "bold cyan"
    elif e == "alarm":
        text = f"ALARM {d.get('priority')}: {d.get('text')}" + (
            f" ({d['detail']})" if d.get("detail") else ""
        )
        style = {"high": "bold red", "medium": "bold yellow", "low": "cyan"}.get(
            str(d.get("priority")), ""
        )
    elif e == "alarm_acknowledged":
        text = f"alarm {words(d.get('kind'))} acknowledged"
    elif e == "alarm_silenced":
        text = (
            f"alarm {words(d.get('kind'))} silenced {g(d.get('granted_min'))} min"
            f" (asked {g(d.get('requested_min'))})"
        )
    elif e == "alarm_reannunciated":
        text = f"alarm {words(d.get('kind'))} sounding again (silence over)"
        style = "yellow"
    elif e == "alarm_cleared":
        text = f"alarm {words(d.get('kind'))} cleared"
        style = "green"
    elif e == "pharmacy_request":
        r = d.get("recipe", {})
        stat = " STAT" if d.get("stat") else ""
        text = (
            f"pharmacy asked for bag {d.get('bag')}{stat} "
            f"({g(r.get('mg'))} mg / {r.get('bag_ml')} mL)"
        )
    elif e == "bag_compounded":
        hb = d.get("hang_by_s")
        text = f"bag {d.get('bag')} compounded" + (f", hang by {hms(float(hb))}" if hb else "")
    elif e == "bag_at_bedside":
        text = f"bag {d.get('bag')} at the bedside"
    elif e == "bag_discarded":
        text = f"bag {d.get('bag')} discarded: {d.get('reason')}"
        style = "yellow"
    elif e == "bag_hung":
        lp = "light-protected" if d.get("light_protected") else "NOT light-protected"
        text = (
            f"bag {d.get('bag')} hung: {g(d.get('mg'))} mg / {d.get('bag_ml')} mL,"
            f" {g(d.get('rate_ml_per_h'))} mL/h, {lp}"
        )
        style = "bold green"
    elif e == "pump_command":
        cmds = ", ".join(
            words(c) if v is None else f"{words(c)} {g(v)}" for c, v in d.get("commands", [])
        )
        text = f"pump: {cmds}"
    elif e == "projection":
        text = f"bag {d.get('bag')} projected to end at {hms(float(d.get('end_s', 0)))}"
    elif e == "watchdog":
        text = (
            f"watchdog T-{g(d.get('lead_min'))} min: {words(d.get('stage'))}"
            f" (next bag {words(d.get('next_bag'))})"
        )
    elif e == "gap_start":
        text = f"INTERRUPTION started: {words(d.get('cause'))}"
        style = "bold red"
    elif e == "resume":
        text = resume_text(d)
        style = "bold"
    elif e == "setting_install":
        text = f"setting {d.get('name')} {d.get('version')} installed"
        if d.get("pending"):
            text += " (pending: a nurse accepts it at the pump)"
    elif e == "setting_accept":
        text = f"setting {d.get('name')} {d.get('version')} accepted at the pump"
        if d.get("order_review"):
            text += f"; order in force needs review: {d['order_review']}"
        style = "bold"
    else:
        tail = details(d)
        text = words(e) + (f": {tail}" if tail else "")
    return text, style
