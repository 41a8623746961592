"""Benchmark: one 72-hour default infusion, and campaign throughput.

Run: .venv/bin/python benchmarks/bench_sim.py [--runs 1000]
Reports wall time per 72-h run (simulation alone; with JSON result; with full report and
plots) and campaign throughput in runs/s and runs/s per core, with the core count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pumpctl.report import result_with_accuracy, write_report
from pumpctl.sim.campaign import run_campaign
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000, help="campaign size")
    ap.add_argument("--repeat", type=int, default=50, help="repeats of the single run")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    sc = load_scenario(ROOT / "examples" / "anakinra_72h.toml")
    run_scenario(sc, trace=False)  # warm caches and imports

    sim = _time(lambda: run_scenario(sc, trace=False), args.repeat)
    sim_trace = _time(lambda: result_with_accuracy(run_scenario(sc)), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        full = _time(lambda: write_report(run_scenario(sc), Path(tmp)), 3)

    def ms(xs: list[float]) -> str:
        return f"median {statistics.median(xs) * 1e3:7.2f} ms  min {min(xs) * 1e3:7.2f} ms"

    print(f"machine: {cores} cores")
    print(f"72 h default run, simulation alone ({args.repeat}x): {ms(sim)}")
    print(f"72 h default run + IEC trace + JSON result ({args.repeat}x): {ms(sim_trace)}")
    print(f"72 h default run + report.json/md + events.db + 4 plots (3x): {ms(full)}")

    camp = load_scenario(ROOT / "examples" / "campaign_staffing.toml")
    for workers in sorted({1, min(2, cores)}):
        t0 = time.perf_counter()
        run_campaign(camp, args.runs, workers=workers, seed=1)
        dt = time.perf_counter() - t0
        print(
            f"campaign {args.runs} x 72 h, {workers} worker(s): {dt:6.2f} s, "
            f"{args.runs / dt:7.1f} runs/s, {args.runs / dt / workers:7.1f} runs/s per core"
        )


if __name__ == "__main__":
    main()
