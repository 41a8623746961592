"""Fuzz the serial decoders: arbitrary bytes (and mangled real packets) into the emulator's
request decoder, the emulator itself, the driver's reply decoder and the driver. Nothing
may raise anything but the documented error types, hang, or grow without bound."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpctl.clock import SimClock
from pumpctl.devices.ne1000 import Ne1000Emulator
from pumpctl.devices.newera_codec import (
    COMMANDS,
    MAX_BASIC_FRAME,
    FrameError,
    Reply,
    ReplyDecoder,
    Request,
    RequestDecoder,
    encode_command,
    encode_reply,
)
from pumpctl.drivers.base import RateLimits, RunState
from pumpctl.drivers.newera import NewEraDriver
from pumpctl.errors import CommunicationError, PumpCommandError
from tests.helpers import FakePort

LIMITS = RateLimits(0.1, 999.9, 0.1, 9999.0)
#: Longest a decoder may hold bytes that do not (yet) make a frame.
MAX_BUFFERED = 4 * MAX_BASIC_FRAME + 256

_args = st.sampled_from(
    ["", "12.5MH", "999.9", "0", "-1", "1e9", "ML", "UL", "INF", "WDR", "5", "1", "99999", "?"]
)
_request = st.builds(
    lambda addr, cmd, arg, safe: encode_command(addr, cmd, arg, safe=safe),
    st.integers(0, 99),
    st.sampled_from(("", *COMMANDS)),
    _args,
    st.booleans(),
)
_reply = st.builds(
    lambda addr, prompt, data, alarm, safe: encode_reply(
        addr, prompt, data, alarm=alarm, safe=safe
    ),
    st.one_of(st.just(0), st.integers(0, 99)),
    st.sampled_from("IWXSPTU"),
    st.sampled_from(["", "12.50MH", "99999.9MH", "-1ML", "I1.0W0.0ML", "NE1000V3.928", "?OOR"]),
    st.sampled_from([None, "R", "S", "T"]),
    st.booleans(),
)


def _mangled(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid packets, raw noise, and valid packets with bytes flipped, cut or glued."""
    flipped = st.tuples(valid, st.integers(0, 40), st.integers(1, 255)).map(
        lambda t: (
            t[0][: t[1] % len(t[0])]
            + bytes([t[0][t[1] % len(t[0])] ^ t[2]])
            + t[0][t[1] % len(t[0]) + 1 :]
        )
    )
    cut = st.tuples(valid, st.integers(0, 40)).map(lambda t: t[0][: t[1]])
    return st.one_of(valid, st.binary(max_size=64), flipped, cut)


_stream = st.lists(_mangled(_request), max_size=30)
_reply_stream = st.lists(_mangled(_reply), max_size=30)


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=_stream, gaps=st.lists(st.floats(0, 2), max_size=30))
def test_request_decoder_takes_any_bytes(chunks: list[bytes], gaps: list[float]) -> None:
    dec = RequestDecoder()
    t = 0.0
    for i, chunk in enumerate(chunks):
        t += gaps[i] if i < len(gaps) else 0.0
        for item in dec.feed(chunk, t):
            assert isinstance(item, Request | FrameError)
            if isinstance(item, Request):
                assert item.address is None or 0 <= item.address <= 99
        assert len(dec.buf) <= MAX_BUFFERED
    dec.expire(t + 1.0)
    dec.flush()
    assert not dec.pending


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=_reply_stream)
def test_reply_decoder_takes_any_bytes(chunks: list[bytes]) -> None:
    dec = ReplyDecoder()
    for chunk in chunks:
        for item in dec.feed(chunk):
            assert isinstance(item, Reply | FrameError)
            if isinstance(item, Reply):
                assert 0 <= item.address <= 99
                assert item.data.isascii() and item.data.isprintable()
        assert len(dec.buf) <= MAX_BUFFERED
    dec.flush()
    assert not dec.pending


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=_stream, steps=st.lists(st.floats(0, 30), max_size=30))
def test_emulator_takes_any_bytes_and_only_sends_valid_frames(
    chunks: list[bytes], steps: list[float]
) -> None:
    clock = SimClock()
    emu = Ne1000Emulator(clock=clock)
    out = ReplyDecoder()
    for i, chunk in enumerate(chunks):
        emu.receive(chunk)
        clock.advance(steps[i] if i < len(steps) else 0.1)
        emu.tick()
        for item in out.feed(emu.take_output()):
            assert isinstance(item, Reply), item  # the emulator never garbles its own replies
            assert item.prompt is None or item.prompt in "IWXSPTU"
    assert emu.infused_ml() >= 0.0


