"""The nurse console: a Textual view on one controller channel, in a smart pump's style.

The console never changes delivery itself. Every key goes to a controller request
(which logs it, or logs why it was refused); the screen is redrawn from the controller
and the event log, so after a restart it shows what the log says. On the simulated pump
the console also does the physical part a nurse's hands would do (spiking and removing
bags) through the simulated world, and a simulated pharmacy compounds and delivers
requested bags.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from pumpctl import library, roster
from pumpctl.alarms import Alarm
from pumpctl.clock import Clock
from pumpctl.console.widgets import (
    AlarmBanner,
    AlarmView,
    BagPanel,
    ChannelPanel,
    ChannelView,
    EventLogView,
    HeaderBar,
    KeyBar,
    MessageLine,
    g,
    min_sec,
)
from pumpctl.controller import Controller, soft_review
from pumpctl.drivers.base import PumpDriver, PumpStatus
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import InputError, OverrideRequiredError, PumpctlError, RefusedError
from pumpctl.eventlog import Event, is_demo
from pumpctl.machine import State
from pumpctl.order import Build, Order, build, to_decimal
from pumpctl.setting import DrugSetting, short_version
from pumpctl.sim.scenario import DEFAULT_HANG_LEAD_S, Dist
from pumpctl.sim.staff import Nurse, Pharmacy, World

HISTORY_EVENTS = 300  # events loaded into the log view at start


class ConsoleSession(Protocol):
    """What the console needs: a clock, a controller and its pump driver."""

    @property
    def clock(self) -> Clock: ...
    @property
    def controller(self) -> Controller: ...
    @property
    def driver(self) -> PumpDriver: ...


# --------------------------------------------------------------------------- simulated staff
class _Gate:
    """An on/off switch shared by the proxies of one auto-nurse shift."""

    def __init__(self) -> None:
        self.on = True


class _Gated:
    """Forwards everything to ``target``; while the gate is off, ``actions`` do nothing."""

    def __init__(self, target: object, gate: _Gate, actions: frozenset[str]) -> None:
        self._target, self._gate, self._actions = target, gate, actions

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._actions:
            return value

        def gated(*args: Any, **kwargs: Any) -> Any:
            return value(*args, **kwargs) if self._gate.on else "auto nurse is off"

        return gated


_NURSE_ACTIONS = frozenset(
    {
        "prime",
        "primed",
        "start",
        "begin_bag_change",
        "hang_bag",
        "acknowledge",
        "silence",
        "resume",
        "stop",
        "replace_next_bag",
        "bag_delivered",
        "bag_compounded",
    }
)


class AutoNurse:
    """The simulated nurse of ``pumpctl.sim.staff``, switchable on and off (demo mode).

    Each time it is switched on a fresh nurse starts a shift and picks up the work in
    progress. Switching off stops every controller request of that shift, pending ones
    included; a physical step already under way (spiking a bag) is still finished, so a
    bag is never left half-changed. ``jitter_s`` is how late a timer may fire (the
    console's tick times the speed): the nurse starts each bag change that much earlier.
    """

    def __init__(
        self,
        ctl: Controller,
        driver: SimDriver,
        speed: float,
        operator: str,
        jitter_s: float = 0.0,
    ) -> None:
        self.ctl, self.driver, self.speed, self.operator = ctl, driver, speed, operator
        self.jitter_s = jitter_s
        self._gate: _Gate | None = None
        self._listener: Callable[[Event], None] | None = None

    @property
    def on(self) -> bool:
        """Is a shift in progress?"""
        return self._gate is not None and self._gate.on

    def enable(self) -> None:
        """Start a shift."""
        if self.on:
            return
        gate = _Gate()
        ctl, clock = self.ctl, self.ctl.clock
        proxy: Any = _Gated(ctl, gate, _NURSE_ACTIONS)
        nurse = Nurse(
            proxy,
            self.driver,
            World(clock, self.driver),
            random.Random(0),
            Dist("fixed", 1),
            Dist("fixed", 60),
            Dist("fixed", 2),
            DEFAULT_HANG_LEAD_S + 0.05 * self.speed + 2.0 * self.jitter_s,  # before T-10
            operator=self.operator,
        )
        idx = ctl.listeners.index(nurse.on_event)

        def listener(ev: Event) -> None:
            if gate.on:
                nurse.on_event(ev)

        ctl.listeners[idx] = listener
        self._gate, self._listener = gate, listener
        nurse.pick_up_work()

    def disable(self) -> None:
        """End the shift: nothing more is done by this nurse."""
        if self._gate is not None:
            self._gate.on = False
        if self._listener in self.ctl.listeners:
            self.ctl.listeners.remove(self._listener)  # type: ignore[arg-type]
        self._gate = self._listener = None


# --------------------------------------------------------------------------- dialogs
_DIALOG_CSS = """
ModalScreen { align: center middle; background: $background 60%; }
#dialog {
    width: 90; height: auto; max-height: 31; padding: 0 1;
    border: thick $accent; background: $surface;
}
#dialog.danger { border: thick red; }
#dialog .title { text-style: bold; background: $accent 30%; width: 100%; margin-bottom: 1; }
#dialog .body { margin-bottom: 1; }
#dialog .hint { color: $text-muted; }
#dialog .msg { color: red; text-style: bold; height: auto; }
#dialog .buttons { height: auto; margin-top: 1; align-horizontal: right; }
#dialog .buttons Button { margin-left: 2; }
#dialog Checkbox { border: none; padding: 0; height: 1; }
#fields Input { background: $boost; }
#fields { grid-size: 4; grid-columns: 22 1fr 22 1fr; grid-rows: 1; grid-gutter: 0 1;
          height: 3; }
