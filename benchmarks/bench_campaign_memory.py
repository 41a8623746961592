"""Peak memory of the campaign machinery against the number of runs.

    python benchmarks/bench_campaign_memory.py [N ...]   # default 20000 200000

Each N runs in a fresh process: the real batching, runs.parquet streaming, summary and
histograms, with each simulation replaced by a synthetic record drawn from its seed (a
72-hour simulation costs 5-12 ms; its own memory does not depend on N). Prints the peak
RSS (ru_maxrss); bounded memory means it barely grows from 20,000 to 200,000 runs
(the summary keeps 28 bytes a run for exact percentiles).
"""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pumpctl.sim.campaign as camp
from pumpctl.sim.scenario import load_scenario


def synthetic_run(sc, seed: int) -> dict:
    """A record shaped like ``one_run``'s, drawn from the seed."""
    r = random.Random(seed)
    gap = r.expovariate(1 / 600) if r.random() < 0.6 else 0.0
    causes = sorted(r.sample(["bag_empty", "occlusion", "bag_change"], r.randint(1, 2)))
    return {
        "seed": seed,
        "verdict": "pass" if gap < 300 else "fail",
        "interrupted_s": round(gap, 3),
        "interruptions": len(causes) if gap else 0,
        "causes": causes if gap else [],
        "dose_error_pct": round(r.gauss(-0.8, 0.5), 3),
        "bags": 9,
        "alarms": {"pharmacy_request": 9, "prepare_bag_change": 8},
        "failed_expectations": [] if gap < 300 else [f"interrupted {gap:.1f} s > 300 s"],
        "wasted_mg": round(r.uniform(0, 50), 3),
    }


def one(runs: int) -> None:
    camp.one_run = synthetic_run  # the batches look it up at call time
    sc = load_scenario("examples/campaign_staffing.toml")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with camp.executor_for("local", 1) as ex:
            summary, stats = camp.campaign(sc, runs, seed=1, executor=ex, out_dir=Path(d))
        camp.plot_histograms(stats, summary, Path(d) / "histograms.png")
        size = (Path(d) / "runs.parquet").stat().st_size
        wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{runs:>9} runs: peak RSS {peak_mb:6.1f} MB, runs.parquet {size / 1e6:5.1f} MB, "
        f"{wall:5.1f} s, summary runs {summary['runs']}",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        one(int(sys.argv[2]))
        return
    for n in [int(a) for a in sys.argv[1:]] or [20_000, 200_000]:
        subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)


if __name__ == "__main__":
    main()
