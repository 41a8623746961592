"""Shipped scenarios, scenario validation, simulate and campaign commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pumpctl.cli import main
from pumpctl.errors import InputError
from pumpctl.sim.campaign import run_campaign, summarise
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario
from tests.helpers import write_scenario

EXAMPLES = sorted(p for p in Path("examples").glob("*.toml") if "campaign" not in p.name)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_shipped_scenarios_pass_their_expectations(path):
    r = run_scenario(load_scenario(path), trace=False).result
    assert r["verdict"] == "pass", r["failed_expectations"]


def test_occlusion_gap_counts_from_the_line_closing():
    r = run_scenario(load_scenario("examples/occlusion.toml")).result
    (gap,) = r["interruptions"]
    assert gap["cause"] == "occlusion" and gap["start_h"] == 30.0
    assert gap["length_s"] == pytest.approx(300.0, abs=1e-3)
    (alarm,) = [a for a in r["alarms"] if a["kind"] == "occlusion"]
    assert alarm["priority"] == "high"
    assert alarm["t_h"] == pytest.approx(30 + 60 / 3600, abs=1e-6)  # pump's time to alarm


def test_pharmacy_late_escalates_and_measures_gap():
    run = run_scenario(load_scenario("examples/pharmacy_late.toml"))
    r = run.result
    kinds = [a["kind"] for a in r["alarms"]]
    i_bed, i_ready, i_empty = (
        kinds.index(k) for k in ("next_bag_not_at_bedside", "no_bag_ready", "bag_empty")
    )
    assert i_bed < i_ready < i_empty
    (gap,) = r["interruptions"]
    empty = r["alarms"][i_empty]
    assert gap["start_h"] == pytest.approx(empty["t_h"], abs=1e-6)
    # the late request: 180 min late + 10 compound + 15 deliver, then a 1 min swap
    req = next(e for e in run.log.events() if e.event == "pharmacy_request" and e.t_s >= 15 * 3600)
    want_end_s = req.t_s + (180 + 10 + 15) * 60 + 60
    assert gap["end_h"] * 3600 == pytest.approx(want_end_s, abs=1.0)
    lead_min = req.detail["lead_min"]
    assert gap["length_s"] == pytest.approx((180 + 10 + 15 + 1 - lead_min) * 60, abs=1.0)


def test_titration_on_day_two_rate_now_then_standard_bags():
    run = run_scenario(load_scenario("examples/titration_day2.toml"))
    r = run.result
    (tit,) = r["titrations"]
    assert tit["mode"] == "rate_now"
    t_s = tit["t_h"] * 3600
    # the new dose rate from a 200 mg bag: 818.1 mg/day real / 24 / its concentration
    adjusted = round(3 * 300 * 100 / (100 + 8 + 3 * 0.67) / 24 / (200 / 109.34), 1)
    assert adjusted == pytest.approx(18.6)
    running = run.controller.s.bags
    for b in running.values():
        if b.hung_s is None:
            continue
        if b.requested_s > t_s:  # made after the order: the standard bag at 12.5 mL/h
            assert (b.recipe.mg, b.rate_ml_per_h) == (300, 12.5)
        elif b.hung_s <= t_s and (b.ended_s or 1e9) > t_s or b.hung_s > t_s:
            # running at the titration, or made before it: the new dose rate at once
            assert (b.recipe.mg, b.rate_ml_per_h) == (200, pytest.approx(adjusted)), b.n
        else:
            assert (b.recipe.mg, b.rate_ml_per_h) == (200, 12.5)
    assert r["interrupted_s"] == 0


def test_syringe_pump_changes_are_measured_gaps():
    r = run_scenario(load_scenario("examples/syringe_pump_ne1000.toml")).result
    assert [g["cause"] for g in r["interruptions"]] == ["bag_change"] * (len(r["bags"]) - 1)
    assert all(g["length_s"] == pytest.approx(60.0, abs=1e-6) for g in r["interruptions"])


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("\n[nurse]\nresponse_min = -1\nswap_s = 60\n", "nurse.response_min"),
        ("\n[nurse]\nresponse_min = 2\nswap_s = 60\ncoffee = 1\n", "nurse.coffee"),
        ('\n[[faults]]\nat_h = 3\nkind = "meteor"\nduration_min = 1\n', "faults[0].kind"),
        ('\n[[faults]]\nat_h = 300\nkind = "occlusion"\nduration_min = 1\n', "faults[0].at_h"),
        (
            '\n[pharmacy]\ncompound_min = { dist = "gamma", k = 2 }\ndeliver_min = 1\n',
            "pharmacy.compound_min.dist",
        ),
        (
            '\n[pharmacy]\ncompound_min = { dist = "lognormal", median = 5 }\ndeliver_min = 1\n',
            "pharmacy.compound_min.p95",
        ),
        (
            '\n[[faults]]\nat_h = { dist = "uniform", min = 70, max = 100 }\nkind = "occlusion"\n'
            "duration_min = 1\n",
            "faults[0].at_h.max",
        ),
        (
            '\n[[faults]]\nat_h = { dist = "triangular", min = 1, mode = 2, max = 73 }\n'
            'kind = "occlusion"\nduration_min = 1\n',
            "faults[0].at_h.max",
        ),
        (
            '\n[[faults]]\nat_h = { dist = "normal", mean = 30, sd = 1 }\nkind = "occlusion"\n'
            "duration_min = 1\n",
            "faults[0].at_h.dist",
        ),
        ("\n[expect]\nmax_start_h = 100\n", "expect.max_start_h"),
        ('\n[expect]\nalarms = ["bag_gone"]\n', "expect.alarms[0]"),
        ('\n[expect]\nmax_interrupted_s = "none"\n', "expect.max_interrupted_s"),
    ],
)
def test_bad_scenarios_name_file_and_key(tmp_path, capsys, extra, key):
    path = write_scenario(tmp_path, extra)
    with pytest.raises(InputError, match=re.escape(key)):
        load_scenario(path)
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and key in err[0]


def test_missing_section_and_bad_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[scenario]\nduration_h = 1\n")
    with pytest.raises(InputError, match="missing key 'scenario.seed'"):
        load_scenario(p)
    p.write_text("[scenario\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_scenario(p)


def test_simulate_json_and_out(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["simulate", "examples/anakinra_72h.toml", "--json", "--out", str(out)])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    for key in [
        "verdict",
        "failed_expectations",
        "duration_h",
        "ordered_mg",
        "delivered_mg",
        "dose_error_pct",
        "interrupted_s",
        "interruptions",
        "bags",
        "alarms",
        "setting_version",
    ]:
        assert key in d
    assert d["verdict"] == "pass" and len(d["bags"]) == 10 and d["interrupted_s"] == 0
    assert set(d["bags"][0]) >= {"n", "hung_h", "end_h", "mg", "ml"}
    assert set(d["alarms"][0]) >= {"t_h", "kind", "priority", "acknowledged_h"}
    names = {p.name for p in out.iterdir()}
    assert {
        "report.json",
        "report.md",
        "events.db",
        "delivery.png",
        "bags.png",
        "alarms.png",
        "flow_accuracy.png",
    } <= names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d["flow_accuracy"]["windows_min"] == [2, 5, 11, 19, 31]
    from pumpctl.eventlog import EventLog

    with EventLog(out / "events.db") as log:
        assert len(log.events()) == d["events"]


def test_simulate_exit_1_on_failed_expectation(tmp_path, capsys):
    path = write_scenario(
        tmp_path,
        """