#preview { height: auto; max-height: 14; margin-top: 1; }
#override { height: 1; margin-top: 1; display: none; }
#override.-shown { display: block; }
#override Label { width: 16; }
#override Input { background: $boost; }
#override #reason { width: 1fr; }
#override #override-op { width: 12; }
#auth { grid-size: 4; grid-columns: 14 1fr 10 1fr; grid-rows: 1; grid-gutter: 0 1; height: 1; }
#auth Input { background: $boost; }
"""


class ConfirmScreen(ModalScreen[bool]):
    """Confirm an action; every checkbox (each with its own key) must be ticked first."""

    BINDINGS = [
        Binding("y", "confirm", "confirm"),
        Binding("escape,n", "cancel", "cancel"),
    ]

    def __init__(
        self,
        title: str,
        body: str | Text,
        confirm_label: str = "Confirm (y)",
        checks: list[tuple[str, str]] | None = None,
        danger: bool = False,
    ) -> None:
        super().__init__()
        self.title_text, self.body, self.confirm_label = title, body, confirm_label
        self.checks = checks or []  # (hotkey, label)
        self.danger = danger

    def compose(self) -> ComposeResult:
        """Title, what will happen, checkboxes, buttons."""
        with Vertical(id="dialog", classes="danger" if self.danger else ""):
            yield Static(self.title_text, classes="title")
            yield Static(self.body, classes="body")
            for key, label in self.checks:
                yield Checkbox(f"({key}) {label}", id=f"check-{key}")
            if self.checks:
                yield Static(
                    "Tick every box (its key or space), then y to confirm.", classes="hint"
                )
            with Horizontal(classes="buttons"):
                yield Button(
                    self.confirm_label,
                    id="ok",
                    variant="error" if self.danger else "primary",
                    disabled=bool(self.checks),
                )
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Focus the confirm button (or the first checkbox)."""
        if self.checks:
            self.query_one(f"#check-{self.checks[0][0]}", Checkbox).focus()
        else:
            self.query_one("#ok", Button).focus()

    @property
    def all_checked(self) -> bool:
        """Is every checkbox ticked?"""
        return all(self.query_one(f"#check-{k}", Checkbox).value for k, _ in self.checks)

    def on_checkbox_changed(self, _event: Checkbox.Changed) -> None:
        """Enable confirm once every box is ticked."""
        self.query_one("#ok", Button).disabled = not self.all_checked

    def on_key(self, event: Any) -> None:
        """A checkbox's own key toggles it."""
        for key, _label in self.checks:
            if event.key == key:
                box = self.query_one(f"#check-{key}", Checkbox)
                box.value = not box.value
                event.stop()

    def action_confirm(self) -> None:
        """Confirm (only with every box ticked)."""
        if self.all_checked:
            self.dismiss(True)

    def action_cancel(self) -> None:
        """Do nothing."""
        self.dismiss(False)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """OK or cancel."""
        if event.button.id == "ok":
            self.action_confirm()
        else:
            self.action_cancel()


class _SubmitOnEnter:
    """Enter or the OK button submits, any other button cancels (the dialogs below)."""

    def submit(self) -> None:
        raise NotImplementedError

    def action_cancel(self) -> None:
        raise NotImplementedError

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        """Enter submits."""
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """OK submits; the other button cancels."""
        if event.button.id == "ok":
            self.submit()
        else:
            self.action_cancel()


class EntryScreen(_SubmitOnEnter, ModalScreen[str | None]):
    """Ask for one line (operator id, stop reason, silence minutes); checked before closing."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(
        self,
        title: str,
        body: str | Text,
        value: str = "",
        check: Callable[[str], str | None] | None = None,
        confirm_label: str = "OK (enter)",
        danger: bool = False,
        can_cancel: bool = True,
    ) -> None:
        super().__init__()
        self.title_text, self.body, self.value = title, body, value
        self.check = check or (lambda s: None)
        self.confirm_label, self.danger, self.can_cancel = confirm_label, danger, can_cancel

    def compose(self) -> ComposeResult:
        """Title, explanation, entry, message, buttons."""
        with Vertical(id="dialog", classes="danger" if self.danger else ""):
            yield Static(self.title_text, classes="title")
            yield Static(self.body, classes="body")
            yield Input(self.value, id="entry")
            yield Static("", id="msg", classes="msg")
            with Horizontal(classes="buttons"):
                yield Button(
                    self.confirm_label, id="ok", variant="error" if self.danger else "primary"
                )
                if self.can_cancel:
                    yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Focus the entry."""
        self.query_one("#entry", Input).focus()

    def submit(self) -> None:
        """Close with the value once it passes its check."""
        value = self.query_one("#entry", Input).value.strip()
        why = self.check(value)
        if why is not None:
            self.query_one("#msg", Static).update(why)
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        """Close without a value (unless cancelling is not allowed)."""
        if self.can_cancel:
            self.dismiss(None)


