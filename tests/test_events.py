"""Events are the record: restore is a replay, reports are made from events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pumpctl.cli import main
from pumpctl.controller import Controller, restore
from pumpctl.eventlog import EventLog, read_events
from pumpctl.events import EventKind, fold
from pumpctl.machine import State
from pumpctl.report import build_result
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario
from tests.helpers import Rig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _comparable(s):  # what a screen and the watchdog rely on
    return (s.state, s.order, s.plan, s.limit, s.line_primed, s.bags, s.alarms, s.gaps, s.fired)


def test_every_event_kind_is_a_string_value():
    assert EventKind.ALARM == "alarm" and EventKind("gap_end") is EventKind.GAP_END


def _bag_one_spiked_on_sqlite(tmp_path, setting, lvp):
    """A controller logging to SQLite, its order programmed and bag 1 delivered and spiked."""
    db = tmp_path / "run.db"
    log = EventLog(db)
    log.install_setting(setting, "biomed")
    rig = Rig(setting, lvp)
    ctl = Controller(rig.clock, rig.driver, log, setting, model=lvp)
    assert ctl.program(rig.order(), "md1") is None
    assert ctl.bag_compounded("ph") is None and ctl.bag_delivered("tech") is None
    nb = ctl.next_bag
    rig.driver.world("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, "b1")
    return db, log, rig, ctl


def test_restart_after_replacement_titration_and_alarm_shows_the_same_state(tmp_path, setting, lvp):
    db, log, rig, ctl = _bag_one_spiked_on_sqlite(tmp_path, setting, lvp)
    clock, driver = rig.clock, rig.driver
    assert ctl.prime("rn1", True) is None and ctl.primed("rn1") is None
    assert ctl.start("rn1") is None
    clock.advance(6 * 3600)  # the watchdog requests bag 2 at T-lead
    assert ctl.next_bag is not None
    assert ctl.replace_next_bag("ph1", "dropped on the floor") is None  # a replacement
    assert ctl.titrate(rig.order("900"), "md1") is None  # a titration
    driver.world("occlude")
    clock.advance(lvp.occlusion_time_to_alarm_s + 1)  # an alarm
    assert ctl.state is State.ALARM
    assert ctl.silence("occlusion", 1, "rn1") is None
    before = _comparable(ctl.s)
    discarded = [b.n for b in ctl.s.bags.values() if b.discarded_s is not None]
    assert discarded  # the replaced bag stays discarded after the restart
    ctl.close()
    log.close()

    log2 = EventLog(db)
    ctl2 = Controller(clock, driver, log2, setting, model=lvp)
    found = restore(ctl2)
    assert found["state"] == "alarm"
    assert _comparable(ctl2.s) == before
    assert [b.n for b in ctl2.s.bags.values() if b.discarded_s is not None] == discarded
    assert ctl2.state is State.ALARM and ctl2.alarms.find_active("occlusion") is not None
    # The silence is re-armed: it re-annunciates on time after the restart too.
    clock.advance(61)
    assert [e for e in log2.events() if e.event == "alarm_reannunciated"]
    log2.close()


def test_gap_end_is_logged_with_length_and_cause(setting, lvp):
    rig = Rig(setting, lvp)
    rig.start_infusion()
    rig.clock.advance(3600)
    rig.driver.world("occlude")
    rig.clock.advance(lvp.occlusion_time_to_alarm_s + 1)
    rig.clock.advance(120)
    rig.driver.world("release_occlusion")
    assert rig.ctl.acknowledge("occlusion", "rn1") is None
    assert rig.ctl.resume("rn1") is None
    (start,) = rig.events("gap_start")
    (end,) = rig.events("gap_end")
    assert end.detail["cause"] == start.detail["cause"] == "occlusion"
    assert end.detail["length_s"] == pytest.approx(end.t_s - start.t_s)


@pytest.mark.parametrize(
    "name", ["anakinra_72h", "pharmacy_late", "titration_day2", "occlusion", "nurse_absent"]
)
def test_report_from_events_db_equals_simulate(tmp_path, capsys, name):
    out = tmp_path / "sim"
    assert main(
        ["simulate", str(EXAMPLES / f"{name}.toml"), "--out", str(out), "--json", "--no-plots"]
    ) in (0, 1)
    sim = json.loads(capsys.readouterr().out)
    assert main(["report", str(out / "events.db"), "--json"]) in (0, 1)
    rep = json.loads(capsys.readouterr().out)
    for key in (
        "interruptions",
        "interrupted_s",
        "bags",
        "alarms",
        "delivered_mg",
        "ordered_mg",
        "verdict",
        "wasted_mg",
        "flow_accuracy",
    ):
        assert rep[key] == sim[key], key


def test_report_of_a_live_run_database(tmp_path, setting, lvp):
    """A run without physics segments: interruptions from the controller's gap events."""
    db = tmp_path / "live.db"
    log = EventLog(db)
    log.install_setting(setting, "biomed")
    rig = Rig(setting, lvp)
    ctl = Controller(rig.clock, rig.driver, log, setting, model=lvp)
    assert ctl.program(rig.order(), "md1") is None
    ctl.bag_compounded("ph")
    ctl.bag_delivered("tech")
    rig.driver.world("connect_bag", ctl.next_bag.content_ml, ctl.next_bag.real_conc_mg_per_ml, "b")
    ctl.prime("rn1", True)
    ctl.primed("rn1")
    ctl.start("rn1")
    rig.clock.advance(3600)
    ctl.stop("rn1", "line change")
    rig.clock.advance(300)
    ctl.stop_record()
    log.close()
    r = build_result(read_events(db))
    (gap,) = r["interruptions"]
    assert gap["cause"] == "stopped" and gap["length_s"] == pytest.approx(300)
    assert r["delivered_mg"] == pytest.approx(12.5 * 200 / 109.34, abs=1e-3)  # one hour
    assert not r["expectations_met"]


