"""Bag-change watchdog: lead times planned from the staff, stages scheduled on the clock.

The projected end of the current bag comes from what the pump says is left and the rate
it really runs at; it is re-projected after every rate change, bag change and resume.
Each stage fires once per bag; a stage whose time has already passed fires at once.

Leads plan from the staff: the pharmacy request goes out at the larger of the setting's
lead and the observed turnaround (request -> bag at the bedside) at a high percentile
plus a margin; the nurse prompt likewise from the observed nurse response (prompt ->
acknowledged at the bedside). Observations come from this controller's own events and
are seeded by the setting until enough have been seen.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from pumpctl.clock import Clock, TimerHandle
from pumpctl.setting import DrugSetting


class Stage:
    """Stage names, in the order they fire before a bag's end."""

    PHARMACY_REQUEST = "pharmacy_request"
    NOT_AT_BEDSIDE = "next_bag_not_at_bedside"
    PREPARE = "prepare_bag_change"
    ESCALATE = "no_bag_ready"
    ALL = (PHARMACY_REQUEST, NOT_AT_BEDSIDE, PREPARE, ESCALATE)


@dataclass(frozen=True, slots=True)
class Lead:
    """A lead time and why it is what it is."""

    s: float
    why: str


def lognormal_percentile(values: list[float], q: float) -> float:
    """The ``q`` percentile of a lognormal fitted to ``values`` (staff times have long tails).

    A ward sees a few requests a day; an empirical p99.9 of ten observations is just their
    maximum, so the tail is extrapolated from the fitted distribution instead.
    """
    logs = [math.log(max(v, 1.0)) for v in values]
    mu = statistics.fmean(logs)
    sd = statistics.stdev(logs) if len(logs) > 1 else 0.0
    return math.exp(mu + statistics.NormalDist().inv_cdf(min(q, 99.99) / 100.0) * sd)


