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
