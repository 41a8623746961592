"""Speed work (issue 12): the caches and shortcuts keep results exact."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpctl.alarms import PRIORITY_RANK, Alarm, AlarmBoard, AlarmKind
from pumpctl.bags import Recipe
from pumpctl.devices.physics import PumpPhysics
from pumpctl.errors import InputError, PumpCommandError
from pumpctl.eventlog import Event, _new_event
from pumpctl.events import ChannelState, apply
from pumpctl.machine import TRANSITIONS, PumpMachine, State
from pumpctl.report import build_result
from pumpctl.setting import check_fits, load_pump, load_setting, profiles_dir
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario
from pumpctl.watchdog import LeadPlanner, Stage
from tests.helpers import Rig

ROOT = Path(__file__).resolve().parent.parent
TRIGGERS = sorted({t[0] for t in TRANSITIONS})
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.toml") if "campaign" not in p.name)


def _copy_setting(tmp_path: Path) -> Path:
    p = tmp_path / "s.toml"
    p.write_text((profiles_dir() / "anakinra_continuous.toml").read_text())
    return p


def test_setting_cache_shares_one_object_until_the_content_changes(tmp_path):
    p = _copy_setting(tmp_path)
    a, b = load_setting(p), load_setting(p)
    assert a is b
    text = p.read_text()
    assert "escalate_min = 10 " in text
    p.write_text(text.replace("escalate_min = 10 ", "escalate_min = 9  "))  # same size
    os.utime(p, ns=(1, 1))  # even with an old mtime: size and ctime/inode/content decide
    c = load_setting(p)
    assert c is not a and c.watchdog_min["escalate_min"] == 9.0
    assert c.version != a.version


def test_setting_cache_never_keeps_a_bad_file(tmp_path):
    p = _copy_setting(tmp_path)
    load_setting(p)
    p.write_text(p.read_text().replace("escalate_min = 10", "escalate_min = 99"))
    for _ in range(2):  # refused each time, with its one-line reason
        with pytest.raises(InputError, match="escalate_min"):
            load_setting(p)


def test_a_shipped_name_is_found_once_and_a_file_of_that_name_here_still_wins(
    tmp_path, monkeypatch
):
    """The shipped-name lookup is kept, but ``resolve``'s order holds: a file named
    like a shipped setting in the working directory is the one loaded."""
    monkeypatch.chdir(tmp_path)
    shipped = load_setting("anakinra_continuous")
    assert load_setting("anakinra_continuous") is shipped
    assert Path(shipped.path) == profiles_dir() / "anakinra_continuous.toml"
    local = tmp_path / "anakinra_continuous"
    local.write_text(
        (profiles_dir() / "anakinra_continuous.toml")
        .read_text()
        .replace("escalate_min = 10 ", "escalate_min = 9  ")
    )
    mine = load_setting("anakinra_continuous")
    assert mine.path == "anakinra_continuous" and mine.watchdog_min["escalate_min"] == 9.0
    local.unlink()
    assert load_setting("anakinra_continuous") is shipped
    with pytest.raises(InputError, match="no setting 'no_such_setting'"):
        load_setting("no_such_setting")


def test_a_pump_that_passed_the_fit_check_does_not_pass_a_smaller_reservoir():
    """The fit check is kept per reservoir size (all it depends on), never per object."""
    setting = load_setting("anakinra_continuous")
    big = load_pump("generic_lvp")
    check_fits(setting, big)
    check_fits(setting, big)  # the kept answer
    small = dataclasses.replace(big, reservoir_capacity_ml=50.0)
    for _ in range(2):
        with pytest.raises(InputError, match="50 mL reservoir"):
            check_fits(setting, small)


def test_pump_cache_follows_edits(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text((profiles_dir() / "pumps" / "generic_lvp.toml").read_text())
    a = load_pump(p)
    assert load_pump(p) is a
    p.write_text(p.read_text().replace("bias_pct = 0.8", "bias_pct = 1.5"))
    assert load_pump(p).bias_pct == 1.5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_result_from_live_state_equals_a_fresh_fold(path):
    run = run_scenario(load_scenario(path), trace=False)
    assert run.result == build_result(run.log.events())


class _Facts:
    def __init__(self, start_reason: str | None) -> None:
        self.start_reason = start_reason
        self.asked = 0

    def why_not_start(self) -> str | None:
        self.asked += 1
        return self.start_reason


def test_shared_machine_keeps_channels_apart_and_asks_each_guard_once():
    ok, no = _Facts(None), _Facts("line not primed")
    m1, m2 = PumpMachine(ok), PumpMachine(no)
    assert m1.request("start") is None and m1.state is State.INFUSING
    assert m2.request("start") == "line not primed" and m2.state is State.IDLE
    assert ok.asked == 1 and no.asked == 1
    assert m1.request("start").startswith("'start' is not allowed while infusing")
    m2.force(State.ALARM)
    assert m1.state is State.INFUSING and m2.state is State.ALARM


class _AllFacts:
    """Every guard allows, or refuses naming itself (so a wrong guard shows)."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def __getattr__(self, name: str):
        if not name.startswith("why_not_"):
            raise AttributeError(name)
        return lambda: f"refused by {name}" if self.refuse else None


