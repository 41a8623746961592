"""The controller side of storage faults and DEMO databases (issue 16, items 2 and 6).

A full disk mid-infusion raises the high-priority "event log unavailable" alarm, the
controller keeps supervising (the next bag is requested and hung), and once space is
back the backlog, the alarm and its clearing are all in the sealed log. A database made
with ``--demo`` says DEMO on the console header, in the report and in the run's label.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from pumpctl.alarms import AlarmKind
from pumpctl.cli import main
from pumpctl.eventlog import EventLog, verify_chain
from pumpctl.order import Order
from pumpctl.session import open_session
from pumpctl.setting import load_setting, profiles_dir

SHIPPED = profiles_dir() / "anakinra_continuous.toml"


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.delenv("PUMPCTL_KEY_DIR", raising=False)


def _demo_db(tmp_path: Path) -> Path:
    db = tmp_path / "run.db"
    assert main(["setting", "install", str(SHIPPED), "--db", str(db), "--demo"]) == 0
    return db


def _log_alarms(events, kind: str) -> list[tuple[str, float]]:
    return [
        (e.event, e.t_s)
        for e in events
        if e.event in ("alarm", "alarm_cleared") and e.detail.get("kind") == kind
    ]


def test_full_disk_raises_log_unavailable_keeps_supervising_and_loses_nothing(tmp_path):
    db = _demo_db(tmp_path)
    sess = open_session(db, speed=7200, staff=True, operator="rn-demo", secret="demo")
    try:
        ctl = sess.controller
        assert ctl.program(Order(Decimal(600), Decimal(70), bag_ml=100), "rn-demo") is None
        sess.clock.run(until_s=3600.0)
        assert ctl.state.value == "infusing" and sess.log.storage_ok
        assert ctl.alarms.find_active(AlarmKind.LOG_UNAVAILABLE) is None
        written = len(sess.log.events())
        pages = sess.log.db.execute("PRAGMA page_count").fetchone()[0]
        sess.log.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk fills up
        sess.clock.run(until_s=9 * 3600.0)  # through the end of bag 1 and the bag change
        assert not sess.log.storage_ok and sess.log.backlog > 0
        alarm = ctl.alarms.find_active(AlarmKind.LOG_UNAVAILABLE)
        assert alarm is not None and alarm.priority.value == "high"
        assert "full" in alarm.detail
        assert ctl.alarms.active()[0].kind in (AlarmKind.LOG_UNAVAILABLE,) or any(
            a.kind.flow_stopping for a in ctl.alarms.active()
        )  # the top of the banner: nothing outranks it but a flow-stopping alarm
        in_memory = sess.log.events()
        hung = [e.detail["bag"] for e in in_memory if e.event == "bag_hung"]
        assert hung == [1, 2]  # supervision went on: bag 2 was requested, delivered, hung
        assert ctl.state.value == "infusing"
        assert ctl.snapshot()["interrupted_s"] == 0
        sess.log.db.execute("PRAGMA max_page_count = 1000000")  # space is back
        assert sess.log.check_storage() and sess.log.backlog == 0
        sess.clock.run(until_s=sess.clock.now() + 3600.0)  # the alarm is cleared on the clock
        assert ctl.alarms.find_active(AlarmKind.LOG_UNAVAILABLE) is None
        final = sess.log.events()
        assert sess.close() == 0
    except BaseException:
        sess.close()
        raise
    with EventLog(db, readonly=True) as log:
        stored = log.events()
        assert verify_chain(log)[0]
    assert len(stored) >= len(final) > len(in_memory) > written
    assert [(e.event, e.t_s, e.detail) for e in stored[: len(final)]] == [
        (e.event, e.t_s, e.detail) for e in final
    ]
    raised_cleared = _log_alarms(stored, "log_unavailable")
    assert [k for k, _t in raised_cleared] == ["alarm", "alarm_cleared"]
    (t_raised, t_cleared) = [t for _k, t in raised_cleared]
    assert 3600.0 < t_raised < 9 * 3600.0 <= t_cleared < 11 * 3600.0
    # the state a restart rebuilds from the log has no stale storage alarm
    sess = open_session(db, speed=7200)
    try:
        assert sess.controller.alarms.find_active(AlarmKind.LOG_UNAVAILABLE) is None
        assert [e.detail["bag"] for e in sess.log.events() if e.event == "bag_hung"] == [1, 2]
    finally:
        sess.close()


def test_storage_alarm_left_active_by_a_close_is_cleared_at_resume(tmp_path):
    """The backlog written only at close: the alarm's clearing happens at the next resume."""
    db = _demo_db(tmp_path)
    sess = open_session(db, speed=7200, staff=True, operator="rn-demo", secret="demo")
    ctl = sess.controller
    assert ctl.program(Order(Decimal(600), Decimal(70), bag_ml=100), "rn-demo") is None
    sess.clock.run(until_s=600.0)
    sess.log.db.execute("PRAGMA query_only = ON")  # storage goes read-only
    sess.clock.run(until_s=3600.0)
    assert ctl.alarms.find_active(AlarmKind.LOG_UNAVAILABLE) is not None
    sess.log.db.execute("PRAGMA query_only = OFF")
    assert sess.close() == 0  # the close writes the backlog, the alarm included
    sess = open_session(db, speed=7200)
    try:
        assert sess.controller.alarms.find_active(AlarmKind.LOG_UNAVAILABLE) is None
        kinds = [k for k, _t in _log_alarms(sess.log.events(), "log_unavailable")]
        assert kinds == ["alarm", "alarm_cleared"]
    finally:
        sess.close()


