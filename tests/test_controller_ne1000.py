"""The controller on the NE-1000 driver, against the emulator over a real pseudo-terminal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from pumpctl.clock import SystemClock
from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator
from pumpctl.eventlog import EventLog
from pumpctl.machine import State
from pumpctl.order import Order
from pumpctl.session import open_session
from pumpctl.setting import load_setting


@pytest.fixture
def rig(tmp_path) -> Iterator[tuple[Ne1000Emulator, str, str]]:
    emu = Ne1000Emulator(clock=SystemClock())
    db = str(tmp_path / "bench.db")
    with EventLog(db) as log:
        log.install_setting(load_setting("anakinra_continuous"), "biomed1")
    with EmulatorServer(emu) as server:
        yield emu, server.url, db


def _run_for(sess, seconds: float) -> None:
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        sess.clock.run_pending()
        time.sleep(0.01)


def test_controller_drives_emulated_ne1000_through_a_cable_pull(rig):
    emu, url, db = rig
    sess = open_session(db, port=url, safe_timeout_s=3)
    ctl = sess.controller
    assert ctl.poll_s is not None and ctl.poll_s <= 1.0  # at most a third of the timeout
    assert ctl.program(Order(Decimal(600), Decimal(70), bag_ml=100), "rn1") is None
    assert ctl.bag_compounded("pharm") is None and ctl.bag_delivered("tech") is None
    assert ctl.prime("rn1", light_protected=True) is None and ctl.primed("rn1") is None
    assert ctl.start("rn1") is None
    assert ctl.state is State.INFUSING
    _run_for(sess, 1.5)
    st = sess.driver.status()
    assert st.running and st.rate_ml_per_h == pytest.approx(12.5)
    emu.unplug()
    t_pull = time.monotonic()
    while not ctl.alarms.find_active("comm_loss") and time.monotonic() - t_pull < 8:
        sess.clock.run_pending()
        time.sleep(0.01)
    assert ctl.alarms.find_active("comm_loss") is not None
    assert time.monotonic() - t_pull <= ctl.poll_s + 2.0  # within a heartbeat (plus retries)
    emu.replug()
    _run_for(sess, 3.0)
    assert ctl.alarms.find_active("comm_loss") is None
    assert emu.stats.count("RUN") == 1  # never started twice
    events = ctl.log.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert any(e.event == "comm_restored" for e in events)
    sess.close()
