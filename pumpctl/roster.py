"""Operators with roles, their secrets (salted scrypt) and what each role may do.

The roster lives in the event database (table ``operators``), managed by a biomed
administrator. A command that changes delivery or the drug library authenticates its
operator (``authenticate``) before it acts. See ``docs/trust.md``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass
from typing import Any

from pumpctl.errors import InputError, RefusedError

ROLES = ("biomed", "pharmacist", "nurse", "charge_nurse", "prescriber")

#: What each act needs. A role may do only its own acts.
ACTS: dict[str, tuple[str, ...]] = {
    "install_setting": ("biomed",),
    "trust_key": ("biomed",),
    "manage_operators": ("biomed",),
    "program": ("nurse", "charge_nurse"),  # start a new run (programs the pump)
    "operate": ("nurse", "charge_nurse"),  # resume a run, bag changes, alarms
    "accept_setting": ("nurse", "charge_nurse"),  # a new library takes effect at the pump
    "override_soft_limit": ("pharmacist", "prescriber"),
}

DEMO_SECRET = "demo"
#: The roster a ``--demo`` database starts with (secret ``demo`` for all).
DEMO_ROSTER = (
    ("biomed-demo", "biomed"),
    ("pharm-demo", "pharmacist"),
    ("rn-demo", "nurse"),
    ("charge-demo", "charge_nurse"),
    ("md-demo", "prescriber"),
)
SECRET_ENV = "PUMPCTL_OPERATOR_SECRET"
NEW_SECRET_ENV = "PUMPCTL_NEW_OPERATOR_SECRET"

# scrypt cost: 2**14 x 8 x 1 is about 16 MiB and tens of ms per check (RFC 7914 interactive).
_N, _R, _P = 2**14, 8, 1


class AuthError(InputError):
    """Unknown or empty operator, or a wrong secret (exit 2)."""


class NotPermittedError(RefusedError):
    """The operator's role may not do this act (exit 3)."""


@dataclass(frozen=True)
class Operator:
    """One roster entry."""

    id: str
    role: str


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (base64) for ``secret``."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_secret(secret: str, stored: str) -> bool:
    """Does ``secret`` match the stored hash? (constant-time compare)"""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got, want)


_DUMMY = hash_secret("not a secret", b"0" * 16)


def check_id(op_id: str | None) -> str:
    if op_id is None or not op_id.strip():
        raise AuthError("the operator is empty; allowed: an operator id from the roster")
    if op_id != op_id.strip() or any(c.isspace() for c in op_id) or len(op_id) > 64:
        raise AuthError(f"operator {op_id!r}; allowed: one word of at most 64 characters")
    return op_id


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"role {role!r} is not allowed; allowed: {', '.join(ROLES)}")
    return role


def read_secret(prompt: str, env: str = SECRET_ENV) -> str:
    """The secret from ``env`` or, at a terminal, a no-echo prompt; never empty."""
    secret = os.environ.get(env)
    if secret is None:
        if not sys.stdin.isatty():
            raise AuthError(f"no secret: set {env} or run at a terminal to be asked")
        try:
            secret = getpass.getpass(prompt)
        except EOFError:
            secret = ""
    if not secret:
        raise AuthError("the secret is empty; allowed: the operator's secret")
    return secret


def operators(log: Any) -> list[Operator]:
    """The active roster, by id."""
    rows = log.db.execute(
        "SELECT id, role, secret_hash, active, seal FROM operators WHERE active = 1 ORDER BY id"
    )
    return [Operator(r[0], r[1]) for r in rows if _row_ok(log, *r)]


def _seal(log: Any, op_id: str, role: str, secret_hash: str, active: int) -> str:
    return str(log.seal("operator", op_id, role, secret_hash, active))


def _row_ok(log: Any, op_id: str, role: str, secret_hash: str, active: int, seal: Any) -> bool:
    """Was this roster row written by pumpctl (its seal matches)?"""
    return bool(log.sealed(seal, "operator", op_id, role, secret_hash, active))


