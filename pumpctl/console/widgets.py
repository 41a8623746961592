"""Widgets of the nurse console: alarm banner, channel screen, bag panel, key bar, log.

Each widget renders from a ``ChannelView`` (plain data taken from the controller once
per tick) and keeps the plain text it last showed in ``shown`` so tests can read the
screen without scraping pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.widgets import RichLog, Static

from pumpctl.eventlog import Event
from pumpctl.eventtext import describe, g, hm, hms, min_sec

#: Style of each IEC 60601-1-8 priority in the banner (high also flashes).
PRIORITY_STYLE = {"high": "bold white on red", "medium": "bold black on yellow", "low": "cyan"}
STATE_STYLE = {
    "idle": "bold white",
    "priming": "bold cyan",
    "infusing": "bold green",
    "bag_change": "bold cyan",
    "alarm": "bold white on red",
}


# --------------------------------------------------------------------------- format
def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number with fixed decimals and a unit, or an em dash when unknown."""
    if value is None:
        return "—"
    return f"{value:.{digits}f}{(' ' + unit) if unit else ''}"


def duration_min(minutes: int | None) -> str:
    """Whole minutes as H:MM ('6:07 h:mm'), or an em dash when unknown."""
    if minutes is None:
        return "—"
    return f"{hm(minutes * 60)} h:mm"


# --------------------------------------------------------------------------- view
@dataclass
class AlarmView:
    """One active alarm as the banner shows it."""

    id: int
    kind: str
    priority: str
    flow_stopping: bool
    text: str
    raised_s: float
    acknowledged_by: str | None
    silenced_left_s: float | None


@dataclass
class ChannelView:
    """Everything the channel screen shows, taken from the controller at one instant."""

    t_s: float
    state: str
    drug: str
    setting_name: str
    setting_version: str
    pump_label: str
    operator: str
    auto_nurse: bool | None  # None: no simulated nurse available (real pump)
    ordered_mg_per_day: float | None
    ordered_mg_per_kg_per_h: float | None
    achieved_mg_per_day: float | None
    achieved_mg_per_kg_per_h: float | None
    weight_kg: float | None
    deviation_pct: float | None
    build_text: str | None  # "100 mg in 100 mL NS, q8h"
    conc_nominal_mg_per_ml: float | None
    conc_real_mg_per_ml: float | None
    rate_ml_per_h: float | None
    run_state: str | None
    vtbi_ml: float | None
    volume_infused_ml: float | None
    min_to_bag_end: int | None
    interrupted_s: float
    gap_open: str | None
    link_ok: bool
    line_primed: bool
    bag: dict[str, Any] | None
    next_bag: dict[str, Any] | None
    next_bag_expired: str | None
    beyond_use_h: float
    light_protection: bool
    alarms: list[AlarmView] = field(default_factory=list)
    keys: list[tuple[str, str, bool]] = field(default_factory=list)
    paused: bool = False  # simulated time stands still (space, or a dialog is open)
    demo: bool = False  # a DEMO database (demo keys and roster): the header says so
    pending_version: str | None = None  # a library installed during the run, not accepted


# --------------------------------------------------------------------------- widgets
class Shown(Static):
    """A Static that remembers the plain text it shows."""

    shown: str = ""
    _last: Text | None = None

    def show(self, text: Text) -> None:
        """Display ``text`` (only if it changed) and keep its plain form."""
        if self._last is not None and text == self._last:
            return
        self._last = text
        self.shown = text.plain
        self.update(text)


class HeaderBar(Shown):
    """One line: drug, setting version, pump, operator, run time."""

    def render_view(self, v: ChannelView) -> None:
        """Redraw from ``v``."""
        t = Text(no_wrap=True, overflow="ellipsis")
        if v.demo:
            t.append(" DEMO ", style="bold white on red")
            t.append(" ")
        t.append(f" {v.drug.upper()} ", style="bold black on white")
        t.append(f" setting {v.setting_version[:19]} ", style="bold")
        if v.pending_version:
            t.append(
                f" library {v.pending_version[:19]} pending: accept with l ",
                style="bold black on yellow",
            )
            t.append(" ")
        t.append(f"│ {v.pump_label} ")
        t.append(f"│ RN {v.operator} ", style="bold")
        t.append(f"│ t {hms(v.t_s)} ")
        if v.paused:
            t.append(" ⏸ PAUSED ", style="bold black on yellow")
            t.append(" ")
        if v.auto_nurse:
            t.append("│ AUTO NURSE", style="bold magenta")
        self.show(t)


