"""The simulated pump: the driver protocol on top of ``pumpctl.sim.physics``.

It schedules the physics' own events (VTBI complete, dry reservoir, occlusion alarm,
battery) on the clock and tells its listener, so the controller reacts at the exact
moment without polling. ``link_up = False`` simulates a lost communication link: every
call raises ``CommunicationError`` while the pump itself carries on.
"""

from __future__ import annotations

from collections.abc import Callable

from pumpctl.clock import Clock, TimerHandle
from pumpctl.drivers.base import PumpAlarm, PumpDriver, PumpIdentity, PumpStatus
from pumpctl.errors import CommunicationError
from pumpctl.setting import PumpModel
from pumpctl.sim.physics import PumpPhysics

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
        """(Re)arm one timer at the physics' next event."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t_next = self.physics.next_event_s()
        if t_next != float("inf"):
            self._timer = self.clock.call_at(t_next, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        raised = self.physics.advance(self.clock.now())
        self.reschedule()
        if raised and self.listener is not None:
            self.listener(raised)

    def _check_link(self) -> None:
        if not self.link_up:
            raise CommunicationError("no reply from the simulated pump (link down)")
        if self.physics.powered_off:
            raise CommunicationError("no reply from the simulated pump (no power)")

    def _cmd(self, fn: Callable[[float], object]) -> None:
        self._check_link()
        fn(self.clock.now())
        self.reschedule()

    # -- hooks ------------------------------------------------------------
    def _do_identify(self) -> PumpIdentity:
        self._check_link()
        return PumpIdentity(model=self.model.name, firmware="sim-1", address=0)

    def _do_set_rate(self, rate_ml_per_h: float) -> None:
        self._cmd(lambda t: self.physics.set_rate(t, rate_ml_per_h))

    def _do_set_vtbi(self, vtbi_ml: float) -> None:
        self._cmd(lambda t: self.physics.set_vtbi(t, vtbi_ml))

    def _do_start(self) -> None:
        self._cmd(self.physics.start)

    def _do_stop(self) -> None:
        self._cmd(self.physics.stop)

    def _do_clear_volume(self) -> None:
        self._cmd(self.physics.clear_volume)

    def _do_status(self) -> PumpStatus:
        self._check_link()
        return self.physics.status(self.clock.now())

    def acknowledge(self, alarm: PumpAlarm) -> None:
        """Clear a notice on the pump (VTBI complete, battery low, reset)."""
        self._cmd(lambda t: self.physics.acknowledge(t, alarm))

    # -- the physical world (not over the link): bags, faults, power -------
    def fault(self, fn: Callable[[float], object]) -> object:
        """Apply a physical event at the current time and tell the listener of alarms."""
        result = fn(self.clock.now())
        self.reschedule()
        raised = result if isinstance(result, list) else []
        alarms = [a for a in raised if isinstance(a, PumpAlarm)]
        if self.listener is not None:  # even with no alarm: the pump's state has changed
            self.listener(alarms)
        return result
