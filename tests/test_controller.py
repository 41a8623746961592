"""Controller, machine guards, watchdog and gaps on the simulated pump."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpctl.events import fold
from pumpctl.machine import State, mermaid
from pumpctl.order import Order, build
from pumpctl.setting import load_setting
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario
from tests.helpers import Rig, write_scenario

STAGE_LEADS_MIN = {
    "pharmacy_request": 60,
    "next_bag_not_at_bedside": 30,
    "prepare_bag_change": 15,
    "no_bag_ready": 10,
}


def test_start_needs_program_primed_line_and_installed_setting(setting, lvp):
    rig = Rig(setting, lvp)
    assert "no program" in rig.ctl.start("rn1")
    assert rig.ctl.program(rig.order(), "md1") is None
    assert "no bag at the bedside" in rig.ctl.prime("rn1", light_protected=True)
    rig.deliver_next()
    assert "light protection" in rig.ctl.prime("rn1", light_protected=False)
    assert "line not primed" in rig.ctl.start("rn1")
    assert rig.ctl.state is State.IDLE
    refusals = rig.events("refused")
    assert len(refusals) == 4 and all(e.detail["reason"] for e in refusals)
    bare = Rig(setting, lvp, install=False)
    assert "not installed" in bare.ctl.program(bare.order(), "md1")


def test_hard_limit_refused_soft_limit_needs_logged_override(setting, lvp):
    rig = Rig(setting, lvp)
    assert "hard limit" in rig.ctl.program(rig.order("3000", "30"), "md1")
    assert "soft limit" in rig.ctl.program(rig.order("3000", "100"), "md1")
    assert rig.ctl.build is None
    o = rig.order("3000", "100", override_reason="refractory MAS", operator="dr7")
    assert rig.ctl.program(o, "md1") is None
    ov = rig.events("override")
    assert len(ov) == 1 and ov[0].operator == "dr7" and ov[0].detail["reason"] == "refractory MAS"
    assert rig.log.events().index(ov[0]) < rig.log.events().index(rig.events("program")[0])


def test_illegal_requests_never_raise_and_are_logged(setting, lvp):
    rig = Rig(setting, lvp)
    assert "not allowed while idle" in rig.ctl.begin_bag_change("rn1")
    assert "not allowed while idle" in rig.ctl.resume("rn1")
    assert "no active alarm" in rig.ctl.acknowledge("occlusion", "rn1")
    assert rig.ctl.state is State.IDLE


def test_72h_prompt_staff_no_gap_stages_on_time():
    run = run_scenario(load_scenario("examples/anakinra_72h.toml"))
    r = run.result
    assert r["verdict"] == "pass" and r["interrupted_s"] == 0 and r["interruptions"] == []
    bags = run.controller.bags
    assert len(r["bags"]) == len(bags) == 10
    lead_s = run.scenario.hang_lead_s  # the nurse finishes the change this early
    assert not [a for a in run.controller.alarms.all if a.kind == "no_bag_ready"]
    # The first bag lost its prime to the line: its VTBI is what it can really give.
    content = 100 + 8 + 2 * 0.67
    vtbi1 = math.floor((content - 15) / 1.05 * 10) / 10
    assert bags[0].vtbi_ml == pytest.approx(vtbi1)
    assert bags[0].ended_s - bags[0].hung_s == pytest.approx(vtbi1 / 12.5 * 3600 - lead_s, abs=1e-3)
    for b in bags[1:-1]:  # every later bag ran its full real duration (VTBI / rate)
        assert b.ended_s - b.hung_s == pytest.approx(100 / 12.5 * 3600 - lead_s, abs=1e-3)
    ends = {b.n: b.ended_s for b in bags if b.ended_s is not None}
    stages = [e for e in run.log.events() if e.event == "watchdog"]
    for n, end_s in ends.items():
        mine = {e.detail["stage"]: e for e in stages if e.detail["bag"] == n}
        # every stage before the change fired; the T-10 escalation never had to
        assert set(mine) == {k for k, v in STAGE_LEADS_MIN.items() if v * 60 > lead_s}
        for stage, ev in mine.items():
            floor_min = STAGE_LEADS_MIN[stage]
            # projected end (real volume and rate) is the real end; each stage fires at
            # its planned lead, never shorter than the setting's
            assert ev.detail["end_s"] == pytest.approx(end_s + lead_s, abs=1e-3)
            assert ev.detail["lead_min"] >= floor_min and ev.detail["why"]
            assert ev.t_s == pytest.approx(end_s + lead_s - ev.detail["lead_min"] * 60, abs=0.02)
    # Dose matches the physics: delivered volume times each bag's real concentration.
    phys = run.driver.physics
    assert r["delivered_mg"] == pytest.approx(phys.actual_ml_total * 200 / content, abs=1e-3)
    run_h = 72 - r["start_h"]
    k_ml_per_h = 12.5 * (1 + run.pump.bias_pct / 100)
    assert phys.actual_ml_total == pytest.approx(k_ml_per_h * run_h, abs=0.5)


def test_nurse_never_comes_bag_empty_alarm_and_gap(tmp_path):
    sc = load_scenario(
        write_scenario(
            tmp_path,
            """
