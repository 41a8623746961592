"""A drug library installed during a run takes effect when a nurse accepts it at the pump:
the controller switches without touching the infusion, and a library whose hard limit the
order in force breaks is refused (it stays pending)."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pumpctl import library, roster
from pumpctl.errors import OverrideRequiredError, RefusedError
from pumpctl.eventlog import EventLog
from pumpctl.machine import State
from pumpctl.order import Order, build
from pumpctl.session import open_session
from pumpctl.setting import DrugSetting, PumpModel, setting_from_raw
from pumpctl.watchdog import Stage
from tests.helpers import Rig, db_with_pending_library

SOFT_700 = ("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 700")
SOFT_500 = ("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 500")
# 0.3 mg/kg/h is 504 mg/day at 70 kg: the 600 mg/day order (548.7 mg/day built) breaks it
SOFT_400 = ("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 400")
HARD_03 = ("upper_hard_mg_per_kg_per_h = 2 ", "upper_hard_mg_per_kg_per_h = 0.3 ")
BUD_10 = ("beyond_use_h = 12", "beyond_use_h = 10")


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.delenv("PUMPCTL_KEY_DIR", raising=False)


def variant(setting: DrugSetting, **changes: dict[str, Any]) -> DrugSetting:
    """``setting`` with some values of its tables changed (``limits={...}``)."""
    raw = copy.deepcopy(setting.raw)
    for table, values in changes.items():
        raw[table].update(values)
    return setting_from_raw(raw, "variant")


def order(dose: str) -> Order:
    return Order(Decimal(dose), Decimal(70), bag_ml=100)


@pytest.fixture
def rig(setting: DrugSetting, lvp: PumpModel) -> Rig:
    """A controller infusing the 600 mg/day order on a simulated pump (bag 1 hung)."""
    r = Rig(setting, lvp)
    r.start_infusion("600")
    return r


# -- the controller switch ----------------------------------------------------------
def test_use_setting_applies_to_titration_and_leads_and_leaves_the_infusion(
    rig: Rig, setting: DrugSetting
) -> None:
    ctl = rig.ctl
    rig.clock.advance(3600)
    new = variant(setting, limits={"upper_soft_mg_per_day": 700}, watchdog={"escalate_min": 12})
    rig.log.install_setting(new, "biomed", pending=True)
    build(order("800"), setting)  # the old library builds 800 mg/day without an override
    seen = len(rig.log.events())
    status = rig.driver.status()

    assert ctl.why_not_use_setting(new) is None
    assert ctl.use_setting(new) is None  # 548.7 mg/day is within the new limits

    assert len(rig.log.events()) == seen  # no event, no pump command
    after = rig.driver.status()
    assert ctl.state is State.INFUSING and after.running
    assert after.rate_ml_per_h == status.rate_ml_per_h == 12.5
    assert ctl.setting is new and ctl.watchdog.planner is ctl.planner
    assert ctl.planner.lead(Stage.ESCALATE).s == 12 * 60.0
    with pytest.raises(OverrideRequiredError):
        build(order("800"), new)
    reason = ctl.titrate(order("800"), "md1")
    assert reason is not None and "upper soft limit 700 mg/day" in reason
    assert ctl.titrate(order("580"), "md1") is None  # 600 nominal, 548.7 real: within 10 %
    (titration,) = rig.events("titration")
    assert titration.detail["build"]["setting_version"] == new.version


def test_the_running_bag_escalates_at_the_new_lead(rig: Rig, setting: DrugSetting) -> None:
    ctl = rig.ctl
    rig.clock.advance(3600)
    end_s = ctl.s.projected_end_s
    assert end_s is not None
    ctl.use_setting(variant(setting, watchdog={"escalate_min": 12}))
    rig.clock.advance(end_s - 11.5 * 60 - rig.clock.now())  # 10 min under the old library
    (alarm,) = [a for a in ctl.alarms.active() if a.kind == "no_bag_ready"]
    assert alarm.raised_s == pytest.approx(end_s - 12 * 60)
    assert ctl.s.projected_end_s == end_s and ctl.state is State.INFUSING


def test_bags_made_before_the_switch_keep_their_beyond_use_time(
    rig: Rig, setting: DrugSetting
) -> None:
    ctl = rig.ctl
    bag1 = ctl.current_bag
    assert bag1 is not None and bag1.compounded_s is not None
    new = variant(setting, handling={"beyond_use_h": 10})
    rig.log.install_setting(new, "biomed", pending=True)
    ctl.use_setting(new)
    assert ctl._beyond_use_s(bag1) == bag1.compounded_s + 12 * 3600.0
    # bag 2 is requested at T-60 and compounded under the new library: 10 h
    rig.clock.advance(ctl.s.projected_end_s - 50 * 60 - rig.clock.now())
    assert ctl.bag_compounded("pharm") is None
    bag2 = ctl.next_bag
    assert bag2 is not None and bag2.n == 2 and bag2.compounded_s is not None
    assert ctl._beyond_use_s(bag2) == bag2.compounded_s + 10 * 3600.0


def test_an_order_above_the_new_hard_limit_is_named(rig: Rig, setting: DrugSetting) -> None:
    new = variant(
        setting,
        limits={"upper_soft_mg_per_day": 400, "upper_hard_mg_per_kg_per_h": 0.3},
    )
    assert rig.ctl.order_against(new)[0] == "hard"
    why = rig.ctl.why_not_use_setting(new)
    assert why is not None and "upper hard limit 0.3 mg/kg/h" in why and "stays pending" in why


# -- acceptance at the pump (session on a database) ---------------------------------
def test_a_nurse_accepts_and_the_controller_switches_without_touching_the_pump(
    tmp_path: Path,
) -> None:
    db, new = db_with_pending_library(tmp_path, SOFT_700, BUD_10, run_h=0.6)
    sess = open_session(db, speed=3600)
    try:
        ctl = sess.controller
        old = ctl.setting
        assert old.version != new.version
        state, seen = ctl.state, len(sess.log.events())
        bag1 = ctl.bags[0]
        assert bag1.compounded_s is not None

        accepted, review = sess.accept_setting("rn-demo")

        assert accepted.version == new.version and review is None
        added = sess.log.events()[seen:]
        assert [e.event for e in added] == ["setting_accept"]  # nothing sent to the pump
        assert added[0].operator == "rn-demo" and added[0].detail["previous"] == old.version
        assert ctl.state is state and ctl.setting.version == new.version
        assert sess.setting.version == new.version and sess.pending_setting() is None
        assert library.active_version(sess.log) == new.version
        reason = ctl.titrate(order("800"), "md-demo")  # above the new soft limit (700)
        assert reason is not None and "upper soft limit 700 mg/day" in reason
        pinned = ctl._beyond_use_s(bag1)
        assert pinned == bag1.compounded_s + 12 * 3600.0
    finally:
        sess.close()
    again = open_session(db, speed=3600)  # a restart runs the new library, bag 1 as made
    try:
        assert again.controller.setting.version == new.version
        assert again.controller._beyond_use_s(again.controller.bags[0]) == pinned
    finally:
        again.close()


def test_a_library_whose_hard_limit_the_order_breaks_stays_pending(tmp_path: Path) -> None:
    db, new = db_with_pending_library(tmp_path, SOFT_400, HARD_03)
    sess = open_session(db, speed=1.0)
    try:
        old = sess.controller.setting
        with pytest.raises(RefusedError, match="upper hard limit 0.3 mg/kg/h") as err:
            sess.accept_setting("rn-demo")
        assert "\n" not in str(err.value) and "stays pending" in str(err.value)
        assert not [e for e in sess.log.events() if e.event == "setting_accept"]
        refused = [e for e in sess.log.events() if e.event == "refused"]
        assert refused[-1].detail["request"] == "accept_setting"
        pending = sess.pending_setting()
        assert pending is not None and pending.version == new.version
        assert sess.controller.setting is old and library.active_version(sess.log) == old.version
    finally:
        sess.close()


def test_a_soft_limit_breach_is_accepted_with_a_review_line(tmp_path: Path) -> None:
    db, new = db_with_pending_library(tmp_path, SOFT_500)
    sess = open_session(db, speed=1.0)
    try:
        accepted, review = sess.accept_setting("charge-demo")
        assert accepted.version == new.version
        assert review is not None and "needs review" in review
        assert "above the upper soft limit 500 mg/day" in review
        (ev,) = [e for e in sess.log.events() if e.event == "setting_accept"]
        assert "above the upper soft limit 500 mg/day" in ev.detail["order_review"]
    finally:
        sess.close()


@pytest.mark.parametrize("who", ["biomed-demo", "pharm-demo", "md-demo", "nobody"])
def test_only_a_nurse_accepts(tmp_path: Path, who: str) -> None:
    db, new = db_with_pending_library(tmp_path, SOFT_700)
    sess = open_session(db, speed=1.0)
    try:
        seen = len(sess.log.events())
        error = roster.AuthError if who == "nobody" else roster.NotPermittedError
        with pytest.raises(error):
            sess.accept_setting(who)
        assert len(sess.log.events()) == seen
        pending = sess.pending_setting()
        assert pending is not None and pending.version == new.version
        assert sess.controller.setting.version != new.version
    finally:
        sess.close()
    with EventLog(db) as log:
        assert library.active_version(log) != new.version


def test_the_report_names_the_active_library_not_a_pending_one(tmp_path: Path) -> None:
    from pumpctl.report import build_result

    db, new = db_with_pending_library(tmp_path, SOFT_700)
    sess = open_session(db, speed=1.0)
    try:
        old = sess.controller.setting.version
        assert build_result(sess.log.events())["setting_version"] == old
        sess.accept_setting("rn-demo")
        assert build_result(sess.log.events())["setting_version"] == new.version
    finally:
        sess.close()


def test_a_restart_keeps_the_build_in_force_as_made_under_the_old_library(
    tmp_path: Path,
) -> None:
    """The pump runs the logged recipe: after a restart the build in force is still the one
    made under the library it was made with, not one recomputed under the accepted one."""
    overfill_30 = ("\n100 = 8\n", "\n100 = 30\n")  # dilutes the same 200 mg: a lower real dose
    db, new = db_with_pending_library(tmp_path, SOFT_500, overfill_30, run_h=0.6)
    sess = open_session(db, speed=3600)
    try:
        ctl = sess.controller
        made = ctl.build
        assert made is not None and made.setting_version != new.version
        accepted, review = sess.accept_setting("rn-demo")
        assert review is not None and "above the upper soft limit 500 mg/day" in review
        assert ctl.build is made
        from pumpctl.order import build as build_order

        with pytest.raises(OverrideRequiredError) as rebuilt:  # -23.9 % real under the new one
            build_order(ctl.order, new)
        assert rebuilt.value.build.achieved_mg_per_day < 500  # type: ignore[attr-defined]
    finally:
        sess.close()
    again = open_session(db, speed=3600)
    try:
        ctl2 = again.controller
        assert ctl2.setting.version == new.version
        assert ctl2.build is not None
        assert ctl2.build.achieved_mg_per_day == made.achieved_mg_per_day
        assert ctl2.build.setting_version == made.setting_version
        kind, detail = ctl2.order_against(ctl2.setting)
        assert kind == "soft" and "upper soft limit 500 mg/day" in detail
    finally:
        again.close()
