"""Append-only, tamper-evident event log: SQLite in WAL mode, one committed row per event.

Every state change, alarm, override and setting install is appended (and committed)
*before* the action it records is taken, so a crash can lose an action but never a
record of one. Each row carries the hash of the row before it and its own, an HMAC-SHA256
keyed with a secret held outside the database (``key_path``), so an edited, back-dated,
reordered or deleted row is found by ``verify_chain``. When the database cannot be
written (disk full, read-only, deleted or replaced) ``append`` keeps the events in memory,
turns ``storage_ok`` off (calling ``on_storage_change``) and writes the backlog when storage
comes back. ``MemoryEventLog`` has the same interface for fast simulations.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pumpctl.errors import InputError
from pumpctl.eventkinds import EventKind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_s REAL NOT NULL,
    wall_utc TEXT NOT NULL,
    pump TEXT NOT NULL,
    state TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    operator TEXT NOT NULL,
    prev_hash TEXT,
    row_hash TEXT
);
CREATE TABLE IF NOT EXISTS settings (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    content TEXT NOT NULL,
    installed_utc TEXT NOT NULL,
    operator TEXT NOT NULL,
    signatures TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_pump (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_s REAL NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operators (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    active INTEGER NOT NULL,
    added_by TEXT NOT NULL,
    seal TEXT
);
CREATE TABLE IF NOT EXISTS trusted_keys (
    public_key TEXT NOT NULL,
    role TEXT NOT NULL,
    added_by TEXT NOT NULL,
    seal TEXT,
    PRIMARY KEY (public_key, role)
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""

_INSERT = (
    "INSERT INTO events (id, t_s, wall_utc, pump, state, event, detail, operator, "
    "prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GENESIS = "0" * 64
KEY_DIR_ENV = "PUMPCTL_KEY_DIR"

#: Event names pumpctl writes (``pumpctl log --event`` accepts these and any in the log).
KNOWN_EVENTS = tuple(sorted(k.value for k in EventKind))


class Event(NamedTuple):
    """One logged event (``problem`` says why a stored row could not be read, if it could not).

    A named tuple: immutable like the record it is, and built in one step on the
    simulation's hot path (a frozen dataclass costs several times more).
    """

    seq: int
    t_s: float
    wall_utc: str
    pump: str
    state: str
    event: str
    detail: dict[str, Any]
    operator: str
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        out = {
            "seq": self.seq,
            "t_s": round(self.t_s, 3),
            "wall_utc": self.wall_utc,
            "pump": self.pump,
            "state": self.state,
            "event": self.event,
            "detail": self.detail,
            "operator": self.operator,
        }
        if self.problem:
            out["problem"] = self.problem
        return out


_new_tuple = tuple.__new__


def _new_event(
    seq: int,
    t_s: float,
    wall_utc: str,
    pump: str,
    state: str,
    event: str,
    detail: dict[str, Any],
    operator: str,
) -> Event:
    """``Event(...)`` without the keyword handling of the named tuple's ``__new__``."""
    return _new_tuple(Event, (seq, t_s, wall_utc, pump, state, event, detail, operator, ""))


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _log_install(
    log: MemoryEventLog | EventLog, setting: Any, operator: str, t_s: float, pending: bool
) -> None:
    """The event every setting install leaves, whichever log it goes to."""
    detail = {"name": setting.name, "version": setting.version, "path": setting.path}
    if pending:
        detail["pending"] = True
    log.append(t_s, "-", "-", "setting_install", detail, operator)


def key_path(db_path: str | Path) -> Path:
    """The seal key of ``db_path``: ``$PUMPCTL_KEY_DIR/NAME-HASH.key``, else ``PATH.key``."""
    key_dir = os.environ.get(KEY_DIR_ENV)
    if key_dir:
        full = os.path.abspath(str(db_path))
        tag = hashlib.sha256(full.encode()).hexdigest()[:16]
        return Path(key_dir) / f"{Path(full).name}-{tag}.key"
    return Path(str(db_path) + ".key")


def _read_key(path: Path) -> bytes | None:
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the log's seal key: {exc.strerror}") from None
    try:
        key = bytes.fromhex(data.decode())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 32:
        raise InputError(f"{path}: not a pumpctl seal key; allowed: 64 hex digits")
    return key


