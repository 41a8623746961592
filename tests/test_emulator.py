"""The NE-1000 emulator over a real pseudo-terminal (pyserial), the fault switches, and the
``pumpctl pump`` / ``pumpctl emulate`` commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from pumpctl import cli
from pumpctl.clock import SimClock, SystemClock
from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator
from pumpctl.devices.newera_codec import (
    FrameError,
    Reply,
    ReplyDecoder,
    encode_command,
    frame_safe,
)
from pumpctl.drivers.base import PumpAlarm, RunState
from pumpctl.drivers.newera import NewEraDriver
from pumpctl.errors import CommunicationError

ROOT = Path(__file__).resolve().parent.parent


class Wire:
    """A raw pyserial client: send a packet, collect the replies that arrive."""

    def __init__(self, url: str) -> None:
        self.ser = serial.serial_for_url(url, 19200, timeout=0.02)
        self.dec = ReplyDecoder()

    def send(self, data: bytes) -> None:
        self.ser.write(data)

    def replies(self, n: int = 1, within_s: float = 1.0) -> list[Reply | FrameError]:
        out: list[Reply | FrameError] = []
        deadline = time.monotonic() + within_s
        while sum(isinstance(i, Reply) for i in out) < n and time.monotonic() < deadline:
            out += self.dec.feed(self.ser.read(64))
        return out

    def ask(self, command: str, args: str = "", *, safe: bool = False, addr: int = 0) -> Reply:
        self.send(encode_command(addr, command, args, safe=safe))
        items = self.replies(1)
        got = [i for i in items if isinstance(i, Reply)]
        assert got, f"no reply to {command}{args}: {items}"
        return got[0]

    def silent(self, data: bytes, wait_s: float = 0.15) -> bool:
        self.send(data)
        return not self.replies(1, wait_s)

    def close(self) -> None:
        self.ser.close()


@pytest.fixture
def emu() -> Ne1000Emulator:
    return Ne1000Emulator(clock=SystemClock())


@pytest.fixture
def url(emu: Ne1000Emulator) -> Iterator[str]:
    with EmulatorServer(emu) as server:
        yield server.url


@pytest.fixture
def wire(url: str) -> Iterator[Wire]:
    w = Wire(url)
    yield w
    w.close()


# ------------------------------------------------------------------ basic mode


def test_basic_mode_session_over_a_pty(wire: Wire, url: str) -> None:
    assert url.startswith("/dev/")
    r = wire.ask("VER")
    assert (r.alarm, r.data) == ("R", "")  # power-on reset alarm answers first
    assert wire.ask("VER").data == "NE1000V3.928"
    assert wire.ask("DIA").data == "26.59"
    assert wire.ask("RAT", "999.9MH").data == ""
    assert wire.ask("RAT").data == "999.9MH"
    assert wire.ask("VOL").data == "0.000ML"
    assert wire.ask("RAT", "12.345").error == "?OOR"  # more than 4 digits
    assert wire.ask("RAT", "5000MH").error == "?OOR"  # faster than the plunger can go
    assert wire.ask("FOO").error == "?"
    r = wire.ask("RUN")
    assert r.prompt == "I" and r.error is None
    assert wire.ask("RUN").error == "?NA"
    assert wire.ask("DIA", "20").error == "?NA"
    time.sleep(0.1)
    inf = wire.ask("DIS").data
    assert inf.startswith("I0.0") and inf.endswith("W0.000ML") and inf != "I0.000W0.000ML"
    assert wire.ask("STP").prompt == "P"  # first STP pauses
    assert wire.ask("STP").prompt == "S"  # second STP stops the program
    assert wire.ask("STP").error == "?NA"  # nothing left to stop


def test_commands_are_read_like_the_pump_reads_them(wire: Wire) -> None:
    wire.ask("")
    wire.send(b"0 rat 10 mh\r\n")
    assert wire.replies(1)[0] == Reply(0, "S", None, "", False, b"\x0200S\x03")
    assert wire.ask("RAT").data == "10.00MH"
    assert wire.ask("VOL", "UL").data == ""
    assert wire.ask("VOL", "1000").data == ""
    assert wire.ask("VOL").data == "1000.0UL"


def test_address_and_broadcast(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.address = 5
    emu.pending_alarm = None
    assert wire.silent(b"VER\r")  # address 0 is not this pump
    r = wire.ask("VER", addr=5)
    assert (r.address, r.data) == (5, "NE1000V3.928")
    assert wire.ask("*VER").address == 5  # the system address reaches every pump


# ------------------------------------------------------------------ safe mode


def test_safe_mode_session_and_return_to_basic(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.pending_alarm = None
    r = wire.ask("SAF", "50", safe=True)
    assert r.safe and r.error is None
    assert wire.ask("SAF", safe=True).data == "50"
    assert wire.silent(b"VER\r")  # basic commands are not accepted in safe mode
    assert wire.ask("VER", safe=True).data == "NE1000V3.928"
    bad = bytearray(frame_safe(b"VER"))
    bad[3] ^= 0x01
    wire.send(bytes(bad))
    (com,) = wire.replies(1)
    assert isinstance(com, Reply) and com.error == "?COM" and com.safe
    wire.send(bytes.fromhex("02 08 53 41 46 30 55 43 03"))  # the manual's SAF0 packet
    (back,) = wire.replies(1)
    assert isinstance(back, Reply) and not back.safe and back.error is None
    assert wire.ask("VER").data == "NE1000V3.928"


def test_safe_timeout_raises_alarm_t_and_stops_the_pump(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.pending_alarm = None
    wire.ask("RAT", "100MH", safe=True)
    wire.ask("SAF", "1", safe=True)
    assert wire.ask("RUN", safe=True).prompt == "I"
    (auto,) = wire.replies(1, within_s=2.5)  # sent unasked when the time-out runs out
    assert isinstance(auto, Reply) and auto.safe and auto.alarm == "T"
    assert emu.run_state() is RunState.STOPPED
    r = wire.ask("", safe=True)
    assert r.alarm == "T"  # the auto-alarm did not clear it: the next reply does
    assert wire.ask("", safe=True).prompt == "S"
    assert emu.stats.alarms_sent == ["T"]


def test_partial_safe_packet_is_discarded_after_half_a_second(
    emu: Ne1000Emulator, wire: Wire
) -> None:
    emu.pending_alarm = None
    wire.send(frame_safe(b"RUN")[:4])
    time.sleep(0.6)
    assert wire.ask("VER", safe=True).data == "NE1000V3.928"
    assert emu.stats.count("RUN") == 0
    assert [e.kind for e in emu.stats.frame_errors] == ["timeout"]


# ------------------------------------------------------------------ pump behaviour


def test_rate_changed_while_running_is_lost_at_reset(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.pending_alarm = None
    wire.ask("RAT", "10MH")
    wire.ask("RUN")
    wire.ask("RAT", "20MH")
    assert wire.ask("RAT").data == "20.00MH"
    emu.power_cut()
    assert wire.ask("RAT").alarm == "R"
    assert wire.ask("RAT").data == "10.00MH"
    assert wire.ask("").prompt == "S"


def test_vol_stops_the_run_and_run_again_starts_a_new_one() -> None:
    clock = SimClock()
    emu = Ne1000Emulator(clock=clock, power_on_alarm=False)

    def ask(text: bytes) -> bytes:
        emu.receive(text)
        emu.tick()
        return emu.take_output()

    ask(b"RAT60MH\r")
    ask(b"VOL1\r")
    assert ask(b"RUN\r") == b"\x0200I\x03"
    clock.advance(30)
    assert ask(b"STP\r") == b"\x0200P\x03"
    clock.advance(100)
    assert ask(b"RUN\r") == b"\x0200I\x03"  # resumes the same run
    clock.advance(31)
    assert ask(b"DIS\r") == b"\x0200SI1.000W0.000ML\x03"  # the VOL was reached
    ask(b"RUN\r")  # a new run: another VOL
    clock.advance(120)
    assert ask(b"DIS\r") == b"\x0200SI2.000W0.000ML\x03"
    ask(b"DIRWDR\r")
    ask(b"RUN\r")
    clock.advance(30)
    assert ask(b"DIS\r") == b"\x0200WI2.000W0.500ML\x03"


# ------------------------------------------------------------------ fault switches


def test_fault_drop_reply_executes_without_answering(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.pending_alarm = None
    wire.ask("RAT", "50MH")
    emu.drop_replies = 1
    assert wire.silent(b"RUN\r")
    assert emu.stats.count("RUN") == 1 and emu.run_state() is RunState.RUNNING


def test_fault_corrupt_delay_truncate_inject(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.pending_alarm = None
    emu.corrupt_replies = 1
    wire.send(b"0\r")  # basic mode: the prompt is garbled
    assert [i.kind for i in wire.replies(1, 0.2) if isinstance(i, FrameError)] == ["format"]
    wire.ask("SAF", "50", safe=True)
    emu.corrupt_replies = 1
    wire.send(encode_command(0, "", safe=True))  # safe mode: the CRC is wrong
    assert [i.kind for i in wire.replies(1, 0.2) if isinstance(i, FrameError)] == ["crc"]
    wire.ask("SAF", "0", safe=True)
    emu.reply_delay_s = 0.3
    t0 = time.monotonic()
    assert wire.ask("VER").data == "NE1000V3.928"
    assert time.monotonic() - t0 >= 0.29
    emu.reply_delay_s = 0.0
    emu.truncate_replies = 1
    wire.send(b"VER\r")
    assert wire.replies(1, 0.2) == [] and wire.dec.pending
    emu.inject(b"\xffnoise")
    assert wire.ask("VER").data == "NE1000V3.928"


def test_fault_stall_unplug_and_power(emu: Ne1000Emulator, wire: Wire) -> None:
    emu.pending_alarm = None
    wire.ask("RAT", "50MH")
    wire.ask("RUN")
    emu.stall()
    assert emu.run_state() is RunState.STOPPED
    assert wire.ask("").alarm == "S"
    emu.unplug()
    assert wire.silent(b"0\r")
    emu.replug()
    assert wire.ask("").prompt == "S"
    emu.power_off()
    assert wire.silent(b"0\r")
    emu.power_on()
    assert wire.ask("").alarm == "R"


# ------------------------------------------------------------------ links


def test_tcp_link_and_spy_url(tmp_path: Path) -> None:
    emu = Ne1000Emulator(clock=SystemClock())
    with EmulatorServer(emu, "tcp:0") as server:
        assert server.url.startswith("socket://127.0.0.1:")
        drv = NewEraDriver(server.url, timeout_s=0.3)
        assert drv.identify().model == "NE1000"
        drv.close()
    emu2 = Ne1000Emulator(clock=SystemClock())
    dump = tmp_path / "traffic.txt"
    with EmulatorServer(emu2) as server:
        drv = NewEraDriver(f"spy://{server.url}?file={dump}", timeout_s=0.3)
        drv.identify()
        drv.close()
    assert "VER" in dump.read_text()


def test_bad_link_spec() -> None:
    with pytest.raises(ValueError, match="pty or tcp:PORT"):
        EmulatorServer.parse_link("udp:5")


# ------------------------------------------------------------------ the driver on the pty


def test_driver_survives_wire_faults_mid_infusion(emu: Ne1000Emulator, url: str) -> None:
    got: list[list[PumpAlarm]] = []
    drv = NewEraDriver(url, timeout_s=0.15, listener=got.append)
    drv.set_rate(120)
    drv.start()
    emu.drop_replies = 1  # a lost reply on a status read: retried
    assert drv.status().running
    emu.unplug()  # the cable is pulled: a communication error, the pump carries on
    with pytest.raises(CommunicationError, match="no reply from pump at 0"):
        drv.heartbeat()
    assert emu.run_state() is RunState.RUNNING
    emu.replug()
    assert drv.status().running  # the link is back
    drv.stop()
    emu.drop_replies = 1  # lost reply to RUN: read back, never a second RUN
    drv.start()
    assert emu.stats.count("RUN") == 2 and drv.status().running
    drv.set_rate(240)  # set while running: not saved in the pump
    emu.power_cut()
    st = drv.status()
    assert st.run_state is RunState.ALARM and PumpAlarm.RESET in st.alarms
    assert got == [[PumpAlarm.RESET]]
    assert emu.rate_value == 240.0  # re-sent after the reset
    drv.start()
    assert drv.status().running
    drv.close()


def test_driver_in_safe_mode_detects_crc_faults(emu: Ne1000Emulator, url: str) -> None:
    drv = NewEraDriver(url, safe_timeout_s=30, timeout_s=0.15)
    drv.identify()
    emu.corrupt_replies = 1
    assert drv.heartbeat() is RunState.STOPPED
    assert drv.stats["frame_error_crc"] == 1 and emu.safe_timeout_s == 30
    drv.close()


# ------------------------------------------------------------------ CLI


def _cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    if "pumpctl.commands.pump" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "pumpctl.commands.pump"))
    return cli.main(list(argv))


def test_pump_command_against_the_emulator(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> str:
        assert _cli(monkeypatch, "pump", "--port", url, *args) == 0
        return capsys.readouterr().out

    assert run("identify").startswith("NE1000 firmware 3.928 at address 0")
    assert run("rate", "12.5") == "rate set to 12.5 mL/h\n"
    assert run("rate") == "rate 12.5 mL/h\n"
    assert "VTBI set to 5 mL" in run("vtbi", "5")
    assert run("vtbi") == "pump VOL 5 mL per run\n"
    assert run("run") == "running at 12.5 mL/h\n"
    assert "state      running" in run("status")
    doc = json.loads(run("status", "--json"))
    assert doc["schema_version"] == 1 and doc["run_state"] == "running"
    assert doc["rate_ml_per_h"] == 12.5 and doc["vtbi_ml"] == 5 and doc["alarms"] == []
    assert run("stop") == "stopped\n"
    assert run("dispensed").startswith("infused 0.0")


def test_pump_command_errors(
    url: str,
    emu: Ne1000Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _cli(monkeypatch, "pump", "--port", url, "rate", "fast") == 2
    assert _cli(monkeypatch, "pump", "--port", url, "--address", "100", "status") == 2
    assert _cli(monkeypatch, "pump", "--port", url, "identify", "3") == 2
    assert _cli(monkeypatch, "pump", "--port", url, "--baud", "4800", "status") == 2
    assert _cli(monkeypatch, "pump", "--port", url, "rate", "1000") == 2
    assert _cli(monkeypatch, "pump", "--port", url, "rate", "12.34") == 2
    assert _cli(monkeypatch, "pump", "--port", url, "vtbi", "20000") == 2
    assert "steps of 0.1" in capsys.readouterr().err
    capsys.readouterr()
    emu.unplug()
    assert _cli(monkeypatch, "pump", "--port", url, "--address", "3", "status") == 5
    err = capsys.readouterr().err
    assert err == (
        f"pumpctl pump: no reply from pump at 3 on {url} within 1.0 s; "
        "check cable, baud and address\n"
    )
    assert _cli(monkeypatch, "pump", "--port", "/dev/nonexistent-tty", "status") == 5
    assert "cannot open /dev/nonexistent-tty" in capsys.readouterr().err


@pytest.mark.parametrize("link", ["pty", "tcp:0"])
def test_emulate_command_prints_url_first_and_stops_on_sigterm(link: str) -> None:
    code = (
        "import sys; from pumpctl import cli; "
        "m = 'pumpctl.commands.pump'; "
        "cli.COMMAND_MODULES = (*[x for x in cli.COMMAND_MODULES if x != m], m); "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "emulate", "--link", link, "--address", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("/dev/" if link == "pty" else "socket://127.0.0.1:")
        drv = NewEraDriver(first, address=4, timeout_s=0.5)
        assert drv.identify().address == 4
        drv.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# ------------------------------------------------------------------ third-party client


@pytest.mark.parametrize("safe_timeout_s", [0, 5])
def test_third_party_nesp_lib_client(url: str, safe_timeout_s: int) -> None:
    nesp = pytest.importorskip("nesp_lib")
    port = nesp.Port(url, 19200)
    pump = None
    try:
        pump = nesp.Pump(port, safe_mode_timeout_s=safe_timeout_s)
        assert pump.model_number == 1000 and pump.firmware_version == (3, 928)
        pump.syringe_diameter_mm = 26.59
        pump.pumping_volume_ml = 0.05
        pump.pumping_rate_ml_per_min = 10.0
        pump.run()
        assert abs(pump.volume_infused_ml - 0.05) < 1e-3
    finally:
        if pump is not None and safe_timeout_s:
            pump.safe_mode_timeout_s = 0  # joins nesp-lib's heartbeat thread before closing
        port.close()


@pytest.mark.skipif(not os.environ.get("PUMPCTL_TEST_PORT"), reason="needs PUMPCTL_TEST_PORT")
def test_real_pump_identifies() -> None:
    drv = NewEraDriver(os.environ["PUMPCTL_TEST_PORT"], timeout_s=0.5, program_phases=False)
    try:
        assert drv.identify().model.startswith("NE")
        drv.status()
    finally:
        drv.close()


def test_driver_reads_the_pty_itself_and_a_stolen_read_is_not_a_lost_link(
    emu: Ne1000Emulator, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reads a local port's descriptor itself. If the bytes it was woken for
    are gone when it reads (another reader took them: EAGAIN), it waits on, as pyserial
    does; the port is not closed and no link loss is reported."""
    import pumpctl.drivers.newera as newera

    drv = NewEraDriver(url, timeout_s=0.3)
    drv.identify()
    mine = newera._posix_fd(drv.bus.port())
    assert mine is not None  # the fast path is in use
    real_read, stolen = newera.os.read, []

    def read(fd: int, n: int) -> bytes:  # (os.read is shared with the emulator's thread)
        if fd == mine and not stolen:
            stolen.append(fd)
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_read(fd, n)

    monkeypatch.setattr(newera.os, "read", read)
    assert drv.status().run_state is RunState.STOPPED
    assert stolen and drv.stats["port_errors"] == 0 and drv.stats["timeouts"] == 0
    drv.close()
