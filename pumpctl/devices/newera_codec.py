"""Pure codec for the New Era NE-500/NE-1000 RS-232 protocol (no I/O, no clock).

Wire formats (New Era NE-1000 user manual, RS-232 protocol; see docs/serial.md)::

    basic request   [addr] CMD [args] CR             b"RAT12.5MH\\r", b"1RUN\\r"
    safe request    STX len data CRC_hi CRC_lo ETX   len = len(data) + 4
    basic reply     STX addr(2 digits) status [data] ETX
    safe reply      STX len data CRC_hi CRC_lo ETX   data = addr status [data]

The CRC is CRC-16/XMODEM (CCITT, init 0) over ``data`` only: ``SAF0`` gives 0x5543, so
the manual's packet for returning to basic mode is ``02 08 53 41 46 30 55 43 03``.

Addressing: the address is omitted for pump 0 (as in the manual's ``SAF0`` packet and as
several public clients do), except for a bare status query, which is sent as ``0`` so
that a packet is never empty. Numbers: at most 4 digits and at most 3 after the point
(:func:`format_number`). Both decoders accept bytes in any fragmentation, report every
bad frame as a :class:`FrameError` (never dropped silently) and count them.
"""

from __future__ import annotations

import binascii
import math
import re
from collections import Counter
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Literal

from pumpctl.errors import PumpCommandError
from pumpctl.pumpstatus import PumpAlarm, RunState

STX = 0x02
ETX = 0x03
CR = 0x0D

#: Status prompts and what the mechanism does (W withdrawing and X purging move it too).
PROMPTS: dict[str, RunState] = {
    "I": RunState.RUNNING,  # infusing
    "W": RunState.RUNNING,  # withdrawing
    "X": RunState.RUNNING,  # purging
    "S": RunState.STOPPED,  # pumping program stopped
    "P": RunState.PAUSED,  # pumping program paused
    "T": RunState.PAUSED,  # pause phase
    "U": RunState.PAUSED,  # waiting for a trigger
}
#: Prompts during which the pumping program is under way (RUN would be refused).
ACTIVE_PROMPTS = frozenset("IWXTU")

#: Alarm characters after ``A?``.
ALARMS: dict[str, PumpAlarm] = {
    "R": PumpAlarm.RESET,  # pump was reset (power interrupted)
    "S": PumpAlarm.STALL,  # motor stalled
    "T": PumpAlarm.SAFE_TIMEOUT,  # safe-mode communications time-out
    "E": PumpAlarm.PROGRAM_ERROR,  # pumping program error
    "O": PumpAlarm.OUT_OF_RANGE,  # pumping program phase out of range
}

#: Error replies in the data field, and what they mean.
ERRORS: dict[str, str] = {
    "?": "command not recognised",
    "?NA": "command not applicable now",
    "?OOR": "command data out of range",
    "?COM": "invalid communications packet received",
    "?IGN": "command ignored (simultaneous new phase start)",
}

#: Rate units and their factor to mL/h.
RATE_UNITS_ML_PER_H: dict[str, float] = {"MH": 1.0, "MM": 60.0, "UH": 1e-3, "UM": 0.06}
#: Volume units and their factor to mL.
VOLUME_UNITS_ML: dict[str, float] = {"ML": 1.0, "UL": 1e-3}

#: Commands a request decoder recognises (longest first, spaces are stripped on the wire).
COMMANDS: tuple[str, ...] = (
    "RESET",
    "DIA",
    "PHN",
    "FUN",
    "RAT",
    "VOL",
    "DIR",
    "RUN",
    "PUR",
    "STP",
    "DIS",
    "CLD",
    "SAF",
    "VER",
    "BUZ",
    "ADR",
    "LOC",
    "TRG",
    "DIN",
    "ROM",
    "OUT",
    "TIM",
    "AL",
    "PF",
    "BP",
    "IN",
)

#: Longest basic frame we wait for before calling it garbage (real replies are < 30 bytes).
MAX_BASIC_FRAME = 96
#: Most data a safe frame can carry (the length byte counts itself, the CRC and ETX).
MAX_SAFE_DATA = 255 - 4
#: Gap between bytes after which the pump discards an incomplete safe packet.
INTER_BYTE_TIMEOUT_S = 0.5