def _new_key(path: Path) -> bytes:
    key = os.urandom(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
    except FileExistsError:
        existing = _read_key(path)
        assert existing is not None
        return existing
    except OSError as exc:
        raise InputError(f"{path}: cannot write the log's seal key: {exc.strerror}") from None
    return key


def row_seal(
    key: bytes,
    seq: int,
    t_s: float,
    wall: str,
    pump: str,
    state: str,
    event: str,
    detail_text: str,
    operator: str,
    prev_hash: str,
) -> str:
    """HMAC-SHA256 over one row's stored fields and the previous row's seal."""
    msg = json.dumps(
        [seq, float(t_s).hex(), wall, pump, state, event, detail_text, operator, prev_hash],
        separators=(",", ":"),
    )
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def _head_seal(key: bytes, seq: int, row_hash: str) -> str:
    msg = f"pumpctl chain head|{seq}|{row_hash}".encode()
    return f"{seq}:{row_hash}:" + hmac.new(key, msg, hashlib.sha256).hexdigest()


class MemoryEventLog:
    """Events kept in a list (simulations); same interface as ``EventLog``."""

    def __init__(self, wall_epoch_s: float = 0.0) -> None:
        self.wall_epoch_s = wall_epoch_s
        self._events: list[Event] = []
        self.settings: dict[str, tuple[str, str]] = {}  # version -> (name, operator)
        self.storage_ok = True
        self.storage_problem = ""
        self.on_storage_change: Callable[[bool, str], None] | None = None

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
        # wall time is filled in only when written to SQLite; ``_new_event`` inlined
        events = self._events
        ev = _new_tuple(
            Event, (len(events) + 1, t_s, "", pump, state, event, detail or {}, operator, "")
        )
        events.append(ev)
        return ev

    def events(self) -> list[Event]:
        """All events in order."""
        return list(self._events)

    def install_setting(
        self, setting: Any, operator: str, t_s: float = 0.0, *, pending: bool = False
    ) -> None:
        """Record a setting install."""
        _log_install(self, setting, operator, t_s, pending)
        self.settings[setting.version] = (setting.name, operator)

    def is_installed(self, version: str) -> bool:
        """Was this setting version installed?"""
        return version in self.settings

    def check_storage(self) -> bool:
        """Memory never fails."""
        return True

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


class UnreadableLogError(InputError):
    """A stored page of the log cannot be read (a damaged file): one line, exit 2."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: the event log cannot be read ({reason}); allowed: an undamaged pumpctl "
            "event log (restore it from a copy)"
        )
        self.path, self.reason = path, reason


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turn SQLite's errors on reading rows (``database disk image is malformed``) into
    ``UnreadableLogError``, as opening a damaged file already is."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise UnreadableLogError(path, str(exc)) from None


def _tables(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: {r[1] for r in db.execute(f'PRAGMA table_info("{n}")')} for n in names}


_NEEDED = {
    "events": {"id", "t_s", "wall_utc", "pump", "state", "event", "detail", "operator"},
    "meta": {"key", "value"},
}


def _is_pumpctl(tables: dict[str, set[str]]) -> bool:
    return all(cols <= tables.get(name, set()) for name, cols in _NEEDED.items())


class EventLog:
    """Durable append-only log in SQLite (WAL, synchronous=FULL), sealed in a hash chain.

    ``readonly=True`` opens with SQLite's ``mode=ro`` and changes nothing (``pumpctl log``).
    A file that is not a pumpctl log is refused either way, before anything is written.
    """

    def __init__(
        self,
        path: str | Path,
        wall_epoch_s: float = 0.0,
        *,
        readonly: bool = False,
        key_file: str | Path | None = None,
    ) -> None:
        self.path = str(path)
        self.wall_epoch_s = wall_epoch_s
        self.speed = 1.0  # sim seconds per wall second, for wall-clock stamps
        self.readonly = readonly
        self.key_file = Path(key_file) if key_file is not None else key_path(self.path)
        self.storage_ok = True
        self.storage_problem = ""
        self.on_storage_change: Callable[[bool, str], None] | None = None
        self._backlog: list[tuple[tuple[Any, ...], Event]] = []
        if Path(self.path).is_dir():
            raise InputError(f"{self.path}: is a directory; allowed: an event log file")
        if readonly and not Path(self.path).is_file():
            raise InputError(f"{self.path}: no such event log")
        try:
            self.db = self._connect()
            tables = _tables(self.db)
            if tables and not _is_pumpctl(tables):
                self.db.close()
                raise InputError(
                    f"{self.path}: not a pumpctl event log (tables: {', '.join(sorted(tables))})"
                    "; nothing was changed"
                )
            if readonly and not tables:
                self.db.close()
                raise InputError(f"{self.path}: not a pumpctl event log (empty); nothing changed")
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(_SCHEMA)
                self._migrate(tables)
            self._ident = self._stat_ident()
            last = self.db.execute(
                "SELECT id, row_hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
        except sqlite3.OperationalError as exc:  # read-only, locked, I/O: not a format problem
            with contextlib.suppress(Exception):
                self.db.close()
            raise InputError(f"{self.path}: cannot open the event log ({exc})") from None
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self.db.close()
            raise InputError(f"{self.path}: not a pumpctl event log ({exc})") from None
        self._written_seq = int(last[0]) if last else 0
        self._written_hash = (last[1] or GENESIS) if last else GENESIS
        self.key = _read_key(self.key_file)
        if self.key is None and not readonly:
            sealed = self.db.execute(
                "SELECT 1 FROM events WHERE row_hash IS NOT NULL LIMIT 1"
            ).fetchone()
            if sealed:
                self.db.close()
                raise InputError(
                    f"{self.key_file}: the seal key of {self.path} is missing; allowed: restore "
                    f"the key file (or set {KEY_DIR_ENV} to its directory)"
                )
            self.key = _new_key(self.key_file)

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise InputError(f"{self.path}: cannot open the event log ({exc})") from None

    def _migrate(self, tables: dict[str, set[str]]) -> None:
        """Add the columns a log made by an older pumpctl lacks."""
        for table, col, decl in (
            ("events", "prev_hash", "TEXT"),
            ("events", "row_hash", "TEXT"),
            ("settings", "signatures", "TEXT NOT NULL DEFAULT '[]'"),
            ("operators", "seal", "TEXT"),
            ("trusted_keys", "seal", "TEXT"),
        ):
            if table in tables and col not in tables[table]:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")

    def _stat_ident(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

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
        """Seal, insert and commit one event; returns it with its sequence number.

        If the database cannot be written the event is kept in memory (``storage_ok``
        turns False) and written, in order, once storage is back.
        """
        wall = _utc(self.wall_epoch_s + t_s / self.speed)
        return self._append_row(t_s, wall, pump, state, event, detail or {}, operator)

    def seal(self, *fields: object) -> str:
        """HMAC of ``fields`` with the log's key: roster and trusted-key rows carry one, so
        an edit made outside pumpctl (a swapped secret hash, a planted key) is not believed."""
        if self.key is None:
            raise InputError(f"{self.key_file}: the seal key is missing; cannot seal")
        msg = json.dumps([str(f) for f in fields], separators=(",", ":")).encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()

    def sealed(self, seal: str | None, *fields: object) -> bool:
        """Does ``seal`` match ``fields``?"""
        if self.key is None or not isinstance(seal, str):
            return False
        return hmac.compare_digest(seal, self.seal(*fields))

    def wall_at(self, t_s: float) -> str:
        """The UTC wall-clock stamp of run time ``t_s``."""
        return _utc(self.wall_epoch_s + t_s / self.speed)

    def _append_row(
        self,
        t_s: float,
        wall: str,
        pump: str,
        state: str,
        event: str,
        detail: dict[str, Any],
        operator: str,
    ) -> Event:
        if self.readonly or self.key is None:
            raise InputError(f"{self.path}: opened read-only; cannot append")
        text = json.dumps(detail, sort_keys=True, default=str)
        seq = self._written_seq + len(self._backlog) + 1  # final once written
        ev = Event(seq, t_s, wall, pump, state, event, detail, operator)
        self._backlog.append(((t_s, wall, pump, state, event, text, operator), ev))
        written = self._flush()
        return written[-1] if written else ev

    def _set_storage(self, ok: bool, why: str) -> None:
        changed = ok != self.storage_ok
        self.storage_ok, self.storage_problem = ok, why
        if changed and self.on_storage_change is not None:
            self.on_storage_change(ok, why)

    def _check_file(self) -> str:
        """Why the database file is not the one we write ("" when it is)."""
        ident = self._stat_ident()
        if ident == self._ident:
            return ""
        if ident is None:
            return f"{self.path} was deleted or moved"
        # Another file is at the path: adopt it only if it holds exactly what we wrote.
        try:
            other = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            last = other.execute(
                "SELECT id, row_hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error:
            return f"{self.path} was replaced by a file that is not this log"
        got = (int(last[0]), last[1]) if last else (0, GENESIS)
        if got != (self._written_seq, self._written_hash):
            other.close()
            return f"{self.path} was replaced by a different log"
        with contextlib.suppress(sqlite3.Error):
            other.execute("PRAGMA journal_mode=WAL")
            other.execute("PRAGMA synchronous=FULL")
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        self.db, self._ident = other, ident
        return ""

    def _flush(self) -> list[Event]:
        """Seal and write the backlog in one transaction; the events written, with their
        final sequence numbers ([] and storage not ok if it cannot be written).

        The chain continues from the newest stored row, read inside the write lock, so
        another pumpctl process appending (``setting install`` during a run) is safe.
        """
        if not self._backlog:
            return []
        problem = self._check_file()
        if problem:
            self._set_storage(False, problem)
            return []
        was_down = not self.storage_ok
        assert self.key is not None
        rows, done = [], []
        try:
            self.db.execute("BEGIN IMMEDIATE")
            last = self.db.execute(
                "SELECT id, row_hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
            seq = int(last[0]) if last else 0
            prev = (last[1] or GENESIS) if last else GENESIS
            for fields, ev in self._backlog:
                seq += 1
                seal = row_seal(self.key, seq, *fields, prev)  # type: ignore[call-arg]
                rows.append((seq, *fields, prev, seal))
                done.append(ev._replace(seq=seq))
                prev = seal
            self.db.executemany(_INSERT, rows)
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('chain_head', ?)",
                (_head_seal(self.key, seq, prev),),
            )
            self.db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            self._set_storage(False, f"cannot write {self.path}: {exc}")
            return []
        self._written_seq, self._written_hash = seq, prev
        self._backlog.clear()
        if was_down:
            self._set_storage(True, "")
        return done

    @property
    def backlog(self) -> int:
        """Events kept in memory, not yet written."""
        return len(self._backlog)

    def check_storage(self) -> bool:
        """Check the file is still ours and write any backlog; call it periodically."""
        if self.readonly:
            return True
        if self._backlog:
            return bool(self._flush())
        problem = self._check_file()
        if problem:
            self._set_storage(False, problem)
            return False
        if not self.storage_ok:
            self._set_storage(True, "")
        return True

    def extend(self, events: Iterable[Event], wall_epoch_s: float) -> None:
        """Bulk-insert events (from a simulation) in one transaction, sealed in the chain."""
        for e in events:
            text = json.dumps(e.detail, sort_keys=True, default=str)
            wall = _utc(wall_epoch_s + e.t_s)
            self._backlog.append(((e.t_s, wall, e.pump, e.state, e.event, text, e.operator), e))
        self._flush()

    def raw_rows(self) -> list[tuple[Any, ...]]:
        """Stored rows as they are: id, t_s, wall_utc, pump, state, event, detail, operator,
        prev_hash, row_hash."""
        with _reading(self.path):
            cols = _tables(self.db).get("events", set())
            sel = "prev_hash, row_hash" if "row_hash" in cols else "NULL, NULL"
            return list(
                self.db.execute(
                    "SELECT id, t_s, wall_utc, pump, state, event, detail, operator, "
                    f"{sel} FROM events ORDER BY id"
                )
            )

    def events(self) -> list[Event]:
        """All events in order (stored rows, then any not yet written); never raises on a
        row whose detail does not parse: that row's ``problem`` says so."""
        out = []
        for r in self.raw_rows():
            problem = ""
            try:
                detail = json.loads(r[6])
                if not isinstance(detail, dict):
                    raise ValueError("not an object")
            except (ValueError, TypeError, RecursionError) as exc:
                detail, problem = {}, f"row {r[0]}: detail is not a JSON object ({exc})"
            try:
                t_s = float(r[1])
            except (TypeError, ValueError):
                t_s, problem = float("nan"), f"row {r[0]}: t_s {r[1]!r} is not a number"
            out.append(
                Event(
                    int(r[0]),
                    t_s,
                    str(r[2]),
                    str(r[3]),
                    str(r[4]),
                    str(r[5]),
                    detail,
                    str(r[7]),
                    problem,
                )
            )
        out.extend(ev for _row, ev in self._backlog)
        return out

    # -- settings -----------------------------------------------------------
    def install_setting(
        self,
        setting: Any,
        operator: str,
        t_s: float = 0.0,
        *,
        signatures: list[dict[str, str]] | None = None,
        pending: bool = False,
    ) -> None:
        """Record a setting and its version (the event is committed first).

        It becomes the active setting unless ``pending`` (a run is under way: it takes
        effect only when a nurse accepts it at the pump, ``pumpctl.library.accept_pending``).
        Which version is active is read from these sealed events, never from a table.
        """
        _log_install(self, setting, operator, t_s, pending)
        self.db.execute(
            "INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                setting.version,
                setting.name,
                setting.path,
                json.dumps(setting.raw, sort_keys=True),
                _utc(self.wall_epoch_s + t_s),
                operator,
                json.dumps(signatures or []),
            ),
        )

    def is_installed(self, version: str) -> bool:
        """Was this setting version installed?"""
        with _reading(self.path):
            row = self.db.execute("SELECT 1 FROM settings WHERE version = ?", (version,)).fetchone()
        return row is not None

    # -- small key/value store for run metadata -----------------------------
    def meta_get(self, key: str) -> str | None:
        """A stored run parameter, or None."""
        with _reading(self.path):
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        """Store a run parameter (committed at once)."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> int:
        """Write what can be written and close the database; how many events were not."""
        if self._backlog:
            self._flush()
        self.db.close()
        return len(self._backlog)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> list[Event]:
    """Every event of a pumpctl log, opened read-only and verified before it is trusted.

    A file that is not a pumpctl log, a chain that fails verification (an edited,
    inserted or removed row) or a row that does not parse is one clear ``InputError``
    naming the row, never a traceback, and the file is never changed.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: is a directory; allowed: a pumpctl event log file (SQLite)")
    if not p.is_file():
        raise InputError(f"{path}: no such event log; allowed: a pumpctl event log (SQLite)")
    log = EventLog(p, readonly=True)
    try:
        ok, bad, why = verify_chain(log)
        if not ok:
            raise InputError(
                f"{path}: the event log failed verification at row {bad}: {why}; "
                "nothing is built from a log that does not verify"
            )
        events = log.events()
    finally:
        log.close()
    broken = [e for e in events if e.problem]
    if broken:
        raise InputError(f"{path}: row {broken[0].seq}: {broken[0].problem}")
    return events


