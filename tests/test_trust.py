"""Trust: signed drug libraries, operators with roles, the sealed log, the lease, storage faults."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pumpctl import library, roster, signing
from pumpctl.cli import main
from pumpctl.errors import InputError
from pumpctl.eventlog import EventLog, is_demo, verify_chain
from pumpctl.lease import LeaseError
from pumpctl.session import open_session
from pumpctl.setting import load_setting, profiles_dir

SHIPPED = profiles_dir() / "anakinra_continuous.toml"
DEMO_AUTHOR = signing.DEMO_KEY_DIR / "demo_author.key"
DEMO_APPROVER = signing.DEMO_KEY_DIR / "demo_approver.key"


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.delenv("PUMPCTL_KEY_DIR", raising=False)


def _copy(tmp_path: Path, name: str = "lib.toml", edit: tuple[str, str] | None = None) -> Path:
    text = SHIPPED.read_text()
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    p = tmp_path / name
    p.write_text(text)
    return p


def _sign(path: Path, author: Path = DEMO_AUTHOR, approver: Path = DEMO_APPROVER) -> None:
    assert main(["setting", "sign", str(path), "--key", str(author), "--role", "author"]) == 0
    assert main(["setting", "sign", str(path), "--key", str(approver), "--role", "approver"]) == 0


def _demo_db(tmp_path: Path) -> Path:
    db = tmp_path / "run.db"
    assert main(["setting", "install", str(SHIPPED), "--db", str(db), "--demo"]) == 0
    return db


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- 1. signed drug libraries -------------------------------------------------
def test_version_is_the_full_sha256(tmp_path):
    v = load_setting(SHIPPED).version
    assert v.startswith("sha256:") and len(v) == len("sha256:") + 64
    int(v[7:], 16)


def test_shipped_setting_is_signed_by_the_demo_keys():
    setting = load_setting(SHIPPED)
    version, sigs = signing.read_signatures(SHIPPED)
    assert version == setting.version
    trusted = {signing.demo_public(r): {r} for r in signing.SIGN_ROLES}
    assert signing.check_signatures(setting.version, sigs, trusted) == ""
    assert signing.check_signatures(setting.version, sigs, {}) != ""  # untrusted keys: no


def test_demo_install_makes_a_demo_database_with_roster_and_keys(tmp_path, capsys):
    db = _demo_db(tmp_path)
    out = capsys.readouterr().out
    assert "[DEMO]" in out and "no setting installed before" in out
    with EventLog(db) as log:
        assert is_demo(log)
        ids = {op.id: op.role for op in roster.operators(log)}
        assert ids["biomed-demo"] == "biomed" and ids["rn-demo"] == "nurse"
        assert ids["pharm-demo"] == "pharmacist" and ids["charge-demo"] == "charge_nurse"
        stored = [r[0] for r in log.db.execute("SELECT secret_hash FROM operators")]
        assert all(h.startswith("scrypt$") and "demo" not in h for h in stored)
        assert library.installed_setting(log).version == load_setting(SHIPPED).version
    with EventLog(tmp_path / "plain.db") as log:
        assert not is_demo(log)


def test_forged_setting_is_refused(tmp_path, capsys):
    db = _demo_db(tmp_path)
    lib = _copy(tmp_path)
    _sign(lib)
    forged = lib.read_text().replace(
        "upper_hard_mg_per_kg_per_h = 2 ", "upper_hard_mg_per_kg_per_h = 200 "
    )
    assert forged != lib.read_text()
    lib.write_text(forged)  # the signatures stay, the content changed
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 2
    assert "is not what was signed" in _err(capsys)
    # re-signed by an untrusted pair of keys: still refused
    a, _ = signing.generate(tmp_path / "evil_a.key")
    b, _ = signing.generate(tmp_path / "evil_b.key")
    _sign(lib, a, b)
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 2
    assert "not trusted" in _err(capsys)
    with EventLog(db) as log:
        assert library.installed_setting(log).limits["upper_hard"].value == 2


def test_tampered_signature_and_one_key_for_both_roles_are_refused(tmp_path, capsys):
    db = _demo_db(tmp_path)
    lib = _copy(tmp_path, edit=("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 2000"))
    _sign(lib)
    sig = signing.sig_path(lib)
    text = sig.read_text()
    version, sigs = signing.read_signatures(lib)
    bad = sigs[1].signature
    flipped = ("A" if bad[0] != "A" else "B") + bad[1:]
    sig.write_text(text.replace(bad, flipped))
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 2
    assert "approver signature does not match" in _err(capsys)
    # the author key trusted as approver too, signing both: two different keys are needed
    with EventLog(db) as log:
        library.trust_key(log, signing.demo_public("author"), "approver", "biomed-demo")
    _sign(lib, DEMO_AUTHOR, DEMO_AUTHOR)
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 2
    assert "same key" in _err(capsys)


def test_install_shows_changes_limits_first_and_runs_from_stored_content(tmp_path, capsys):
    db = _demo_db(tmp_path)
    lib = _copy(
        tmp_path,
        edit=("escalate_min = 10 ", "escalate_min = 12 "),
    )
    lib.write_text(
        lib.read_text().replace("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 2000")
    )
    _sign(lib)
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    changed = [ln.strip() for ln in out if "->" in ln]
    assert changed == [
        "limits.upper_soft_mg_per_day: 2400 -> 2000",
        "watchdog.escalate_min: 10 -> 12",
    ]
    lib.unlink()  # the controller never reads the file again
    signing.sig_path(lib).unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        sess = open_session(os.path.relpath(db, elsewhere))
    finally:
        os.chdir(cwd)
    try:
        assert sess.setting.limits["upper_soft"].value == 2000
        assert sess.demo
    finally:
        sess.close()


def test_stored_content_edited_in_the_database_is_refused(tmp_path):
    db = _demo_db(tmp_path)
    con = sqlite3.connect(db)
    (content,) = con.execute("SELECT content FROM settings").fetchone()
    raw = json.loads(content)
    raw["limits"]["upper_hard_mg_per_kg_per_h"] = 200
    con.execute("UPDATE settings SET content = ?", (json.dumps(raw),))
    con.commit()
    con.close()
    with pytest.raises(InputError, match="was changed in the database"):
        open_session(db)


def test_nurse_cannot_install_and_unknown_or_wrong_operator_is_one_line(tmp_path, capsys):
    db = _demo_db(tmp_path)
    lib = _copy(tmp_path, edit=("escalate_min = 10 ", "escalate_min = 11 "))
    _sign(lib)
    base = ["setting", "install", str(lib), "--db", str(db), "--operator"]
    capsys.readouterr()
    assert main([*base, "rn-demo"]) == 3
    assert "may not install setting; allowed roles: biomed" in _err(capsys)
    assert main([*base, "nobody"]) == 2
    assert "unknown operator 'nobody'" in _err(capsys)
    assert main([*base, ""]) == 2
    assert "operator is empty" in _err(capsys)
    os.environ["PUMPCTL_OPERATOR_SECRET"] = "not-demo"
    assert main([*base, "biomed-demo"]) == 2
    assert "wrong secret for operator 'biomed-demo'" in _err(capsys)
    with EventLog(db) as log:
        assert not log.is_installed(load_setting(lib).version)


def test_demo_needs_a_new_database(tmp_path, capsys):
    db = tmp_path / "x.db"
    assert main(["operator", "add", "admin", "--role", "biomed", "--db", str(db)]) == 2
    assert "no secret: set PUMPCTL_NEW_OPERATOR_SECRET" in _err(capsys)
    os.environ["PUMPCTL_NEW_OPERATOR_SECRET"] = "s3cret"
    try:
        assert main(["operator", "add", "admin", "--role", "biomed", "--db", str(db)]) == 0
        capsys.readouterr()
        assert main(["setting", "install", str(SHIPPED), "--db", str(db), "--demo"]) == 2
        assert "--demo only on a new database" in _err(capsys)
    finally:
        del os.environ["PUMPCTL_NEW_OPERATOR_SECRET"]


def test_setting_installed_during_a_run_waits_for_a_nurse(tmp_path, capsys):
    db = _demo_db(tmp_path)
    env_run = ["run", "--sim", "--db", str(db), "--speed", "3600", "--until-h", "0.2"]
    assert (
        main([*env_run, "--dose-mg-per-day", "600", "--weight-kg", "70", "--operator", "rn-demo"])
        == 0
    )
    lib = _copy(tmp_path, edit=("upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 2200"))
    _sign(lib)
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 0
    assert "takes effect when a nurse accepts it" in capsys.readouterr().out
    new_version = load_setting(lib).version
    assert main(["setting", "show", "--db", str(db)]) == 0
    shown = capsys.readouterr().out
    assert f"pending  'anakinra IV infusion' version {new_version}" in shown
    assert f"active   'anakinra IV infusion' version {load_setting(SHIPPED).version}" in shown
    sess = open_session(db, speed=3600)
    try:
        assert sess.setting.limits["upper_soft"].value == 2400  # still the old one
        pending = sess.pending_setting()
        assert pending is not None and pending.version == new_version
        with pytest.raises(roster.NotPermittedError):
            sess.accept_setting("biomed-demo")
        accepted, review = sess.accept_setting("rn-demo")
        assert accepted.version == new_version and sess.pending_setting() is None
        assert review is None and sess.controller.setting.version == new_version
        ev = [e for e in sess.log.events() if e.event == "setting_accept"]
        assert ev[-1].operator == "rn-demo" and ev[-1].detail["version"] == new_version
    finally:
        sess.close()
    with EventLog(db) as log:
        assert library.installed_setting(log).version == new_version


# -- 2. operators with roles ---------------------------------------------------
def test_run_needs_a_nurse_with_the_right_secret(tmp_path, capsys):
    db = _demo_db(tmp_path)
    base = ["run", "--sim", "--db", str(db), "--dose-mg-per-day", "600", "--weight-kg", "70"]
    capsys.readouterr()
    assert main(base) == 2
    assert "needs --operator" in _err(capsys)
    assert main([*base, "--operator", "nobody"]) == 2
    assert "unknown operator 'nobody'" in _err(capsys)
    assert main([*base, "--operator", "biomed-demo"]) == 3
    assert "may not program" in _err(capsys)
    os.environ["PUMPCTL_OPERATOR_SECRET"] = "wrong"
    assert main([*base, "--operator", "rn-demo"]) == 2
    assert "wrong secret" in _err(capsys)
    with EventLog(db) as log:
        assert not [e for e in log.events() if e.event == "program"]


def test_roster_is_managed_by_a_biomed_administrator(tmp_path, capsys, monkeypatch):
    db = tmp_path / "r.db"
    monkeypatch.setenv("PUMPCTL_NEW_OPERATOR_SECRET", "first")
    assert main(["operator", "add", "rn1", "--role", "nurse", "--db", str(db)]) == 2
    assert "the first one must have role biomed" in _err(capsys)
    assert main(["operator", "add", "bio1", "--role", "biomed", "--db", str(db)]) == 0
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "first")
    monkeypatch.setenv("PUMPCTL_NEW_OPERATOR_SECRET", "nurse-secret")
    assert main(["operator", "add", "rn1", "--role", "nurse", "--db", str(db), "--by", "bio1"]) == 0
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "nurse-secret")
    capsys.readouterr()
    assert main(["operator", "add", "rn2", "--role", "nurse", "--db", str(db), "--by", "rn1"]) == 3
    assert "may not manage operators" in _err(capsys)
    with EventLog(db) as log:
        assert roster.authenticate(log, "rn1", "nurse-secret", "program").role == "nurse"
        with pytest.raises(roster.AuthError):
            roster.authenticate(log, "rn1", "first", "program")
        assert [op.id for op in roster.operators(log)] == ["bio1", "rn1"]


# -- 3. the sealed log ---------------------------------------------------------
def _tamper(db: Path, sql: str, *params) -> None:
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER IF EXISTS events_no_update")
    con.execute("DROP TRIGGER IF EXISTS events_no_delete")
    con.execute(sql, params)
    con.commit()
    con.close()


def _log_with_rows(tmp_path: Path, n: int = 6) -> Path:
    db = tmp_path / "c.db"
    with EventLog(db) as log:
        for i in range(n):
            log.append(
                60.0 * i,
                "p1",
                "infusing",
                "program" if i == 2 else "projection",
                {"dose_mg_per_day": 600, "i": i},
                "rn1",
            )
    return db


@pytest.mark.parametrize(
    ("sql", "params", "row", "why"),
    [
        (
            "UPDATE events SET detail = ? WHERE id = 3",
            ('{"dose_mg_per_day":900,"i":2}',),
            3,
            "changed after it was written",
        ),
        ("UPDATE events SET t_s = t_s - 3600 WHERE id = 4", (), 4, "changed after"),
        ("UPDATE events SET operator = 'nobody' WHERE id = 2", (), 2, "changed after"),
        ("DELETE FROM events WHERE id = 3", (), 3, "row 3 is missing"),
        ("DELETE FROM events WHERE id >= 5", (), 5, "removed from the end"),
    ],
)
def test_verify_names_the_first_bad_row(tmp_path, capsys, sql, params, row, why):
    db = _log_with_rows(tmp_path)
    assert main(["log", "--db", str(db), "--verify"]) == 0
    _tamper(db, sql, *params)
    capsys.readouterr()
    assert main(["log", "--db", str(db), "--verify"]) == 1
    err = _err(capsys)
    assert f"FAILED at row {row}:" in err and why in err
    with EventLog(db, readonly=True) as log:
        assert verify_chain(log)[:2] == (False, row)


def test_a_forged_row_stops_the_controller_before_it_acts(tmp_path):
    db = _demo_db(tmp_path)
    _tamper(db, "UPDATE events SET detail = '{}' WHERE id = 2")
    with pytest.raises(InputError, match="fails its check at row 2"):
        open_session(db)
    with EventLog(db, readonly=True) as log:
        assert not [e for e in log.events() if e.event in ("resume", "program")]
    # the refusal released the lease
    from pumpctl.lease import Lease

    Lease.acquire(db).release()


def test_unparsable_row_is_reported_not_crashed_on(tmp_path, capsys):
    db = _log_with_rows(tmp_path)
    _tamper(db, "UPDATE events SET detail = '{not json' WHERE id = 2")
    assert main(["log", "--db", str(db)]) == 0
    captured = capsys.readouterr()
    assert "row 2: detail is not a JSON object" in captured.err
    assert len(captured.out.splitlines()) == 6


def test_log_is_read_only_and_refuses_foreign_sqlite_unchanged(tmp_path, capsys):
    other = tmp_path / "app.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'a')")
    con.commit()
    con.close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    for argv in (["log", "--db", str(other)], ["log", "--db", str(other), "--verify"]):
        assert main(argv) == 2
        assert "not a pumpctl event log" in _err(capsys)
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]
    # a real log listed read-only: bytes unchanged too
    db = _log_with_rows(tmp_path)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    assert main(["log", "--db", str(db), "--json"]) == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_unknown_event_name_lists_the_known_ones(tmp_path, capsys):
    db = _log_with_rows(tmp_path)
    assert main(["log", "--db", str(db), "--event", "nosuch"]) == 2
    err = _err(capsys)
    assert "--event 'nosuch' is not known; allowed:" in err and "program" in err


def test_missing_seal_key_is_refused(tmp_path):
    db = _log_with_rows(tmp_path)
    (tmp_path / "c.db.key").unlink()
    with pytest.raises(InputError, match="seal key .* is missing"):
        EventLog(db)
    with EventLog(db, readonly=True) as log:
        assert verify_chain(log)[0] is False


def test_key_dir_keeps_the_key_away_from_the_database(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    monkeypatch.setenv("PUMPCTL_KEY_DIR", str(keys))
    db = _log_with_rows(tmp_path)
    assert not (tmp_path / "c.db.key").exists()
    (key,) = keys.iterdir()
    assert key.stat().st_mode & 0o777 == 0o600
    with EventLog(db, readonly=True) as log:
        assert verify_chain(log)[0]


# -- 4. one controller per pump ------------------------------------------------
def test_second_controller_is_refused_naming_the_holder(tmp_path, capsys):
    db = _demo_db(tmp_path)
    sess = open_session(db)
    try:
        with pytest.raises(LeaseError, match=f"in use by controller pid {os.getpid()} on host"):
            open_session(db)
        assert main(["run", "--sim", "--db", str(db), "--operator", "rn-demo"]) == 3
        assert "one controller per pump" in _err(capsys)
    finally:
        sess.close()
    open_session(db).close()  # released on close


def test_stale_lease_of_a_killed_controller_is_taken_over_and_logged(tmp_path):
    db = _demo_db(tmp_path)
    code = textwrap.dedent(
        f"""
        import sys, time
        from pumpctl.session import open_session
        sess = open_session({str(db)!r})
        print("held", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseError, match=f"pid {proc.pid}"):
            open_session(db)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    sess = open_session(db)
    try:
        (ev,) = [e for e in sess.log.events() if e.event == "lease_takeover"]
        assert ev.detail["previous"]["pid"] == proc.pid
    finally:
        sess.close()
    sess = open_session(db)  # a clean close leaves no stale lease
    try:
        assert len([e for e in sess.log.events() if e.event == "lease_takeover"]) == 1
    finally:
        sess.close()


