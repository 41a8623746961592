"""Clocks: SimClock jumps from deadline to deadline; SystemClock runs in real time.

Nothing else in pumpctl reads wall time or sleeps; the same controller runs on both.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

_heappush = heapq.heappush


@dataclass(order=True, slots=True)
class TimerHandle:
    """A scheduled callback; ``cancel()`` makes it a no-op."""

    when_s: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Do not run this callback."""
        self.cancelled = True


class Clock(Protocol):
    """Time source and scheduler shared by controller, watchdog, drivers and sim."""

    def now(self) -> float:
        """Seconds since the clock's epoch."""
        ...

    def call_at(self, when_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` at ``when_s`` (never earlier)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` ``delay_s`` seconds from now."""
        ...

    def run(self, until_s: float | None = None) -> None:
        """Run callbacks until ``until_s`` (or until none are left)."""
        ...

    def wall_epoch(self) -> float:
        """Unix time that corresponds to ``now() == 0`` (for timestamps in logs)."""
        ...


class _HeapClock:
    """Shared heap of (time, sequence, handle); the sequence makes ties deterministic.

    Plain tuples keep the heap's comparisons in C (the sequence is unique, so a handle
    itself is never compared).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = 0

    def _push(self, when_s: float, callback: Callable[[], None]) -> TimerHandle:
        self._seq = seq = self._seq + 1
        handle = TimerHandle(when_s, seq, callback)
        heapq.heappush(self._heap, (when_s, seq, handle))
        return handle

    def pending(self) -> int:
        """Number of live timers."""
        return sum(1 for _t, _s, h in self._heap if not h.cancelled)


class SimClock(_HeapClock):
    """Event-driven virtual time: ``run`` jumps straight to the next deadline."""

    def __init__(self, start_s: float = 0.0, wall_epoch_s: float = 0.0) -> None:
        super().__init__()
        self._now_s = start_s
        self._wall_epoch_s = wall_epoch_s

    def now(self) -> float:
        return self._now_s

    def wall_epoch(self) -> float:
        return self._wall_epoch_s

    def call_at(self, when_s: float, callback: Callable[[], None]) -> TimerHandle:
        # ``_push`` inlined: a simulation schedules a timer for nearly every event
        if when_s < self._now_s:
            when_s = self._now_s
        self._seq = seq = self._seq + 1
        handle = TimerHandle(when_s, seq, callback)
        _heappush(self._heap, (when_s, seq, handle))
        return handle

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        return self._push(self._now_s + max(delay_s, 0.0), callback)

    def run(self, until_s: float | None = None) -> None:
        heap = self._heap
        pop = heapq.heappop
        limit = float("inf") if until_s is None else until_s
        while heap:
            if heap[0][0] > limit:
                break
            when_s, _seq, handle = pop(heap)
            if handle.cancelled:
                continue
            self._now_s = when_s
            handle.callback()
        if until_s is not None and until_s > self._now_s:
            self._now_s = until_s

    def advance(self, delta_s: float) -> None:
        """Run everything due in the next ``delta_s`` seconds (handy in tests)."""
        self.run(self._now_s + delta_s)


class SystemClock(_HeapClock):
    """Real time, optionally ``speed`` times faster; callbacks run on the caller's thread."""

    def __init__(self, speed: float = 1.0, epoch_wall_s: float | None = None) -> None:
        super().__init__()
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        now_wall = time.time()
        # ``epoch_wall_s`` continues an earlier run: now() counts from that wall time.
        self._t0_wall = now_wall if epoch_wall_s is None else epoch_wall_s
        # (simulated seconds at the anchor, monotonic time of the anchor, paused): one
        # tuple replaced whole, so now() reads a consistent anchor from any thread.
        self._anchor: tuple[float, float, bool] = (
            (now_wall - self._t0_wall) * speed,
            time.monotonic(),
            False,
        )
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the timer heap
        # The anchor and the last time handed out: a reader that read the monotonic clock
        # just before another thread paused must not see time go back at the next read.
        self._now_lock = threading.Lock()
        self._last_now_s = -math.inf
        self.stopped = False

    def now(self) -> float:
        with self._now_lock:
            return self._now_locked()

    def _now_locked(self) -> float:
        offset_s, t0_mono, paused = self._anchor
        t = offset_s if paused else offset_s + (time.monotonic() - t0_mono) * self.speed
        if t < self._last_now_s:
            return self._last_now_s
        self._last_now_s = t
        return t

    @property
    def paused(self) -> bool:
        """True while ``now()`` is frozen by ``pause()``."""
        return self._anchor[2]

    def pause(self) -> None:
        """Freeze ``now()``: no timer falls due until ``resume()`` (simulated pumps only;
        a real pump keeps running whatever this clock says)."""
        with self._now_lock:
            if not self._anchor[2]:
                self._anchor = (self._now_locked(), time.monotonic(), True)
        self._wake.set()

    def resume(self) -> None:
        """Let ``now()`` run again from where ``pause()`` froze it."""
        with self._now_lock:
            if self._anchor[2]:
                self._anchor = (self._anchor[0], time.monotonic(), False)
        self._wake.set()

    def wall_epoch(self) -> float:
        return self._t0_wall

    def run_pending(self) -> int:
        """Run the callbacks due when called and return how many ran (never blocks long).

        Callbacks that fall due while these run wait for the next call, so a slow callback
        that reschedules itself cannot keep the caller here forever.
        """
        ran = 0
        due_s = self.now()
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > due_s:
                    return ran
                handle = heapq.heappop(self._heap)[2]
            if not handle.cancelled:
                handle.callback()
                ran += 1

    def call_at(self, when_s: float, callback: Callable[[], None]) -> TimerHandle:
        with self._lock:
            handle = self._push(when_s, callback)
        self._wake.set()
        return handle

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self.now() + max(delay_s, 0.0), callback)

    def stop(self) -> None:
        """Make ``run`` return as soon as it wakes."""
        self.stopped = True
        self._wake.set()

    def run(self, until_s: float | None = None) -> None:
        while not self.stopped:
            with self._lock:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                next_s = self._heap[0][0] if self._heap else None
            now_s = self.now()
            if until_s is not None and now_s >= until_s:
                return
            if next_s is not None and next_s <= now_s:
                with self._lock:
                    handle = heapq.heappop(self._heap)[2]
                if not handle.cancelled:
                    handle.callback()
                continue
            if next_s is None and until_s is None:
                return
            target_s = min(t for t in (next_s, until_s) if t is not None)
            self._wake.clear()
            self._wake.wait(timeout=min((target_s - now_s) / self.speed, 0.5))
