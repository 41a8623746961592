"""``pumpctl log``: list an event log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pumpctl.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``log`` sub-command."""
    p = sub.add_parser(
        "log",
        help="list an event log",
        description="List a run's event log in order: sequence number, simulated hours, "
        "wall time (UTC), pump, state, event, operator and detail. Exit 2 for a missing "
        "log or an unknown --event name.",
    )
    p.add_argument(
        "--db", required=True, metavar="PATH", help="the event log (SQLite) of a run or simulation"
    )
    p.add_argument("--json", action="store_true", help="one JSON array")
    p.add_argument("--event", metavar="NAME", help="only events of this name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the events in order."""
    from pumpctl.eventlog import EventLog

    if not Path(args.db).exists():
        raise InputError(f"{args.db}: no such event log")
    with EventLog(args.db) as log:
        everything = log.events()
    if args.event is not None:
        known = _event_names() | {e.event for e in everything}
        if args.event not in known:
            raise InputError(
                f"--event {args.event!r} is not an event name; allowed: " + ", ".join(sorted(known))
            )
    events = [e for e in everything if args.event in (None, e.event)]
    if args.json:
        print(json.dumps([e.to_json() for e in events], indent=1))
        return 0
    for e in events:
        detail = json.dumps(e.detail, sort_keys=True, separators=(",", ":"))
        print(
            f"{e.seq:6d}  {e.t_s / 3600:9.4f} h  {e.wall_utc}  {e.pump:6s} {e.state:10s} "
            f"{e.event:20s} {e.operator:10s} {detail}"
        )
    return 0


def _event_names() -> set[str]:
    """Every event name the controller can log (beyond those in this log), if it says."""
    try:
        from pumpctl.controller import EventKind  # type: ignore[attr-defined]
    except ImportError:
        return set()
    return {str(k) for k in EventKind}