# -- 6. storage faults -----------------------------------------------------------
def _changes(log: EventLog) -> list[tuple[bool, str]]:
    seen: list[tuple[bool, str]] = []
    log.on_storage_change = lambda ok, why: seen.append((ok, why))
    return seen


def test_disk_full_keeps_events_in_memory_and_writes_them_later(tmp_path):
    db = tmp_path / "full.db"
    log = EventLog(db)
    seen = _changes(log)
    log.append(0.0, "p", "infusing", "program", {"x": "y" * 100})
    pages = log.db.execute("PRAGMA page_count").fetchone()[0]
    log.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    for i in range(20):
        ev = log.append(float(i + 1), "p", "infusing", "projection", {"i": i, "pad": "z" * 2000})
        assert ev.event == "projection"
    assert not log.storage_ok and seen and seen[0][0] is False and "full" in seen[0][1]
    assert 15 <= log.backlog <= 20  # the first may still fit in a free page
    assert [e.detail.get("i") for e in log.events()[1:]] == list(range(20))  # still visible
    log.db.execute("PRAGMA max_page_count = 1000000")  # space is back
    assert log.check_storage()
    assert log.storage_ok and seen[-1] == (True, "")
    log.close()
    with EventLog(db, readonly=True) as again:
        evs = again.events()
        assert [e.seq for e in evs] == list(range(1, 22))
        assert [e.detail.get("i") for e in evs[1:]] == list(range(20))
        assert verify_chain(again)[0]


