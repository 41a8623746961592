"""Simulated people and the physical world around the pump.

Staff react to what the controller logs, as people react to what a pump shows:
pharmacy compounds on a request, the nurse comes when an alarm calls. Faults act on
the pump's physics (occlusion, air, power), the link (comm loss) or the staff
(pharmacy late, nurse absent).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pumpctl.alarms import KINDS
from pumpctl.clock import Clock
from pumpctl.controller import Controller
from pumpctl.drivers.base import PumpDriver
from pumpctl.drivers.sim import SimDriver
from pumpctl.eventlog import Event
from pumpctl.machine import State
from pumpctl.sim.scenario import Dist


class World:
    """Faults in progress and when each cause goes away."""

    def __init__(self, clock: Clock, driver: PumpDriver) -> None:
        self.clock = clock
        self.driver = driver
        self.clear_at_s: dict[str, float] = {}  # alarm kind -> when its cause is gone
        self.nurse_absent: list[tuple[float, float]] = []
        self.pharmacy_late: list[list[float]] = []  # [at_s, delay_s, used(0/1)]

    def schedule(self, kind: str, at_s: float, duration_s: float) -> None:
        """Put one fault on the clock (physical faults need the simulated pump)."""
        d, end = self.driver, at_s + duration_s
        if kind not in ("nurse_absent", "pharmacy_late", "comm_loss"):
            assert isinstance(d, SimDriver), "physical faults need the simulated pump"
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
    """Compounds each requested bag and hand-delivers it; may be late.

    Each job belongs to one request: a bag that was discarded, rebuilt by a new request,
    or recorded at the bedside by hand is left alone. After a restart it picks up the
    request in progress.
    """

    def __init__(
        self,
        ctl: Controller,
        clock: Clock,
        world: World,
        rng: random.Random,
        compound_min: Dist,
        deliver_min: Dist,
    ) -> None:
        self.ctl, self.clock, self.world, self.rng = ctl, clock, world, rng
        self.compound_min, self.deliver_min = compound_min, deliver_min
        ctl.listeners.append(self.on_event)
        nb = ctl.next_bag
        if nb is not None and nb.requested_s is not None and nb.delivered_s is None:
            self._schedule(nb.requested_s)

    def on_event(self, ev: Event) -> None:
        """React to a pharmacy request."""
        if ev.event == "pharmacy_request":
            self._schedule(self.clock.now())

    def _schedule(self, from_s: float) -> None:
        now = self.clock.now()
        delay_s = 0.0
        for late in self.world.pharmacy_late:
            if not late[2] and now >= late[0]:
                late[2] = 1.0
                delay_s += late[1]
        nb = self.ctl.next_bag
        token = self._token()
        t_done = nb.compounded_s if nb is not None else None
        if t_done is None:
            t_done = max(from_s + delay_s + self.compound_min.sample(self.rng) * 60.0, now)
            self.clock.call_at(t_done, lambda: self._compound(token))
        t_there = max(t_done + self.deliver_min.sample(self.rng) * 60.0, now)
        self.clock.call_at(t_there, lambda: self._deliver(token))

    def _token(self) -> tuple[int, float | None] | None:
        nb = self.ctl.next_bag
        return None if nb is None else (nb.n, nb.requested_s)

    def _compound(self, token: object) -> None:
        nb = self.ctl.next_bag
        if token == self._token() and nb is not None and nb.compounded_s is None:
            self.ctl.bag_compounded("pharmacy")

    def _deliver(self, token: object) -> None:
        nb = self.ctl.next_bag
        ok = token == self._token() and nb is not None
        if ok and nb.delivered_s is None and nb.compounded_s is not None:
            self.ctl.bag_delivered("pharmacy tech")


class Nurse:
    """Primes, starts, changes bags with no delay, answers alarms."""

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
    ) -> None:
        self.ctl, self.driver, self.world, self.rng = ctl, driver, world, rng
        self.clock = ctl.clock
        self.response_min, self.swap_s, self.prime_min = response_min, swap_s, prime_min
        self.hang_lead_s = hang_lead_s
        self.op = operator
        self.change_planned = False
        self.waiting_for_bag = False
        self.busy_with_alarm = False
        self.swapping = False
        self.connected_n: int | None = None  # which bag is spiked on the line
        ctl.listeners.append(self.on_event)

    def pick_up_work(self, delay_s: float = 30.0) -> None:
        """Start a shift on an infusion already under way (after a restart or a hand-over)."""
        ctl, clock, nb = self.ctl, self.clock, self.ctl.next_bag
        if ctl.state is State.IDLE and not ctl.bags:
            if ctl.line_primed:
                clock.call_later(0.0, lambda: ctl.start(self.op))
            elif nb is not None and nb.delivered_s is not None:
                clock.call_later(0.0, self._prime)
        elif ctl.state is State.PRIMING:
            clock.call_later(delay_s, self._primed)
        elif ctl.state is State.BAG_CHANGE:
            clock.call_later(delay_s, self._finish_swap)
        elif ctl.state is State.ALARM:
            self.busy_with_alarm = True
            clock.call_later(delay_s, self._handle_alarm)
        elif ctl.alarms.find_active("prepare_bag_change"):
            self.change_planned = True
            clock.call_later(delay_s, self._at_bedside_for_change)

    def _hands(self, action: str, *args: object) -> None:
        """The physical part of the job; on a real pump the bench does it by hand."""
        if isinstance(self.driver, SimDriver):
            self.driver.world(action, *args)

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
            if kind == "prepare_bag_change" and not self.change_planned:
                self.change_planned = True
                self._arrive(self._at_bedside_for_change)
            elif KINDS[kind].flow_stopping and not self.busy_with_alarm:
                self.busy_with_alarm = True
                self._arrive(self._handle_alarm)
        elif ev.event == "bag_at_bedside":
            if self.ctl.state is State.IDLE and not self.ctl.line_primed and not self.ctl.bags:
                # Setting up the infusion is part of the scenario, so an absence (which
                # models the nurse away from a running infusion) does not delay it.
                self.waiting_for_bag = False
                self.clock.call_later(0.0, self._prime)
            elif self.waiting_for_bag:
                self.waiting_for_bag = False
                self._at(self.clock.now(), self._after_bag_arrived)

    def _fresh_or_reorder(self) -> bool:
        """True if the next bag may be hung; else ask pharmacy for a fresh one and wait."""
        why = self.ctl.bag_expired()
        if why is None:
            return True
        self.ctl.replace_next_bag(self.op, why)
        self.waiting_for_bag = True
        return False

    # -- first bag ---------------------------------------------------------------
    def _prime(self) -> None:
        nb = self.ctl.next_bag
        assert nb is not None
        if not self._fresh_or_reorder():
            return
        self._hands("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, f"bag {nb.n}")
        self.connected_n = nb.n
        if self.ctl.prime(self.op, light_protected=True) is None:
            self.clock.call_later(self.prime_min.sample(self.rng) * 60.0, self._primed)

    def _primed(self) -> None:
        if self.ctl.primed(self.op) is None:
            self.ctl.start(self.op)

    # -- bag change ----------------------------------------------------------------
    def _at_bedside_for_change(self) -> None:
        nb = self.ctl.next_bag
        if self.ctl.state is State.ALARM:
            return  # the alarm visit deals with it
        if nb is None or nb.delivered_s is None:
            self.waiting_for_bag = True
            return
        self._schedule_swap()

    def _schedule_swap(self) -> None:
        end = self.ctl.watchdog.projected_end_s
        swap = self.swap_s.sample(self.rng)
        begin = self.clock.now() if end is None else end - self.hang_lead_s - swap
        self.clock.call_at(max(begin, self.clock.now()), lambda: self._begin_swap(swap))

    def _after_bag_arrived(self) -> None:
        if self.ctl.state is State.ALARM and self.ctl.alarms.find_active("bag_empty"):
            self._bag_path()
        elif self.ctl.state is State.INFUSING:
            self._schedule_swap()

    def _begin_swap(self, swap_s: float) -> None:
        if self.ctl.state is not State.INFUSING or self.swapping:
            return
        end = self.ctl.watchdog.projected_end_s
        if end is not None and end - self.hang_lead_s - swap_s > self.clock.now() + 1e-6:
            self.clock.call_at(end - self.hang_lead_s - swap_s, lambda: self._begin_swap(swap_s))
            return  # re-projected later (e.g. after an alarm): wait for the new time
        if not self._fresh_or_reorder():
            return
        if self.ctl.begin_bag_change(self.op) is not None:
            return
        self.swapping = True
        self._hands("disconnect_bag")
        self.clock.call_later(swap_s, self._finish_swap)

    def _finish_swap(self) -> None:
        self.swapping = False
        nb = self.ctl.next_bag
        assert nb is not None
        self._hands("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, f"bag {nb.n}")
        self.connected_n = nb.n
        if self.ctl.state is State.ALARM:  # the old bag ran out (or ran dry) meanwhile
            self._hang_after_empty()
        elif self.ctl.hang_bag(self.op, light_protected=True) is None:
            self.change_planned = False

    def _bag_path(self) -> None:
        """At the bedside with a bag-empty alarm: hang the next bag as soon as there is one."""
        nb = self.ctl.next_bag
        if nb is None or nb.delivered_s is None:
            self.waiting_for_bag = True
            return
        if not self._fresh_or_reorder():
            return
        if self.connected_n == nb.n:
            self._hang_after_empty()
        elif not self.swapping:
            self.swapping = True
            self._hands("disconnect_bag")
            self.clock.call_later(self.swap_s.sample(self.rng), self._finish_swap)

    def _hang_after_empty(self) -> None:
        if self.ctl.state is not State.ALARM or not self._fresh_or_reorder():
            return
        self._ack_all()
        if self.ctl.hang_bag(self.op, light_protected=True) is None:
            self.busy_with_alarm = False
            self.change_planned = False
            return
        other = [
            a.kind
            for a in self.ctl.alarms.active()
            if a.spec.flow_stopping and a.kind not in ("bag_empty", "air_in_line")
        ]
        t_ok = self.world.cause_gone_at(other)
        self.clock.call_at(max(t_ok, self.clock.now() + 30.0), self._hang_after_empty)

    def _ack_all(self) -> list[str]:
        kinds = []
        for a in self.ctl.alarms.active():
            if a.spec.flow_stopping:
                kinds.append(a.kind)
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
        else:
            self.clock.call_later(30.0, self._try_resume)  # cause not gone yet: look again