_NUMBER_RE = re.compile(r"^(\d*)(?:\.(\d*))?$")


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (CCITT polynomial 0x1021, initial value 0) of ``data``."""
    return binascii.crc_hqx(data, 0)


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------
Rounding = Literal["exact", "half_up", "down"]


def _decimals_for(value: Decimal) -> int:
    int_digits = len(str(int(value))) if value >= 1 else 1
    return max(0, min(3, 4 - int_digits))


def format_number(value: float, *, rounding: Rounding = "exact") -> str:
    """Format a non-negative number as the pump reads it: <= 4 digits, <= 3 after the point.

    ``exact`` (the default) refuses a value that does not fit exactly, so a rate is never
    silently changed; ``half_up`` rounds to the nearest representable value and ``down``
    truncates toward zero (used for volumes: the pump never gets more than asked for).
    12.5 -> "12.5", 0.0125 -> error ("0.013" half up, "0.012" down), 1234.5 -> error
    ("1235" half up, "1234" down); anything >= 9999.5 (or 10000 down) is an error.
    """
    if not math.isfinite(value) or value < 0:
        raise PumpCommandError(f"{value!r} cannot be sent to the pump: need a number >= 0")
    d = Decimal(repr(float(value)))
    decimals = _decimals_for(d)
    mode = ROUND_DOWN if rounding == "down" else ROUND_HALF_UP
    q = d.quantize(Decimal(1).scaleb(-decimals), rounding=mode)
    if _decimals_for(q) < decimals:  # rounding carried into a new integer digit (999.95)
        decimals = _decimals_for(q)
        q = d.quantize(Decimal(1).scaleb(-decimals), rounding=mode)
    if q >= 10000:
        raise PumpCommandError(
            f"{value:g} does not fit the pump's number format (at most 4 digits, 0-9999)"
        )
    if rounding == "exact" and abs(float(q) - float(value)) > 1e-9 * max(1.0, abs(value)):
        raise PumpCommandError(
            f"{value:g} does not fit the pump's number format (at most 4 digits, at most 3 "
            "after the point); round it first"
        )
    text = f"{q:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def number_text_ok(text: str) -> bool:
    """True if ``text`` is a number the pump accepts: <= 4 digits, <= 3 after the point."""
    m = _NUMBER_RE.match(text)
    if m is None or not (m.group(1) or m.group(2)):
        return False
    whole = (m.group(1) or "").lstrip("0")
    frac = m.group(2) or ""
    return len(frac) <= 3 and len(whole) + len(frac) <= 4


def parse_number(text: str) -> float:
    """A number as the pump writes it ("26.59", "0.000", "1200.0", ".5", "12")."""
    m = _NUMBER_RE.match(text)
    if m is None or not (m.group(1) or m.group(2)):
        raise ValueError(f"not a pump number: {text!r}")
    return float(text if m.group(1) else "0" + text)


def reply_number(value: float) -> str:
    """How the emulated pump writes a number: 4 significant digits, always with a point.

    "0.000", "1.500", "12.50", "999.9"; four-digit integers are written "1200.0" so that
    parsers expecting digits on both sides of the point and parsers expecting a point
    at all both accept them.
    """
    v = max(0.0, float(value))
    for decimals in (3, 2, 1):
        text = f"{v:.{decimals}f}"
        if len(text.split(".")[0]) <= 4 - decimals:
            return text
    return f"{min(v, 9999.0):.1f}"


def split_number_units(text: str, units: dict[str, float]) -> tuple[float, str]:
    """Split ``"12.50MH"`` into (12.5, "MH") given the allowed unit codes."""
    for code in units:
        if text.endswith(code):
            return parse_number(text[: -len(code)]), code
    raise ValueError(f"no unit ({'/'.join(units)}) at the end of {text!r}")


def parse_dispensed(text: str) -> tuple[float, float, str]:
    """The ``DIS`` reply ``I<v>W<v><units>`` as (infused, withdrawn, units)."""
    m = re.fullmatch(r"I([\d.]+)W([\d.]+)(ML|UL)", text)
    if m is None:
        raise ValueError(f"not a DIS reply: {text!r}")
    return parse_number(m.group(1)), parse_number(m.group(2)), m.group(3)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------
def command_text(address: int, command: str, args: str = "") -> bytes:
    """The command data ``[addr]CMD[args]``; address 0 is omitted unless the packet is empty."""
    if not 0 <= address <= 99:
        raise ValueError(f"address {address} is outside 0-99")
    body = f"{command}{args}"
    prefix = str(address) if address or not body else ""
    return (prefix + body).encode("ascii")


def frame_basic_request(text: bytes) -> bytes:
    """Basic mode: the command data followed by CR."""
    return text + b"\r"


def frame_safe(data: bytes) -> bytes:
    """Safe mode framing (both directions): STX len data CRC_hi CRC_lo ETX."""
    if len(data) > MAX_SAFE_DATA:
        raise ValueError(f"safe packet data is {len(data)} bytes; at most {MAX_SAFE_DATA}")
    crc = crc16_xmodem(data)
    return bytes([STX, len(data) + 4]) + data + crc.to_bytes(2, "big") + bytes([ETX])


def encode_command(address: int, command: str, args: str = "", *, safe: bool = False) -> bytes:
    """A whole request packet, basic or safe."""
    text = command_text(address, command, args)
    return frame_safe(text) if safe else frame_basic_request(text)


def reply_text(address: int, prompt: str, data: str = "", *, alarm: str | None = None) -> bytes:
    """Reply data ``addr(2 digits) status [data]``; an alarm replaces the prompt with ``A?x``."""
    status = f"A?{alarm}" if alarm else prompt
    return f"{address:02d}{status}{data}".encode("ascii")


def encode_reply(
    address: int, prompt: str, data: str = "", *, alarm: str | None = None, safe: bool = False
) -> bytes:
    """A whole reply packet, basic (STX text ETX) or safe."""
    text = reply_text(address, prompt, data, alarm=alarm)
    return frame_safe(text) if safe else bytes([STX]) + text + bytes([ETX])


# ---------------------------------------------------------------------------
# Decoded items
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """One reply from a pump."""

    address: int
    prompt: str | None  # I W S P T U X, or None for an alarm reply
    alarm: str | None  # R S T E O, or None
    data: str  # text after the status ("" for a status-only reply)
    safe: bool  # came in a safe (CRC) frame
    raw: bytes = b""

    @property
    def error(self) -> str | None:
        """``?``, ``?NA``, ``?OOR``, ``?COM``, ``?IGN`` (or another ``?...``), else None."""
        return self.data if self.data.startswith("?") else None

    @property
    def run_state(self) -> RunState:
        """The prompt as a ``RunState`` (ALARM for an alarm reply)."""
        if self.alarm is not None or self.prompt is None:
            return RunState.ALARM
        return PROMPTS[self.prompt]

    @property
    def pump_alarm(self) -> PumpAlarm | None:
        """The alarm as a ``PumpAlarm``."""
        return ALARMS.get(self.alarm) if self.alarm else None


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that did not make a valid frame: garbage, partial, bad length, CRC or format."""

    kind: str  # garbage | partial | timeout | length | terminator | crc | format
    raw: bytes
    detail: str = ""