def test_read_only_storage_then_back(tmp_path):
    db = tmp_path / "ro.db"
    log = EventLog(db)
    seen = _changes(log)
    log.db.execute("PRAGMA query_only = ON")  # writes refused, as on a read-only mount
    log.append(1.0, "p", "infusing", "alarm", {"kind": "occlusion"})
    assert not log.storage_ok and "readonly" in seen[0][1]
    log.db.execute("PRAGMA query_only = OFF")
    log.append(2.0, "p", "infusing", "alarm_cleared", {"kind": "occlusion"})
    assert log.storage_ok and log.backlog == 0
    log.close()
    with EventLog(db, readonly=True) as again:
        assert [e.event for e in again.events()] == ["alarm", "alarm_cleared"]


def test_deleted_database_is_detected_and_a_restored_copy_is_adopted(tmp_path):
    db = tmp_path / "d.db"
    log = EventLog(db)
    seen = _changes(log)
    log.append(1.0, "p", "infusing", "program", {})
    backup = tmp_path / "backup.db"
    log.db.execute(f"VACUUM INTO '{backup}'")
    db.unlink()
    log.append(2.0, "p", "infusing", "projection", {"n": 1})
    assert not log.storage_ok and "deleted" in seen[-1][1]
    assert not log.check_storage()
    shutil.copy(backup, db)  # the administrator restores the file
    assert log.check_storage() and log.storage_ok and log.backlog == 0
    log.append(3.0, "p", "infusing", "projection", {"n": 2})
    log.close()
    with EventLog(db, readonly=True) as again:
        assert [e.t_s for e in again.events()] == [1.0, 2.0, 3.0]
        assert verify_chain(again)[0]


