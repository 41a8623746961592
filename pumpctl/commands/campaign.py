"""``pumpctl campaign``: Monte Carlo over a scenario's distributions, on one machine or Dask.

Registration imports nothing heavy; the command's body is ``campaign_run``.
"""

from __future__ import annotations

import argparse

MAX_RUNS = 10_000_000  # pumpctl.sim.campaign.MAX_RUNS (checked by tests/test_campaign.py)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``campaign`` sub-command."""
    p = sub.add_parser(
        "campaign",
        help="Monte Carlo campaign of a scenario (exit 0 all pass, 1 some fail, 2 bad input, "
        "130 interrupted)",
        description="Run a scenario many times with per-run seeds from one campaign seed; "
        "the summary is the same whatever the scheduler and worker count.",
    )
    p.add_argument(
        "scenario",
        metavar="SCENARIO",
        help="scenario TOML file, or the name of a shipped example (e.g. campaign_staffing)",
    )
    p.add_argument(
        "--runs",
        type=int,
        required=True,
        metavar="N",
        help=f"number of runs, >= 1 and <= {MAX_RUNS}",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="K",
        help="processes (local) or Dask workers (dask); capped at min(runs, cores); "
        "default 1 for local, one per core for dask",
    )
    p.add_argument(
        "--scheduler",
        default="local",
        metavar="local|dask|tcp://HOST:PORT",
        help="local process pool (default), a Dask LocalCluster, or a running Dask scheduler",
    )
    p.add_argument("--seed", type=int, metavar="S", help="campaign seed (default: the scenario's)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="stream runs.parquet (runs.csv without pyarrow), write campaign.json, "
        "histograms.png (and sweep.csv, sweep.json, sweep.png for a sweep)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the interrupted campaign in --out DIR"
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="run the campaign at each value of a dotted scenario key (repeatable: a grid), "
        "e.g. nurse.response_min=2,5,10",
    )
    p.add_argument("--json", action="store_true", help="print the summary JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the campaign (the body lives in ``campaign_run``)."""
    from pumpctl.commands.campaign_run import run as run_campaign_command

    return run_campaign_command(args)
