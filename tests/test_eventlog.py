"""Event log: append-only, durable, and a controller that survives kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pumpctl.cli import main
from pumpctl.eventlog import EventLog, MemoryEventLog

ROOT = Path(__file__).resolve().parent.parent
DEMO_ENV = {**os.environ, "PUMPCTL_OPERATOR_SECRET": "demo"}


def test_append_only(tmp_path):
    with EventLog(tmp_path / "e.db") as log:
        ev = log.append(1.0, "p1", "idle", "x", {"a": 1}, "rn1")
        assert ev.seq == 1
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log.db.execute("UPDATE events SET event = 'y'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log.db.execute("DELETE FROM events")
    with EventLog(tmp_path / "e.db") as again:  # committed: visible to a new connection
        (e,) = again.events()
        assert (e.event, e.detail, e.operator) == ("x", {"a": 1}, "rn1")


def test_memory_log_written_to_sqlite(tmp_path):
    mem = MemoryEventLog()
    for i in range(5):
        mem.append(float(i), "p", "idle", f"e{i}")
    mem.write_sqlite(tmp_path / "m.db")
    with EventLog(tmp_path / "m.db") as log:
        assert [e.event for e in log.events()] == [f"e{i}" for i in range(5)]


def test_not_a_log_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_text("this is not sqlite" * 100)
    assert main(["log", "--db", str(bad)]) == 2
    assert "not a pumpctl event log" in capsys.readouterr().err


def test_run_refuses_uninstalled_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    db = tmp_path / "r.db"
    argv = ["run", "--sim", "--db", str(db), "--dose-mg-per-day", "600", "--weight-kg", "70"]
    assert main([*argv, "--operator", "rn-demo"]) == 2
    assert "no setting installed" in capsys.readouterr().err


def _pumpctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "pumpctl.cli", *args]


def _wait_for(db: Path, event: str, timeout_s: float = 20.0) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if db.exists():
            try:
                with EventLog(db) as log:
                    if any(e.event == event for e in log.events()):
                        return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no {event} event in {db}")


def test_kill_9_then_resume_loses_nothing_and_never_restarts_pump(tmp_path):
    db = tmp_path / "run.db"
    setting = ROOT / "firmware_profiles" / "anakinra_continuous.toml"
    subprocess.run(
        _pumpctl("setting", "install", str(setting), "--db", str(db), "--demo"),
        check=True,
        cwd=ROOT,
        env=DEMO_ENV,
    )
    proc = subprocess.Popen(
        _pumpctl(
            "run",
            "--sim",
            "--db",
            str(db),
            "--dose-mg-per-day",
            "600",
            "--weight-kg",
            "70",
            "--speed",
            "600",
            "--operator",
            "rn-demo",
        ),
        cwd=ROOT,
        env=DEMO_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(db, "projection")
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with EventLog(db) as log:
        before = log.events()
    out = subprocess.run(
        _pumpctl(
            "run",
            "--sim",
            "--db",
            str(db),
            "--speed",
            "600",
            "--until-h",
            str(before[-1].t_s / 3600 + 0.5),
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    with EventLog(db) as log:
        after = log.events()
    assert [e.seq for e in after] == list(range(1, len(after) + 1))  # none lost or doubled
    assert after[: len(before)] == before
    resumes = [e for e in after if e.event == "resume"]
    assert len(resumes) == 1 and resumes[0].detail["pump"] == "running"
    assert resumes[0].detail["state"] == "infusing"
    starts = [
        e for e in after if e.event == "pump_command" and ["start", None] in e.detail["commands"]
    ]
    assert len(starts) == 1  # the pump was started once, never again after the crash
    assert not [e for e in after if e.event == "gap_start"]
    vol = resumes[0].detail["volume_infused_ml"]
    start_t = next(e.t_s for e in after if e.event == "bag_hung")
    expected = 12.5 * (resumes[0].t_s - start_t) / 3600  # it kept pumping while we were dead
    assert vol == pytest.approx(expected, rel=0.02, abs=0.05)


@pytest.fixture
def corrupt_db(tmp_path):
    """The 72 h example's events.db (and key) with 256 bytes in the middle overwritten
    (there, an events page: the open succeeds, reading the rows does not)."""
    assert main(["simulate", "anakinra_72h", "--out", str(tmp_path / "x"), "--no-plots"]) == 0
    db = tmp_path / "corrupt.db"
    data = bytearray((tmp_path / "x" / "events.db").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 256] = bytes((i * 37 + 11) % 256 for i in range(256))
    db.write_bytes(bytes(data))
    (tmp_path / "corrupt.db.key").write_bytes((tmp_path / "x" / "events.db.key").read_bytes())
    return db


@pytest.mark.parametrize(
    "argv",
    [["log", "--db", "DB", "--verify"], ["log", "--db", "DB"], ["report", "DB", "--out", "Y"]],
    ids=["log-verify", "log", "report"],
)
def test_a_corrupted_page_is_one_line_exit_2(corrupt_db, argv, capsys):
    capsys.readouterr()
    argv = [str(corrupt_db) if a == "DB" else a for a in argv]
    argv = [str(corrupt_db.parent / "Y") if a == "Y" else a for a in argv]
    before = corrupt_db.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "malformed" in err and "allowed:" in err
    if "--verify" in argv:
        assert "cannot be verified" in err
    assert corrupt_db.read_bytes() == before and not (corrupt_db.parent / "Y").exists()
