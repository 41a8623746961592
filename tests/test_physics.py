"""Pump physics: closed-form volumes, exact event times, faults."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpctl.devices.physics import PumpPhysics
from pumpctl.drivers.base import PumpAlarm, RunState
from pumpctl.errors import PumpCommandError


def running(model, rate=12.5, vtbi=100.0, bag_ml=101.34, conc=200 / 101.34) -> PumpPhysics:
    p = PumpPhysics(model)
    p.connect_bag(0.0, bag_ml, conc, "b1")
    p.set_rate(0.0, rate)
    p.set_vtbi(0.0, vtbi)
    p.start(0.0)
    return p


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.5, 500), t1=st.floats(1, 4 * 3600))
def test_closed_form_volume_matches_numeric_integral(lvp, rate, t1):
    p = running(lvp, rate=rate, vtbi=1e4, bag_ml=1e4)
    t = np.linspace(0, t1, 200_001)
    q = np.array([p._flow_ml_per_s(x) for x in t[::1000]])  # coarse check of the law
    assert np.all(q >= 0)
    fine = np.vectorize(p._flow_ml_per_s)(t)
    numeric = float(np.sum((fine[1:] + fine[:-1]) * np.diff(t)) / 2)
    assert p._volume_ml(0, t1) == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_vtbi_complete_at_exact_time_then_kvo(lvp):
    p = running(lvp)
    assert p.next_event_s() == pytest.approx(8 * 3600, abs=1e-6)
    raised = p.advance(8 * 3600)
    assert raised == [PumpAlarm.VTBI_COMPLETE]
    assert p.mode is RunState.KVO and p.counted_ml == pytest.approx(100, abs=1e-9)
    p.advance(8.5 * 3600)  # KVO goes on at 1 mL/h and is counted too
    assert p.counted_ml == pytest.approx(100.5, abs=1e-9)


def test_delivered_volume_is_rate_times_bias_less_startup(lvp):
    p = running(lvp)
    p.advance(4 * 3600)
    k = 12.5 * (1 + lvp.bias_pct / 100) / 3600
    ripple_bound = k * lvp.ripple_pct / 100 * lvp.ripple_period_s / math.pi
    expected = k * (4 * 3600 - lvp.startup_tau_s)
    assert abs(p.actual_ml_total - expected) < ripple_bound + 1e-9
    assert p.drug_mg_total == pytest.approx(p.actual_ml_total * 200 / 101.34, rel=1e-12)


def test_bag_and_drip_chamber_run_dry_then_air_alarm(lvp):
    p = running(lvp, vtbi=500, bag_ml=10, conc=1.0)
    t_dry = p.next_event_s()
    assert p._volume_ml(0, t_dry) == pytest.approx(10.0, abs=1e-8)  # bag + chamber
    assert p.advance(t_dry + 1) == [PumpAlarm.AIR_IN_LINE]
    assert p.mode is RunState.ALARM and p.actual_ml_total == pytest.approx(10.0, abs=1e-8)


def test_running_bag_change_draws_from_chamber(lvp):
    p = running(lvp)
    p.advance(3600)
    before = p.actual_ml_total
    p.disconnect_bag(3600)
    p.advance(3660)
    assert p.actual_ml_total > before  # flow continued from the drip chamber
    p.connect_bag(3660, 101.34, 200 / 101.34, "b2")
    assert p.mode is RunState.RUNNING


def test_occlusion_stops_flow_alarms_after_delay_and_bolus_capped(lvp):
    p = running(lvp)
    p.advance(3600)
    v0 = p.actual_ml_total
    p.occlude(3600)
    assert p.next_event_s() == pytest.approx(3600 + lvp.occlusion_time_to_alarm_s)
    assert p.advance(3700) == [PumpAlarm.OCCLUSION]
    assert p.actual_ml_total == v0
    with pytest.raises(PumpCommandError, match="occluded"):
        p.start(3700)
    bolus = p.release_occlusion(3900)
    assert 0 < bolus <= lvp.bolus_after_release_ml <= 0.5
    p.start(3900)
    assert p.mode is RunState.RUNNING


def test_power_loss_runs_on_battery_then_depletes(lvp):
    p = running(lvp, vtbi=1000, bag_ml=1000)
    assert p.power_off(100) == [PumpAlarm.POWER_LOSS]
    low_at = 100 + (lvp.battery_capacity_min - lvp.battery_low_min) * 60
    assert p.next_event_s() == pytest.approx(low_at)
    assert p.advance(low_at + 1) == [PumpAlarm.BATTERY_LOW]
    assert p.advance(100 + lvp.battery_capacity_min * 60 + 1) == [PumpAlarm.BATTERY_DEPLETED]
    assert p.mode is RunState.ALARM


def test_pump_without_battery_stops_and_comes_back_reset(ne1000_model):
    p = running(ne1000_model)
    p.power_off(100)
    assert p.mode is RunState.STOPPED and p.powered_off
    assert p.power_on(200) == [PumpAlarm.RESET]
    assert p.rate_ml_per_h == 0  # a rate set while running is not saved (NE-1000)
