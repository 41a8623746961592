"""Benchmark: one 72-hour default infusion, a 30-day one, and campaign throughput.

Run: .venv/bin/python benchmarks/bench_sim.py [--runs 1000] [--repeat 200]
(needs the ``bench`` extra: ``pip install -e '.[bench]'``, for simpy).

Every figure is measured beside a bare simpy model of the same 72-hour scenario
(``benchmarks/simpy_model.py``) run in the same process, interleaved with it, and is
reported as a ratio to it as well as in milliseconds: on a shared or noisy machine the
ratio moves much less than the time. Single runs are CPU times (medians); campaigns are
wall time, shown per run as core-seconds (wall time x workers / runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from simpy_model import run_simpy  # noqa: E402

from pumpctl.report import with_flow_accuracy, write_report  # noqa: E402
from pumpctl.sim.campaign import run_campaign  # noqa: E402
from pumpctl.sim.runner import run_scenario  # noqa: E402
from pumpctl.sim.scenario import load_scenario  # noqa: E402


def _pair(fn: Callable[[], object], repeat: int) -> tuple[float, float, float, float]:
    """Medians (s) of ``fn`` and of the simpy model, timed alternately, then the fastest of
    each (the least disturbed runs; a quiet machine's figure).

    CPU time of this process (``time.process_time``), not wall time: on a machine shared
    with other work, waiting for a core is not the simulation's cost.
    """
    mine, base = [], []
    clock = time.process_time
    for _ in range(repeat):
        t0 = clock()
        run_simpy()
        t1 = clock()
        fn()
        t2 = clock()
        base.append(t1 - t0)
        mine.append(t2 - t1)
    return statistics.median(mine), statistics.median(base), min(mine), min(base)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000, help="campaign size")
    ap.add_argument("--repeat", type=int, default=200, help="repeats of the single run")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    sc = load_scenario(ROOT / "examples" / "anakinra_72h.toml")
    sc30 = dataclasses.replace(sc, duration_h=720.0)
    for _ in range(5):  # warm caches and imports
        run_scenario(sc, trace=False)
        run_simpy()

    rows: list[tuple[str, float, float, str]] = []  # what, seconds, simpy seconds, note
    fastest: dict[str, tuple[float, float]] = {}  # what -> (fastest run, fastest simpy)

    t, b, f, fb = _pair(lambda: run_scenario(sc, trace=False), args.repeat)
    rows.append(("one 72 h run, controller + watchdog + in-memory log", t, b, ""))
    fastest["one 72 h run, controller + watchdog + in-memory log"] = (f, fb)
    t, b, f, fb = _pair(
        lambda: (lambda r: with_flow_accuracy(r.result, r.log.events()))(run_scenario(sc)),
        args.repeat,
    )
    rows.append(("the same + IEC 60601-2-24 trace and JSON result", t, b, ""))
    fastest["the same + IEC 60601-2-24 trace and JSON result"] = (f, fb)
    t, b, f, fb = _pair(lambda: run_scenario(sc30, trace=False), max(args.repeat // 10, 5))
    rows.append(("one 30-day run (720 h)", t, b, ""))
    fastest["one 30-day run (720 h)"] = (f, fb)
    with tempfile.TemporaryDirectory() as tmp:

        def full() -> None:
            r = run_scenario(sc)
            write_report(r.result, r.log.events(), Path(tmp) / "out", write_db=r.log.write_sqlite)

        t, b, _, _ = _pair(full, 3)
    rows.append(("the same + report.json/md, events.db, 4 plots", t, b, "matplotlib"))

    camp = load_scenario(ROOT / "examples" / "campaign_staffing.toml")
    base = statistics.median(_pair(lambda: None, 50)[1] for _ in range(3))
    for workers in sorted({1, min(2, cores)}):
        t0 = time.perf_counter()
        run_campaign(camp, args.runs, workers=workers, seed=1)
        dt = time.perf_counter() - t0
        per_run = dt * workers / args.runs  # core-seconds per run
        note = f"{args.runs / dt:.0f} runs/s, {args.runs / dt / workers:.0f} runs/s per core"
        what = f"campaign {args.runs} x 72 h, {workers} worker(s), per run"
        rows.append((what, per_run, base, note))

    print(f"machine: {cores} cores; bare simpy 72 h model: {base * 1e3:.3f} ms (median)")
    print(
        "| figure | median | x simpy | fastest | x simpy (fastest) | note |\n"
        "| --- | ---: | ---: | ---: | ---: | --- |"
    )
    for what, t, b, note in rows:
        f, fb = fastest.get(what, (None, None))
        fast = "" if f is None else f"{f * 1e3:.2f} ms | {f / fb:.1f}x"
        print(f"| {what} | {t * 1e3:.2f} ms | {t / b:.1f}x | {fast or ' | '} | {note} |")


if __name__ == "__main__":
    main()
