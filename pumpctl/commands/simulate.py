"""``pumpctl simulate``: run one QA scenario and give a verdict, a report and plots."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from pumpctl.argtypes import SEED
from pumpctl.errors import InputError

log = logging.getLogger("pumpctl.simulate")

#: The ``--hl7-status-period-s`` default and floor (a shorter period makes a stream of
#: hundreds of MB for a 72 h run and takes many minutes).
DEFAULT_STATUS_PERIOD_S = 300.0
MIN_STATUS_PERIOD_S = 1.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``simulate`` sub-command."""
    p = sub.add_parser(
        "simulate",
        help="simulate a QA scenario (exit 0 pass, 1 fail, 2 bad input)",
        description="Run a scenario on the simulated clock with the real controller, "
        "watchdog and log. Exit 0 when every expectation holds, 1 when one fails, 2 for "
        "bad input.",
    )
    p.add_argument(
        "scenario",
        metavar="SCENARIO",
        help="scenario TOML file, or the name of a shipped example (e.g. anakinra_72h)",
    )
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md, events.db, plots")
    p.add_argument("--json", action="store_true", help="print the result JSON")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--seed", type=SEED, metavar="S", help="override the scenario's seed")
    p.add_argument(
        "--hl7-out",
        metavar="FILE",
        help="write the run's outbound HL7 stream (PCD-01/04/10) on the simulation clock",
    )
    p.add_argument(
        "--hl7-status-period-s",
        type=float,
        default=None,
        metavar="S",
        help=f"PCD-01 status period in the --hl7-out stream, at least {MIN_STATUS_PERIOD_S:g} s "
        f"(default {DEFAULT_STATUS_PERIOD_S:g})",
    )
    p.add_argument(
        "--hl7-start",
        metavar="ISO",
        help="UTC date-time of simulation time 0 in the --hl7-out stream "
        "(default: the simulation clock's epoch, 1970-01-01T00:00:00Z)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, print, write; the exit code is the verdict."""
    from pumpctl.report import check_out_dir, markdown, with_flow_accuracy, write_report
    from pumpctl.sim.runner import run_scenario
    from pumpctl.sim.scenario import load_scenario

    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise InputError(f"--seed {args.seed} is not allowed; allowed: 0 to 2**63-1")
    period = _status_period(args)
    epoch = _start_epoch(args.hl7_start)
    if epoch is not None and not args.hl7_out:
        raise InputError(
            "--hl7-start needs --hl7-out; allowed: give --hl7-out FILE, or leave out --hl7-start"
        )
    if args.hl7_out:
        _check_hl7_out(args.hl7_out, args.out)
    if args.out:
        check_out_dir(Path(args.out))  # before the run, not after it
    sc = load_scenario(args.scenario)
    recorder = None
    if args.hl7_out:
        from pumpctl.hl7.stream import StreamRecorder

        recorder = StreamRecorder(status_period_s=period, epoch_s=epoch)
    sim = run_scenario(sc, args.seed, observers=[recorder] if recorder else [])
    if recorder is not None:
        try:
            n = recorder.write(args.hl7_out)
        except OSError as exc:
            raise InputError(f"--hl7-out {args.hl7_out}: cannot write ({exc.strerror})") from None
        print(f"{n} HL7 messages written to {args.hl7_out}")
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
        log.info("report written to %s/", args.out)
    return 0 if result["verdict"] == "pass" else 1


def _status_period(args: argparse.Namespace) -> float:
    """``--hl7-status-period-s``: at least the floor, and only with ``--hl7-out``."""
    period = args.hl7_status_period_s
    if period is None:
        return DEFAULT_STATUS_PERIOD_S
    if not MIN_STATUS_PERIOD_S <= period < float("inf"):
        raise InputError(
            f"--hl7-status-period-s {period:g} is not allowed; allowed: "
            f"{MIN_STATUS_PERIOD_S:g} s or more (default {DEFAULT_STATUS_PERIOD_S:g})"
        )
    if not args.hl7_out:
        raise InputError(
            "--hl7-status-period-s needs --hl7-out; allowed: give --hl7-out FILE, or leave "
            "out --hl7-status-period-s"
        )
    return float(period)


def _check_hl7_out(path: str, out: str | None) -> None:
    """Refuse an ``--hl7-out`` that cannot be written before the run, not after it."""
    p = Path(path)
    where = p.parent if str(p.parent) else Path(".")
    if out:
        base, here = Path(out).resolve(), where.resolve()
        if base == p.resolve():
            raise InputError(
                f"--hl7-out {path}: is the --out directory itself; allowed: a file outside it"
            )
        if base == here or base in here.parents:
            raise InputError(
                f"--hl7-out {path}: is inside --out {out}, which the report replaces; "
                "allowed: a file outside the --out directory"
            )
    if p.is_dir():
        raise InputError(f"--hl7-out {path}: is a directory; allowed: a file path")
    if not where.is_dir():
        what = "is not a directory" if where.exists() else "does not exist"
        raise InputError(
            f"--hl7-out {path}: {where} {what}; allowed: a file in an existing, writable directory"
        )
    if not os.access(where, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(
            f"--hl7-out {path}: not writable; allowed: a file in an existing, writable directory"
        )


def _start_epoch(text: str | None) -> float | None:
    """``--hl7-start`` as Unix seconds (naive times are UTC)."""
    if text is None:
        return None
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"--hl7-start {text!r} is not a date-time; allowed: ISO 8601, e.g. 2026-01-01T08:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