[[faults]]
at_h = 10
kind = "occlusion"
duration_min = 3
""",
    )
    assert main(["simulate", str(path), "--json", "--no-plots"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] == "fail" and "interrupted" in d["failed_expectations"][0]


def test_campaign_same_summary_with_one_or_two_workers(tmp_path):
    sc = load_scenario("examples/campaign_staffing.toml")
    one = summarise(sc, run_campaign(sc, 12, workers=1, seed=7), 7)
    two = summarise(sc, run_campaign(sc, 12, workers=2, seed=7), 7)
    assert one == two
    worst = one["worst_runs"][0]
    again = run_scenario(sc, worst["seed"], trace=False).result
    assert again["interrupted_s"] == worst["interrupted_s"]


def test_campaign_cli_writes_summary(tmp_path, capsys):
    out = tmp_path / "c"
    main(
        [
            "campaign",
            "examples/campaign_staffing.toml",
            "--runs",
            "6",
            "--workers",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--json",
        ]
    )
    d = json.loads(capsys.readouterr().out)
    assert d["runs"] == 6 and 0 <= d["share_interrupted"] <= 1
    assert {"p50", "p95", "max"} <= set(d["interrupted_s"])
    assert (out / "histograms.png").read_bytes()[:4] == b"\x89PNG"
    if (out / "runs.parquet").exists():  # runs are streamed to Parquet when pyarrow is there
        import pyarrow.parquet as pq

        assert pq.read_table(out / "runs.parquet").num_rows == 6
    else:
        assert len((out / "runs.csv").read_text().splitlines()) == 7


def test_titration_to_q6h_reprojects_with_the_new_rate(tmp_path):
    path = write_scenario(
        tmp_path,
        """