class _LogFit:
    """``lognormal_percentile`` kept up to date one observation at a time.

    The sample standard deviation is exact (as ``statistics.stdev`` computes it: exact
    rational sums, then a correctly rounded square root), from running exact sums instead
    of a pass over every observation each time, so long runs stay linear.
    """

    def __init__(self) -> None:
        self.logs: list[float] = []
        self.max_value = -math.inf  # the largest observation (seconds)
        # Exact sums of x and x*x as integers over 2**shift and 2**(2*shift): every log
        # is a float, so a multiple of a power of two; nothing is rounded until the end.
        self._shift = 0
        self._sx = 0
        self._sxx = 0

    def add(self, value: float) -> None:
        self.max_value = max(self.max_value, value)
        x = math.log(max(value, 1.0))
        self.logs.append(x)
        num, den = x.as_integer_ratio()
        k = den.bit_length() - 1  # den == 2**k
        if k > self._shift:
            up = k - self._shift
            self._sx <<= up
            self._sxx <<= 2 * up
            self._shift = k
        m = num << (self._shift - k)  # x * 2**shift, exactly
        self._sx += m
        self._sxx += m * m

    def percentile(self, q: float) -> float:
        logs = self.logs
        n = len(logs)
        # fsum(logs) / n, as statistics.fmean: the exact sum correctly rounded (int / int
        # is), then divided by n.
        mu = (self._sx / (1 << self._shift)) / n
        sqrt_of_frac = getattr(statistics, "_float_sqrt_of_frac", None)
        if n < 2:
            sd = 0.0
        elif sqrt_of_frac is None:  # another Python: the plain (slower) path
            sd = statistics.stdev(logs)
        else:
            # statistics.stdev: the exact variance n*Sxx - Sx^2 over n(n-1), reduced as a
            # Fraction would be, then a correctly rounded square root.
            num = n * self._sxx - self._sx * self._sx
            den = (n * (n - 1)) << (2 * self._shift)
            g = math.gcd(num, den)
            sd = sqrt_of_frac(num // g, den // g)
        return math.exp(mu + _z(q) * sd)


_Z: dict[float, float] = {}


def _z(q: float) -> float:
    """The standard normal quantile of percentile ``q`` (capped at 99.99), kept per ``q``."""
    z = _Z.get(q)
    if z is None:
        z = _Z[q] = statistics.NormalDist().inv_cdf(min(q, 99.99) / 100.0)
    return z


class LeadPlanner:
    """Leads from the setting and from observed staff times."""

    def __init__(self, setting: DrugSetting) -> None:
        w = setting.watchdog_min
        plan = setting.plan
        self.q = plan["percentile"]
        self.margin_s = plan["margin_min"] * 60.0
        # No lead may be so long that a bag requested then ends past its beyond-use time.
        self.cap_s = max(
            (setting.beyond_use_h - float(setting.max_bag_duration_h())) * 3600.0,
            w["pharmacy_request_min"] * 60.0,
        )
        self.min_obs = int(plan["min_observations"])
        self.floor_s = {
            Stage.PHARMACY_REQUEST: w["pharmacy_request_min"] * 60.0,
            Stage.NOT_AT_BEDSIDE: w["not_at_bedside_min"] * 60.0,
            Stage.PREPARE: w["prepare_change_min"] * 60.0,
            Stage.ESCALATE: w["escalate_min"] * 60.0,
        }
        self.seed_s = {
            Stage.PHARMACY_REQUEST: plan["pharmacy_seed_min"] * 60.0,
            Stage.PREPARE: plan["nurse_seed_min"] * 60.0,
        }
        self.observed: dict[str, list[float]] = {Stage.PHARMACY_REQUEST: [], Stage.PREPARE: []}
        self._leads: dict[tuple[str, int], Lead] = {}
        self._fits = {stage: _LogFit() for stage in self.observed}

    def observe(self, stage: str, seconds: float) -> None:
        """One observed turnaround (pharmacy) or response (nurse)."""
        if seconds >= 0 and stage in self.observed:
            self.observed[stage].append(seconds)
            self._fits[stage].add(seconds)

    def lead(self, stage: str) -> Lead:
        """The lead for ``stage`` now, with the reason.

        Observations are only ever appended, so the lead is kept per stage and number of
        observations (the watchdog asks for every stage of every bag).
        """
        key = (stage, len(self.observed.get(stage, ())))
        hit = self._leads.get(key)
        if hit is None:
            hit = self._leads[key] = self._lead(stage)
        return hit

    def _lead(self, stage: str) -> Lead:
        floor = self.floor_s[stage]
        if stage not in self.observed:
            return Lead(floor, f"setting {floor / 60:g} min")
        obs = self.observed[stage]
        seed = self.seed_s[stage]
        if len(obs) < self.min_obs:
            base = max([seed, *obs])
            how = f"seed {seed / 60:g} min ({len(obs)} observed" + (
                f", max {max(obs) / 60:.1f} min)" if obs else ")"
            )
        else:
            fit = self._fits[stage]
            exact = len(fit.logs) == len(obs)  # else someone appended past ``observe``
            fitted = fit.percentile(self.q) if exact else lognormal_percentile(obs, self.q)
            most = fit.max_value if exact else max(obs)
            base = max(fitted, most)
            how = (
                f"p{self.q:g} of a lognormal fitted to {len(obs)} observed = {fitted / 60:.1f} min"
                f" (max seen {most / 60:.1f})"
            )
        planned = base + self.margin_s
        if planned <= floor:
            return Lead(floor, f"setting {floor / 60:g} min (>= {how} + {self.margin_s / 60:g})")
        if stage == Stage.PHARMACY_REQUEST and planned > self.cap_s:
            return Lead(
                self.cap_s,
                f"{how} + margin {self.margin_s / 60:g} min, capped at {self.cap_s / 60:.0f} min "
                "by the beyond-use time",
            )
        return Lead(planned, f"{how} + margin {self.margin_s / 60:g} min")


class Watchdog:
    """Schedules the stages of one bag's change on the clock."""

    def __init__(
        self,
        clock: Clock,
        planner: LeadPlanner,
        on_stage: Callable[[str, int, float, Lead], None],
    ) -> None:
        self.clock = clock
        self.planner = planner
        self.on_stage = on_stage
        self._timers: list[TimerHandle] = []
        self.projected_end_s: float | None = None

    def schedule(self, bag_n: int, end_s: float, fired: list[str]) -> None:
        """(Re)schedule every stage of bag ``bag_n`` not yet fired, for an end at ``end_s``."""
        self.cancel()
        self.projected_end_s = end_s
        timers, call_at = self._timers, self.clock.call_at
        lead_for, on_stage = self.planner.lead, self.on_stage
        for stage in Stage.ALL:
            if stage in fired:
                continue
            lead = lead_for(stage)
            timers.append(call_at(end_s - lead.s, partial(on_stage, stage, bag_n, end_s, lead)))

    def cancel(self) -> None:
        """Drop the projection (pump not flowing, or infusion stopped)."""
        for t in self._timers:
            t.cancel()
        self._timers = []
        self.projected_end_s = None

    def seconds_to_end(self) -> float | None:
        """Seconds until the projected bag end (None when not projected)."""
        if self.projected_end_s is None:
            return None
        return max(self.projected_end_s - self.clock.now(), 0.0)
