"""Run a QA scenario on SimClock with the real controller, watchdog and log.

Interruptions are measured from the pump physics (what reached the patient), not from
what the controller believes: an occlusion counts from the moment the line closed,
not from the alarm a minute later.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pumpctl.clock import SimClock
from pumpctl.controller import Controller
from pumpctl.drivers.relay import RelayPair
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import InputError, PumpctlError
from pumpctl.eventlog import MemoryEventLog
from pumpctl.events import EventKind
from pumpctl.order import Order, build
from pumpctl.report import build_result
from pumpctl.setting import DrugSetting, PumpModel, check_fits, load_pump, load_setting
from pumpctl.sim.scenario import Scenario, Titration
from pumpctl.sim.staff import Nurse, Pharmacy, World

SAMPLE_S = 30.0  # IEC 60601-2-24 sample interval
TRUMPET_S = 7200.0  # first two hours after the start


@dataclass
class SimRun:
    """Everything a finished simulation knows; ``result`` is the report JSON."""

    scenario: Scenario
    seed: int
    setting: DrugSetting
    pump: PumpModel
    controller: Controller
    driver: SimDriver | RelayPair
    log: MemoryEventLog
    start_s: float | None
    end_s: float
    result: dict[str, Any]
    volume_samples: list[tuple[float, float]] = field(default_factory=list)


def _order(
    sc: Scenario,
    dose: float,
    bag_ml: int | None,
    reason: str | None,
    op: str | None,
    confirm: str | None = None,
) -> Order:
    return Order(
        Decimal(str(dose)),
        Decimal(str(sc.weight_kg)),
        bag_ml=bag_ml,
        interval_h=sc.interval_h,
        override_reason=reason,
        operator=op,
        confirm_deviation=confirm,
    )


def _titration_order(sc: Scenario, t: Titration) -> Order:
    return _order(
        sc,
        t.dose_mg_per_day,
        t.bag_ml or sc.bag_ml,
        t.override_reason,
        t.operator,
        t.confirm_deviation,
    )


#: The build's hints name the CLI options; a scenario gives the [[titrations]] keys.
_SCENARIO_KEYS = (
    ("--override-reason TEXT", "override_reason"),
    ("--confirm-deviation REASON", "confirm_deviation"),
    ("--operator ID", "operator"),
)


def _in_scenario_terms(why: str, where: str) -> str:
    """A build's refusal, its CLI options named as the scenario keys that give them."""
    out = why
    for flag, key in _SCENARIO_KEYS:
        out = out.replace(flag, f'{key} = "..."')
    return out if out == why else f"{out} in {where}"


def check_titrations(sc: Scenario, setting: DrugSetting) -> None:
    """Build every titration's order against the setting before the run, as the
    controller will when it fires: a refusal, or an override or deviation confirmation
    the ``[[titrations]]`` entry does not give, is bad input (one line, exit 2)."""
    for i, t in enumerate(sc.titrations):
        try:
            build(_titration_order(sc, t), setting)
        except PumpctlError as exc:
            why = _in_scenario_terms(str(exc), "the [[titrations]] entry")
            raise InputError(
                f"{sc.path}: titrations[{i}] (at_h {t.at_h:g}, {t.dose_mg_per_day:g} mg/day) "
                f"cannot be programmed: {why}"
            ) from None


def run_scenario(
    sc: Scenario,
    seed: int | None = None,
    *,
    trace: bool = True,
    observers: Sequence[Callable[[Controller, SimClock], object]] | None = None,
    loaded: tuple[DrugSetting, PumpModel] | None = None,
) -> SimRun:
    """Simulate one scenario; ``seed`` overrides the file's (campaign runs).

    ``observers`` are called with the controller and the clock before the order is
    programmed (e.g. to record an HL7 stream). ``loaded`` is the scenario's setting and
    pump already loaded (a campaign loads them once, so every run uses the same content).
    """
    seed = sc.seed if seed is None else seed
    if loaded is None:
        setting = load_setting(sc.resolve_path(sc.setting))
        model = load_pump(sc.resolve_path(sc.pump))
    else:
        setting, model = loaded
    try:
        check_fits(setting, model)
    except InputError as exc:
        raise InputError(f"{sc.path}: {exc}") from None
    check_titrations(sc, setting)
    rng = random.Random(seed)
    clock = SimClock()
    log = MemoryEventLog()
    log.install_setting(setting, operator="biomed", t_s=0.0)
    pumps = {"A": SimDriver(model, clock, keep_segments=True)}
    driver: SimDriver | RelayPair = pumps["A"]
    if sc.relay:  # two pumps of the same model take turns across reservoir changes
        pumps["B"] = SimDriver(model, clock, keep_segments=True)
        driver = RelayPair(pumps["A"], pumps["B"])
    kinds = {f.kind for f in sc.faults}
    poll_s = 10.0 if kinds & {"comm_loss", "power_loss"} else None
    ctl = Controller(clock, driver, log, setting, model=model, poll_s=poll_s)
    world = World(clock, driver)
    Pharmacy(ctl, clock, world, rng, sc.compound_min, sc.deliver_min)
    Nurse(ctl, driver, world, rng, sc.response_min, sc.swap_s, sc.prime_min, sc.hang_lead_s)
    if sc.charge_response_min is not None:
        Nurse(
            ctl,
            driver,
            world,
            rng,
            sc.charge_response_min,
            sc.swap_s,
            sc.prime_min,
            sc.hang_lead_s,
            operator="charge1",
            answers=("no_bag_ready",),
        )
    end_s = sc.duration_h * 3600.0
    for f in sc.faults:
        at_s = f.at_h.sample(rng) * 3600.0
        world.schedule(f.kind, min(at_s, end_s), f.duration_min.sample(rng) * 60.0)
    refused: list[dict[str, Any]] = []  # titrations the controller refused when they fired
    for t in sc.titrations:
        clock.call_at(t.at_h * 3600.0, _titrate_at(ctl, _titration_order(sc, t), t, refused))

    if trace:  # IEC samples every 30 s for 2 h from the start, read off the physics' steps

        def on_event(ev: Any) -> None:
            if ev.event == "state" and ev.detail.get("trigger") == "start":
                t0 = clock.now()
                n = int(TRUMPET_S / SAMPLE_S) + 1
                for p in pumps.values():
                    p.physics.add_probes([t0 + k * SAMPLE_S for k in range(n)])

        ctl.listeners.append(on_event)
    for obs in observers or ():
        obs(ctl, clock)

    err = ctl.program(
        _order(
            sc, sc.dose_mg_per_day, sc.bag_ml, sc.override_reason, sc.operator, sc.confirm_deviation
        ),
        "md1",
    )
    if err is not None:
        why = _in_scenario_terms(err, "the [order] table")
        raise InputError(f"{sc.path}: the scenario's order cannot be programmed: {why}")
    clock.run(end_s)
    for p in pumps.values():
        p.physics.advance(end_s)
        p.physics.flush_probes()
    samples = _probe_totals([p.physics.probe_values for p in pumps.values()])
    ctl.close()
    start = next(
        (e.t_s for e in log.events() if e.event == "state" and e.detail.get("trigger") == "start"),
        None,
    )
    record_physics(log, pumps, samples, end_s, ctl)
    log.append(
        end_s,
        ctl.pump_name,
        ctl.state.value,
        EventKind.RUN_END,
        run_meta(sc, seed, setting, model, end_s, refused),
    )
    run = SimRun(sc, seed, setting, model, ctl, driver, log, start, end_s, {}, samples)
    # The live controller's state is the fold of exactly these events (the events logged
    # beside it, install, segments, trace and run end, change no channel state).
    run.result = build_result(log.events(), state=ctl.s)
    return run


