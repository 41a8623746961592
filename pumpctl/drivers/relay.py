"""Two-pump relay: one channel on two pumps of the same model (the "take over" idea).

On a pump whose reservoir is changed with the flow stopped (a syringe pump), a second
pump carries the infusion across the change: the new syringe is loaded and primed on
the idle pump while the running one finishes, and the idle pump starts at the moment the
running one stops. Both pumps are read back before and after every hand-over, and both
never run at once for longer than the setting allows (here: never, the start follows
the stop).

``RelayPair`` presents the two as one ``PumpDriver`` to the controller: commands go to
the pump running now; ``arm`` programs the idle one; ``take_over`` hands over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pumpctl.drivers.base import PumpDriver
from pumpctl.errors import PumpCommandError
from pumpctl.pumpstatus import PumpAlarm, PumpIdentity, PumpStatus

Listener = Callable[[list[PumpAlarm]], None]


class RelayPair(PumpDriver):
    """Pump A and pump B as one channel; ``active`` delivers, ``idle`` waits loaded."""

    relay = True

    def __init__(self, a: PumpDriver, b: PumpDriver, names: tuple[str, str] = ("A", "B")) -> None:
        super().__init__(a.limits)
        self.pumps = {names[0]: a, names[1]: b}
        self.active_name, self.idle_name = names
        self.loading = False  # a reservoir change is under way on the idle pump
        self.armed = False
        self._handing_over = False
        self._listener: Listener | None = None
        for name, drv in self.pumps.items():
            if hasattr(drv, "listener"):
                drv.listener = self._from(name)

    # -- which pump is which ------------------------------------------------
    @property
    def active(self) -> PumpDriver:
        return self.pumps[self.active_name]

    @property
    def idle(self) -> PumpDriver:
        return self.pumps[self.idle_name]

    @property
    def listener(self) -> Listener | None:
        return self._listener

    @listener.setter
    def listener(self, cb: Listener | None) -> None:
        self._listener = cb

    def _from(self, name: str) -> Listener:
        def hear(alarms: list[PumpAlarm]) -> None:
            # The idle pump finishing its old syringe, or being loaded, is not the channel's.
            if name == self.active_name and not self._handing_over and self._listener:
                self._listener(alarms)

        return hear

    # -- the hand-over ------------------------------------------------------
    def begin_load(self) -> None:
        """The nurse starts loading the next reservoir on the idle pump."""
        self.loading = True

    def arm(self, rate_ml_per_h: float, vtbi_ml: float) -> None:
        """Program the idle pump for the new reservoir; it starts when the active one stops."""
        idle = self.idle
        st = idle.status()
        if st.running:
            raise PumpCommandError(f"pump {self.idle_name} is running; allowed: an idle pump")
        idle.set_rate(rate_ml_per_h)
        idle.clear_volume()
        idle.set_vtbi(vtbi_ml)
        self.loading, self.armed = False, True

    def take_over(self) -> dict[str, Any]:
        """Start the idle pump now that the active one has stopped; swap their roles."""
        if not self.armed:
            raise PumpCommandError("no pump is armed to take over")
        old, new = self.active, self.idle
        self._handing_over = True  # what the pumps report meanwhile is this hand-over
        try:
            if old.status().running:
                old.stop()  # never both at the full rate
                if old.status().running:
                    raise PumpCommandError(
                        f"pump {self.active_name} still runs after stop: no hand-over"
                    )
            new.start()
            after_old, after_new = old.status(), new.status()
            if after_old.running and after_new.running:
                new.stop()  # both running: take the new one down again
        finally:
            self._handing_over = False
        if after_old.running or not after_new.running:
            raise PumpCommandError(
                f"hand-over read-back: pump {self.active_name} "
                f"{after_old.run_state.value}, pump {self.idle_name} {after_new.run_state.value}"
            )
        done = {"from": self.active_name, "to": self.idle_name}
        self.active_name, self.idle_name = self.idle_name, self.active_name
        self.armed = False
        return done

    def resume_roles(self, active: str | None, armed: bool) -> None:
        """After a controller restart: which pump runs now, and whether one is armed."""
        if active is not None and active in self.pumps and active != self.active_name:
            self.active_name, self.idle_name = self.idle_name, self.active_name
        self.armed = armed
        self.loading = False

    def disarm(self) -> None:
        """The bag loaded on the idle pump was discarded: nothing takes over."""
        self.armed = False
        self.loading = False

    # -- the physical world of the simulated pumps --------------------------
    def world(self, action: str, *args: object) -> object:
        """Reservoir handling goes to the pump being loaded; faults to the running one."""
        reservoir = action in ("connect_bag", "disconnect_bag", "prime_line")
        target = self.idle if reservoir and self.loading else self.active
        fn = getattr(target, "world", None)
        return None if fn is None else fn(action, *args)  # a real pump: the bench's hands

    # -- one channel: the active pump ---------------------------------------
    def _do_identify(self) -> PumpIdentity:
        return self.active.identify()

    def _do_set_rate(self, rate_ml_per_h: float) -> None:
        self.active.set_rate(rate_ml_per_h)

    def _do_set_vtbi(self, vtbi_ml: float) -> None:
        self.active.set_vtbi(vtbi_ml)

    def _do_start(self) -> None:
        self.active.start()

    def _do_stop(self) -> None:
        self.active.stop()

    def _do_clear_volume(self) -> None:
        self.active.clear_volume()

    def _do_status(self) -> PumpStatus:
        st = self.active.status()
        beat = getattr(self.idle, "heartbeat", None)
        if beat is not None and getattr(self.idle, "safe_timeout_s", None):
            beat()  # a safe-mode pump fail-stops without packets to its own address
        return st

    def _do_close(self) -> None:
        for drv in self.pumps.values():
            drv.close()