@pytest.mark.parametrize("refuse", [False, True])
def test_check_answers_as_request_would_in_every_state(refuse):
    """``check`` (a table lookup) says exactly what firing the trigger would say."""
    for state in State:
        for trigger in [*TRIGGERS, "no_such_trigger"]:
            probe, fired = PumpMachine(_AllFacts(refuse)), PumpMachine(_AllFacts(refuse))
            probe.force(state)
            fired.force(state)
            said = probe.check(trigger)
            assert probe.state is state  # checking fires nothing
            assert said == fired.request(trigger), (state, trigger)
            if said is not None:
                assert fired.state is state  # refused: nothing moved


def test_a_repeated_recipe_is_read_once_and_a_new_one_afresh(setting):
    """Bag requests of one plan share one (immutable) recipe; each bag's recipe is
    exactly what its request logged; a titration's is its own."""
    run = run_scenario(load_scenario(ROOT / "examples" / "titration_day2.toml"), trace=False)
    bags = run.controller.s.bags
    by_plan: dict[int, set[int]] = {}
    for ev in run.log.events():
        if ev.event == "pharmacy_request":
            b = bags[int(ev.detail["bag"])]
            assert repr(b.recipe) == repr(Recipe.from_json(ev.detail["recipe"]))
            by_plan.setdefault(b.recipe.plan, set()).add(id(b.recipe))
    assert len(by_plan) >= 2  # the titration made a second plan
    assert all(len(ids) == 1 for ids in by_plan.values())


def test_a_recipe_logs_every_field_in_order_and_reads_back_the_same():
    r = Recipe(2, 200.0, 100, 109.34, 1.829, 100.0, 12.5, 8, 548.75, 600.0)
    assert list(r.to_json()) == [f.name for f in dataclasses.fields(Recipe)]
    assert list(r.to_json().values()) == [getattr(r, f.name) for f in dataclasses.fields(Recipe)]
    assert Recipe.from_json(r.to_json()) == r


def test_a_recipe_equal_but_for_the_sign_of_zero_is_read_afresh():
    """0.0 == -0.0, but a log that says -0.0 reads back -0.0."""
    recipe = dict(Recipe(1, 200.0, 100, 109.3, 1.83, 100.0, 12.5, 8, 548.7, 600.0).to_json())
    s = ChannelState()
    for n, mg in ((1, 0.0), (2, -0.0)):
        detail = {"bag": n, "recipe": {**recipe, "mg": mg}, "stat": False}
        apply(s, SimpleNamespace(event="pharmacy_request", detail=detail, t_s=n, operator="x"))
    assert repr(s.bags[1].recipe.mg) == "0.0" and repr(s.bags[2].recipe.mg) == "-0.0"


def test_a_setting_next_to_the_scenario_is_found_by_its_relative_path(tmp_path):
    """``resolve_path``: a path in a scenario is relative to the scenario's file."""
    (tmp_path / "mine").mkdir()
    text = (profiles_dir() / "anakinra_continuous.toml").read_text()
    (tmp_path / "mine" / "s.toml").write_text(
        text.replace("escalate_min = 10 ", "escalate_min = 9  ")
    )
    example = (ROOT / "examples" / "anakinra_72h.toml").read_text()
    sc_path = tmp_path / "sc.toml"
    sc_path.write_text(example.replace('"anakinra_continuous"', '"mine/s.toml"'))
    sc = load_scenario(sc_path)
    assert sc.resolve_path(sc.setting) == str(tmp_path / "mine" / "s.toml")
    assert load_setting(sc.resolve_path(sc.setting)).watchdog_min["escalate_min"] == 9.0
    assert sc.resolve_path("generic_lvp") == "generic_lvp"  # a shipped name, as it is


