"""Headless tests of the nurse console: the screen and the event log after each action.

The console runs on a controller whose clock is a ``SimClock``: the test moves time with
``clock.advance`` and asks the console to redraw, so a whole bag cycle takes milliseconds.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from pumpctl import cli
from pumpctl.clock import SimClock
from pumpctl.console.app import ConfirmScreen, ConsoleApp, EntryScreen, OrderScreen
from pumpctl.controller import Controller
from pumpctl.drivers.sim import SimDriver
from pumpctl.eventlog import Event, EventLog, MemoryEventLog
from pumpctl.machine import State
from pumpctl.setting import DrugSetting, PumpModel

SIZE = (100, 32)
TICK_S = 1.0  # SimClock: the tests advance time and redraw themselves


@dataclass
class Bench:
    """A controller on a simulated clock and pump, as the console sees a session."""

    clock: SimClock
    controller: Controller
    driver: SimDriver


@pytest.fixture
def bench(setting: DrugSetting, lvp: PumpModel) -> Bench:
    clock = SimClock()
    driver = SimDriver(lvp, clock)
    log = MemoryEventLog()
    log.install_setting(setting, "biomed")
    ctl = Controller(clock, driver, log, setting, reservoir_change=lvp.reservoir_change)
    return Bench(clock, ctl, driver)


def make_app(b: Bench, **kw: Any) -> ConsoleApp:
    return ConsoleApp(b, operator="rn1", tick_s=TICK_S, bell=False, **kw)


def events(b: Bench, name: str | None = None) -> list[Event]:
    return [e for e in b.controller.log.events() if name in (None, e.event)]


def svg_rows(app: ConsoleApp) -> list[str]:
    """The terminal screen as text rows, from Textual's own SVG screenshot."""
    svg = app.export_screenshot()
    rows: dict[float, list[str]] = {}
    for m in re.finditer(r'<text[^>]*\by="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(m.group(1)), []).append(html.unescape(m.group(2)))
    return ["".join(parts).replace("\xa0", " ") for _y, parts in sorted(rows.items())]


def screen(app: ConsoleApp) -> str:
    return "\n".join(svg_rows(app))


async def advance(app: ConsoleApp, pilot: Any, b: Bench, seconds: float) -> None:
    """Move simulated time and let the console redraw."""
    b.clock.advance(seconds)
    app.refresh_view()
    await pilot.pause()


async def program_and_start(app: ConsoleApp, pilot: Any, b: Bench) -> None:
    """p (demo order 300 mg/day, 70 kg), pharmacy delivers, r prime, r primed, s start."""
    await pilot.press("p")
    assert isinstance(app.screen, OrderScreen)
    await pilot.click("#ok")
    await pilot.pause()
    assert not isinstance(app.screen, OrderScreen)
    await advance(app, pilot, b, 25 * 60)  # simulated pharmacy: 10 min compound + 15 deliver
    assert b.controller.next_bag is not None and b.controller.next_bag.delivered_s == 1500.0
    await pilot.press("r")
    assert isinstance(app.screen, ConfirmScreen)
    await pilot.press("b", "t", "y")
    await pilot.pause()
    assert b.controller.state is State.PRIMING
    await pilot.press("r", "y")
    await pilot.pause()
    await pilot.press("s")
    assert isinstance(app.screen, ConfirmScreen)
    await pilot.press("y")
    await pilot.pause()
    assert b.controller.state is State.INFUSING


@pytest.mark.asyncio
async def test_bag_change_without_interruption(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        text = screen(app)
        assert "INFUSING" in text and "12.5 mL/h" in text
        assert "100 mg in 100 mL NS · q8h (3 bags/day)" in text
        assert "8:00 h:mm" in text
        assert "PROTECT FROM LIGHT" in text
        # Bag 1 ends at 8:25; pharmacy is asked at T-60 and delivers at T-35.
        await advance(app, pilot, b, 8 * 3600 - 30 * 60)
        text = screen(app)
        assert "✓ at bedside" in text and "bag 2 · 100 mg/100 mL" in text
        assert "0:30 h:mm" in text
        await pilot.press("b")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert b.controller.state is State.BAG_CHANGE
        hang = app.screen
        assert isinstance(hang, ConfirmScreen) and "HANG BAG 2" in hang.title_text
        await pilot.press("b", "y")  # tubing not confirmed yet: nothing happens
        await pilot.pause()
        assert app.screen is hang and b.controller.state is State.BAG_CHANGE
        await pilot.press("t", "y")
        await pilot.pause()
        assert b.controller.state is State.INFUSING
        await advance(app, pilot, b, 3600)  # past bag 1's old end: nothing runs dry
        text = screen(app)
        assert "bag 2 · 100 mg/100 mL" in text and "protected ✓" in text
        assert "INFUSING" in text and "no active alarms" in text
    hung = events(b, "bag_hung")
    assert [e.detail["bag"] for e in hung] == [1, 2]
    assert hung[1].operator == "rn1" and hung[1].detail["light_protected"] is True
    assert not events(b, "gap_start") and not events(b, "refused")
    assert b.controller.s.interrupted_s(b.clock.now()) == 0
    triggers = [e.detail["trigger"] for e in events(b, "state")]
    assert triggers == ["prime", "primed", "start", "begin_bag_change", "finish_bag_change"]
    assert b.driver.status().running


@pytest.mark.asyncio
async def test_soft_limit_needs_override_reason_and_operator(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        dialog = app.screen
        assert isinstance(dialog, OrderScreen)
        dialog.query_one("#dose", Input).value = "3000"
        await pilot.pause()
        text = screen(app)
        assert "SOFT LIMIT" in text and "upper soft limit" in text
        assert "1000 mg (10 syringes, 6.7 mL) in 250 mL NS" in text
        await pilot.click("#ok")  # no reason yet: nothing is sent
        await pilot.pause()
        assert app.screen is dialog and not events(b, "program")
        assert "give an override reason" in screen(app)
        assert dialog.focused is dialog.query_one("#reason", Input)
        await pilot.press(*"refractory", "space", *"MAS")
        dialog.query_one("#override-op", Input).value = "md7"
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, OrderScreen)
        text = screen(app)
        assert "3000 mg/day" in text and "1000 mg in 250 mL" in text
        assert "SOFT-LIMIT OVERRIDE by md7: refractory MAS" in text
    (ov,) = events(b, "override")
    assert ov.operator == "md7" and ov.detail["reason"] == "refractory MAS"
    assert "upper soft limit" in ov.detail["limit"]
    (prog,) = events(b, "program")
    assert prog.operator == "rn1" and prog.detail["build"]["limit"] == "soft"
    assert prog.seq > ov.seq  # the override is logged before the program it allows


@pytest.mark.asyncio
async def test_hard_limit_is_refused_and_logged(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        dialog = app.screen
        assert isinstance(dialog, OrderScreen)
        dialog.query_one("#dose", Input).value = "3000"
        dialog.query_one("#weight", Input).value = "20"
        await pilot.pause()
        assert "REFUSED" in screen(app) and "hard limit" in screen(app)
        assert not dialog.query_one("#override").has_class("-shown")  # no override offered
        await pilot.click("#ok")
        await pilot.pause()
        assert app.screen is dialog
        assert "REFUSED and logged" in screen(app)
        await pilot.press("escape")
        await pilot.pause()
        text = screen(app)
        assert "not programmed: press p" in text and "IDLE" in text
        assert "REFUSED program: refused by the hard limit" in text
    (ref,) = events(b, "refused")
    assert ref.detail["request"] == "program" and "hard limit" in ref.detail["reason"]
    assert ref.operator == "rn1"
    assert not events(b, "program") and not events(b, "override")
    assert b.controller.build is None


@pytest.mark.asyncio
async def test_entry_errors_are_one_line(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        dialog = app.screen
        assert isinstance(dialog, OrderScreen)
        for field, value, expect in (
            ("dose", "abc", "dose mg/day = 'abc' is not a number"),
            ("bag", "75", "bag_ml = 75 is not a bag size; allowed: 50, 100, 250 mL"),
            ("weight", "0", "weight_kg = 0 is out of range"),
            ("service", "", "approving service is empty"),
        ):
            saved = dialog.query_one(f"#{field}", Input).value
            dialog.query_one(f"#{field}", Input).value = value
            await pilot.click("#ok")
            await pilot.pause()
            assert expect in screen(app), field
            assert "Traceback" not in screen(app)
            dialog.query_one(f"#{field}", Input).value = saved
        await pilot.press("escape")
    assert not events(b, "program") and not events(b, "refused")


@pytest.mark.asyncio
async def test_occlusion_acknowledge_silence_capped_resume(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        await advance(app, pilot, b, 3600)
        await pilot.press("o")  # simulated fault: the line is occluded
        await advance(app, pilot, b, 61)  # the pump alarms once the pressure has built
        banner = app.query_one("#banner")
        assert banner.has_class("-high")
        text = screen(app)
        assert "OCCLUSION: FLOW STOPPED" in text and "NOT ACKNOWLEDGED" in text
        assert "ALARM" in text and "NOW: occlusion" in text
        await pilot.press("s")  # not acknowledged: the controller refuses and logs it
        await pilot.pause()
        assert "refused: acknowledge the occlusion alarm first" in screen(app)
        await pilot.press("a")
        await pilot.pause()
        assert "acknowledged by rn1" in screen(app)
        await pilot.press("m")
        entry = app.screen
        assert isinstance(entry, EntryScreen)
        entry.query_one("#entry", Input).value = "5"
        await pilot.press("enter")
        await pilot.pause()
        text = screen(app)
        assert "silenced occlusion for 2:00 min" in text
        assert "audio silenced, 2:00 left" in text
        await advance(app, pilot, b, 121)
        assert "alarm occlusion sounding again" in screen(app)
        await pilot.press("s", "y")  # still occluded: the pump refuses to start
        await pilot.pause()
        assert "cannot start: the line is still occluded" in screen(app)
        assert b.controller.state is State.ALARM
        await pilot.press("o")  # the nurse frees the line
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        text = screen(app)
        assert "INFUSING" in text and "no active alarms" in text
    assert b.controller.state is State.INFUSING
    (sil,) = events(b, "alarm_silenced")
    assert sil.detail["requested_min"] == 5 and sil.detail["granted_min"] == 2
    assert sil.operator == "rn1"
    (ack,) = events(b, "alarm_acknowledged")
    assert ack.detail["kind"] == "occlusion" and ack.operator == "rn1"
    assert [e.detail["kind"] for e in events(b, "alarm_cleared")] == ["occlusion"]
    refused = [e.detail["request"] for e in events(b, "refused")]
    assert refused == ["resume", "resume"]
    (gap,) = b.controller.s.gaps
    assert gap.cause == "occlusion" and gap.end_s is not None and gap.length_s(0) > 120


@pytest.mark.asyncio
async def test_bag_empty_then_hang_restarts_the_pump(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        await advance(app, pilot, b, 8 * 3600 + 5 * 60)  # nobody came: bag 1 runs out
        text = screen(app)
        assert "BAG EMPTY: INFUSION INTERRUPTED" in text and "hang the next bag (h)" in text
        await pilot.press("h")  # not acknowledged: refused by the controller
        await pilot.pause()
        assert "refused: acknowledge the" in screen(app)
        await pilot.press("a")
        await pilot.press("h", "b", "t", "y")
        await pilot.pause()
        text = screen(app)
        assert "INFUSING" in text and "bag 2 · 100 mg/100 mL" in text
    assert b.controller.state is State.INFUSING and b.driver.status().running
    (gap,) = b.controller.s.gaps
    assert gap.cause == "bag_empty" and gap.end_s is not None
    assert events(b, "bag_hung")[-1].detail["bag"] == 2


@pytest.mark.asyncio
async def test_titrate_shows_the_plan_and_changes_the_rate_now(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        await pilot.press("t")
        dialog = app.screen
        assert isinstance(dialog, OrderScreen)
        dialog.query_one("#dose", Input).value = "600"
        await pilot.pause()
        assert "plan        bag 1 at" in screen(app)  # the plan shows before confirming
        await pilot.click("#ok")
        await pilot.pause()
        text = screen(app)
        assert "600 mg/day" in text
    (tit,) = events(b, "titration")
    assert tit.detail["mode"] == "rate_now" and tit.operator == "rn1"
    (rc,) = events(b, "rate_change")
    assert b.controller.current_bag is not None and b.controller.current_bag.mg == 100
    assert b.controller.last_status.rate_ml_per_h == rc.detail["rate_ml_per_h"] > 12.5


@pytest.mark.asyncio
async def test_confirmations_and_dialogs_block_other_keys(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        await pilot.press("x")
        stop = app.screen
        assert isinstance(stop, EntryScreen)
        await pilot.press("enter")  # no reason: refused by the dialog, nothing sent
        await pilot.pause()
        assert app.screen is stop and "a reason is required" in screen(app)
        await pilot.press("escape")
        await pilot.pause()
        assert b.controller.state is State.INFUSING
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("s", "p", "x")  # console keys do nothing under a dialog
        await pilot.pause()
        assert len(app.screen_stack) == 2
        await pilot.press("y")
        await pilot.pause()
    assert app.return_code == 0
    assert not events(b, "gap_start") and b.controller.state is State.INFUSING
    assert b.driver.status().running  # quitting the console never stops the pump


@pytest.mark.asyncio
async def test_auto_nurse_runs_a_bag_cycle(bench: Bench) -> None:
    b = bench
    app = make_app(b, auto_nurse=True, speed=600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await pilot.click("#ok")
        await pilot.pause()
        await advance(app, pilot, b, 17 * 3600)  # two bag changes
        assert "AUTO NURSE" in screen(app)
        assert "bag 3 · 100 mg/100 mL" in screen(app)
        await pilot.press("n")
        await pilot.pause()
        assert "auto nurse off" in screen(app)
    hung = events(b, "bag_hung")
    assert [e.detail["bag"] for e in hung] == [1, 2, 3]
    assert {e.operator for e in hung} == {"auto-nurse"}
    assert (
        not events(b, "gap_start")
        and not events(b, "alarm_cleared")
        or all(e.detail["kind"] != "bag_empty" for e in events(b, "alarm"))
    )
    assert not events(b, "gap_start")
    assert b.driver.physics.bag_content_ml() > 90  # bag 3 really is spiked


@pytest.mark.asyncio
async def test_restart_shows_what_the_log_says(tmp_path: Path, setting: DrugSetting) -> None:
    from pumpctl.session import open_session

    db = tmp_path / "run.db"
    with EventLog(db) as log:
        log.install_setting(setting, "biomed")
    sess = open_session(db, speed=1.0)
    app = ConsoleApp(sess, operator="rn1", bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        dialog = app.screen
        assert isinstance(dialog, OrderScreen)
        dialog.query_one("#dose", Input).value = "600"
        await pilot.click("#ok")
        await pilot.pause()
        before = app.query_one("#channel").shown
    sess.close()
    sess2 = open_session(db, speed=1.0)
    assert sess2.resumed is not None
    app2 = ConsoleApp(sess2, operator="rn2", bell=False)
    async with app2.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        text = screen(app2)
        assert "600 mg/day" in text and "200 mg in 100 mL NS" in text
        assert "programmed 600 mg/day at 70 kg" in text
        assert "resumed from the log: idle" in text
        assert "RN rn2" in text
        after = app2.query_one("#channel").shown.splitlines()
        assert after[1:5] == before.splitlines()[1:5]  # program, concentration, doses
    sess2.close()


@pytest.mark.asyncio
async def test_operator_is_asked_once(bench: Bench) -> None:
    app = ConsoleApp(bench, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, EntryScreen)
        app.screen.query_one("#entry", Input).value = "rn42"
        await pilot.press("enter")
        await pilot.pause()
        assert "RN rn42" in screen(app)
        await pilot.press("d")  # nothing requested yet: refused by the controller
        await pilot.pause()
    (ref,) = events(bench, "refused")
    assert ref.operator == "rn42" and ref.detail["request"] == "bag_delivered"


@pytest.mark.asyncio
async def test_screenshot(bench: Bench, tmp_path: Path) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        b.driver.world("occlude")
        await advance(app, pilot, b, 61)
        path = Path(app.save_screenshot("occlusion.svg", str(tmp_path)))
    svg = path.read_text()
    assert "OCCLUSION" in svg and "<svg" in svg


def test_cli_registers_console(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    if "pumpctl.commands.console" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(
            cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "pumpctl.commands.console")
        )
    args = cli.make_parser().parse_args(["console", "--sim", "--speed", "600"])
    assert args.sim and args.speed == 600 and args.db is None
    assert cli.main(["console", "--port", "socket://localhost:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pumpctl console: --port needs --db PATH: a real pump's run keeps its event log"]
    assert cli.main(["console", "--sim", "--speed", "0"]) == 2
    assert "--speed: '0' is not allowed" in capsys.readouterr().err


@pytest.fixture
def realtime_bench(setting: DrugSetting, lvp: PumpModel) -> Any:
    """The simulated pump on a SystemClock at 600x, as ``pumpctl console --sim`` runs it."""
    from pumpctl.clock import SystemClock

    clock = SystemClock(speed=600.0)
    driver = SimDriver(lvp, clock)
    log = MemoryEventLog()
    log.install_setting(setting, "biomed")
    ctl = Controller(clock, driver, log, setting, reservoir_change=lvp.reservoir_change)
    return Bench(clock, ctl, driver)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_dialogs_and_space_stop_simulated_time(realtime_bench: Any) -> None:
    b = realtime_bench
    app = ConsoleApp(b, operator="rn1", tick_s=0.05, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not b.clock.paused
        await pilot.press("p")
        assert isinstance(app.screen, OrderScreen)
        assert b.clock.paused  # at once, not one tick later
        frozen = b.clock.now()
        await pilot.pause(0.3)  # 180 simulated seconds if the clock ran
        assert b.clock.now() == frozen
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, OrderScreen)
        assert not b.clock.paused and b.clock.now() > frozen
        await pilot.press("space")
        await pilot.pause()
        assert b.clock.paused and "PAUSED" in screen(app)
        assert "space  resume time" in screen(app)
        frozen = b.clock.now()
        await pilot.pause(0.3)
        assert b.clock.now() == frozen
        await pilot.press("space")
        await pilot.pause(0.1)
        assert not b.clock.paused and b.clock.now() > frozen
        assert "PAUSED" not in app.query_one("#header").shown
    assert not b.controller.log.events()[1:]  # nothing was programmed or refused


@pytest.mark.asyncio
async def test_space_on_a_clock_that_cannot_pause_says_so(bench: Bench) -> None:
    app = make_app(bench)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        await pilot.pause()
        assert "only a simulated pump's clock can stop" in screen(app)
        assert "pause time" not in screen(app)


@pytest.mark.asyncio
async def test_too_small_terminal_gets_a_notice(bench: Bench) -> None:
    app = make_app(bench)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen(app)
        assert "Terminal 80x24 is too small" in text and "at least 100x30" in text
        await pilot.resize_terminal(*SIZE)
        await pilot.pause()
        assert app.too_small_text == ""
        assert "too small" not in screen(app)


@pytest.mark.asyncio
async def test_event_lines_are_readable(bench: Bench) -> None:
    b = bench
    app = make_app(b)
    async with app.run_test(size=SIZE) as pilot:
        await program_and_start(app, pilot, b)
        lines = app.query_one("#log").lines_shown
        assert any("idle → priming (prime): bag 1, light-protected" in x for x in lines)
        assert not any("=True" in x or "=False" in x or "{" in x for x in lines)


@pytest.mark.asyncio
async def test_a_nurse_accepts_a_pending_library_at_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pumpctl import library
    from pumpctl.console.app import AcceptLibraryScreen
    from pumpctl.session import open_session
    from tests.helpers import db_with_pending_library

    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.delenv("PUMPCTL_KEY_DIR", raising=False)
    soft = ("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 2200")
    db, new = db_with_pending_library(tmp_path, soft, ("escalate_min = 10 ", "escalate_min = 12 "))
    sess = open_session(db, speed=1.0)
    old = sess.controller.setting
    app = ConsoleApp(sess, operator="rn-demo", bell=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            header = svg_rows(app)[0]  # as the terminal shows it (100 columns)
            assert f"library {new.version[:19]} pending: accept with l" in header
            await pilot.press("l")
            dialog = app.screen
            assert isinstance(dialog, AcceptLibraryScreen)
            body = screen(app)
            lines = [ln for ln in body.splitlines() if "->" in ln]
            assert "limits.upper_soft_mg_per_day: 2400 -> 2200" in lines[0]  # limits first
            assert "watchdog.escalate_min: 10 -> 12" in lines[1]
            assert "LIMIT CHECK OK" in body

            async def attempt(operator: str, secret: str) -> str:
                dialog.query_one("#accept-op", Input).value = operator
                dialog.query_one("#secret", Input).value = secret
                await pilot.click("#ok")
                await pilot.pause()
                return str(dialog.query_one("#msg").render()) if dialog.is_attached else ""

            assert await attempt("rn-demo", "wrong") == "wrong secret for operator 'rn-demo'"
            refused = await attempt("biomed-demo", "demo")
            assert "may not accept setting; allowed roles: nurse, charge_nurse" in refused
            assert app.screen is dialog and dialog.query_one("#secret", Input).value == ""
            assert sess.controller.setting is old and sess.pending_setting() is not None
            assert not [e for e in sess.log.events() if e.event == "setting_accept"]

            await attempt("rn-demo", "demo")
            assert not isinstance(app.screen, AcceptLibraryScreen)
            app.refresh_view()
            await pilot.pause()
            assert "pending" not in app.query_one("#header").shown
            assert f"setting {new.version[:19]}" in app.query_one("#header").shown
            said = app.query_one("#message").shown
            assert f"library {new.version[:19]} accepted by rn-demo" in said
            assert sess.controller.setting.version == new.version
            assert library.active_version(sess.log) == new.version
            (ev,) = [e for e in sess.log.events() if e.event == "setting_accept"]
            assert ev.operator == "rn-demo" and ev.detail["previous"] == old.version
            assert any("accepted at the pump" in x for x in app.query_one("#log").lines_shown)
            await pilot.press("l")  # nothing is waiting any more
            await pilot.pause()
            assert not isinstance(app.screen, AcceptLibraryScreen)
            assert "no library is waiting to be accepted" in screen(app)
    finally:
        sess.close()
