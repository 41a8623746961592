"""NE-1000 codec: byte-exact frames, numbers, and decoders under fragmentation and corruption."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpctl.devices.newera_codec import (
    ETX,
    STX,
    FrameError,
    Reply,
    ReplyDecoder,
    Request,
    RequestDecoder,
    crc16_xmodem,
    encode_command,
    encode_reply,
    format_number,
    frame_safe,
    number_text_ok,
    parse_dispensed,
    parse_number,
    reply_number,
    split_number_units,
)
from pumpctl.drivers.base import PumpAlarm, RunState
from pumpctl.errors import PumpCommandError

# ------------------------------------------------------------------ byte-exact frames


def test_saf0_packet_is_the_manuals() -> None:
    assert encode_command(0, "SAF", "0", safe=True) == bytes.fromhex("02 08 53 41 46 30 55 43 03")
    assert crc16_xmodem(b"SAF0") == 0x5543


@pytest.mark.parametrize(
    ("address", "command", "args", "wire"),
    [
        (0, "RAT", "12.5MH", b"RAT12.5MH\r"),
        (0, "RUN", "", b"RUN\r"),
        (0, "", "", b"0\r"),  # a bare status query keeps the address so it is not empty
        (7, "", "", b"7\r"),
        (12, "STP", "", b"12STP\r"),
        (99, "DIS", "", b"99DIS\r"),
        (3, "CLD", "INF", b"3CLDINF\r"),
    ],
)
def test_basic_commands_byte_exact(address: int, command: str, args: str, wire: bytes) -> None:
    assert encode_command(address, command, args) == wire


def test_safe_command_layout() -> None:
    frame = encode_command(1, "RAT", "12.5MH", safe=True)
    data = b"1RAT12.5MH"
    assert frame[0] == STX and frame[-1] == ETX
    assert frame[1] == len(data) + 4 == len(frame) - 1
    assert frame[2:-3] == data
    assert int.from_bytes(frame[-3:-1], "big") == crc16_xmodem(data)


@pytest.mark.parametrize(
    ("args", "wire"),
    [
        (dict(address=0, prompt="S"), b"\x0200S\x03"),
        (dict(address=5, prompt="I", data="12.50MH"), b"\x0205I12.50MH\x03"),
        (dict(address=0, prompt="S", alarm="R"), b"\x0200A?R\x03"),
        (dict(address=0, prompt="S", data="?OOR"), b"\x0200S?OOR\x03"),
        (dict(address=0, prompt="S", data="I0.200W0.000ML"), b"\x0200SI0.200W0.000ML\x03"),
    ],
)
def test_basic_replies_byte_exact(args: dict, wire: bytes) -> None:
    assert encode_reply(**args) == wire


def test_safe_reply_crc() -> None:
    frame = encode_reply(0, "S", safe=True)
    assert frame == b"\x02\x0700S" + crc16_xmodem(b"00S").to_bytes(2, "big") + b"\x03"


def test_address_range() -> None:
    with pytest.raises(ValueError):
        encode_command(100, "RUN")


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("value", "exact", "half_up", "down"),
    [
        (12.5, "12.5", "12.5", "12.5"),
        (999.9, "999.9", "999.9", "999.9"),
        (0.1, "0.1", "0.1", "0.1"),
        (100.0, "100", "100", "100"),
        (9999.0, "9999", "9999", "9999"),
        (26.59, "26.59", "26.59", "26.59"),
        (0.001, "0.001", "0.001", "0.001"),
        (0.0125, None, "0.013", "0.012"),
        (1234.5, None, "1235", "1234"),
        (999.95, None, "1000", "999.9"),
        (12.3456, None, "12.35", "12.34"),
        (0.0, "0", "0", "0"),
    ],
)
def test_format_number(value: float, exact: str | None, half_up: str, down: str) -> None:
    if exact is None:
        with pytest.raises(PumpCommandError, match="4 digits"):
            format_number(value)
    else:
        assert format_number(value) == exact
    assert format_number(value, rounding="half_up") == half_up
    assert format_number(value, rounding="down") == down


@pytest.mark.parametrize("value", [10000.0, 99999.0, -1.0, float("nan"), float("inf")])
def test_format_number_refuses(value: float) -> None:
    with pytest.raises(PumpCommandError):
        format_number(value, rounding="half_up")


@given(st.floats(min_value=0, max_value=9999.4, allow_nan=False))
def test_formatted_numbers_are_valid_pump_numbers(value: float) -> None:
    step = 10.0 ** -min(3, 4 - len(str(int(value))))
    for rounding, bound in (("half_up", step / 2), ("down", step)):
        text = format_number(value, rounding=rounding)
        assert number_text_ok(text), text
        assert abs(parse_number(text) - value) <= bound + 1e-9
        if rounding == "down":
            assert parse_number(text) <= value + 1e-12  # never more than asked for


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("12.5", True),
        ("0.012", True),
        ("1234", True),
        ("12345", False),
        (".0125", False),
        ("1.2345", False),
        ("", False),
        (".", False),
        ("1.", True),
        ("012.5", True),
    ],
)
def test_number_text_ok(text: str, ok: bool) -> None:
    assert number_text_ok(text) is ok


def test_reply_numbers_parse_back() -> None:
    assert [reply_number(v) for v in (0, 1.5, 12.5, 999.9, 1200, 26.59)] == [
        "0.000",
        "1.500",
        "12.50",
        "999.9",
        "1200.0",
        "26.59",
    ]
    assert split_number_units("12.50MH", {"MH": 1.0, "MM": 60.0}) == (12.5, "MH")
    assert parse_dispensed("I16.09W0.000ML") == (16.09, 0.0, "ML")
    assert parse_number(".5") == 0.5
    with pytest.raises(ValueError):
        parse_dispensed("I1W")


# ------------------------------------------------------------------ reply decoder


def test_reply_fields_and_states() -> None:
    items = ReplyDecoder().feed(
        b"\x0200I\x03\x0200A?S\x03\x0200S?NA\x03\x0200P\x03" + encode_reply(3, "W", safe=True)
    )
    replies = [r for r in items if isinstance(r, Reply)]
    assert [r.run_state for r in replies] == [
        RunState.RUNNING,
        RunState.ALARM,
        RunState.STOPPED,
        RunState.PAUSED,
        RunState.RUNNING,
    ]
    assert replies[1].pump_alarm is PumpAlarm.STALL
    assert replies[2].error == "?NA"
    assert replies[4].safe and replies[4].address == 3


@pytest.mark.parametrize(
    ("code", "alarm"),
    [
        ("R", PumpAlarm.RESET),
        ("S", PumpAlarm.STALL),
        ("T", PumpAlarm.SAFE_TIMEOUT),
        ("E", PumpAlarm.PROGRAM_ERROR),
        ("O", PumpAlarm.OUT_OF_RANGE),
    ],
)
def test_every_alarm_character(code: str, alarm: PumpAlarm) -> None:
    for safe in (False, True):
        (r,) = ReplyDecoder().feed(encode_reply(0, "S", alarm=code, safe=safe))
        assert isinstance(r, Reply) and r.pump_alarm is alarm and r.run_state is RunState.ALARM


@pytest.mark.parametrize("err", ["?", "?NA", "?OOR", "?COM", "?IGN"])
def test_every_error_reply(err: str) -> None:
    (r,) = ReplyDecoder().feed(encode_reply(0, "S", err))
    assert isinstance(r, Reply) and r.error == err


@pytest.mark.parametrize("prompt", list("IWSPTUX"))
def test_every_status_character(prompt: str) -> None:
    (r,) = ReplyDecoder().feed(encode_reply(0, prompt))
    assert isinstance(r, Reply) and r.prompt == prompt


def test_garbage_partial_and_bad_frames_are_counted() -> None:
    d = ReplyDecoder()
    good = encode_reply(0, "S", safe=True)
    bad_crc = bytearray(good)
    bad_crc[-2] ^= 1
    items = d.feed(b"\xff\x00junk" + b"\x0200I" + bytes(bad_crc) + b"\x0200Q\x03" + good)
    kinds = [i.kind for i in items if isinstance(i, FrameError)]
    assert kinds == ["garbage", "partial", "crc", "format"]
    assert [i for i in items if isinstance(i, Reply)][0].safe
    assert d.error_count == 4
    assert d.feed(b"\x0200S") == [] and d.pending
    assert [e.kind for e in d.flush()] == ["partial"]


def test_inter_byte_timeout_discards_partial_frame() -> None:
    d = ReplyDecoder(inter_byte_timeout_s=0.5)
    assert d.feed(b"\x02\x0700", now_s=0.0) == []
    (err, reply) = d.feed(b"\x0200S\x03", now_s=0.6)
    assert isinstance(err, FrameError) and err.kind == "timeout"
    assert isinstance(reply, Reply)


# -- properties --------------------------------------------------------------------

_reply_frames = st.builds(
    lambda addr, prompt, data, alarm, safe: encode_reply(
        addr, prompt, "" if alarm else data, alarm=alarm, safe=safe
    ),
    st.integers(0, 99),
    st.sampled_from(list("IWSPTUX")),
    st.sampled_from(
        [
            "",
            "12.50MH",
            "I0.200W0.000ML",
            "?",
            "?NA",
            "?OOR",
            "?COM",
            "?IGN",
            "NE1000V3.928",
            "INF",
            "26.59",
            "0.500UL",
        ]
    ),
    st.sampled_from([None, None, None, "R", "S", "T", "E", "O"]),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_reply_frames, min_size=1, max_size=8), st.data())
def test_any_fragmentation_decodes_the_same(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frames)
    whole = ReplyDecoder().feed(stream)
    assert all(isinstance(r, Reply) for r in whole) and len(whole) == len(frames)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=20)))
    d = ReplyDecoder()
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    got: list = []
    for piece in pieces:
        got += d.feed(piece)
    assert got == whole
    assert d.error_count == 0 and not d.pending


@settings(max_examples=500, deadline=None)
@given(_reply_frames.filter(lambda f: f[1] < 0x30), st.data())
def test_any_single_corrupted_byte_in_a_safe_frame_is_caught(
    frame: bytes, data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(frame) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(frame)
    bad[i] ^= flip
    d = ReplyDecoder()
    items = d.feed(bytes(bad)) + d.flush()
    good = ReplyDecoder().feed(frame)[0]
    # never a wrong reply; always at least one counted error
    assert good not in items or bytes(bad) == frame
    assert not any(isinstance(x, Reply) for x in items)
    assert d.error_count >= 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 99),
            st.sampled_from(["", "RUN", "STP", "VER", "DIS", "RAT", "VOL"]),
            st.sampled_from(["", "12.5", "INF"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_request_stream_any_fragmentation(cmds: list, data: st.DataObject) -> None:
    stream = b"".join(encode_command(a, c, x if c else "", safe=s) for a, c, x, s in cmds)
    whole = RequestDecoder().feed(stream)
    assert len(whole) == len(cmds) and all(isinstance(r, Request) for r in whole)
    for (a, c, _x, s), r in zip(cmds, whole, strict=True):
        assert isinstance(r, Request)
        assert (r.address or 0) == a and r.command == c and r.safe == s
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=15)))
    d = RequestDecoder()
    got: list = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += d.feed(stream[a:b])
    assert got == whole


# ------------------------------------------------------------------ request decoder


def test_requests_as_the_pump_reads_them() -> None:
    items = RequestDecoder().feed(
        b"0rat 12.5 mh\r\n" + encode_command(0, "SAF", "10", safe=True) + b"*ADR3\r\r12VER\rXYZ\r"
    )
    reqs = [r for r in items if isinstance(r, Request)]
    assert [(r.address, r.command, r.args, r.safe) for r in reqs] == [
        (0, "RAT", "12.5MH", False),
        (None, "SAF", "10", True),
        (None, "ADR", "3", False),
        (None, "", "", False),
        (12, "VER", "", False),
        (None, "XYZ", "", False),
    ]
    assert reqs[2].broadcast and reqs[2].for_address(42)
    assert not reqs[4].for_address(0) and reqs[4].for_address(12)
    assert not reqs[5].known


def test_request_bad_safe_packets() -> None:
    good = frame_safe(b"RUN")
    bad = bytearray(good)
    bad[3] ^= 0x20
    d = RequestDecoder()
    items = d.feed(bytes(bad) + good + b"\x02\x02", now_s=0.0)
    kinds = [i.kind if isinstance(i, FrameError) else i.command for i in items]
    assert kinds == ["crc", "RUN", "length"]
    assert d.pending  # the second STX opened a packet; the inter-byte time-out ends it
    assert d.feed(b"VER\r", now_s=0.2) == []  # bytes that keep coming belong to the packet
    assert [e.kind for e in d.expire(0.8)] == ["timeout"]
    (r,) = d.feed(b"VER\r", now_s=0.9)
    assert isinstance(r, Request) and r.command == "VER"


def test_request_safe_packet_inter_byte_timeout() -> None:
    d = RequestDecoder()
    assert d.feed(frame_safe(b"RUN")[:4], now_s=0.0) == []
    assert [e.kind for e in d.expire(0.6)] == ["timeout"]
    (r,) = d.feed(frame_safe(b"STP"), now_s=0.7)
    assert isinstance(r, Request) and r.command == "STP"
    # a slow typist in basic mode is never timed out
    assert d.feed(b"DI", now_s=1.0) == [] and d.expire(9.0) == []
    (r,) = d.feed(b"S\r", now_s=9.0)
    assert isinstance(r, Request) and r.command == "DIS"