_REPLY_RE = re.compile(rb"(\d{1,2})(?:A\?([A-Z])|([IWSPTUX]))([\x20-\x7e]*)\Z")
_NOT_PRINTABLE_RE = re.compile(rb"[^\x20-\x7e]")
_ADDRESS_RE = re.compile(rb"\d{1,2}")


def parse_reply_text(text: bytes, *, safe: bool = False, raw: bytes = b"") -> Reply:
    """Parse ``addr status [data]``; raise ``ValueError`` if it is not a reply."""
    m = _REPLY_RE.match(text)
    if m is None:
        if not text.isascii():
            raise ValueError("non-ASCII bytes in reply")
        if _NOT_PRINTABLE_RE.search(text):
            raise ValueError("control bytes in reply")
        head = _ADDRESS_RE.match(text)
        if head is not None and len(text) > head.end():
            status = chr(text[head.end()])
            raise ValueError(
                f"unknown status {status!r} in reply {text.decode('ascii')!r}; allowed: "
                "I W X S P T U or an alarm A?x"
            )
        raise ValueError(f"not a reply: {text.decode('ascii')!r}")
    alarm = m.group(2).decode("ascii") if m.group(2) is not None else None
    if alarm is not None and alarm not in ALARMS:
        raise ValueError(f"unknown alarm A?{alarm}")
    prompt = m.group(3).decode("ascii") if m.group(3) is not None else None
    return Reply(int(m.group(1)), prompt, alarm, m.group(4).decode("ascii"), safe, raw)


