"""One driver contract, run against every driver: the simulated pump on a SimClock, and the
NE-1000 driver talking to the emulator over a real pseudo-terminal on a SystemClock (in
basic and in safe mode). The controller relies on exactly these behaviours."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pumpctl.clock import SimClock, SystemClock
from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator
from pumpctl.drivers.base import PumpAlarm, PumpDriver, PumpIdentity, RunState
from pumpctl.drivers.newera import NewEraDriver, open_relay_pair
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import PumpCommandError
from pumpctl.setting import PumpModel

FAST_ML_PER_H = 999.9  # fast enough to see the volume move within a fraction of a second


@dataclass
class Rig:
    """A driver under test and the means to let time pass and look at the pump itself."""

    driver: PumpDriver
    wait: Callable[[float], None]  # let pump time pass (seconds)
    pump_running: Callable[[], bool]  # the pump's own state, not through the driver
    starts: Callable[[], int]  # how many times the mechanism was started
    quantum_s: float  # pump time that shows a volume change at FAST_ML_PER_H
    address: int = 0


NEIGHBOUR_ML_PER_H = 42.0


@pytest.fixture(
    params=["sim", "newera-basic", "newera-safe", "newera-net-basic", "newera-net-safe"]
)
def rig(request: pytest.FixtureRequest, ne1000_model: PumpModel) -> Iterator[Rig]:
    if request.param == "sim":
        clock = SimClock()
        drv = SimDriver(ne1000_model, clock)
        drv.physics.connect_bag(0.0, 60.0, 1.0, "60 mL syringe")
        started: list[float] = []
        real_start = drv.physics.start

        def counting_start(t: float) -> None:
            if drv.physics.mode is not RunState.RUNNING:
                started.append(t)
            real_start(t)

        drv.physics.start = counting_start  # type: ignore[method-assign]
        yield Rig(
            drv,
            clock.advance,
            lambda: drv.physics.mode is RunState.RUNNING,
            lambda: len(started),
            60.0,
        )
        return
    safe = 30 if request.param.endswith("-safe") else 0
    if request.param.startswith("newera-net"):
        # Address 1 of two pumps on one line; pump 0 runs all along and must not notice.
        clock = SystemClock()
        emus = [Ne1000Emulator(ne1000_model, clock, address=a) for a in (0, 1)]
        with EmulatorServer(emus) as server:
            d0, d1 = open_relay_pair(server.url, ne1000_model, safe_timeout_s=safe, timeout_s=0.2)
            d0.set_rate(NEIGHBOUR_ML_PER_H)
            d0.start()
            emu = emus[1]
            yield Rig(
                d1,
                time.sleep,
                lambda: emu.run_state() is RunState.RUNNING,
                lambda: emu.stats.count("RUN"),
                0.25,
                address=1,
            )
            d1.close()
            assert emus[0].run_state() is RunState.RUNNING
            assert emus[0].rate_ml_per_h() == NEIGHBOUR_ML_PER_H
            assert emus[0].stats.count("RUN") == 1
            assert d0.status().running
            d0.close()
        return
    emu = Ne1000Emulator(ne1000_model, SystemClock())
    with EmulatorServer(emu) as server:
        drv = NewEraDriver.from_model(ne1000_model, server.url, safe_timeout_s=safe, timeout_s=0.2)
        yield Rig(
            drv,
            time.sleep,
            lambda: emu.run_state() is RunState.RUNNING,
            lambda: emu.stats.count("RUN"),
            0.25,
        )
        drv.close()


def test_identify(rig: Rig) -> None:
    ident = rig.driver.identify()
    assert isinstance(ident, PumpIdentity) and ident.model and ident.address == rig.address


def test_program_rate_and_vtbi_without_starting(rig: Rig) -> None:
    rig.driver.set_rate(12.5)
    rig.driver.set_vtbi(100.0)
    st = rig.driver.status()
    assert (st.rate_ml_per_h, st.vtbi_ml) == (12.5, 100.0)
    assert not st.running and st.run_state is RunState.STOPPED
    assert st.volume_infused_ml == 0.0 and not rig.pump_running()


def test_start_is_idempotent_and_volume_increases(rig: Rig) -> None:
    d = rig.driver
    d.set_rate(FAST_ML_PER_H)
    d.set_vtbi(50.0)
    d.start()
    d.start()
    assert rig.starts() == 1 and rig.pump_running()
    v0 = d.status().volume_infused_ml
    rig.wait(rig.quantum_s)
    st = d.status()
    assert st.running and st.run_state is RunState.RUNNING
    assert st.volume_infused_ml > v0
    assert st.vtbi_left_ml is not None and st.vtbi_left_ml < 50.0


def test_rate_change_while_running(rig: Rig) -> None:
    d = rig.driver
    d.set_rate(100.0)
    d.start()
    d.set_rate(200.0)
    st = d.status()
    assert st.running and st.rate_ml_per_h == 200.0


def test_stop_leaves_the_pump_stopped(rig: Rig) -> None:
    d = rig.driver
    d.set_rate(50.0)
    d.start()
    d.stop()
    assert d.status().run_state is RunState.STOPPED  # stopped, not merely paused
    d.stop()  # stopping a stopped pump is harmless
    assert not rig.pump_running()
    d.start()  # and it can start again
    assert d.status().running and rig.starts() == 2


def test_clear_volume(rig: Rig) -> None:
    d = rig.driver
    d.set_rate(FAST_ML_PER_H)
    d.start()
    rig.wait(rig.quantum_s)
    d.stop()
    assert d.status().volume_infused_ml > 0
    d.clear_volume()
    assert d.status().volume_infused_ml == 0.0


def test_vtbi_complete_stops_and_is_reported(rig: Rig) -> None:
    d = rig.driver
    d.set_rate(FAST_ML_PER_H)
    d.set_vtbi(0.05)
    d.start()
    rig.wait(max(0.05 / FAST_ML_PER_H * 3600 * 2, rig.quantum_s))
    st = d.status()
    assert not st.running and PumpAlarm.VTBI_COMPLETE in st.alarms
    assert st.volume_infused_ml == pytest.approx(0.05, abs=1e-3)
    with pytest.raises(PumpCommandError):
        d.start()  # nothing left to infuse until a new VTBI
    d.set_vtbi(0.1)
    d.start()
    assert d.status().running


@pytest.mark.parametrize("rate", [0.05, 1000.0, 12.34, -1.0])
def test_out_of_range_rate_is_refused(rig: Rig, rate: float) -> None:
    with pytest.raises(PumpCommandError):
        rig.driver.set_rate(rate)
    assert rig.starts() == 0


@pytest.mark.parametrize("vtbi", [0.0, -5.0, 10000.0])
def test_out_of_range_vtbi_is_refused(rig: Rig, vtbi: float) -> None:
    with pytest.raises(PumpCommandError):
        rig.driver.set_vtbi(vtbi)


def test_close_keeps_the_pump_in_its_last_state(rig: Rig) -> None:
    d = rig.driver
    d.set_rate(30.0)
    d.start()
    d.close()
    d.close()
    assert rig.pump_running()
