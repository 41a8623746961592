"""Exact, event-driven physics of one infusion pump channel.

Between commands the programmed rate is constant, so the delivered volume has a closed
form: a first-order start-up curve times a peristaltic ripple, scaled by the unit's
bias. ``next_event_s`` tells the caller when something will happen on its own (VTBI
complete, reservoir and drip chamber dry, occlusion alarm, battery), so a 72-hour
infusion takes a few hundred steps, not millions. The physics never reads a clock:
every call carries the time.

The pump's own volume counter is nominal (motor steps); what reaches the patient is
the physical flow. Both are kept so the gap between them is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pumpctl.errors import PumpCommandError, ReservoirEmptyError
from pumpctl.pumpstatus import FLOW_STOPPING_ALARMS, PumpAlarm, PumpStatus, RunState
from pumpctl.setting import PumpModel

_EPS_ML = 1e-9


@dataclass(slots=True)
class Segment:
    """A stretch of constant pump behaviour, for reports and plots."""

    start_s: float
    end_s: float
    mode: RunState
    rate_ml_per_h: float  # programmed (or KVO) rate the mechanism ran at
    actual_ml: float  # what reached the patient
    drug_mg: float
    occluded: bool = False
    cause: str = ""
    bag: str = ""  # the reservoir it came from (segments never merge across bags)


@dataclass(slots=True)
class _Reservoir:
    content_ml: float
    conc_mg_per_ml: float
    label: str


@dataclass
class PumpPhysics:
    """One channel: mechanism, reservoir (bag), drip chamber, line and power."""

    model: PumpModel
    t_s: float = 0.0
    mode: RunState = RunState.STOPPED
    rate_ml_per_h: float = 0.0
    vtbi_ml: float | None = None
    counted_ml: float = 0.0
    actual_ml_total: float = 0.0
    drug_mg_total: float = 0.0
    alarms: set[PumpAlarm] = field(default_factory=set)
    occluded_since_s: float | None = None
    occlusion_stored_ml: float = 0.0
    mains_on: bool = True
    battery_min_left: float = 0.0
    rate_saved: bool = True
    air_present: bool = False
    cause: str = "not started"  # why the mechanism is not delivering, for gap reports
    segments: list[Segment] = field(default_factory=list)
    keep_segments: bool = True
    _run_start_s: float = 0.0
    _bag: _Reservoir | None = None
    _chamber_ml: float = 0.0
    _chamber_mg: float = 0.0
    _chamber_label: str = ""
    primed_ml: float = 0.0
    #: Sample times asked for (sorted) and the delivered volume found at each, for the IEC
    #: trace: read off each integration step in closed form, so sampling neither needs a
    #: clock callback nor splits a step (the physics is the same with or without a trace).
    probe_times: list[float] = field(default_factory=list)
    probe_values: list[tuple[float, float]] = field(default_factory=list)
    _probe_i: int = 0
    #: ``next_event_s()`` of the current state, or None once anything changed: a command
    #: advances (one solve), changes the state (forgotten), and the driver reschedules
    #: (one solve, reused by the next command at the same instant and the read-back).
    _next_s: float | None = None
    _f_at: tuple[float, float] = (math.nan, 0.0)  # (u, F(u)) last computed

    def __post_init__(self) -> None:
        self.battery_min_left = float(self.model.battery_capacity_min)
        self._chamber_ml = 0.0  # filled from the first bag when it is spiked
        self._chamber_mg = 0.0

    # -- flow law -----------------------------------------------------------
    def _antiderivative(self, u_s: float) -> float:
        """F(u) with dV/du = k*(1-exp(-u/tau))*(1+a*sin(w*u)); see module doc.

        The last value is kept: a step starts where the previous one ended.
        """
        if u_s == self._f_at[0]:
            return self._f_at[1]
        f = self._solve_antiderivative(u_s)
        self._f_at = (u_s, f)
        return f

    def _solve_antiderivative(self, u_s: float) -> float:
        m = self.model
        a = m.ripple_pct / 100.0
        tau = m.startup_tau_s
        f = u_s
        w = 2.0 * math.pi / m.ripple_period_s if m.ripple_period_s > 0 and a > 0 else 0.0
        if w:
            f -= a / w * math.cos(w * u_s)
        if tau > 0:
            e = math.exp(-u_s / tau) if u_s < 700 * tau else 0.0
            f += tau * e
            if w and e:
                k = 1.0 / (tau * tau) + w * w
                g = e * (-(1.0 / tau) * math.sin(w * u_s) - w * math.cos(w * u_s)) / k
                f -= a * g
        return f

    def _flow_ml_per_s(self, t_s: float) -> float:
        """Instantaneous physical flow at ``t_s`` in the current mode."""
        if self.occluded_since_s is not None or self._source_ml() <= _EPS_ML:
            return 0.0
        m = self.model
        if self.mode is RunState.KVO:
            return m.kvo_ml_per_h * (1 + m.bias_pct / 100.0) / 3600.0
        if self.mode is not RunState.RUNNING:
            return 0.0
        u = t_s - self._run_start_s
        start = 1.0 - math.exp(-u / m.startup_tau_s) if m.startup_tau_s > 0 else 1.0
        ripple = 0.0
        if m.ripple_period_s > 0:
            ripple = m.ripple_pct / 100.0 * math.sin(2 * math.pi * u / m.ripple_period_s)
        return self.rate_ml_per_h * (1 + m.bias_pct / 100.0) / 3600.0 * start * (1 + ripple)

    def _volume_ml(self, t0_s: float, t1_s: float) -> float:
        """Physical volume pushed by the mechanism over [t0, t1] (ignoring supply)."""
        if t1_s <= t0_s or self.occluded_since_s is not None:
            return 0.0
        m = self.model
        if self.mode is RunState.KVO:
            return m.kvo_ml_per_h * (1 + m.bias_pct / 100.0) * (t1_s - t0_s) / 3600.0
        if self.mode is not RunState.RUNNING:
            return 0.0
        k = self.rate_ml_per_h * (1 + m.bias_pct / 100.0) / 3600.0
        u0, u1 = t0_s - self._run_start_s, t1_s - self._run_start_s
        return k * (self._antiderivative(u1) - self._antiderivative(u0))

    def _nominal_rate(self) -> float:
        if self.mode is RunState.RUNNING:
            return self.rate_ml_per_h
        if self.mode is RunState.KVO:
            return self.model.kvo_ml_per_h
        return 0.0

    def _source_ml(self) -> float:
        bag = self._bag.content_ml if self._bag else 0.0
        return bag + self._chamber_ml

    # -- when things happen by themselves ----------------------------------
    def _time_to_deliver(self, volume_ml: float) -> float:
        """Earliest time after ``t_s`` at which ``volume_ml`` more has flowed (inf if never)."""
        if volume_ml <= 0:
            return self.t_s
        if self.occluded_since_s is not None:
            return math.inf
        if self.mode is RunState.KVO:
            q = self.model.kvo_ml_per_h * (1 + self.model.bias_pct / 100.0) / 3600.0
            return self.t_s + volume_ml / q if q > 0 else math.inf
        if self.mode is not RunState.RUNNING or self.rate_ml_per_h <= 0:
            return math.inf
        q_mean = self.rate_ml_per_h * (1 + self.model.bias_pct / 100.0) / 3600.0
        t = self.t_s + volume_ml / q_mean + self.model.startup_tau_s
        for _ in range(50):  # Newton on a monotone function; a few steps suffice
            f = self._volume_ml(self.t_s, t) - volume_ml
            if abs(f) < 1e-10:
                break
            q = self._flow_ml_per_s(t) or q_mean
            t = max(self.t_s, t - f / q)
        return t

    def _vtbi_done_s(self) -> float:
        if self.mode is not RunState.RUNNING or self.vtbi_ml is None or self.rate_ml_per_h <= 0:
            return math.inf
        left = self.vtbi_ml - self.counted_ml
        return self.t_s + max(left, 0.0) / self.rate_ml_per_h * 3600.0

    def _dry_s(self) -> float:
        if self.mode not in (RunState.RUNNING, RunState.KVO):
            return math.inf
        return self._time_to_deliver(self._source_ml())

    def _dry_not_before_s(self) -> float:
        """A cheap lower bound of ``_dry_s`` (the Newton solve is needed only if it can win).

        While running, the flow is at most ``q * (1 + a*sin(w*u))`` (the start-up factor is
        at most 1), whose integral over any span exceeds ``q * span`` by at most ``2a/w``.
        """
        if self.mode is not RunState.RUNNING or self.occluded_since_s is not None:
            return self.t_s  # closed form or never: no bound needed
        m = self.model
        q = self.rate_ml_per_h * (1 + m.bias_pct / 100.0) / 3600.0
        a = m.ripple_pct / 100.0
        src = self._source_ml()
        if q <= 0 or src <= 0 or a > 1.0:
            return self.t_s
        slack_s = 2.0 * a * m.ripple_period_s / (2.0 * math.pi) if m.ripple_period_s > 0 else 0.0
        span_s = src / q
        return self.t_s + span_s - slack_s - 1.0 - 1e-6 * span_s

    def _occlusion_alarm_s(self) -> float:
        if self.occluded_since_s is None or self.mode not in (RunState.RUNNING, RunState.KVO):
            return math.inf
        return self.occluded_since_s + self.model.occlusion_time_to_alarm_s

    def _battery_s(self) -> tuple[float, PumpAlarm | None]:
        if self.mains_on or self.mode not in (RunState.RUNNING, RunState.KVO):
            return math.inf, None
        low = self.model.battery_low_min
        if PumpAlarm.BATTERY_LOW not in self.alarms and low > 0:
            return self.t_s + max(self.battery_min_left - low, 0.0) * 60.0, PumpAlarm.BATTERY_LOW
        return self.t_s + self.battery_min_left * 60.0, PumpAlarm.BATTERY_DEPLETED

    def next_event_s(self) -> float:
        """When the pump will next change by itself (``inf`` if never)."""
        t = self._next_s
        if t is None:
            t = self._next_s = self._solve_next_event_s()
        return t

    def changed(self) -> None:
        """Forget the next event: call after changing a field from outside (emulators)."""
        self._next_s = None

    def _solve_next_event_s(self) -> float:
        mode = self.mode
        if (
            mode is RunState.RUNNING
            and self.occluded_since_s is None
            and self.mains_on
            and self.vtbi_ml is not None
            and self.rate_ml_per_h > 0
        ):
            # The common case inlined: only VTBI complete or a dry reservoir can come next.
            rate = self.rate_ml_per_h
            other = self.t_s + max(self.vtbi_ml - self.counted_ml, 0.0) / rate * 3600.0
        else:
            other = min(self._vtbi_done_s(), self._occlusion_alarm_s(), self._battery_s()[0])
        if other < self._dry_not_before_s():
            return other  # the reservoir cannot run dry first: skip the Newton solve
        return min(other, self._dry_s())

    # -- time --------------------------------------------------------------
    def add_probes(self, times_s: list[float]) -> None:
        """Ask for the delivered volume (``actual_ml_total``) at each of these times."""
        pending = self.probe_times[self._probe_i :]
        self.probe_times = sorted([*pending, *times_s])
        self._probe_i = 0

    def flush_probes(self) -> None:
        """Read every probe due by ``t_s`` (call after the last ``advance``)."""
        times, t = self.probe_times, self.t_s
        while self._probe_i < len(times) and times[self._probe_i] <= t:
            self.probe_values.append((times[self._probe_i], self.actual_ml_total))
            self._probe_i += 1

    def _read_probes(self, t0: float, t1_s: float) -> None:
        """Probes in (t0, t1]: the volume so far plus this step's closed form up to each."""
        self.flush_probes()
        times = self.probe_times
        source = self._source_ml()
        while self._probe_i < len(times) and times[self._probe_i] <= t1_s:
            p = times[self._probe_i]
            part = min(self._volume_ml(t0, p), source)
            self.probe_values.append((p, self.actual_ml_total + part))
            self._probe_i += 1

    def _integrate(self, t1_s: float) -> None:
        """Move the state from ``t_s`` to ``t1_s`` with nothing happening in between."""
        t0 = self.t_s
        if t1_s <= t0:
            return
        if self._probe_i < len(self.probe_times) and self.probe_times[self._probe_i] <= t1_s:
            self._read_probes(t0, t1_s)
        mode = self.mode
        nominal = self._nominal_rate()
        if mode in (RunState.RUNNING, RunState.KVO):
            self.counted_ml += nominal * (t1_s - t0) / 3600.0
            if self.occluded_since_s is not None:
                self.occlusion_stored_ml += nominal * (t1_s - t0) / 3600.0
        vol = min(self._volume_ml(t0, t1_s), self._source_ml())
        mg = 0.0
        if vol > 0:
            from_bag = min(vol, self._bag.content_ml) if self._bag else 0.0
            if self._bag and from_bag > 0:
                self._bag.content_ml -= from_bag
                mg += from_bag * self._bag.conc_mg_per_ml
            rest = vol - from_bag
            if rest > 0 and self._chamber_ml > 0:
                conc = self._chamber_mg / self._chamber_ml
                self._chamber_ml -= rest
                self._chamber_mg -= rest * conc
                mg += rest * conc
            self.actual_ml_total += vol
            self.drug_mg_total += mg
        if not self.mains_on and mode in (RunState.RUNNING, RunState.KVO):
            self.battery_min_left = max(self.battery_min_left - (t1_s - t0) / 60.0, 0.0)
        if self.keep_segments:
            label = self._bag.label if self._bag else self._chamber_label
            segs = self.segments
            occl = self.occluded_since_s is not None
            last = segs[-1] if segs else None
            if (
                last is not None
                and last.end_s == t0
                and last.mode is mode
                and last.rate_ml_per_h == nominal
                and last.occluded == occl
                and last.cause == self.cause
                and last.bag == label
            ):
                last.end_s = t1_s
                last.actual_ml += vol
                last.drug_mg += mg
            else:
                segs.append(Segment(t0, t1_s, mode, nominal, vol, mg, occl, self.cause, label))
        self.t_s = t1_s
        self._next_s = None

    def advance(self, t1_s: float) -> list[PumpAlarm]:
        """Run the physics to ``t1_s``, handling every internal event; return new alarms."""
        raised: list[PumpAlarm] = []
        while True:
            t_evt = self.next_event_s()
            if t_evt > t1_s:
                self._integrate(t1_s)
                return raised
            self._integrate(t_evt)
            raised.extend(self._fire_due())

    def _fire_due(self) -> list[PumpAlarm]:
        """Apply whatever internal event is due at ``t_s``."""
        self._next_s = None
        t = self.t_s
        raised: list[PumpAlarm] = []
        tol = 1e-6
        if self._occlusion_alarm_s() <= t + tol:
            self._alarm_stop(PumpAlarm.OCCLUSION, raised)
        elif self._dry_not_before_s() <= t + tol and self._dry_s() <= t + tol:
            # Reservoir and drip chamber are both empty: air reaches the detector.
            alarm = PumpAlarm.AIR_IN_LINE if self.model.air_detect_ul > 0 else PumpAlarm.STALL
            self._alarm_stop(alarm, raised)
        elif self._vtbi_done_s() <= t + tol:
            self.counted_ml = self.vtbi_ml or self.counted_ml
            self.alarms.add(PumpAlarm.VTBI_COMPLETE)
            raised.append(PumpAlarm.VTBI_COMPLETE)
            self.cause = "bag_empty"
            if self.model.vtbi_action == "kvo" and self.model.kvo_ml_per_h > 0:
                self.mode = RunState.KVO
            else:
                self.mode = RunState.STOPPED
        else:
            t_bat, which = self._battery_s()
            if which is not None and t_bat <= t + tol:
                if which is PumpAlarm.BATTERY_LOW:
                    self.alarms.add(which)
                    raised.append(which)
                else:
                    self._alarm_stop(PumpAlarm.BATTERY_DEPLETED, raised)
            else:  # rounding left the event a hair ahead: integrate up to it, never spin
                self._integrate(t + tol)
        return raised

    def _alarm_stop(self, alarm: PumpAlarm, raised: list[PumpAlarm]) -> None:
        self.cause = alarm.value
        self.alarms.add(alarm)
        raised.append(alarm)
        self.mode = RunState.ALARM

    # -- commands (each takes the time it happens) ---------------------------
    def set_rate(self, t_s: float, rate_ml_per_h: float) -> None:
        """New programmed rate; applies at once if running."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.rate_ml_per_h = rate_ml_per_h
        self.rate_saved = self.mode is not RunState.RUNNING

    def set_vtbi(self, t_s: float, vtbi_ml: float) -> None:
        """New VTBI counted from the last clear; leaving KVO if more is now due."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.vtbi_ml = vtbi_ml
        if self.mode is RunState.KVO and vtbi_ml > self.counted_ml + _EPS_ML:
            self.mode = RunState.RUNNING
            self.alarms.discard(PumpAlarm.VTBI_COMPLETE)

    def clear_volume(self, t_s: float) -> None:
        """Zero the pump's volume counter."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.counted_ml = 0.0

    def start(self, t_s: float) -> None:
        """Start the mechanism; refused while a flow-stopping cause is still there."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        if self.mode is RunState.RUNNING:
            return
        if self.rate_ml_per_h <= 0:
            raise PumpCommandError("no rate programmed")
        if self.occluded_since_s is not None:
            raise PumpCommandError("cannot start: the line is still occluded")
        if self.air_present:
            raise PumpCommandError("cannot start: air in the line")
        if not self.mains_on and self.model.battery_capacity_min <= 0:
            raise PumpCommandError("cannot start: no power")
        if self._source_ml() <= _EPS_ML:
            raise ReservoirEmptyError("cannot start: no fluid in the reservoir")
        if not self.mains_on and self.battery_min_left <= 0:
            raise PumpCommandError("cannot start: battery depleted and no mains power")
        if self.vtbi_ml is not None and self.counted_ml >= self.vtbi_ml - _EPS_ML:
            raise PumpCommandError("cannot start: VTBI already infused; program a new VTBI")
        self.alarms -= FLOW_STOPPING_ALARMS | {PumpAlarm.VTBI_COMPLETE}
        was_flowing = self.mode is RunState.KVO
        self.mode = RunState.RUNNING
        self.cause = ""
        if not was_flowing:
            self._run_start_s = t_s

    def stop(self, t_s: float) -> None:
        """Stop the mechanism (alarms stay until the cause is cleared and it restarts)."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        if self.mode is not RunState.ALARM:
            self.mode = RunState.STOPPED
            self.cause = "stopped"

    def connect_bag(self, t_s: float, content_ml: float, conc_mg_per_ml: float, label: str) -> None:
        """Spike a new reservoir; the drip chamber refills from it."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        bag = _Reservoir(content_ml, conc_mg_per_ml, label)
        deficit = self.model.buffer_ml - self._chamber_ml
        if deficit > 0:
            take = min(deficit, bag.content_ml)
            bag.content_ml -= take
            self._chamber_ml += take
            self._chamber_mg += take * conc_mg_per_ml
        self._bag = bag

    def prime_line(self, t_s: float, prime_ml: float) -> float:
        """Prime the administration set from the reservoir: that volume fills the line."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        take = min(prime_ml, self._bag.content_ml) if self._bag else 0.0
        if self._bag is not None:
            self._bag.content_ml -= take
        self.primed_ml += take
        return take

    def disconnect_bag(self, t_s: float) -> float:
        """Take the reservoir off; returns the volume left in it (discarded)."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        left = self._bag.content_ml if self._bag else 0.0
        if self._bag is not None:
            self._chamber_label = self._bag.label
        self._bag = None
        return left

    @property
    def powered_off(self) -> bool:
        """No mains and no battery to run on: the pump is dark."""
        return not self.mains_on and (
            self.model.battery_capacity_min <= 0 or self.battery_min_left <= 0
        )

    def bag_content_ml(self) -> float:
        """What is left in the connected reservoir (0 if none)."""
        return self._bag.content_ml if self._bag else 0.0

    def occlude(self, t_s: float) -> None:
        """Downstream occlusion: no flow reaches the patient from now on."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        if self.occluded_since_s is None:
            self.occluded_since_s = t_s
            self.occlusion_stored_ml = 0.0

    def release_occlusion(self, t_s: float) -> float:
        """The line is free again; the stored compliance volume goes in as a bolus."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        if self.occluded_since_s is None:
            return 0.0
        self.occluded_since_s = None
        bolus = min(self.occlusion_stored_ml, self.model.bolus_after_release_ml, self._source_ml())
        self.occlusion_stored_ml = 0.0
        if bolus > 0:
            conc = self._bag.conc_mg_per_ml if self._bag else 0.0
            if self._bag:
                self._bag.content_ml -= bolus
            self.actual_ml_total += bolus
            self.drug_mg_total += bolus * conc
        return bolus

    def inject_air(self, t_s: float) -> list[PumpAlarm]:
        """An air bubble reaches the detector: the pump stops with an alarm."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.air_present = True
        if self.mode in (RunState.RUNNING, RunState.KVO):
            raised: list[PumpAlarm] = []
            alarm = PumpAlarm.AIR_IN_LINE if self.model.air_detect_ul > 0 else PumpAlarm.STALL
            self._alarm_stop(alarm, raised)
            return raised
        return []

    def clear_air(self, t_s: float) -> None:
        """The air has been removed from the line; the pump may be restarted."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.air_present = False

    def power_off(self, t_s: float) -> list[PumpAlarm]:
        """Mains lost: run on battery, or stop if the pump has none."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.mains_on = False
        if self.model.battery_capacity_min <= 0 or self.battery_min_left <= 0:
            was_running = self.mode in (RunState.RUNNING, RunState.KVO)
            self.mode = RunState.STOPPED
            self.cause = "power_loss"
            self.rate_saved = self.rate_saved and not was_running
            return []
        self.alarms.add(PumpAlarm.POWER_LOSS)
        return [PumpAlarm.POWER_LOSS]

    def power_on(self, t_s: float) -> list[PumpAlarm]:
        """Mains back; a pump without battery comes back reset (NE-1000 ``A?R``)."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        self.mains_on = True
        self.alarms -= {PumpAlarm.POWER_LOSS, PumpAlarm.BATTERY_LOW}
        if self.model.battery_capacity_min <= 0:
            self.alarms.add(PumpAlarm.RESET)
            if not self.rate_saved:
                self.rate_ml_per_h = 0.0
            self.mode = RunState.ALARM
            self.cause = "power_loss"
            return [PumpAlarm.RESET]
        self.battery_min_left = float(self.model.battery_capacity_min)
        return []

    def acknowledge(self, t_s: float, alarm: PumpAlarm) -> None:
        """Clear a non-flow-stopping notice (VTBI complete, battery low, reset)."""
        self.advance(t_s)
        self._next_s = None  # the state changes now
        if alarm not in FLOW_STOPPING_ALARMS or alarm is PumpAlarm.RESET:
            self.alarms.discard(alarm)
            if alarm is PumpAlarm.RESET and self.mode is RunState.ALARM:
                self.mode = RunState.STOPPED

    def status(self, t_s: float) -> PumpStatus:
        """The pump's read-back at ``t_s``."""
        self.advance(t_s)
        return PumpStatus(
            run_state=self.mode,
            rate_ml_per_h=self.rate_ml_per_h,
            vtbi_ml=self.vtbi_ml,
            volume_infused_ml=self.counted_ml,
            alarms=frozenset(self.alarms),
            on_battery=not self.mains_on and self.model.battery_capacity_min > 0,
            battery_min_left=self.battery_min_left if self.model.battery_capacity_min else None,
        )