class OrderScreen(_SubmitOnEnter, ModalScreen[None]):
    """Program from an order, or titrate: shows the pharmacy build and its limit check.

    A soft limit asks for an override reason and an operator id; a hard limit (or no bag
    size that fits) is sent to the controller, which refuses it and logs the attempt.
    """

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, console: ConsoleApp, mode: str, prefill: dict[str, str]) -> None:
        super().__init__()
        self.console, self.mode, self.prefill = console, mode, prefill
        self.ctl = console.ctl

    def compose(self) -> ComposeResult:
        """Order fields, build preview, override fields, buttons."""
        p = self.prefill
        titrate = self.mode == "titrate"
        title = "TITRATE: new mg/day for the next bag" if titrate else "PROGRAM FROM AN ORDER"
        with Vertical(id="dialog"):
            yield Static(title, classes="title")
            with Grid(id="fields"):
                for label, key in (
                    ("Dose mg/day", "dose"),
                    ("Weight kg", "weight"),
                    ("Bag mL (50/100/250)", "bag"),
                    ("Interval h (auto/8/6)", "interval"),
                    ("Indication", "indication"),
                    ("Approving service", "service"),
                ):
                    yield Label(label)
                    yield Input(p.get(key, ""), id=key, compact=True)
            yield Static("", id="preview")
            with Horizontal(id="override"):
                yield Label("Override reason")
                yield Input(
                    "", id="reason", compact=True, placeholder="why the soft limit is exceeded"
                )
                yield Label(" Operator id")
                yield Input(self.console.operator, id="override-op", compact=True)
            yield Static("", id="msg", classes="msg")
            with Horizontal(classes="buttons"):
                yield Button(
                    "Confirm titration" if titrate else "Program", id="ok", variant="primary"
                )
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Preview what is prefilled; focus the dose."""
        self._preview()
        self.query_one("#dose", Input).focus()

    # -- reading the form ---------------------------------------------------------
    def _field(self, key: str) -> str:
        return self.query_one(f"#{key}", Input).value.strip()

    def parse(self) -> Order:
        """The order in the form; ``InputError`` with one line naming the field."""
        setting = self.ctl.setting
        if not self._field("dose"):
            raise InputError("dose mg/day is empty; allowed: a number > 0")
        if not self._field("weight"):
            raise InputError("weight kg is empty; allowed: the patient's weight")
        dose = to_decimal(self._field("dose"), "dose mg/day")
        weight = to_decimal(self._field("weight"), "weight kg")
        bag = self._field("bag")
        sizes = ", ".join(str(s) for s in setting.bag_sizes_ml)
        if bag and not bag.isdigit():
            raise InputError(f"bag mL = {bag!r} is not a whole number; allowed: {sizes}")
        iv = self._field("interval").lower()
        if iv not in ("", "auto") and not iv.isdigit():
            raise InputError(f"interval h = {iv!r} is not allowed; allowed: auto, 8 or 6")
        service = self._field("service")
        if setting.restricted_formulary and not service:
            raise InputError("approving service is empty; anakinra is restricted: name the service")
        reason = self._field("reason") or None
        op = self._field("override-op") or None
        if reason and not op:
            raise InputError("an override needs the operator id of who overrides")
        return Order(
            dose_mg_per_day=dose,
            weight_kg=weight,
            bag_ml=int(bag) if bag else None,
            interval_h=int(iv) if iv not in ("", "auto") else None,
            indication=self._field("indication"),
            approving_service=service,
            override_reason=reason,
            operator=op if reason else None,
        )

    def evaluate(self) -> tuple[Order | None, Build | None, str, str]:
        """(order, build, kind, message); kind is input, refused, needs_reason, soft or ok."""
        try:
            order = self.parse()
        except InputError as exc:
            return None, None, "input", str(exc)
        setting = self.ctl.setting
        try:
            b = build(order, setting)
        except OverrideRequiredError:
            b = build(replace(order, override_reason="-", operator="-"), setting)
            return order, b, "needs_reason", b.limit_detail
        except RefusedError as exc:
            return order, None, "refused", str(exc)
        except InputError as exc:
            return None, None, "input", str(exc)
        return order, b, b.limit, b.limit_detail

    def _preview(self) -> None:
        order, b, kind, msg = self.evaluate()
        t = Text(no_wrap=False)
        if b is not None:
            lines = b.label().splitlines()
            t.append(f"Pharmacy build — {lines[0]}\n", style="bold")
            for line in lines[1:]:
                if line.lstrip().startswith(("override", "limit")):
                    continue
                t.append(line + "\n")
            if self.mode == "titrate":
                t.append(f"  plan        {self.ctl.titration_plan(b)['why']}\n", style="bold")
        if kind == "ok":
            t.append("LIMIT CHECK OK: ", style="bold green")
            t.append(msg)
        elif kind in ("needs_reason", "soft"):
            t.append("SOFT LIMIT: ", style="bold black on yellow")
            t.append(f" {msg}. ")
            t.append(
                "Override reason and operator id required."
                if kind == "needs_reason"
                else "Override will be logged.",
                style="bold yellow",
            )
        elif kind == "refused":
            t.append("REFUSED: ", style="bold white on red")
            t.append(f" {msg}", style="bold red")
        else:
            t.append("Entry: ", style="bold red")
            t.append(msg, style="red")
        self.query_one("#preview", Static).update(t)
        self.query_one("#override").set_class(kind in ("needs_reason", "soft"), "-shown")

    # -- events -----------------------------------------------------------------
    def on_input_changed(self, _event: Input.Changed) -> None:
        """Rebuild the preview on every keystroke (no side effects)."""
        self._preview()
        self.query_one("#msg", Static).update("")

    def action_cancel(self) -> None:
        """Close; nothing is sent."""
        self.dismiss(None)

    def submit(self) -> None:
        """Send the order to the controller (which logs it, or logs why it refused)."""
        order, _b, kind, msg = self.evaluate()
        out = self.query_one("#msg", Static)
        if kind == "input" or order is None:
            out.update(msg)
            return
        if kind == "needs_reason":
            out.update("soft limit exceeded: give an override reason and your operator id")
            self.query_one("#reason", Input).focus()
            return
        op = self.console.operator
        if self.mode == "titrate":
            reason = self.console.call(self.ctl.titrate, order, op)
            done = f"titrated to {g(float(order.dose_mg_per_day))} mg/day"
        else:
            reason = self.console.call(self.ctl.program, order, op)
            done = f"programmed {g(float(order.dose_mg_per_day))} mg/day"
        if reason is None:
            self.console.say(done + ("; override logged" if kind == "soft" else ""))
            self.dismiss(None)
        else:
            out.update(
                "REFUSED and logged: change the order, or cancel (esc)"
                if kind == "refused"
                else f"REFUSED (logged): {reason}"
            )
            self.console.say(f"refused: {reason}", ok=False)


class AcceptLibraryScreen(_SubmitOnEnter, ModalScreen[None]):
    """Accept the drug library installed during the run: what changes (limits first) and
    how the order in force stands against it, then the nurse's operator id and secret
    (checked against the roster for the ``accept_setting`` act) before anything is sent.
    """

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    MAX_CHANGE_LINES = 12

    def __init__(self, console: ConsoleApp, new: DrugSetting) -> None:
        super().__init__()
        self.console, self.new = console, new
        self.ctl = console.ctl

    def body(self) -> Text:
        """What is replaced, the changes (limits first), the order in force against it."""
        ctl, new = self.ctl, self.new
        t = Text(no_wrap=False)
        t.append(
            f"'{new.name}' {short_version(new.version)} replaces "
            f"{short_version(ctl.setting.version)}. The infusion runs on; the new library "
            "applies to every later build and check. Bags already made stay as built.\n"
        )
        lines = library.changes(ctl.setting, new)
        t.append(f"Changes ({len(lines)} line(s), limits first):\n", style="bold")
        for line in lines[: self.MAX_CHANGE_LINES]:
            t.append(line + "\n")
        if len(lines) > self.MAX_CHANGE_LINES:
            t.append(f"  ... and {len(lines) - self.MAX_CHANGE_LINES} more\n")
        kind, detail = ctl.order_against(new)
        if kind == "hard":
            t.append("REFUSED: ", style="bold white on red")
            t.append(f" the order in force breaks its hard limit: {detail}", style="bold red")
        elif kind == "soft":
            t.append("SOFT LIMIT: ", style="bold black on yellow")
            t.append(f" {soft_review(kind, detail)}")
        else:
            t.append("LIMIT CHECK OK: ", style="bold green")
            t.append(f"order in force: {detail}")
        return t

    def compose(self) -> ComposeResult:
        """Title, changes, operator id and secret, message, buttons."""
        with Vertical(id="dialog"):
            yield Static(
                f"ACCEPT DRUG LIBRARY {short_version(self.new.version)} (nurse or charge nurse)",
                classes="title",
            )
            yield Static(self.body(), classes="body")
            with Grid(id="auth"):
                yield Label("Operator id")
                yield Input(self.console.operator, id="accept-op", compact=True)
                yield Label("Secret")
                yield Input("", id="secret", password=True, compact=True)
            yield Static("", id="msg", classes="msg")
            with Horizontal(classes="buttons"):
                yield Button("Accept (enter)", id="ok", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Focus the secret (the operator id is prefilled)."""
        self.query_one("#secret", Input).focus()

    def submit(self) -> None:
        """Authenticate, then accept: logged first, then the controller switches."""
        op = self.query_one("#accept-op", Input).value.strip()
        secret_input = self.query_one("#secret", Input)
        secret, secret_input.value = secret_input.value, ""
        console = self.console
        accept = getattr(console.session, "accept_setting", None)
        try:
            if accept is None:
                raise InputError("this console's session cannot accept a library")
            roster.authenticate(self.ctl.log, op, secret, "accept_setting")
            new, review = accept(op)
        except PumpctlError as exc:
            self.query_one("#msg", Static).update(str(exc))
            console.say(f"library not accepted: {exc}", ok=False)
            return
        console.check_pending()
        done = f"library {short_version(new.version)} accepted by {op}; the infusion runs on"
        console.say(done if review is None else f"{done}; {review}", ok=review is None)
        self.dismiss(None)

    def action_cancel(self) -> None:
        """Close; nothing is sent and the library stays pending."""
        self.console.say("cancelled; the library stays pending")
        self.dismiss(None)


