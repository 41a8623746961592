"""The simulated pump: the driver protocol on top of ``pumpctl.devices.physics``.

It schedules the physics' own events (VTBI complete, dry reservoir, occlusion alarm,
battery) on the clock and tells its listener, so the controller reacts at the exact
moment without polling. ``link_up = False`` simulates a lost communication link: every
call raises ``CommunicationError`` while the pump itself carries on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pumpctl.clock import Clock, TimerHandle
from pumpctl.devices.physics import PumpPhysics
from pumpctl.drivers.base import PumpAlarm, PumpDriver, PumpIdentity, PumpStatus
from pumpctl.errors import CommunicationError
from pumpctl.setting import PumpModel

Listener = Callable[[list[PumpAlarm]], None]


class SimDriver(PumpDriver):
    """A simulated pump channel driven by a clock."""

    def __init__(self, model: PumpModel, clock: Clock, *, keep_segments: bool = True) -> None:
        super().__init__(model.limits)
        self.model = model
        self.clock = clock
        self.physics = PumpPhysics(model, t_s=clock.now(), keep_segments=keep_segments)
        self.listener: Listener | None = None
        self.link_up = True
        self._timer: TimerHandle | None = None

    # -- scheduling of the physics' own events ----------------------------
    def reschedule(self) -> None:
        """(Re)arm one timer at the physics' next event (kept if that time has not moved)."""
        t_next = self.physics.next_event_s()
        timer = self._timer
        if timer is not None:
            if timer.when_s == t_next and t_next > self.clock.now():
                return
            timer.cancel()
            self._timer = None
        if t_next != math.inf:
            self._timer = self.clock.call_at(t_next, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        raised = self.physics.advance(self.clock.now())
        self.reschedule()
        if raised and self.listener is not None:
            self.listener(raised)

    def _check_link(self) -> None:
        if self.link_up and self.physics.mains_on:
            return  # the usual case, first (every command and read-back comes here)
        if not self.link_up:
            raise CommunicationError("no reply from the simulated pump (link down)")
        if self.physics.powered_off:
            raise CommunicationError("no reply from the simulated pump (no power)")

    def _cmd(self, action: str, *args: object) -> None:
        self._check_link()
        self._apply(action, *args)

    # -- hooks ------------------------------------------------------------
    def _do_identify(self) -> PumpIdentity:
        self._check_link()
        return PumpIdentity(model=self.model.name, firmware="sim-1", address=0)

    def _do_set_rate(self, rate_ml_per_h: float) -> None:
        self._cmd("set_rate", rate_ml_per_h)

    def _do_set_vtbi(self, vtbi_ml: float) -> None:
        self._cmd("set_vtbi", vtbi_ml)

    def _do_start(self) -> None:
        self._cmd("start")

    def _do_stop(self) -> None:
        self._cmd("stop")

    def _do_clear_volume(self) -> None:
        self._cmd("clear_volume")

    def _do_status(self) -> PumpStatus:
        self._check_link()
        return self.physics.status(self.clock.now())

    # -- the physical world (not over the link): bags, faults, power -------
    def world(self, action: str, *args: object) -> object:
        """Apply a physical event (``connect_bag``, ``occlude``, ``power_off``...) now.

        Every physics change, command or world event, goes through ``_apply`` so a
        journaled driver can record it and replay it after a restart.
        """
        result = self._apply(action, *args)
        raised = result if isinstance(result, list) else []
        if self.listener is not None:  # even with no alarm: the pump's state has changed
            self.listener([a for a in raised if isinstance(a, PumpAlarm)])
        return result

    def _apply(self, action: str, *args: object) -> object:
        result = getattr(self.physics, action)(self.clock.now(), *args)
        self.reschedule()
        return result