[[faults]]
at_h = 7
kind = "nurse_absent"
duration_min = 6000
""",
        )
    )
    run = run_scenario(sc)
    r = run.result
    bag1 = run.controller.bags[0]
    real_end_s = bag1.hung_s + bag1.vtbi_ml / 12.5 * 3600
    empty = [a for a in run.controller.alarms.all if a.kind == "bag_empty"]
    assert len(empty) == 1 and empty[0].priority == "high"
    assert empty[0].raised_s == pytest.approx(real_end_s, abs=1e-6)
    (gap,) = r["interruptions"]
    assert gap["cause"] == "bag_empty"
    assert gap["start_h"] == pytest.approx(real_end_s / 3600, abs=1e-6)
    assert gap["end_h"] == 72 and r["interrupted_s"] == pytest.approx(
        72 * 3600 - real_end_s, abs=0.01
    )
    assert r["verdict"] == "fail"
    # The escalation fired at T-10 although the bag was at the bedside: no nurse came.
    esc = [a for a in run.controller.alarms.all if a.kind == "no_bag_ready"]
    assert esc and "not started" in esc[0].detail
    assert esc[0].raised_s == pytest.approx(real_end_s - 600, abs=1e-3)
    # The gap's end is logged too, with its length (it is still open at the run's end).
    assert [e.detail["cause"] for e in run.log.events() if e.event == "gap_start"] == ["bag_empty"]


def test_silence_is_capped_for_flow_stopping_alarm_and_reannunciates(setting, lvp):
    rig = Rig(setting, lvp)
    rig.start_infusion()
    rig.clock.advance(3600)
    rig.driver.world("occlude")
    rig.clock.advance(lvp.occlusion_time_to_alarm_s + 1)
    assert rig.ctl.state is State.ALARM
    assert rig.ctl.silence("occlusion", 10, "rn1") is None
    ev = rig.events("alarm_silenced")[-1]
    assert ev.detail["requested_min"] == 10 and ev.detail["granted_min"] == 2
    rig.clock.advance(119)
    assert not rig.events("alarm_reannunciated")
    rig.clock.advance(2)
    assert len(rig.events("alarm_reannunciated")) == 1
    assert "acknowledge" in rig.ctl.resume("rn1")
    assert rig.ctl.acknowledge("occlusion", "rn1") is None
    assert "occluded" in rig.ctl.resume("rn1")  # cause still there: the pump refuses
    rig.driver.world("release_occlusion")
    assert rig.ctl.resume("rn1") is None
    assert rig.ctl.state is State.INFUSING and rig.ctl.alarms.find_active("occlusion") is None


def test_comm_loss_alarm_within_poll_period_and_recovery(setting, lvp):
    rig = Rig(setting, lvp, poll_s=5.0)
    rig.start_infusion()
    rig.clock.advance(100)
    rig.driver.link_up = False
    t_lost = rig.clock.now()
    rig.clock.advance(6)
    (alarm,) = [a for a in rig.ctl.alarms.all if a.kind == "comm_loss"]
    assert alarm.raised_s - t_lost <= 5.0
    assert rig.driver.physics.mode.value == "running"  # pump keeps its last safe state
    rig.driver.link_up = True
    rig.clock.advance(6)
    assert alarm.cleared_s is not None and rig.events("comm_restored")


def test_titration_now_changes_the_running_bags_rate(setting, lvp):
    rig = Rig(setting, lvp)
    rig.start_infusion("300")
    cur = rig.ctl.current_bag
    rig.clock.advance(600)
    assert rig.ctl.titrate(rig.order("600"), "md1") is None
    (tit,) = rig.events("titration")
    assert tit.detail["mode"] == "rate_now" and tit.detail["plan"]["why"]
    (rc,) = rig.events("rate_change")
    new_dose_h = tit.detail["recipe"]["achieved_mg_per_day"] / 24
    rate = round(new_dose_h / cur.recipe.conc_mg_per_ml + 1e-9, 1)
    assert rc.detail["rate_ml_per_h"] == pytest.approx(rate)
    # the new dose rate from bag 1's own concentration: 548.7 mg/day / 24 / (100 mg/108.67 mL)
    assert rate == pytest.approx(548.747 / 24 / (100 / 108.67), abs=0.06)
    assert rig.driver.status().rate_ml_per_h == pytest.approx(rate)  # at once, on the pump
    # The watchdog re-projected the running bag from the new rate.
    proj = rig.events("projection")[-1]
    left = rig.driver.status().vtbi_left_ml
    assert proj.detail["end_s"] == pytest.approx(rig.clock.now() + left / rate * 3600, abs=1e-3)


def test_titration_next_bag_mode_keeps_the_running_bag(setting, lvp, tmp_path):
    from pumpctl.setting import load_setting
    from tests.test_setting import SETTING, mutate

    old = load_setting(mutate(tmp_path, SETTING, r'^mode = "now"', 'mode = "next_bag"'))
    rig = Rig(old, lvp)
    rig.start_infusion("300")
    assert rig.ctl.titrate(rig.order("600"), "md1") is None
    assert rig.events("titration")[0].detail["mode"] == "next_bag"
    assert not rig.events("rate_change")
    assert rig.ctl.current_bag.mg == 100  # the running bag is not touched


def test_bag_past_hang_by_alarms_and_waits_for_the_pharmacist(setting, lvp):
    rig = Rig(setting, lvp)
    assert rig.ctl.program(rig.order(), "md1") is None
    rig.deliver_next()
    nb = rig.ctl.next_bag
    # hang-by = compounded + 12 h beyond-use - the bag's 8 h: four hours from now
    assert nb.hang_by_s == pytest.approx(12 * 3600 - 8 * 3600)
    rig.clock.advance(4 * 3600 + 1)
    (alarm,) = [a for a in rig.ctl.alarms.active() if a.kind == "bag_past_hang_by"]
    assert "hang-by" in rig.ctl.prime("rn1", light_protected=True)
    assert rig.ctl.next_bag is nb and nb.discarded_s is None  # never thrown away by itself
    assert rig.ctl.release_bag("ph1", "replacement would interrupt") is None
    assert alarm.cleared_s is not None
    rig.connect_next()
    assert rig.ctl.prime("rn1", light_protected=True) is None


def test_mermaid_diagram_lists_every_transition():
    text = mermaid()
    for s in State:
        assert s.value in text
    assert "alarm --> infusing: resume" in text


REQUESTS = [
    "program",
    "deliver",
    "prime",
    "primed",
    "start",
    "begin_bag_change",
    "hang",
    "occlude",
    "release",
    "ack",
    "resume",
    "stop",
    "advance",
    "titrate",
    "silence",
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(REQUESTS), max_size=40))
def test_random_requests_keep_machine_legal_and_log_in_step(setting, lvp, seq):
    rig = Rig(setting, lvp)
    ctl = rig.ctl
    for req in seq:
        if req == "program":
            ctl.program(rig.order(), "md1")
        elif req == "deliver":
            ctl.bag_compounded("p")
            ctl.bag_delivered("p")
        elif req == "prime":
            ctl.prime("rn1", light_protected=True)
        elif req == "primed":
            ctl.primed("rn1")
        elif req == "start":
            ctl.start("rn1")
        elif req == "begin_bag_change":
            ctl.begin_bag_change("rn1")
        elif req == "hang":
            ctl.hang_bag("rn1", light_protected=True)
        elif req == "occlude":
            rig.driver.world("occlude")
        elif req == "release":
            rig.driver.world("release_occlusion")
        elif req == "ack":
            for a in ctl.alarms.active():
                ctl.acknowledge(a.id, "rn1")
        elif req == "resume":
            ctl.resume("rn1")
        elif req == "stop":
            ctl.stop("rn1", "test")
        elif req == "titrate":
            ctl.titrate(rig.order("900"), "md1")
        elif req == "silence":
            ctl.silence("occlusion", 5, "rn1")
        else:
            rig.clock.advance(1800)
        assert ctl.state in State
        states = [e for e in rig.log.events() if e.event == "state"]
        assert (states[-1].detail["to"] if states else "idle") == ctl.state.value
        if ctl.state is State.INFUSING:
            assert ctl.line_primed and ctl.build is not None
        if ctl.state is State.ALARM:
            assert any(a.spec.flow_stopping for a in ctl.alarms.active()) or ctl.s.open_gap
        # Events are the record: replaying the log gives exactly the live state.
        assert fold(rig.log.events()) == ctl.s


def test_hang_by_uses_the_rate_the_bag_will_really_run_at(setting, lvp):
    """A dose decrease slows an already-made bag: its hang-by time comes earlier."""
    rig = Rig(setting, lvp)
    rig.start_infusion("600")
    rig.clock.advance(5 * 3600)  # bag 2 requested
    assert rig.ctl.bag_compounded("ph") is None and rig.ctl.bag_delivered("t") is None
    nb = rig.ctl.next_bag
    assert rig.ctl._why_not_hang_by(nb) is None
    assert rig.ctl.titrate(rig.order("300"), "md1") is None  # half the dose
    rate = rig.ctl._bag_rate(nb)
    assert rate == pytest.approx(6.3, abs=0.1)  # bag 2 would run twice as long
    # compounded + 12 h - 100 mL / 6.3 mL/h (15.9 h) is already past
    why = rig.ctl._why_not_hang_by(nb)
    assert why is not None and "past its hang-by" in why and "6.3 mL/h" in why
    # ... and the pharmacist is called at once to replace or release it
    assert rig.ctl.alarms.find_active("bag_past_hang_by") is not None


def test_titration_plan_counts_what_is_left_now_not_at_the_last_read_back(setting, lvp):
    """The last read-back was at the start, hours ago: the plan reads what is left off
    the projection, so a bag about to end gets a STAT bag, not a rate change."""
    rig = Rig(setting, lvp)
    rig.start_infusion("600")
    end = rig.ctl.s.projected_end_s
    rig.clock.advance(end - 30 * 60)  # half an hour before the first bag ends
    assert rig.ctl.last_status.volume_infused_ml == 0.0  # read back at the start only
    nb = rig.ctl.next_bag
    assert nb is not None and nb.compounded_s is None  # requested, not made yet
    b = build(rig.order("900"), setting)
    plan = rig.ctl.titration_plan(b)
    rate = rig.ctl._rate_for(rig.ctl.current_bag, float(b.achieved_mg_per_day) / 24)
    left_ml = 30 / 60 * rig.ctl.current_bag.rate_ml_per_h
    assert plan["mode"] == "stat"
    assert f"would last {left_ml / rate * 60:.0f} min" in plan["why"]


def test_a_bag_slowed_past_its_beyond_use_time_comes_down_by_then(setting, lvp):
    """A dose decrease halves the rate: the running bag would still be infusing 12 h
    after it was compounded. The watchdog plans the change for its beyond-use time and
    the nurse is told at once."""
    rig = Rig(setting, lvp)
    assert rig.ctl.program(rig.order("600"), "md1") is None
    rig.deliver_next()
    compounded = rig.ctl.next_bag.compounded_s
    rig.clock.advance(3 * 3600)  # hung 3 h after compounding, inside its hang-by time
    rig.connect_next()
    assert rig.ctl.prime("rn1", light_protected=True) is None
    assert rig.ctl.primed("rn1") is None
    assert rig.ctl.start("rn1") is None
    assert "change_by_s" not in rig.events("projection")[-1].detail  # ends before it
    rig.clock.advance(600)
    assert rig.ctl.titrate(rig.order("300"), "md1") is None
    assert rig.events("titration")[-1].detail["mode"] == "rate_now"
    proj = rig.events("projection")[-1].detail
    bud = compounded + setting.beyond_use_h * 3600
    assert proj["end_s"] > bud and proj["change_by_s"] == pytest.approx(bud, abs=1e-3)
    (alarm,) = [a for a in rig.ctl.alarms.active() if a.kind == "bag_beyond_use"]
    assert alarm.priority == "medium" and not alarm.spec.flow_stopping
    # Every stage of the change counts back from the beyond-use time, not the pump's end.
    lead = rig.ctl.planner.lead("prepare_bag_change").s
    rig.clock.advance(bud - lead - rig.clock.now() + 1)
    (stage,) = [e for e in rig.events("watchdog") if e.detail["stage"] == "prepare_bag_change"]
    assert stage.detail["end_s"] == pytest.approx(bud, abs=1e-3)
    assert rig.ctl.watchdog.projected_end_s == pytest.approx(bud, abs=1e-3)


def test_hang_by_alarm_fires_though_the_logged_time_is_rounded_down(setting, lvp):
    """The log keeps the hang-by time to the millisecond; the check runs just after the
    exact time, so a bag compounded at an awkward fraction of a second still alarms
    (it once looked 0.4 ms early, found the bag in time, and never looked again)."""
    rig = Rig(setting, lvp)
    rig.clock.advance(1234.5674)
    assert rig.ctl.program(rig.order(), "md1") is None
    rig.deliver_next()
    nb = rig.ctl.next_bag
    exact = rig.ctl._hang_by_s(nb)
    assert nb.hang_by_s < exact  # the logged value is rounded down
    rig.clock.advance(exact - rig.clock.now() + 1.0)
    assert [a.kind for a in rig.ctl.alarms.active()] == ["bag_past_hang_by"]


def test_the_beyond_use_alarm_goes_when_the_dose_goes_back_up(setting, lvp):
    rig = Rig(setting, lvp)
    assert rig.ctl.program(rig.order("600"), "md1") is None
    rig.deliver_next()
    rig.clock.advance(3 * 3600)
    rig.connect_next()
    assert rig.ctl.prime("rn1", light_protected=True) is None
    assert rig.ctl.primed("rn1") is None
    assert rig.ctl.start("rn1") is None
    rig.clock.advance(600)
    assert rig.ctl.titrate(rig.order("300"), "md1") is None
    (alarm,) = [a for a in rig.ctl.alarms.active() if a.kind == "bag_beyond_use"]
    rig.clock.advance(600)
    assert rig.ctl.titrate(rig.order("600"), "md1") is None  # the bag ends in time again
    assert "change_by_s" not in rig.events("projection")[-1].detail
    assert alarm.cleared_s is not None and rig.ctl.s.change_by_s is None
    end = rig.ctl.s.projected_end_s
    assert rig.ctl.watchdog.projected_end_s == pytest.approx(end, abs=1e-3)


def _ped_rig_at_start(lvp):
    """Pediatric 2.5 kg, 30 mg/day in 10 mL bags on the LVP (15 mL prime), bypassing the
    setting-vs-pump check (defence in depth), primed and ready to start."""
    ped = load_setting("anakinra_continuous_pediatric")
    rig = Rig(ped, lvp)
    assert rig.ctl.program(Order(Decimal("30"), Decimal("2.5"), bag_ml=10), "md1") is None
    rig.deliver_next()
    rig.connect_next()
    assert rig.ctl.prime("rn1", light_protected=True) is None
    assert rig.ctl.primed("rn1") is None
    return rig


def test_a_bag_that_cannot_prime_the_line_is_refused_with_a_high_alarm(lvp):
    rig = _ped_rig_at_start(lvp)
    why = rig.ctl.start("rn1")
    assert why is not None and "\n" not in why
    assert "bag 1 holds 10.067 mL" in why and "15 mL line" in why
    assert "the line cannot start" in why and "VTBI -4.7 mL" in why
    assert rig.ctl.state is State.IDLE
    assert rig.events("pump_command") == []  # nothing sent for the pump to refuse
    (alarm,) = rig.ctl.alarms.active()
    assert alarm.kind == "line_cannot_start" and alarm.priority == "high"
    assert "cannot prime the line" in alarm.text and "10.067 mL" in alarm.text
    assert rig.ctl.start("rn1") == why  # still refused; one alarm, not one per try
    assert len(rig.ctl.alarms.active()) == 1


def test_simulated_nurse_does_not_retry_a_start_that_cannot_work(monkeypatch, tmp_path):
    """Before: the pump refused a -4.7 mL VTBI every 5 minutes for 24 h, and the only alarm
    was a medium bag_past_hang_by. Now: one refusal and a high line_cannot_start alarm."""
    import pumpctl.sim.runner as runner

    monkeypatch.setattr(runner, "check_fits", lambda setting, model: None)
    sc = write_scenario(tmp_path, duration_h=24, dose=30)
    text = sc.read_text().replace('"anakinra_continuous"', '"anakinra_continuous_pediatric"')
    sc.write_text(text.replace("bag_ml = 100", "bag_ml = 10").replace("= 70\n", "= 2.5\n"))
    run = runner.run_scenario(load_scenario(sc))
    events = run.log.events()
    starts = [e for e in events if e.event == "refused" and e.detail["request"] == "start"]
    assert len(starts) == 1 and "the line cannot start" in starts[0].detail["reason"]
    alarms = [e.detail for e in events if e.event == "alarm"]
    assert alarms[0]["kind"] == "line_cannot_start" and alarms[0]["priority"] == "high"
    assert not [e for e in events if e.event == "pump_refused"]


def test_a_bag_that_runs_dry_before_its_vtbi_asks_for_the_next_bag(setting, lvp):
    """A part-used bag runs the line dry (air in line) before its VTBI: the pump refuses to
    start with no fluid in its reservoir. Before: the nurse's resume sent a start the pump
    refused, again and again, with no alarm but the acknowledged air_in_line. Now: a high
    bag_empty alarm asks for the next bag (requested STAT if none is coming) and further
    resumes are refused without a pump command."""
    rig = Rig(setting, lvp)
    ctl = rig.ctl
    assert ctl.program(rig.order(), "md1") is None
    rig.deliver_next()
    nb = ctl.next_bag
    rig.driver.world("connect_bag", 20.0, nb.real_conc_mg_per_ml, "bag 1, part-used")
    assert ctl.prime("rn1", light_protected=True) is None and ctl.primed("rn1") is None
    assert ctl.start("rn1") is None
    rig.clock.advance(3 * 3600)  # 20 mL minus the prime at 12.5 mL/h: dry well before 8 h
    assert ctl.state is State.ALARM
    air = ctl.alarms.find_active("air_in_line")
    assert air is not None
    assert ctl.acknowledge(air.id, "rn1") is None
    assert ctl.next_bag is None

    why = ctl.resume("rn1")
    assert why is not None and "no fluid in the reservoir" in why
    empty = ctl.alarms.find_active("bag_empty")
    assert empty is not None and empty.priority == "high"
    assert "bag 1 ran dry before its VTBI" in empty.detail
    assert ctl.next_bag is not None and ctl.next_bag.stat  # the next bag, STAT
    sent = len(rig.events("pump_command"))
    assert ctl.resume("rn1") == "acknowledge the bag_empty alarm first"
    assert ctl.acknowledge(empty.id, "rn1") is None
    for _ in range(5):
        assert ctl.resume("rn1") == "the bag is empty: hang the next bag"
    assert len(rig.events("pump_command")) == sent  # no more blind restarts
    assert len(rig.events("pump_refused")) == 1
    assert len([e for e in rig.events("alarm") if e.detail["kind"] == "bag_empty"]) == 1

    rig.deliver_next()  # the next bag comes and is hung: the infusion goes on
    rig.connect_next()
    assert ctl.hang_bag("rn1", light_protected=True) is None
    assert ctl.state is State.INFUSING and not ctl.alarms.find_active("bag_empty")
    assert fold(rig.log.events()) == ctl.s


def test_a_comm_loss_across_a_bag_change_does_not_leave_the_pump_dry(tmp_path):
    """QA finding: a 15 h comm loss across a bag change; the part-used bag hung at its end
    ran dry (air in line) and the nurse's resumes were refused ("no fluid in the reservoir")
    for an hour, then nothing for 44 h. Now the bag-empty alarm gets the next bag hung."""
    text = (Path(__file__).resolve().parent.parent / "examples/anakinra_72h.toml").read_text()
    sc = tmp_path / "s.toml"
    sc.write_text(text + '\n[[faults]]\nat_h = 5\nkind = "comm_loss"\nduration_min = 900\n')
    run = run_scenario(load_scenario(sc), trace=False)
    events = run.log.events()
    refused = [e for e in events if e.event == "pump_refused"]
    air = [e for e in events if e.event == "alarm" and e.detail["kind"] == "air_in_line"]
    (dry,) = [
        e
        for e in events
        if e.event == "alarm" and e.detail["kind"] == "bag_empty" and e.t_s > air[0].t_s
    ]
    (once,) = [e for e in refused if e.t_s >= air[0].t_s]  # one refused resume, then the alarm
    assert once.seq < dry.seq and "no fluid" in str(once.detail)
    assert dry.detail["priority"] == "high"
    gaps = run.result["interruptions"]
    after = [g for g in gaps if g["cause"] == "air_in_line"]
    assert after and all(g["length_s"] < 3600 for g in after)
    assert run.controller.state is State.INFUSING


def test_line_cannot_start_is_cleared_once_a_bag_is_hung(setting, lvp):
    """The alarm raised for a bag that could not start the line does not outlive the next
    successful hang (it used to be cleared only by a start)."""
    from pumpctl.alarms import AlarmKind

    rig = Rig(setting, lvp)
    rig.start_infusion()
    rig.ctl._raise(AlarmKind.LINE_CANNOT_START, "bag 2 leaves nothing to infuse")
    assert rig.ctl.alarms.find_active(AlarmKind.LINE_CANNOT_START) is not None
    assert rig.ctl._request_bag(stat=True, why="test") is not None
    rig.deliver_next()
    assert rig.ctl.begin_bag_change("rn1") is None
    rig.connect_next()
    assert rig.ctl.hang_bag("rn1", light_protected=True) is None
    assert rig.ctl.alarms.find_active(AlarmKind.LINE_CANNOT_START) is None