def _probe_totals(per_pump: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The delivered volume of all pumps at each sample time (pumps probed alike)."""
    out: list[tuple[float, float]] = []
    for row in zip(*per_pump, strict=True):
        total = 0.0
        for _t, v in row:
            total += v
        out.append((row[0][0], total))
    return out


def _titrate_at(
    ctl: Controller, order: Order, t: Titration, refused: list[dict[str, Any]]
) -> Callable[[], None]:
    def go() -> None:
        err = ctl.titrate(order, "md1")
        if err is not None:  # never silent: the report lists it and the run fails
            refused.append(
                {"t_s": t.at_h * 3600.0, "dose_mg_per_day": t.dose_mg_per_day, "why": err}
            )

    return go


def record_physics(
    log: MemoryEventLog,
    pumps: dict[str, SimDriver],
    samples: list[tuple[float, float]],
    end_s: float,
    ctl: Controller,
) -> None:
    """Log what reached the patient (physics segments) and the IEC flow trace."""
    state = ctl.state.value
    segments = [(name, seg) for name, p in pumps.items() for seg in p.physics.segments]
    segments.sort(key=lambda x: (x[1].start_s, x[0]))
    for name, seg in segments:
        log.append(
            seg.end_s,
            ctl.pump_name,
            state,
            EventKind.DELIVERY_SEGMENT,
            {
                "start_s": seg.start_s,
                "end_s": seg.end_s,
                "mode": seg.mode.value,
                "rate_ml_per_h": seg.rate_ml_per_h,
                "actual_ml": seg.actual_ml,
                "drug_mg": seg.drug_mg,
                "occluded": seg.occluded,
                "cause": seg.cause,
                "bag": seg.bag,
                "pump": name,
            },
        )
    if len(samples) >= 2:
        first = ctl.bags[0] if ctl.bags else None
        log.append(
            end_s,
            ctl.pump_name,
            state,
            EventKind.FLOW_TRACE,
            {
                "t_s": [t for t, _v in samples],
                "volume_ml": [v for _t, v in samples],
                "rate_ml_per_h": first.rate_ml_per_h if first else 0.0,
            },
        )


def run_meta(
    sc: Scenario,
    seed: int,
    setting: DrugSetting,
    model: PumpModel,
    end_s: float,
    refused: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What a report needs to know about how the run was set up (and titrations the
    controller refused, which fail the run)."""
    meta: dict[str, Any] = {
        "scenario": sc.name,
        "scenario_path": sc.path,
        "seed": seed,
        "end_s": end_s,
        "setting": setting.name,
        "setting_version": setting.version,
        "pump": model.name,
        "pump_version": model.version,
        "stated_accuracy_pct": model.stated_accuracy_pct,
        "expect": {
            "max_interrupted_s": sc.max_interrupted_s,
            "dose_tolerance_pct": sc.dose_tolerance_pct,
            "alarms": list(sc.expect_alarms),
            "no_alarms": list(sc.expect_no_alarms),
            "causes": list(sc.expect_causes),
            "bags": sc.expect_bags,
            "min_interruptions": sc.expect_min_interruptions,
        },
    }
    # Only when given, so the run_end event of a scenario without them is unchanged.
    if sc.expect_max_start_h is not None:
        meta["expect"]["max_start_h"] = sc.expect_max_start_h
    if refused:
        meta["titrations_refused"] = list(refused)
    return meta
