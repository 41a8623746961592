"""The pump side of a channel: commands, read-back, polling, pump alarms and gaps."""

from __future__ import annotations

from typing import Any

from pumpctl.alarms import AlarmKind
from pumpctl.channel.base import (
    FROM_PUMP,
    ChannelBase,
    E,
)
from pumpctl.drivers.base import FLOW_STOPPING_ALARMS, PumpAlarm, PumpStatus
from pumpctl.errors import CommunicationError, PumpError, ReservoirEmptyError
from pumpctl.events import GapCause
from pumpctl.machine import State


class PumpLink(ChannelBase):
    """Talks to the pump through its driver; turns what it reports into alarms and gaps."""

    def _pump(self, operator: str, commands: list[tuple[str, float | None]]) -> str | None:
        """Log the pump commands, then send them; return the pump's refusal if any
        (``_pump_empty`` tells whether it refused because its reservoir is empty)."""
        self._pump_empty = False
        self._emit(E.PUMP_COMMAND, {"commands": [[c, v] for c, v in commands]}, operator)
        try:
            for name, value in commands:
                fn = getattr(self.driver, name)
                fn() if value is None else fn(value)
        except CommunicationError as exc:
            self._comm_lost(str(exc))
            return f"pump did not answer: {exc}"
        except PumpError as exc:
            self._pump_empty = isinstance(exc, ReservoirEmptyError)
            self._emit(E.PUMP_REFUSED, {"reason": str(exc)}, operator)
            return f"pump refused: {exc}"
        self._refresh_status()
        return None

    # ---------------------------------------------------------- pump events
    def _gap_open(self, cause: str, start_s: float | None = None) -> None:
        if self.s.open_gap is None:
            d: dict[str, Any] = {"cause": str(cause)}
            if start_s is not None and start_s < self.clock.now():
                d["start_s"] = round(start_s, 3)
            self._emit(E.GAP_START, d)

    def _gap_close(self) -> None:
        g = self.s.open_gap
        if g is not None:
            now = self.clock.now()
            self._emit(
                E.GAP_END,
                {
                    "cause": g.cause,
                    "start_s": round(g.start_s, 3),
                    "length_s": round(now - g.start_s, 3),
                },
            )

    def _refresh_status(self) -> PumpStatus | None:
        try:
            st = self.driver.status()
        except CommunicationError as exc:
            self._comm_lost(str(exc))
            return None
        if not self.s.link_ok:
            self._emit(E.COMM_RESTORED, {})
            self._clear(AlarmKind.COMM_LOSS)
        self.last_status = st
        return st

    def _comm_lost(self, why: str) -> None:
        if self.s.link_ok:
            self._raise(AlarmKind.COMM_LOSS, why)

    def _on_pump_alarms(self, raised: list[PumpAlarm]) -> None:
        """The pump reported something (pushed by the sim driver, or found by polling)."""
        st = self._refresh_status()
        for pa in raised:
            self._handle_pump_alarm(pa)
        active = self.s.alarms.active_by_kind
        if st is not None and (AlarmKind.POWER_LOSS in active or AlarmKind.BATTERY_LOW in active):
            reported = {FROM_PUMP[a] for a in st.alarms if a in FROM_PUMP}
            for kind in (AlarmKind.POWER_LOSS, AlarmKind.BATTERY_LOW):
                if kind not in reported:
                    self._clear(kind)

    def _handle_pump_alarm(self, pa: PumpAlarm, gap_from_s: float | None = None) -> None:
        kind = FROM_PUMP.get(pa)
        if kind is None:
            return
        flow_stop = pa in FLOW_STOPPING_ALARMS or pa is PumpAlarm.VTBI_COMPLETE
        if flow_stop and self.machine.state is State.IDLE:
            self._raise(kind)
            return
        st = self.last_status
        if pa is PumpAlarm.VTBI_COMPLETE and st is not None and st.running:
            return  # a stale notice: the pump reads back running (e.g. the relay's new pump)
        if pa is PumpAlarm.VTBI_COMPLETE and self.s.relay_armed is not None and self._take_over():
            return  # the idle pump of the relay took over at the moment this one stopped
        if flow_stop:
            cause = GapCause.BAG_EMPTY if pa is PumpAlarm.VTBI_COMPLETE else kind.value
            self._gap_open(cause, gap_from_s)
            if self.machine.state in (State.PRIMING, State.INFUSING, State.BAG_CHANGE):
                self._go("fault", "system", {"cause": str(cause)})
            self.watchdog.cancel()
        self._raise(kind)

    def _poll(self) -> None:
        """Periodic read-back (real pumps, and simulated links that can fail)."""
        assert self.poll_s
        try:
            self._poll_once()
        finally:  # the next read-back counts from the end of this one
            self._poll_timer = self.clock.call_later(self.poll_s, self._poll)

    def _expects_running(self) -> bool:
        return self.machine.state is State.INFUSING or (
            self.machine.state is State.BAG_CHANGE and self.reservoir_change == "running"
        )

    def _poll_once(self) -> None:
        # A status read-back is also the safe-mode heartbeat: any valid packet counts.
        prev = self.last_status
        st = self._refresh_status()
        if st is None:
            return
        new = st.alarms - (prev.alarms if prev else frozenset())
        if new:
            self._on_pump_alarms(sorted(new))
            return
        relay_due = self.s.relay_armed is not None and not st.running
        if relay_due and self._expects_running() and self._take_over():
            return  # a real pump found stopped at its bag's end by polling: handed over
        if self._expects_running() and not st.running:
            self._gap_open(GapCause.PUMP_STOPPED)
            self._raise(AlarmKind.PUMP_FAILURE, f"pump reports {st.run_state.value} while infusing")
            self._go("fault", "system", {"cause": GapCause.PUMP_STOPPED.value})
            self.watchdog.cancel()
