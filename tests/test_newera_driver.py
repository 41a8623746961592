"""NE-1000 driver, byte-exact: every exchange is scripted and every scripted line must be used.

In the style of PyMeasure's protocol tests: a fake port expects exactly the bytes the
driver writes, in order, answers with the scripted bytes (``None``: the reply is lost),
and the test fails if a write is not in the script or a scripted line is never used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import serial

from pumpctl.clock import SimClock
from pumpctl.devices.newera_codec import encode_reply, frame_safe
from pumpctl.drivers.base import PumpAlarm, RateLimits, RunState
from pumpctl.drivers.newera import NewEraDriver
from pumpctl.errors import CommunicationError, InputError, PumpCommandError
from tests.helpers import FakePort

LIMITS = RateLimits(0.1, 999.9, 0.1, 9999.0)
Line = tuple[bytes, bytes | None]


def R(
    data: str = "",
    prompt: str = "S",
    *,
    alarm: str | None = None,
    safe: bool = False,
    addr: int = 0,
) -> bytes:
    """A pump reply."""
    return encode_reply(addr, prompt, data, alarm=alarm, safe=safe)


def Q(text: str, safe: bool = False) -> bytes:
    """A request as the driver sends it to pump 0."""
    return frame_safe(text.encode()) if safe else text.encode() + b"\r"


class ScriptedSerial(FakePort):
    """A fake port that insists on the scripted writes and plays back the scripted replies."""

    def __init__(self, script: list[Line]) -> None:
        super().__init__("scripted://")
        self.script = list(script)
        self.used = 0
        self.fail_writes = False

    def write(self, data: bytes) -> int:
        if self.fail_writes:
            raise serial.SerialException("device reports readiness to read but returned no data")
        assert self.used < len(self.script), f"unscripted write {data!r} (script exhausted)"
        expected, reply = self.script[self.used]
        assert data == expected, f"line {self.used}: expected {expected!r}, driver sent {data!r}"
        self.used += 1
        if reply:
            self.rx += reply
        return len(data)

    def add(self, *lines: Line) -> None:
        self.script += lines

    def push(self, data: bytes) -> None:
        """Bytes arriving unasked (an auto-alarm, noise)."""
        self.rx += data

    def sent(self, request: bytes) -> int:
        """How many times a request was written so far."""
        return sum(1 for req, _r in self.script[: self.used] if req == request)


def handshake(
    *,
    prompt: str = "S",
    rat: str = "12.50MH",
    vol: str = "0.000ML",
    first: bytes | None = None,
    safe: bool = False,
    phases: bool = False,
    dia: str | None = None,
    saf: int = 10,
) -> list[Line]:
    """The driver's first contact with a stopped, alarm-free pump at address 0."""
    lines: list[Line] = []
    if safe:
        lines.append((Q(f"SAF{saf}", True), R(safe=True)))
    else:
        lines.append((Q("0"), first or R()))
    lines += [
        (Q("VER", safe), R("NE1000V3.928", safe=safe)),
        (Q("0", safe), R("", prompt, safe=safe)),
    ]
    if phases:
        lines += [(Q(t, safe), R(safe=safe)) for t in ("PHN1", "FUNRAT", "PHN2", "FUNSTP", "PHN1")]
    if dia is not None:
        lines.append((Q("DIA", safe), R(dia, prompt, safe=safe)))
    lines += [
        (Q("DIR", safe), R("INF", prompt, safe=safe)),
        (Q("VOL", safe), R(vol, prompt, safe=safe)),
        (Q("RAT", safe), R(rat, prompt, safe=safe)),
    ]
    return lines


Make = Callable[..., tuple[NewEraDriver, ScriptedSerial]]


@pytest.fixture
def make() -> Iterator[Make]:
    ports: list[ScriptedSerial] = []

    def _make(script: list[Line], **kw: object) -> tuple[NewEraDriver, ScriptedSerial]:
        port = ScriptedSerial(script)
        ports.append(port)
        kw.setdefault("timeout_s", 0.02)
        kw.setdefault("program_phases", False)
        drv = NewEraDriver(port, limits=LIMITS, **kw)  # type: ignore[arg-type]
        return drv, port

    yield _make
    for port in ports:
        unused = port.script[port.used :]
        assert not unused, f"scripted lines never used: {unused}"


