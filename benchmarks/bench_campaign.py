"""Campaign throughput: the local process pool against a Dask LocalCluster, per core.

    python benchmarks/bench_campaign.py [SCENARIO] [--runs N] [--workers K] [--repeat R]

Wall-clock rates suffer when other programs share the cores; the CPU time per run (all
processes, workers included) is the steadier figure.

Each round runs the same campaign on both schedulers (alternating, so a busy machine hurts
both alike) and checks that the summaries are identical. Start-up (forking the pool,
starting the cluster) is timed apart from the runs. Dask's target: at least 90 % of the
local pool's runs/s per core.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import psutil  # comes with dask distributed

from pumpctl.sim.campaign import campaign, executor_for
from pumpctl.sim.scenario import load_scenario


def _cpu_s() -> float:
    """CPU seconds of this process and all its children alive now (workers, nannies)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


def _one(
    sc, runs: int, scheduler: str, workers: int, seed: int
) -> tuple[float, float, float, dict]:
    t0 = time.perf_counter()
    with executor_for(scheduler, workers) as ex:
        t1 = time.perf_counter()
        c1 = _cpu_s()
        summary, _ = campaign(sc, runs, seed=seed, executor=ex)
        t2 = time.perf_counter()
        cpu = _cpu_s() - c1  # measured before the workers go away
    return t1 - t0, t2 - t1, cpu, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default="examples/campaign_staffing.toml")
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sc = load_scenario(args.scenario)
    rates: dict[str, list[float]] = {"local": [], "dask": []}
    cpu_ms: dict[str, list[float]] = {"local": [], "dask": []}
    starts: dict[str, list[float]] = {"local": [], "dask": []}
    ref = None
    for r in range(args.repeat):
        for sched in ("local", "dask") if r % 2 == 0 else ("dask", "local"):
            start_s, run_s, cpu_s, summary = _one(sc, args.runs, sched, args.workers, args.seed)
            ref = ref or summary
            assert summary == ref, f"{sched}: summary differs"
            rate = args.runs / run_s / args.workers
            rates[sched].append(rate)
            starts[sched].append(start_s)
            cpu_ms[sched].append(cpu_s / args.runs * 1000)
            print(
                f"round {r + 1} {sched:5s}: start-up {start_s:5.2f} s, {args.runs} runs in "
                f"{run_s:6.2f} s = {rate:6.1f} runs/s per core, "
                f"{cpu_ms[sched][-1]:.2f} CPU ms per run (all processes)",
                flush=True,
            )
    loc, dsk = statistics.median(rates["local"]), statistics.median(rates["dask"])
    up_loc, up_dsk = statistics.median(starts["local"]), statistics.median(starts["dask"])
    print(
        f"median runs/s per core: local {loc:.1f}, dask {dsk:.1f} "
        f"({dsk / loc * 100:.0f} % of local); start-up local {up_loc:.2f} s, "
        f"dask {up_dsk:.2f} s; summaries identical"
    )
    c_loc, c_dsk = statistics.median(cpu_ms["local"]), statistics.median(cpu_ms["dask"])
    print(
        f"median CPU ms per run: local {c_loc:.2f}, dask {c_dsk:.2f} "
        f"(dask does {c_loc / c_dsk * 100:.0f} % of local's runs per CPU second)"
    )


if __name__ == "__main__":
    main()
