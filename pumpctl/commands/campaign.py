"""``pumpctl campaign``: Monte Carlo over a scenario's distributions."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from pumpctl.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``campaign`` sub-command."""
    p = sub.add_parser(
        "campaign",
        help="Monte Carlo campaign of a scenario (exit 0 all pass, 1 some fail, 2 bad input)",
        description="Run a scenario many times, drawing every distribution anew for each "
        "run. Exit 0 when every run meets the expectations, 1 when some do not, 2 for bad "
        "input.",
    )
    p.add_argument(
        "scenario",
        metavar="SCENARIO",
        help="scenario TOML file, or the name of a shipped example (e.g. campaign_staffing)",
    )
    p.add_argument("--runs", type=int, required=True, metavar="N", help="number of runs (>= 1)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="K",
        help="worker processes (default 1; at most one per core helps)",
    )
    p.add_argument("--seed", type=int, metavar="S", help="campaign seed (default: the scenario's)")
    p.add_argument("--out", metavar="DIR", help="write campaign.json, runs.csv, histograms.png")
    p.add_argument("--json", action="store_true", help="print the summary JSON")
    p.set_defaults(func=run)


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self) -> None:
        from pumpctl.clock import SystemClock

        self.clock = SystemClock()  # runs per second of wall time, for the display only
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = done * 100 // total
        tty = sys.stderr.isatty()
        step = 1 if tty else 25  # redraw in place on a terminal, a few lines in a log
        if pct // step == self.last and done != total:
            return
        self.last = pct // step
        rate = done / max(self.clock.now(), 1e-9)
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        line = f"[{bar}] {done}/{total} runs, {rate:.0f} runs/s"
        if tty:
            sys.stderr.write("\r" + line + ("\n" if done == total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Run the campaign, print the summary, write the files."""
    from pumpctl.sim.campaign import plot_histograms, run_campaign, summarise
    from pumpctl.sim.scenario import load_scenario

    if args.runs < 1:
        raise InputError(f"--runs {args.runs} is not allowed; allowed: 1 or more")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers} is not allowed; allowed: 1 or more")
    sc = load_scenario(args.scenario)
    seed = sc.seed if args.seed is None else args.seed
    records = run_campaign(sc, args.runs, workers=args.workers, seed=seed, progress=_Progress())
    summary = summarise(sc, records, seed)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "campaign.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (out / "runs.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "seed",
                    "verdict",
                    "interrupted_s",
                    "interruptions",
                    "causes",
                    "dose_error_pct",
                    "bags",
                ]
            )
            for r in records:
                w.writerow(
                    [
                        r["seed"],
                        r["verdict"],
                        r["interrupted_s"],
                        r["interruptions"],
                        ";".join(r["causes"]),
                        r["dose_error_pct"],
                        r["bags"],
                    ]
                )
        plot_histograms(records, summary, out / "histograms.png")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        s = summary
        print(
            f"campaign {s['scenario']}: {s['runs']} runs (seed {seed}), "
            f"{s['passed']} pass, {s['failed']} fail"
        )
        print(f"  runs with any interruption: {s['share_interrupted'] * 100:.2f}%")
        print(f"  interrupted s: {s['interrupted_s']}")
        print(f"  dose error %:  {s['dose_error_pct']}")
        print(f"  causes: {s['interruption_causes']}")
        for w in s["worst_runs"]:
            print(f"  worst: {w['interrupted_s']:9.1f} s  {w['causes']}  -> {w['reproduce']}")
    return 0 if summary["failed"] == 0 else 1