def ready(make: Make, *extra: Line, **kw: object) -> tuple[NewEraDriver, ScriptedSerial]:
    """A driver that has done its handshake (driven by identify)."""
    saf = int(kw.get("safe_timeout_s", 0))  # type: ignore[call-overload]
    hs = kw.pop("hs", None) or handshake(safe=bool(saf), saf=saf or 10)
    drv, port = make(
        [
            *hs,
            (
                Q("VER", bool(kw.get("safe_timeout_s"))),
                R("NE1000V3.928", safe=bool(kw.get("safe_timeout_s"))),
            ),
        ],
        **kw,
    )
    drv.identify()
    port.add(*extra)
    return drv, port


# ------------------------------------------------------------------ set-up


def test_handshake_and_identify_byte_exact(make: Make) -> None:
    drv, _port = make(
        [*handshake(phases=True, dia="26.59"), (Q("VER"), R("NE1000V3.928"))],
        program_phases=True,
        diameter_mm=26.59,
    )
    ident = drv.identify()
    assert (ident.model, ident.firmware, ident.address) == ("NE1000", "3.928", 0)


def test_power_on_reset_alarm_at_first_contact(make: Make) -> None:
    got: list[list[PumpAlarm]] = []
    drv, _port = make(
        [(Q("0"), R(alarm="R")), *handshake()[1:], (Q("VER"), R("NE1000V3.928"))],
        listener=got.append,
    )
    drv.identify()
    assert got == [] and drv.stats["alarm_R"] == 1  # expected at power-on: not an event


def test_safe_mode_handshake_byte_exact(make: Make) -> None:
    drv, port = ready(make, safe_timeout_s=10)
    assert port.script[0][0] == b"\x02\x09SAF10" + (0x4C32).to_bytes(2, "big") + b"\x03"
    assert drv.heartbeat_interval_s == pytest.approx(10 / 3)


def test_pump_left_in_safe_mode_gets_the_manuals_saf0_packet(make: Make) -> None:
    drv, port = make(
        [
            (Q("0"), None),
            (bytes.fromhex("02 08 53 41 46 30 55 43 03"), R()),
            *handshake()[1:],
            (Q("VER"), R("NE1000V3.928")),
        ]
    )
    drv.identify()
    assert drv.stats["saf0_recoveries"] == 1


def test_diameter_set_when_different(make: Make) -> None:
    hs = handshake()[:3] + [(Q("DIA"), R("14.43")), (Q("DIA14.5"), R())] + handshake()[3:]
    drv, _port = make([*hs, (Q("VER"), R("NE1000V3.928"))], diameter_mm=14.5)
    drv.identify()


def test_bad_arguments_are_input_errors() -> None:
    with pytest.raises(InputError, match="0-99"):
        NewEraDriver(ScriptedSerial([]), address=100, limits=LIMITS)
    with pytest.raises(InputError, match="baud"):
        NewEraDriver(ScriptedSerial([]), baud=4800, limits=LIMITS)
    with pytest.raises(InputError, match="time-out"):
        NewEraDriver(ScriptedSerial([]), safe_timeout_s=256, limits=LIMITS)


def test_unopenable_port_is_a_communication_error(tmp_path) -> None:
    with pytest.raises(CommunicationError, match="cannot open"):
        NewEraDriver(str(tmp_path / "ttyNOPE"), limits=LIMITS)


# ------------------------------------------------------------------ commands


def test_rate_vtbi_run_stop_byte_exact(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("RAT12.5MH"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("VOL100"), R()),
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), R("", "I")),
        (Q("0"), R("", "I")),  # start is idempotent: a running pump gets no second RUN
        (Q("DIS"), R("I1.250W0.000ML", "I")),
        (Q("0"), R("", "I")),
        (Q("STP"), R("", "P")),
        (Q("STP"), R()),
        (Q("0"), R()),  # stop on a stopped pump sends nothing
        (Q("DIS"), R("I1.250W0.000ML")),
        (Q("CLDINF"), R()),
    )
    drv.set_rate(12.5)
    drv.set_vtbi(100)
    drv.start()
    drv.start()
    st = drv.status()
    assert (st.run_state, st.rate_ml_per_h, st.vtbi_ml, st.volume_infused_ml) == (
        RunState.RUNNING,
        12.5,
        100.0,
        1.25,
    )
    drv.stop()
    drv.stop()
    drv.clear_volume()
    assert port.sent(Q("RUN")) == 1


