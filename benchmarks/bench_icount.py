"""Benchmark by instruction count: what a run costs, free of a noisy machine's timing.

Run: .venv/bin/python benchmarks/bench_icount.py [--runs 10]
(needs valgrind, and the ``bench`` extra for simpy: ``pip install -e '.[bench]'``).

Milliseconds on a shared machine move by half from one minute to the next; the number of
machine instructions a run executes does not. Each figure runs the workload once and
``--runs + 1`` times under valgrind's callgrind and takes the difference, so the
interpreter's start-up and the imports cancel out; the bare simpy model of the same 72 h
scenario (``benchmarks/simpy_model.py``) is counted the same way, as the yardstick.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {
    "one 72 h run, controller + watchdog + in-memory log": (
        "from pumpctl.sim.runner import run_scenario\n"
        "from pumpctl.sim.scenario import load_scenario\n"
        "sc = load_scenario({root!r} + '/examples/anakinra_72h.toml')\n"
        "work = lambda: run_scenario(sc, trace=False)\n"
    ),
    "one 30-day run (720 h)": (
        "import dataclasses\n"
        "from pumpctl.sim.runner import run_scenario\n"
        "from pumpctl.sim.scenario import load_scenario\n"
        "sc = dataclasses.replace(load_scenario({root!r} + '/examples/anakinra_72h.toml'),"
        " duration_h=720.0)\n"
        "work = lambda: run_scenario(sc, trace=False)\n"
    ),
    "one campaign run (campaign_staffing.toml)": (
        "from pumpctl.sim.campaign import one_run\n"
        "from pumpctl.sim.scenario import load_scenario\n"
        "sc = load_scenario({root!r} + '/examples/campaign_staffing.toml')\n"
        "seeds = iter(range(10**6))\n"
        "work = lambda: one_run(sc, next(seeds))\n"
    ),
    "bare simpy model of the 72 h scenario": (
        "import sys\n"
        "sys.path.insert(0, {root!r} + '/benchmarks')\n"
        "from simpy_model import run_simpy\n"
        "work = run_simpy\n"
    ),
}


#: A fixed hash seed, and numpy's BLAS on one thread: its worker threads (started when a
#: workload imports numpy, as the campaign's does) spin for as long as the scheduler lets
#: them, and valgrind counts every thread, which moved the campaign figure by 10-30 %.
_QUIET_ENV = {
    "PYTHONHASHSEED": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def instructions(setup: str, runs: int) -> int:
    """Instructions valgrind counts for ``runs`` calls of ``work`` after ``setup``."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "work.py"
        script.write_text(
            f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
            + setup.format(root=str(ROOT))
            + f"work()\nfor _ in range({runs}):\n    work()\n"  # the first call warms caches
        )
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                str(script),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **_QUIET_ENV},
        )
        found = re.search(r"Collected : (\d+)", out.stderr)
        if out.returncode != 0 or found is None:
            sys.exit(f"valgrind failed on the workload:\n{out.stderr[-2000:]}")
        return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="runs counted per workload")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("bench_icount: needs valgrind (apt install valgrind)", file=sys.stderr)
        return 2
    per_run: dict[str, float] = {}
    for name, setup in WORKLOADS.items():
        runs = max(1, args.runs // 5) if "30-day" in name else args.runs
        base = instructions(setup, 0)
        more = instructions(setup, runs)
        per_run[name] = (more - base) / runs
    yard = per_run["bare simpy model of the 72 h scenario"]
    print("| workload | instructions per run | x simpy |\n| --- | ---: | ---: |")
    for name, n in per_run.items():
        print(f"| {name} | {n / 1e6:.2f} M | {n / yard:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