[[titrations]]
at_h = 20
dose_mg_per_day = 400
""",
    )
    run = run_scenario(load_scenario(path), trace=False)
    bags = run.controller.bags
    new = [b for b in bags if b.rate_ml_per_h == 16.7]
    assert new and all(b.mg == 100 for b in new)
    projections = [e for e in run.log.events() if e.event == "projection"]
    for b in new[:-1]:
        # the watchdog projected the real end from the new rate: 100 mL / 16.7 mL/h
        (p,) = [e for e in projections if e.detail["bag"] == b.n]
        assert p.detail["end_s"] - b.hung_s == pytest.approx(100 / 16.7 * 3600, abs=1e-3)
        lead = run.scenario.hang_lead_s
        assert b.ended_s - b.hung_s == pytest.approx(100 / 16.7 * 3600 - lead, abs=1e-3)
    assert run.result["interrupted_s"] == 0


def test_a_start_refused_by_an_occluded_line_is_tried_again(tmp_path):
    """The line is occluded when the nurse presses start: the pump refuses, she checks
    the line and tries again; the infusion starts once the occlusion is gone."""
    extra = (
        '[[faults]]\nkind = "occlusion"\nat_h = 0.1\nduration_min = 60\n'
        "[expect]\nmax_interrupted_s = 0\n"
    )
    path = write_scenario(tmp_path, extra, duration_h=6)
    run = run_scenario(load_scenario(path))
    r = run.result
    refusals = [e for e in run.log.events() if e.event == "refused"]
    assert refusals and all(e.detail["request"] == "start" for e in refusals)
    assert 1.1 <= r["start_h"] <= 1.1 + 0.5  # after the occlusion (0.1 h + 60 min)
    assert r["verdict"] == "pass" and r["interrupted_s"] == 0


def test_relay_hands_over_a_syringe_slowed_past_its_beyond_use_time(tmp_path):
    """Two pumps in relay: a dose decrease slows the running syringe past its beyond-use
    time; at that time the loaded idle pump takes over (no drug past it, no gap)."""
    text = (Path(__file__).parent.parent / "examples" / "syringe_relay_ne1000.toml").read_text()
    text += "\n[[titrations]]\nat_h = 10\ndose_mg_per_day = 200\n"
    text += 'confirm_deviation = "low dose on purpose"\noperator = "ph1"\n'
    path = tmp_path / "relay_down.toml"
    path.write_text(text)  # setting and pump are shipped names
    run = run_scenario(load_scenario(path))
    slowed = [e.detail for e in run.log.events() if e.event == "projection"]
    slowed = [d for d in slowed if "change_by_s" in d]
    assert slowed, "the titration must slow a syringe past its beyond-use time"
    n, change_by = slowed[0]["bag"], slowed[0]["change_by_s"]
    flowing = [
        e.detail
        for e in run.log.events()
        if e.event == "delivery_segment"
        and e.detail.get("bag") == f"bag {n}"
        and e.detail["actual_ml"] > 0
    ]
    assert max(d["end_s"] for d in flowing) <= change_by + 1.0
    assert run.result["interrupted_s"] == 0


def test_report_headline_gives_the_dose_beside_a_gapless_flow():
    """No gap is not "the ordered dose": the headline says how far delivery is from the order."""
    from pumpctl.report import markdown

    r = run_scenario(load_scenario(Path("examples/anakinra_72h.toml")), trace=False).result
    head = markdown(r).splitlines()[2]
    assert r["interrupted_s"] == 0 and r["dose_error_pct"] < -5  # the VTBI leaves ~8 % behind
    assert "No interruption" in head and "ordered rate" not in head
    assert f"{r['dose_error_pct']:+.2f}% vs ordered" in head
    assert f"Delivered {r['delivered_mg']:.1f} mg" in head


def test_report_names_what_was_left_in_the_bags_beside_the_wasted_vtbi():
    """Wasted (VTBI not run) and residual (all left in a bag) are two figures, both shown."""
    from pumpctl.report import markdown

    r = run_scenario(load_scenario(Path("examples/anakinra_72h.toml")), trace=False).result
    ended = [b for b in r["bags"] if b["residual_mg"] is not None]
    left = sum(b["residual_mg"] for b in ended)
    worst = 1 + r["stated_accuracy_pct"] / 100  # the most the pump can push per mL counted
    for b in ended[1:]:  # beyond the VTBI (overfill, syringe volume) stays in the bag (bag 1
        # gave the line its priming volume too)
        assert b["residual_mg"] >= (b["ml"] - b["vtbi_ml"] * worst) * b["conc_mg_per_ml"] > 0
    assert left > r["wasted_mg"] > 0
    row = next(line for line in markdown(r).splitlines() if line.startswith("| drug wasted"))
    assert f"{r['wasted_mg']:.1f} mg of the programmed VTBI" in row
    assert f"left in the bags taken down {left:.1f} mg" in row


@pytest.mark.parametrize(
    ("dose", "extra", "why"),
    [
        (3000, "", 'give override_reason = "..." and operator = "..." in the [[titrations]]'),
        (5000, 'override_reason = "x"\noperator = "md1"\n', "no bag size fits"),
        (100, "", 'give confirm_deviation = "..." and operator = "..." in the [[titrations]]'),
    ],
)
def test_a_titration_the_build_refuses_is_bad_input(tmp_path, capsys, dose, extra, why):
    """Built before the run like the first order: a refusal or a missing override is one
    line naming the file and the titration (exit 2), not a silently dropped order."""
    extra = "\n[[titrations]]\nat_h = 1\ndose_mg_per_day = 600\n" + (
        f"\n[[titrations]]\nat_h = 10\ndose_mg_per_day = {dose}\n{extra}"
    )
    path = write_scenario(tmp_path, extra)
    assert main(["simulate", str(path), "--no-plots", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert str(path) in line and f"titrations[1] (at_h 10, {dose} mg/day)" in line
    assert why in line


def test_a_titration_with_its_override_and_confirmation_runs(tmp_path):
    extra = (
        "\n[[titrations]]\nat_h = 10\ndose_mg_per_day = 3000\n"
        'override_reason = "severe flare"\noperator = "md1"\n'
        "\n[[titrations]]\nat_h = 20\ndose_mg_per_day = 100\n"
        'confirm_deviation = "nearest achievable"\noperator = "ph1"\n'
    )
    run = run_scenario(load_scenario(write_scenario(tmp_path, extra, duration_h=30)), trace=False)
    modes = [t["mode"] for t in run.result["titrations"]]
    assert len(modes) == 2 and "refused" not in modes


def test_a_titration_refused_when_it_fires_fails_the_run(tmp_path, capsys, monkeypatch):
    """Defence in depth: should the controller refuse a titration at run time, the run
    fails and the report says so (JSON and Markdown)."""
    import pumpctl.sim.runner as runner
    from pumpctl.report import markdown

    monkeypatch.setattr(runner, "check_titrations", lambda sc, setting: None)
    path = write_scenario(
        tmp_path, "\n[[titrations]]\nat_h = 10\ndose_mg_per_day = 3000\n", duration_h=24
    )
    r = run_scenario(load_scenario(path), trace=False).result
    assert r["verdict"] == "fail"
    (t,) = r["titrations"]
    assert t["t_h"] == 10.0 and t["dose_mg_per_day"] == 3000 and t["mode"] == "refused"
    assert "soft limit exceeded" in t["why"]
    (line,) = [f for f in r["failed_expectations"] if "titration" in f]
    assert line.startswith("titration at 10.00 h (3000 mg/day) refused: soft limit exceeded")
    assert "| 10.00 | 3000 | refused |" in markdown(r)
    assert main(["simulate", str(path), "--no-plots", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["titrations"][0]["mode"] == "refused"


@pytest.mark.parametrize(
    ("extra", "key", "need"),
    [
        ("\n[nurse]\nswap_s = 60\n", "nurse.response_min", "response_min and swap_s are"),
        ("\n[nurse]\nresponse_min = 2\n", "nurse.swap_s", "response_min and swap_s are"),
        (
            "\n[pharmacy]\ndeliver_min = 15\n",
            "pharmacy.compound_min",
            "compound_min and deliver_min are",
        ),
        (
            "\n[pharmacy]\ncompound_min = 10\n",
            "pharmacy.deliver_min",
            "compound_min and deliver_min are",
        ),
        ("\n[charge_nurse]\n", "charge_nurse.response_min", "response_min is"),
    ],
)
def test_a_staff_table_given_must_state_its_times(tmp_path, capsys, extra, key, need):
    """A staff table that is given has no silent defaults inside it; the line says which
    keys the table needs and what applies without the table."""
    path = write_scenario(tmp_path, extra)
    assert main(["simulate", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and f"missing key '{key}'" in line
    table = key.split(".")[0]
    assert f"{need} required when [{table}] is given; without [{table}]" in line


def test_staff_tables_left_out_take_the_documented_defaults(tmp_path):
    from pumpctl.sim.scenario import STAFF_DEFAULTS

    sc = load_scenario(write_scenario(tmp_path))
    got = {
        "compound_min": sc.compound_min.a,
        "deliver_min": sc.deliver_min.a,
        "response_min": sc.response_min.a,
        "swap_s": sc.swap_s.a,
        "prime_min": sc.prime_min.a,
        "hang_lead_s": sc.hang_lead_s,
    }
    want = {**STAFF_DEFAULTS["pharmacy"], **STAFF_DEFAULTS["nurse"]}
    assert got == want and sc.charge_response_min is None
    doc = Path("docs/scenarios.md").read_text()
    for table in ("pharmacy", "nurse"):
        for k in (
            ("compound_min", "deliver_min") if table == "pharmacy" else ("response_min", "swap_s")
        ):
            v = STAFF_DEFAULTS[table][k]
            assert f"| `{k}` |" in doc or f"| | `{k}` |" in doc
            assert f"required in the table; {v:g} without `[{table}]` |" in doc


def test_a_fault_time_distribution_within_the_run_is_accepted(tmp_path):
    extra = (
        '\n[[faults]]\nat_h = { dist = "uniform", min = 70, max = 72 }\nkind = "occlusion"\n'
        "duration_min = 1\n"
    )
    sc = load_scenario(write_scenario(tmp_path, extra))
    assert sc.faults[0].at_h.b == 72


def test_a_late_start_fails_max_start_h(tmp_path, capsys):
    """A first bag 10 h late gives no gap (the infusion had not started): only
    ``expect.max_start_h`` bounds the start."""
    extra = '\n[[faults]]\nat_h = 0\nkind = "pharmacy_late"\nduration_min = 600\n'
    path = write_scenario(tmp_path, extra + "\n[expect]\nmax_start_h = 1\n", duration_h=24)
    r = run_scenario(load_scenario(path), trace=False).result
    assert r["start_h"] > 10 and r["interrupted_s"] == 0
    assert r["verdict"] == "fail"
    assert (
        f"the infusion started at {r['start_h']:.2f} h, later than allowed 1 h"
        in (r["failed_expectations"])
    )
    ok = write_scenario(tmp_path, "\n[expect]\nmax_start_h = 1\n", duration_h=24, name="ok.toml")
    r = run_scenario(load_scenario(ok), trace=False).result
    assert r["start_h"] < 1 and r["verdict"] == "pass"
    assert main(["simulate", str(path), "--no-plots", "--json"]) == 1
    capsys.readouterr()


def test_a_failed_run_headline_ends_its_list_before_the_flow_sentence(tmp_path):
    from pumpctl.report import markdown

    path = write_scenario(tmp_path, "\n[expect]\nbags = 99\n")
    r = run_scenario(load_scenario(path), trace=False).result
    head = markdown(r).splitlines()[2]
    assert r["verdict"] == "fail" and head.startswith("**Expectations NOT met:** ")
    assert ". No interruption" in head or ". Interrupted" in head


def test_a_scenario_order_needing_an_override_names_the_order_keys(tmp_path, capsys):
    """The first order's refusal names the [order] keys, as a titration's names its own."""
    path = write_scenario(tmp_path, dose=3000)
    assert main(["simulate", str(path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert 'override_reason = "..."' in err and "in the [order] table" in err
    assert "--override-reason" not in err


def test_a_run_that_never_started_says_so_instead_of_no_interruption(tmp_path, monkeypatch):
    """A line that could never start has no gap to measure: the report must not say that
    flow never stopped, nor give an "ordered 0.0 mg"."""
    import pumpctl.sim.runner as runner
    from pumpctl.report import markdown

    monkeypatch.setattr(runner, "check_fits", lambda setting, model: None)  # let it through
    sc = write_scenario(tmp_path, duration_h=6, dose=30)
    text = sc.read_text().replace('"anakinra_continuous"', '"anakinra_continuous_pediatric"')
    sc.write_text(text.replace("bag_ml = 100", "bag_ml = 10").replace("= 70\n", "= 2.5\n"))
    r = runner.run_scenario(load_scenario(sc), trace=False).result
    assert r["start_h"] is None and r["delivered_mg"] == 0
    md = markdown(r)
    head = md.splitlines()[2]
    assert "never started" in head and "No interruption" not in head
    assert "| ordered | 0.0 mg |" not in md and "| ordered | - " in md
