"""``pumpctl operator add|remove|list``: the roster of a database (biomed administrator)."""

from __future__ import annotations

import argparse

from pumpctl.roster import ROLES


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``operator`` sub-command group."""
    p = sub.add_parser(
        "operator",
        help="manage the operators of a database (biomed administrator)",
        description="The first operator of a database must be a biomed administrator and needs "
        "no one else's secret; after that a biomed operator (--by) authenticates with "
        "PUMPCTL_OPERATOR_SECRET or a prompt. The new operator's secret comes from "
        "PUMPCTL_NEW_OPERATOR_SECRET or a prompt.",
    )
    osub = p.add_subparsers(dest="operator_command", required=True, parser_class=type(p))
    a = osub.add_parser("add", help="add an operator (or give one a new secret)")
    a.add_argument("id", metavar="ID", help="the new operator's id")
    a.add_argument("--role", required=True, choices=ROLES, help="what the operator may do")
    a.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    a.add_argument("--by", metavar="ADMIN", help="the biomed administrator (not for the first)")
    a.set_defaults(func=add)
    r = osub.add_parser("remove", help="deactivate an operator")
    r.add_argument("id", metavar="ID", help="the operator to remove")
    r.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    r.add_argument("--by", required=True, metavar="ADMIN", help="the biomed administrator")
    r.set_defaults(func=remove)
    ls = osub.add_parser("list", help="the active operators and their roles")
    ls.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    ls.set_defaults(func=list_ops)


def add(args: argparse.Namespace) -> int:
    """Add an operator; the first must be biomed."""
    from pumpctl import roster
    from pumpctl.clock import SystemClock
    from pumpctl.errors import InputError
    from pumpctl.eventlog import EventLog

    roster.check_id(args.id)
    clock = SystemClock()
    with EventLog(args.db, wall_epoch_s=clock.wall_epoch()) as log:
        if roster.has_roster(log):
            if not args.by:
                raise roster.AuthError("--by is missing; allowed: a biomed administrator's id")
            secret = roster.read_secret(f"secret for {args.by}: ")
            roster.authenticate(log, args.by, secret, "manage_operators")
            by = args.by
        else:
            if args.role != "biomed":
                raise InputError(
                    f"{args.db} has no operators yet; the first one must have role biomed"
                )
            by = args.id
        new_secret = roster.read_secret(f"new secret for {args.id}: ", roster.NEW_SECRET_ENV)
        roster.add_operator(log, args.id, args.role, new_secret, by, clock.now())
    print(f"operator {args.id} ({args.role}) added to {args.db} by {by}")
    return 0


def remove(args: argparse.Namespace) -> int:
    """Deactivate an operator."""
    from pumpctl import roster
    from pumpctl.clock import SystemClock
    from pumpctl.eventlog import EventLog

    clock = SystemClock()
    with EventLog(args.db, wall_epoch_s=clock.wall_epoch()) as log:
        secret = roster.read_secret(f"secret for {args.by}: ")
        roster.authenticate(log, args.by, secret, "manage_operators")
        roster.remove_operator(log, args.id, args.by, clock.now())
    print(f"operator {args.id} removed from {args.db} by {args.by}")
    return 0


def list_ops(args: argparse.Namespace) -> int:
    """Print the roster (ids and roles; never secrets)."""
    from pumpctl import roster
    from pumpctl.eventlog import EventLog

    with EventLog(args.db, readonly=True) as log:
        for op in roster.operators(log):
            print(f"{op.id:20s} {op.role}")
    return 0