def test_a_different_file_in_place_of_the_database_is_not_written(tmp_path):
    db = tmp_path / "d.db"
    log = EventLog(db)
    seen = _changes(log)
    log.append(1.0, "p", "infusing", "program", {})
    db.unlink()
    with EventLog(db) as impostor:
        impostor.append(9.0, "x", "idle", "program", {})
    log.append(2.0, "p", "infusing", "projection", {})
    assert not log.storage_ok and "replaced" in seen[-1][1]
    assert log.backlog == 1
    with EventLog(db, readonly=True) as other:
        assert [e.t_s for e in other.events()] == [9.0]


def test_soft_limit_override_needs_a_pharmacist_or_prescriber(tmp_path, capsys, monkeypatch):
    db = _demo_db(tmp_path)
    base = [
        "run", "--sim", "--db", str(db), "--speed", "3600", "--until-h", "0.01",
        "--dose-mg-per-day", "3000", "--weight-kg", "100", "--bag-ml", "250",
        "--operator", "rn-demo", "--override-reason", "refractory MAS",
    ]  # fmt: skip
    capsys.readouterr()
    assert main(base) == 2
    assert "needs --override-by" in _err(capsys)
    monkeypatch.setenv("PUMPCTL_OVERRIDE_SECRET", "demo")
    assert main([*base, "--override-by", "charge-demo"]) == 3
    assert "may not override soft limit" in _err(capsys)
    monkeypatch.setenv("PUMPCTL_OVERRIDE_SECRET", "wrong")
    assert main([*base, "--override-by", "pharm-demo"]) == 2
    assert "wrong secret for operator 'pharm-demo'" in _err(capsys)
    monkeypatch.setenv("PUMPCTL_OVERRIDE_SECRET", "demo")
    assert main([*base, "--override-by", "pharm-demo"]) == 0
    with EventLog(db, readonly=True) as log:
        (prog,) = [e for e in log.events() if e.event == "program"]
    assert prog.operator == "rn-demo"
    assert prog.detail["order"]["operator"] == "pharm-demo"
    assert prog.detail["order"]["override_reason"] == "refractory MAS"


