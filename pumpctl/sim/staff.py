"""Simulated people and the physical world around the pump.

Staff react to what the controller logs, as people react to what a pump shows:
pharmacy compounds on a request, the nurse comes when an alarm calls. Faults act on
the pump's physics (occlusion, air, power), the link (comm loss) or the staff
(pharmacy late, nurse absent).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from pumpctl.alarms import KINDS
from pumpctl.clock import Clock
from pumpctl.controller import Controller
from pumpctl.drivers.base import PumpDriver
from pumpctl.eventlog import Event
from pumpctl.machine import State
from pumpctl.sim.scenario import Dist


class World:
    """Faults in progress and when each cause goes away."""

    def __init__(self, clock: Clock, driver: PumpDriver) -> None:
        self.clock = clock
        self.driver: Any = driver  # a simulated pump (or relay): it has world()
        self.clear_at_s: dict[str, float] = {}  # alarm kind -> when its cause is gone
        self.nurse_absent: list[tuple[float, float]] = []
        self.pharmacy_late: list[list[float]] = []  # [at_s, delay_s, used(0/1)]
        self.connected_n: int | None = None  # which bag is spiked on the line

    def schedule(self, kind: str, at_s: float, duration_s: float) -> None:
        """Put one fault on the clock (physical faults need the simulated pump)."""
        d, end = self.driver, at_s + duration_s
        if kind not in ("nurse_absent", "pharmacy_late", "comm_loss"):
            assert hasattr(d, "world"), "physical faults need the simulated pump"
        c = self.clock
        if kind == "occlusion":
            c.call_at(at_s, lambda: self._cause("occlusion", end, lambda: d.world("occlude")))
            c.call_at(end, lambda: d.world("release_occlusion"))
        elif kind == "air_in_line":
            c.call_at(at_s, lambda: self._cause("air_in_line", end, lambda: d.world("inject_air")))
            c.call_at(at_s, lambda: self._cause("pump_failure", end, lambda: None))
            c.call_at(end, lambda: d.world("clear_air"))
        elif kind == "power_loss":

            def cut() -> None:
                for k in ("pump_reset", "battery_depleted", "pump_failure"):
                    self._cause(k, end, lambda: None)
                d.world("power_off")

            c.call_at(at_s, cut)
            c.call_at(end, lambda: d.world("power_on"))
        elif kind == "comm_loss":
            c.call_at(at_s, lambda: setattr(d, "link_up", False))
            c.call_at(end, lambda: setattr(d, "link_up", True))
        elif kind == "nurse_absent":
            self.nurse_absent.append((at_s, end))
        elif kind == "pharmacy_late":
            self.pharmacy_late.append([at_s, duration_s, 0.0])
        else:  # pragma: no cover - the scenario loader allows only the kinds above
            raise ValueError(kind)

    def _cause(self, kind: str, end_s: float, act: Callable[[], object]) -> None:
        self.clear_at_s[kind] = max(self.clear_at_s.get(kind, 0.0), end_s)
        act()

    def cause_gone_at(self, kinds: list[str]) -> float:
        """When every listed cause is gone (now, if none is pending)."""
        now = self.clock.now()
        return max([now] + [self.clear_at_s.get(k, now) for k in kinds])


class Pharmacy:
    """Compounds each requested bag and hand-delivers it; may be late; decides hang-by.

    Each job belongs to one request (bag number): a bag that was discarded, replaced or
    recorded at the bedside by hand is left alone. After a restart it picks up the
    request in progress. A bag past its hang-by time is replaced when a fresh one can
    arrive in time, else released with the reason logged: never discarded while the
    line is dry or about to run dry.
    """

    def __init__(
        self,
        ctl: Controller,
        clock: Clock,
        world: World,
        rng: random.Random,
        compound_min: Dist,
        deliver_min: Dist,
        operator: str = "pharm1",
    ) -> None:
        self.ctl, self.clock, self.world, self.rng = ctl, clock, world, rng
        self.compound_min, self.deliver_min = compound_min, deliver_min
        self.op = operator
        ctl.listeners.append(self.on_event)
        nb = ctl.next_bag
        if nb is not None and nb.delivered_s is None:
            self._schedule(nb.n, nb.requested_s)

    def on_event(self, ev: Event) -> None:
        """React to a request, to "not at bedside" (the nurse calls: the bag is chased) and
        to a bag past its hang-by time."""
        if ev.event == "pharmacy_request":
            self._schedule(int(ev.detail["bag"]), self.clock.now())
        elif ev.event == "alarm" and ev.detail["kind"] == "bag_past_hang_by":
            self.clock.call_later(0.0, self._decide_hang_by)
        elif ev.event == "alarm" and ev.detail["kind"] == "next_bag_not_at_bedside":
            nb = self.ctl.next_bag
            if nb is not None and nb.compounded_s is not None and nb.delivered_s is None:
                n = nb.n  # made but not here: another hand delivery is sent now
                t_there = self.clock.now() + self.deliver_min.sample(self.rng) * 60.0
                self.clock.call_at(t_there, lambda: self._deliver(n))

    on_event.event_kinds = frozenset({"pharmacy_request", "alarm"})  # type: ignore[attr-defined]

    def _schedule(self, n: int, from_s: float) -> None:
        now = self.clock.now()
        delay_s = 0.0
        for late in self.world.pharmacy_late:
            if not late[2] and now >= late[0]:
                late[2] = 1.0
                delay_s += late[1]
        nb = self.ctl.next_bag
        t_done = nb.compounded_s if nb is not None and nb.n == n else None
        if t_done is None:
            t_done = max(from_s + delay_s + self.compound_min.sample(self.rng) * 60.0, now)
            self.clock.call_at(t_done, lambda: self._compound(n))
        t_there = max(t_done + self.deliver_min.sample(self.rng) * 60.0, now)
        self.clock.call_at(t_there, lambda: self._deliver(n))

    def _mine(self, n: int) -> Any:
        nb = self.ctl.next_bag
        return nb if nb is not None and nb.n == n else None

    def _compound(self, n: int) -> None:
        nb = self._mine(n)
        if nb is not None and nb.compounded_s is None:
            self.ctl.bag_compounded(self.op)

    def _deliver(self, n: int) -> None:
        nb = self._mine(n)
        if nb is not None and nb.delivered_s is None and nb.compounded_s is not None:
            self.ctl.bag_delivered("pharmacy tech")

    def _decide_hang_by(self) -> None:
        nb = self.ctl.next_bag
        if nb is None or self.ctl.bag_expired(slack_s=1e-6) is None:
            return
        left = self.ctl.watchdog.seconds_to_end()
        turnaround_s = self.ctl.planner.lead("pharmacy_request").s
        if left is not None and left > turnaround_s:
            self.ctl.replace_next_bag(self.op, "past its hang-by time; a fresh bag arrives in time")
        else:
            self.ctl.release_bag(
                self.op,
                "past its hang-by time; a replacement would interrupt the infusion "
                "(released to run past its beyond-use time)",
            )


#: Least time before a nurse tries again to start a pump that refused to start, and how
#: often she tries (about a day) before leaving it to the alarms and the report.
START_RETRY_S = 300.0
MAX_START_TRIES = 288


class Nurse:
    """Primes, starts, changes bags with no delay, answers alarms.

    She comes when the watchdog's prompt calls (acknowledging it at the bedside, which the
    watchdog learns her response time from) and again, as a fresh response, when the T-10
    escalation sounds if she has not come yet; she changes the bag a few seconds before the
    projected end, hangs a STAT bag as soon as it arrives, and never throws a bag away: a
    bag past its hang-by time waits for the pharmacist's decision.
    """

    MAX_RESUME_TRIES = 120  # 1 h of looking every 30 s; then she waits for the next alarm

    def __init__(
        self,
        ctl: Controller,
        driver: PumpDriver,
        world: World,
        rng: random.Random,
        response_min: Dist,
        swap_s: Dist,
        prime_min: Dist,
        hang_lead_s: float,
        operator: str = "rn1",
        answers: tuple[str, ...] = ("prepare_bag_change", "no_bag_ready"),
    ) -> None:
        self.ctl, self.driver, self.world, self.rng = ctl, driver, world, rng
        self.clock = ctl.clock
        self.response_min, self.swap_s, self.prime_min = response_min, swap_s, prime_min
        self.hang_lead_s = hang_lead_s
        self.op = operator
        self.answers = answers
        self.change_planned = False
        self.waiting_for_bag = False
        self.busy_with_alarm = False
        self.swapping = False
        self.resume_tries = 0
        self.start_tries = 0
        ctl.listeners.append(self.on_event)

    @property
    def connected_n(self) -> int | None:
        """Which bag is spiked on the line (shared by everyone at the bedside)."""
        return self.world.connected_n

    def pick_up_work(self, delay_s: float = 30.0) -> None:
        """Start a shift on an infusion already under way (after a restart or a hand-over)."""
        ctl, clock, nb = self.ctl, self.clock, self.ctl.next_bag
        if ctl.state is State.IDLE and not ctl.bags:
            if ctl.line_primed:
                clock.call_later(0.0, self._start)
            elif nb is not None and nb.delivered_s is not None:
                clock.call_later(0.0, self._prime)
        elif ctl.state is State.PRIMING:
            clock.call_later(delay_s, self._primed)
        elif ctl.state is State.BAG_CHANGE:
            clock.call_later(delay_s, self._finish_swap)
        elif ctl.state is State.ALARM:
            self.busy_with_alarm = True
            clock.call_later(delay_s, self._handle_alarm)
        elif ctl.alarms.find_active("prepare_bag_change") or ctl.alarms.find_active("no_bag_ready"):
            self.change_planned = True
            clock.call_later(delay_s, self._at_bedside_for_change)

    def _hands(self, action: str, *args: object) -> None:
        """The physical part of the job; on a real pump the bench does it by hand."""
        if hasattr(self.driver, "world"):  # a simulated pump (or a simulated relay)
            self.driver.world(action, *args)

    def _spike(self, bag: Any) -> None:
        self._hands("connect_bag", bag.content_ml, bag.real_conc_mg_per_ml, f"bag {bag.n}")
        self.world.connected_n = bag.n

    # -- timing -------------------------------------------------------------
    def _available(self, t_s: float) -> float:
        moved = True
        while moved:
            moved = False
            for start, end in self.world.nurse_absent:
                if start <= t_s < end:
                    t_s, moved = end, True
        return t_s

    def _arrive(self, act: Callable[[], None]) -> None:
        delay = self.response_min.sample(self.rng) * 60.0
        self.clock.call_at(self._available(self.clock.now() + delay), act)

    def _at(self, t_s: float, act: Callable[[], None]) -> None:
        self.clock.call_at(self._available(t_s), act)

    # -- events ---------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        """React to what the controller logged."""
        if ev.event == "alarm":
            kind = ev.detail["kind"]
            if kind in self.answers and (not self.change_planned or kind == "no_bag_ready"):
                # The escalation is a second, louder call: a fresh response, whoever comes.
                self.change_planned = True
                self._arrive(self._at_bedside_for_change)
            elif KINDS[kind].flow_stopping and not self.busy_with_alarm:
                self.busy_with_alarm = True
                self._arrive(self._handle_alarm)
        elif ev.event == "bag_at_bedside":
            ctl = self.ctl
            nb = ctl.next_bag
            if ctl.state is State.IDLE and not ctl.line_primed and not ctl.bags:
                # Setting up the infusion is part of the scenario, so an absence (which
                # models the nurse away from a running infusion) does not delay it.
                self.waiting_for_bag = False
                self.clock.call_later(0.0, self._prime)
            elif self.waiting_for_bag:
                self.waiting_for_bag = False
                self._at(self.clock.now(), self._after_bag_arrived)
            elif nb is not None and nb.stat and ctl.state is State.INFUSING:
                self.change_planned = True  # a STAT bag: the new dose goes up at once
                self._arrive(self._at_bedside_for_change)
        elif ev.event == "bag_released" and self.waiting_for_bag:
            self.waiting_for_bag = False
            self._at(self.clock.now(), self._after_bag_arrived)

    on_event.event_kinds = frozenset(  # type: ignore[attr-defined]
        {"alarm", "bag_at_bedside", "bag_released"}
    )

    def _hangable(self) -> bool:
        """True if the next bag may be hung now; else wait for it or for the pharmacist."""
        nb = self.ctl.next_bag
        if nb is None or nb.delivered_s is None or self.ctl.bag_expired() is not None:
            self.waiting_for_bag = True
            return False
        return True

    # -- first bag ---------------------------------------------------------------
    def _prime(self) -> None:
        nb = self.ctl.next_bag
        if nb is None or not self._hangable():
            return
        self._spike(nb)
        if self.ctl.prime(self.op, light_protected=True) is None:
            self._hands("prime_line", self.ctl.prime_ml)
            self.clock.call_later(self.prime_min.sample(self.rng) * 60.0, self._primed)

    def _start(self) -> None:
        why = self.ctl.start(self.op)
        pump_said_no = why is not None and why.startswith(("pump refused", "pump did not answer"))
        if pump_said_no and self.ctl.state is State.IDLE and self.start_tries < MAX_START_TRIES:
            # The pump refused to start (the line still occluded, no power): the nurse
            # sees it on the screen, checks the line and tries again.
            self.start_tries += 1
            delay = max(self.response_min.sample(self.rng) * 60.0, START_RETRY_S)
            self.clock.call_at(self._available(self.clock.now() + delay), self._start)

    def _primed(self) -> None:
        if self.ctl.primed(self.op) is None:
            self._start()

    # -- bag change ----------------------------------------------------------------
    def _ack_prompts(self) -> None:
        for kind in ("prepare_bag_change", "no_bag_ready"):
            a = self.ctl.alarms.find_active(kind)
            if a is not None and a.acknowledged_s is None:
                self.ctl.acknowledge(a.id, self.op)

    def _at_bedside_for_change(self) -> None:
        if self.ctl.state is State.ALARM:
            self.change_planned = False
            return  # the alarm visit deals with it
        if self.ctl.state is not State.INFUSING or self.swapping:
            self.change_planned = False
            return  # someone else is changing it, or it is done
        self._ack_prompts()
        if not self._hangable():
            return
        self._schedule_swap()

    def _schedule_swap(self) -> None:
        nb = self.ctl.next_bag
        end = self.ctl.watchdog.projected_end_s
        swap = self.swap_s.sample(self.rng)
        if nb is not None and nb.stat or end is None:
            begin = self.clock.now()
        else:
            begin = end - self.hang_lead_s - swap
        self._at(max(begin, self.clock.now()), lambda: self._begin_swap(swap))

    def _after_bag_arrived(self) -> None:
        if self.ctl.state is State.ALARM and self.ctl.alarms.find_active("bag_empty"):
            self._bag_path()
        elif self.ctl.state is State.INFUSING and self._hangable():
            self._schedule_swap()

    def _begin_swap(self, swap_s: float) -> None:
        ctl = self.ctl
        if ctl.state is not State.INFUSING or self.swapping:
            return
        nb = ctl.next_bag
        end = ctl.watchdog.projected_end_s
        stat = nb is not None and nb.stat
        if (
            not stat
            and end is not None
            and end - self.hang_lead_s - swap_s > self.clock.now() + 1e-6
        ):
            self._at(end - self.hang_lead_s - swap_s, lambda: self._begin_swap(swap_s))
            return  # re-projected later (e.g. after an alarm): wait for the new time
        if not self._hangable():
            return
        if ctl.begin_bag_change(self.op) is not None:
            return
        self.swapping = True
        self._hands("disconnect_bag")
        self.clock.call_later(swap_s, self._finish_swap)

    def _finish_swap(self) -> None:
        self.swapping = False
        nb = self.ctl.next_bag
        if nb is None:
            return
        self._spike(nb)
        if self.ctl.state is State.ALARM:  # the old bag ran out (or ran dry) meanwhile
            self._hang_after_empty()
        elif self.ctl.hang_bag(self.op, light_protected=True) is None:
            self.change_planned = False

    def _bag_path(self) -> None:
        """At the bedside with a bag-empty alarm: hang the next bag as soon as there is one."""
        nb = self.ctl.next_bag
        if nb is None or not self._hangable():
            return
        if self.connected_n == nb.n:
            self._hang_after_empty()
        elif not self.swapping:
            self.swapping = True
            self._hands("disconnect_bag")
            self.clock.call_later(self.swap_s.sample(self.rng), self._finish_swap)

    def _hang_after_empty(self) -> None:
        if self.ctl.state is not State.ALARM or not self._hangable():
            return
        self._ack_all()
        if self.ctl.hang_bag(self.op, light_protected=True) is None:
            self.busy_with_alarm = False
            self.change_planned = False
            return
        other = [
            str(a.kind)
            for a in self.ctl.alarms.active()
            if a.spec.flow_stopping and a.kind not in ("bag_empty", "air_in_line")
        ]
        t_ok = self.world.cause_gone_at(other)
        self.clock.call_at(max(t_ok, self.clock.now() + 30.0), self._hang_after_empty)

    def _ack_all(self) -> list[str]:
        kinds: list[str] = []
        for a in self.ctl.alarms.active():
            if a.spec.flow_stopping:
                kinds.append(str(a.kind))
                if a.acknowledged_s is None:
                    self.ctl.acknowledge(a.id, self.op)
        return kinds

    # -- alarms ----------------------------------------------------------------------
    def _handle_alarm(self) -> None:
        kinds = self._ack_all()
        if not kinds:
            self.busy_with_alarm = False
            return
        if "bag_empty" in kinds:
            self._bag_path()
            return
        self.resume_tries = 0
        self.clock.call_at(self.world.cause_gone_at(kinds), self._try_resume)

    def _try_resume(self) -> None:
        if self.ctl.state is not State.ALARM:
            self.busy_with_alarm = False
            return
        self._ack_all()
        if self.ctl.alarms.find_active("bag_empty"):
            self._bag_path()
            return
        if self.ctl.resume(self.op) is None:
            self.busy_with_alarm = False
            if self.ctl.alarms.find_active("prepare_bag_change") and not self.swapping:
                self.change_planned = True
                self._at_bedside_for_change()
        elif self.resume_tries < self.MAX_RESUME_TRIES:
            self.resume_tries += 1
            self.clock.call_later(30.0, self._try_resume)  # cause not gone yet: look again
        else:
            self.busy_with_alarm = False  # give up; the next alarm calls her again
