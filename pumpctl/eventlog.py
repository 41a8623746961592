"""Append-only event log: SQLite in WAL mode, one committed row per event.

Every state change, alarm, override and setting install is appended (and committed)
*before* the action it records is taken, so a crash can lose an action but never a
record of one. ``MemoryEventLog`` has the same interface for fast simulations; its
events can be written to SQLite in one transaction afterwards.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pumpctl.errors import InputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_s REAL NOT NULL,
    wall_utc TEXT NOT NULL,
    pump TEXT NOT NULL,
    state TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    operator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    content TEXT NOT NULL,
    installed_utc TEXT NOT NULL,
    operator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_pump (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_s REAL NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class Event:
    """One logged event."""

    seq: int
    t_s: float
    wall_utc: str
    pump: str
    state: str
    event: str
    detail: dict[str, Any]
    operator: str

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return {
            "seq": self.seq,
            "t_s": round(self.t_s, 3),
            "wall_utc": self.wall_utc,
            "pump": self.pump,
            "state": self.state,
            "event": self.event,
            "detail": self.detail,
            "operator": self.operator,
        }


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _log_install(log: MemoryEventLog | EventLog, setting: Any, operator: str, t_s: float) -> None:
    """The event every setting install leaves, whichever log it goes to."""
    detail = {"name": setting.name, "version": setting.version, "path": setting.path}
    log.append(t_s, "-", "-", "setting_install", detail, operator)


class MemoryEventLog:
    """Events kept in a list (simulations); same interface as ``EventLog``."""

    def __init__(self, wall_epoch_s: float = 0.0) -> None:
        self.wall_epoch_s = wall_epoch_s
        self._events: list[Event] = []
        self.settings: dict[str, tuple[str, str]] = {}  # version -> (name, operator)

    def append(
        self,
        t_s: float,
        pump: str,
        state: str,
        event: str,
        detail: dict[str, Any] | None = None,
        operator: str = "system",
    ) -> Event:
        """Record an event (before the action it describes)."""
        ev = Event(
            len(self._events) + 1,
            t_s,
            "",  # wall time is filled in only when written to SQLite
            pump,
            state,
            event,
            detail or {},
            operator,
        )
        self._events.append(ev)
        return ev

    def events(self) -> list[Event]:
        """All events in order."""
        return list(self._events)

    def install_setting(self, setting: Any, operator: str, t_s: float = 0.0) -> None:
        """Record a setting install."""
        _log_install(self, setting, operator, t_s)
        self.settings[setting.version] = (setting.name, operator)

    def is_installed(self, version: str) -> bool:
        """Was this setting version installed?"""
        return version in self.settings

    def write_sqlite(self, path: str | Path) -> None:
        """Write every event to a new SQLite log in one transaction."""
        with EventLog(path) as log:
            log.extend(self._events, self.wall_epoch_s)
            log.db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> MemoryEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog:
    """Durable append-only log in SQLite (WAL, synchronous=FULL)."""

    def __init__(self, path: str | Path, wall_epoch_s: float = 0.0) -> None:
        self.path = str(path)
        self.wall_epoch_s = wall_epoch_s
        self.speed = 1.0  # sim seconds per wall second, for wall-clock stamps
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a pumpctl event log ({exc})") from None

    # -- events -----------------------------------------------------------
    def append(
        self,
        t_s: float,
        pump: str,
        state: str,
        event: str,
        detail: dict[str, Any] | None = None,
        operator: str = "system",
    ) -> Event:
        """Insert and commit one event; returns it with its sequence number."""
        wall = _utc(self.wall_epoch_s + t_s / self.speed)
        text = json.dumps(detail or {}, sort_keys=True, default=str)
        cur = self.db.execute(
            "INSERT INTO events (t_s, wall_utc, pump, state, event, detail, operator) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t_s, wall, pump, state, event, text, operator),
        )
        return Event(int(cur.lastrowid or 0), t_s, wall, pump, state, event, detail or {}, operator)

    def extend(self, events: Iterable[Event], wall_epoch_s: float) -> None:
        """Bulk-insert events (from a simulation) in one transaction."""
        rows = [
            (
                e.t_s,
                _utc(wall_epoch_s + e.t_s),
                e.pump,
                e.state,
                e.event,
                json.dumps(e.detail, sort_keys=True, default=str),
                e.operator,
            )
            for e in events
        ]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO events (t_s, wall_utc, pump, state, event, detail, operator) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def events(self) -> list[Event]:
        """All events in order."""
        rows = self.db.execute(
            "SELECT id, t_s, wall_utc, pump, state, event, detail, operator FROM events ORDER BY id"
        )
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7]) for r in rows]

    # -- settings -----------------------------------------------------------
    def install_setting(self, setting: Any, operator: str, t_s: float = 0.0) -> None:
        """Record a setting and its version; the event is committed first."""
        _log_install(self, setting, operator, t_s)
        self.db.execute(
            "INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?, ?, ?)",
            (
                setting.version,
                setting.name,
                setting.path,
                json.dumps(setting.raw, sort_keys=True),
                _utc(self.wall_epoch_s + t_s),
                operator,
            ),
        )

    def is_installed(self, version: str) -> bool:
        """Was this setting version installed?"""
        row = self.db.execute("SELECT 1 FROM settings WHERE version = ?", (version,)).fetchone()
        return row is not None

    # -- small key/value store for run metadata -----------------------------
    def meta_get(self, key: str) -> str | None:
        """A stored run parameter, or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        """Store a run parameter (committed at once)."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> list[Event]:
    """Every event of a pumpctl log, opened read-only (the file is never changed).

    A file that is not a pumpctl log, or a row whose detail does not parse, is one clear
    ``InputError``, never a traceback.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such event log; allowed: a pumpctl event log (SQLite)")
    try:
        db = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InputError(f"{path}: cannot open ({exc})") from None
    try:
        try:
            rows = db.execute(
                "SELECT id, t_s, wall_utc, pump, state, event, detail, operator FROM events "
                "ORDER BY id"
            ).fetchall()
        except sqlite3.DatabaseError:
            raise InputError(
                f"{path}: not a pumpctl event log (no events table); allowed: a pumpctl log"
            ) from None
    finally:
        db.close()
    out: list[Event] = []
    for r in rows:
        try:
            detail = json.loads(r[6])
        except (TypeError, ValueError):
            raise InputError(
                f"{path}: event row {r[0]} has a detail that is not JSON; the log is damaged"
            ) from None
        out.append(Event(r[0], r[1], r[2], r[3], r[4], r[5], detail, r[7]))
    return out
