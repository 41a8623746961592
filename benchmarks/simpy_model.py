"""A bare simpy model of the 72-hour default scenario: the yardstick for ``bench_sim.py``.

It has what a textbook discrete-event model of the ward would have and nothing of
pumpctl: a pump draining bags at the programmed rate, a pharmacy that compounds and
delivers each bag after a request at T-60 min, and a nurse who answers the T-15 min
"prepare bag change" call after a response time and swaps the bag. Same fixed times as
``examples/anakinra_72h.toml`` (12.5 mL/h, 100 mL VTBI, compound 10 min, deliver 15 min,
nurse 2 min, swap 60 s, prime 2 min). Timings of pumpctl are reported as a ratio to
this model run in the same process, so figures from a noisy machine stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy


@dataclass(frozen=True)
class WardTimes:
    """The scenario's fixed figures (minutes unless named otherwise)."""

    duration_h: float = 72.0
    rate_ml_per_h: float = 12.5
    vtbi_ml: float = 100.0
    request_lead_min: float = 60.0
    prepare_lead_min: float = 15.0
    compound_min: float = 10.0
    deliver_min: float = 15.0
    response_min: float = 2.0
    swap_s: float = 60.0
    prime_min: float = 2.0


def run_simpy(times: WardTimes = WardTimes()) -> dict[str, float]:
    """Simulate the ward; returns bags hung and the seconds the pump ran dry.

    Lean on purpose (plain events, no stores): the yardstick is what simpy itself costs.
    """
    env = simpy.Environment()
    out = {"bags": 0, "dry_s": 0.0}

    def pharmacy(ready: simpy.Event):
        yield env.timeout(times.compound_min * 60.0)
        yield env.timeout(times.deliver_min * 60.0)
        ready.succeed()

    def nurse(ready: simpy.Event, hung: simpy.Event):
        yield env.timeout(times.response_min * 60.0)
        yield ready
        yield env.timeout(times.swap_s)
        hung.succeed()

    def pump():
        ready, hung = env.event(), env.event()
        env.process(pharmacy(ready))  # first bag: STAT request, then prime and start
        env.process(nurse(ready, hung))
        yield hung
        yield env.timeout(times.prime_min * 60.0)
        bag_s = times.vtbi_ml / times.rate_ml_per_h * 3600.0
        while True:
            out["bags"] += 1
            end_s = env.now + bag_s
            yield env.timeout(bag_s - times.request_lead_min * 60.0)
            ready, hung = env.event(), env.event()
            env.process(pharmacy(ready))
            yield env.timeout((times.request_lead_min - times.prepare_lead_min) * 60.0)
            env.process(nurse(ready, hung))
            yield hung | env.timeout(max(end_s - env.now, 0.0))
            if not hung.triggered:
                t_dry = env.now
                yield hung
                out["dry_s"] += env.now - t_dry

    env.process(pump())
    env.run(until=times.duration_h * 3600.0)
    return out


if __name__ == "__main__":
    print(run_simpy())
