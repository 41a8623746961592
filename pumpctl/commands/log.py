"""``pumpctl log``: list an event log (read-only) or verify its chain."""

from __future__ import annotations

import argparse
import json
import sys

from pumpctl.errors import InputError, PumpctlError


class ChainError(PumpctlError):
    """The log fails its chain check (exit 1: an expectation failed)."""

    exit_code = 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``log`` sub-command."""
    p = sub.add_parser(
        "log",
        help="list an event log, or verify it (--verify)",
        description="List a run's event log in order: sequence number, simulated hours, "
        "wall time (UTC), pump, state, event, operator and detail. The database is opened "
        "read-only and never changed; a file that is not a pumpctl log is refused. Exit 2 "
        "for a missing log or an unknown --event name, 1 when --verify finds a bad row.",
    )
    p.add_argument(
        "--db", required=True, metavar="PATH", help="the event log (SQLite) of a run or simulation"
    )
    p.add_argument("--json", action="store_true", help="one JSON array")
    p.add_argument("--event", metavar="NAME", help="only events of this name")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every row's seal and link; name the first bad row (exit 1)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the events in order, or the chain check."""
    from pumpctl.eventlog import (
        EventLog,
        UnreadableLogError,
        is_demo,
        known_event_names,
        verify_chain,
    )

    with EventLog(args.db, readonly=True) as log:
        if args.verify:
            try:
                ok, bad, why = verify_chain(log)
            except UnreadableLogError as exc:
                raise InputError(
                    f"{args.db}: cannot be read, so cannot be verified ({exc.reason}); "
                    "allowed: an undamaged pumpctl event log (restore it from a copy)"
                ) from None
            if not ok:
                raise ChainError(f"{args.db}: FAILED at row {bad}: {why}")
            print(f"{args.db}: OK: {why}{' [DEMO]' if is_demo(log) else ''}")
            return 0
        if args.event is not None:
            known = known_event_names(log)
            if args.event not in known:
                raise InputError(
                    f"--event {args.event!r} is not known; allowed: {', '.join(known)}"
                )
        events = [e for e in log.events() if args.event in (None, e.event)]
        demo = is_demo(log)
    for e in events:
        if e.problem:
            print(f"pumpctl log: {args.db}: {e.problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([e.to_json() for e in events], indent=1))
        return 0
    if demo:
        print("DEMO database: demo keys and roster (not for patient use)")
    for e in events:
        detail = json.dumps(e.detail, sort_keys=True, separators=(",", ":"))
        print(
            f"{e.seq:6d}  {e.t_s / 3600:9.4f} h  {e.wall_utc}  {e.pump:6s} {e.state:10s} "
            f"{e.event:20s} {e.operator:10s} {detail}"
        )
    return 0
