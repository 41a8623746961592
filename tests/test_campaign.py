"""Campaigns: same summary whatever the scheduler, streamed runs file, resume, sweeps, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pumpctl.sim.campaign as camp
from pumpctl.cli import main
from pumpctl.sim.campaign import (
    CampaignInterrupted,
    CampaignStats,
    campaign,
    executor_for,
    run_campaign,
    run_seeds,
    seeds_block,
    summarise,
)
from pumpctl.sim.scenario import load_scenario, with_values

SHORT = """
[scenario]
name = "short staffing"
duration_h = 12
seed = 11
setting = "anakinra_continuous"
pump = "generic_lvp"

[patient]
weight_kg = 70

[order]
dose_mg_per_day = 600
bag_ml = 100

[pharmacy]
compound_min = { dist = "lognormal", median = 10, p95 = 25 }
deliver_min = { dist = "lognormal", median = 15, p95 = 45 }

[nurse]
response_min = { dist = "lognormal", median = 3, p95 = 15 }
swap_s = { dist = "uniform", min = 30, max = 120 }

[[faults]]
at_h = { dist = "uniform", min = 1, max = 11 }
kind = "occlusion"
duration_min = { dist = "lognormal", median = 2, p95 = 10 }

[expect]
max_interrupted_s = 300
"""
RUNS = 30


@pytest.fixture
def short(tmp_path: Path) -> Path:
    p = tmp_path / "short.toml"
    p.write_text(SHORT)
    return p


def _campaign(sc, runs=RUNS, seed=5, scheduler="local", workers=1, **kw):
    with executor_for(scheduler, workers) as ex:
        return campaign(sc, runs, seed=seed, executor=ex, **kw)


def _rows(path: Path) -> list[dict]:
    return list(camp._read_parquet_rows(path) if path.suffix == ".parquet" else _csv(path))


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- seeds, summary
def test_seed_blocks_match_seed_sequence_anywhere():
    for seed in (0, 42, 2**62 + 17):
        full = run_seeds(seed, 3000)
        assert seeds_block(seed, 0, 3000) == full
        assert seeds_block(seed, 1234, 2345) == full[1234:2345]
        assert seeds_block(seed, 2999, 3000) == full[2999:]


def test_incremental_summary_equals_percentiles_of_all_runs(short):
    sc = load_scenario(short)
    recs = run_campaign(sc, RUNS, seed=3)
    s = summarise(sc, recs, 3)
    gaps = np.array([r["interrupted_s"] for r in recs])
    assert s["interrupted_s"]["p95"] == round(float(np.percentile(gaps, 95)), 3)
    assert s["interrupted_s"]["mean"] == round(float(gaps.mean()), 3)
    assert s["share_interrupted"] == round(float((gaps > 0).mean()), 6)
    ranked = sorted(recs, key=lambda r: (-r["interrupted_s"], -abs(r["dose_error_pct"])))
    assert [w["seed"] for w in s["worst_runs"]] == [r["seed"] for r in ranked[:5]]
    for cause, share in s["share_interrupted_by_cause"].items():
        assert share == round(sum(cause in r["causes"] for r in recs) / RUNS, 6)
    assert s["schema_version"] == camp.SCHEMA_VERSION
    assert set(s["wasted_mg"]) >= {"p50", "p95", "max"}
    assert s["passed"] + s["failed"] == RUNS and 0 < s["passed"] < RUNS  # a meaningful check


# --------------------------------------------------------------------------- schedulers
def test_same_summary_local_one_and_two_workers_and_dask(short, tmp_path):
    sc = load_scenario(short)
    one, _ = _campaign(sc, workers=1, out_dir=tmp_path / "one")
    two, _ = _campaign(sc, workers=2, out_dir=tmp_path / "two")
    assert one == two
    assert _rows(tmp_path / "one" / "runs.parquet") == _rows(tmp_path / "two" / "runs.parquet")
    pytest.importorskip("distributed")
    dask, _ = _campaign(sc, scheduler="dask", workers=2, out_dir=tmp_path / "dask")
    assert dask == one
    assert _rows(tmp_path / "dask" / "runs.parquet") == _rows(tmp_path / "one" / "runs.parquet")


def test_batch_size_does_not_change_the_summary(short):
    sc = load_scenario(short)
    a, _ = _campaign(sc, batch=1)
    b, _ = _campaign(sc, batch=7)
    assert a == b


# --------------------------------------------------------------------------- streaming, resume
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_resume_after_interruption_gives_the_same_summary(short, tmp_path, monkeypatch, fmt):
    if fmt == "csv":
        monkeypatch.setattr(camp, "pyarrow_available", lambda: False)
    sc = load_scenario(short)
    whole, _ = _campaign(sc, out_dir=tmp_path / "whole", batch=4)
    part = tmp_path / "part"
    with pytest.raises(CampaignInterrupted) as exc:
        _campaign(sc, out_dir=part, batch=4, stop_after=9)
    assert exc.value.done == 12 and "--resume" in str(exc.value)
    runs_file = part / f"runs.{fmt}"
    assert [int(r["run"]) for r in _rows(runs_file)] == list(range(12))
    with pytest.raises(CampaignInterrupted):  # interrupted again while resuming
        _campaign(sc, out_dir=part, batch=4, stop_after=20, resume=True)
    assert len(_rows(runs_file)) == 20
    resumed, _ = _campaign(sc, out_dir=part, batch=4, resume=True)
    assert resumed == whole
    assert _rows(runs_file) == _rows(tmp_path / "whole" / f"runs.{fmt}")
    assert not (part / ".runs.parts").exists()


def test_resume_drops_a_half_written_csv_line(short, tmp_path, monkeypatch):
    monkeypatch.setattr(camp, "pyarrow_available", lambda: False)
    sc = load_scenario(short)
    whole, _ = _campaign(sc, out_dir=tmp_path / "whole")
    part = tmp_path / "part"
    with pytest.raises(CampaignInterrupted):
        _campaign(sc, out_dir=part, batch=5, stop_after=10)
    with (part / "runs.csv").open("a") as fh:
        fh.write("10,12345,pa")  # killed mid-line
    resumed, _ = _campaign(sc, out_dir=part, resume=True)
    assert resumed == whole


def test_resume_refuses_another_seed_or_scenario(short, tmp_path):
    sc = load_scenario(short)
    with pytest.raises(CampaignInterrupted):
        _campaign(sc, out_dir=tmp_path, batch=5, stop_after=5)
    with pytest.raises(camp.InputError, match="same scenario"):
        _campaign(sc, seed=6, out_dir=tmp_path, resume=True)
    with pytest.raises(camp.InputError, match="same scenario"):
        _campaign(with_values(sc, {"nurse.response_min": 9}), out_dir=tmp_path, resume=True)
    with pytest.raises(camp.InputError, match="--resume"):
        _campaign(sc, out_dir=tmp_path)


def test_memory_per_run_is_a_few_numbers():
    stats = CampaignStats()
    rec = {"seed": 1, "verdict": "pass", "interrupted_s": 0.0, "causes": [], "dose_error_pct": 0.1}
    for i in range(10_000):
        stats.add(rec | {"seed": i, "interrupted_s": float(i % 7)})
    per_run = sum(
        a.itemsize
        for a in (stats.interrupted_s, stats.dose_error_pct, stats.wasted_mg, stats.cause_mask)
    )
    assert per_run <= 32 and len(stats._worst) == 5 and stats.n == 10_000


def test_sigint_to_a_real_campaign_keeps_runs_and_resume_matches(short, tmp_path, capsys):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "pumpctl.cli", "campaign", str(short), "--runs", "300"]
    cmd += ["--seed", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the first progress line: runs are under way
    assert "runs/s" in line, line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "--resume" in err and "Traceback" not in err
    kept = len(_rows(out / "runs.parquet"))
    assert 0 < kept < 300
    assert main(
        ["campaign", str(short), "--runs", "300", "--seed", "4", "--out", str(out)]
        + ["--resume", "--json", "--no-progress"]
    ) in (0, 1)
    resumed = json.loads(capsys.readouterr().out)
    whole, _ = _campaign(load_scenario(short), runs=300, seed=4, workers=2)
    assert resumed == whole


def test_kill_9_loses_at_most_the_unmerged_tail_and_resume_matches(short, tmp_path, capsys):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "pumpctl.cli", "campaign", str(short), "--runs", "1200"]
    cmd += ["--seed", "8", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    done = 0
    while done < 256:  # at least one part (256 runs) written
        line = proc.stderr.readline()
        assert line, "the campaign ended without progress"
        done = int(line.split("] ")[1].split("/")[0])
    proc.kill()
    proc.wait(timeout=30)
    parts = sorted(p.name for p in (out / ".runs.parts").glob("part-*.parquet"))
    assert parts and parts[0] == "part-000000000000.parquet"
    argv = ["campaign", str(short), "--runs", "1200", "--seed", "8", "--out", str(out)]
    assert main([*argv, "--resume", "--json", "--no-progress"]) in (0, 1)
    resumed = json.loads(capsys.readouterr().out)
    whole, _ = _campaign(load_scenario(short), runs=1200, seed=8, workers=2)
    assert resumed == whole
    assert [int(r["run"]) for r in _rows(out / "runs.parquet")] == list(range(1200))


# --------------------------------------------------------------------------- CLI
def test_cli_writes_outputs_and_prints_tables(short, tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["campaign", str(short), "--runs", str(RUNS), "--out", str(out), "--seed", "5"])
    text = capsys.readouterr().out
    d = json.loads((out / "campaign.json").read_text())
    assert code == (0 if d["failed"] == 0 else 1)
    assert "{" not in text and "interrupted (s)" in text and "worst runs" in text
    assert f"{d['runs']} runs" in text
    assert (out / "histograms.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == [
        "campaign.json",
        "campaign.meta.json",
        "histograms.png",
        "runs.parquet",
    ]
    sc = load_scenario(short)
    assert d == _campaign(sc)[0]


def test_cli_sweep_writes_one_row_per_grid_point(short, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["campaign", str(short), "--runs", "12", "--out", str(out), "--no-progress"]
    argv += ["--sweep", "nurse.response_min=1,30", "--sweep", "pharmacy.compound_min=5,240"]
    assert main(argv) in (0, 1)
    table = capsys.readouterr().out
    assert "grid points" in table
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["nurse.response_min"], r["pharmacy.compound_min"]) for r in rows] == [
        ("1", "5"),
        ("1", "240"),
        ("30", "5"),
        ("30", "240"),
    ]
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["keys"] == ["nurse.response_min", "pharmacy.compound_min"]
    assert doc["rows"][3]["point"] == {"nurse.response_min": 30, "pharmacy.compound_min": 240}
    sc = with_values(load_scenario(short), {"nurse.response_min": 30, "pharmacy.compound_min": 240})
    expect, _ = _campaign(sc, runs=12, seed=11)
    got = {k: v for k, v in doc["rows"][3].items() if k != "point"}
    for w in got["worst_runs"]:  # the replay line names the swept values
        assert w["reproduce"].endswith("(with nurse.response_min=30, pharmacy.compound_min=240)")
        w["reproduce"] = w["reproduce"].split(" (with")[0]
    assert got == expect
    # slow staff at 4 h of pharmacy time leaves more runs interrupted for longer
    assert float(rows[3]["interrupted_s_p95"]) > float(rows[0]["interrupted_s_p95"])
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "points").iterdir())) == 4


def _no_runs(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a run started before the input was checked")

    monkeypatch.setattr(camp, "one_run", boom)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--runs", "99999999999999999999"], "--runs 99999999999999999999 is not allowed"),
        (["--runs", "0"], "--runs 0 is not allowed"),
        (["--runs", "5", "--workers", "0"], "--workers 0 is not allowed"),
        (["--runs", "5", "--scheduler", "slurm"], "--scheduler 'slurm' is not allowed"),
        (["--runs", "5", "--seed", "-1"], "--seed -1 is not allowed"),
        (["--runs", "5", "--resume"], "--resume needs --out"),
        (["--runs", "5", "--sweep", "nurse.response_min"], "allowed: KEY=V1,V2"),
        (["--runs", "5", "--sweep", "nurse.bogus=1,2"], "unknown key 'nurse.bogus'"),
        (["--runs", "5", "--sweep", "nurse.response_min=1,-3"], "out of range"),
        (["--runs", "5", "--sweep", "order.dose_mg_per_day=nan"], "not a finite number"),
        (["--runs", "5", "--out", "/proc/no/such"], "not writable"),
    ],
)
def test_cli_bad_input_is_one_line_before_any_run(short, capsys, monkeypatch, extra, needle):
    _no_runs(monkeypatch)
    assert main(["campaign", str(short), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_cli_out_under_a_file_or_taken_directory(short, tmp_path, capsys, monkeypatch):
    _no_runs(monkeypatch)
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["campaign", str(short), "--runs", "5", "--out", str(f / "sub")]) == 2
    assert f"{f} is a file" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "runs.csv").write_text("")
    assert main(["campaign", str(short), "--runs", "5", "--out", str(taken)]) == 2
    assert "already holds a campaign" in capsys.readouterr().err


def test_cli_resume_with_nothing_to_resume_is_refused(short, tmp_path, capsys, monkeypatch):
    _no_runs(monkeypatch)
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        argv = ["campaign", str(short), "--runs", "5", "--resume", "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"nothing to resume in {out}" in err
        assert "leave out --resume" in err
    assert not (tmp_path / "new").exists() and list((tmp_path / "empty").iterdir()) == []


def test_cli_dask_missing_says_how_to_install(short, capsys, monkeypatch):
    import pumpctl.commands.campaign_run as cmd

    _no_runs(monkeypatch)
    monkeypatch.setattr(cmd, "dask_available", lambda: False)
    assert main(["campaign", str(short), "--runs", "5", "--scheduler", "dask"]) == 2
    assert "pip install 'pumpctl[dask]'" in capsys.readouterr().err


def test_cli_workers_capped_at_runs_and_cores(short, capsys):
    assert main(["campaign", str(short), "--runs", "3", "--workers", "1000", "--json"]) in (0, 1)
    cap = min(3, len(os.sched_getaffinity(0)))
    captured = capsys.readouterr()
    assert f"--workers 1000 capped at {cap}" in captured.err
    assert json.loads(captured.out)["runs"] == 3


def test_the_command_states_the_same_run_cap_as_the_campaign_module() -> None:
    from pumpctl.commands import campaign as command
    from pumpctl.sim import campaign as module

    assert command.MAX_RUNS == module.MAX_RUNS


def test_a_campaign_loads_its_setting_and_pump_once_per_scenario(monkeypatch):
    """Every run of a campaign uses the same setting and pump, loaded once per worker."""
    import pumpctl.sim.campaign as camp
    from pumpctl.sim.scenario import load_scenario

    sc = load_scenario(Path(__file__).parent.parent / "examples" / "anakinra_72h.toml")
    calls = []
    real = camp.load_setting
    monkeypatch.setattr(camp, "load_setting", lambda p: calls.append(p) or real(p))
    camp._LOADED.clear()
    first, again = camp.one_run(sc, 1), camp.one_run(sc, 1)
    assert first == again and len(calls) == 1
    assert first == camp.one_run(load_scenario(sc.path), 1) and len(calls) == 2
