"""The outbound queue in the run's SQLite database: nothing is lost while a receiver is down.

Every outbound message is committed to ``hl7_outbox`` before anyone tries to send it and
stays ``pending`` until the receiver acknowledges it with MSA ``AA`` (or ``CA``); it is
then ``delivered``. An answer that refuses it (``AR``, ``AE``, ``CR``, ``CE``) marks it
``refused`` with the answer kept: re-sending the same message would only be refused again.
Pending messages go out strictly in order, oldest first, also after a restart.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from pumpctl.hl7.outbound import Outbound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hl7_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    control_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    t_s REAL NOT NULL,
    created_utc TEXT NOT NULL,
    er7 TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    ack_code TEXT,
    done_utc TEXT
);
CREATE INDEX IF NOT EXISTS hl7_outbox_status ON hl7_outbox (status, id);
CREATE TABLE IF NOT EXISTS hl7_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_utc TEXT NOT NULL,
    control_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    patient TEXT NOT NULL,
    placer_order TEXT NOT NULL,
    sending_app TEXT NOT NULL,
    er7 TEXT NOT NULL
);
"""


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Outbox:
    """``hl7_outbox`` and ``hl7_orders`` on the run's database (own connection, WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # committed means on disk
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM hl7_outbox").fetchone()
        self._next = int(row[0]) + 1
        self.epoch_tag = ""

    def new_id(self) -> str:
        """A message control id unique in this database (and across runs by ``epoch_tag``)."""
        n = self._next
        self._next += 1
        return f"{self.epoch_tag}{n}"

    def add(self, out: Outbound) -> int:
        """Commit one message as pending; returns its row id."""
        cur = self.db.execute(
            "INSERT INTO hl7_outbox (control_id, kind, t_s, created_utc, er7) "
            "VALUES (?, ?, ?, ?, ?)",
            (out.control_id, out.kind, out.t_s, _utc(), out.er7),
        )
        return int(cur.lastrowid or 0)

    def next_pending(self) -> tuple[int, str, str] | None:
        """(row id, control id, ER7) of the oldest pending message."""
        row = self.db.execute(
            "SELECT id, control_id, er7 FROM hl7_outbox WHERE status = 'pending' "
            "ORDER BY id LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def delivered(self, row_id: int, code: str) -> None:
        """The receiver acknowledged it."""
        self.db.execute(
            "UPDATE hl7_outbox SET status = 'delivered', ack_code = ?, done_utc = ?, "
            "attempts = attempts + 1 WHERE id = ?",
            (code, _utc(), row_id),
        )

    def refused(self, row_id: int, code: str, text: str) -> None:
        """The receiver answered but did not accept it."""
        self.db.execute(
            "UPDATE hl7_outbox SET status = 'refused', ack_code = ?, last_error = ?, "
            "done_utc = ?, attempts = attempts + 1 WHERE id = ?",
            (code, text, _utc(), row_id),
        )

    def failed_attempt(self, row_id: int, why: str) -> None:
        """No answer (receiver down, timeout): it stays pending."""
        self.db.execute(
            "UPDATE hl7_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (why, row_id),
        )

    def counts(self) -> dict[str, int]:
        """Messages by status."""
        rows = self.db.execute("SELECT status, COUNT(*) FROM hl7_outbox GROUP BY status")
        return {str(s): int(n) for s, n in rows}

    def record_order(
        self,
        control_id: str,
        device_id: str,
        outcome: str,
        detail: str,
        patient: str,
        placer_order: str,
        sending_app: str,
        er7: str,
    ) -> None:
        """Keep every PCD-03 order received and what became of it."""
        self.db.execute(
            "INSERT INTO hl7_orders (received_utc, control_id, device_id, outcome, detail, "
            "patient, placer_order, sending_app, er7) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _utc(),
                control_id,
                device_id,
                outcome,
                detail,
                patient,
                placer_order,
                sending_app,
                er7,
            ),
        )

    def accepted_order(self) -> tuple[str, str, str, str] | None:
        """(device id, PID, placer order, sending app) of the last programmed order."""
        row = self.db.execute(
            "SELECT device_id, patient, placer_order, sending_app FROM hl7_orders "
            "WHERE outcome = 'AA' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), str(row[3]))

    def close(self) -> None:
        """Close the connection (pending messages stay for the next start)."""
        self.db.close()
