"""``pumpctl report``: the QA report of any event log (simulated or from a real pump)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pumpctl.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``report`` sub-command."""
    p = sub.add_parser(
        "report",
        help="report of an event log: interruptions, dose, bags, alarms, plots",
        description="Build the QA report (report.json, report.md and plots, as "
        "'simulate --out' writes) from any pumpctl event log: the events.db of a "
        "simulation or the --db of 'pumpctl run' on a simulated or real pump. Exit 0 when "
        "the run's expectations hold, 1 when one fails, 2 for bad input.",
    )
    p.add_argument("db", metavar="DB", help="a pumpctl event log (SQLite)")
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md and plots here")
    p.add_argument("--json", action="store_true", help="print the result JSON")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the log (read-only), build the report, print and write it."""
    from pumpctl.eventlog import EventLog, is_demo, read_events
    from pumpctl.report import (
        build_result,
        check_out_dir,
        markdown,
        with_flow_accuracy,
        write_report,
    )

    if args.out:
        out = Path(args.out)
        if out.resolve() in Path(args.db).resolve().parents:
            raise InputError(
                f"--out {args.out}: holds the event log {args.db}, which the report would "
                "replace; allowed: a directory that does not hold the log"
            )
        check_out_dir(out)
    events = read_events(args.db)
    with EventLog(args.db, readonly=True) as log:
        demo = is_demo(log)
    result = build_result(events)
    result["demo"] = demo  # a DEMO database (demo keys and roster): the report says so
    if args.out:
        result = write_report(result, events, Path(args.out), plots=not args.no_plots)
    else:
        result = with_flow_accuracy(result, events)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
        if args.out:
            print(f"report written to {args.out}/")
    return 0 if result["expectations_met"] else 1
