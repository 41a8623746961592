"""New Era NE-500/NE-1000 driver over pyserial (``serial_for_url``).

Implements ``PumpDriver`` so the controller and watchdog run unchanged on a real pump.
Wire format and number rules are in ``newera_codec``. What this module adds:

* Modes: ``safe_timeout_s == 0`` is basic mode; ``> 0`` sends ``SAF n`` framed at the
  first use and CRC-frames every packet. In safe mode the pump stops with alarm T if no
  valid packet arrives within ``n`` s (fail-stop), so the caller must call
  :meth:`NewEraDriver.heartbeat` every :attr:`NewEraDriver.heartbeat_interval_s`
  (``n / 3``: two heartbeats may be lost before the pump stops), or opt in to
  :meth:`NewEraDriver.start_heartbeat`, which schedules it on the caller's clock. The
  driver starts no thread of its own.
* Exactly once: read-only commands are simply retried (bounded); commands that change
  delivery (``RAT``, ``VOL``, ``RUN``, ``STP``, ``CLD``, ``DIA``, ``DIR``, ``SAF``) are
  never re-sent blindly: after a lost or garbled reply the pump is read back (status,
  ``RAT``, ``VOL``, ``DIS``...) and the command is sent again only if it did not take
  effect. ``RUN`` is never sent to a pump that reports it is running. An alarm reply
  means the command was not executed (the reply acknowledged the alarm); after ``A?R``
  the last confirmed rate is sent again, because a rate set while running is lost at a
  reset.
* VTBI: the driver's VTBI counts from the last ``clear_volume`` (as the driver protocol
  says); the NE-1000's ``VOL`` counts from the start of a run, so the driver sends
  ``VOL = VTBI - infused so far`` (rounded down to the pump's 4 digits, never up) in the
  pump's volume units (µL for syringes up to 14 mm, mL above; ``VOL ML`` when a volume
  does not fit in µL).
* Link loss: when nothing valid answers after the bounded retries a
  ``CommunicationError`` is raised (the controller raises its communication alarm) and
  nothing is changed on the pump, which keeps its last state; a port that disappeared
  is reopened on the next call.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import serial

from pumpctl.clock import Clock, TimerHandle
from pumpctl.devices.newera_codec import (
    ACTIVE_PROMPTS,
    ALARMS,
    ERRORS,
    PROMPTS,
    RATE_UNITS_ML_PER_H,
    VOLUME_UNITS_ML,
    FrameError,
    Reply,
    ReplyDecoder,
    command_text,
    format_number,
    frame_basic_request,
    frame_safe,
    parse_dispensed,
    parse_number,
    split_number_units,
)
from pumpctl.drivers.base import (
    FLOW_STOPPING_ALARMS,
    PumpAlarm,
    PumpDriver,
    PumpIdentity,
    PumpStatus,
    RateLimits,
    RunState,
)
from pumpctl.errors import CommunicationError, InputError, PumpCommandError
from pumpctl.setting import PumpModel

try:  # the plain POSIX port class (absent on other platforms)
    from serial.serialposix import Serial as _PosixSerial
except ImportError:  # pragma: no cover
    _PosixSerial = None


def _posix_fd(ser: Any) -> int | None:
    """The file descriptor of a plain local serial port or pty, else None.

    pyserial's ``read``/``write`` add a timeout object, ``in_waiting`` ioctls and a loop
    per call; on a local port the driver reads and writes the descriptor itself (the port
    is open and non-blocking), which takes a tenth of a millisecond off every command.
    URL ports (``socket://``) and test doubles go through pyserial.
    """
    if _PosixSerial is None or type(ser) is not _PosixSerial:
        return None
    fd = getattr(ser, "fd", None)
    return fd if isinstance(fd, int) and fd >= 0 else None


Listener = Callable[[list[PumpAlarm]], None]
LinkListener = Callable[[bool, str], None]
Accept = Callable[[Reply], bool | str]

BAUD_RATES = (300, 1200, 2400, 9600, 19200)
#: Alarms the driver itself infers or the NE-1000 reports (cleared by a successful RUN).
_CLEARED_BY_RUN = frozenset(ALARMS.values()) | {PumpAlarm.VTBI_COMPLETE}
#: Display resolution of volumes (mL): how close DIS must be to the VTBI to call it done.
_VOLUME_TOLERANCE_ML = 0.0015


class SerialLike(Protocol):
    """What the driver needs from a pyserial port (tests pass fakes)."""

    timeout: float | None

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...

    @property
    def in_waiting(self) -> int: ...

    def close(self) -> None: ...


class _NoReply(Exception):
    """One attempt got no acceptable reply in time."""

    def __init__(self, waited_s: float, got_bytes: bool, errors: list[FrameError]) -> None:
        super().__init__("no reply")
        self.waited_s = waited_s
        self.got_bytes = got_bytes
        self.errors = errors


# -- what a reply to each query must look like ------------------------------------------------
# An acceptor answers True (the reply answers the query), False (it is another kind of
# reply: late or crossed, skipped) or a message: the reply has the shape of the answer
# but a value this pump cannot have (an error: never believed).
_DIS_SHAPE = re.compile(r"I(.*)W(.*)(ML|UL)\Z")
_RATE_SHAPE = re.compile(r"(.*?)(MH|MM|UH|UM)\Z")
_VOL_SHAPE = re.compile(r"(.*?)(ML|UL)\Z")
_NUMBER_SHAPE = re.compile(r"[-+\d.eE]+\Z")
#: Largest number a pump writes (4 digits; "1200.0" style allowed).
_MAX_PUMP_NUMBER = 9999.0


def _shape(data: str) -> str:
    """What kind of reply ``data`` looks like: status, dis, rate, volume, ver, dir, number."""
    if data == "":
        return "status"
    if _DIS_SHAPE.match(data):
        return "dis"
    if _RATE_SHAPE.match(data):
        return "rate"
    if _VOL_SHAPE.match(data):
        return "volume"
    if data.startswith("NE"):
        return "ver"
    if data in ("INF", "WDR", "STK"):
        return "dir"
    if _NUMBER_SHAPE.match(data):
        return "number"
    return "other"


def _pump_number(text: str, what: str, lo: float = 0.0, hi: float = _MAX_PUMP_NUMBER) -> float:
    """A number as a pump writes it, within [lo, hi]; ValueError with a clear reason."""
    try:
        value = parse_number(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number the pump writes") from None
    if len(text.replace(".", "")) > 5 or not lo <= value <= hi:
        raise ValueError(f"{what} {text!r} is outside {lo:g}-{hi:g}")
    return value


def _acceptors(limits: RateLimits, model_name: str) -> dict[str, Accept]:
    """Acceptors for each query, with the value ranges of this pump model."""

    def judged(kind: str, check: Callable[[str], None]) -> Accept:
        def ok(r: Reply) -> bool | str:
            if r.error is not None:
                return True
            shape = _shape(r.data)
            if shape != kind and shape != "other":
                return False  # another command's reply
            try:
                check(r.data)
            except ValueError as exc:
                return str(exc)
            return True

        return ok

    def rate(data: str) -> None:
        m = _RATE_SHAPE.match(data)
        if m is None:
            raise ValueError(f"rate {data!r} has no rate units (MH, MM, UH, UM)")
        value = _pump_number(m.group(1), "rate")
        ml_per_h = value * RATE_UNITS_ML_PER_H[m.group(2)]
        if ml_per_h > limits.max_ml_per_h + 1e-9:
            raise ValueError(
                f"rate {data!r} = {ml_per_h:g} mL/h is outside the {model_name} range "
                f"0-{limits.max_ml_per_h:g} mL/h"
            )

    def volume(data: str) -> None:
        m = _VOL_SHAPE.match(data)
        if m is None:
            raise ValueError(f"volume {data!r} has no volume units (ML, UL)")
        _pump_number(m.group(1), "volume")

    def dispensed(data: str) -> None:
        m = _DIS_SHAPE.match(data)
        if m is None:
            raise ValueError(f"dispensed volume {data!r} is not I<infused>W<withdrawn><units>")
        _pump_number(m.group(1), "infused volume")
        _pump_number(m.group(2), "withdrawn volume")

    def diameter(data: str) -> None:
        _pump_number(data, "syringe diameter", 0.1, 50.0)

    def safe_timeout(data: str) -> None:
        value = _pump_number(data, "safe-mode time-out", 0.0, 255.0)
        if value != int(value):
            raise ValueError(f"safe-mode time-out {data!r} is not a whole number of seconds")

    return {
        "": _status_only,
        "VER": _ver_reply,
        "DIS": judged("dis", dispensed),
        "RAT": judged("rate", rate),
        "VOL": judged("volume", volume),
        "DIA": judged("number", diameter),
        "SAF": judged("number", safe_timeout),
        "DIR": _dir_reply,
    }


def _status_only(r: Reply) -> bool:
    return r.data == "" or r.error is not None


def _ver_reply(r: Reply) -> bool:
    return r.error is not None or r.data.startswith("NE")


def _dir_reply(r: Reply) -> bool:
    return r.error is not None or r.data in ("INF", "WDR", "STK")


def _any_reply(r: Reply) -> bool:
    return True


def _lock_conflict(exc: BaseException) -> bool:
    """pyserial's error when ``exclusive=True`` finds the port locked by another process."""
    return "exclusively lock" in str(exc) or getattr(exc, "errno", None) in (11, 35)


class NewEraBus:
    """One serial line shared by NE-1000 pumps in network mode (addresses 0-99).

    Owns the port (opened once, exclusively where the OS supports it), one reply decoder
    and one lock: drivers on the bus take turns, one exchange at a time. A reply read by
    one driver that belongs to another pump on the bus (a late reply, a safe-mode
    auto-alarm) is handed to that pump's driver, so no alarm is lost. The port is closed
    when the last driver on the bus is closed (if the bus opened it).
    """

    def __init__(
        self,
        port: str | SerialLike,
        *,
        baud: int = 19200,
        timeout_s: float = 0.5,
        exclusive: bool = True,
    ) -> None:
        if baud not in BAUD_RATES:
            raise InputError(
                f"baud {baud!r} is not allowed; allowed: {', '.join(map(str, BAUD_RATES))}"
            )
        self.baud = baud
        self.timeout_s = timeout_s
        self.exclusive = exclusive
        self.url = port if isinstance(port, str) else getattr(port, "port", None) or "<port>"
        self.decoder = ReplyDecoder()
        self.lock = threading.RLock()
        self.drivers: dict[int, NewEraDriver] = {}
        self._pending: list[Reply | FrameError] = []
        self._owns_port = isinstance(port, str)
        self._ser: Any = None if isinstance(port, str) else port
        if self._ser is None:
            self._open()
        else:
            self._configure(self._ser)

    def driver(self, address: int, **kw: Any) -> NewEraDriver:
        """A driver for the pump at ``address`` on this line (``NewEraDriver`` options)."""
        kw.setdefault("baud", self.baud)
        kw.setdefault("timeout_s", self.timeout_s)
        return NewEraDriver(self, address=address, **kw)

    # -- membership
    def attach(self, drv: NewEraDriver) -> None:
        """Register a driver; one driver per address."""
        with self.lock:
            if drv.address in self.drivers:
                raise InputError(
                    f"pump address {drv.address} is already in use on {self.url}; "
                    "each pump on a line needs its own address"
                )
            self.drivers[drv.address] = drv

    def detach(self, drv: NewEraDriver) -> None:
        """Unregister a closed driver; the last one out closes the port."""
        with self.lock:
            if self.drivers.get(drv.address) is drv:
                del self.drivers[drv.address]
            if not self.drivers:
                self.close()

    def route(self, item: Reply) -> bool:
        """Hand a reply from another pump on the bus to its driver; False if nobody owns it."""
        other = self.drivers.get(item.address)
        if other is None:
            return False
        other._stray(item)
        return True

    def take_pending(self) -> list[Reply | FrameError]:
        """Items decoded after the reply an exchange was waiting for."""
        items, self._pending = self._pending, []
        return items

    def put_back(self, items: list[Reply | FrameError]) -> None:
        """Keep items that followed an accepted reply for the next drain."""
        self._pending.extend(items)

    # -- the port
    def _configure(self, ser: Any) -> None:
        with contextlib.suppress(AttributeError, ValueError, serial.SerialException):
            ser.timeout = min(self.timeout_s, 0.05)

    def _open(self) -> None:
        kw: dict[str, Any] = {
            "baudrate": self.baud,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1,
            "timeout": min(self.timeout_s, 0.05),
            "write_timeout": max(self.timeout_s, 1.0),
        }
        if self.exclusive:
            kw["exclusive"] = True
        try:
            try:
                self._ser = serial.serial_for_url(self.url, **kw)
            except (TypeError, ValueError) as exc:
                if "exclusive" not in str(exc):
                    raise
                kw.pop("exclusive")  # a port type without exclusive access
                self._ser = serial.serial_for_url(self.url, **kw)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._ser = None
            if self.exclusive and _lock_conflict(exc):
                raise CommunicationError(
                    f"{self.url} is in use by another program (it holds the port "
                    "exclusively); close the other controller first"
                ) from None
            raise CommunicationError(f"cannot open {self.url}: {exc}") from None
        for drv in self.drivers.values():
            drv._ready = False

    def port(self) -> Any:
        """The open port, reopened if it vanished (then every pump is set up again)."""
        if self._ser is None:
            if not self._owns_port:
                raise CommunicationError(f"{self.url} is closed")
            self._open()
        return self._ser

    def broken(self) -> None:
        """The port failed: close it (reopened on the next use); every pump is set up again."""
        if self._owns_port and self._ser is not None:
            with contextlib.suppress(Exception):
                self._ser.close()
            self._ser = None
        self._pending.clear()
        for drv in self.drivers.values():
            drv._ready = False

    def close(self) -> None:
        """Close the port if the bus opened it."""
        with self.lock:
            if self._ser is not None and self._owns_port:
                with contextlib.suppress(Exception):
                    self._ser.close()
            self._ser = None
            self._owns_port = False


def open_relay_pair(
    port: str | SerialLike,
    model: PumpModel | None = None,
    *,
    addresses: tuple[int, int] = (0, 1),
    **kw: Any,
) -> tuple[NewEraDriver, NewEraDriver]:
    """Two NE-1000 drivers on one serial line (network mode), for a two-pump relay.

    Serial settings come from the model's ``[serial]`` table (baud, safe-mode time-out,
    syringe diameter); ``addresses`` overrides its address. ``kw`` goes to both drivers.
    """
    if model is None:
        from pumpctl.setting import load_pump

        model = load_pump("newera_ne1000")
    a, b = addresses
    if a == b:
        raise InputError(f"relay pumps need two different addresses, got {a} and {b}")
    baud = int(kw.pop("baud", model.serial.get("baud", 19200)))
    bus = NewEraBus(port, baud=baud, timeout_s=float(kw.get("timeout_s", 0.5)))
    try:
        first = NewEraDriver.from_model(model, bus, address=a, baud=baud, **kw)
        second = NewEraDriver.from_model(model, bus, address=b, baud=baud, **kw)
    except BaseException:
        bus.close()
        raise
    return first, second


class NewEraDriver(PumpDriver):
    """One New Era NE-1000 (or NE-500) on a serial line, a TCP bridge or an emulator."""

    def __init__(
        self,
        port: str | SerialLike | NewEraBus,
        *,
        address: int = 0,
        baud: int = 19200,
        safe_timeout_s: int = 0,
        diameter_mm: float | None = None,
        limits: RateLimits | None = None,
        model: PumpModel | None = None,
        timeout_s: float = 0.5,
        retries: int = 2,
        program_phases: bool = True,
        listener: Listener | None = None,
    ) -> None:
        if model is None and limits is None:
            from pumpctl.setting import load_pump

            model = load_pump("newera_ne1000")
        super().__init__(limits or model.limits)  # type: ignore[union-attr]
        if not isinstance(address, int) or not 0 <= address <= 99:
            raise InputError(f"pump address {address!r} is not allowed; allowed: 0-99")
        if baud not in BAUD_RATES:
            raise InputError(
                f"baud {baud!r} is not allowed; allowed: {', '.join(map(str, BAUD_RATES))}"
            )
        if not isinstance(safe_timeout_s, int) or not 0 <= safe_timeout_s <= 255:
            raise InputError(
                f"safe-mode time-out {safe_timeout_s!r} s is not allowed; allowed: 0 (basic "
                "mode) or 1-255 s"
            )
        if timeout_s <= 0 or retries < 0:
            raise InputError("timeout_s must be > 0 and retries >= 0")
        self.model = model
        self.address = address
        self.baud = baud
        self.safe_timeout_s = safe_timeout_s
        self.diameter_mm = diameter_mm
        self.timeout_s = timeout_s
        self.retries = retries
        self.program_phases = program_phases
        self.listener: Listener | None = listener
        self.link_listener: LinkListener | None = None
        self.identity: PumpIdentity | None = None
        self.stats: Counter[str] = Counter()
        if isinstance(port, NewEraBus):
            if port.baud != baud:
                raise InputError(
                    f"baud {baud} differs from the shared line's {port.baud} on {port.url}"
                )
            self.bus = port
        else:
            self.bus = NewEraBus(port, baud=baud, timeout_s=timeout_s)
        self.bus.attach(self)
        name = model.name if model is not None else "pump model"
        self._accept = _acceptors(self.limits, name)
        self._url = self.bus.url
        self._decoder = self.bus.decoder
        self._lock = self.bus.lock
        self._depth = 0
        self._notify: list[PumpAlarm] = []
        self._ready = False
        self._ever_ready = False
        self._safe = False  # framing we send now
        self._link_ok = True
        self._prompt: str | None = None
        self._alarms: set[PumpAlarm] = set()
        self._rate_ml_per_h: float | None = None  # last rate the pump confirmed for us
        self._pump_rate_ml_per_h: float | None = None  # last rate read from the pump
        self._vtbi_ml: float | None = None  # driver VTBI (from the last clear_volume)
        self._vol_sent_ml: float | None = None  # per-run VOL the pump confirmed
        self._vol_units = "ML"
        self._run_base_ml = 0.0
        self._was_running = False
        self._current: str = ""
        self._restoring = False
        self._hb_timer: TimerHandle | None = None
        self._closed = False

    @classmethod
    def from_model(
        cls, model: PumpModel, port: str | SerialLike | NewEraBus, **kw: Any
    ) -> NewEraDriver:
        """A driver with the serial settings of a pump profile (``[serial]``), overridable."""
        s = model.serial
        kw.setdefault("address", int(s.get("address", 0)))
        kw.setdefault("baud", int(s.get("baud", 19200)))
        kw.setdefault("safe_timeout_s", int(s.get("safe_timeout_s", 0)))
        kw.setdefault("diameter_mm", s.get("syringe_diameter_mm"))
        return cls(port, model=model, **kw)

    # ================================================================ transport
    def _port(self) -> Any:
        if self._closed:
            raise CommunicationError(f"{self._url} is closed")
        return self.bus.port()

    def _broken(self, exc: BaseException) -> CommunicationError:
        """The port itself failed (cable or adapter gone): close it, reopen next time."""
        self.stats["port_errors"] += 1
        self.bus.broken()
        err = CommunicationError(f"lost the link to the pump on {self._url}: {exc}")
        self._link_state(False, str(err))
        return err

    def _link_state(self, ok: bool, detail: str) -> None:
        if ok != self._link_ok:
            self._link_ok = ok
            if self.link_listener is not None:
                self.link_listener(ok, detail)

    def _write(self, frame: bytes) -> None:
        ser = self._port()
        try:
            fd = _posix_fd(ser)
            done = 0
            if fd is not None:  # a local serial port or pty: one write, no bookkeeping
                with contextlib.suppress(BlockingIOError):
                    done = os.write(fd, frame)
            if done < len(frame):
                ser.write(frame[done:])  # the rest waits for room, up to the write timeout
        except (serial.SerialException, OSError) as exc:
            raise self._broken(exc) from None
        self.stats["frames_sent"] += 1
        self.stats["bytes_sent"] += len(frame)

    def _read_some(self) -> bytes:
        """What arrives within the port's read timeout (empty if nothing did)."""
        ser = self._port()
        try:
            fd = _posix_fd(ser)
            if fd is not None:  # one wait and one read per wake-up, as the line delivers
                ready, _, _ = select.select([fd], [], [], ser.timeout)
                if not ready:
                    return b""
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:  # another reader took the bytes: nothing, not a fault
                    return b""
                if not data:
                    raise serial.SerialException("the device reports data but returned none")
                return data
            n = ser.in_waiting
            data = bytes(ser.read(max(1, n)))
            if data and not n:  # woke on the first byte: take the rest that came with it
                more = ser.in_waiting
                if more:
                    data += bytes(ser.read(more))
            return data
        except (serial.SerialException, OSError) as exc:
            raise self._broken(exc) from None

    def _drain(self) -> None:
        """Before a command: take in whatever arrived unasked (late replies, auto-alarms)."""
        ser = self._port()
        try:
            fd = _posix_fd(ser)
            if fd is not None:  # everything waiting, as in_waiting + read would take
                data = b""
                while select.select([fd], [], [], 0)[0]:
                    try:
                        chunk = os.read(fd, 4096)
                    except BlockingIOError:
                        break
                    if not chunk:
                        raise serial.SerialException("the device reports data but returned none")
                    data += chunk
            else:
                n = ser.in_waiting
                data = bytes(ser.read(n)) if n else b""
        except (serial.SerialException, OSError) as exc:
            raise self._broken(exc) from None
        items = self.bus.take_pending()
        items += self._decoder.feed(data) if data else []
        items += self._decoder.flush()
        for item in items:
            if isinstance(item, Reply) and item.address == self.address:
                self._stray(item)
            elif isinstance(item, Reply) and self.bus.route(item):
                continue
            else:
                self.stats["stale_frames"] += 1

    def _stray(self, item: Reply) -> None:
        """A reply from this pump that answers nothing we are waiting for."""
        self.stats["stale_replies"] += 1
        if item.alarm is not None:
            self._note_alarm(item.alarm)  # a safe-mode auto-alarm

    def _frame(self, command: str, args: str = "", *, safe: bool | None = None) -> bytes:
        text = command_text(self.address, command, args)
        return (
            frame_safe(text)
            if (self._safe if safe is None else safe)
            else (frame_basic_request(text))
        )

    def _exchange(self, frame: bytes, accept: Accept) -> Reply:
        """One attempt: send ``frame`` and wait for an acceptable reply from our address."""
        self._drain()
        self._write(frame)
        t0 = time.monotonic()
        deadline = t0 + self.timeout_s
        got = False
        errors: list[FrameError] = []
        while True:
            data = self._read_some()
            got = got or bool(data)
            self.stats["bytes_received"] += len(data)
            items = self._decoder.feed(data)
            for i, item in enumerate(items):
                if isinstance(item, FrameError):
                    errors.append(item)
                    self.stats[f"frame_error_{item.kind}"] += 1
                    continue
                if item.address != self.address:
                    if self.bus.route(item):
                        continue
                    errors.append(FrameError("address", item.raw, f"reply from {item.address}"))
                    self.stats["other_address"] += 1
                    continue
                verdict = True if item.alarm is not None else accept(item)
                if verdict is False:
                    self.stats["stale_replies"] += 1
                    errors.append(FrameError("unexpected", item.raw, f"reply {item.data!r}"))
                    continue
                if isinstance(verdict, str):  # the answer, with an impossible value
                    self.stats["impossible_values"] += 1
                    errors.append(FrameError("value", item.raw, verdict))
                    self.bus.put_back(items[i + 1 :])
                    raise _NoReply(time.monotonic() - t0, True, errors)
                if self._safe and not item.safe:
                    self.stats["mode_mismatch"] += 1
                    self._ready = False  # the pump left safe mode: set it up again
                self._link_state(True, "")
                self.bus.put_back(items[i + 1 :])
                return item
            if time.monotonic() >= deadline:
                errors += self._decoder.flush()
                self.stats["timeouts"] += 1
                raise _NoReply(time.monotonic() - t0, got, errors)

    def _comm_error(self, failures: list[_NoReply], what: str) -> CommunicationError:
        waited = sum(f.waited_s for f in failures)
        shown = round(max(waited, self.timeout_s * len(failures)), 1)
        errors = [e for f in failures for e in f.errors]
        impossible = [e for e in errors if e.kind == "value"]
        if impossible:
            msg = (
                f"pump at {self.address} on {self._url} answered {what} with an impossible "
                f"value: {impossible[-1].detail}; not believed"
            )
        elif not any(f.got_bytes for f in failures):
            msg = (
                f"no reply from pump at {self.address} on {self._url} within {shown:.1f} s; "
                "check cable, baud and address"
            )
        else:
            last = errors[-1] if errors else None
            why = f"; last: {last.kind} {last.detail}".rstrip() if last else ""
            msg = (
                f"no valid reply from pump at {self.address} on {self._url} to {what} within "
                f"{shown:.1f} s ({len(errors)} bad or stray frames{why}); check baud, mode "
                "and cable"
            )
        err = CommunicationError(msg)
        self._link_state(False, msg)
        return err

    # ================================================================ protocol core
    def _query(
        self,
        command: str,
        args: str = "",
        *,
        accept: Accept | None = None,
        attempts: int | None = None,
        safe: bool | None = None,
    ) -> Reply:
        """A read-only command: retried on a lost or bad reply; alarms are noted and it is
        asked again (the alarm reply acknowledged the alarm; the query was not answered)."""
        acc = accept or self._accept.get(command, _any_reply)
        frame = self._frame(command, args, safe=safe)
        tries = attempts if attempts is not None else self.retries + 1
        failures: list[_NoReply] = []
        alarms = 0
        while True:
            try:
                reply = self._exchange(frame, acc)
            except _NoReply as miss:
                failures.append(miss)
                if len(failures) >= tries:
                    raise self._comm_error(failures, command or "status") from None
                self.stats["retries"] += 1
                continue
            if reply.alarm is not None:
                alarms += 1
                self._on_alarm_reply(reply)
                if alarms > 3:
                    raise CommunicationError(
                        f"pump at {self.address} on {self._url} keeps answering with alarms"
                    )
                continue
            if reply.error in ("?COM", "?IGN"):
                failures.append(_NoReply(0.0, True, [FrameError("format", reply.raw, reply.data)]))
                if len(failures) >= tries:
                    raise self._comm_error(failures, command or "status")
                continue
            self._note_prompt(reply.prompt)
            if reply.error is not None:
                meaning = ERRORS.get(reply.error, "error")
                raise PumpCommandError(
                    f"pump refused {command or 'status'}{args}: {reply.error} ({meaning})"
                )
            return reply

    def _apply(
        self,
        command: str,
        args: str,
        verify: Callable[[], bool],
        *,
        what: str,
        retry_alarms: frozenset[str] = frozenset(ALARMS),
        safe: bool | None = None,
    ) -> Reply | None:
        """Send a command that changes the pump exactly once.

        After a lost or garbled reply (or ``?COM``/``?IGN``) the pump is read back with
        ``verify`` before anything is sent again; ``None`` means the read-back showed the
        command had taken effect. Errors from the pump raise ``PumpCommandError``.
        """
        frame = self._frame(command, args, safe=safe)
        sends = 0
        prev, self._current = self._current, command
        try:
            while True:
                sends += 1
                try:
                    reply = self._exchange(frame, _status_only)
                except _NoReply as miss:
                    self.stats["lost_replies"] += 1
                    self.stats["read_backs"] += 1
                    if self._read_back(verify, command, what):
                        return None
                    if sends > self.retries:
                        err = self._comm_error([miss], what)
                        raise CommunicationError(
                            f"{err}; read back: {self._outcome(command, what, known=True)}"
                        ) from None
                    self.stats["resends"] += 1
                    continue
                if reply.alarm is not None:  # not executed: the reply acknowledged an alarm
                    self._on_alarm_reply(reply)
                    if reply.alarm not in retry_alarms:
                        alarm = ALARMS[reply.alarm]
                        raise PumpCommandError(
                            f"pump reported alarm {reply.alarm} ({alarm.value}); {what} not done"
                        )
                    if sends > self.retries + 3:
                        raise CommunicationError(
                            f"pump at {self.address} keeps answering {what} with alarms"
                        )
                    continue
                if reply.error in ("?COM", "?IGN"):
                    self.stats["read_backs"] += 1
                    if self._read_back(verify, command, what):
                        return None
                    if sends > self.retries:
                        raise CommunicationError(
                            f"pump at {self.address} rejected {what} {sends} times "
                            f"({reply.data}); read back: "
                            f"{self._outcome(command, what, known=True)}"
                        )
                    continue
                self._note_prompt(reply.prompt)
                if reply.error is not None:
                    meaning = ERRORS.get(reply.error, "error")
                    raise PumpCommandError(f"pump refused {what}: {reply.error} ({meaning})")
                return reply
        finally:
            self._current = prev

    def _read_back(self, verify: Callable[[], bool], command: str, what: str) -> bool:
        """Whether a command whose reply was lost took effect; if the pump cannot be read
        back either, a ``CommunicationError`` that says what may have happened."""
        try:
            return verify()
        except CommunicationError as exc:
            raise CommunicationError(
                f"no reply to {what} from pump at {self.address} on {self._url}, and reading "
                f"it back failed ({exc}); {self._outcome(command, what, known=False)}"
            ) from None

    def _outcome(self, command: str, what: str, *, known: bool) -> str:
        """What the pump is doing after a command that may not have taken effect."""
        if not known:
            if command == "RUN":
                return "its state is unknown: the pump may be running"
            if command == "STP":
                return "its state is unknown: the pump may still be running"
            return f"{what} may or may not have taken effect"
        state = PROMPTS.get(self._prompt or "", RunState.STOPPED).value
        if command in ("RUN", "STP"):
            return f"the pump is {state}; {what} did not take effect"
        return f"{what} did not take effect (the pump is {state})"

    def _note_alarm(self, code: str) -> None:
        alarm = ALARMS[code]
        self.stats[f"alarm_{code}"] += 1
        if code == "R" and not self._ever_ready:
            return  # the power-on reset alarm at first contact: expected, not an event
        if alarm not in self._alarms:
            self._alarms.add(alarm)
            self._notify.append(alarm)
        self._prompt = "S"
        self._was_running = False

    def _on_alarm_reply(self, reply: Reply) -> None:
        assert reply.alarm is not None
        self._note_alarm(reply.alarm)
        if reply.alarm == "R":
            self._vol_sent_ml = None  # re-check VOL before the next run
            if self._rate_ml_per_h is not None and not self._restoring and self._current != "RAT":
                self._restoring = True
                try:
                    self.stats["rate_restores"] += 1
                    self._send_rate(self._rate_ml_per_h)
                finally:
                    self._restoring = False

    def _note_prompt(self, prompt: str | None, infused_ml: float | None = None) -> None:
        if prompt is None:
            return
        self._prompt = prompt
        if prompt in ACTIVE_PROMPTS:
            self._was_running = True
            return
        if prompt == "S" and self._was_running and infused_ml is not None:
            self._was_running = False
            vtbi = self._vtbi_ml
            done = vtbi is not None and infused_ml >= vtbi - _VOLUME_TOLERANCE_ML
            if done and PumpAlarm.VTBI_COMPLETE not in self._alarms:
                self._alarms.add(PumpAlarm.VTBI_COMPLETE)
                self._notify.append(PumpAlarm.VTBI_COMPLETE)

    @contextlib.contextmanager
    def _op(self) -> Iterator[None]:
        """One public operation: under the lock, set up first, tell the listener after."""
        notify: list[PumpAlarm] = []
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._ensure_ready()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    notify, self._notify = self._notify, []
        if notify and self.listener is not None:
            self.listener(notify)

    # ================================================================ set-up
    def _ensure_ready(self) -> None:
        if self._ready:
            return
        self._decoder.reset()
        if self.safe_timeout_s > 0:
            self._safe = True
            n = str(self.safe_timeout_s)
            self._apply(
                "SAF",
                n,
                lambda: self._query("SAF", attempts=1).data == n,
                what=f"SAF {n}",
                safe=True,
            )
        else:
            self._safe = False
            self._probe_basic()
        ver = self._query("VER").data
        m = re.match(r"NE(\w+?)V(\d+(?:\.\d+)?)", ver)
        model, fw = (f"NE{m.group(1)}", m.group(2)) if m else (ver, "")
        self.identity = PumpIdentity(model=model, firmware=fw, address=self.address)
        prompt = self._query("").prompt
        stopped = prompt == "S"
        if self.program_phases and stopped:
            self._program_single_phase()
        if self.diameter_mm is not None:
            self._ensure_diameter(stopped)
        if self._query("DIR").data != "INF" and stopped:
            self._apply("DIR", "INF", lambda: self._query("DIR").data == "INF", what="DIR INF")
        value, units = split_number_units(self._query("VOL").data, VOLUME_UNITS_ML)
        self._vol_units = units
        self._vol_sent_ml = value * VOLUME_UNITS_ML[units]
        rate, runits = split_number_units(self._query("RAT").data, RATE_UNITS_ML_PER_H)
        self._pump_rate_ml_per_h = rate * RATE_UNITS_ML_PER_H[runits]
        if self._rate_ml_per_h is None and self._pump_rate_ml_per_h > 0:
            self._rate_ml_per_h = self._pump_rate_ml_per_h
        self._ready = self._ever_ready = True

    def _probe_basic(self) -> None:
        """First contact in basic mode; a pump left in safe mode gets the manual's SAF0 packet."""
        first: _NoReply | None = None
        try:
            reply = self._exchange(self._frame("", safe=False), _status_only)
        except _NoReply as miss:
            first, reply = miss, None
        if reply is not None and reply.alarm is not None:
            self._on_alarm_reply(reply)
        if reply is not None and not reply.safe:
            return
        self.stats["saf0_recoveries"] += 1
        try:
            got = self._exchange(self._frame("SAF", "0", safe=True), _status_only)
        except _NoReply as miss:
            raise self._comm_error([f for f in (first, miss) if f is not None], "status") from None
        if got.alarm is not None:  # not executed: send it again
            self._on_alarm_reply(got)
            self._apply(
                "SAF",
                "0",
                lambda: self._query("", attempts=1, safe=False) is not None,
                what="SAF 0",
                safe=True,
            )

    def _program_single_phase(self) -> None:
        """Phase 1 RATE, phase 2 STOP: the pump stops when VOL is dispensed, on any NE pump.

        Pumps without a pumping program (``PHN`` unknown) are left as they are.
        """
        steps = (("PHN", "1"), ("FUN", "RAT"), ("PHN", "2"), ("FUN", "STP"), ("PHN", "1"))
        for i, (cmd, arg) in enumerate(steps):
            try:
                self._apply(cmd, arg, lambda: False, what=f"{cmd} {arg}")
            except PumpCommandError:
                self.stats["no_program_support"] += 1
                if i > 0:  # leave phase 1 selected
                    with contextlib.suppress(PumpCommandError):
                        self._apply("PHN", "1", lambda: False, what="PHN 1")
                return

    def _ensure_diameter(self, stopped: bool) -> None:
        assert self.diameter_mm is not None
        text = format_number(self.diameter_mm, rounding="half_up")
        have = parse_number(self._query("DIA").data)
        if abs(have - float(text)) < 1e-9:
            return
        if not stopped:
            raise PumpCommandError(
                f"the pump's syringe diameter is {have:g} mm, not {text} mm, and it is running;"
                " stop it before changing the syringe"
            )
        self._apply(
            "DIA",
            text,
            lambda: abs(parse_number(self._query("DIA").data) - float(text)) < 1e-9,
            what=f"DIA {text}",
        )

    # ================================================================ helpers
    def _dis_ml(self) -> tuple[float, str]:
        reply = self._query("DIS")
        inf, _wdr, units = parse_dispensed(reply.data)
        volume = inf * VOLUME_UNITS_ML[units]
        self._note_prompt(reply.prompt, volume)
        return volume, reply.prompt or "S"

    def _read_rate(self) -> float:
        value, units = split_number_units(self._query("RAT").data, RATE_UNITS_ML_PER_H)
        self._pump_rate_ml_per_h = value * RATE_UNITS_ML_PER_H[units]
        return self._pump_rate_ml_per_h

    def _send_rate(self, rate_ml_per_h: float) -> None:
        text = format_number(rate_ml_per_h)
        want = float(text)

        def applied() -> bool:
            return abs(self._read_rate() - want) <= 1e-9 * max(1.0, want)

        self._apply("RAT", f"{text}MH", applied, what=f"RAT {text} MH")
        self._rate_ml_per_h = self._pump_rate_ml_per_h = want

    def _send_vol(self, per_run_ml: float) -> None:
        """Program the pump's per-run volume, in its units, rounded down to 4 digits."""
        units = self._vol_units
        value = per_run_ml / VOLUME_UNITS_ML[units]
        if units == "UL" and value >= 9999.5:
            self._apply("VOL", "ML", lambda: self._query("VOL").data.endswith("ML"), what="VOL ML")
            units = self._vol_units = "ML"
            value = per_run_ml
        text = format_number(value, rounding="down")
        if float(text) <= 0:
            raise PumpCommandError(
                f"VTBI step {per_run_ml:g} mL is below the pump's resolution in {units}"
            )
        sent_ml = float(text) * VOLUME_UNITS_ML[units]

        def applied() -> bool:
            v, u = split_number_units(self._query("VOL").data, VOLUME_UNITS_ML)
            return abs(v * VOLUME_UNITS_ML[u] - sent_ml) <= 1e-9 * max(1.0, sent_ml)

        try:
            self._apply("VOL", text, applied, what=f"VOL {text} {units}")
        except PumpCommandError as exc:
            if "?NA" in str(exc):
                raise PumpCommandError(
                    "the NE-1000 does not take a new VTBI while it runs; stop it first"
                ) from None
            raise
        self._vol_sent_ml = sent_ml

    def _status_prompt(self) -> str:
        return self._query("").prompt or "S"

    # ================================================================ driver hooks
    def _do_identify(self) -> PumpIdentity:
        with self._op():
            ver = self._query("VER").data
            m = re.match(r"NE(\w+?)V(\d+(?:\.\d+)?)", ver)
            model, fw = (f"NE{m.group(1)}", m.group(2)) if m else (ver, "")
            self.identity = PumpIdentity(model=model, firmware=fw, address=self.address)
            return self.identity

    def _do_set_rate(self, rate_ml_per_h: float) -> None:
        with self._op():
            self._send_rate(rate_ml_per_h)

    def _do_set_vtbi(self, vtbi_ml: float) -> None:
        with self._op():
            infused, prompt = self._dis_ml()
            base = infused if prompt == "S" else self._run_base_ml
            per_run = vtbi_ml - base
            if per_run <= _VOLUME_TOLERANCE_ML:
                raise PumpCommandError(
                    f"VTBI {vtbi_ml:g} mL is already infused ({base:.3f} mL since the last "
                    "clear); clear the volume or program a larger VTBI"
                )
            self._send_vol(per_run)
            assert self._vol_sent_ml is not None
            self._run_base_ml = base
            self._vtbi_ml = base + self._vol_sent_ml
            self._alarms.discard(PumpAlarm.VTBI_COMPLETE)

    def _do_start(self) -> None:
        run_sent = False
        try:
            with self._op():
                prompt = self._status_prompt()
                if prompt in ACTIVE_PROMPTS:
                    return  # already running: never a second RUN
                if prompt == "S":  # a new run: the pump counts VOL from here
                    infused, prompt = self._dis_ml()
                    if prompt in ACTIVE_PROMPTS:
                        return
                    self._run_base_ml = infused
                    if self._vtbi_ml is not None:
                        per_run = self._vtbi_ml - infused
                        if per_run <= _VOLUME_TOLERANCE_ML:
                            raise PumpCommandError(
                                "cannot start: VTBI already infused; program a new VTBI"
                            )
                        if self._vol_sent_ml is None or abs(per_run - self._vol_sent_ml) > 1e-6:
                            self._send_vol(per_run)
                rate = self._rate_ml_per_h if self._rate_ml_per_h is not None else self._read_rate()
                if rate <= 0:
                    raise PumpCommandError("cannot start: no rate programmed")

                def started() -> bool:
                    return self._status_prompt() in ACTIVE_PROMPTS

                run_sent = True
                self._apply("RUN", "", started, what="RUN", retry_alarms=frozenset("RT"))
                self._was_running = True
                self._alarms -= _CLEARED_BY_RUN
        except CommunicationError as exc:
            if run_sent:
                raise
            raise CommunicationError(f"{exc}; RUN was not sent") from None

    def _do_stop(self) -> None:
        with self._op():
            prompt = self._status_prompt()
            for _ in range(4):
                if prompt == "S":
                    break
                before = prompt

                def changed(before: str = before) -> bool:
                    return self._status_prompt() != before

                try:
                    reply = self._apply("STP", "", changed, what="STP")
                except PumpCommandError as exc:
                    if "?NA" in str(exc):  # already stopped
                        break
                    raise
                prompt = (
                    reply.prompt if reply is not None and reply.prompt else (self._prompt or "S")
                )
            else:
                raise PumpCommandError(f"pump did not stop (still {prompt})")
            self._was_running = False
            self._prompt = "S"

    def _do_clear_volume(self) -> None:
        with self._op():
            before, _prompt = self._dis_ml()

            def cleared() -> bool:
                now, _p = self._dis_ml()
                return before <= 1e-6 or now < before - 1e-6

            self._apply("CLD", "INF", cleared, what="CLD INF")
            self._run_base_ml = 0.0

    def _do_status(self) -> PumpStatus:
        with self._op():
            infused, prompt = self._dis_ml()
            state = PROMPTS.get(prompt, RunState.STOPPED)
            if state is RunState.STOPPED and self._alarms & FLOW_STOPPING_ALARMS:
                state = RunState.ALARM
            rate = self._rate_ml_per_h
            if rate is None:
                rate = self._pump_rate_ml_per_h or 0.0
            vtbi = self._vtbi_ml
            if vtbi is None and self._vol_sent_ml:  # the pump's own VOL, set by someone else
                vtbi = self._run_base_ml + self._vol_sent_ml
            return PumpStatus(
                run_state=state,
                rate_ml_per_h=rate,
                vtbi_ml=vtbi,
                volume_infused_ml=infused,
                alarms=frozenset(self._alarms),
            )

    def _do_close(self) -> None:
        self.stop_heartbeat()
        with self._lock:
            if not self._closed:
                self._closed = True
                self.bus.detach(self)
            self._ready = False

    # ================================================================ extras
    @property
    def heartbeat_interval_s(self) -> float:
        """How often ``heartbeat()`` must run in safe mode (timeout / 3); 0 in basic mode."""
        return self.safe_timeout_s / 3.0

    def heartbeat(self) -> RunState:
        """Send a status query: the safe-mode keep-alive (also a cheap poll in basic mode)."""
        with self._op():
            reply = self._query("")
            if reply.prompt == "S" and self._alarms & FLOW_STOPPING_ALARMS:
                return RunState.ALARM
            return PROMPTS.get(reply.prompt or "S", RunState.STOPPED)

    def start_heartbeat(self, clock: Clock, interval_s: float | None = None) -> None:
        """Opt in: run ``heartbeat()`` on ``clock`` every ``interval_s`` (default timeout/3).

        Errors do not escape the clock: a lost link is reported to ``link_listener`` (and
        by every other call, which raises ``CommunicationError``).
        """
        period = interval_s or self.heartbeat_interval_s or 1.0
        self.stop_heartbeat()

        def tick() -> None:
            self._hb_timer = clock.call_later(period, tick)
            with contextlib.suppress(CommunicationError, PumpCommandError):
                self.heartbeat()

        self._hb_timer = clock.call_later(period, tick)

    def stop_heartbeat(self) -> None:
        """Cancel the heartbeat started by ``start_heartbeat``."""
        if self._hb_timer is not None:
            self._hb_timer.cancel()
            self._hb_timer = None

    def acknowledge(self, alarm: PumpAlarm) -> None:
        """Forget an alarm the pump reported (it was already acknowledged on the wire)."""
        with self._lock:
            self._alarms.discard(alarm)

    def read_rate_ml_per_h(self) -> float:
        """The rate programmed in the pump now (``RAT`` query), in mL/h."""
        with self._op():
            return self._read_rate()

    def read_vol_ml(self) -> float:
        """The pump's own volume to be dispensed per run (``VOL`` query), in mL; 0 = none."""
        with self._op():
            v, u = split_number_units(self._query("VOL").data, VOLUME_UNITS_ML)
            return v * VOLUME_UNITS_ML[u]

    def query(self, command: str, args: str = "") -> Reply:
        """Send a read-only command (``""`` status, ``VER``, ``DIS``...) and return the reply."""
        with self._op():
            return self._query(command.upper(), args)

    @property
    def on_alarm(self) -> Listener | None:
        """Alias of ``listener``: called with the list of newly reported ``PumpAlarm``s."""
        return self.listener

    @on_alarm.setter
    def on_alarm(self, fn: Listener | None) -> None:
        self.listener = fn

    @property
    def url(self) -> str:
        """The port URL or device path."""
        return str(self._url)

    @property
    def frame_errors(self) -> int:
        """Bad frames seen on the wire so far (garbage, partial, CRC, length, format)."""
        return self._decoder.error_count