class _Decoder:
    """Shared buffer, error counting and inter-byte time-out of both decoders."""

    def __init__(self, inter_byte_timeout_s: float | None = None) -> None:
        self.buf = bytearray()
        self.inter_byte_timeout_s = inter_byte_timeout_s
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self._last_byte_s: float | None = None

    @property
    def error_count(self) -> int:
        """All frame errors seen so far."""
        return sum(self.errors.values())

    @property
    def pending(self) -> bool:
        """An incomplete frame is waiting for more bytes."""
        return bool(self.buf)

    def _err(self, out: list, kind: str, raw: bytes | bytearray, detail: str = "") -> None:
        self.errors[kind] += 1
        out.append(FrameError(kind, bytes(raw), detail))

    def _check_gap(self, now_s: float | None, out: list) -> None:
        if now_s is None:
            return
        last, self._last_byte_s = self._last_byte_s, now_s
        if (
            self.buf
            and self._timeout_applies()
            and self.inter_byte_timeout_s is not None
            and last is not None
            and now_s - last > self.inter_byte_timeout_s
        ):
            self._err(out, "timeout", self.buf, "inter-byte time-out: partial packet discarded")
            self.buf.clear()

    def _timeout_applies(self) -> bool:
        return True

    def expire(self, now_s: float) -> list[FrameError]:
        """Discard a partial frame whose last byte is older than the inter-byte time-out."""
        out: list[FrameError] = []
        if (
            self.buf
            and self._timeout_applies()
            and self.inter_byte_timeout_s is not None
            and self._last_byte_s is not None
            and now_s - self._last_byte_s > self.inter_byte_timeout_s
        ):
            self._err(out, "timeout", self.buf, "inter-byte time-out: partial packet discarded")
            self.buf.clear()
        return out

    def flush(self) -> list[FrameError]:
        """Give up on a partial frame (end of a read): it counts as an error."""
        out: list[FrameError] = []
        if self.buf:
            self._err(out, "partial", self.buf, "incomplete frame")
            self.buf.clear()
        return out

    def reset(self) -> None:
        """Forget buffered bytes without counting them (a fresh start)."""
        self.buf.clear()
        self._last_byte_s = None

    def _safe_frame(self, out: list) -> tuple[bytes, bytes] | None | bool:
        """Try to cut a safe frame at the head of the buffer.

        Returns (data, frame) when complete and valid, None when more bytes are needed,
        False when an error was reported and bytes were dropped.
        """
        buf = self.buf
        if len(buf) < 2:
            return None
        length = buf[1]
        if length < 4:
            self._err(out, "length", buf[:2], f"length byte {length} < 4")
            del buf[:1]
            return False
        total = 1 + length
        if len(buf) < total:
            return None
        frame = bytes(buf[:total])
        if frame[-1] != ETX:
            self._err(out, "terminator", frame, f"byte {total - 1} is 0x{frame[-1]:02x}, not ETX")
            del buf[:1]
            return False
        data, crc = frame[2:-3], int.from_bytes(frame[-3:-1], "big")
        del buf[:total]
        if crc16_xmodem(data) != crc:
            self._err(out, "crc", frame, f"CRC 0x{crc:04x} != 0x{crc16_xmodem(data):04x}")
            return False
        return data, frame


class ReplyDecoder(_Decoder):
    """Incremental decoder of pump replies, basic or safe (told apart by the byte after STX).

    A basic reply starts ``STX digit``; a safe reply starts ``STX len`` with len < 0x30 for
    any reply the pump sends (the longest is ~20 bytes), so the two never collide.
    """

    def feed(self, data: bytes, now_s: float | None = None) -> list[Reply | FrameError]:
        """Add bytes; return every reply or frame error they complete, in order."""
        out: list[Reply | FrameError] = []
        self._check_gap(now_s, out)
        self.buf.extend(data)
        buf = self.buf
        while buf:
            if buf[0] != STX:
                cut = buf.find(bytes([STX]))
                cut = len(buf) if cut < 0 else cut
                self._err(out, "garbage", buf[:cut], "bytes outside a frame")
                del buf[:cut]
                continue
            if len(buf) < 2:
                break
            if 0x30 <= buf[1] <= 0x39:  # basic: STX addr ... ETX
                end = buf.find(bytes([ETX]), 1)
                nxt = buf.find(bytes([STX]), 1)
                if nxt != -1 and (end == -1 or nxt < end):
                    self._err(out, "partial", buf[:nxt], "new frame before ETX")
                    del buf[:nxt]
                    continue
                if end == -1:
                    if len(buf) > MAX_BASIC_FRAME:
                        self._err(out, "garbage", buf, "no ETX")
                        buf.clear()
                    break
                frame = bytes(buf[: end + 1])
                del buf[: end + 1]
                try:
                    out.append(parse_reply_text(frame[1:-1], safe=False, raw=frame))
                    self.frames += 1
                except ValueError as exc:
                    self._err(out, "format", frame, str(exc))
                continue
            got = self._safe_frame(out)
            if got is None:
                break
            if got is False:
                continue
            assert isinstance(got, tuple)
            text, frame = got
            try:
                out.append(parse_reply_text(text, safe=True, raw=frame))
                self.frames += 1
            except ValueError as exc:
                self._err(out, "format", frame, str(exc))
        return out