def test_report_refuses_a_file_that_is_not_a_log(tmp_path, capsys):
    bad = tmp_path / "x.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert bad.read_bytes() == b"not sqlite at all" * 100


def test_titration_at_the_worst_moment_reaches_the_patient_at_once(tmp_path):
    """600 -> 900 just after the next bag was compounded: the dose steps up within minutes."""
    base = load_scenario(EXAMPLES / "anakinra_72h.toml")
    probe = run_scenario(base, trace=False)
    compounded = [e for e in probe.log.events() if e.event == "bag_compounded"]
    t_h = compounded[3].t_s / 3600 + 0.01  # bag 4 made, bag 3 still running
    sc_path = tmp_path / "t.toml"
    sc_path.write_text(
        (EXAMPLES / "anakinra_72h.toml").read_text().replace("bags = 10", "")
        + f"\n[[titrations]]\nat_h = {t_h}\ndose_mg_per_day = 900\n"
    )
    run = run_scenario(load_scenario(sc_path), trace=False)
    r = run.result
    assert r["interrupted_s"] == 0
    (tit,) = r["titrations"]
    assert tit["mode"] == "rate_now"
    segs = [e.detail for e in run.log.events() if e.event == "delivery_segment"]
    after = [s for s in segs if s["start_s"] >= t_h * 3600 - 1e-6 and s["mode"] == "running"]
    first = after[0]
    dose_h = first["drug_mg"] / ((first["end_s"] - first["start_s"]) / 3600)
    new_plan_h = [e for e in run.log.events() if e.event == "titration"][0].detail["recipe"][
        "achieved_mg_per_day"
    ] / 24
    assert first["start_s"] - t_h * 3600 < 15 * 60
    assert dose_h == pytest.approx(new_plan_h, rel=0.02)
    # Dose error over the run within 2 points of the same run without the titration.
    assert abs(r["delivery_error_pct"] - probe.result["delivery_error_pct"]) < 2
    # Hand arithmetic: delivered = sum over segments of volume x that bag's concentration.
    conc = {f"bag {b.n}": b.recipe.conc_mg_per_ml for b in run.controller.s.bags.values()}
    by_hand = sum(s["actual_ml"] * conc[s["bag"]] for s in segs if s["bag"] in conc)
    assert r["delivered_mg"] == pytest.approx(by_hand, rel=1e-3)


def test_fold_is_the_live_state_after_a_whole_simulation():
    run = run_scenario(load_scenario(EXAMPLES / "pharmacy_late.toml"), trace=False)
    live = [e for e in run.log.events() if e.event not in ("delivery_segment", "run_end")]
    assert fold(live) == run.controller.s


@pytest.mark.parametrize("killed_in", ["priming", "idle"])
def test_light_protection_confirmed_at_the_prime_survives_a_restart(
    tmp_path, setting, lvp, killed_in
):
    """Killed (SIGKILL: no close) while priming, or primed and not yet started: the
    resumed controller hangs bag 1 as light-protected, as the nurse confirmed at the prime."""
    db, log, rig, ctl = _bag_one_spiked_on_sqlite(tmp_path, setting, lvp)
    clock, driver = rig.clock, rig.driver
    assert ctl.prime("rn1", light_protected=True) is None
    (prime,) = [e for e in log.events() if e.detail.get("trigger") == "prime"]
    assert prime.detail["light_protected"] is True
    if killed_in == "idle":
        assert ctl.primed("rn1") is None
    clock.advance(27)

    ctl2 = Controller(clock, driver, EventLog(db), setting, model=lvp)  # the old one is gone
    assert restore(ctl2)["state"] == killed_in
    assert ctl2.s == fold(ctl2.log.events())
    if killed_in == "priming":
        assert ctl2.primed("rn1") is None
    assert ctl2.start("rn1") is None
    (hung,) = [e for e in ctl2.log.events() if e.event == EventKind.BAG_HUNG]
    assert hung.detail["bag"] == 1
    assert hung.detail["light_protected"] is True
    assert ctl2.s.bags[1].light_protected is True
    assert ctl2.s.prime_light_protected is False  # used up by the hang
    assert build_result(ctl2.log.events())["bags"][0]["light_protected"] is True
