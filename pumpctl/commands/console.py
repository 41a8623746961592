"""``pumpctl console``: the nurse console (Textual) on the simulated pump or a real one."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pumpctl.argtypes import SPEED, add_link_arguments
from pumpctl.errors import InputError, PumpctlError

DEMO_SETTING = "anakinra_continuous"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``console`` sub-command."""
    p = sub.add_parser(
        "console",
        help="nurse console: the pump channel screen, alarms and bag changes",
        description="A smart pump's channel screen in the terminal. Every action goes "
        "through the controller and its event log; reopening the console on the same "
        "--db shows what the log says. Quitting the console never stops the pump. "
        "With --sim and no --db a temporary demo log is made and the shipped setting "
        "is installed in it: a DEMO database (demo keys and roster, see docs/trust.md).",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The console's options (shared with ``python -m pumpctl.console.app``)."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="simulated pump and pharmacy")
    where.add_argument("--port", metavar="URL", help="NE-1000 serial port or socket:// URL")
    p.add_argument(
        "--db",
        metavar="PATH",
        help="event log (SQLite) of the run; required with --port "
        "(default with --sim: a new temporary demo log)",
    )
    p.add_argument(
        "--speed",
        type=SPEED,
        metavar="X",
        help="simulated time runs X times faster (default 1, or the speed the --db run uses)",
    )
    p.add_argument(
        "--pump",
        metavar="PROFILE",
        help="pump model profile, shipped name or path (default: generic_lvp with --sim, "
        "newera_ne1000 with --port; a resumed run keeps its pump)",
    )
    p.add_argument(
        "--operator",
        metavar="ID",
        help="operator id, checked against the database's roster with the secret from "
        "PUMPCTL_OPERATOR_SECRET (or asked) before the console opens; required with --port "
        "(with --sim and no --operator the id is only asked for, not checked)",
    )
    p.add_argument(
        "--auto-nurse",
        action="store_true",
        help="start with the simulated nurse on (toggle with n; --sim only)",
    )
    add_link_arguments(p)


def demo_db() -> Path:
    """A new temporary DEMO event log (demo keys and roster) with the shipped, demo-signed
    setting installed by 'biomed-demo'."""
    from pumpctl import library, signing
    from pumpctl.clock import SystemClock
    from pumpctl.eventlog import EventLog
    from pumpctl.setting import load_setting

    path = Path(tempfile.mkdtemp(prefix="pumpctl-console-")) / "demo.db"
    setting = load_setting(DEMO_SETTING)
    with EventLog(path, wall_epoch_s=SystemClock().wall_epoch()) as log:
        library.init_demo(log)
        _version, sigs = signing.read_signatures(setting.path)
        library.install_signed(log, setting, sigs, "biomed-demo", 0.0)
    return path


def stored_speed(db: Path) -> float | None:
    """The speed an existing run was started at, if any."""
    if not db.exists():
        return None
    from pumpctl.eventlog import EventLog

    with EventLog(db, readonly=True) as log:
        value = log.meta_get("speed")
    return None if value is None else float(value)


def run(args: argparse.Namespace) -> int:
    """Open (or resume) the session, run the console, close the session (pump untouched)."""
    if args.port and not args.db:
        raise InputError("--port needs --db PATH: a real pump's run keeps its event log")
    if args.auto_nurse and not args.sim:
        raise InputError(
            "--auto-nurse needs --sim: the simulated nurse has no hands on a real pump"
        )
    if args.operator is not None and (not args.operator.strip() or " " in args.operator):
        raise InputError(f"--operator {args.operator!r}; allowed: one word, not empty")
    if args.port and args.operator is None:
        raise InputError(
            "a console on a real pump needs --operator ID (checked with the operator's secret)"
        )
    secret = None
    if args.operator is not None:
        from pumpctl.roster import read_secret

        secret = read_secret(f"secret for {args.operator}: ")
    db = Path(args.db) if args.db else demo_db()
    speed = args.speed if args.speed is not None else (stored_speed(db) or 1.0)
    if speed <= 0 or speed != speed or speed == float("inf"):
        raise InputError(f"--speed {speed} is not allowed; allowed: a number > 0")

    from pumpctl.console.app import ConsoleApp
    from pumpctl.session import open_session

    sess = open_session(
        db,
        operator=args.operator,
        secret=secret,
        port=args.port,
        pump=args.pump,
        speed=speed,
        address=args.address,
        baud=args.baud,
        safe_timeout_s=args.safe_timeout,
        staff=False,
    )
    try:
        app = ConsoleApp(sess, operator=args.operator, speed=speed, auto_nurse=args.auto_nurse)
        app.run()
        snap = sess.controller.snapshot()
    finally:
        sess.close()
    where = "--sim" if args.sim else f"--port {args.port}"
    from pumpctl.eventtext import hms

    print(
        f"console closed at {hms(snap['t_s'])} (simulated h:mm:ss): state {snap['state']}, "
        f"interrupted {hms(snap['interrupted_s'])}; the pump keeps its program.\n"
        f"log: {db}\nreopen: pumpctl console {where} --db {db} --speed {speed:g}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pumpctl.console.app``: the console without the ``pumpctl`` frame."""
    p = argparse.ArgumentParser(prog="pumpctl console", description="nurse console")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except PumpctlError as exc:
        print(f"pumpctl console: {exc}", file=sys.stderr)
        return exc.exit_code
