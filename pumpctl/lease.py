"""One controller per pump: an exclusive lease on the event database.

The lease is an exclusive ``flock`` on ``PATH.lock`` (the kernel drops it when the holder
dies, however it dies) plus a heartbeat row in ``meta`` saying who holds it (pid, host,
since, last beat) so a refused controller can name the holder. A heartbeat row left by a
holder that is gone (the lock is free) is a stale lease: it is taken over and logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pumpctl.errors import PumpctlError


class LeaseError(PumpctlError):
    """Another controller holds this database (exit 3: refused)."""

    exit_code = 3


def lock_path(db: str | Path) -> Path:
    """The lock file beside the database."""
    return Path(str(db) + ".lock")


def _holder_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "another controller (no heartbeat yet)"
    return (
        f"controller pid {info.get('pid')} on host {info.get('host')} since "
        f"{info.get('since_utc')} (last heartbeat {info.get('beat_utc')})"
    )


def read_holder(db: str | Path) -> dict[str, Any] | None:
    """The heartbeat row of ``db`` (read-only), or None."""
    try:
        uri = "file:" + urllib.parse.quote(os.path.abspath(str(db))) + "?mode=ro"
        con = sqlite3.connect(uri, uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'lease'").fetchone()
        finally:
            con.close()
        return None if row is None else dict(json.loads(row[0]))
    except (sqlite3.Error, ValueError, TypeError):
        return None


@dataclass
class Lease:
    """A held lease; ``release`` (or process death) frees it."""

    db: str
    fd: int
    info: dict[str, Any]
    stale: dict[str, Any] | None  # the dead holder's heartbeat, if we took over

    @classmethod
    def acquire(cls, db: str | Path) -> Lease:
        """Take the lock or raise ``LeaseError`` naming the holder."""
        path = lock_path(db)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LeaseError(f"{path}: cannot open the lease lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseError(
                f"{db}: in use by {_holder_text(read_holder(db))}; allowed: one controller "
                "per pump (stop that one first)"
            ) from None
        prev = read_holder(db) if Path(db).exists() else None
        stale = prev if prev and not prev.get("released") else None
        return cls(str(db), fd, {"pid": os.getpid(), "host": socket.gethostname()}, stale)

    def beat(self, log: Any, wall_utc: str) -> None:
        """Write the heartbeat row (never raises: a storage fault is the log's to report)."""
        self.info.setdefault("since_utc", wall_utc)
        self.info["beat_utc"] = wall_utc
        with contextlib.suppress(sqlite3.Error, OSError):
            log.meta_set("lease", json.dumps(self.info, sort_keys=True))

    def release(self, log: Any = None) -> None:
        """Mark the heartbeat released and drop the lock."""
        if self.fd < 0:
            return
        if log is not None:
            with contextlib.suppress(sqlite3.Error, OSError):
                log.meta_set("lease", json.dumps({**self.info, "released": True}, sort_keys=True))
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        self.fd = -1