def test_pump_refusals_are_command_errors(make: Make) -> None:
    drv, _port = ready(make, (Q("RAT900MH"), R("?OOR")), (Q("DIS"), R("?")))
    with pytest.raises(PumpCommandError, match=r"\?OOR"):
        drv.set_rate(900)
    with pytest.raises(PumpCommandError, match="outside"):
        drv.set_rate(1000)  # refused by the driver before anything is sent
    with pytest.raises(PumpCommandError, match="not recognised"):
        drv.status()


def test_vtbi_in_microlitres_and_switch_to_millilitres(make: Make) -> None:
    drv, _port = ready(
        make,
        (Q("DIS"), R("I0.000W0.000UL")),
        (Q("VOL5000"), R()),
        (Q("DIS"), R("I0.000W0.000UL")),
        (Q("VOLML"), R()),
        (Q("VOL20"), R()),
        hs=handshake(vol="0.000UL"),
    )
    drv.set_vtbi(5.0)
    drv.set_vtbi(20.0)


def test_vtbi_counts_from_the_last_clear(make: Make) -> None:
    drv, _port = ready(
        make,
        (Q("DIS"), R("I3.000W0.000ML")),
        (Q("VOL7"), R()),
        (Q("0"), R()),
        (Q("DIS"), R("I3.000W0.000ML")),
        (Q("RUN"), R("", "I")),
    )
    drv.set_vtbi(10.0)
    drv.start()


def test_vtbi_complete_is_reported(make: Make) -> None:
    got: list[list[PumpAlarm]] = []
    drv, _port = ready(
        make,
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("VOL1"), R()),
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), R("", "I")),
        (Q("DIS"), R("I1.000W0.000ML")),
        listener=got.append,
    )
    drv.set_vtbi(1.0)
    drv.start()
    st = drv.status()
    assert PumpAlarm.VTBI_COMPLETE in st.alarms and got == [[PumpAlarm.VTBI_COMPLETE]]


# ------------------------------------------------------------------ exactly once


def test_lost_reply_on_run_reads_back_and_never_runs_twice(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), None),  # executed, reply lost
        (Q("0"), R("", "I")),  # read back: it runs
    )
    drv.start()
    assert port.sent(Q("RUN")) == 1 and drv.stats["lost_replies"] == 1


def test_lost_run_that_did_not_happen_is_sent_again(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), None),
        (Q("0"), R()),  # not running: the RUN never arrived
        (Q("RUN"), R("", "I")),
    )
    drv.start()
    assert port.sent(Q("RUN")) == 2


def test_garbled_reply_on_run_is_a_lost_reply(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), b"\x0200#\x03"),
        (Q("0"), R("", "I")),
        (Q("DIS"), R("I0.001W0.000ML", "I")),
    )
    drv.start()
    assert drv.status().running and port.sent(Q("RUN")) == 1


def test_lost_reply_on_rate_reads_rate_back(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("RAT20MH"), None),
        (Q("RAT"), R("20.00MH")),  # applied: not sent again
        (Q("RAT30MH"), None),
        (Q("RAT"), R("20.00MH")),  # not applied: sent again, once
        (Q("RAT30MH"), R()),
    )
    drv.set_rate(20)
    drv.set_rate(30)
    assert port.sent(Q("RAT20MH")) == 1 and port.sent(Q("RAT30MH")) == 2


def test_com_error_reply_is_read_back_before_resending(make: Make) -> None:
    drv, port = ready(
        make, (Q("RAT20MH"), R("?COM")), (Q("RAT"), R("12.50MH")), (Q("RAT20MH"), R())
    )
    drv.set_rate(20)
    assert port.sent(Q("RAT20MH")) == 2


def test_reset_alarm_resends_the_rate(make: Make) -> None:
    got: list[list[PumpAlarm]] = []
    drv, port = ready(
        make,
        (Q("RAT25MH"), R()),
        (Q("DIS"), R("I0.000W0.000ML", "I")),
        (Q("DIS"), R(alarm="R")),  # power cut: the next reply is the reset alarm
        (Q("RAT25MH"), R()),  # the rate set while running was lost: sent again
        (Q("DIS"), R("I0.400W0.000ML")),
        listener=got.append,
    )
    drv.set_rate(25)
    drv.status()  # running
    st = drv.status()
    assert got == [[PumpAlarm.RESET]]
    assert st.run_state is RunState.ALARM and PumpAlarm.RESET in st.alarms
    assert port.sent(Q("RAT25MH")) == 2


