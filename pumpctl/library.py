"""The drug library held in an event database: trusted keys, signed installs, the active
and pending setting, and the DEMO database.

The controller always runs from the content stored here (re-validated and re-hashed at
every load), never from the file it was installed from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from pumpctl import roster, signing
from pumpctl.errors import InputError, RefusedError
from pumpctl.eventlog import EventLog, is_demo
from pumpctl.setting import DrugSetting, setting_from_raw, short_version


# ---------------------------------------------------------------------------
# Trusted keys
# ---------------------------------------------------------------------------
def trusted_keys(log: EventLog) -> dict[str, set[str]]:
    """Public key -> roles it is trusted to sign in."""
    out: dict[str, set[str]] = {}
    for key, role, seal in log.db.execute("SELECT public_key, role, seal FROM trusted_keys"):
        if log.sealed(seal, "trusted_key", key, role):  # a planted row is not trusted
            out.setdefault(key, set()).add(role)
    return out


def trust_key(log: EventLog, public_key: str, role: str, by: str, t_s: float = 0.0) -> str:
    """Trust ``public_key`` to sign in ``role`` (logged first); returns the canonical key."""
    if role not in signing.SIGN_ROLES:
        raise InputError(f"--role {role!r}; allowed: {' or '.join(signing.SIGN_ROLES)}")
    key = signing.parse_public(public_key)
    log.append(t_s, "-", "-", "key_trust", {"public_key": key, "role": role}, by)
    log.db.execute(
        "INSERT OR REPLACE INTO trusted_keys (public_key, role, added_by, seal) "
        "VALUES (?, ?, ?, ?)",
        (key, role, by, log.seal("trusted_key", key, role)),
    )
    return key


def init_demo(log: EventLog, t_s: float = 0.0) -> None:
    """Make a NEW database a DEMO one: the shipped demo keys and the demo roster."""
    if is_demo(log):
        return
    if log.raw_rows() or roster.has_roster(log) or trusted_keys(log):
        raise InputError(
            f"{log.path}: --demo only on a new database; this one already has events, "
            "operators or keys"
        )
    log.meta_set("demo", "1")
    for role in signing.SIGN_ROLES:
        trust_key(log, signing.demo_public(role), role, "demo", t_s)
    roster.add_demo_roster(log, t_s)


# ---------------------------------------------------------------------------
# Settings stored in the database
# ---------------------------------------------------------------------------
def _stored(log: EventLog, version: str) -> tuple[DrugSetting, list[dict[str, str]]]:
    row = log.db.execute(
        "SELECT path, content, signatures FROM settings WHERE version = ?", (version,)
    ).fetchone()
    if row is None:
        raise InputError(f"{log.path}: setting version {short_version(version)} is not stored")
    path, content, sigs = row
    try:
        raw = json.loads(content)
        sig_list = json.loads(sigs)
    except (ValueError, TypeError, RecursionError):
        raise InputError(
            f"{log.path}: the stored setting {short_version(version)} does not parse; "
            "install it again"
        ) from None
    setting = setting_from_raw(raw, str(path))
    if setting.version != version:
        raise InputError(
            f"{log.path}: the stored setting {short_version(version)} was changed in the "
            f"database (its content is now {short_version(setting.version)}); install it again"
        )
    return setting, sig_list if isinstance(sig_list, list) else []


def stored_signatures(log: EventLog, version: str) -> list[dict[str, str]]:
    """The signatures stored with a version (as installed)."""
    return _stored(log, version)[1]


def _check_stored_signatures(log: EventLog, setting: DrugSetting, sigs: list[Any]) -> None:
    """Signed installs are re-checked at load; unsigned ones exist only in trust-less logs."""
    trusted = trusted_keys(log)
    if not sigs and not trusted:
        return
    try:
        parsed = [signing.Signature(s["role"], s["public_key"], s["signature"]) for s in sigs]
    except (KeyError, TypeError):
        parsed = []
    why = signing.check_signatures(setting.version, parsed, trusted)
    if why:
        raise InputError(
            f"{log.path}: the stored setting {short_version(setting.version)} is not "
            f"approved: {why}; install a signed setting"
        )


class _History(NamedTuple):
    """What the sealed ``setting_install``/``setting_accept`` events say (a table or meta
    row edited outside pumpctl cannot change them)."""

    active: str | None
    pending: str | None
    made_under: dict[int, str | None]  # bag -> the version active when it was compounded
    ran: list[str]  # every version that was active, in order


def _versions(log: EventLog) -> tuple[str | None, str | None]:
    """(active, pending) versions."""
    h = _walk(log)
    return h.active, h.pending


def _walk(log: EventLog) -> _History:
    active = pending = None
    made_under: dict[int, str | None] = {}
    ran: list[str] = []
    rows = log.db.execute(
        "SELECT event, detail FROM events WHERE event IN "
        "('setting_install', 'setting_accept', 'bag_compounded') ORDER BY id"
    )
    for event, detail in rows:
        try:
            d = json.loads(detail)
            if event == "bag_compounded":
                made_under[int(d["bag"])] = active
                continue
            version = str(d["version"])
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
        if event == "setting_install" and d.get("pending"):
            pending = version
        else:
            active = version
            if version not in ran:
                ran.append(version)
            if version == pending or event == "setting_install":
                pending = None
    return _History(active, pending, made_under, ran)


def earlier_libraries(log: EventLog) -> tuple[dict[str, DrugSetting], dict[int, float]]:
    """The libraries this run ran before the active one (by version, read back and
    re-checked as at every start), and the beyond-use hours of the bags compounded under
    one of them: builds and bags keep the library they were made under.

    A library that cannot be read back is one line (InputError), never a silent fall-back
    to the active library's figures (its beyond-use time may be longer).
    """
    h = _walk(log)
    settings = {v: stored_setting(log, v) for v in h.ran if v != h.active}
    pinned = {
        bag_n: settings[v].beyond_use_h
        for bag_n, v in h.made_under.items()
        if v is not None and v != h.active
    }
    return settings, pinned


def stored_setting(log: EventLog, version: str) -> DrugSetting:
    """A version stored in the database (one the controller ran or runs), re-validated and
    re-checked against the trusted keys, as at every start."""
    setting, sigs = _stored(log, version)
    _check_stored_signatures(log, setting, sigs)
    return setting


def active_version(log: EventLog) -> str | None:
    """The version the controller runs (None if no setting is installed)."""
    return _versions(log)[0]


def installed_setting(log: EventLog) -> DrugSetting:
    """The active setting, loaded from the content stored in the database."""
    version = active_version(log)
    if version is None:
        raise InputError(
            f"{log.path}: no setting installed; install one first: "
            f"pumpctl setting install FILE --db {log.path} --operator ID"
        )
    setting, sigs = _stored(log, version)
    _check_stored_signatures(log, setting, sigs)
    return setting


def pending_setting(log: EventLog) -> DrugSetting | None:
    """A setting installed during a run that a nurse has not accepted yet."""
    version = _versions(log)[1]
    if version is None:
        return None
    setting, sigs = _stored(log, version)
    _check_stored_signatures(log, setting, sigs)
    return setting


def accept_pending(
    log: EventLog,
    operator: str,
    t_s: float = 0.0,
    why_not: Callable[[DrugSetting], str | None] | None = None,
    emit: Callable[[str, dict[str, Any], str], object] | None = None,
) -> DrugSetting:
    """A nurse accepts the pending setting at the pump: it becomes active (logged first).

    The caller authenticates the operator; this checks their role, then ``why_not`` (the
    controller's check of the order in force against the new limits): a reason refuses
    the acceptance (``RefusedError``) and no ``setting_accept`` is logged (the caller logs
    the refusal). ``emit(kind, detail,
    operator)`` logs the event (the controller's, so its listeners see it; default: a
    plain append). The controller calls it, then switches to the returned setting.
    """
    role = roster.role_of(log, operator)
    if role is None:
        raise roster.AuthError(f"unknown operator {operator!r} in {log.path}")
    roster.permit(roster.Operator(operator, role), "accept_setting")
    setting = pending_setting(log)
    if setting is None:
        raise InputError(f"{log.path}: no setting is waiting to be accepted")
    if why_not is not None and (reason := why_not(setting)) is not None:
        raise RefusedError(reason)
    detail = {"name": setting.name, "version": setting.version, "previous": active_version(log)}
    if emit is None:
        log.append(t_s, "-", "-", "setting_accept", detail, operator)
    else:
        emit("setting_accept", detail, operator)
    return setting


def run_under_way(log: EventLog) -> bool:
    """Has a run been programmed on this database?"""
    return (
        log.db.execute("SELECT 1 FROM events WHERE event = 'program' LIMIT 1").fetchone()
        is not None
    )


# ---------------------------------------------------------------------------
# What changed
# ---------------------------------------------------------------------------
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def _show(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, float | int) and not isinstance(v, bool):
        return f"{Decimal(str(v)).normalize():f}"
    return json.dumps(v)


def changes(old: DrugSetting | None, new: DrugSetting) -> list[str]:
    """One line per changed key, limits first, then the rest in key order."""
    if old is None:
        return ["  (no setting installed before: every value is new)"]
    a, b = _flatten(old.raw), _flatten(new.raw)
    keys = sorted(set(a) | set(b), key=lambda k: (not k.startswith("limits."), k))
    return [f"  {k}: {_show(a.get(k))} -> {_show(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------
def install_signed(
    log: EventLog, setting: DrugSetting, sigs: list[signing.Signature], operator: str, t_s: float
) -> tuple[str, list[str]]:
    """Verify both signatures and store the setting; returns (outcome, change lines).

    The outcome is ``"active"``, ``"pending"`` (a run is under way: a nurse must accept it
    at the pump) or ``"unchanged"`` (this version is already the active one).
    """
    why = signing.check_signatures(setting.version, sigs, trusted_keys(log))
    if why:
        raise InputError(f"{setting.path}: not approved: {why}")
    current = active_version(log)
    old = None
    if current is not None:
        try:
            old = _stored(log, current)[0]
        except InputError:
            old = None
    if current == setting.version:
        return "unchanged", []
    lines = changes(old, setting)
    pending = run_under_way(log)
    log.install_setting(
        setting, operator, t_s, signatures=[s.to_json() for s in sigs], pending=pending
    )
    return ("pending" if pending else "active"), lines
