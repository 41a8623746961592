"""The build's real dose is what the pump really runs: rate x 24 h x real concentration.

Hard limit on it, deviation on both the nominal and the real figure, bags never longer
than the setting's maximum bag interval, the label's handling times.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpctl.cli import main
from pumpctl.errors import InputError, OverrideRequiredError, RefusedError
from pumpctl.order import Order, build
from pumpctl.setting import load_setting

PED = "anakinra_continuous_pediatric"


def order(dose: str, weight: str = "70", **kw: object) -> Order:
    return Order(Decimal(dose), Decimal(weight), **kw)  # type: ignore[arg-type]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["build", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def per_h(b) -> Decimal:  # type: ignore[no-untyped-def]
    return b.rate_ml_per_h * b.real_concentration_mg_per_ml / b.weight_kg


def test_hard_limit_on_what_the_pump_runs_cli(capsys):
    # 6.3 mL/h x 200/56.34 mg/mL = 22.36 mg/h = 2.0148 mg/kg/h at 11.1 kg (was "1.9988, ok").
    code, out, err = run(
        capsys, "--dose-mg-per-day", "600", "--weight-kg", "11.1", "--bag-ml", "50"
    )
    assert code == 3 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "hard limit" in err and "2.0148 mg/kg/h" in err


def test_hard_limit_pediatric_neonate():
    ped = load_setting(PED)
    o = Order(Decimal(30), Decimal("0.63"), bag_ml=10, override_reason="neo", operator="p")
    with pytest.raises(RefusedError, match=r"2\.0498 mg/kg/h") as exc:
        build(o, ped)
    b = exc.value.build  # type: ignore[attr-defined]
    assert b.rate_ml_per_h == Decimal("1.3")
    assert abs(b.dose_mg_per_kg_per_h - per_h(b)) < Decimal("1e-20")


def test_mg_per_kg_per_h_is_rate_times_real_concentration(setting):
    b = build(order("400"), setting)  # q6h, 16.7 mL/h: the bag lasts 5.988 h, not 6
    assert b.rate_ml_per_h == Decimal("16.7")
    assert abs(b.dose_mg_per_kg_per_h - per_h(b)) < Decimal("1e-20")
    want = Decimal("16.7") * 24 * Decimal(100) / Decimal("108.67")
    assert abs(b.achieved_mg_per_day - want) < Decimal("1e-20")
    assert abs(b.dose_mg_per_kg_per_day - want / 70) < Decimal("1e-20")
    for a in b.alternatives:  # the alternatives' real figure is the pump's too
        if a["mg_per_day"] == 400:
            assert a["real_mg_per_day"] == pytest.approx(float(want), abs=0.05)


def test_exact_rate_is_bit_identical_to_the_bag_formula(setting):
    # 12.5 mL/h x 8 h = 100 mL: the real dose is exactly VTBI x conc x 3, as before.
    b = build(order("600"), setting)
    conc = Decimal(200) / Decimal("109.34")
    assert b.achieved_mg_per_day == Decimal(100) * conc * 3
    assert b.dose_mg_per_kg_per_h == Decimal(100) * conc * 3 / 24 / 70


@pytest.mark.parametrize(
    ("dose", "interval", "mg", "rate"),
    [("300", 8, 100, "12.5"), ("600", 8, 200, "12.5"), ("400", 6, 100, "16.7")],
)
def test_appendix_a_examples_unchanged(setting, dose, interval, mg, rate):
    b = build(order(dose, bag_ml=100), setting)
    assert (b.interval_h, b.mg_per_bag, b.bag_ml, b.rate_ml_per_h) == (
        interval,
        Decimal(mg),
        100,
        Decimal(rate),
    )
    assert not b.needs_confirmation and b.limit == "ok"


def test_real_deviation_needs_confirmation_cli(capsys):
    # 1000 mg/day: nominal 900 (-10.0 %, not more than 10) but real 818.1 (-18.2 %).
    code, out, err = run(capsys, "--dose-mg-per-day", "1000", "--weight-kg", "70")
    assert code == 4 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "real dose (818.1 mg/day) is -18.2%" in err
    assert "900 mg/day nominal (-10%), 818.1 real (-18.2%)" in err
    assert "--confirm-deviation REASON and --operator ID" in err
    code, out, err = run(
        capsys,
        "--dose-mg-per-day",
        "1000",
        "--weight-kg",
        "70",
        "--confirm-deviation",
        "SC equivalent",
        "--operator",
        "ph1",
    )
    assert code == 0 and err == ""
    assert "-10% nominal, -18.2% real confirmed by ph1" in out


def test_real_deviation_build_fields(setting):
    with pytest.raises(OverrideRequiredError) as exc:
        build(order("1000"), setting)
    b = exc.value.build  # type: ignore[attr-defined]
    assert b.needs_confirmation and b.deviation_pct == -10
    assert round(b.real_deviation_pct, 1) == Decimal("-18.2")
    note = next(m for m in b.messages if "more than 10%" in m)
    assert "real dose" in note and "nominal dose" not in note
    assert "1200 mg/day nominal (+20%), 1084.2 real (+8.4%)" in note


def test_eight_hour_cap_rounds_the_rate_up():
    ped = load_setting(PED)
    # 120 mg/day at q8h in 25 mL: 25/8 = 3.125 -> 3.1 half up would last 8 h 04 min.
    b = build(Order.per_kg(Decimal(12), Decimal(10)), ped)
    assert b.bag_ml == 25 and b.interval_h == 8
    assert b.rate_ml_per_h == Decimal("3.2")
    assert b.bag_duration_h == Decimal(25) / Decimal("3.2") <= 8
    assert any("rounded up to 3.2 mL/h" in m and "8 h maximum" in m for m in b.messages)
    assert abs(b.dose_mg_per_kg_per_h - per_h(b)) < Decimal("1e-20")


def test_rate_for_and_max_bag_duration(setting):
    ped = load_setting(PED)
    assert ped.rate_for(25, 8) == (Decimal("3.2"), True)
    assert ped.rate_for(50, 8) == (Decimal("6.3"), False)
    assert setting.rate_for(100, 6) == (Decimal("16.7"), False)
    assert ped.max_bag_duration_h() <= ped.bag_change_interval_max_h
    assert setting.max_bag_duration_h() == 8


def test_label_shows_beyond_use_and_hang_within(setting):
    label = build(order("600"), setting).label()
    assert "beyond use 12 h after compounding" in label
    assert "hang within 4 h 00 min of compounding" in label
    label = build(order("400"), setting).label()  # 100 mL at 16.7 mL/h: 5 h 59 min
    assert "hang within 6 h 01 min of compounding" in label
    b = build(order("300", bag_ml=50), setting)  # 6.3 mL/h: 7.9365 h
    assert b.hang_within_h == 12 - b.bag_duration_h
    assert "hang within 4 h 04 min of compounding" in b.label()


def test_override_reason_wording(setting):
    with pytest.raises(InputError, match="^an override reason needs an operator id"):
        build(order("3000", weight="100", bag_ml=250, override_reason="x"), setting)
    with pytest.raises(InputError, match="^a deviation confirmation needs an operator id"):
        build(order("1000", confirm_deviation="x"), setting)


def test_lower_soft_limit_names_the_operator(setting):
    # 300 mg/day at 350 kg: 0.86 mg/kg/day, below the lower soft limit 1 mg/kg/day.
    with pytest.raises(OverrideRequiredError, match="lower soft.*--operator ID"):
        build(order("300", weight="350"), setting)


def test_exact_tie_is_not_called_nearer():
    ped = load_setting(PED)
    b = build(Order.per_kg(Decimal(12), Decimal(150)), ped)  # q6h 4 x 450 = q8h 3 x 600
    assert b.interval_h == 6
    assert not any("is nearer" in m for m in b.messages)
    assert any(m.startswith("tie: q6h (1800 mg/day) and q8h (1800 mg/day)") for m in b.messages)
    assert any("keeps the ordered bag size" in m for m in b.messages)


ORDERS = st.one_of(
    st.tuples(
        st.just("anakinra_continuous"),
        st.integers(100, 2600).map(Decimal),
        st.integers(40, 200).map(Decimal),
        st.sampled_from([50, 100, 250]),
    ),
    st.tuples(
        st.just(PED),
        st.integers(2, 34).map(Decimal),  # mg/kg/day
        st.decimals("0.6", "150", places=2),
        st.sampled_from([10, 25, 50, 100, 250]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(case=ORDERS)
def test_real_dose_properties(case):
    name, dose, weight, bag = case
    s = load_setting(name)
    kw = {"bag_ml": bag}
    o = (
        Order.per_kg(dose, weight, **kw)  # type: ignore[arg-type]
        if name == PED
        else Order(dose, weight, **kw)  # type: ignore[arg-type]
    )
    try:
        b = build(o, s)
    except InputError:
        return
    except (RefusedError, OverrideRequiredError) as exc:
        b = getattr(exc, "build", None)
        if b is None:
            return
    # The hourly dose the limits see is what the pump runs.
    assert abs(b.dose_mg_per_kg_per_h - per_h(b)) < Decimal("1e-18")
    assert abs(b.achieved_mg_per_day - b.rate_ml_per_h * 24 * b.real_concentration_mg_per_ml) < (
        Decimal("1e-18")
    )
    # Never above the hard limit without a refusal, and never longer than the cap.
    assert b.bag_duration_h <= s.bag_change_interval_max_h
    hard = s.limits["upper_hard"]
    if b.limit != "hard":
        assert b.achieved_mg_per_day <= hard.mg_per_day(b.weight_kg)
    # A build that needs no confirmation is within the deviation limit on both bases.
    if not b.needs_confirmation:
        assert abs(b.deviation_pct) <= s.max_deviation_pct
        assert abs(b.real_deviation_pct) <= s.max_deviation_pct
