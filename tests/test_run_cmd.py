"""``pumpctl run`` on the simulated pump: readable lines, JSON lines, resume, speed warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pumpctl.eventlog import Event
from pumpctl.eventtext import describe, hm, hms, resume_text

SPEED = 3600.0  # one simulated hour per second of wall time


def pumpctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PUMPCTL_OPERATOR_SECRET="demo")  # the demo roster's secret
    return subprocess.run(
        [sys.executable, "-m", "pumpctl", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env=env,
    )


def test_run_prints_state_bag_and_alarm_lines_then_resumes_readably(tmp_path: Path) -> None:
    db = str(tmp_path / "run.db")
    done = pumpctl(  # a shipped setting by name: its signatures ship with it
        "setting",
        "install",
        "anakinra_continuous",
        "--db",
        db,
        "--operator",
        "biomed-demo",
        "--demo",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    first = pumpctl(
        "run",
        "--sim",
        "--dose-mg-per-day",
        "600",
        "--weight-kg",
        "70",
        "--operator",
        "rn-demo",
        "--db",
        db,
        "--speed",
        f"{SPEED:g}",
        "--until-h",
        "0.9",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "programmed 600 mg/day at 70 kg" in out
    assert "idle → priming (prime): bag 1, light-protected" in out
    assert "idle → infusing (start)" in out
    assert "bag 1 hung: 200 mg / 100 mL, 12.5 mL/h, light-protected" in out
    assert "controller stopped at" in out
    assert "=True" not in out and "{'" not in out and "pump_command" not in out
    assert "not time-faithful" in first.stderr and "60x" in first.stderr

    again = pumpctl(
        "run", "--sim", "--db", db, "--speed", f"{SPEED:g}", "--until-h", "1.0", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    line = next(x for x in again.stdout.splitlines() if "resumed" in x)
    assert again.stdout.startswith("DEMO database")  # a demo database says so
    assert "resumed from the log: infusing, 1 bag(s) hung, pump running" in line
    assert "{" not in line and "'" not in line

    machine = pumpctl(
        "run",
        "--sim",
        "--db",
        db,
        "--speed",
        f"{SPEED:g}",
        "--until-h",
        "1.1",
        "--json",
        "--quiet",
        cwd=tmp_path,
    )
    assert machine.returncode == 0, machine.stderr
    objects = [json.loads(x) for x in machine.stdout.splitlines()]
    assert objects[0] == {"event": "demo_database", "demo": True}
    assert objects[1]["event"] == "resume" and objects[1]["detail"]["state"] == "infusing"
    assert objects[-1]["event"] == "controller_stopped"
    assert all("t_s" in o for o in objects[1:])
    assert machine.stderr.count("\n") == 1 and "not time-faithful" in machine.stderr


def test_run_at_real_time_speed_gives_no_warning(tmp_path: Path) -> None:
    done = pumpctl("run", "--sim", "--db", str(tmp_path / "none.db"), "--speed", "60", cwd=tmp_path)
    assert "not time-faithful" not in done.stderr
    assert done.returncode == 2 and "setting" in done.stderr  # no setting installed


def _event(event: str, detail: dict[str, object], operator: str = "rn1") -> Event:
    return Event(1, 0.0, "", "pump1", "idle", event, detail, operator)


def test_event_lines_have_no_python_reprs() -> None:
    text, _ = describe(
        _event(
            "state",
            {
                "from": "idle",
                "to": "priming",
                "trigger": "prime",
                "bag": 2,
                "light_protected": False,
                "reservoir_change": "stopped",
            },
        )
    )
    assert text == "idle → priming (prime): bag 2, NOT light-protected, reservoir change stopped"
    text, _ = describe(_event("gap_end", {"cause": "bag_empty", "length_s": 3360.0}))
    assert text == "interruption over: bag empty, 0:56:00"
    found = {
        "state": "bag_change",
        "bags_hung": 3,
        "pump": None,
        "events_read": 40,
        "next_bag": "delivered",
        "active_alarms": ["bag_empty"],
    }
    assert resume_text(found) == (
        "resumed from the log: bag change, 3 bag(s) hung, pump not answering, 40 events "
        "read, next bag delivered, active alarms: bag empty"
    )


def test_durations() -> None:
    assert hms(0) == "0:00:00" and hms(3600 * 26 + 61) == "26:01:01"
    assert hm(367 * 60 + 59) == "6:07" and hm(30 * 60) == "0:30"
