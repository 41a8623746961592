"""A controller killed (SIGKILL) for longer than a bag (issue 16, item 5): at restart the
gap is dated from what the simulated pump really did (its journal), to the second, with
the bag's end as its cause, and the next bag is requested at once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pumpctl.cli import main
from pumpctl.devices.physics import PumpPhysics
from pumpctl.drivers.base import PumpAlarm
from pumpctl.errors import PumpCommandError
from pumpctl.setting import load_pump, profiles_dir

SPEED = 3600.0
SHIPPED = profiles_dir() / "anakinra_continuous.toml"


def _events(db: Path) -> list[tuple[float, str, dict]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT t_s, event, detail FROM events ORDER BY id").fetchall()
    finally:
        con.close()
    return [(t, e, json.loads(d)) for t, e, d in rows]


def _meta(db: Path, key: str) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
    finally:
        con.close()


def _pump_alarm_times(
    db: Path, until_s: float, pump: str = "generic_lvp"
) -> list[tuple[float, PumpAlarm]]:
    """Replay the simulated pump's journal on its physics up to ``until_s``: when it raised
    which alarm."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT t_s, command, args FROM sim_pump ORDER BY id").fetchall()
    finally:
        con.close()
    phys = PumpPhysics(load_pump(pump), t_s=0.0, keep_segments=False)
    seen: list[tuple[float, PumpAlarm]] = []

    def upto(t1: float) -> None:
        while (t := phys.next_event_s()) <= t1:
            seen.extend((t, a) for a in phys.advance(t))

    for t_s, command, args in rows:
        upto(t_s)
        with contextlib.suppress(PumpCommandError):  # refused the first time too
            getattr(phys, command)(t_s, *json.loads(args))
    upto(until_s)
    return seen


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_9_longer_than_a_bag_dates_the_gap_from_the_pump(tmp_path, monkeypatch):
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.delenv("PUMPCTL_KEY_DIR", raising=False)
    db = tmp_path / "run.db"
    assert main(["setting", "install", str(SHIPPED), "--db", str(db), "--demo"]) == 0
    run = [sys.executable, "-m", "pumpctl.cli", "run", "--sim", "--speed", f"{SPEED:g}",
           "--db", str(db), "--operator", "rn-demo"]  # fmt: skip
    env = {**os.environ}
    first = subprocess.Popen(
        [*run, "--dose-mg-per-day", "600", "--weight-kg", "70"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        _wait(
            lambda: db.exists() and any(e == "bag_hung" for _t, e, _d in _events(db)),
            120,
            "bag 1 to be hung",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)  # no clean-up, no run_end
        first.wait()
    events = _events(db)
    assert not [e for _t, e, _d in events if e == "run_end"]
    end_s = [d["end_s"] for _t, e, d in events if e == "projection"][-1]
    epoch = float(_meta(db, "epoch_wall_s"))

    def sim_now() -> float:
        return (time.time() - epoch) * SPEED

    # Down for longer than a bag: until well past bag 1's end (the pump runs on alone).
    _wait(lambda: sim_now() > end_s + 1800.0, 60, "the outage to outlast the bag")
    until_h = sim_now() / 3600.0 + 1.0
    second = subprocess.run(
        [*run, "--until-h", f"{until_h:.4f}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout

    events = _events(db)
    (t_resume,) = [t for t, e, _d in events if e == "resume"]
    # What the pump really did while no controller watched, from its journal.
    alarms = _pump_alarm_times(db, t_resume)
    vtbi_done = [t for t, a in alarms if a is PumpAlarm.VTBI_COMPLETE]
    assert vtbi_done, alarms
    real_end_s = vtbi_done[0]
    assert abs(real_end_s - end_s) < 600  # the controller's projection was close, not exact

    report = subprocess.run(
        [sys.executable, "-m", "pumpctl.cli", "report", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert report.returncode in (0, 1), report.stderr
    result = json.loads(report.stdout)
    gaps = result["interruptions"]
    assert gaps, result
    first_gap = gaps[0]
    assert first_gap["cause"] == "bag_empty"  # not the air-in-line the dry line gave later
    assert abs(first_gap["start_h"] * 3600.0 - real_end_s) < 1.0  # to the second
    assert t_resume > real_end_s + 1800.0
    requests = [(t, d["bag"]) for t, e, d in events if e == "pharmacy_request"]
    assert [b for _t, b in requests] == [1, 2]
    t_req2 = requests[1][0]
    assert t_resume <= t_req2 < t_resume + 600.0  # bag 2 requested at the resume
    assert result["demo"] is True
