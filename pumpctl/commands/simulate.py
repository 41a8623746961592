"""``pumpctl simulate``: run one QA scenario and give a verdict, a report and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pumpctl.argtypes import SEED


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``simulate`` sub-command."""
    p = sub.add_parser(
        "simulate",
        help="simulate a QA scenario (exit 0 pass, 1 fail, 2 bad input)",
        description="Run a scenario on the simulated clock with the real controller, "
        "watchdog and log. Exit 0 when every expectation holds, 1 when one fails, 2 for "
        "bad input.",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md, events.db, plots")
    p.add_argument("--json", action="store_true", help="print the result JSON")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--seed", type=SEED, metavar="S", help="override the scenario's seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, print, write; the exit code is the verdict."""
    from pumpctl.report import markdown, with_flow_accuracy, write_report
    from pumpctl.sim.runner import run_scenario
    from pumpctl.sim.scenario import load_scenario

    sc = load_scenario(args.scenario)
    sim = run_scenario(sc, args.seed)
    events = sim.log.events()
    if args.out:
        result = write_report(
            sim.result,
            events,
            Path(args.out),
            plots=not args.no_plots,
            write_db=sim.log.write_sqlite,
        )
    else:
        result = with_flow_accuracy(sim.result, events)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
        if args.out:
            print(f"report written to {args.out}/")
    return 0 if result["verdict"] == "pass" else 1
