"""A byte-exact New Era NE-1000 emulator backed by the simulated pump physics.

``Ne1000Emulator`` is the pump's protocol state machine with no I/O of its own: bytes
go in with :meth:`Ne1000Emulator.receive`, due bytes come out of
:meth:`Ne1000Emulator.take_output`, and time comes from a ``Clock`` (``SystemClock``
for the CLI, any clock in tests). ``EmulatorServer`` puts it on a pseudo-terminal or
a TCP port on 127.0.0.1 so that any client written for the real pump talks to it.

Behaviour follows the New Era NE-1000 user manual (RS-232 protocol): basic and safe mode, a
safe packet is accepted in either mode, ``STP`` pauses and a second ``STP`` stops,
a rate changed while running is not saved and is lost at a reset, the power-on reset
alarm ``A?R`` answers the first command (which is then not executed), the 0.5 s
inter-byte time-out discards partial safe packets, and a missed safe-mode heartbeat
raises alarm T and stops the pump. Only single-phase RATE programs are executed
(``PHN``/``FUN`` are stored and answered); the pump stops when the phase's volume is
dispensed. Fault switches (drop, corrupt, delay, truncate replies; stall; reset;
unplug) are plain attributes and methods for tests.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pumpctl.clock import Clock, SystemClock
from pumpctl.devices.newera_codec import (
    ETX,
    RATE_UNITS_ML_PER_H,
    VOLUME_UNITS_ML,
    FrameError,
    Request,
    RequestDecoder,
    encode_reply,
    number_text_ok,
    parse_number,
    reply_number,
)
from pumpctl.devices.physics import PumpPhysics
from pumpctl.errors import PumpCommandError
from pumpctl.pumpstatus import PumpAlarm, RunState
from pumpctl.setting import PumpModel, load_pump

#: NE-1000 plunger speed range (manual section 12.5); the rate range follows the syringe.
MAX_SPEED_CM_PER_MIN = 5.1005
MIN_SPEED_CM_PER_H = 0.004205
#: Syringe inside diameter range the NE-1000 accepts.
DIAMETER_RANGE_MM = (0.1, 50.0)
#: Diameters up to this use microlitres as volume units, larger ones millilitres.
UL_UNITS_MAX_DIAMETER_MM = 14.0
_STALL_ALARMS = {
    PumpAlarm.OCCLUSION,
    PumpAlarm.STALL,
    PumpAlarm.AIR_IN_LINE,
    PumpAlarm.PUMP_FAILURE,
    PumpAlarm.BATTERY_DEPLETED,
}


@dataclass
class _Phase:
    function: str = "RAT"


@dataclass
class _Outgoing:
    due_s: float
    data: bytes
    seq: int = 0


@dataclass
class EmulatorStats:
    """What the emulator saw: commands executed, frames rejected, replies sent."""

    executed: list[tuple[float, str]] = field(default_factory=list)
    frame_errors: list[FrameError] = field(default_factory=list)
    replies_sent: int = 0
    replies_dropped: int = 0
    alarms_sent: list[str] = field(default_factory=list)
    applied: list[tuple[float, str, str]] = field(default_factory=list)

    def count(self, command: str) -> int:
        """How many times a command (e.g. ``"RUN"``) was executed."""
        return sum(1 for _t, c in self.executed if c == command)

    def count_set(self, command: str) -> int:
        """How many times a command with arguments (a setting, e.g. ``RAT 12.5``) was applied."""
        return sum(1 for _t, c, _a in self.applied if c == command)


class Ne1000Emulator:
    """The NE-1000's protocol state machine on top of ``PumpPhysics``."""

    def __init__(
        self,
        model: PumpModel | None = None,
        clock: Clock | None = None,
        *,
        address: int = 0,
        model_number: str = "1000",
        firmware: str = "3.928",
        diameter_mm: float | None = None,
        reservoir_ml: float = 1.0e6,
        pace_baud: int | None = None,
        power_on_alarm: bool = True,
    ) -> None:
        if not 0 <= address <= 99:
            raise ValueError(f"address {address} is outside 0-99")
        self.model = model or load_pump("newera_ne1000")
        self.clock: Clock = clock or SystemClock()
        t = self.clock.now()
        self.physics = PumpPhysics(self.model, t_s=t, keep_segments=False)
        self.physics.connect_bag(t, reservoir_ml, 1.0, "syringe")
        self.model_number = model_number
        self.firmware = firmware
        self.pace_baud = pace_baud
        # -- non-volatile settings
        self.address = address
        self.safe_timeout_s = 0
        dia = diameter_mm or float(self.model.serial.get("syringe_diameter_mm", 26.59))
        self.diameter_mm = dia
        self.rate_value = 0.0
        self.rate_units = "MH"
        self.saved_rate: tuple[float, str] = (0.0, "MH")
        self.volume_ml = 0.0  # volume to be dispensed per run (0: until stopped)
        self.volume_units_override: str | None = None
        self.direction = "INF"
        self.phases: dict[int, _Phase] = {1: _Phase("RAT"), 2: _Phase("STP")}
        self.phase = 1
        self.settings: dict[str, str] = {}
        # -- volatile state
        self.state = "S"  # S stopped, P paused, I infusing, W withdrawing, X purging
        self.pending_alarm: str | None = "R" if power_on_alarm else None
        self.powered = True
        self.link_up = True
        self._timer_armed = False
        self._last_valid_s = t
        self._run_base_ml = 0.0
        self.withdrawn_ml = 0.0
        self._wdr_run_ml = 0.0
        self._wdr_t_s = t
        self._decoder = RequestDecoder()
        self._outbox: list[_Outgoing] = []
        self._seq = 0
        self._lock = threading.RLock()
        # -- fault switches (tests set these)
        self.drop_replies = 0  # execute the next N commands but send no reply
        self.corrupt_replies = 0  # flip the CRC (safe) or the prompt (basic) of N replies
        self.truncate_replies = 0  # send only the first half of N replies
        self.reply_delay_s = 0.0  # extra delay before every reply
        self.stats = EmulatorStats()
        if power_on_alarm:
            self.physics.alarms.add(PumpAlarm.RESET)

    # ------------------------------------------------------------ derived values
    @property
    def safe(self) -> bool:
        """Safe (CRC) communications mode is on."""
        return self.safe_timeout_s > 0

    def volume_units(self) -> str:
        """``UL`` or ``ML``: set by ``VOL UL|ML``, else by the syringe diameter."""
        if self.volume_units_override:
            return self.volume_units_override
        return "UL" if self.diameter_mm <= UL_UNITS_MAX_DIAMETER_MM else "ML"

    def rate_ml_per_h(self) -> float:
        """The programmed rate in mL/h."""
        return self.rate_value * RATE_UNITS_ML_PER_H[self.rate_units]

    def rate_range_ml_per_h(self) -> tuple[float, float]:
        """(min, max) rate for the current syringe, from the NE-1000 plunger speed range."""
        area_cm2 = math.pi * (self.diameter_mm / 20.0) ** 2
        return area_cm2 * MIN_SPEED_CM_PER_H, area_cm2 * MAX_SPEED_CM_PER_MIN * 60.0

    def infused_ml(self) -> float:
        """Volume infused since the last ``CLD INF`` (the pump's own count)."""
        with self._lock:
            self._sync(self.clock.now())
            return self.physics.counted_ml

    def run_state(self) -> RunState:
        """The pump's state as a ``RunState`` (for tests)."""
        with self._lock:
            self._sync(self.clock.now())
            if self.state in ("I", "W", "X"):
                return RunState.RUNNING
            return RunState.PAUSED if self.state == "P" else RunState.STOPPED

    # ------------------------------------------------------------ time
    def _sync(self, t: float) -> None:
        """Bring physics and withdraw counters to ``t``; catch self-stops (VTBI, stall)."""
        raised = self.physics.advance(t)
        if self.state in ("I", "X") and self.physics.mode is not RunState.RUNNING:
            if set(raised) & _STALL_ALARMS or self.physics.mode is RunState.ALARM:
                self._alarm("S", t)
            else:  # the phase's volume is dispensed: the program stops
                self.state = "S"
        if self.state == "W":
            rate = self.rate_ml_per_h()
            done = self._wdr_run_ml + rate * (t - self._wdr_t_s) / 3600.0
            target = self.volume_ml
            step = (min(done, target) if target > 0 else done) - self._wdr_run_ml
            self.withdrawn_ml += step
            self._wdr_run_ml += step
            self._wdr_t_s = t
            if target > 0 and self._wdr_run_ml >= target - 1e-12:
                self.state = "S"

    def tick(self) -> None:
        """Time-driven events: physics alarms, safe-mode time-out, inter-byte time-out."""
        with self._lock:
            t = self.clock.now()
            if not self.powered:
                return
            self._sync(t)
            self.stats.frame_errors.extend(self._decoder.expire(t))
            if self.safe and self._timer_armed and t - self._last_valid_s > self.safe_timeout_s:
                self._timer_armed = False
                self._alarm("T", t)

    def _alarm(self, code: str, t: float) -> None:
        """A pump alarm: the program stops; safe mode sends the alarm at once."""
        if self.state in ("I", "X"):
            self.physics.stop(t)
        self.state = "S"
        self.pending_alarm = code
        if self.safe and self.link_up:
            self.stats.alarms_sent.append(code)
            self._queue(encode_reply(self.address, "S", alarm=code, safe=True), t, 0)

    # ------------------------------------------------------------ I/O
    def receive(self, data: bytes) -> None:
        """Bytes from the host, at the clock's current time."""
        with self._lock:
            t = self.clock.now()
            if not self.powered or not self.link_up:
                return
            self._sync(t)
            for item in self._decoder.feed(data, t):
                if isinstance(item, FrameError):
                    self.stats.frame_errors.append(item)
                    if item.kind in ("crc", "length", "terminator"):
                        self._reply(t, len(item.raw), "?COM")
                    continue
                self._handle(item, t)

    def take_output(self, ahead_s: float = 0.0) -> bytes:
        """Reply bytes that are due now, or within ``ahead_s`` (in order)."""
        with self._lock:
            t = self.clock.now() + ahead_s
            due = [o for o in self._outbox if o.due_s <= t]
            if not due:
                return b""
            self._outbox = [o for o in self._outbox if o.due_s > t]
            return b"".join(o.data for o in sorted(due, key=lambda o: (o.due_s, o.seq)))

    def next_due_s(self) -> float | None:
        """When the next queued reply is due (None if nothing is queued)."""
        with self._lock:
            return min((o.due_s for o in self._outbox), default=None)

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the line (noise, a stray frame) right now."""
        with self._lock:
            self._outbox.append(_Outgoing(self.clock.now(), bytes(data), self._next_seq()))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _queue(self, frame: bytes, t: float, request_len: int) -> None:
        delay = self.reply_delay_s
        if self.pace_baud and len(frame) > 1:
            # As on a real line the reply arrives byte after byte: all but the last byte
            # are out one byte time before the last one.
            byte_s = 10.0 / self.pace_baud
            delay += (request_len + len(frame)) * byte_s
            self._outbox.append(_Outgoing(t + delay - byte_s, frame[:-1], self._next_seq()))
            self._outbox.append(_Outgoing(t + delay, frame[-1:], self._next_seq()))
            return
        if self.pace_baud:
            delay += (request_len + len(frame)) * 10.0 / self.pace_baud
        self._outbox.append(_Outgoing(t + delay, frame, self._next_seq()))

    def _reply(
        self,
        t: float,
        request_len: int,
        data: str = "",
        *,
        alarm: str | None = None,
        safe: bool | None = None,
    ) -> None:
        safe = self.safe if safe is None else safe
        frame = encode_reply(self.address, self._prompt(), data, alarm=alarm, safe=safe)
        if self.drop_replies > 0:
            self.drop_replies -= 1
            self.stats.replies_dropped += 1
            return
        if self.corrupt_replies > 0:
            self.corrupt_replies -= 1
            b = bytearray(frame)
            if safe:
                b[-2] ^= 0x5A  # CRC low byte
            else:
                b[3] = ord("#")  # the prompt
            frame = bytes(b)
        if self.truncate_replies > 0:
            self.truncate_replies -= 1
            frame = frame[: max(2, len(frame) // 2)]
        self.stats.replies_sent += 1
        self._queue(frame, t, request_len)

    def _prompt(self) -> str:
        return self.state

    # ------------------------------------------------------------ commands
    def _handle(self, req: Request, t: float) -> None:
        if not req.for_address(self.address):
            return
        if req.safe:
            self._last_valid_s = t
            if self.safe:
                self._timer_armed = True
        elif self.safe:
            return  # in safe mode only framed packets are accepted
        n = len(req.raw)
        if self.pending_alarm is not None:  # the alarm answers; the command is not executed
            code, self.pending_alarm = self.pending_alarm, None
            if code == "R":
                self.physics.acknowledge(t, PumpAlarm.RESET)
            safe = self.safe
            if req.command == "SAF" and req.args.isdigit():
                safe = int(req.args) > 0
            self._reply(t, n, alarm=code, safe=safe)
            return
        if not req.known:
            self._reply(t, n, "?")
            return
        handler = getattr(self, f"_cmd_{req.command.lower()}", None)
        if req.command == "":
            data: str | None = ""
        elif handler is None:
            data = self._cmd_generic(req)
        else:
            data = handler(req.args, t)
        if data is None:
            return
        if not data.startswith("?"):
            self.stats.executed.append((t, req.command or "STATUS"))
            if req.args:
                self.stats.applied.append((t, req.command, req.args))
        if req.command == "SAF" and not data.startswith("?"):
            self._last_valid_s = t
            self._timer_armed = self.safe
        self._reply(t, n, data)

    def _cmd_generic(self, req: Request) -> str:
        if req.args:
            self.settings[req.command] = req.args
            return ""
        return self.settings.get(req.command, "0")

    def _running(self) -> bool:
        return self.state in ("I", "W", "X")

    def _cmd_ver(self, args: str, t: float) -> str:
        return f"NE{self.model_number}V{self.firmware}" if not args else "?NA"

    def _cmd_saf(self, args: str, t: float) -> str:
        if not args:
            return str(self.safe_timeout_s)
        if not args.isdigit() or int(args) > 255:
            return "?OOR"
        self.safe_timeout_s = int(args)
        return ""

    def _cmd_adr(self, args: str, t: float) -> str:
        if not args:
            return f"{self.address}"
        text = args.split("B", 1)[0]
        if not text.isdigit() or int(text) > 99:
            return "?OOR"
        self.address = int(text)
        return ""

    def _cmd_reset(self, args: str, t: float) -> str:
        if self._running():
            return "?NA"
        self.safe_timeout_s = 0
        self.address = 0
        self.phases = {1: _Phase("RAT"), 2: _Phase("STP")}
        self.phase = 1
        return ""

    def _cmd_buz(self, args: str, t: float) -> str:
        if not args:
            return self.settings.get("BUZ", "0")
        if args[0] not in "01":
            return "?OOR"
        self.settings["BUZ"] = args
        return ""

    def _cmd_dia(self, args: str, t: float) -> str:
        if not args:
            return reply_number(self.diameter_mm)
        if self._running() or self.state == "P":
            return "?NA"
        if not number_text_ok(args):
            return "?OOR"
        value = parse_number(args)
        lo, hi = DIAMETER_RANGE_MM
        if not lo <= value <= hi:
            return "?OOR"
        self.diameter_mm = value
        self.physics.clear_volume(t)  # a new syringe: the accumulators start again
        self.withdrawn_ml = 0.0
        return ""

    def _cmd_phn(self, args: str, t: float) -> str:
        if not args:
            return f"{self.phase:02d}"
        if self._running():
            return "?NA"
        if not args.isdigit() or not 1 <= int(args) <= 41:
            return "?OOR"
        self.phase = int(args)
        self.phases.setdefault(self.phase, _Phase("RAT"))
        return ""

    def _cmd_fun(self, args: str, t: float) -> str:
        ph = self.phases.setdefault(self.phase, _Phase("RAT"))
        if not args:
            return ph.function
        if self._running():
            return "?NA"
        if args[:3] not in (
            "RAT",
            "STP",
            "FIL",
            "INC",
            "DEC",
            "CLD",
            "BEP",
            "PAS",
            "LP",
            "LPS",
            "LPE",
            "JMP",
            "PRI",
            "OUT",
            "EVN",
            "EVS",
            "EVR",
            "TRG",
        ):
            return "?"
        ph.function = args
        return ""

    def _cmd_rat(self, args: str, t: float) -> str:
        if not args:
            return f"{reply_number(self.rate_value)}{self.rate_units}"
        units = self.rate_units
        number = args
        for code in RATE_UNITS_ML_PER_H:
            if args.endswith(code):
                units, number = code, args[: -len(code)]
                break
        if not number:  # units only
            if self._running():
                return "?NA"
            self.rate_units = units
            return ""
        if not number_text_ok(number):
            return "?OOR"
        if self._running() and units != self.rate_units:
            return "?NA"  # rate units cannot be changed while pumping
        value = parse_number(number)
        rate = value * RATE_UNITS_ML_PER_H[units]
        lo, hi = self.rate_range_ml_per_h()
        if not lo <= rate <= hi:
            return "?OOR"
        self.rate_value, self.rate_units = value, units
        if not self._running():
            self.saved_rate = (value, units)  # only a rate set while stopped is stored
        self.physics.set_rate(t, rate if self.state != "X" else self._purge_rate())
        return ""

    def _cmd_vol(self, args: str, t: float) -> str:
        units = self.volume_units()
        if not args:
            return f"{reply_number(self.volume_ml / VOLUME_UNITS_ML[units])}{units}"
        if self._running():
            return "?NA"
        if args in VOLUME_UNITS_ML:
            self.volume_units_override = args
            return ""
        if not number_text_ok(args):
            return "?OOR"
        self.volume_ml = parse_number(args) * VOLUME_UNITS_ML[units]
        return ""

    def _cmd_dir(self, args: str, t: float) -> str:
        if not args:
            return self.direction
        if args not in ("INF", "WDR", "REV", "STK"):
            return "?"
        if self._running() and (self.volume_ml > 0 or self.state == "X"):
            return "?NA"
        new = {"REV": "WDR" if self.direction == "INF" else "INF", "STK": self.direction}
        direction = new.get(args, args)
        if self._running() and direction != self.direction:
            self._sync(t)
            if direction == "WDR":
                self.physics.stop(t)
                self.state, self._wdr_t_s = "W", t
            else:
                self.state = "I"
                self._start_physics(t, resume=False)
        self.direction = direction
        return ""

    def _purge_rate(self) -> float:
        return self.rate_range_ml_per_h()[1]

    def _start_physics(self, t: float, *, resume: bool) -> str | None:
        if not resume:
            self._run_base_ml = self.physics.counted_ml
        vtbi = self._run_base_ml + self.volume_ml if self.volume_ml > 0 else None
        self.physics.advance(t)
        self.physics.vtbi_ml = vtbi
        self.physics.changed()
        try:
            self.physics.start(t)
        except PumpCommandError:
            return "?NA"
        return None

    def _cmd_run(self, args: str, t: float) -> str:
        if self._running():
            return "?NA"
        resume = self.state == "P"
        if self.rate_value <= 0 or self.phases.get(1, _Phase()).function[:3] != "RAT":
            return "?NA"
        if self.direction == "WDR":
            if not resume:
                self._wdr_run_ml = 0.0
            self.state, self._wdr_t_s = "W", t
            return ""
        self.physics.set_rate(t, self.rate_ml_per_h())
        err = self._start_physics(t, resume=resume)
        if err:
            return err
        self.state = "I"
        return ""

    def _cmd_pur(self, args: str, t: float) -> str:
        if self._running():
            return "?NA"
        self.physics.set_rate(t, self._purge_rate())
        self.physics.vtbi_ml = None
        self.physics.changed()
        try:
            self.physics.start(t)
        except PumpCommandError:
            return "?NA"
        self.state = "X"
        return ""

    def _cmd_stp(self, args: str, t: float) -> str:
        if self._running():
            if self.state == "X":
                self.physics.stop(t)
                self.physics.set_rate(t, self.rate_ml_per_h())
                self.state = "S"
                return ""
            if self.state == "I":
                self.physics.stop(t)
            self.state = "P"
            return ""
        if self.state == "P":
            self.state = "S"
            return ""
        return "?NA"

    def _cmd_dis(self, args: str, t: float) -> str:
        if args:
            return "?NA"
        f = VOLUME_UNITS_ML[self.volume_units()]
        inf = reply_number(self.physics.counted_ml / f)
        wdr = reply_number(self.withdrawn_ml / f)
        return f"I{inf}W{wdr}{self.volume_units()}"

    def _cmd_cld(self, args: str, t: float) -> str:
        if args not in ("INF", "WDR"):
            return "?"
        if self._running():
            return "?NA"
        if args == "INF":
            self.physics.clear_volume(t)
            self._run_base_ml = 0.0
        else:
            self.withdrawn_ml = 0.0
        return ""

    # ------------------------------------------------------------ faults
    def stall(self) -> None:
        """The motor stalls now: alarm S (sent at once in safe mode), the pump stops."""
        with self._lock:
            t = self.clock.now()
            self._sync(t)
            self._alarm("S", t)

    def power_off(self) -> None:
        """Mains lost: the pump goes dark and silent; a running program stops."""
        with self._lock:
            t = self.clock.now()
            self._sync(t)
            self.physics.power_off(t)
            self.state = "S"
            self.powered = False
            self._outbox.clear()
            self._decoder.reset()

    def power_on(self) -> None:
        """Mains back: reset alarm R pending (sent at once in safe mode); unsaved rate lost."""
        with self._lock:
            t = self.clock.now()
            self.physics.power_on(t)
            self.powered = True
            self.state = "S"
            self.rate_value, self.rate_units = self.saved_rate
            self.physics.set_rate(t, self.rate_ml_per_h())
            self._timer_armed = False  # not until the first valid packet after power-up
            self._decoder.reset()
            self.pending_alarm = None
            self._alarm("R", t)

    def power_cut(self) -> None:
        """A short power interruption: the pump resets (``A?R``)."""
        self.power_off()
        self.power_on()

    reset = power_cut

    def unplug(self) -> None:
        """The cable is pulled: nothing gets through either way; the pump carries on."""
        with self._lock:
            self.link_up = False
            self._outbox.clear()
            self._decoder.reset()

    def replug(self) -> None:
        """The cable is back."""
        with self._lock:
            self.link_up = True


# ---------------------------------------------------------------------------
# Serving over a pseudo-terminal or TCP
# ---------------------------------------------------------------------------
class EmulatorServer:
    """Serve emulated pumps on a pty (``link="pty"``) or on 127.0.0.1 (``link="tcp:PORT"``).

    One emulator, or several with different addresses on one line (the NE-1000's network
    mode: every pump hears every command and answers only its own address). A background
    thread moves bytes between the link and the emulators and writes each reply when it
    is due: it sleeps until shortly before (a margin learned from how late this machine
    wakes sleepers) and spins the rest, so paced replies leave on time, not late. The TCP
    link takes one client at a time: a second one is closed at once and logged, and the
    first carries on. ``start()`` returns the device path or ``socket://`` URL to open.
    """

    #: Bounds of the wake-up margin (s) before a reply is due, and its starting value.
    MARGIN_MIN_S = 0.0001
    MARGIN_MAX_S = 0.002
    MARGIN_START_S = 0.0005
    #: Most a reply is written ahead of its due time to cover the cost of writing it.
    SEND_LEAD_MAX_S = 0.0002

    def __init__(
        self,
        emulator: Ne1000Emulator | Sequence[Ne1000Emulator],
        link: str = "pty",
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        emus = [emulator] if isinstance(emulator, Ne1000Emulator) else list(emulator)
        if not emus:
            raise ValueError("an emulator server needs at least one pump")
        addresses = [e.address for e in emus]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"pumps on one line need different addresses, got {addresses}")
        self.emulators = emus
        self.emulator = emus[0]
        self.link = link
        self.url = ""
        self.log: Callable[[str], None] = log or logging.getLogger("pumpctl.emulator").warning
        self.refused_clients = 0
        self.client_peer: str | None = None
        self.margin_s = self.MARGIN_START_S
        self._late: deque[float] = deque(maxlen=64)
        #: How long this machine takes from "a reply is due" to its bytes being written
        #: (collecting them and the write itself): replies are written that much early,
        #: so they reach the line when due rather than that much late.
        self.send_lead_s = 0.0
        self._send_costs: deque[float] = deque(maxlen=32)
        self._last_tick_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None

    @staticmethod
    def parse_link(link: str) -> tuple[str, int]:
        """``pty`` -> ("pty", 0); ``tcp:PORT`` -> ("tcp", PORT); else ValueError."""
        if link == "pty":
            return "pty", 0
        if link.startswith("tcp:") and link[4:].isdigit() and int(link[4:]) <= 65535:
            return "tcp", int(link[4:])
        raise ValueError(f"link {link!r} is not allowed; allowed: pty or tcp:PORT")

    def start(self) -> str:
        """Open the link, start serving, return the URL a client should open."""
        kind, port = self.parse_link(self.link)
        if kind == "pty":
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            tty.setraw(self._master)
            self.url = os.ttyname(self._slave)
        else:
            lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(("127.0.0.1", port))
            lst.listen(4)
            self._listener = lst
            self.url = f"socket://127.0.0.1:{lst.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="ne1000-emulator", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the link."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for s in (self._client, self._listener):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._master = self._slave = None
        self._client = self._listener = None

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ the line
    def _receive(self, data: bytes) -> None:
        for emu in self.emulators:  # every pump on the line hears every byte
            emu.receive(data)

    def _tick(self) -> None:
        for emu in self.emulators:
            emu.tick()

    def _due_in_s(self) -> float | None:
        """Real seconds until the next queued reply is due (None: nothing queued)."""
        best: float | None = None
        for emu in self.emulators:
            due = emu.next_due_s()
            if due is not None:
                left = (due - emu.clock.now()) / _speed(emu.clock)
                best = left if best is None else min(best, left)
        return best

    def _take_output(self, ahead_s: float = 0.0) -> bytes:
        """The replies due now or within ``ahead_s`` real seconds, earliest pump first."""
        if len(self.emulators) == 1:
            emu = self.emulator
            return emu.take_output(ahead_s * _speed(emu.clock) if ahead_s else 0.0)

        def due(emu: Ne1000Emulator) -> float:
            t = emu.next_due_s()
            return math.inf if t is None else t

        return b"".join(
            e.take_output(ahead_s * _speed(e.clock) if ahead_s else 0.0)
            for e in sorted(self.emulators, key=due)
        )

    def _wait_s(self) -> float:
        """How long to block for input: until shortly before the next reply is due."""
        left = self._due_in_s()
        if left is None:
            return 0.02
        return min(max(left - self.margin_s, 0.0), 0.02)

    def _learn(self, late_s: float) -> None:
        """Track how late a timed wait wakes; the margin covers most wake-ups."""
        self._late.append(max(late_s, 0.0))
        if len(self._late) >= 8:
            ranked = sorted(self._late)
            p90 = ranked[int(0.9 * (len(ranked) - 1))]
            self.margin_s = min(max(p90 + 5e-5, self.MARGIN_MIN_S), self.MARGIN_MAX_S)

    def _spin_until_due(self) -> None:
        """Busy-wait (yielding the GIL) the last stretch before a reply is due, less the
        time this machine takes to collect and write it."""
        left = self._due_in_s()
        if left is None or left <= self.send_lead_s:
            return
        end = time.monotonic() + left - self.send_lead_s
        while time.monotonic() < end:
            time.sleep(0)

    def _send_due(self) -> bool:
        """Write the replies due within the learned send lead; learn what a send costs."""
        t0 = time.monotonic()
        sent = self._send(self._take_output(self.send_lead_s))
        if sent:
            self._send_costs.append(time.monotonic() - t0)
            if len(self._send_costs) >= 8:
                ranked = sorted(self._send_costs)
                self.send_lead_s = min(ranked[len(ranked) // 2], self.SEND_LEAD_MAX_S)
        return sent

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except OSError:
                if self._stop.is_set():
                    return
                self._drop_client()
                self._tick()

    def _step(self) -> None:
        """One turn: wait for input or the next reply, send what is due, then keep time.

        Right after a reply is sent the thread goes straight back to waiting, so a client
        in the same process gets the interpreter at once; time-driven events (``tick``)
        run on the next quiet turn, and at least every 20 ms.
        """
        wait = self._wait_s()
        due_soon = wait < 0.02
        if due_soon and wait <= 0.0:
            self._spin_until_due()
            sent = self._send_due()
        else:
            t_wake = time.monotonic() + wait
            got_input = self._poll_input(wait)
            if due_soon and not got_input:
                self._learn(time.monotonic() - t_wake)
            sent = self._send(self._take_output())
        now = time.monotonic()
        if not sent or now - self._last_tick_s > 0.02:
            self._last_tick_s = now
            self._tick()

    def _poll_input(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for bytes (or a TCP client) and feed them in."""
        if self._master is not None:
            ready, _, _ = select.select([self._master], [], [], wait_s)
            if ready:
                data = os.read(self._master, 4096)
                if data:
                    self._receive(data)
            return bool(ready)
        assert self._listener is not None
        socks: list[socket.socket] = [self._listener]
        if self._client is not None:
            socks.append(self._client)
        ready, _, _ = select.select(socks, [], [], wait_s)  # type: ignore[arg-type]
        for s in ready:
            if s is self._listener:
                self._accept()
            else:
                data = s.recv(4096)  # type: ignore[attr-defined]
                if not data:
                    self._drop_client()
                else:
                    self._receive(data)
        return bool(ready)

    def _accept(self) -> None:
        assert self._listener is not None
        conn, addr = self._listener.accept()
        peer = f"{addr[0]}:{addr[1]}"
        if self._client is not None:  # one client at a time, as on a serial line
            self.refused_clients += 1
            with contextlib.suppress(OSError):
                conn.close()
            self.log(
                f"refused a second client from {peer}: {self.url} is in use by "
                f"{self.client_peer} (one client at a time)"
            )
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client, self.client_peer = conn, peer

    def _send(self, out: bytes) -> bool:
        if not out:
            return False
        if self._master is not None:
            os.write(self._master, out)
        elif self._client is not None:
            self._client.sendall(out)
        return True

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None
            self.client_peer = None


def _speed(clock: Clock) -> float:
    return float(getattr(clock, "speed", 1.0)) or 1.0


__all__ = ["ETX", "EmulatorServer", "EmulatorStats", "Ne1000Emulator"]
