"""IEC 60601-2-24 start-up and trumpet curves: numbers, CSV reading, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpctl import cli
from pumpctl.errors import InputError
from pumpctl.trumpet import (
    WINDOWS_MIN,
    flow_from_cumulative,
    plot_trumpet,
    read_gravimetric_csv,
    trumpet,
)

EXAMPLE_CSV = Path(__file__).resolve().parents[1] / "examples" / "gravimetric_sample.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def constant_record(
    rate_ml_per_h: float, bias_pct: float = 0.0, duration_min: float = 120.0, step_min: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative volume of a pump running at rate * (1 + bias) from t = 0."""
    t = np.arange(0.0, duration_min + step_min / 2, step_min)
    return t, rate_ml_per_h * (1 + bias_pct / 100) * t / 60.0


def ripple_record(
    rate_ml_per_h: float, bias_pct: float, ripple_pct: float, period_min: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative volume for q(t) = r (1 + b) + a r sin(2 pi t / T), exact integral, 0-120 min."""
    t = np.arange(0.0, 120.25, 0.5)
    b, a = bias_pct / 100, ripple_pct / 100
    v = (
        rate_ml_per_h * (1 + b) * t
        + a
        * rate_ml_per_h
        * period_min
        / (2 * math.pi)
        * (1 - np.cos(2 * math.pi * t / period_min))
    ) / 60.0
    return t, v


def write(tmp_path: Path, text: str, name: str = "rec.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def use_trumpet_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI know only the trumpet command (other commands may not exist yet)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pumpctl.commands.trumpet",))


# --- the numbers ---------------------------------------------------------------------------


def test_perfect_constant_flow_has_zero_error() -> None:
    t, v = constant_record(12.5)
    res = trumpet(t, v, 12.5)
    assert res.windows_min == WINDOWS_MIN
    assert res.ep_max_pct == pytest.approx([0.0] * 5, abs=1e-9)
    assert res.ep_min_pct == pytest.approx([0.0] * 5, abs=1e-9)
    assert res.overall_error_pct == pytest.approx(0.0, abs=1e-9)
    # start-up curve: one flow per 0.5-min interval over the whole 120 min
    assert res.startup_t_min.shape == (240,)
    assert res.startup_t_min[0] == 0.5 and res.startup_t_min[-1] == 120.0
    assert np.allclose(res.startup_flow_ml_per_h, 12.5, rtol=0, atol=1e-9)


def test_plus_two_percent_bias_everywhere() -> None:
    t, v = constant_record(12.5, bias_pct=2.0)
    res = trumpet(t, v, 12.5)
    for hi, lo in zip(res.ep_max_pct, res.ep_min_pct, strict=True):
        assert abs(hi - 2.0) < 1e-9
        assert abs(lo - 2.0) < 1e-9
    assert abs(res.overall_error_pct - 2.0) < 1e-9


def test_sinusoidal_ripple_trumpet_narrows_and_is_symmetric() -> None:
    # r = 10 mL/h, bias +1 %, ripple 5 % of r with a 4-min period. The mean error over a window
    # of P min is b + (100 a T / (2 pi P)) [cos(2 pi t1/T) - cos(2 pi (t1 + P)/T)], whose extremes
    # b +/- 100 a T |sin(pi P / T)| / (pi P) fall on the 0.5-min grid for every IEC window.
    t, v = ripple_record(10.0, bias_pct=1.0, ripple_pct=5.0, period_min=4.0)
    res = trumpet(t, v, 10.0)
    hi = dict(zip(res.windows_min, res.ep_max_pct, strict=True))
    lo = dict(zip(res.windows_min, res.ep_min_pct, strict=True))
    # Hand value for P = 2 min: 2 cos(pi t1 / 2) peaks at 2, so
    # Ep = 1 +/- 5 * 4 / (2 pi) = 1 +/- 10/pi
    assert hi[2.0] == pytest.approx(1 + 10 / math.pi, abs=1e-9)  # 4.18310
    assert lo[2.0] == pytest.approx(1 - 10 / math.pi, abs=1e-9)  # -2.18310
    for p in WINDOWS_MIN:
        half_width = 5.0 * 4.0 * abs(math.sin(math.pi * p / 4.0)) / (math.pi * p)
        assert hi[p] == pytest.approx(1.0 + half_width, abs=1e-9)
        assert lo[p] == pytest.approx(1.0 - half_width, abs=1e-9)
        assert (hi[p] + lo[p]) / 2 == pytest.approx(1.0, abs=1e-9)
    assert hi[2.0] - lo[2.0] > hi[31.0] - lo[31.0] > 0
    assert hi[31.0] == pytest.approx(1.0 + 20 / (31 * math.pi) * math.sqrt(0.5), abs=1e-9)
    # 60 min is 15 whole periods: the ripple cancels in A
    assert res.overall_error_pct == pytest.approx(1.0, abs=1e-9)


def test_sliding_windows_step_one_sample() -> None:
    # One fast interval (sample 61-61.5 min, +50 %) is caught by every window that holds it,
    # so Ep(max) for P is 50 / m with m = P / 0.5 samples; Ep(min) is 0 (windows without it).
    t, v = constant_record(6.0)
    v = v.copy()
    v[t >= 61.5] += 6.0 * 0.5 / 60 * 0.5
    res = trumpet(t, v, 6.0)
    for p, hi, lo in zip(res.windows_min, res.ep_max_pct, res.ep_min_pct, strict=True):
        assert hi == pytest.approx(50.0 / (p / 0.5), abs=1e-9)
        assert lo == pytest.approx(0.0, abs=1e-9)
    assert res.overall_error_pct == pytest.approx(50.0 / 120, abs=1e-9)


def test_error_outside_analysis_period_is_ignored_but_on_startup_curve() -> None:
    t, v = constant_record(6.0)
    v = np.where(t < 30, v * 0.5, v - 6.0 * 30 / 60 * 0.5)  # half flow for the first 30 min
    res = trumpet(t, v, 6.0)
    assert res.ep_min_pct == pytest.approx([0.0] * 5, abs=1e-9)
    assert res.startup_flow_ml_per_h[0] == pytest.approx(3.0)
    assert res.startup_flow_ml_per_h[-1] == pytest.approx(6.0)


@settings(max_examples=60, deadline=None)
@given(bias_pct=st.floats(-10.0, 10.0), rate_ml_per_h=st.floats(0.1, 999.0))
def test_any_constant_bias_gives_that_bias_everywhere(
    bias_pct: float, rate_ml_per_h: float
) -> None:
    t, v = constant_record(rate_ml_per_h, bias_pct=bias_pct)
    res = trumpet(t, v, rate_ml_per_h)
    for ep in (*res.ep_max_pct, *res.ep_min_pct, res.overall_error_pct):
        assert abs(ep - bias_pct) < 1e-9


# --- resampling ----------------------------------------------------------------------------


def test_irregular_timestamps_hand_example() -> None:
    t = [0.0, 0.2, 0.9, 1.0, 1.6]
    v = [0.0, 0.1, 0.3, 0.5, 0.6]
    grid, q = flow_from_cumulative(t, v)
    # V(0.5) = 0.1 + 0.2 * (0.3 / 0.7); V(1.0) = 0.5; V(1.5) = 0.5 + 0.1 * (0.5 / 0.6); 1.6 dropped
    v_grid = [0.0, 0.1 + 0.2 * 3 / 7, 0.5, 0.5 + 0.1 * 5 / 6]
    assert grid.tolist() == [0.5, 1.0, 1.5]
    assert q == pytest.approx(60 * np.diff(v_grid) / 0.5, rel=1e-12)


def test_irregular_timestamps_of_constant_flow() -> None:
    rng = np.random.default_rng(7)
    t = np.concatenate([[0.0], np.sort(rng.uniform(0.0, 125.0, 400)), [125.0]])
    t = np.unique(t)
    v = 12.5 * 1.02 * t / 60
    res = trumpet(1000.0 + t, v, 12.5)  # time origin is the first row, not zero
    assert res.startup_t_min[0] == 0.5 and res.startup_t_min[-1] == 125.0
    assert np.allclose(res.startup_flow_ml_per_h, 12.75, rtol=1e-12)
    assert res.ep_max_pct == pytest.approx([2.0] * 5, abs=1e-9)
    assert res.ep_min_pct == pytest.approx([2.0] * 5, abs=1e-9)


def test_irregular_timestamps_step_change_between_samples() -> None:
    # 10 mL/h then 20 mL/h from t = 1.25 min; record rows at 0, 0.3, 1.25, 1.7, 2.0
    def vol(x: float) -> float:
        return 10 * x / 60 if x <= 1.25 else (10 * 1.25 + 20 * (x - 1.25)) / 60

    t = [0.0, 0.3, 1.25, 1.7, 2.0]
    _, q = flow_from_cumulative(t, [vol(x) for x in t])
    # intervals: [0,0.5] 10, [0.5,1] 10, [1,1.5] half and half = 15, [1.5,2] 20
    assert q == pytest.approx([10.0, 10.0, 15.0, 20.0], rel=1e-12)


# --- bad numeric input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "v", "rate", "words"),
    [
        (*constant_record(5.0), 0.0, "rate"),
        (*constant_record(5.0), -1.0, "rate"),
        (*constant_record(5.0), float("nan"), "rate"),
        (*constant_record(5.0, duration_min=90.0), 5.0, "ends at 120"),
        ([0.0, 1.0, 1.0, 2.0], [0.0, 0.1, 0.2, 0.3], 5.0, "strictly increasing"),
        ([0.0, 1.0, 0.5, 2.0], [0.0, 0.1, 0.2, 0.3], 5.0, "index 2"),
        ([0.0, 1.0, 2.0], [0.0, float("nan"), 0.3], 5.0, "finite"),
        ([0.0, 1.0, 2.0], [0.0, 0.1], 5.0, "must match"),
        ([0.0], [0.0], 5.0, "at least 2"),
    ],
)
def test_bad_record_raises_input_error(
    t: list[float], v: list[float], rate: float, words: str
) -> None:
    with pytest.raises(InputError, match=words) as exc_info:
        trumpet(t, v, rate)
    assert "\n" not in str(exc_info.value)


def test_short_record_with_shorter_analysis_period() -> None:
    t, v = constant_record(5.0, bias_pct=-3.0, duration_min=40.0)
    with pytest.raises(InputError, match="record covers 40 min"):
        trumpet(t, v, 5.0)
    res = trumpet(t, v, 5.0, analysis_start_min=10.0, analysis_end_min=40.0)
    assert res.windows_min == (2.0, 5.0, 11.0, 19.0)
    assert res.windows_skipped_min == (31.0,)
    assert res.ep_max_pct == pytest.approx([-3.0] * 4, abs=1e-9)
    with pytest.raises(InputError, match="shorter than the smallest observation window"):
        trumpet(t, v, 5.0, analysis_start_min=38.5, analysis_end_min=40.0)
    with pytest.raises(InputError, match="whole number"):
        trumpet(t, v, 5.0, analysis_start_min=10.2, analysis_end_min=40.0)
    with pytest.raises(InputError, match="not valid"):
        trumpet(t, v, 5.0, analysis_start_min=30.0, analysis_end_min=20.0)


def test_to_dict_is_plain_json() -> None:
    t, v = ripple_record(10.0, bias_pct=1.0, ripple_pct=5.0, period_min=4.0)
    d = trumpet(t, v, 10.0).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["windows_min"] == [2.0, 5.0, 11.0, 19.0, 31.0]
    assert back["windows"][0] == {"window_min": 2.0, "ep_max_pct": 4.183, "ep_min_pct": -2.183}
    assert back["overall_error_pct"] == 1.0
    assert len(back["startup"]["t_min"]) == len(back["startup"]["flow_ml_per_h"]) == 240
    assert all(type(x) is float for x in back["startup"]["flow_ml_per_h"])


# --- CSV -------------------------------------------------------------------------------------


def test_mass_csv_converted_with_density(tmp_path: Path) -> None:
    p = write(
        tmp_path, "Time_S,Mass_g,temp_c\n0,0.000,21\n30,0.105,21\n60,0.210,21\n\n90,0.315,21\n"
    )
    t, v = read_gravimetric_csv(p, density_g_per_ml=1.05)
    assert t.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert v == pytest.approx([0.0, 0.1, 0.2, 0.3], rel=1e-12)
    _, q = flow_from_cumulative(t, v)
    assert q == pytest.approx([12.0, 12.0, 12.0], rel=1e-12)


def test_default_density_is_water(tmp_path: Path) -> None:
    p = write(tmp_path, "t_min,mass_g\n0,0\n1,0.998\n2,1.996\n")
    _, v = read_gravimetric_csv(p)
    assert v == pytest.approx([0.0, 1.0, 2.0], rel=1e-12)


def test_volume_csv_in_minutes_ignores_density(tmp_path: Path) -> None:
    p = write(tmp_path, "\ufefftime_min,volume_ml\n0,0\n0.5,0.1\n1.0,0.2\n")
    t, v = read_gravimetric_csv(p, density_g_per_ml=2.0)
    assert t.tolist() == [0.0, 0.5, 1.0]
    assert v.tolist() == [0.0, 0.1, 0.2]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("time_s,weight\n0,0\n30,1\n60,2\n", ["line 1", "mass_g", "volume_ml", "found none"]),
        ("seconds,mass_g\n0,0\n30,1\n60,2\n", ["line 1", "time_s", "t_min", "found none"]),
        ("time_s,mass_g,volume_ml\n0,0,0\n30,1,1\n60,2,2\n", ["exactly one", "mass_g, volume_ml"]),
        ("time_s,mass_g\n0,0\n30,0.1\n60,abc\n90,0.3\n", ["line 4", "column mass_g", "'abc'"]),
        ("time_s,mass_g\n0,0\n30,nan\n60,0.2\n", ["line 3", "finite"]),
        ("time_s,mass_g\n0,0\n30\n60,0.2\n", ["line 3", "no value in column mass_g"]),
        ("time_s,mass_g\n0,0\n30,0.1\n", ["2 data rows", "at least 3"]),
        ("", ["empty file"]),
        (
            "time_s,mass_g\n0,0\n30,0.1\n20,0.2\n60,0.3\n",
            ["line 4", "column time_s", "strictly increase"],
        ),
    ],
)
def test_bad_csv_names_the_problem(tmp_path: Path, text: str, words: list[str]) -> None:
    p = write(tmp_path, text, name="bad.csv")
    with pytest.raises(InputError) as exc_info:
        read_gravimetric_csv(p)
    msg = str(exc_info.value)
    assert str(p) in msg
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_file_and_bad_density(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_gravimetric_csv(tmp_path / "nope.csv")
    p = write(tmp_path, "t_min,mass_g\n0,0\n1,1\n2,2\n")
    with pytest.raises(InputError, match="density"):
        read_gravimetric_csv(p, density_g_per_ml=0)


def test_example_recording_is_about_one_percent_high() -> None:
    assert EXAMPLE_CSV.stat().st_size < 30_000
    t, v = read_gravimetric_csv(EXAMPLE_CSV)
    assert t[-1] == pytest.approx(120.0)
    res = trumpet(t, v, 12.5)
    assert res.overall_error_pct == pytest.approx(1.0, abs=0.1)
    assert res.ep_max_pct[0] - res.ep_min_pct[0] > res.ep_max_pct[-1] - res.ep_min_pct[-1]
    assert res.startup_flow_ml_per_h[0] < 0.5 * 12.5  # start-up lag is on the start-up curve


# --- plot and CLI --------------------------------------------------------------------------


def test_plot_writes_png(tmp_path: Path) -> None:
    t, v = ripple_record(10.0, bias_pct=1.0, ripple_pct=5.0, period_min=4.0)
    out = plot_trumpet(trumpet(t, v, 10.0), tmp_path / "t.png", stated_pct=5.0)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_cli_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    use_trumpet_command(monkeypatch)
    assert cli.main(["trumpet", str(EXAMPLE_CSV), "--rate-ml-per-h", "12.5"]) == 0
    out = capsys.readouterr().out
    assert "Ep max %" in out and "overall A = +" in out
    assert [line.split()[0] for line in out.splitlines()[2:7]] == ["2", "5", "11", "19", "31"]


def test_cli_writes_png_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_trumpet_command(monkeypatch)
    out_dir = tmp_path / "made" / "here"
    code = cli.main(
        [
            "trumpet",
            str(EXAMPLE_CSV),
            "--rate-ml-per-h",
            "12.5",
            "--out",
            str(out_dir),
            "--json",
            "--stated-pct",
            "5",
        ]
    )
    assert code == 0
    assert (out_dir / "trumpet.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out_dir / "trumpet.json").read_text())
    assert saved["windows_min"] == [2.0, 5.0, 11.0, 19.0, 31.0]
    assert [w["window_min"] for w in saved["windows"]] == saved["windows_min"]
    printed = json.loads(capsys.readouterr().out)
    assert printed == saved


def test_cli_bad_csv_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_trumpet_command(monkeypatch)
    p = write(tmp_path, "time_s,mass_g\n0,0\n30,oops\n60,0.2\n90,0.3\n")
    assert cli.main(["trumpet", str(p), "--rate-ml-per-h", "12.5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pumpctl trumpet: ") and "line 3" in lines[0]


def test_cli_short_record_and_bad_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_trumpet_command(monkeypatch)
    rows = "\n".join(f"{i * 30},{i * 0.1:.4f}" for i in range(81))  # 40 min
    p = write(tmp_path, "time_s,mass_g\n" + rows + "\n")
    assert cli.main(["trumpet", str(p), "--rate-ml-per-h", "12.5"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert (
        cli.main(
            [
                "trumpet",
                str(p),
                "--rate-ml-per-h",
                "12.5",
                "--analysis-start-min",
                "10",
                "--analysis-end-min",
                "40",
            ]
        )
        == 0
    )
    assert "left out" in capsys.readouterr().out
    assert cli.main(["trumpet", str(p), "--rate-ml-per-h", "-1"]) == 2
    assert "rate" in capsys.readouterr().err


def test_cli_verdict_against_the_stated_accuracy(tmp_path, capsys):
    from pumpctl.cli import main

    sample = Path(__file__).resolve().parent.parent / "examples" / "gravimetric_sample.csv"
    argv = ["trumpet", str(sample), "--rate-ml-per-h", "12.5", "--json"]
    assert main(argv) == 0  # A is about +1 %: inside the default +/-5 %
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "pass" and doc["stated_pct"] == 5.0
    assert main([*argv, "--stated-pct", "0.5"]) == 1  # a stricter pump fails
    assert json.loads(capsys.readouterr().out)["verdict"] == "fail"