def test_full_disk_mid_infusion_keeps_supervising_and_loses_nothing(tmp_path):
    from decimal import Decimal

    from pumpctl.order import Order

    db = _demo_db(tmp_path)
    sess = open_session(db, speed=7200, staff=True, operator="rn-demo", secret="demo")
    try:
        ctl = sess.controller
        assert ctl.program(Order(Decimal(600), Decimal(70), bag_ml=100), "rn-demo") is None
        seen = _changes(sess.log)
        sess.clock.run(until_s=3600.0)
        assert ctl.state.value == "infusing" and sess.log.storage_ok
        written = len(sess.log.events())
        pages = sess.log.db.execute("PRAGMA page_count").fetchone()[0]
        sess.log.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk fills up
        sess.clock.run(until_s=9 * 3600.0)  # through the end of bag 1 and the bag change
        assert seen and seen[0][0] is False
        assert sess.log.backlog > 0
        in_memory = sess.log.events()
        hung = [e.detail["bag"] for e in in_memory if e.event == "bag_hung"]
        assert hung == [1, 2]  # the controller kept supervising: bag 2 was requested and hung
        assert ctl.state.value == "infusing"
        sess.log.db.execute("PRAGMA max_page_count = 1000000")  # space is back
        assert sess.log.check_storage() and seen[-1] == (True, "")
        assert sess.close() == 0
    except BaseException:
        sess.close()
        raise
    with EventLog(db, readonly=True) as log:
        stored = log.events()
        assert verify_chain(log)[0]
    assert len(stored) >= len(in_memory) > written
    assert [(e.event, e.t_s) for e in stored[: len(in_memory)]] == [
        (e.event, e.t_s) for e in in_memory
    ]


