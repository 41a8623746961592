"""A live controller session (``pumpctl run`` and ``pumpctl console``) on a SQLite log.

On the simulated pump the pump is a separate machine in spirit: every command and
physical event it receives is journaled in the database *before* it acts, and a restart
replays the journal up to now, so killing the controller never stops (or rewinds) the
simulated pump. On a real pump the pump simply keeps running on its own.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pumpctl.clock import SystemClock
from pumpctl.controller import Controller, restore
from pumpctl.drivers.base import PumpDriver
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import InputError, PumpCommandError
from pumpctl.eventlog import EventLog
from pumpctl.setting import DrugSetting, PumpModel, load_pump, load_setting
from pumpctl.sim.physics import PumpPhysics
from pumpctl.sim.scenario import DEFAULT_HANG_LEAD_S, Dist
from pumpctl.sim.staff import Nurse, Pharmacy, World


class JournaledSimDriver(SimDriver):
    """A simulated pump whose every physics change is journaled in the event database."""

    def __init__(self, model: PumpModel, clock: SystemClock, log: EventLog) -> None:
        super().__init__(model, clock, keep_segments=False)
        self.physics = PumpPhysics(model, t_s=0.0, keep_segments=False)  # replayed from t=0
        self.journal = log
        self.replayed = self._replay()
        self.reschedule()

    def _replay(self) -> int:
        rows = self.journal.db.execute("SELECT t_s, command, args FROM sim_pump ORDER BY id")
        n = 0
        for t_s, command, args in rows:
            with contextlib.suppress(PumpCommandError):  # refused the first time too
                getattr(self.physics, command)(t_s, *json.loads(args))
            n += 1
        self.physics.advance(self.clock.now())
        return n

    def _apply(self, action: str, *args: object) -> object:
        self.journal.db.execute(
            "INSERT INTO sim_pump (t_s, command, args) VALUES (?, ?, ?)",
            (self.clock.now(), action, json.dumps(list(args))),
        )
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

    def close(self) -> None:
        """Stop timers and close the link and the database; the pump keeps its state."""
        self.controller.close()
        self.driver.close()
        self.log.close()


def installed_setting(log: EventLog) -> DrugSetting:
    """The newest setting installed in this log, re-validated against its version."""
    row = log.db.execute(
        "SELECT version, path, content FROM settings ORDER BY installed_utc DESC, rowid DESC"
    ).fetchone()
    if row is None:
        raise InputError(
            f"{log.path}: no setting installed; install one first: "
            f"pumpctl setting install FILE --db {log.path} --operator ID"
        )
    version, path, _content = row
    setting = load_setting(path)
    if setting.version != version:
        raise InputError(
            f"{path}: has changed since it was installed (version {setting.version}, installed "
            f"{version}); install it again to use it"
        )
    return setting


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
) -> Session:
    """Open (or resume) a controller on ``db``: the simulated pump, or a real one on ``port``."""
    if speed <= 0:
        raise InputError(f"--speed {speed} is not allowed; allowed: a number > 0")
    log = EventLog(db)
    stored_speed = log.meta_get("speed")
    if stored_speed is not None and float(stored_speed) != speed:
        raise InputError(
            f"{db}: this run started at --speed {stored_speed}; allowed: the same speed"
        )
    epoch = log.meta_get("epoch_wall_s")
    clock = SystemClock(speed, None if epoch is None else float(epoch))
    if epoch is None:
        log.meta_set("epoch_wall_s", repr(clock.wall_epoch()))
        log.meta_set("speed", repr(speed))
    log.wall_epoch_s = clock.wall_epoch()
    log.speed = speed
    setting = installed_setting(log)
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
        ne = NewEraDriver.from_model(model, port, **overrides)
        driver = ne
        timeout = ne.safe_timeout_s
        poll_s = max(min(timeout / 3.0, 2.0), 0.5) if timeout else 2.0
    ctl = Controller(clock, driver, log, setting, model=model, poll_s=poll_s)
    programmed = log.db.execute("SELECT 1 FROM events WHERE event = 'program'").fetchone()
    resumed = restore(ctl) if programmed else None
    sess = Session(clock, log, setting, model, driver, ctl, resumed)
    if staff:
        sess.staff = attach_staff(ctl, driver, seed, speed)
    return sess


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