def has_roster(log: Any) -> bool:
    """Does this database have any operator?"""
    return log.db.execute("SELECT 1 FROM operators LIMIT 1").fetchone() is not None


def authenticate(log: Any, op_id: str | None, secret: str, act: str) -> Operator:
    """The operator, if ``secret`` is theirs and their role may do ``act``; else raise."""
    op_id = check_id(op_id)
    row = log.db.execute(
        "SELECT role, secret_hash, seal FROM operators WHERE id = ? AND active = 1", (op_id,)
    ).fetchone()
    if row is None:
        check_secret(secret, _DUMMY)  # same cost as a real check
        hint = "" if has_roster(log) else " (this database has no roster: see docs/trust.md)"
        raise AuthError(f"unknown operator {op_id!r} in {log.path}{hint}")
    if not _row_ok(log, op_id, row[0], row[1], 1, row[2]):
        raise AuthError(
            f"the roster entry of {op_id!r} was changed outside pumpctl; a biomed administrator "
            "must add the operator again"
        )
    if not check_secret(secret, row[1]):
        raise AuthError(f"wrong secret for operator {op_id!r}")
    op = Operator(op_id, row[0])
    permit(op, act)
    return op


def permit(op: Operator, act: str) -> None:
    """Raise ``NotPermittedError`` unless ``op``'s role may do ``act``."""
    allowed = ACTS[act]
    if op.role not in allowed:
        raise NotPermittedError(
            f"operator {op.id!r} ({op.role}) may not {act.replace('_', ' ')}; allowed roles: "
            f"{', '.join(allowed)}"
        )


def role_of(log: Any, op_id: str) -> str | None:
    """The role of an active operator, or None."""
    row = log.db.execute(
        "SELECT role, secret_hash, seal FROM operators WHERE id = ? AND active = 1", (op_id,)
    ).fetchone()
    if row is None or not _row_ok(log, op_id, row[0], row[1], 1, row[2]):
        return None
    return str(row[0])


def add_operator(log: Any, op_id: str, role: str, secret: str, by: str, t_s: float = 0.0) -> None:
    """Add (or re-activate with a new secret) an operator; logged before it takes effect."""
    check_id(op_id)
    _check_role(role)
    if not secret:
        raise InputError(f"the secret for {op_id!r} is empty; allowed: a non-empty secret")
    log.append(t_s, "-", "-", "operator_add", {"id": op_id, "role": role}, by)
    hashed = hash_secret(secret)
    log.db.execute(
        "INSERT OR REPLACE INTO operators (id, role, secret_hash, active, added_by, seal) "
        "VALUES (?, ?, ?, 1, ?, ?)",
        (op_id, role, hashed, by, _seal(log, op_id, role, hashed, 1)),
    )


def remove_operator(log: Any, op_id: str, by: str, t_s: float = 0.0) -> None:
    """Deactivate an operator (kept for the record)."""
    if role_of(log, op_id) is None:
        raise InputError(f"unknown operator {op_id!r} in {log.path}")
    if op_id == by:
        raise InputError("an administrator cannot remove themself; ask another biomed")
    log.append(t_s, "-", "-", "operator_remove", {"id": op_id}, by)
    role, hashed = log.db.execute(
        "SELECT role, secret_hash FROM operators WHERE id = ?", (op_id,)
    ).fetchone()
    log.db.execute(
        "UPDATE operators SET active = 0, seal = ? WHERE id = ?",
        (_seal(log, op_id, role, hashed, 0), op_id),
    )


def add_demo_roster(log: Any, t_s: float = 0.0) -> None:
    """The demo roster (secret ``demo``); one hash shared, as the secret is public anyway."""
    shared = hash_secret(DEMO_SECRET)
    for op_id, role in DEMO_ROSTER:
        log.append(t_s, "-", "-", "operator_add", {"id": op_id, "role": role, "demo": True})
        log.db.execute(
            "INSERT OR REPLACE INTO operators (id, role, secret_hash, active, added_by, seal) "
            "VALUES (?, ?, ?, 1, 'demo', ?)",
            (op_id, role, shared, _seal(log, op_id, role, shared, 1)),
        )
