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
from pumpctl.drivers.base import RunState
from pumpctl.drivers.sim import SimDriver
from pumpctl.errors import InputError
from pumpctl.eventlog import MemoryEventLog
from pumpctl.order import Order
from pumpctl.setting import DrugSetting, PumpModel, load_pump, load_setting
from pumpctl.sim.physics import Segment
from pumpctl.sim.scenario import Scenario
from pumpctl.sim.staff import Nurse, Pharmacy, World

SAMPLE_S = 30.0  # IEC 60601-2-24 sample interval
TRUMPET_S = 7200.0  # first two hours after the start

_PHYSICS_CAUSE = {
    "vtbi_complete": "bag_empty",
    "stall": "pump_failure",
    "reset": "power_loss",
    "safe_timeout": "pump_failure",
}


@dataclass
class SimRun:
    """Everything a finished simulation knows; ``result`` is the report JSON."""

    scenario: Scenario
    seed: int
    setting: DrugSetting
    pump: PumpModel
    controller: Controller
    driver: SimDriver
    log: MemoryEventLog
    start_s: float | None
    end_s: float
    result: dict[str, Any]
    volume_samples: list[tuple[float, float]] = field(default_factory=list)


def _order(
    sc: Scenario, dose: float, bag_ml: int | None, reason: str | None, op: str | None
) -> Order:
    return Order(
        Decimal(str(dose)),
        Decimal(str(sc.weight_kg)),
        bag_ml=bag_ml,
        interval_h=sc.interval_h,
        override_reason=reason,
        operator=op,
    )


def run_scenario(
    sc: Scenario,
    seed: int | None = None,
    *,
    trace: bool = True,
    observers: Sequence[Callable[[Controller, SimClock], object]] = (),
) -> SimRun:
    """Simulate one scenario; ``seed`` overrides the file's (campaign runs).

    ``observers`` are called with the controller and clock before the order is programmed.
    """
    seed = sc.seed if seed is None else seed
    setting = load_setting(sc.resolve_path(sc.setting))
    model = load_pump(sc.resolve_path(sc.pump))
    rng = random.Random(seed)
    clock = SimClock()
    log = MemoryEventLog()
    log.install_setting(setting, operator="biomed", t_s=0.0)
    driver = SimDriver(model, clock, keep_segments=True)
    kinds = {f.kind for f in sc.faults}
    poll_s = 10.0 if kinds & {"comm_loss", "power_loss"} else None
    ctl = Controller(
        clock, driver, log, setting, reservoir_change=model.reservoir_change, poll_s=poll_s
    )
    world = World(clock, driver)
    Pharmacy(ctl, clock, world, rng, sc.compound_min, sc.deliver_min)
    Nurse(ctl, driver, world, rng, sc.response_min, sc.swap_s, sc.prime_min, sc.hang_lead_s)
    end_s = sc.duration_h * 3600.0
    for f in sc.faults:
        at_s = f.at_h.sample(rng) * 3600.0
        world.schedule(f.kind, min(at_s, end_s), f.duration_min.sample(rng) * 60.0)
    for t in sc.titrations:
        o = _order(sc, t.dose_mg_per_day, t.bag_ml or sc.bag_ml, t.override_reason, t.operator)
        clock.call_at(t.at_h * 3600.0, lambda o=o: ctl.titrate(o, "md1"))

    samples: list[tuple[float, float]] = []
    if trace:

        def on_event(ev: Any) -> None:
            if ev.event == "state" and ev.detail.get("trigger") == "start":
                t0 = clock.now()
                for k in range(int(TRUMPET_S / SAMPLE_S) + 1):
                    clock.call_at(t0 + k * SAMPLE_S, _sample)

        def _sample() -> None:
            driver.physics.advance(clock.now())
            samples.append((clock.now(), driver.physics.actual_ml_total))

        ctl.listeners.append(on_event)

    for observe in observers:
        observe(ctl, clock)
    err = ctl.program(
        _order(sc, sc.dose_mg_per_day, sc.bag_ml, sc.override_reason, sc.operator), "md1"
    )
    if err is not None:
        raise InputError(f"{sc.path}: the scenario's order cannot be programmed: {err}")
    clock.run(end_s)
    driver.physics.advance(end_s)
    ctl.close()
    start = next(
        (e.t_s for e in log.events() if e.event == "state" and e.detail.get("trigger") == "start"),
        None,
    )
    run = SimRun(sc, seed, setting, model, ctl, driver, log, start, end_s, {}, samples)
    run.result = summarise(run)
    return run


def interruptions(run: SimRun) -> list[dict[str, Any]]:
    """Gaps in delivery after the start, from the physics, with their causes."""
    if run.start_s is None:
        return [{"start_s": 0.0, "end_s": run.end_s, "cause": "never_started"}]
    gaps: list[dict[str, Any]] = []
    ctl_gaps = run.controller.watchdog.gaps
    for seg in run.driver.physics.segments:
        if seg.end_s <= run.start_s:
            continue
        cause = _gap_cause(seg)
        if cause is None:
            continue
        if cause == "stopped":  # ask the controller why it stopped the pump
            for g in ctl_gaps:
                g_end = g.end_s if g.end_s is not None else run.end_s
                if g.start_s <= seg.start_s + 1e-6 and g_end >= seg.start_s:
                    cause = g.cause
                    break
        start = max(seg.start_s, run.start_s)
        if gaps and abs(gaps[-1]["end_s"] - start) < 1e-6:
            gaps[-1]["end_s"] = seg.end_s
        else:
            gaps.append({"start_s": start, "end_s": seg.end_s, "cause": cause})
    return gaps


