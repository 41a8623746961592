"""NE-1000 network mode (several pumps on one line), exclusive ports, one TCP client at a
time, and reply pacing: the emulator and the driver over a real pseudo-terminal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from pumpctl import cli
from pumpctl.clock import SystemClock
from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator
from pumpctl.devices.newera_codec import Reply, ReplyDecoder, encode_command
from pumpctl.drivers.base import PumpAlarm, RunState
from pumpctl.drivers.newera import NewEraBus, NewEraDriver, open_relay_pair
from pumpctl.errors import CommunicationError, InputError
from pumpctl.setting import PumpModel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def line(ne1000_model: PumpModel) -> Iterator[tuple[list[Ne1000Emulator], str]]:
    """Two emulated pumps, addresses 0 and 1, on one pty."""
    clock = SystemClock()
    emus = [Ne1000Emulator(ne1000_model, clock, address=a) for a in (0, 1)]
    with EmulatorServer(emus) as server:
        yield emus, server.url


def _ask(ser: serial.Serial, packet: bytes, n: int = 1, within_s: float = 0.5) -> list[Reply]:
    dec = ReplyDecoder()
    ser.write(packet)
    got: list[Reply] = []
    deadline = time.monotonic() + within_s
    while len(got) < n and time.monotonic() < deadline:
        got += [i for i in dec.feed(ser.read(max(1, ser.in_waiting))) if isinstance(i, Reply)]
    return got


# ------------------------------------------------------------------ the emulated network


@pytest.mark.parametrize("safe", [False, True])
def test_each_pump_answers_only_its_own_address(
    line: tuple[list[Ne1000Emulator], str], safe: bool
) -> None:
    emus, url = line
    for e in emus:
        e.pending_alarm = None
        if safe:
            e.safe_timeout_s = 30
    ser = serial.serial_for_url(url, 19200, timeout=0.02)
    try:
        (r1,) = _ask(ser, encode_command(1, "RAT", "20MH", safe=safe))
        assert (r1.address, r1.error, r1.safe) == (1, None, safe)
        (r0,) = _ask(ser, encode_command(0, "RAT", safe=safe))
        assert (r0.address, r0.data) == (0, "0.000MH")  # pump 0 did not take pump 1's rate
        (run,) = _ask(ser, encode_command(1, "RUN", safe=safe))
        assert (run.address, run.prompt) == (1, "I")
        assert emus[1].run_state() is RunState.RUNNING
        assert emus[0].run_state() is RunState.STOPPED
        assert emus[0].stats.executed and emus[0].stats.count("RUN") == 0
        assert not _ask(ser, encode_command(7, "VER", safe=safe), within_s=0.15)  # nobody at 7
        both = _ask(ser, b"*VER\r" if not safe else encode_command(0, "*VER", safe=True), 2)
        assert sorted(r.address for r in both) == [0, 1]  # the system address reaches all
    finally:
        ser.close()


def test_each_pump_keeps_its_own_physics(line: tuple[list[Ne1000Emulator], str]) -> None:
    emus, url = line
    d0, d1 = open_relay_pair(url, timeout_s=0.3, safe_timeout_s=0)
    try:
        d0.set_rate(999.9)
        d1.set_rate(100.0)
        d0.start()
        time.sleep(0.3)
        assert d0.status().volume_infused_ml > 0.05
        assert d1.status().volume_infused_ml == 0.0 and not d1.status().running
        d1.start()
        d0.stop()
        time.sleep(0.2)
        v0 = d0.status().volume_infused_ml
        time.sleep(0.2)
        assert d0.status().volume_infused_ml == v0  # stopped pump 0 stays put
        assert emus[1].infused_ml() > 0 and emus[1].rate_ml_per_h() == 100.0
    finally:
        d0.close()
        d1.close()


def test_emulator_server_refuses_duplicate_addresses(ne1000_model: PumpModel) -> None:
    clock = SystemClock()
    with pytest.raises(ValueError, match="different addresses"):
        EmulatorServer([Ne1000Emulator(ne1000_model, clock) for _ in range(2)])


# ------------------------------------------------------------------ drivers on one bus


@pytest.mark.parametrize("safe_timeout_s", [0, 30])
def test_exactly_once_per_address_after_lost_replies(
    line: tuple[list[Ne1000Emulator], str], safe_timeout_s: int
) -> None:
    emus, url = line
    d0, d1 = open_relay_pair(url, timeout_s=0.2, safe_timeout_s=safe_timeout_s)
    try:
        d0.set_rate(50.0)
        d0.start()
        emus[1].drop_replies = 1  # pump 1 sets the rate but its reply is lost
        d1.set_rate(120.0)
        assert emus[1].stats.count_set("RAT") == 1  # read back, not applied twice
        emus[1].drop_replies = 1  # the reply to RUN is lost
        d1.start()
        assert emus[1].stats.count("RUN") == 1 and d1.status().running
        d1.start()  # idempotent
        assert emus[1].stats.count("RUN") == 1
        # pump 0 was never touched by any of it
        assert emus[0].stats.count("RUN") == 1 and emus[0].stats.count_set("RAT") == 1
        assert d0.status().rate_ml_per_h == 50.0 and d0.status().running
        emus[0].drop_replies = 1
        d0.stop()
        assert emus[0].run_state() is RunState.STOPPED and emus[1].run_state() is RunState.RUNNING
    finally:
        d0.close()
        d1.close()


def test_a_silent_pump_does_not_take_the_line_down(line: tuple[list[Ne1000Emulator], str]) -> None:
    emus, url = line
    d0, d1 = open_relay_pair(url, timeout_s=0.15, safe_timeout_s=0)
    try:
        d0.set_rate(30.0)
        d1.set_rate(30.0)
        emus[1].power_off()
        with pytest.raises(CommunicationError, match="no reply from pump at 1"):
            d1.heartbeat()
        assert d0.heartbeat() is RunState.STOPPED  # pump 0 still answers
        d0.start()
        assert emus[0].run_state() is RunState.RUNNING
    finally:
        d0.close()
        d1.close()


def test_auto_alarm_of_one_pump_reaches_its_own_driver(
    line: tuple[list[Ne1000Emulator], str],
) -> None:
    emus, url = line
    d0, d1 = open_relay_pair(url, timeout_s=0.2, safe_timeout_s=30)
    got: list[list[PumpAlarm]] = []
    d1.listener = got.append
    try:
        d1.set_rate(60.0)
        d1.start()
        emus[1].stall()  # sent unasked in safe mode
        time.sleep(0.05)
        assert d0.status().alarms == frozenset()  # pump 0's driver reads it off the line...
        st = d1.status()  # ...and hands it to pump 1's driver
        assert PumpAlarm.STALL in st.alarms and st.run_state is RunState.ALARM
        assert got == [[PumpAlarm.STALL]]
    finally:
        d0.close()
        d1.close()


def test_bus_rules(line: tuple[list[Ne1000Emulator], str]) -> None:
    _emus, url = line
    bus = NewEraBus(url)
    d0 = bus.driver(0)
    with pytest.raises(InputError, match="address 0 is already in use"):
        bus.driver(0)
    with pytest.raises(InputError, match="differs from the shared line"):
        NewEraDriver(bus, address=1, baud=9600)
    with pytest.raises(InputError, match="two different addresses"):
        open_relay_pair(url, addresses=(1, 1))
    d1 = bus.driver(1)
    d0.close()
    assert d1.identify().address == 1  # the port stays open for the last driver
    d1.close()
    with pytest.raises(CommunicationError, match="closed"):
        d1.identify()


# ------------------------------------------------------------------ exclusivity


def test_second_controller_on_a_serial_port_is_refused(
    line: tuple[list[Ne1000Emulator], str],
) -> None:
    _emus, url = line
    first = NewEraDriver(url, timeout_s=0.2)
    try:
        with pytest.raises(CommunicationError) as err:
            NewEraDriver(url, timeout_s=0.2)
        msg = str(err.value)
        assert msg.startswith(f"{url} is in use by another program") and "\n" not in msg
        assert first.identify().model == "NE1000"  # the first is unaffected
    finally:
        first.close()
    NewEraDriver(url, timeout_s=0.2).close()  # free again once the first is closed


def test_tcp_emulator_refuses_a_second_client(ne1000_model: PumpModel) -> None:
    logged: list[str] = []
    emu = Ne1000Emulator(ne1000_model, SystemClock())
    with EmulatorServer(emu, "tcp:0", log=logged.append) as server:
        first = NewEraDriver(server.url, timeout_s=0.3)
        assert first.identify().model == "NE1000"
        host, port = server.url.removeprefix("socket://").split(":")
        second = socket.create_connection((host, int(port)), timeout=2.0)
        second.settimeout(2.0)
        assert second.recv(16) == b""  # closed at once, nothing sent
        second.close()
        assert first.heartbeat() is RunState.STOPPED  # the first carries on
        assert server.refused_clients == 1
        assert len(logged) == 1 and "refused a second client" in logged[0]
        assert server.url in logged[0]
        first.close()
        time.sleep(0.1)
        again = NewEraDriver(server.url, timeout_s=0.3)  # the line is free again
        assert again.identify().model == "NE1000"
        again.close()


# ------------------------------------------------------------------ pacing


def test_paced_reply_is_never_early_and_not_late(ne1000_model: PumpModel) -> None:
    emu = Ne1000Emulator(ne1000_model, SystemClock(), pace_baud=2400, power_on_alarm=False)
    with EmulatorServer(emu) as server:
        ser = serial.serial_for_url(server.url, 19200, timeout=0.05)
        try:
            overheads = []
            for _ in range(20):
                t0 = time.monotonic()
                (r,) = _ask(ser, b"VER\r")
                overheads.append(time.monotonic() - t0 - (4 + len(r.raw)) * 10 / 2400)
        finally:
            ser.close()
    overheads.sort()
    assert overheads[0] > -2e-4  # the reply never beats the line (2400 baud: ~70 ms)
    assert overheads[len(overheads) // 2] < 0.01  # and is not held much longer


# ------------------------------------------------------------------ the CLI


def _cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    if "pumpctl.commands.pump" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "pumpctl.commands.pump"))
    return cli.main(list(argv))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--pumps", "0"], "--pumps 0 is not allowed; allowed: 1-10"),
        (["--pumps", "11"], "--pumps 11 is not allowed"),
        (["--address", "99", "--pumps", "2"], "needs addresses up to 100; allowed: 0-99"),
        (["--pace-baud", "4800"], "--pace-baud 4800 is not allowed"),
    ],
)
def test_emulate_bad_options(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    assert _cli(monkeypatch, "emulate", *argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_emulate_two_pumps_on_one_pty() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pumpctl.cli", "emulate", "--link", "pty", "--pumps", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("/dev/")
        d0, d1 = open_relay_pair(url, timeout_s=0.5, safe_timeout_s=10)
        assert (d0.identify().address, d1.identify().address) == (0, 1)
        d1.set_rate(500.0)
        d1.start()
        assert d1.status().running and not d0.status().running
        d1.stop()
        d0.close()
        d1.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    assert "x2 on one line at addresses 0, 1" in proc.stderr.read()