class AlarmBanner(Shown):
    """The alarm bar: coloured by the top alarm's IEC 60601-1-8 priority."""

    def render_view(self, v: ChannelView, flash_on: bool) -> None:
        """Redraw from ``v``; ``flash_on`` is the flashing phase for high priority."""
        for cls in ("-high", "-medium", "-low", "-none", "-flash"):
            self.remove_class(cls)
        if not v.alarms:
            self.add_class("-none")
            self.show(Text(" no active alarms", style="green"))
            return
        top = v.alarms[0]
        self.add_class(f"-{top.priority}")
        if top.priority == "high" and top.acknowledged_by is None and flash_on:
            self.add_class("-flash")
        text, _, detail = top.text.partition(" (")
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {top.priority.upper()} ", style="reverse bold")
        t.append(f" {text.upper()}", style="bold")
        if detail:
            t.append(f" ({detail}")
        t.append(f"  · since {hms(top.raised_s)}\n ")
        if top.acknowledged_by is None:
            t.append("NOT ACKNOWLEDGED: press a", style="bold")
        else:
            t.append(f"acknowledged by {top.acknowledged_by}")
        if top.silenced_left_s is not None:
            t.append(f" · audio silenced, {min_sec(top.silenced_left_s)} left")
        elif top.priority != "low":
            t.append(" · audio on (m silences)")
        if top.flow_stopping:
            t.append(" · FLOW STOPPED: ", style="bold")
            if top.kind == "bag_empty":
                t.append("hang the next bag (h)")
            else:
                t.append("fix the cause, then resume (s)")
        rest = v.alarms[1:]
        t.append("\n ")
        if rest:
            t.append(
                f"+{len(rest)} more: "
                + " · ".join(f"{a.priority} {a.kind.replace('_', ' ')}" for a in rest)
            )
        self.show(t)


class ChannelPanel(Shown):
    """The pump channel: state, drug, concentration, doses, rate, VTBI, volume, bag end."""

    def render_view(self, v: ChannelView) -> None:
        """Redraw from ``v``."""
        t = Text(no_wrap=True, overflow="ellipsis")

        def row(label: str, value: str | Text, extra: str = "", style: str = "") -> None:
            t.append(f"{label:<14}", style="dim")
            if isinstance(value, Text):
                t.append_text(value)
            else:
                t.append(value, style=style)
            if extra:
                t.append(f"  {extra}", style="dim")
            t.append("\n")

        pump = v.run_state or "—"
        extra = f"pump {pump} · " + ("link ok" if v.link_ok else "NO LINK TO PUMP")
        if v.state in ("idle", "priming") and v.line_primed:
            extra += " · primed"
        row("State", Text(f" {v.state.upper()} ", style=STATE_STYLE.get(v.state, "bold")), extra)
        row("Program", v.build_text or "not programmed: press p", style="bold")
        row(
            "Concentration",
            f"{fmt(v.conc_nominal_mg_per_ml, 2)} mg/mL",
            ""
            if v.conc_real_mg_per_ml is None
            else f"({fmt(v.conc_real_mg_per_ml, 3)} mg/mL real)",
            "bold",
        )
        weight = "" if v.weight_kg is None else f" at {g(v.weight_kg)} kg"
        row(
            "Dose ordered",
            f"{g(v.ordered_mg_per_day)} mg/day",
            f"{fmt(v.ordered_mg_per_kg_per_h, 3)} mg/kg/h{weight}",
            "bold",
        )
        dev = "" if v.deviation_pct is None else f" ({v.deviation_pct:+.1f} %)"
        row(
            "Dose achieved",
            f"{g(v.achieved_mg_per_day)} mg/day",
            f"{fmt(v.achieved_mg_per_kg_per_h, 3)} mg/kg/h{dev}",
            "bold",
        )
        rate = "—" if v.rate_ml_per_h is None else f"{v.rate_ml_per_h:.1f} mL/h"
        rate_style = "bold green" if v.run_state == "running" else "bold yellow"
        row("Rate", rate, "" if v.run_state in (None, "running") else f"pump {pump}", rate_style)
        row("VTBI", fmt(v.vtbi_ml, 1, "mL"), style="bold")
        row("Vol. infused", fmt(v.volume_infused_ml, 1, "mL"), "this bag", "bold")
        row("Bag ends in", duration_min(v.min_to_bag_end), "at the real rate", "bold")
        if v.gap_open:
            value = Text(
                f"{hms(v.interrupted_s)}  NOW: {v.gap_open.replace('_', ' ')}", style="bold red"
            )
        else:
            value = Text(hms(v.interrupted_s), style="bold red" if v.interrupted_s > 0 else "green")
        row("Interrupted", value, "h:mm:ss, target 0:00:00")
        t.rstrip()
        self.show(t)