def _gap_cause(seg: Segment) -> str | None:
    if seg.occluded:
        return "occlusion"
    if seg.mode is RunState.RUNNING:
        return None
    if seg.mode is RunState.KVO:
        return "bag_empty"
    return _PHYSICS_CAUSE.get(seg.cause, seg.cause or "stopped")


def ordered_mg(run: SimRun) -> float:
    """The ordered dose integrated from the start to the end, titrations included."""
    if run.start_s is None:
        return 0.0
    sc = run.scenario
    changes = sorted((t.at_h * 3600.0, t.dose_mg_per_day) for t in sc.titrations)
    total, t_prev, dose = 0.0, run.start_s, sc.dose_mg_per_day
    for at_s, new in changes:
        if at_s > t_prev:
            total += dose * (min(at_s, run.end_s) - t_prev) / 86400.0
            t_prev = min(at_s, run.end_s)
        dose = new
    total += dose * max(run.end_s - t_prev, 0.0) / 86400.0
    return total


def summarise(run: SimRun) -> dict[str, Any]:
    """The result JSON of a run, with its verdict."""
    sc, ctl, phys = run.scenario, run.controller, run.driver.physics
    gaps = interruptions(run)
    interrupted_s = sum(g["end_s"] - g["start_s"] for g in gaps)
    ordered = ordered_mg(run)
    delivered = phys.drug_mg_total
    err_pct = (delivered - ordered) / ordered * 100.0 if ordered else -100.0
    alarms = [
        {
            "t_h": _h(a.raised_s),
            "kind": a.kind,
            "priority": a.priority.value,
            "acknowledged_h": None if a.acknowledged_s is None else _h(a.acknowledged_s),
            "cleared_h": None if a.cleared_s is None else _h(a.cleared_s),
            "bag": a.bag_n,
        }
        for a in ctl.alarms.all
    ]
    bags = []
    for b in ctl.bags:
        ended = b.ended_s is not None
        end = b.ended_s if ended else (ctl.watchdog.projected_end_s or run.end_s)
        bags.append(
            {
                "n": b.n,
                "hung_h": _h(b.hung_s or 0.0),
                "end_h": _h(end),
                "ended": ended,
                "mg": b.mg,
                "ml": b.content_ml,
                "bag_ml": b.bag_ml,
                "rate_ml_per_h": b.rate_ml_per_h,
                "compounded_min_before_hang": None
                if b.compounded_s is None or b.hung_s is None
                else round((b.hung_s - b.compounded_s) / 60.0, 2),
                "light_protected": b.light_protected,
            }
        )
    failed: list[str] = []
    if interrupted_s > sc.max_interrupted_s + 1e-6:
        failed.append(f"interrupted {interrupted_s:.1f} s > allowed {sc.max_interrupted_s:g} s")
    if abs(err_pct) > sc.dose_tolerance_pct:
        failed.append(f"dose error {err_pct:+.2f}% outside +/-{sc.dose_tolerance_pct:g}%")
    kinds = {a["kind"] for a in alarms}
    failed += [f"expected alarm '{k}' never raised" for k in sc.expect_alarms if k not in kinds]
    failed += [f"alarm '{k}' raised but not allowed" for k in sc.expect_no_alarms if k in kinds]
    causes = {g["cause"] for g in gaps}
    failed += [f"no interruption caused by '{c}'" for c in sc.expect_causes if c not in causes]
    if sc.expect_bags is not None and len(bags) != sc.expect_bags:
        failed.append(f"{len(bags)} bags hung, expected {sc.expect_bags}")
    if sc.expect_min_interruptions is not None and len(gaps) < sc.expect_min_interruptions:
        failed.append(f"{len(gaps)} interruptions, expected at least {sc.expect_min_interruptions}")
    if run.start_s is None:
        failed.append("the infusion never started")
    b0 = ctl.build
    return {
        "scenario": sc.name,
        "scenario_path": sc.path,
        "seed": run.seed,
        "verdict": "fail" if failed else "pass",
        "failed_expectations": failed,
        "duration_h": sc.duration_h,
        "start_h": None if run.start_s is None else _h(run.start_s),
        "ordered_mg": round(ordered, 3),
        "delivered_mg": round(delivered, 3),
        "dose_error_pct": round(err_pct, 3),
        "delivered_ml": round(phys.actual_ml_total, 3),
        "interrupted_s": round(interrupted_s, 3),
        "interruptions": [
            {
                "start_h": _h(g["start_s"]),
                "end_h": _h(g["end_s"]),
                "length_s": round(g["end_s"] - g["start_s"], 3),
                "cause": g["cause"],
            }
            for g in gaps
        ],
        "bags": bags,
        "alarms": alarms,
        "setting": run.setting.name,
        "setting_version": run.setting.version,
        "pump": run.pump.name,
        "pump_version": run.pump.version,
        "program": None
        if b0 is None
        else {
            "mg_per_bag": float(b0.mg_per_bag),
            "bag_ml": b0.bag_ml,
            "interval_h": b0.interval_h,
            "rate_ml_per_h": float(b0.rate_ml_per_h),
            "achieved_mg_per_day": float(b0.achieved_mg_per_day),
        },
        "events": len(run.log.events()),
    }


def _h(t_s: float) -> float:
    return round(t_s / 3600.0, 6)
