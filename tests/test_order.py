"""The pharmacy build: the protocol's worked examples, rounding traps, fallbacks, limits."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpctl.cli import main
from pumpctl.errors import InputError, OverrideRequiredError, RefusedError
from pumpctl.order import Order, build, round_half_up


def order(dose: str, weight: str = "70", **kw: object) -> Order:
    return Order(Decimal(dose), Decimal(weight), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dose", "bag", "interval", "mg", "rate"),
    [
        ("300", 100, 8, 100, "12.5"),  # protocol worked example
        ("600", 100, 8, 200, "12.5"),  # dose change keeps the rate
        ("400", 100, 6, 100, "16.7"),  # q6h rounds nearer
    ],
)
def test_protocol_worked_examples(setting, dose, bag, interval, mg, rate):
    b = build(order(dose, bag_ml=bag), setting)
    assert (b.interval_h, b.mg_per_bag, b.bag_ml, b.rate_ml_per_h) == (
        interval,
        Decimal(mg),
        bag,
        Decimal(rate),
    )
    assert b.vtbi_ml == bag
    assert b.limit == "ok"


def test_round_half_up_is_not_bankers():
    assert round_half_up(Decimal("2.5")) == 3
    assert round_half_up(Decimal("0.5")) == 1
    assert round_half_up(Decimal("6.25"), Decimal("0.1")) == Decimal("6.3")
    assert round_half_up(Decimal("31.25"), Decimal("0.1")) == Decimal("31.3")


@pytest.mark.parametrize(
    ("dose", "interval", "mg", "nominal"),
    [
        ("350", 8, 100, 300),  # 300 and 400 tie at 50 mg, same bag: less fluid a day (q8h)
        ("750", 6, 200, 800),  # q8h 250 mg -> 2.5 -> 3 syringes (900); q6h 800 nearer
        ("450", 6, 100, 400),  # q8h 1.5 -> 2 syringes (600); q6h 400 nearer
        ("250", 8, 100, 300),  # below one syringe a bag: still one
        ("1050", 8, 400, 1200),  # 3.5 -> 4 syringes (banker's would give 4 too: 1200 vs q6h)
        ("900", 8, 300, 900),
        ("1400", 8, 500, 1500),  # q8h 466.7 -> 500 (1500, 100 off); q6h 350 -> 400 (1600)
    ],
)
def test_interval_choice_and_half_up(setting, dose, interval, mg, nominal):
    o = order(dose, bag_ml=250 if int(dose) > 1000 else 100, confirm_deviation="ok", operator="ph")
    b = build(o, setting)
    assert (b.interval_h, b.mg_per_bag, b.nominal_mg_per_day) == (
        interval,
        Decimal(mg),
        Decimal(nominal),
    )
    dev = (Decimal(nominal) - Decimal(dose)) / Decimal(dose) * 100
    assert b.deviation_pct == dev
    assert b.needs_confirmation == (abs(dev) > 10)


@pytest.mark.parametrize(
    ("dose", "below", "above"),
    [
        ("100", None, (300, 8, 100, 100)),
        ("350", (300, 8, 100, 100), (400, 6, 100, 100)),
        ("700", (600, 8, 200, 100), (800, 6, 200, 100)),
    ],
)
def test_large_deviation_needs_confirmation_and_lists_alternatives(setting, dose, below, above):
    with pytest.raises(OverrideRequiredError, match="confirm-deviation") as exc:
        build(order(dose, bag_ml=100), setting)
    b = exc.value.build  # type: ignore[attr-defined]
    assert b.needs_confirmation
    alts = [
        (a["mg_per_day"], a["interval_h"], a["mg_per_bag"], a["bag_ml"]) for a in b.alternatives
    ]
    assert alts == [x for x in (below, above) if x is not None]
    for a in b.alternatives:
        want = (Decimal(a["mg_per_day"]) - Decimal(dose)) / Decimal(dose) * 100
        assert abs(Decimal(str(a["deviation_pct"])) - want) <= Decimal("0.05")
    ok = build(order(dose, bag_ml=100, confirm_deviation="SC dose", operator="ph1"), setting)
    assert ok.deviation_confirmation == "SC dose" and ok.operator == "ph1"


def test_small_deviation_is_silent(setting):
    b = build(order("560", bag_ml=100), setting)  # 600: nominal +7.1 %, real 548.7 -2.0 %
    assert not b.needs_confirmation and abs(b.deviation_pct) < 10
    assert abs(b.real_deviation_pct) < 10


def test_small_nominal_but_large_real_deviation_needs_confirmation(setting):
    # 1700 in 100 mL: q6h 1600 nominal (-5.9 %) but 400 mg in 110.68 mL at 16.7 mL/h
    # really gives 1448.5 mg/day (-14.8 %): not silent.
    with pytest.raises(OverrideRequiredError, match=r"real dose \(1448.5 mg/day\) is -14.8%"):
        build(order("1700", bag_ml=100), setting)


def test_tie_keeps_the_ordered_bag_and_says_why(setting):
    # 1700 in 100 mL: q8h 600 mg needs 250 mL (1800/day); q6h 400 mg fits 100 mL (1600).
    b = build(order("1700", bag_ml=100, confirm_deviation="x", operator="ph"), setting)
    assert (b.interval_h, b.mg_per_bag, b.bag_ml) == (6, 400, 100)
    assert any("keeps the ordered bag size" in m for m in b.messages)


def test_tie_same_bag_prefers_less_fluid(setting):
    b = build(order("350", bag_ml=100, confirm_deviation="x", operator="ph"), setting)
    assert b.interval_h == 8 and any("less fluid" in m for m in b.messages)


def test_never_rounds_up_across_the_hard_limit(setting):
    # 1650 mg/day at 33 kg, q8h forced: 1650/3 = 550 -> 600 mg (1800 nominal, 1675 real
    # = 2.12 mg/kg/h, over the hard limit) while 500 x 3 = 1500 is -9.1 %: within the
    # deviation limit by its nominal figure, so it rounds down. Its real dose (1399.7
    # mg/day, 31.3 mL/h) is -15.2 %: the message does not claim "within", and the
    # pharmacist confirms.
    with pytest.raises(OverrideRequiredError, match="real dose"):
        build(order("1650", weight="33", bag_ml=250, interval_h=8), setting)
    o = order("1650", weight="33", bag_ml=250, interval_h=8, confirm_deviation="x", operator="p")
    b = build(o, setting)
    assert b.nominal_mg_per_day == 1500 and b.limit == "ok"
    cross = [m for m in b.messages if "would cross the hard limit" in m]
    assert cross and "within" not in cross[0] and "real -15.2%" in cross[0]
    assert b.needs_confirmation


def test_real_figures_by_hand(setting):
    b = build(order("600", bag_ml=100), setting)
    content = Decimal(100) + Decimal(8) + 2 * Decimal("0.67")  # diluent + overfill + drug
    infused = Decimal(100) * Decimal(200) / content
    assert b.final_volume_ml == content
    assert abs(b.infused_mg_per_bag - infused) < Decimal("0.001")
    assert abs(b.achieved_mg_per_day - 3 * infused) < Decimal("0.001")
    assert b.nominal_mg_per_day == 600 and b.achieved_mg_per_day < 600


def test_lower_hard_limit_caught_before_rounding(setting):
    with pytest.raises(RefusedError, match="lower hard"):
        build(order("1", bag_ml=100), setting)


def test_pediatric_per_kg_partial_syringes():
    from pumpctl.setting import load_setting

    ped = load_setting("anakinra_continuous_pediatric")
    b = build(Order.per_kg(Decimal(12), Decimal(10)), ped)  # 120 mg/day
    assert b.mg_per_bag == 40 and b.nominal_mg_per_day == 120  # 40 mg = 0.4 syringe
    assert b.drug_volume_ml == Decimal("0.268")
    assert b.bag_ml == 25
    with pytest.raises(InputError, match="mg/day only"):
        build(Order.per_kg(Decimal(12), Decimal(10)), load_setting("anakinra_continuous"))
    with pytest.raises(RefusedError, match="hard"):
        build(Order.per_kg(Decimal(60), Decimal(10)), ped)  # 2.5 mg/kg/h


def test_rate_half_up_and_real_duration(setting):
    b = build(order("300", bag_ml=50), setting)
    assert b.rate_ml_per_h == Decimal("6.3")  # 50/8 = 6.25 -> 6.3, not 6.2
    assert b.bag_duration_h == Decimal(50) / Decimal("6.3")
    assert any("really lasts" in m for m in b.messages)


def test_final_volume_and_real_concentration(setting):
    b = build(order("600"), setting)
    assert b.syringes_per_bag == 2
    assert b.final_volume_ml == Decimal("109.34")  # 100 + 8 overfill + 1.34 drug
    assert b.real_concentration_mg_per_ml == Decimal(200) / Decimal("109.34")
    assert b.concentration_mg_per_ml == 2


def test_bag_size_fallback_nearest_fitting(setting):
    b = build(order("300", bag_ml=250), setting)  # 100 mg / 250 mL = 0.4 mg/mL
    assert b.bag_ml == 100
    assert b.ordered_bag_ml == 250
    assert any("using 100 mL" in m for m in b.messages)


def test_large_dose_falls_back_to_bigger_bag(setting):
    b = build(order("1800", weight="100", bag_ml=50), setting)  # 600 mg/bag: 12 mg/mL in 50
    assert b.bag_ml == 250  # 100 mL gives 6 mg/mL, 250 mL gives 2.4
    assert b.concentration_mg_per_ml == Decimal("2.4")


def test_other_interval_when_no_size_fits(setting):
    # 4500 mg/day: q8h 1500 mg/bag needs 300 mL at 5 mg/mL; q6h 1100 mg fits 250 mL.
    o = order(
        "4500",
        weight="150",
        bag_ml=250,
        override_reason="MAS refractory",
        confirm_deviation="confirmed",
        operator="rn1",
    )
    b = build(o, setting)
    assert (b.interval_h, b.mg_per_bag, b.bag_ml) == (6, Decimal(1100), 250)
    assert any("tried q6h" in m for m in b.messages)


def test_refused_when_no_size_fits_at_either_interval(setting):
    with pytest.raises(RefusedError, match="needs more than 250 mL at 5 mg/mL"):
        build(order("6000", weight="300", bag_ml=250), setting)


def test_forced_interval_is_kept(setting):
    b = build(order("400", interval_h=8, confirm_deviation="q8h only", operator="ph"), setting)
    assert (b.interval_h, b.mg_per_bag, b.nominal_mg_per_day) == (8, 100, 300)


@pytest.mark.parametrize(
    ("dose", "weight", "limit"),
    [
        ("2400", "70", "ok"),  # at the soft limit: inclusive
        ("2700", "70", "soft"),
        ("2400", "50", "ok"),  # exactly 2 mg/kg/h: inclusive
        ("2400", "45", "hard"),  # real 2219 mg/day = 2.05 mg/kg/h
        ("1500", "28", "hard"),  # real 1387 mg/day = 2.06 mg/kg/h
        ("3000", "100", "soft"),
    ],
)
def test_limits_by_weight(setting, dose, weight, limit):
    o = order(dose, weight=weight, bag_ml=250, override_reason="needed", operator="dr1")
    if limit == "hard":
        with pytest.raises(RefusedError, match="hard limit"):
            build(o, setting)
    else:
        assert build(o, setting).limit == limit


def test_soft_limit_needs_reason(setting):
    with pytest.raises(OverrideRequiredError):
        build(order("3000", weight="100", bag_ml=250), setting)
    with pytest.raises(InputError, match="operator"):
        build(order("3000", weight="100", bag_ml=250, override_reason="x"), setting)


def test_limit_checked_on_achieved_not_ordered(setting):
    with pytest.raises(OverrideRequiredError):  # nominal 2700, real 2490: above soft
        build(order("2600", bag_ml=250), setting)
    b = build(order("2450", bag_ml=250), setting)  # nominal 2400, real 2219: not above soft
    assert b.nominal_mg_per_day == 2400 and b.limit == "ok"


@pytest.mark.parametrize(
    ("dose", "weight", "bag"),
    [
        ("0", "70", 100),
        ("-5", "70", 100),
        ("300", "0", 100),
        ("300", "5000", 100),
        ("300", "70", 75),
    ],
)
def test_absurd_input(setting, dose, weight, bag):
    with pytest.raises(InputError):
        build(order(dose, weight=weight, bag_ml=bag), setting)


@given(
    dose=st.integers(100, 2400), weight=st.integers(60, 200), bag=st.sampled_from([50, 100, 250])
)
def test_build_invariants(setting, dose, weight, bag):
    o = order(
        str(dose),
        weight=str(weight),
        bag_ml=bag,
        confirm_deviation="ok",
        operator="ph",
        override_reason="ok",
    )
    b = build(o, setting)
    assert b.mg_per_bag % 100 == 0 and b.mg_per_bag >= 100
    assert 1 <= b.mg_per_bag / b.bag_ml <= 5
    assert b.nominal_mg_per_day == b.bags_per_day * b.mg_per_bag
    assert b.needs_confirmation == (abs(b.deviation_pct) > 10 or abs(b.real_deviation_pct) > 10)
    real = b.rate_ml_per_h * 24 * b.mg_per_bag / b.final_volume_ml
    assert abs(b.achieved_mg_per_day - real) < Decimal("0.000001")
    assert abs(b.rate_ml_per_h - Decimal(b.bag_ml) / b.interval_h) <= Decimal("0.05")
    other = 6 if b.interval_h == 8 else 8
    from pumpctl.order import mg_per_bag_for

    alt = (24 // other) * mg_per_bag_for(Decimal(dose), 24 // other, Decimal(100))
    if not any("tried" in m or "using" in m or "cross" in m for m in b.messages):
        assert abs(b.nominal_mg_per_day - dose) <= abs(alt - dose)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_fields(capsys):
    code, out, _ = run_cli(
        capsys,
        "build",
        "--dose-mg-per-day",
        "600",
        "--weight-kg",
        "70",
        "--bag-ml",
        "100",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    for key in [
        "ordered_mg_per_day",
        "achieved_mg_per_day",
        "nominal_mg_per_day",
        "deviation_pct",
        "needs_confirmation",
        "alternatives",
        "interval_h",
        "bags_per_day",
        "mg_per_bag",
        "syringes_per_bag",
        "bag_ml",
        "final_volume_ml",
        "concentration_mg_per_ml",
        "real_concentration_mg_per_ml",
        "rate_ml_per_h",
        "vtbi_ml",
        "bag_duration_h",
        "dose_mg_per_kg_per_h",
        "limit",
        "setting_version",
        "messages",
    ]:
        assert key in d, key
    assert d["rate_ml_per_h"] == 12.5 and d["mg_per_bag"] == 200 and d["limit"] == "ok"
    assert d["needs_confirmation"] is False and d["nominal_mg_per_day"] == 600
    assert d["achieved_mg_per_day"] == pytest.approx(3 * 100 * 200 / 109.34, abs=1e-3)
    assert d["setting_version"].startswith("sha256:")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--dose-mg-per-day", "abc", "--weight-kg", "70"], 2),
        (["--dose-mg-per-day", "300", "--weight-kg", "nan"], 2),
        (["--dose-mg-per-day", "300", "--weight-kg", "70", "--bag-ml", "75"], 2),
        (["--dose-mg-per-day", "300", "--weight-kg", "70", "--interval-h", "12"], 2),
        (["--dose-mg-per-day", "300"], 2),
        (["--dose-mg-per-day", "1500", "--weight-kg", "28"], 3),
        (["--dose-mg-per-day", "100", "--weight-kg", "70"], 4),  # +200 %: confirm
        (
            [
                "--dose-mg-per-day",
                "100",
                "--weight-kg",
                "70",
                "--confirm-deviation",
                "SC dose",
                "--operator",
                "ph1",
            ],
            0,
        ),
        (["--dose-mg-per-day", "3000", "--weight-kg", "100"], 4),
        (["--dose-mg-per-day", "3000", "--weight-kg", "100", "--override-reason", "x"], 2),
        (
            [
                "--dose-mg-per-day",
                "3000",
                "--weight-kg",
                "100",
                "--override-reason",
                "MAS",
                "--operator",
                "dr1",
            ],
            0,
        ),
    ],
)
def test_cli_exit_codes(capsys, argv, code):
    try:
        got = main(["build", *argv])
    except SystemExit as exc:  # argparse: missing or malformed flag
        got = exc.code
    err = capsys.readouterr().err
    assert got == code
    if code:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "code", "limit"),
    [
        (["--dose-mg-per-day", "1500", "--weight-kg", "28"], 3, "hard"),
        (["--dose-mg-per-day", "3000", "--weight-kg", "100", "--bag-ml", "250"], 4, "soft"),
        (["--dose-mg-per-day", "9000", "--weight-kg", "300"], 3, None),  # no bag fits
    ],
)
def test_cli_json_on_refusal_still_reports_the_limit(capsys, argv, code, limit):
    assert main(["build", *argv, "--json"]) == code
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["limit"] == limit and out["refused"]
    assert len(captured.err.strip().splitlines()) == 1