def test_reset_alarm_in_reply_to_run_restores_rate_then_runs(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), R(alarm="R")),  # not executed
        (Q("RAT12.5MH"), R()),
        (Q("RUN"), R("", "I")),
        (Q("DIS"), R("I0.000W0.000ML", "I")),
    )
    drv.start()
    assert port.sent(Q("RUN")) == 2  # the first was answered by the alarm, so never ran
    assert port.sent(Q("RAT12.5MH")) == 1
    assert drv.status().alarms == frozenset()


def test_stall_alarm_in_reply_to_run_is_refused(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), R(alarm="S")),
        (Q("DIS"), R("I0.000W0.000ML")),
    )
    with pytest.raises(PumpCommandError, match="stall"):
        drv.start()
    st = drv.status()
    assert st.run_state is RunState.ALARM and PumpAlarm.STALL in st.alarms
    assert port.sent(Q("RUN")) == 1


def test_stop_pauses_then_stops_and_survives_a_lost_reply(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R("", "I")),
        (Q("STP"), None),
        (Q("0"), R("", "P")),  # lost, but it paused
        (Q("STP"), R()),
    )
    drv.stop()
    assert port.sent(Q("STP")) == 2


# ------------------------------------------------------------------ the wire


def test_garbage_and_partial_frames_then_a_retry(make: Make) -> None:
    drv, _port = ready(
        make,
        (Q("DIS"), b"\xff\xfe\x00noise\x0200SI0.0"),  # garbage, then a frame cut short
        (Q("DIS"), R("I0.500W0.000ML")),
    )
    assert drv.status().volume_infused_ml == 0.5
    assert drv.frame_errors >= 2 and drv.stats["retries"] == 1


def test_bad_crc_in_safe_mode_is_retried(make: Make) -> None:
    good = R("I0.500W0.000ML", safe=True)
    bad = bytearray(good)
    bad[-2] ^= 0xFF
    drv, _port = ready(
        make, (Q("DIS", True), bytes(bad)), (Q("DIS", True), good), safe_timeout_s=10
    )
    assert drv.status().volume_infused_ml == 0.5
    assert drv.stats["frame_error_crc"] == 1


def test_reply_from_another_address_is_ignored(make: Make) -> None:
    drv, _port = ready(make, (Q("0"), R(addr=7) + R("", "I")))
    assert drv.heartbeat() is RunState.RUNNING
    assert drv.stats["other_address"] == 1


def test_timeouts_raise_communication_error(make: Make) -> None:
    drv, _port = ready(make, *[(Q("DIS"), None)] * 3)
    with pytest.raises(CommunicationError, match=r"no reply from pump at 0 on scripted:// within"):
        drv.status()


def test_unsolicited_safe_mode_alarm_is_not_lost(make: Make) -> None:
    got: list[list[PumpAlarm]] = []
    drv, port = ready(
        make,
        (Q("0", True), R(alarm="S", safe=True)),
        (Q("0", True), R(safe=True)),
        safe_timeout_s=10,
        listener=got.append,
    )
    port.push(R(alarm="S", safe=True))  # auto-alarm: the stall is reported at once
    assert drv.heartbeat() is RunState.ALARM
    assert got == [[PumpAlarm.STALL]]


def test_port_failure_is_a_communication_error(make: Make) -> None:
    drv, port = ready(make)
    port.fail_writes = True
    with pytest.raises(CommunicationError, match="lost the link"):
        drv.status()


def test_heartbeat_on_the_clock(make: Make) -> None:
    drv, port = ready(make, *[(Q("0", True), R(safe=True))] * 3, safe_timeout_s=9)
    clock = SimClock()
    links: list[bool] = []
    drv.link_listener = lambda ok, _why: links.append(ok)
    drv.start_heartbeat(clock)
    clock.advance(9.0)  # every 3 s: three keep-alives
    port.add(*[(Q("0", True), None)] * 3)
    clock.advance(3.0)  # the next one is lost three times: the link is reported down
    drv.stop_heartbeat()
    clock.advance(30.0)
    assert links == [False]


# ------------------------------------------------------------------ impossible replies