def probe(path: str | Path) -> None:
    """Raise ``InputError`` unless ``path`` is absent, empty or a pumpctl log (reads only)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a directory; allowed: an event log file")
    if p.is_file() and p.stat().st_size > 0:
        EventLog(p, readonly=True).close()


def is_demo(log: Any) -> bool:
    """Was this database made with ``--demo`` (demo keys and roster)? Screens say DEMO."""
    return isinstance(log, EventLog) and log.meta_get("demo") == "1"


def verify_chain(log: Any) -> tuple[bool, int | None, str]:
    """Check every stored row's seal and link: ``(ok, first_bad_seq, why)``.

    Finds an edited, back-dated, inserted, reordered or deleted row (and rows removed
    from the end, through the sealed chain head). A memory log is trivially fine.
    """
    if not isinstance(log, EventLog):
        return True, None, "an in-memory log"
    rows = log.raw_rows()
    if log.key is None:
        if not rows:
            return True, None, "empty log"
        return False, int(rows[0][0]), f"the seal key {log.key_file} is missing; cannot verify"
    prev, expect = GENESIS, 1
    for r in rows:
        seq = int(r[0])
        if seq != expect:
            return False, expect, f"row {expect} is missing (row {seq} follows row {expect - 1})"
        if r[9] is None:
            return False, seq, f"row {seq} is not sealed (written outside pumpctl or before v2)"
        if r[8] != prev:
            return (
                False,
                seq,
                f"row {seq} does not follow row {seq - 1}: a row was removed or moved",
            )
        try:
            seal = row_seal(log.key, seq, float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8])
        except (TypeError, ValueError):
            return False, seq, f"row {seq} has a field of the wrong type"
        if not hmac.compare_digest(seal, str(r[9])):
            return (
                False,
                seq,
                f"row {seq} was changed after it was written (its seal does not match)",
            )
        prev, expect = str(r[9]), expect + 1
    head = log.meta_get("chain_head")
    n = expect - 1
    if head is None:
        if n:
            return False, n, "the chain head is missing from meta"
        return True, None, "empty log"
    try:
        h_seq, h_hash, _mac = head.split(":")
        good = hmac.compare_digest(head, _head_seal(log.key, int(h_seq), h_hash))
    except ValueError:
        good = False
    if not good:
        return False, n or None, "the chain head in meta was edited"
    if int(h_seq) > n:
        return False, n + 1, f"rows {n + 1}-{h_seq} were removed from the end of the log"
    if int(h_seq) < n:
        return False, int(h_seq) + 1, f"rows after {h_seq} were added outside pumpctl"
    return True, None, f"{n} rows, chain intact"


def known_event_names(log: Any = None) -> list[str]:
    """Event names pumpctl writes, plus any found in ``log``."""
    names = set(KNOWN_EVENTS)
    if isinstance(log, EventLog):
        with _reading(log.path):
            names |= {str(r[0]) for r in log.db.execute("SELECT DISTINCT event FROM events")}
    return sorted(names)