# ---------------------------------------------------------------------------
# Requests (the pump's side, for the emulator)
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    """One command as the pump understands it (spaces and control bytes stripped)."""

    address: int | None  # None when omitted (means pump 0)
    broadcast: bool  # ``*`` system address: every pump accepts it
    command: str  # "" for a status query; the raw text for an unknown command
    args: str
    safe: bool
    known: bool = True
    raw: bytes = b""

    def for_address(self, address: int) -> bool:
        """Whether the pump at ``address`` should act on (and answer) this request."""
        return self.broadcast or (self.address or 0) == address


#: Bytes the pump ignores in a command: spaces, control bytes and anything not ASCII.
_IGNORED_BYTES = bytes(b for b in range(256) if not 0x20 < b < 0x7F)
_COMMAND_RE = re.compile("(" + "|".join(re.escape(c) for c in COMMANDS) + ")")
_TEXT_ADDRESS_RE = re.compile(r"\d{1,2}")


def parse_request_text(text: bytes, *, safe: bool = False, raw: bytes = b"") -> Request:
    """Parse command data the way the pump does: strip spaces/control bytes, upper-case."""
    s = text.translate(None, _IGNORED_BYTES).decode("ascii").upper()
    broadcast = s.startswith("*")
    if broadcast:
        s = s[1:]
    m = _TEXT_ADDRESS_RE.match(s)
    address = int(m.group(0)) if m and not broadcast else None
    if m and not broadcast:
        s = s[m.end() :]
    c = _COMMAND_RE.match(s)
    if c is not None:
        name = c.group(1)
        return Request(address, broadcast, name, s[len(name) :], safe, True, raw)
    if s == "":
        return Request(address, broadcast, "", "", safe, True, raw)
    return Request(address, broadcast, s, "", safe, False, raw)


class RequestDecoder(_Decoder):
    """Incremental decoder of host commands: CR-terminated basic lines and safe packets.

    The 0.5 s inter-byte time-out applies to safe packets only (basic mode is meant for
    people typing at a terminal).
    """

    def __init__(self, inter_byte_timeout_s: float | None = INTER_BYTE_TIMEOUT_S) -> None:
        super().__init__(inter_byte_timeout_s)
        self._in_safe = False

    def _timeout_applies(self) -> bool:
        return self._in_safe

    def feed(self, data: bytes, now_s: float | None = None) -> list[Request | FrameError]:
        """Add bytes; return every request or frame error they complete, in order."""
        out: list[Request | FrameError] = []
        self._check_gap(now_s, out)
        if not self.buf:
            self._in_safe = False
        for b in data:
            buf = self.buf
            if self._in_safe:
                buf.append(b)
                self._cut_safe(out)
                continue
            if b == STX and not any(0x20 < c < 0x7F for c in buf):
                buf.clear()
                buf.append(b)
                self._in_safe = True
                continue
            if b == STX:
                self._err(out, "partial", buf, "basic command interrupted by a safe packet")
                buf.clear()
                buf.append(b)
                self._in_safe = True
                continue
            if b == CR:
                line = bytes(buf) + b"\r"
                buf.clear()
                out.append(parse_request_text(line, safe=False, raw=line))
                self.frames += 1
                continue
            buf.append(b)
            if len(buf) > 4 * MAX_BASIC_FRAME:
                self._err(out, "garbage", buf, "line too long")
                buf.clear()
        return out

    def _cut_safe(self, out: list) -> None:
        got = self._safe_frame(out)
        if got is None:
            return
        self._in_safe = False
        if got is False:
            rest = bytes(self.buf)  # re-scan what follows the dropped byte(s)
            self.buf.clear()
            out.extend(self.feed(rest))
            return
        assert isinstance(got, tuple)
        text, frame = got
        out.append(parse_request_text(text, safe=True, raw=frame))
        self.frames += 1