def test_lead_follows_new_observations(setting):
    planner = LeadPlanner(setting)
    first = planner.lead(Stage.PHARMACY_REQUEST)
    assert planner.lead(Stage.PHARMACY_REQUEST) is first
    for _ in range(8):
        planner.observe(Stage.PHARMACY_REQUEST, 3 * 3600.0)
    later = planner.lead(Stage.PHARMACY_REQUEST)
    assert later.s > first.s and "observed" in later.why


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 500),
    bag_ml=st.floats(0.5, 1000),
    start_s=st.floats(0, 600),
    t_s=st.floats(0, 7200),
)
def test_dry_bound_never_exceeds_the_solved_dry_time(lvp, rate, bag_ml, start_s, t_s):
    p = PumpPhysics(lvp)
    p.connect_bag(0.0, bag_ml, 1.0, "b1")
    p.set_rate(start_s, rate)
    p.start(start_s)
    p.advance(start_s + t_s)
    if p.mode.value == "running":
        assert p._dry_not_before_s() <= p._dry_s()


def test_fast_event_is_the_same_immutable_event():
    ev = _new_event(3, 1.5, "", "pump1", "idle", "alarm", {"kind": "x"}, "rn1")
    assert ev == Event(3, 1.5, "", "pump1", "idle", "alarm", {"kind": "x"}, "rn1")
    assert type(ev) is Event and ev.problem == "" and ev.operator == "rn1"
    with pytest.raises(AttributeError):
        ev.seq = 4  # type: ignore[misc]


@pytest.mark.parametrize("name", ["anakinra_72h", "syringe_pump_ne1000"])
def test_iec_trace_read_off_the_physics_matches_clock_sampling(name):
    """The trace is read off the integration steps; sampling by clock callbacks (the old
    way, which split the steps) gives the same volumes to the last few bits."""
    sc = load_scenario(ROOT / "examples" / f"{name}.toml")
    run = run_scenario(sc)
    old: list[tuple[float, float]] = []

    def observe(ctl, clock):
        def on_event(ev):
            if ev.event == "state" and ev.detail.get("trigger") == "start":
                t0 = clock.now()
                for k in range(241):
                    clock.call_at(t0 + k * 30.0, sample)

        def sample():
            ph = ctl.driver.physics
            ph.advance(clock.now())
            old.append((clock.now(), ph.actual_ml_total))

        ctl.listeners.append(on_event)

    run_scenario(sc, trace=False, observers=[observe])
    assert len(run.volume_samples) == len(old) == 241
    for (t_new, v_new), (t_old, v_old) in zip(run.volume_samples, old, strict=True):
        assert t_new == t_old
        assert v_new == pytest.approx(v_old, rel=1e-12, abs=1e-12)
    assert old[-1][1] > 1.0  # the pump delivered something to compare


def test_asking_for_a_trace_changes_nothing_else():
    sc = load_scenario(ROOT / "examples" / "occlusion.toml")
    on, off = run_scenario(sc), run_scenario(sc, trace=False)
    strip = [(e.t_s, e.event, e.detail) for e in on.log.events() if e.event != "flow_trace"]
    assert strip == [(e.t_s, e.event, e.detail) for e in off.log.events()]


def test_build_is_kept_per_exact_order(setting):
    from decimal import Decimal

    from pumpctl.order import Order, build

    a = build(Order(Decimal("600"), Decimal("70"), bag_ml=100), setting)
    assert build(Order(Decimal("600"), Decimal("70"), bag_ml=100), setting) is a
    b = build(Order(Decimal("600.0"), Decimal("70"), bag_ml=100), setting)
    assert b is not a and b.to_json() == a.to_json()
    c = build(Order(Decimal("900"), Decimal("70"), bag_ml=100), setting)
    assert c.ordered_mg_per_day == 900


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0.0, 1e7, allow_nan=False), min_size=1, max_size=120), st.floats(50, 99.99)
)
def test_running_lognormal_fit_is_bit_identical(values, q):
    from pumpctl.watchdog import _LogFit, lognormal_percentile

    fit = _LogFit()
    for v in values:
        fit.add(v)
    assert fit.percentile(q) == lognormal_percentile(values, q)
    assert fit.max_value == max(values)


