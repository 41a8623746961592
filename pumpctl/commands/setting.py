"""``pumpctl setting check|install``: validate and install pump settings and profiles."""

from __future__ import annotations

import argparse
import sys

from pumpctl.errors import InputError
from pumpctl.setting import DrugSetting, load_any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``setting`` sub-command group."""
    p = sub.add_parser(
        "setting",
        help="check or install pump settings and pump profiles",
        description="Check drug settings and pump profiles (TOML), or install a drug "
        "setting in a run's event log. Exit 0 all valid, 2 a file is not.",
    )
    ssub = p.add_subparsers(dest="setting_command", required=True, parser_class=type(p))
    c = ssub.add_parser(
        "check",
        help="validate files and print each one's version",
        description="Validate each file; print 'OK file kind name version' or one error line.",
    )
    c.add_argument(
        "files", nargs="+", metavar="FILE", help="drug setting or pump profile TOML files"
    )
    c.set_defaults(func=check)
    i = ssub.add_parser(
        "install",
        help="record a setting (and its version) in the event log",
        description="Validate a drug setting and record it, with its version and the "
        "operator, in the event log; a run uses the setting stored there.",
    )
    i.add_argument("file", metavar="FILE", help="the drug setting TOML file")
    i.add_argument(
        "--db", required=True, metavar="PATH", help="event log (SQLite; created if missing)"
    )
    i.add_argument("--operator", required=True, metavar="ID", help="who installs it (logged)")
    i.set_defaults(func=install)


def check(args: argparse.Namespace) -> int:
    """Validate every file; print ``OK kind name version`` or one error line each."""
    failed = 0
    for f in args.files:
        try:
            item = load_any(f)
        except InputError as exc:
            print(f"pumpctl setting check: {exc}", file=sys.stderr)
            failed += 1
            continue
        kind = "setting" if isinstance(item, DrugSetting) else "pump"
        print(f"OK  {f}  {kind} '{item.name}'  version {item.version}")
    return 2 if failed else 0


def install(args: argparse.Namespace) -> int:
    """Validate a drug setting and record it in the event log before it can be used."""
    from pumpctl.eventlog import EventLog

    item = load_any(args.file)
    if not isinstance(item, DrugSetting):
        raise InputError(f"{args.file}: is a pump profile; allowed: a drug setting to install")
    if not args.operator.strip():
        raise InputError("--operator is empty; allowed: an operator id")
    from pumpctl.clock import SystemClock

    with EventLog(args.db, wall_epoch_s=SystemClock().wall_epoch()) as log:
        log.install_setting(item, operator=args.operator)
    print(f"installed '{item.name}' version {item.version} in {args.db} by {args.operator}")
    return 0