# --------------------------------------------------------------------------- the app
_APP_CSS = """
Screen { layout: vertical; }
#header { height: 1; background: $panel; }
#header, #banner, #channel, #bags, #keys, #message { text-wrap: nowrap; text-overflow: ellipsis; }
#banner { height: 3; }
#banner.-none { background: $surface; }
#banner.-high { background: darkred; color: white; }
#banner.-high.-flash { background: red; }
#banner.-medium { background: gold; color: black; }
#banner.-low { background: $surface; color: cyan; }
#main { height: 12; }
#channel { width: 60; border: round $accent; padding: 0 1; }
#bags { width: 1fr; border: round $accent; padding: 0 1; }
#log { height: 1fr; border: round $secondary; scrollbar-size-vertical: 1; }
#message { height: 1; }
#keys { height: 2; }
#too-small { dock: top; height: auto; display: none; background: red; color: white;
             text-style: bold; padding: 0 1; }
#too-small.-shown { display: block; }
"""

#: The smallest terminal (columns, rows) the screen and its dialogs fit in uncut.
MIN_SIZE = (100, 30)


class ConsoleApp(App[None]):
    """The nurse console on one controller channel."""

    TITLE = "pumpctl console"
    CSS = _APP_CSS + _DIALOG_CSS
    BINDINGS = [
        Binding("p", "program", "program"),
        Binding("r", "prime", "prime"),
        Binding("s", "start", "start/resume"),
        Binding("d", "delivered", "bag at bedside"),
        Binding("b", "bag_change", "bag change"),
        Binding("h", "hang", "hang bag"),
        Binding("t", "titrate", "titrate"),
        Binding("a", "acknowledge", "acknowledge"),
        Binding("m", "silence", "silence"),
        Binding("e", "reorder", "re-order bag"),
        Binding("x", "stop", "stop"),
        Binding("l", "accept_library", "accept library"),
        Binding("n", "auto_nurse", "auto nurse"),
        Binding("o", "occlusion", "sim occlusion"),
        Binding("q", "quit_console", "quit"),
        Binding("space", "pause", "pause"),
    ]

    def __init__(
        self,
        session: ConsoleSession,
        *,
        operator: str | None = None,
        pump_label: str | None = None,
        speed: float | None = None,
        auto_nurse: bool = False,
        simulate_pharmacy: bool | None = None,
        demo_defaults: bool | None = None,
        tick_s: float = 0.05,
        bell: bool = True,
    ) -> None:
        super().__init__()
        self.session = session
        self.ctl: Controller = session.controller
        self.clock = session.clock
        self.driver = session.driver
        self.sim: SimDriver | None = self.driver if isinstance(self.driver, SimDriver) else None
        self.ask_operator = operator is None
        self.operator = operator or "rn1"
        self.speed = speed if speed is not None else float(getattr(self.clock, "speed", 1.0))
        kind = "SIM pump" if self.sim is not None else "pump"
        self.pump_label = pump_label or f"{self.ctl.pump_name} {kind} ×{g(self.speed)}"
        self.tick_s = tick_s
        self.bell_on = bell
        self.demo = is_demo(self.ctl.log)  # a DEMO database: the header says so
        self.demo_defaults = self.sim is not None if demo_defaults is None else demo_defaults
        self.pharmacy: Pharmacy | None = None
        if simulate_pharmacy if simulate_pharmacy is not None else self.sim is not None:
            clock = self.ctl.clock
            self.pharmacy = Pharmacy(
                self.ctl,
                clock,
                World(clock, self.driver),
                random.Random(0),
                Dist("fixed", 10),
                Dist("fixed", 15),
            )
        self.nurse: AutoNurse | None = None
        if self.sim is not None:
            jitter_s = tick_s * self.speed if hasattr(self.clock, "run_pending") else 0.0
            self.nurse = AutoNurse(self.ctl, self.sim, self.speed, "auto-nurse", jitter_s)
            if auto_nurse:
                self.nurse.enable()
        self.user_paused = False  # space pressed (the clock also pauses under a dialog)
        self._ticks = 0
        self._status_seen: PumpStatus | None = None
        self._status_t_s = 0.0
        self.view: ChannelView | None = None
        self.pending: DrugSetting | None = None  # a library waiting for a nurse (l)
        self._pending_every = max(round(2.0 / tick_s), 1)  # ticks between looks (~2 s)

    # -- layout -------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Header, alarm banner, channel and bag panels, event log, message, keys."""
        yield Static(id="too-small")
        yield HeaderBar(id="header")
        yield AlarmBanner(id="banner")
        with Horizontal(id="main"):
            yield ChannelPanel(id="channel")
            yield BagPanel(id="bags")
        yield EventLogView(id="log")
        yield MessageLine(id="message")
        yield KeyBar(id="keys")

    def on_mount(self) -> None:
        """Load the log's history, listen for new events, start the clock tick."""
        self.query_one("#channel").border_title = f"Channel A · {self.ctl.setting.name}"
        self.query_one("#bags").border_title = "Bags"
        log = self.query_one(EventLogView)
        log.border_title = "Event log (every action and refusal)"
        self._history = self.ctl.log.events()[-HISTORY_EVENTS:]
        self._unsubscribe = self.ctl.subscribe(self._on_event)
        self.call_after_refresh(self._load_history)  # once the log view has its width
        self.say(f"operator {self.operator}: keys below; the controller logs every action")
        self.check_pending()
        self.refresh_view()
        self.set_interval(self.tick_s, self._tick)
        if self.ask_operator:
            self.push_screen(
                EntryScreen(
                    "OPERATOR",
                    "Your operator id (it is logged with every action you take):",
                    self.operator,
                    check=lambda s: None if s and " " not in s else "one word, not empty",
                    can_cancel=False,
                ),
                self._set_operator,
            )

    def _load_history(self) -> None:
        log = self.query_one(EventLogView)
        pending, log.pending = log.pending, []
        for ev in self._history + pending:
            log.add(ev)
        log.ready = True

    def on_unmount(self) -> None:
        """Stop listening (the controller and the pump carry on)."""
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()

    def _set_operator(self, value: str | None) -> None:
        if value:
            self.operator = value
            self.say(f"operator {value}")
            self.refresh_view()

    # -- terminal size --------------------------------------------------------------
    def on_resize(self, event: Any) -> None:
        """Say so, in a red line on top, when the terminal is too small for the layout."""
        self.show_size(event.size.width, event.size.height)

    def show_size(self, width: int, height: int) -> None:
        """Show or hide the too-small notice for a ``width`` x ``height`` terminal."""
        try:
            notice = self.query_one("#too-small", Static)
        except NoMatches:
            return
        min_w, min_h = MIN_SIZE
        small = width < min_w or height < min_h
        notice.set_class(small, "-shown")
        self.too_small_text = (
            f"Terminal {width}x{height} is too small: the console needs at least "
            f"{min_w}x{min_h}; text is cut off until you enlarge the window."
            if small
            else ""
        )
        notice.update(self.too_small_text)

    too_small_text = ""

    # -- pause ----------------------------------------------------------------------
    @property
    def can_pause(self) -> bool:
        """Only a simulated pump's clock can be paused: a real pump runs on regardless."""
        return self.sim is not None and callable(getattr(self.clock, "pause", None))

    @property
    def clock_paused(self) -> bool:
        """True while simulated time stands still (space, or a dialog is open)."""
        return bool(getattr(self.clock, "paused", False))

    def sync_pause(self) -> None:
        """Pause the simulated clock while a dialog is open or space was pressed."""
        if not self.can_pause:
            return
        stack = self.screen_stack  # empty while the app shuts down
        want = self.user_paused or (bool(stack) and isinstance(stack[-1], ModalScreen))
        if want != self.clock_paused:
            (self.clock.pause if want else self.clock.resume)()  # type: ignore[attr-defined]

    def push_screen(self, *args: Any, **kwargs: Any) -> Any:
        """Open a screen; a dialog stops simulated time at once (not one tick later)."""
        if self.can_pause and args and isinstance(args[0], ModalScreen):
            self.clock.pause()  # type: ignore[attr-defined]
        return super().push_screen(*args, **kwargs)

    def action_pause(self) -> None:
        """space: stop or restart simulated time (simulated pump only)."""
        if not self.can_pause:
            self.say("pause: only a simulated pump's clock can stop; a real pump runs on", ok=False)
            return
        self.user_paused = not self.user_paused
        self.sync_pause()
        self.say(
            "PAUSED: simulated time stands still (space resumes)"
            if self.user_paused
            else "resumed: simulated time runs again"
        )
        self.refresh_view()

    # -- clock and redraw -----------------------------------------------------------
    def _tick(self) -> None:
        self.sync_pause()
        run_pending = getattr(self.clock, "run_pending", None)
        if callable(run_pending):
            run_pending()  # fire due timers (watchdog, pump events, pharmacy) without blocking
        self._ticks += 1
        if self._ticks % self._pending_every == 0:
            self.check_pending()
        self.refresh_view()
        v = self.view
        if (
            self.bell_on
            and v is not None
            and v.alarms
            and v.alarms[0].priority == "high"
            and v.alarms[0].acknowledged_by is None
            and v.alarms[0].silenced_left_s is None
            and self._ticks % max(round(1.0 / self.tick_s), 1) == 0
        ):
            self.bell()

    def _on_event(self, ev: Event) -> None:
        if self.ctl.last_status is not self._status_seen:
            self._status_seen, self._status_t_s = self.ctl.last_status, ev.t_s
        if self.is_mounted:  # type: ignore[truthy-function]
            log = self.query_one(EventLogView)
            if log.ready:
                log.add(ev)
            else:
                log.pending.append(ev)

    def check_pending(self) -> None:
        """Look for a library installed during the run (``pumpctl setting install`` may
        run beside the console); a session without a database has none."""
        pending_setting = getattr(self.session, "pending_setting", None)
        if pending_setting is None:
            return
        try:
            self.pending = pending_setting()
        except (PumpctlError, sqlite3.Error) as exc:
            self.pending = None
            self.say(f"the pending library cannot be read: {exc}", ok=False)

    def refresh_view(self) -> None:
        """Redraw every panel from the controller now."""
        try:
            header = self.query_one(HeaderBar)
        except NoMatches:  # shutting down: the panels are gone
            return
        self.view = v = self.build_view()
        header.render_view(v)
        half_period = max(round(0.3 / self.tick_s), 1)  # ~1.7 Hz: IEC 60601-1-8 high priority
        self.query_one(AlarmBanner).render_view(v, flash_on=(self._ticks // half_period) % 2 == 0)
        self.query_one(ChannelPanel).render_view(v)
        self.query_one(BagPanel).render_view(v)
        self.query_one(KeyBar).render_view(v.keys)

    def screen_text(self) -> str:
        """The plain text of every panel (for tests and logs of a session)."""
        parts = [w.shown for w in (self.query_one(HeaderBar), self.query_one(AlarmBanner))]
        parts += [self.query_one(ChannelPanel).shown, self.query_one(BagPanel).shown]
        parts += self.query_one(EventLogView).lines_shown[-50:]
        parts += [self.query_one(MessageLine).shown, self.query_one(KeyBar).shown]
        return "\n".join(parts)

    def _volume_now(self, st: PumpStatus | None) -> float | None:
        """The pump's volume counter now: the last read-back plus the programmed rate since."""
        if st is None:
            return None
        if st is not self._status_seen:
            self._status_seen, self._status_t_s = st, self.clock.now()
        vol = st.volume_infused_ml
        if st.running:
            vol += st.rate_ml_per_h * max(self.clock.now() - self._status_t_s, 0.0) / 3600.0
            if st.vtbi_ml is not None:
                vol = min(vol, st.vtbi_ml)
        return vol

    def build_view(self) -> ChannelView:
        """Everything the screen shows, from the controller at this instant."""
        ctl = self.ctl
        snap = ctl.snapshot()
        now = self.clock.now()
        order, b = ctl.order, ctl.build
        weight = float(order.weight_kg) if order else None
        ordered = float(order.dose_mg_per_day) if order else None
        alarms = [self._alarm_view(a, now) for a in ctl.alarms.active()]
        gap = ctl.s.open_gap
        st = ctl.last_status
        return ChannelView(
            t_s=now,
            state=snap["state"],
            drug=snap["drug"],
            setting_name=snap["setting_name"],
            setting_version=snap["setting_version"],
            pump_label=self.pump_label,
            demo=self.demo,
            operator=self.operator,
            auto_nurse=None if self.nurse is None else self.nurse.on,
            ordered_mg_per_day=ordered,
            ordered_mg_per_kg_per_h=None if not (ordered and weight) else ordered / 24 / weight,
            achieved_mg_per_day=snap["achieved_mg_per_day"],
            achieved_mg_per_kg_per_h=snap["dose_mg_per_kg_per_h"],
            weight_kg=weight,
            deviation_pct=None
            if not (ordered and snap["achieved_mg_per_day"])
            else (snap["achieved_mg_per_day"] - ordered) / ordered * 100,
            build_text=None
            if b is None
            else f"{g(float(b.mg_per_bag))} mg in {b.bag_ml} mL "
            f"{ctl.setting.raw['drug'].get('diluent', '')} · q{b.interval_h}h "
            f"({b.bags_per_day} bags/day)",
            conc_nominal_mg_per_ml=None if b is None else float(b.concentration_mg_per_ml),
            conc_real_mg_per_ml=snap["concentration_mg_per_ml"]
            if snap["concentration_mg_per_ml"] is not None
            else (None if b is None else float(b.real_concentration_mg_per_ml)),
            rate_ml_per_h=snap["rate_ml_per_h"],
            run_state=snap["run_state"],
            vtbi_ml=snap["vtbi_ml"],
            volume_infused_ml=self._volume_now(st),
            min_to_bag_end=snap["min_to_bag_end"],
            interrupted_s=snap["interrupted_s"],
            gap_open=None if gap is None else gap.cause,
            link_ok=snap["link_ok"],
            line_primed=ctl.line_primed,
            bag=snap["bag"],
            next_bag=snap["next_bag"],
            next_bag_expired=ctl.bag_expired() if ctl.next_bag is not None else None,
            beyond_use_h=ctl.setting.beyond_use_h,
            light_protection=ctl.setting.light_protection,
            alarms=alarms,
            keys=self._keys(),
            paused=self.clock_paused,
            pending_version=None if self.pending is None else self.pending.version,
        )

    @staticmethod
    def _alarm_view(a: Alarm, now_s: float) -> AlarmView:
        silenced = a.silenced_until_s
        return AlarmView(
            id=a.id,
            kind=a.kind,
            priority=a.priority.value,
            flow_stopping=a.spec.flow_stopping,
            text=a.spec.text + (f" ({a.detail})" if a.detail else ""),
            raised_s=a.raised_s,
            acknowledged_by=a.acknowledged_by if a.acknowledged_s is not None else None,
            silenced_left_s=None if silenced is None or silenced <= now_s else silenced - now_s,
        )

    def _keys(self) -> list[tuple[str, str, bool]]:
        ctl, st = self.ctl, self.ctl.state
        nb = ctl.next_bag
        active = ctl.alarms.active()
        idle_new = st is State.IDLE and not ctl.bags
        start_label = "resume" if st is State.ALARM else "start"
        start_ok = ctl.why_not("resume" if st is State.ALARM else "start") is None
        keys = [
            ("p", "program", idle_new),
            (
                "r",
                "line primed" if st is State.PRIMING else "prime",
                st is State.PRIMING
                or (
                    idle_new
                    and ctl.build is not None
                    and not ctl.line_primed
                    and nb is not None
                    and nb.delivered_s is not None
                ),
            ),
            ("s", start_label, start_ok),
            (
                "d",
                "bag arrived",
                nb is not None and nb.requested_s is not None and nb.delivered_s is None,
            ),
            ("b", "bag change", ctl.why_not("begin_bag_change") is None),
            ("h", "hang", self._hang_state_ok()),
            ("t", "titrate", ctl.build is not None),
            ("a", "ack", any(a.acknowledged_s is None for a in active)),
            ("m", "silence", bool(active)),
            (
                "e",
                "re-order",
                nb is not None and nb.requested_s is not None and nb.hung_s is None,
            ),
            ("x", "stop", ctl.why_not("stop") is None),
        ]
        if self.nurse is not None:
            keys.append(("n", "auto nurse " + ("ON" if self.nurse.on else "off"), True))
            keys.append(("o", "occlude", True))
        if self.can_pause:
            keys.append(("space", "resume time" if self.user_paused else "pause time", True))
        keys.append(("q", "quit", True))
        return keys

    def _hang_state_ok(self) -> bool:
        ctl = self.ctl
        nb = ctl.next_bag
        if nb is None or nb.delivered_s is None:
            return False
        if ctl.state is State.BAG_CHANGE:
            return True
        if ctl.state is State.ALARM and ctl.alarms.find_active("bag_empty") is not None:
            return all(
                a.acknowledged_s is not None for a in ctl.alarms.active() if a.spec.flow_stopping
            )
        return False

    # -- helpers --------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Console keys act only on the channel screen, never under an open dialog."""
        return not (action in self._console_actions and isinstance(self.screen, ModalScreen))

    _console_actions = frozenset(b.action for b in BINDINGS)  # type: ignore[union-attr]

    def say(self, text: str, ok: bool = True) -> None:
        """Show the result of the last action."""
        if self.is_mounted:  # type: ignore[truthy-function]
            self.query_one(MessageLine).say(text, ok)

    def call(self, fn: Callable[..., str | None], *args: Any) -> str | None:
        """Call a controller request; its refusal (or an error) comes back as one line."""
        try:
            return fn(*args)
        except PumpctlError as exc:
            return str(exc)

    def done(self, what: str, reason: str | None) -> bool:
        """Report a request's outcome on the message line and redraw."""
        if reason is None:
            self.say(what)
        else:
            self.say(f"refused: {reason}", ok=False)
        self.refresh_view()
        return reason is None

    def confirm(
        self,
        title: str,
        body: str | Text,
        then: Callable[[], object],
        *,
        checks: list[tuple[str, str]] | None = None,
        label: str = "Confirm (y)",
        danger: bool = False,
    ) -> None:
        """Ask first; run ``then`` only when confirmed."""

        def after(ok: bool | None) -> None:
            if ok:
                then()
            else:
                self.say("cancelled; nothing was sent")

        self.push_screen(ConfirmScreen(title, body, label, checks, danger), after)

    def _connect_next_bag(self) -> None:
        nb = self.ctl.next_bag
        if self.sim is not None and nb is not None:
            self.sim.world("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, f"bag {nb.n}")

    def _order_prefill(self) -> dict[str, str]:
        o = self.ctl.order
        setting = self.ctl.setting
        if o is not None:
            return {
                "dose": g(float(o.dose_mg_per_day)),
                "weight": g(float(o.weight_kg)),
                "bag": str(o.bag_ml or setting.default_bag_ml),
                "interval": str(o.interval_h or "auto"),
                "indication": o.indication,
                "service": o.approving_service,
            }
        out = {"bag": str(setting.default_bag_ml), "interval": "auto"}
        if self.demo_defaults:  # simulated pump only: a worked example from the protocol
            out |= {
                "dose": "300",
                "weight": "70",
                "indication": "MAS (demo)",
                "service": "rheumatology (demo)",
            }
        return out

    # -- actions --------------------------------------------------------------------
    def action_program(self) -> None:
        """p: program from an order (before the infusion starts)."""
        ctl = self.ctl
        if ctl.state is not State.IDLE or ctl.bags:
            order = ctl.order or Order(Decimal(0), Decimal(0))
            self.done("", self.call(ctl.program, order, self.operator))
            return
        self.push_screen(
            OrderScreen(self, "program", self._order_prefill()), lambda _r: self.refresh_view()
        )

    def action_titrate(self) -> None:
        """t: a new mg/day for the next bag."""
        if self.ctl.build is None:
            self.done("", self.call(self.ctl.titrate, Order(Decimal(0), Decimal(0)), self.operator))
            return
        self.push_screen(
            OrderScreen(self, "titrate", self._order_prefill()), lambda _r: self.refresh_view()
        )

    def action_prime(self) -> None:
        """r: prime from the first bag (light protection confirmed), then 'line primed'."""
        ctl, op = self.ctl, self.operator
        if ctl.state is State.PRIMING:
            self.confirm(
                "LINE PRIMED?",
                "Fluid at the end of the line and no air in it?",
                lambda: self.done("line primed: press s to start", self.call(ctl.primed, op)),
            )
            return
        nb = ctl.next_bag
        ready = (
            ctl.state is State.IDLE
            and ctl.build is not None
            and nb is not None
            and nb.delivered_s is not None
        )
        if not ready:
            self.done("", self.call(ctl.prime, op, False))
            return
        assert nb is not None

        def go() -> None:
            reason = self.call(ctl.prime, op, True)
            if reason is None:
                self._connect_next_bag()  # the nurse spikes the bag and primes the line
            self.done(f"priming from bag {nb.n}: press r when the line is primed", reason)

        self.confirm(
            f"PRIME FROM BAG {nb.n}",
            f"Spike bag {nb.n} ({g(nb.mg)} mg in {nb.bag_ml} mL) and prime the line.",
            go,
            checks=[
                ("b", "bag is in its light-protective cover"),
                ("t", "amber (light-protective) tubing is used"),
            ],
        )

    def action_start(self) -> None:
        """s: start the infusion (idle) or resume after an alarm."""
        ctl, op = self.ctl, self.operator
        if ctl.state is State.ALARM:
            if ctl.why_not("resume") is not None:
                self.done("", self.call(ctl.resume, op))
                return
            bag = ctl.current_bag
            rate = "" if bag is None else f" at {g(bag.rate_ml_per_h or 0.0)} mL/h"
            self.confirm(
                "RESUME INFUSION",
                f"The cause is fixed and the alarm acknowledged: restart the pump{rate}?",
                lambda: self.done("infusion resumed", self.call(ctl.resume, op)),
            )
            return
        if ctl.why_not("start") is not None:
            self.done("", self.call(ctl.start, op))
            return
        nb = ctl.next_bag
        assert nb is not None
        self.confirm(
            "START INFUSION",
            f"Start bag {nb.n}: {g(nb.mg)} mg in {nb.bag_ml} mL at "
            f"{g(nb.recipe.rate_ml_per_h)} mL/h, VTBI {g(nb.recipe.vtbi_ml)} mL, continuous.",
            lambda: self.done(
                f"infusion started: bag {nb.n} at {g(nb.recipe.rate_ml_per_h)} mL/h",
                self.call(ctl.start, op),
            ),
        )

    def action_delivered(self) -> None:
        """d: record the next bag's arrival at the bedside."""
        ctl, op = self.ctl, self.operator
        nb = ctl.next_bag
        if nb is not None and nb.requested_s is not None and nb.compounded_s is None:

            def both() -> None:
                reason = self.call(ctl.bag_compounded, op) or self.call(ctl.bag_delivered, op)
                self.done(f"bag {nb.n} at the bedside", reason)

            self.confirm(
                f"BAG {nb.n} ARRIVED?",
                f"Bag {nb.n} is not recorded as compounded yet. Record from its pharmacy "
                "label that it is compounded (its 60-min hang window starts now) and at "
                "the bedside?",
                both,
            )
            return
        n = nb.n if nb is not None else "?"
        self.done(f"bag {n} recorded at the bedside", self.call(ctl.bag_delivered, op))

    def action_bag_change(self) -> None:
        """b: begin a bag change (flow goes on from the drip chamber), then hang."""
        ctl, op = self.ctl, self.operator
        if ctl.why_not("begin_bag_change") is not None:
            self.done("", self.call(ctl.begin_bag_change, op))
            return
        old, nb = ctl.current_bag, ctl.next_bag
        assert nb is not None
        if ctl.reservoir_change == "running":
            how = "The pump keeps running from its drip chamber"
            model = getattr(self.driver, "model", None)
            rate = ctl.last_status.rate_ml_per_h if ctl.last_status else 0.0
            if model is not None and rate > 0:
                how += f" (about {model.buffer_ml / rate * 60:.0f} min at {g(rate)} mL/h)"
            how += ": no interruption if the new bag is hung promptly."
        else:
            how = "This pump STOPS during the change: the interruption is measured."
        old_txt = f"bag {old.n}" if old else "the old bag"

        def go() -> None:
            reason = self.call(ctl.begin_bag_change, op)
            if reason is None and self.sim is not None:
                self.sim.world("disconnect_bag")  # the nurse takes the old bag off
            if self.done(f"bag change: {old_txt} off; hang bag {nb.n} (h)", reason):
                self.action_hang()

        self.confirm(
            "BAG CHANGE",
            f"Take {old_txt} off and hang bag {nb.n} ({g(nb.mg)} mg in {nb.bag_ml} mL). {how}",
            go,
        )

    def action_hang(self) -> None:
        """h: hang the next bag (light protection on bag AND tubing confirmed) and go on."""
        ctl, op = self.ctl, self.operator
        nb = ctl.next_bag
        if not self._hang_state_ok() or nb is None:
            self.done("", self.call(ctl.hang_bag, op, False))
            return
        from_alarm = ctl.state is State.ALARM

        def go() -> None:
            if self.sim is not None and ctl.bag_expired() is None:
                if from_alarm:
                    self.sim.world("disconnect_bag")
                self._connect_next_bag()
            reason = self.call(ctl.hang_bag, op, True)
            self.done(f"bag {nb.n} hung; infusing", reason)

        rate = g(nb.recipe.rate_ml_per_h)
        self.confirm(
            f"HANG BAG {nb.n}",
            f"Bag {nb.n}: {g(nb.mg)} mg in {nb.bag_ml} mL, {rate} mL/h, "
            f"VTBI {g(nb.recipe.vtbi_ml)} mL."
            + (" The pump restarts." if from_alarm else " Flow goes on."),
            go,
            checks=[
                ("b", "bag is in its light-protective cover"),
                ("t", "amber (light-protective) tubing is used"),
            ],
        )

    def action_acknowledge(self) -> None:
        """a: acknowledge the highest-priority unacknowledged alarm."""
        for a in self.ctl.alarms.active():
            if a.acknowledged_s is None:
                reason = self.call(self.ctl.acknowledge, a.id, self.operator)
                self.done(f"acknowledged: {a.kind.replace('_', ' ')}", reason)
                return
        self.say("no alarm to acknowledge")

    def action_silence(self) -> None:
        """m: silence the highest-priority alarm that is sounding (capped by the setting)."""
        ctl, now = self.ctl, self.clock.now()
        target = next(
            (
                a
                for a in ctl.alarms.active()
                if a.silenced_until_s is None or a.silenced_until_s <= now
            ),
            None,
        )
        if target is None:
            self.say("no sounding alarm to silence")
            return
        cap = ctl.setting.watchdog_min["silence_max_min"]

        def check(s: str) -> str | None:
            try:
                v = float(s)
            except ValueError:
                return f"minutes = {s!r} is not a number; allowed: a number > 0"
            return None if v > 0 and v == v and v != float("inf") else "allowed: a number > 0"

        def after(value: str | None) -> None:
            if value is None:
                self.say("cancelled; nothing was sent")
                return
            reason = self.call(ctl.silence, target.id, float(value), self.operator)
            granted = (
                ""
                if target.silenced_until_s is None
                else f" for {min_sec(target.silenced_until_s - self.clock.now())} min"
            )
            self.done(f"silenced {target.kind.replace('_', ' ')}{granted}", reason)

        self.push_screen(
            EntryScreen(
                f"SILENCE: {target.kind.replace('_', ' ')} ({target.priority.value})",
                f"Minutes of silence. Flow-stopping and high-priority alarms: at most {g(cap)} "
                "min; the alarm sounds again after that if its cause is still there.",
                g(cap),
                check=check,
            ),
            after,
        )

    def action_reorder(self) -> None:
        """e: discard the next bag (expired, damaged) and ask pharmacy for a new one."""
        ctl = self.ctl
        why = ctl.bag_expired() or ""

        def after(value: str | None) -> None:
            if value is None:
                self.say("cancelled; nothing was sent")
                return
            reason = self.call(ctl.replace_next_bag, self.operator, value)
            self.done("bag discarded; pharmacy asked for a new one", reason)

        self.push_screen(
            EntryScreen(
                "DISCARD AND RE-ORDER THE NEXT BAG",
                "Why is the next bag discarded? (pharmacy is asked for a new one)",
                why,
                check=lambda s: None if s else "give a reason",
            ),
            after,
        )

    def action_stop(self) -> None:
        """x: stop the infusion (an interruption of a continuous order, with a reason)."""
        ctl = self.ctl
        if ctl.why_not("stop") is not None:
            self.done("", self.call(ctl.stop, self.operator, ""))
            return

        def after(value: str | None) -> None:
            if value is None:
                self.say("cancelled; nothing was sent")
                return
            self.done("infusion STOPPED", self.call(ctl.stop, self.operator, value))

        self.push_screen(
            EntryScreen(
                "STOP THE INFUSION",
                "This interrupts a continuous infusion: the gap is measured from now. Reason:",
                "",
                check=lambda s: None if s else "a reason is required to stop",
                confirm_label="STOP (enter)",
                danger=True,
            ),
            after,
        )

    def action_accept_library(self) -> None:
        """l: accept the library installed during the run (nurse id and secret asked)."""
        self.check_pending()
        if self.pending is None:
            self.say("no library is waiting to be accepted")
            self.refresh_view()
            return
        self.push_screen(AcceptLibraryScreen(self, self.pending), lambda _r: self.refresh_view())

    def action_auto_nurse(self) -> None:
        """n: switch the simulated nurse on or off (simulated pump only)."""
        if self.nurse is None:
            self.say("auto nurse: only with a simulated pump", ok=False)
            return
        if self.nurse.on:
            self.nurse.disable()
            self.say("auto nurse off: you do the bedside work")
        else:
            self.nurse.enable()
            self.say("auto nurse ON: it primes, starts, changes bags and answers alarms")
        self.refresh_view()

    def action_occlusion(self) -> None:
        """o: simulated fault: occlude the line, or free it again."""
        if self.sim is None:
            self.say("sim faults: only with a simulated pump", ok=False)
            return
        if self.sim.physics.occluded_since_s is None:
            self.sim.world("occlude")
            self.say("SIM: line occluded (the pump alarms when the pressure builds)")
        else:
            self.sim.world("release_occlusion")
            self.say("SIM: occlusion released")
        self.refresh_view()

    def action_quit_console(self) -> None:
        """q: leave the console; the pump and its program are not touched."""
        self.confirm(
            "QUIT THE CONSOLE?",
            "The pump keeps running its program; nothing is sent to it. Reopen the "
            "console on the same --db to carry on.",
            self.exit,
            label="Quit (y)",
        )


__all__ = ["AcceptLibraryScreen", "AutoNurse", "ConsoleApp", "ConsoleSession"]