_COMMANDS = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0, 3 * 3600.0)),  # often at the same instant
        st.sampled_from(
            [
                "set_rate",
                "set_vtbi",
                "clear_volume",
                "start",
                "stop",
                "connect_bag",
                "disconnect_bag",
                "occlude",
                "release_occlusion",
                "power_off",
                "power_on",
                "advance",
                "status",
            ]
        ),
        st.floats(0.5, 300),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(steps=_COMMANDS)
def test_kept_next_event_is_always_the_freshly_solved_one(lvp, steps):
    """The physics keeps its next event between changes: after any command, at any time,
    it is exactly what a fresh solve of the current state gives."""
    p = PumpPhysics(lvp)
    p.connect_bag(0.0, 100.0, 6.0, "b1")
    p.set_rate(0.0, 10.0)
    p.start(0.0)
    assert p.next_event_s() == p._solve_next_event_s()
    t = 0.0
    for dt, cmd, x in steps:
        t += dt
        try:
            if cmd == "set_rate":
                p.set_rate(t, x)
            elif cmd == "set_vtbi":
                p.set_vtbi(t, x)
            elif cmd == "connect_bag":
                p.connect_bag(t, x, 6.0, f"b{t}")
            elif cmd == "advance":
                p.advance(t)
            else:
                getattr(p, cmd)(t)
        except PumpCommandError:
            pass
        assert p.next_event_s() == p._solve_next_event_s()


def test_listeners_get_only_their_kinds_in_order(setting, lvp):
    ctl = Rig(setting, lvp).ctl
    seen: list[tuple[str, str]] = []

    def everything(ev):
        seen.append(("all", ev.event))

    def alarms_only(ev):
        seen.append(("alarm", ev.event))

    alarms_only.event_kinds = frozenset({"alarm"})  # type: ignore[attr-defined]
    ctl.listeners.append(alarms_only)
    ctl.listeners.append(everything)
    ctl._raise(AlarmKind.PHARMACY_REQUEST, "bag 1")
    ctl._clear(AlarmKind.PHARMACY_REQUEST)
    assert seen == [("alarm", "alarm"), ("all", "alarm"), ("all", "alarm_cleared")]
    seen.clear()
    ctl.listeners[0] = everything  # replaced in place (the console swaps the nurse)
    ctl._raise(AlarmKind.PHARMACY_REQUEST, "bag 1")
    assert seen == [("all", "alarm"), ("all", "alarm")]


def test_clearing_the_newest_of_two_active_alarms_of_a_kind_finds_the_older():
    """A replayed old log may hold two active alarms of one kind; the board keeps both."""
    board = AlarmBoard()
    old = Alarm(1, AlarmKind.OCCLUSION, 10.0)
    new = Alarm(2, AlarmKind.OCCLUSION, 20.0)
    board.add(old)
    board.add(new)
    assert board.find_active("occlusion") is new
    board.clear(new, 30.0)
    assert board.find_active("occlusion") is old
    board.clear(old, 40.0)
    assert board.find_active("occlusion") is None and old.cleared_s == 40.0


_KINDS = [AlarmKind.OCCLUSION, AlarmKind.BAG_EMPTY, AlarmKind.PREPARE_BAG_CHANGE]


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(0, len(_KINDS) - 1), st.integers(0, 30)),
        max_size=60,
    )
)
def test_alarm_board_answers_as_a_scan_of_every_alarm_would(steps):
    """The per-kind bookkeeping (no pass over the run's alarms per clear) agrees with the
    plain definition: active = not cleared; newest active per kind; clearing any alarm,
    twice or in any order."""
    board = AlarmBoard()
    for t, (raise_, k, pick) in enumerate(steps):
        if raise_ or not board.all:
            board.add(Alarm(len(board.all) + 1, _KINDS[k], float(t)))
        else:
            board.clear(board.all[pick % len(board.all)], float(t))
        active = [a for a in board.all if a.cleared_s is None]
        assert [a.id for a in board.active()] == [
            a.id
            for a in sorted(
                active,
                key=lambda a: (PRIORITY_RANK[a.priority], not a.spec.flow_stopping, a.id),
            )
        ]
        for kind in _KINDS:
            newest = next((a for a in reversed(board.all) if a.kind == kind and a in active), None)
            assert board.find_active(kind) is newest
