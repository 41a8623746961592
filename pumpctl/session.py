"""A live controller session (``pumpctl run`` and ``pumpctl console``) on a SQLite log.

On the simulated pump the pump is a separate machine in spirit: every command and
physical event it receives is journaled in the database *before* it acts, and a restart
replays the journal up to now, so killing the controller never stops (or rewinds) the
simulated pump. On a real pump the pump simply keeps running on its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pumpctl import library, roster
from pumpctl.clock import SystemClock, TimerHandle
from pumpctl.controller import Controller, restore
from pumpctl.devices.physics import PumpPhysics
from pumpctl.drivers.base import PumpAlarm, PumpDriver
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import InputError, PumpCommandError
from pumpctl.eventlog import EventLog, is_demo, probe, verify_chain
from pumpctl.lease import Lease
from pumpctl.setting import DrugSetting, PumpModel, load_pump
from pumpctl.sim.scenario import DEFAULT_HANG_LEAD_S, Dist
from pumpctl.sim.staff import Nurse, Pharmacy, World


class JournaledSimDriver(SimDriver):
    """A simulated pump whose every physics change is journaled in the event database."""

    def __init__(self, model: PumpModel, clock: SystemClock, log: EventLog) -> None:
        super().__init__(model, clock, keep_segments=False)
        self.physics = PumpPhysics(model, t_s=0.0, keep_segments=False)  # replayed from t=0
        self.journal = log
        self.alarm_times: dict[PumpAlarm, float] = {}  # when the pump last raised each alarm
        self._unjournaled: list[tuple[float, str, str]] = []
        self.replayed = self._replay()
        self.reschedule()

    def _replay(self) -> int:
        rows = self.journal.db.execute("SELECT t_s, command, args FROM sim_pump ORDER BY id")
        n = 0
        for t_s, command, args in rows:
            self._advance_noting_alarms(t_s)
            with contextlib.suppress(PumpCommandError):  # refused the first time too
                getattr(self.physics, command)(t_s, *json.loads(args))
            n += 1
        self._advance_noting_alarms(self.clock.now())
        return n

    def _advance_noting_alarms(self, t1_s: float) -> None:
        """Run the physics to ``t1_s`` event by event, noting when each alarm was raised:
        what the pump did while no controller watched (a resume dates gaps from it)."""
        while (t_evt := self.physics.next_event_s()) <= t1_s:
            for alarm in self.physics.advance(t_evt):
                self.alarm_times[alarm] = t_evt
        self.physics.advance(t1_s)

    def _apply(self, action: str, *args: object) -> object:
        # The pump acts even when the database cannot be written: journal rows wait in
        # memory (in order) like the event log's, and are written when storage is back.
        self._unjournaled.append((self.clock.now(), action, json.dumps(list(args))))
        db = self.journal.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO sim_pump (t_s, command, args) VALUES (?, ?, ?)", self._unjournaled
            )
            db.execute("COMMIT")
            self._unjournaled.clear()
        except sqlite3.Error:  # the event log reports the storage fault
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        return super()._apply(action, *args)


@dataclass
class Session:
    """Everything a live controller needs, opened on one database."""

    clock: SystemClock
    log: EventLog
    setting: DrugSetting
    pump: PumpModel
    driver: PumpDriver
    controller: Controller
    resumed: dict[str, Any] | None = None
    staff: list[object] = field(default_factory=list)
    lease: Lease | None = None
    _housekeeping: TimerHandle | None = None
    new_run: bool = False  # no run was programmed when this session opened

    @property
    def demo(self) -> bool:
        """Is this a DEMO database (demo keys and roster)? Screens, labels, reports say so."""
        return is_demo(self.log)

    def pending_setting(self) -> DrugSetting | None:
        """A library installed during this run, waiting for a nurse to accept it."""
        return library.pending_setting(self.log)

    def accept_setting(self, operator: str) -> tuple[DrugSetting, str | None]:
        """A nurse (authenticated by the caller) accepts the pending library at the pump.

        Refused (``RefusedError``; only the refusal is logged, the library stays pending)
        if the order in force breaks the new hard limit. Else logged (``setting_accept``),
        made the stored active version and the controller's; the infusion runs on. Returns
        the new setting and, if the order in force breaks a new soft limit, the line asking
        for its review (also in the event's ``order_review``).
        """
        ctl = self.controller
        review: dict[str, str] = {}

        def why_not(new: DrugSetting) -> str | None:
            kind, detail = ctl.order_against(new)
            if kind == "soft":
                review["order_review"] = detail
            reason = ctl.why_not_use_setting(new)
            if reason is not None:  # logged like every refused request
                ctl._refuse("accept_setting", reason, operator)
            return reason

        def emit(kind: str, detail: dict[str, Any], op: str) -> object:
            return ctl._emit(kind, {**detail, **review}, op)

        new = library.accept_pending(self.log, operator, self.clock.now(), why_not, emit)
        self.setting = new
        return new, ctl.use_setting(new)

    def close(self) -> int:
        """Stop timers, close the link, release the lease and close the database; the pump
        keeps its state. Returns how many events could not be written (storage fault)."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self.controller.close()
        self.driver.close()
        if self.new_run and not library.run_under_way(self.log):
            forget_unstarted_run(self.log)
        if self.lease is not None:
            self.lease.release(self.log)
        return self.log.close()


#: Run parameters stored when a session opens; a run that was never programmed keeps none.
RUN_META_KEYS = ("epoch_wall_s", "speed", "pump")


def forget_unstarted_run(log: EventLog) -> None:
    """Drop the run parameters of a session that never programmed a run (a refused first
    order, a console closed before programming), so nothing of it binds the next run."""
    with contextlib.suppress(sqlite3.Error):  # a storage fault: the next open resets them
        marks = ",".join("?" * len(RUN_META_KEYS))
        log.db.execute(f"DELETE FROM meta WHERE key IN ({marks})", RUN_META_KEYS)


def installed_setting(log: EventLog) -> DrugSetting:
    """The active setting, loaded and re-validated from the content stored in the log."""
    return library.installed_setting(log)


HOUSEKEEPING_WALL_S = 10.0  # storage check and lease heartbeat, every this many real seconds


def open_session(
    db: str | Path,
    *,
    port: str | None = None,
    pump: str | None = None,
    speed: float = 1.0,
    address: int = 0,
    baud: int | None = None,
    safe_timeout_s: int | None = None,
    staff: bool = False,
    seed: int = 0,
    operator: str | None = None,
    secret: str | None = None,
    relay: bool = False,
) -> Session:
    """Open (or resume) a controller on ``db``: the simulated pump, or a real one on ``port``.

    Takes the database's lease (one controller per pump), verifies the log's chain before
    trusting it, and, given ``operator`` and ``secret``, authenticates the operator (a new
    run needs the ``program`` act, a resume ``operate``) before anything is written.
    """
    if not (speed > 0 and math.isfinite(speed)):
        raise InputError(f"--speed {speed} is not allowed; allowed: a finite number > 0")
    probe(db)  # a directory or another application's file: refused before any lock file
    lease = Lease.acquire(db)
    log: EventLog | None = None
    try:
        log = EventLog(db)
        ok, bad_seq, why = verify_chain(log)
        if not ok:
            raise InputError(
                f"{db}: the event log fails its check at row {bad_seq}: {why}; nothing was "
                f"done and the pump is left as it is (pumpctl log --verify --db {db})"
            )
        programmed = library.run_under_way(log)
        installed_setting(log)  # "no setting installed" before asking who you are
        if operator is not None or secret is not None:
            roster.authenticate(log, operator, secret or "", "operate" if programmed else "program")
        try:
            sess = _open(
                log, db, port, pump, speed, address, baud, safe_timeout_s, programmed, relay
            )
        except sqlite3.Error as exc:
            raise InputError(f"{db}: cannot write the event log ({exc})") from None
    except BaseException:
        if log is not None:
            log.close()
        lease.release()
        raise
    sess.lease = lease
    wall = log.wall_at(sess.clock.now())
    if lease.stale is not None:
        log.append(
            sess.clock.now(), "-", "-", "lease_takeover", {"previous": lease.stale}, "system"
        )
    lease.beat(log, wall)

    def housekeeping() -> None:
        log.check_storage()
        lease.beat(log, log.wall_at(sess.clock.now()))
        sess._housekeeping = sess.clock.call_later(HOUSEKEEPING_WALL_S * speed, housekeeping)

    sess._housekeeping = sess.clock.call_later(HOUSEKEEPING_WALL_S * speed, housekeeping)
    if staff:
        sess.staff = attach_staff(sess.controller, sess.driver, seed, speed)
    return sess


def _open(
    log: EventLog,
    db: str | Path,
    port: str | None,
    pump: str | None,
    speed: float,
    address: int,
    baud: int | None,
    safe_timeout_s: int | None,
    programmed: bool,
    relay: bool = False,
) -> Session:
    if relay and port is None:
        raise InputError(
            "--relay needs --port (two NE-1000 pumps at addresses A and A+1 on one line); "
            "simulate a relay with 'pumpctl simulate' and relay = true in the scenario"
        )
    if not programmed:  # parameters left by a session that never started a run bind nothing
        forget_unstarted_run(log)
    stored_speed = log.meta_get("speed")
    if stored_speed is not None and float(stored_speed) != speed:
        raise InputError(
            f"{db}: this run started at --speed {stored_speed}; allowed: the same speed"
        )
    setting = installed_setting(log)
    epoch = log.meta_get("epoch_wall_s")
    clock = SystemClock(speed, None if epoch is None else float(epoch))
    if epoch is None:
        log.meta_set("epoch_wall_s", repr(clock.wall_epoch()))
        log.meta_set("speed", repr(speed))
    log.wall_epoch_s = clock.wall_epoch()
    log.speed = speed
    stored_pump = log.meta_get("pump")
    pump_ref = pump or stored_pump or ("newera_ne1000" if port else "generic_lvp")
    if stored_pump is not None and pump is not None and pump != stored_pump:
        raise InputError(f"{db}: this run uses pump '{stored_pump}'; allowed: the same pump")
    model = load_pump(pump_ref)
    log.meta_set("pump", pump_ref)
    driver: PumpDriver
    poll_s: float | None
    if port is None:
        driver = JournaledSimDriver(model, clock, log)
        poll_s = None
    else:
        from pumpctl.drivers.newera import NewEraDriver

        overrides: dict[str, Any] = {"address": address}
        if baud is not None:
            overrides["baud"] = baud
        if safe_timeout_s is not None:
            overrides["safe_timeout_s"] = safe_timeout_s
        if relay:
            from pumpctl.drivers.newera import open_relay_pair
            from pumpctl.drivers.relay import RelayPair

            del overrides["address"]
            first, second = open_relay_pair(
                port, model, addresses=(address, address + 1), **overrides
            )
            ne = first
            driver = RelayPair(first, second)
        else:
            ne = NewEraDriver.from_model(model, port, **overrides)
            driver = ne
        timeout = ne.safe_timeout_s
        poll_s = max(min(timeout / 3.0, 2.0), 0.5) if timeout else 2.0
    ctl = Controller(clock, driver, log, setting, model=model, poll_s=poll_s)
    earlier, pinned = library.earlier_libraries(log)  # builds and bags keep theirs
    ctl.settings_by_version.update(earlier)
    ctl.beyond_use_h_by_bag.update(pinned)
    resumed = restore(ctl) if programmed else None
    return Session(clock, log, setting, model, driver, ctl, resumed, new_run=not programmed)


def attach_staff(
    ctl: Controller, driver: PumpDriver, seed: int, speed: float = 1.0
) -> list[object]:
    """Prompt simulated pharmacy and nurse; after a restart they pick up pending work.

    The nurse aims to finish a bag change a few seconds before the bag ends; in real
    time that margin also covers timer jitter, which grows with ``speed``.
    """
    world = World(ctl.clock, driver)
    rng = random.Random(seed)
    pharmacy = Pharmacy(ctl, ctl.clock, world, rng, Dist("fixed", 10), Dist("fixed", 15))
    nurse = Nurse(
        ctl,
        driver,
        world,
        rng,
        Dist("fixed", 2),
        Dist("fixed", 60),
        Dist("fixed", 2),
        DEFAULT_HANG_LEAD_S + 0.05 * speed,
    )
    nurse.pick_up_work()
    return [world, pharmacy, nurse]