def test_two_writers_interleave_in_one_chain(tmp_path):
    db = tmp_path / "two.db"
    with EventLog(db) as a, EventLog(db) as b:  # a controller and a `setting install`
        seqs = [
            (a if i % 3 else b).append(float(i), "p", "idle", "projection", {"i": i}).seq
            for i in range(12)
        ]
    assert seqs == list(range(1, 13))
    with EventLog(db, readonly=True) as log:
        assert verify_chain(log) == (True, None, "12 rows, chain intact")
        assert [e.detail["i"] for e in log.events()] == list(range(12))


def test_roster_and_trusted_keys_edited_outside_pumpctl_are_not_believed(tmp_path, capsys):
    db = _demo_db(tmp_path)
    con = sqlite3.connect(db)
    # an attacker swaps in a secret hash they know, and plants their own signing keys
    con.execute(
        "UPDATE operators SET secret_hash = ? WHERE id = 'biomed-demo'",
        (roster.hash_secret("mine"),),
    )
    a, a_pub = signing.generate(tmp_path / "evil_a.key")
    b, b_pub = signing.generate(tmp_path / "evil_b.key")
    for pub, role in ((a_pub, "author"), (b_pub, "approver")):
        con.execute(
            "INSERT INTO trusted_keys (public_key, role, added_by, seal) VALUES (?, ?, 'x', 'y')",
            (signing.parse_public(str(pub)), role),
        )
    con.commit()
    con.close()
    os.environ["PUMPCTL_OPERATOR_SECRET"] = "mine"
    lib = _copy(
        tmp_path, edit=("upper_hard_mg_per_kg_per_h = 2 ", "upper_hard_mg_per_kg_per_h = 200 ")
    )
    _sign(lib, a, b)
    capsys.readouterr()
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 2
    assert "changed outside pumpctl" in _err(capsys)
    with EventLog(db) as log:
        assert signing.demo_public("author") in library.trusted_keys(log)
        assert signing.parse_public(str(a_pub)) not in library.trusted_keys(log)
        assert "biomed-demo" not in [op.id for op in roster.operators(log)]


