"""HL7 v2 ER7 on python-hl7: read, build, acknowledge, and MLLP send.

Parsing, escaping and MLLP framing are the ``hl7`` package's; this module only adds safe
field access (a missing field is ``""``, never an exception), a small segment builder
and the MLLP client used by ``pumpctl hl7 send`` and the outbox sender.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import hl7
from hl7.mllp import open_hl7_connection

from pumpctl.errors import InputError

#: A field value for ``seg``: text, a list of components, or a list of repetitions (tuple).
FieldValue = str | int | float | None | Sequence[object]

_TEMPLATE = hl7.parse("MSH|^~\\&|\r")


class Hl7FormatError(InputError):
    """The text is not an HL7 v2 message (no MSH, bad separators, binary junk)."""


def strip_comments(text: str) -> str:
    """Drop ``# `` provenance lines and blank lines; join segments with carriage returns."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.strip("\x0b\x1c ") for ln in text.split("\n")]
    kept = [ln for ln in lines if ln and not ln.startswith("#")]
    return "\r".join(kept)


def parse_er7(text: str) -> hl7.Message:
    """One ER7 message (segments on lines or joined by CR) as a python-hl7 ``Message``."""
    er7 = strip_comments(text)
    if not er7.startswith("MSH") or len(er7) < 8:
        first = er7[:20] if er7 else "nothing"
        raise Hl7FormatError(
            f"not an HL7 v2 message: starts with {first!r}; allowed: MSH|^~\\&|..."
        )
    if er7[3] != "|" or er7[4:8] != "^~\\&":
        raise Hl7FormatError(
            f"unsupported MSH separators {er7[3:8]!r}; allowed: the HL7 defaults |^~\\&"
        )
    try:
        msg = hl7.parse(er7)
    except Exception as exc:  # python-hl7 raises assorted errors on junk
        raise Hl7FormatError(f"cannot parse the message: {exc}") from None
    return msg


def split_messages(text: str) -> list[str]:
    """Several messages in one text (a stream file): each starts at an ``MSH`` line."""
    out: list[list[str]] = []
    for ln in strip_comments(text).split("\r"):
        if ln.startswith("MSH") or not out:
            out.append([])
        out[-1].append(ln)
    return ["\r".join(m) for m in out if m]


def val(seg: hl7.Segment | None, field: int, comp: int = 1, rep: int = 1, sub: int = 1) -> str:
    """Field ``field``, component ``comp`` of a segment, unescaped; ``""`` when absent."""
    if seg is None:
        return ""
    try:
        return str(seg.extract_field(1, field, rep, comp, sub)).strip()
    except (IndexError, KeyError, TypeError, AttributeError):
        return ""


def components(seg: hl7.Segment | None, field: int, rep: int = 1) -> list[str]:
    """Every component of a field (up to 9), unescaped."""
    return [val(seg, field, c, rep) for c in range(1, 10)]


def segments(msg: hl7.Message, name: str) -> list[hl7.Segment]:
    """All segments called ``name`` (possibly none)."""
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def first(msg: hl7.Message, name: str) -> hl7.Segment | None:
    """The first segment called ``name``, or None."""
    found = segments(msg, name)
    return found[0] if found else None


def escape(text: str) -> str:
    """Escape HL7 delimiters in a value (python-hl7's escape with the default separators)."""
    return str(_TEMPLATE.escape(str(text)))


def _field(value: FieldValue) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):  # repetitions
        return "~".join(_field(v) for v in value)
    if isinstance(value, list):  # components (a component may be a list of subcomponents)
        return "^".join(
            "&".join(escape(s) for s in c) if isinstance(c, list) else escape(_text(c))
            for c in value
        ).rstrip("^")
    return escape(_text(value))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return fmt_num(value)
    return str(value)


def fmt_num(value: float, places: int = 4) -> str:
    """A number as HL7 NM text: no exponent, no trailing zeros."""
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def seg(name: str, *fields: FieldValue) -> str:
    """One segment as ER7 text; trailing empty fields are dropped."""
    if name == "MSH":
        body = "|".join(_field(f) for f in fields[2:])
        return f"MSH|^~\\&|{body}".rstrip("|")
    return f"{name}|" + "|".join(_field(f) for f in fields).rstrip("|") if fields else name


def message(segs: Iterable[str]) -> str:
    """Segments joined with carriage returns, re-parsed by python-hl7 to prove they parse."""
    text = "\r".join(segs)
    return str(parse_er7(text))


def hl7_time(epoch_s: float) -> str:
    """HL7 DTM in UTC with an explicit offset, e.g. ``20260101120000+0000``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y%m%d%H%M%S+0000")


def msh(
    *,
    sending_app: FieldValue,
    receiving_app: FieldValue,
    time_s: float,
    msg_type: list[str],
    control_id: str,
    profile: list[str],
    accept_ack: str = "AL",
    app_ack: str = "NE",
    receiving_facility: FieldValue = None,
) -> str:
    """An MSH segment for HL7 v2.6 in UTF-8 with an IHE message profile in MSH-21."""
    return seg(
        "MSH",
        None,
        None,
        sending_app,
        "PUMPCTL",
        receiving_app,
        receiving_facility,
        hl7_time(time_s),
        None,
        msg_type,
        control_id,
        "P",
        "2.6",
        None,
        None,
        accept_ack,
        app_ack,
        None,
        "UNICODE UTF-8",
        ["en", "English", "ISO639"],
        None,
        profile,
    )


def ack_code(msg: hl7.Message) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, ERR text) of an acknowledgement; MSA-1 is ``""`` if there is none."""
    msa = first(msg, "MSA")
    err = first(msg, "ERR")
    text = val(err, 8) or val(err, 5, 2) or val(err, 3, 2)
    return val(msa, 1), val(msa, 2), text or val(msa, 3)


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0-65535), or an InputError naming the flag."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"{flag} {text!r} is not HOST:PORT; allowed: e.g. 127.0.0.1:2575")
    return host.strip("[]"), int(port)


async def send_and_wait(host: str, port: int, er7: str, timeout_s: float) -> hl7.Message:
    """Send one message over MLLP and return the acknowledgement (python-hl7 streams)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await open_hl7_connection(host, port)
    try:
        async with asyncio.timeout(timeout_s):
            writer.writeblock(er7.encode("utf-8"))
            await writer.drain()
            block = await reader.readblock()
        return parse_er7(block.decode("utf-8", errors="replace"))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