_NEXT_STEPS = (
    ("requested_s", "requested"),
    ("compounded_s", "compounded"),
    ("delivered_s", "at bedside"),
    ("hung_s", "hung"),
)


class BagPanel(Shown):
    """Current bag, next bag progress, light-protection reminder (fits 36 columns)."""

    def render_view(self, v: ChannelView) -> None:
        """Redraw from ``v``."""
        t = Text(no_wrap=True, overflow="ellipsis")
        b = v.bag
        t.append("Now   ", style="dim")
        if b is None:
            t.append("no bag hanging\n\n")
        else:
            t.append(f"bag {b['n']} · {g(b['mg'])} mg/{b['bag_ml']} mL\n", style="bold")
            t.append(f"      hung {hms(b['hung_s'])} · ")
            if b["light_protected"]:
                t.append("protected ✓\n", style="green")
            else:
                t.append("NOT PROTECTED\n", style="bold red")
        nb = v.next_bag
        t.append("Next  ", style="dim")
        if nb is None:
            t.append("—\n")
        else:
            t.append(f"bag {nb['n']} · {g(nb['mg'])} mg/{nb['bag_ml']} mL", style="bold")
            if b is not None and (nb["mg"] != b["mg"] or nb["bag_ml"] != b["bag_ml"]):
                t.append(" NEW DOSE", style="bold magenta")
            t.append("\n")
            status = nb["status"]
            for i, (key, label) in enumerate(_NEXT_STEPS):
                when = nb.get(key)
                if when is not None:
                    mark, style, stamp = "✓", "green", hms(when)
                else:
                    prev_done = i > 0 and nb.get(_NEXT_STEPS[i - 1][0]) is not None
                    mark, style = ("▶", "bold yellow") if prev_done else ("·", "dim")
                    stamp = ""
                    if key == "compounded_s" and status == "requested":
                        label = "compounding…"
                t.append(f"      {mark} {label:<13}{stamp}\n", style=style)
            if nb.get("compounded_s") is not None and nb.get("hung_s") is None:
                if v.next_bag_expired:
                    t.append("      PAST HANG-BY: pharmacist replaces (e)\n", style="bold red")
                elif nb.get("hang_by_s") is not None:
                    left = nb["hang_by_s"] - v.t_s
                    t.append(f"      hang by {hms(nb['hang_by_s'])} ({hm(left)} h:mm left)\n")
            else:
                t.append("\n")
        if v.light_protection:
            t.append(" ☀ PROTECT FROM LIGHT ", style="bold black on yellow")
            t.append(" bag cover\n", style="bold yellow")
            t.append("   AND amber tubing · hand delivery", style="yellow")
        self.show(t)


class KeyBar(Shown):
    """The keys, on two lines; those that apply now are bright."""

    def render_view(self, keys: list[tuple[str, str, bool]]) -> None:
        """Redraw from (key, label, applies now)."""
        t = Text(no_wrap=True, overflow="ellipsis")
        half = (len(keys) + 1) // 2
        for i, (key, label, on) in enumerate(keys):
            if i == half:
                t.append("\n")
            t.append(f" {key} ", style="bold black on cyan" if on else "black on grey42")
            t.append(f" {label} ", style="bold" if on else "grey50")
        self.show(t)


class MessageLine(Shown):
    """The result of the last action: done, or the controller's refusal."""

    def say(self, text: str, ok: bool = True) -> None:
        """Show ``text`` (green if done, red if refused)."""
        self.show(Text(f" {text}", style="green" if ok else "bold red", no_wrap=True))


# --------------------------------------------------------------------------- event log
class EventLogView(RichLog):
    """The scrolling event log (newest at the bottom)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=1000, wrap=False, markup=False, **kwargs)
        self.lines_shown: list[str] = []
        self.ready = False  # history is loaded once the view has its size
        self.pending: list[Event] = []

    def add(self, ev: Event) -> None:
        """Append one event."""
        text, style = describe(ev)
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{hms(ev.t_s)} ", style="dim")
        line.append(f"{ev.operator[:13]:<13} ", style="dim")
        line.append(text, style=style)
        self.lines_shown.append(line.plain)
        del self.lines_shown[:-1000]
        width = self.scrollable_content_region.width
        self.write(line, width=width if width > 0 else None)