class FuzzPort(FakePort):
    """A port that answers every write with the next fuzzed chunk (then silence)."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__("fuzz://")
        self.chunks = list(chunks)

    def write(self, data: bytes) -> int:
        if self.chunks:
            self.rx += self.chunks.pop(0)
        return len(data)


@pytest.mark.parametrize("safe_timeout_s", [0, 10])
@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=_reply_stream)
def test_driver_takes_any_reply_bytes(chunks: list[bytes], safe_timeout_s: int) -> None:
    drv = NewEraDriver(
        FuzzPort(chunks),  # type: ignore[arg-type]
        limits=LIMITS,
        safe_timeout_s=safe_timeout_s,
        timeout_s=0.002,
        retries=1,
        program_phases=False,
    )
    t0 = time.monotonic()
    for op in (drv.identify, drv.status, lambda: drv.set_rate(12.5), drv.start, drv.stop):
        try:
            op()
        except (CommunicationError, PumpCommandError) as exc:
            assert str(exc) and "\n" not in str(exc)  # one line
    assert time.monotonic() - t0 < 3.0  # bounded: no hang on any input
    drv.close()


class EmulatorPort(FakePort):
    """Emulated pumps on one line behind a fake port, in-process: answers come at once."""

    def __init__(self, *emus: Ne1000Emulator) -> None:
        super().__init__("emulator://")
        self.emus = emus

    def write(self, data: bytes) -> int:
        for emu in self.emus:
            emu.receive(data)
        return len(data)

    @property
    def in_waiting(self) -> int:
        for emu in self.emus:
            self.rx += emu.take_output()
        return len(self.rx)


_FAULTS = ("none", "drop", "corrupt", "truncate", "noise")
_OPS = st.one_of(
    st.tuples(st.just("rate"), st.sampled_from([0.5, 12.5, 100.0, 999.9])),
    st.tuples(st.sampled_from(["start", "stop", "status"]), st.just(0.0)),
)


@pytest.mark.parametrize(("safe_timeout_s", "address"), [(0, 0), (30, 0), (0, 1), (30, 1)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(_OPS, st.sampled_from(_FAULTS)), min_size=1, max_size=12))
def test_exactly_once_under_any_reply_faults(
    steps: list[tuple[tuple[str, float], str]], safe_timeout_s: int, address: int
) -> None:
    """Whatever happens to the replies, a rate is applied and RUN executed at most once per
    call (exactly once when the call succeeds), and a successful call leaves the pump as
    asked. The faults only touch replies: every command reaches the pump. At address 1,
    pump 0 shares the line and must execute nothing."""
    clock = SimClock()
    emu = Ne1000Emulator(clock=clock, power_on_alarm=False, address=address)
    others = [Ne1000Emulator(clock=clock, power_on_alarm=False, address=a) for a in range(address)]
    drv = NewEraDriver(
        EmulatorPort(*others, emu),  # type: ignore[arg-type]
        address=address,
        limits=LIMITS,
        safe_timeout_s=safe_timeout_s,
        timeout_s=0.003,
        retries=2,
        program_phases=False,
    )
    for (op, value), fault in steps:
        if fault == "drop":
            emu.drop_replies = 1
        elif fault == "corrupt":
            emu.corrupt_replies = 1
        elif fault == "truncate":
            emu.truncate_replies = 1
        elif fault == "noise":
            emu.inject(b"\xff\x02garbage\x03")
        rats, runs = emu.stats.count_set("RAT"), emu.stats.count("RUN")
        was_running = emu.run_state() is RunState.RUNNING
        try:
            if op == "rate":
                drv.set_rate(value)
            elif op == "start":
                drv.start()
            elif op == "stop":
                drv.stop()
            else:
                drv.status()
            ok = True
        except (CommunicationError, PumpCommandError) as exc:
            assert "\n" not in str(exc)
            ok = False
        rat_sets = emu.stats.count_set("RAT") - rats
        run_cmds = emu.stats.count("RUN") - runs
        assert rat_sets <= (1 if op == "rate" else 0)
        assert run_cmds <= (0 if was_running or op != "start" else 1)
        if ok and op == "rate":
            assert rat_sets == 1 and emu.rate_ml_per_h() == value
        if ok and op == "start":
            assert emu.run_state() is RunState.RUNNING
            assert run_cmds == (0 if was_running else 1)
        if ok and op == "stop":
            assert emu.run_state() is RunState.STOPPED
        emu.drop_replies = emu.corrupt_replies = emu.truncate_replies = 0
    assert all(not o.stats.executed for o in others)
    drv.close()