@pytest.mark.parametrize(
    ("query", "reply", "needle"),
    [
        ("RAT", "99999.9MH", "rate '99999.9' is outside 0-9999"),
        ("RAT", "1500MH", "1500 mL/h is outside the pump model range 0-999.9 mL/h"),
        ("RAT", "abcMH", "rate 'abc' is not a number the pump writes"),
        ("VOL", "-1.000ML", "volume '-1.000' is not a number the pump writes"),
        ("VOL", "lotsML", "volume 'lots' is not a number the pump writes"),
        ("VOL", "12 mL?", "volume '12 mL?' has no volume units"),
        ("DIS", "I-0.5W0.000ML", "infused volume '-0.5' is not a number the pump writes"),
    ],
)
def test_impossible_values_are_never_believed(
    make: Make, query: str, reply: str, needle: str
) -> None:
    drv, _port = ready(make, *[(Q(query), R(reply))] * 3)
    call = {"RAT": drv.read_rate_ml_per_h, "VOL": drv.read_vol_ml, "DIS": drv.status}[query]
    with pytest.raises(CommunicationError) as err:
        call()
    msg = str(err.value)
    assert needle in msg and "not believed" in msg and "\n" not in msg
    assert msg.startswith(f"pump at 0 on scripted:// answered {query} with an impossible value")
    assert drv.stats["impossible_values"] == 3


def test_one_impossible_value_then_a_good_one_is_line_noise(make: Make) -> None:
    drv, _port = ready(make, (Q("RAT"), R("99999.9MH")), (Q("RAT"), R("12.50MH")))
    assert drv.read_rate_ml_per_h() == 12.5
    assert drv.stats["impossible_values"] == 1


def test_a_late_reply_of_another_kind_is_skipped_not_an_error(make: Make) -> None:
    drv, _port = ready(make, (Q("RAT"), R("5.000ML") + R("12.50MH")))
    assert drv.read_rate_ml_per_h() == 12.5 and drv.stats["stale_replies"] == 1


def test_unknown_status_letter_is_an_error_naming_it(make: Make) -> None:
    drv, _port = ready(make, *[(Q("0"), b"\x0200Q\x03")] * 3)
    with pytest.raises(CommunicationError, match=r"unknown status 'Q' in reply '00Q'"):
        drv.heartbeat()


def test_impossible_value_during_setup_stops_the_setup(make: Make) -> None:
    hs = handshake(rat="99999.9MH")
    drv, _port = make([*hs[:-1], *[(Q("RAT"), R("99999.9MH"))] * 3])
    with pytest.raises(CommunicationError, match="impossible value"):
        drv.identify()


# ------------------------------------------------------------------ lost replies: say what is known


def test_lost_run_and_failed_read_back_says_the_pump_may_be_running(make: Make) -> None:
    drv, _port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        (Q("RUN"), None),
        *[(Q("0"), None)] * 3,  # the read-back is lost too
    )
    with pytest.raises(CommunicationError) as err:
        drv.start()
    msg = str(err.value)
    assert msg.startswith("no reply to RUN from pump at 0 on scripted://")
    assert msg.endswith("its state is unknown: the pump may be running") and "\n" not in msg


def test_lost_run_read_back_stopped_says_so(make: Make) -> None:
    drv, port = ready(
        make,
        (Q("0"), R()),
        (Q("DIS"), R("I0.000W0.000ML")),
        *[(Q("RUN"), None), (Q("0"), R())] * 3,  # each RUN lost, each read-back: stopped
    )
    with pytest.raises(CommunicationError, match=r"read back: the pump is stopped; RUN did not"):
        drv.start()
    assert port.sent(Q("RUN")) == 3


def test_lost_stop_and_failed_read_back_says_the_pump_may_still_run(make: Make) -> None:
    drv, _port = ready(make, (Q("0"), R("", "I")), (Q("STP"), None), *[(Q("0"), None)] * 3)
    with pytest.raises(CommunicationError, match="the pump may still be running$"):
        drv.stop()


def test_start_that_fails_before_run_says_run_was_not_sent(make: Make) -> None:
    drv, port = ready(make, *[(Q("0"), None)] * 3)
    with pytest.raises(CommunicationError, match=r"no reply from pump at 0 .*; RUN was not sent$"):
        drv.start()
    assert port.sent(Q("RUN")) == 0
