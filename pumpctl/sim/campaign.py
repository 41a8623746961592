"""Monte Carlo campaigns: many runs of one scenario, reproducible from one seed.

Run ``i`` uses the ``i``-th seed of ``numpy.random.SeedSequence(seed)``, so the summary
does not depend on how many worker processes share the work, and any run can be
replayed alone with ``pumpctl simulate SCENARIO --seed <its seed>``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import Scenario, load_scenario


def run_seeds(seed: int, runs: int) -> list[int]:
    """The per-run seeds of a campaign."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(runs, dtype=np.uint32)]


def one_run(sc: Scenario, seed: int) -> dict[str, Any]:
    """A compact record of one run (what the campaign summary needs)."""
    r = run_scenario(sc, seed, trace=False).result
    return {
        "seed": seed,
        "verdict": r["verdict"],
        "interrupted_s": r["interrupted_s"],
        "interruptions": len(r["interruptions"]),
        "causes": sorted({g["cause"] for g in r["interruptions"]}),
        "dose_error_pct": r["dose_error_pct"],
        "bags": len(r["bags"]),
        "alarms": dict(Counter(a["kind"] for a in r["alarms"])),
        "failed_expectations": r["failed_expectations"],
    }


_WORKER_SCENARIO: Scenario | None = None


def _init_worker(path: str) -> None:
    global _WORKER_SCENARIO
    _WORKER_SCENARIO = load_scenario(path)


def _worker(seed: int) -> dict[str, Any]:
    assert _WORKER_SCENARIO is not None
    return one_run(_WORKER_SCENARIO, seed)


def run_campaign(
    sc: Scenario,
    runs: int,
    *,
    workers: int = 1,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """All runs, in seed order whatever the number of workers."""
    seeds = run_seeds(sc.seed if seed is None else seed, runs)
    out: list[dict[str, Any]] = []
    if workers <= 1:
        for i, s in enumerate(seeds):
            out.append(one_run(sc, s))
            if progress:
                progress(i + 1, runs)
        return out
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    chunk = max(1, min(50, runs // (workers * 8) or 1))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(sc.path,)) as pool:
        for i, rec in enumerate(pool.imap(_worker, seeds, chunksize=chunk)):
            out.append(rec)
            if progress:
                progress(i + 1, runs)
    return out


def _pct(values: list[float], qs: tuple[int, ...]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs} | {
        "min": round(float(arr.min()), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


def summarise(
    sc: Scenario, records: list[dict[str, Any]], seed: int, worst: int = 5
) -> dict[str, Any]:
    """Share of runs with any gap, percentiles, the worst runs (reproducible), causes."""
    n = len(records)
    interrupted = [r["interrupted_s"] for r in records]
    errors = [r["dose_error_pct"] for r in records]
    worst_runs = sorted(
        records, key=lambda r: (-r["interrupted_s"], -abs(r["dose_error_pct"]), r["seed"])
    )[:worst]
    causes = Counter(c for r in records for c in r["causes"])
    return {
        "scenario": sc.name,
        "scenario_path": sc.path,
        "seed": seed,
        "runs": n,
        "passed": sum(r["verdict"] == "pass" for r in records),
        "failed": sum(r["verdict"] == "fail" for r in records),
        "share_interrupted": round(sum(s > 0 for s in interrupted) / n, 6) if n else 0.0,
        "interrupted_s": _pct(interrupted, (50, 90, 95, 99)),
        "dose_error_pct": _pct(errors, (5, 50, 95)),
        "interruption_causes": dict(sorted(causes.items())),
        "worst_runs": [
            {
                "seed": r["seed"],
                "interrupted_s": r["interrupted_s"],
                "dose_error_pct": r["dose_error_pct"],
                "causes": r["causes"],
                "reproduce": f"pumpctl simulate {sc.path} --seed {r['seed']}",
            }
            for r in worst_runs
        ],
    }


def plot_histograms(records: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> Path:
    """Histograms of interruption seconds (runs with a gap) and of dose error."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    gaps = [r["interrupted_s"] / 60.0 for r in records if r["interrupted_s"] > 0]
    if gaps:
        ax1.hist(gaps, bins=40, color="#d62728", alpha=0.8)
    ax1.set_xlabel("interruption per run (min), runs with any gap")
    ax1.set_ylabel("runs")
    ax1.set_title(
        f"{summary['share_interrupted'] * 100:.1f}% of {summary['runs']} runs interrupted"
    )
    ax1.grid(alpha=0.3)
    ax2.hist([r["dose_error_pct"] for r in records], bins=40, color="#2ca02c", alpha=0.8)
    ax2.set_xlabel("dose error vs ordered (%)")
    ax2.set_ylabel("runs")
    ax2.set_title(
        f"dose error p5 {summary['dose_error_pct']['p5']:+.2f}%, "
        f"p95 {summary['dose_error_pct']['p95']:+.2f}%"
    )
    ax2.grid(alpha=0.3)
    fig.suptitle(f"campaign: {summary['scenario']}")
    fig.savefig(path)
    return path