def test_active_version_comes_from_the_sealed_events_not_from_tables(tmp_path):
    db = _demo_db(tmp_path)
    first = load_setting(SHIPPED).version
    lib = _copy(tmp_path, edit=("escalate_min = 10 ", "escalate_min = 12 "))
    _sign(lib)
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 0
    second = load_setting(lib).version
    con = sqlite3.connect(db)
    con.execute("INSERT OR REPLACE INTO meta VALUES ('active_setting', ?)", (first,))
    con.execute("UPDATE settings SET installed_utc = '9999' WHERE version = ?", (first,))
    con.commit()
    con.close()
    with EventLog(db) as log:
        assert library.installed_setting(log).version == second


_FIELDS = ("t_s", "wall_utc", "pump", "state", "event", "detail", "operator")


@pytest.mark.parametrize("field", _FIELDS)
@pytest.mark.parametrize("row", [1, 4, 7])
def test_any_edit_of_any_field_is_found_at_that_row(tmp_path, field, row):
    db = tmp_path / "c.db"
    with EventLog(db) as log:
        for i in range(7):
            log.append(30.0 * i, "p1", "infusing", "projection", {"i": i}, "rn1")
    new = {"t_s": 12345.5, "detail": '{"i":99}'}.get(field, "forged")
    _tamper(db, f"UPDATE events SET {field} = ? WHERE id = ?", new, row)
    with EventLog(db, readonly=True) as log:
        ok, bad, why = verify_chain(log)
    assert (ok, bad) == (False, row) and "changed after it was written" in why


def test_a_console_on_a_real_pump_needs_an_operator(tmp_path, capsys):
    code = main(["console", "--port", "socket://127.0.0.1:9", "--db", str(tmp_path / "c.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--operator" in err
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened


def test_the_console_checks_the_operator_secret_before_it_opens(monkeypatch, capsys):
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "not-the-secret")
    code = main(["console", "--sim", "--operator", "rn-demo"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "wrong secret for operator 'rn-demo'" in err
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.setattr("pumpctl.console.app.ConsoleApp.run", lambda self: None)
    assert main(["console", "--sim", "--operator", "rn-demo"]) == 0  # the right one opens it
    assert "console closed" in capsys.readouterr().out
