"""Two-pump relay: a syringe change costs no flow, and both pumps never run at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpctl.clock import SimClock
from pumpctl.drivers.relay import RelayPair
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import PumpCommandError
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _running(segs: list[dict], pump: str) -> list[tuple[float, float]]:
    return [
        (g["start_s"], g["end_s"])
        for g in segs
        if g["pump"] == pump and g["mode"] == "running" and not g["occluded"]
    ]


def test_relay_scenario_has_no_interruption_and_pumps_take_turns():
    run = run_scenario(load_scenario(EXAMPLES / "syringe_relay_ne1000.toml"), trace=False)
    r = run.result
    assert r["verdict"] == "pass" and r["interrupted_s"] == 0 and r["interruptions"] == []
    segs = [e.detail for e in run.log.events() if e.event == "delivery_segment"]
    a, b = _running(segs, "A"), _running(segs, "B")
    assert a and b  # both pumps delivered, in turn
    overlap = sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)
    assert overlap == 0.0  # never both at the full rate
    # every change after the first bag was a hand-over, logged before it happened
    handovers = [
        e
        for e in run.log.events()
        if e.event == "pump_command" and e.detail["commands"][0][0] == "take_over"
    ]
    assert len(handovers) == len(r["bags"]) - 1
    # the dose still matches the physics of both pumps
    assert r["delivered_mg"] == pytest.approx(sum(g["drug_mg"] for g in segs), abs=1e-3)


def test_the_same_order_on_one_syringe_pump_loses_every_change():
    one = run_scenario(load_scenario(EXAMPLES / "syringe_pump_ne1000.toml"), trace=False).result
    two = run_scenario(load_scenario(EXAMPLES / "syringe_relay_ne1000.toml"), trace=False).result
    assert len(one["interruptions"]) == len(one["bags"]) - 1 > 0
    assert two["interrupted_s"] == 0 < one["interrupted_s"]


def test_take_over_reads_both_pumps_back(ne1000_model):
    clock = SimClock()
    a, b = SimDriver(ne1000_model, clock), SimDriver(ne1000_model, clock)
    pair = RelayPair(a, b)
    with pytest.raises(PumpCommandError, match="no pump is armed"):
        pair.take_over()
    pair.begin_load()
    pair.world("connect_bag", 51.0, 3.9, "bag 2")  # loads the idle pump, B
    assert b.physics._bag is not None and a.physics._bag is None
    pair.arm(6.3, 48.8)
    done = pair.take_over()
    assert done == {"from": "A", "to": "B"} and pair.active is b
    assert b.status().running and not a.status().running
    # B has nothing left to give after its syringe: a failed start is reported, not hidden
    pair.begin_load()
    pair.arm(6.3, 48.8)
    with pytest.raises(PumpCommandError):
        pair.take_over()  # A has no syringe: it cannot start


def _relay_rig(setting_name: str = "anakinra_continuous_syringe"):
    from decimal import Decimal

    from pumpctl.controller import Controller
    from pumpctl.eventlog import MemoryEventLog
    from pumpctl.order import Order
    from pumpctl.setting import load_pump, load_setting

    model = load_pump("newera_ne1000")
    setting = load_setting(setting_name)
    clock = SimClock()
    a, b = SimDriver(model, clock), SimDriver(model, clock)
    pair = RelayPair(a, b)
    log = MemoryEventLog()
    log.install_setting(setting, "biomed")
    ctl = Controller(clock, pair, log, setting, model=model)
    assert ctl.program(Order(Decimal(600), Decimal(70), bag_ml=50), "md1") is None
    assert ctl.bag_compounded("ph") is None and ctl.bag_delivered("t") is None
    nb = ctl.next_bag
    pair.world("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, "bag 1")
    assert ctl.prime("rn1", True) is None and ctl.primed("rn1") is None
    assert ctl.start("rn1") is None
    clock.advance(6 * 3600)  # bag 2 requested at T-lead
    assert ctl.bag_compounded("ph") is None and ctl.bag_delivered("t") is None
    assert ctl.begin_bag_change("rn1") is None
    nb = ctl.next_bag
    pair.world("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, f"bag {nb.n}")
    assert ctl.hang_bag("rn1", True) is None
    assert ctl.s.relay_armed == nb.n
    return ctl, pair, clock, log


def test_discarding_the_armed_bag_disarms_and_the_watchdog_calls_again():
    ctl, pair, clock, _log = _relay_rig()
    assert ctl.replace_next_bag("ph1", "dropped") is None
    assert ctl.s.relay_armed is None and not pair.armed
    clock.advance(2 * 3600)
    # the bag-change stages sound again for the replacement (nothing is loaded any more)
    kinds = {a.kind for a in ctl.alarms.all}
    assert "prepare_bag_change" in kinds or "no_bag_ready" in kinds


def test_a_titration_after_arming_reaches_the_next_bag_at_the_hand_over():
    from decimal import Decimal

    from pumpctl.order import Order

    ctl, pair, clock, _log = _relay_rig()
    armed = ctl.next_bag
    assert ctl.titrate(Order(Decimal(750), Decimal(70), bag_ml=50), "md1") is None
    clock.advance(4 * 3600)  # past bag 1's end: pump B took over
    assert ctl.current_bag is armed and pair.active_name == "B"
    want = ctl._bag_rate(armed)
    assert armed.rate_ml_per_h == pytest.approx(want) and want > 6.3
    assert pair.active.status().rate_ml_per_h == pytest.approx(want)


def test_a_restart_while_armed_still_hands_over(ne1000_model):
    from pumpctl.controller import Controller, restore

    ctl, pair, clock, log = _relay_rig()
    armed = ctl.next_bag.n
    ctl.close()
    pair.armed = False  # a new process: the driver knows nothing of the arming
    ctl2 = Controller(clock, pair, log, ctl.setting, model=ne1000_model)
    restore(ctl2)
    assert pair.armed and ctl2.s.relay_armed == armed
    clock.advance(4 * 3600)
    assert ctl2.current_bag is not None and ctl2.current_bag.n == armed
    assert ctl2.s.interrupted_s(clock.now()) == 0
