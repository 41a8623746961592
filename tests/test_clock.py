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


def test_systemclock_pause_freezes_now_and_resume_continues_from_there():
    import time

    c = SystemClock(speed=1000.0)
    c.pause()
    assert c.paused
    frozen = c.now()
    time.sleep(0.05)  # 50 simulated seconds would pass if the clock ran
    assert c.now() == frozen
    c.pause()  # a second pause changes nothing
    assert c.now() == frozen
    t0 = time.monotonic()
    c.resume()
    time.sleep(0.02)
    ran_s = c.now() - frozen
    real_s = time.monotonic() - t0
    assert 0 < ran_s <= real_s * 1000.0 + 1e-6  # only the time since resume counts
    assert not c.paused


def test_systemclock_timers_do_not_fire_while_paused():
    import threading
    import time

    c = SystemClock(speed=1000.0)
    hits: list[float] = []
    c.pause()
    c.call_later(1.0, lambda: hits.append(c.now()))  # 1 ms of wall time at this speed
    worker = threading.Thread(target=c.run, daemon=True)
    worker.start()
    time.sleep(0.1)
    assert hits == []
    c.resume()
    worker.join(timeout=5)
    assert not worker.is_alive() and len(hits) == 1 and hits[0] >= 1.0


def test_systemclock_now_never_goes_back_while_other_threads_pause_and_resume():
    import threading

    c = SystemClock(speed=100.0)
    seen: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(c.now())

    def toggle() -> None:
        for _ in range(2000):
            c.pause()
            c.resume()

    reader = threading.Thread(target=read)
    togglers = [threading.Thread(target=toggle) for _ in range(3)]
    reader.start()
    for t in togglers:
        t.start()
    for t in togglers:
        t.join()
    done.set()
    reader.join()
    assert len(seen) > 100
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    assert not c.paused