def test_a_demo_database_says_demo_in_the_report_and_the_run_label(tmp_path, capsys):
    db = _demo_db(tmp_path)
    argv = ["run", "--sim", "--db", str(db), "--speed", "3600", "--until-h", "0.05",
            "--dose-mg-per-day", "600", "--weight-kg", "70", "--operator", "rn-demo"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    started = out.splitlines()[0]  # the run's first line says DEMO
    assert "DEMO" in started
    out_dir = tmp_path / "rep"
    code = main(["report", str(db), "--json", "--no-plots", "--out", str(out_dir)])
    assert code in (0, 1)
    printed = json.loads(capsys.readouterr().out)
    assert printed["demo"] is True
    assert json.loads((out_dir / "report.json").read_text())["demo"] is True
    md = (out_dir / "report.md").read_text()
    assert "DEMO" in md.splitlines()[0] or "DEMO" in md.splitlines()[2]


def test_a_real_database_does_not_say_demo(tmp_path, capsys, monkeypatch):
    """The same run on a database with its own roster and keys: no DEMO anywhere."""
    from pumpctl import library, roster, signing
    from pumpctl.setting import load_setting

    db = tmp_path / "real.db"
    setting = load_setting(SHIPPED)
    with EventLog(db) as log:
        roster.add_operator(log, "bio", "biomed", "s3cret", "bio", 0.0)
        roster.add_operator(log, "rn", "nurse", "s3cret", "bio", 0.0)
        for role in signing.SIGN_ROLES:
            library.trust_key(log, signing.demo_public(role), role, "bio", 0.0)
        _v, sigs = signing.read_signatures(setting.path)
        library.install_signed(log, setting, sigs, "bio", 0.0)
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "s3cret")
    argv = ["run", "--sim", "--db", str(db), "--speed", "3600", "--until-h", "0.05",
            "--dose-mg-per-day", "600", "--weight-kg", "70", "--operator", "rn"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert "DEMO" not in capsys.readouterr().out
    assert main(["report", str(db), "--json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["demo"] is False


@pytest.mark.asyncio
async def test_console_header_says_demo(tmp_path):
    from pumpctl.console.app import ConsoleApp
    from pumpctl.console.widgets import HeaderBar

    db = _demo_db(tmp_path)
    sess = open_session(db, speed=60)
    try:
        app = ConsoleApp(sess, operator="rn-demo", speed=60, bell=False)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.pause(0.2)
            assert app.query_one(HeaderBar).shown.startswith(" DEMO ")
    finally:
        sess.close()
    other = tmp_path / "plain.db"
    with EventLog(other) as log:
        log.install_setting(load_setting(SHIPPED), "biomed")
    sess = open_session(other, speed=60)
    try:
        app = ConsoleApp(sess, operator="rn1", speed=60, bell=False)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.pause(0.2)
            assert "DEMO" not in app.query_one(HeaderBar).shown
    finally:
        sess.close()
