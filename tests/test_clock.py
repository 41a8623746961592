"""Clocks: deterministic event heap, cancellation, real-time pending runs."""

from __future__ import annotations

from pumpctl.clock import SimClock, SystemClock


def test_simclock_runs_in_time_then_sequence_order():
    c = SimClock()
    seen: list[tuple[float, str]] = []
    c.call_at(5, lambda: seen.append((c.now(), "b")))
    c.call_at(1, lambda: seen.append((c.now(), "a")))
    c.call_at(5, lambda: seen.append((c.now(), "c")))  # same time: scheduled later, runs later
    c.run()
    assert seen == [(1, "a"), (5, "b"), (5, "c")]


def test_cancel_and_run_until():
    c = SimClock()
    hits: list[float] = []
    h = c.call_later(10, lambda: hits.append(c.now()))
    c.call_later(20, lambda: hits.append(c.now()))
    h.cancel()
    c.run(15)
    assert hits == [] and c.now() == 15
    c.run(25)
    assert hits == [20]


def test_callbacks_can_schedule_more_and_never_run_early():
    c = SimClock()
    hits: list[float] = []

    def tick() -> None:
        hits.append(c.now())
        if len(hits) < 4:
            c.call_later(2.5, tick)

    c.call_at(1, tick)
    c.call_at(-5, lambda: hits.append(c.now()))  # in the past: runs now, not before now
    c.run()
    assert hits == [0, 1, 3.5, 6.0]


def test_systemclock_speed_and_run_pending():
    c = SystemClock(speed=1e6)
    hits: list[int] = []
    c.call_later(10.0, lambda: hits.append(1))  # 10 simulated s = 10 us of wall time
    c.call_later(1e12, lambda: hits.append(2))
    deadline = c.now() + 1e5
    while c.now() < deadline:
        c.run_pending()
    assert hits == [1]
