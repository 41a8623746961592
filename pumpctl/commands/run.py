"""``pumpctl run``: the headless controller on the simulated pump or a real one."""

from __future__ import annotations

import argparse
import signal
import sys

from pumpctl.argtypes import ADDRESS, BAG_ML, BAUD, INTERVAL_H, SAFE_TIMEOUT_S, SPEED, UNTIL_H
from pumpctl.errors import InputError
from pumpctl.order import Order, to_decimal
from pumpctl.session import open_session


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` sub-command."""
    p = sub.add_parser(
        "run",
        help="headless controller (simulated pump, or a real pump on --port)",
        description="Run the continuous infusion in real time (or --speed times faster). "
        "Restarting with the same --db resumes from the log and the pump: the pump is "
        "never restarted or programmed twice.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="the simulated pump")
    where.add_argument("--port", metavar="URL", help="NE-1000 serial port or socket:// URL")
    p.add_argument("--dose-mg-per-day", metavar="D")
    p.add_argument("--weight-kg", metavar="W")
    p.add_argument("--bag-ml", type=BAG_ML, metavar="V")
    p.add_argument("--interval-h", type=INTERVAL_H, metavar="8|6")
    p.add_argument("--override-reason", metavar="TEXT")
    p.add_argument(
        "--override-by",
        metavar="ID",
        help="the pharmacist or prescriber who overrides a soft limit; their secret comes "
        "from PUMPCTL_OVERRIDE_SECRET or a prompt",
    )
    p.add_argument(
        "--operator",
        metavar="ID",
        help="the nurse programming or resuming (a new run needs one); the secret comes from "
        "PUMPCTL_OPERATOR_SECRET or a prompt",
    )
    p.add_argument("--db", required=True, metavar="PATH")
    p.add_argument("--speed", type=SPEED, default=1.0, metavar="X")
    p.add_argument("--pump", metavar="PROFILE", help="pump model profile (name or path)")
    p.add_argument("--address", type=ADDRESS, default=0, metavar="A")
    p.add_argument("--baud", type=BAUD, metavar="B")
    p.add_argument("--safe-timeout", type=SAFE_TIMEOUT_S, metavar="S")
    p.add_argument("--until-h", type=UNTIL_H, metavar="H", help="stop the controller at this time")
    p.add_argument(
        "--no-staff",
        action="store_true",
        help="no simulated pharmacy and nurse (by default they prime, start and change bags; "
        "on a real pump at the bench the physical steps are yours)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Open or resume the session and run the clock until interrupted."""
    if args.port and args.speed != 1.0:
        raise InputError(
            f"--speed {args.speed} with --port: a real pump runs in real time; "
            "allowed: --speed only with --sim"
        )
    secret = None
    if args.operator is not None:
        from pumpctl.roster import read_secret

        secret = read_secret(f"secret for {args.operator}: ")
    elif args.dose_mg_per_day is not None or args.weight_kg is not None:
        from pumpctl.roster import AuthError

        raise AuthError("a new run needs --operator ID (a nurse) and the operator's secret")
    sess = open_session(
        args.db,
        operator=args.operator,
        secret=secret,
        port=args.port,
        pump=args.pump,
        speed=args.speed,
        address=args.address,
        baud=args.baud,
        safe_timeout_s=args.safe_timeout,
        staff=not args.no_staff,
    )
    ctl = sess.controller
    if sess.demo:
        print("DEMO database: demo keys and roster (pumpctl setting install --demo)")
    if sess.resumed is None:
        if args.dose_mg_per_day is None or args.weight_kg is None:
            sess.close()
            raise InputError("a new run needs --dose-mg-per-day and --weight-kg")
        override_by = None
        if args.override_reason is not None:
            override_by = _override_by(sess, args.override_by)
        order = Order(
            to_decimal(args.dose_mg_per_day, "--dose-mg-per-day"),
            to_decimal(args.weight_kg, "--weight-kg"),
            bag_ml=args.bag_ml,
            interval_h=args.interval_h,
            override_reason=args.override_reason,
            operator=override_by,
        )
        reason = ctl.program(order, args.operator)
        if reason is not None:
            sess.close()
            raise InputError(f"order refused: {reason}")
        label = ctl.build.label().splitlines()[2].strip() if ctl.build else ""
        print(f"started: {'[DEMO] ' if sess.demo else ''}{label}")
    else:
        print(f"resumed from {args.db}: {sess.resumed}")
    sys.stdout.flush()

    def on_signal(signum: int, _frame: object) -> None:
        sess.clock.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    until_s = None if args.until_h is None else args.until_h * 3600.0
    sess.clock.run(until_s)
    ctl.stop_record()
    snap = ctl.snapshot()
    print(
        f"controller stopped at {snap['t_s'] / 3600:.3f} h: state {snap['state']}, "
        f"interrupted {snap['interrupted_s']:.0f} s; the pump keeps its last state"
    )
    unwritten = sess.close()
    if unwritten:
        print(
            f"pumpctl run: {unwritten} event(s) could not be written to {args.db}: "
            f"{sess.log.storage_problem}",
            file=sys.stderr,
        )
        return 1
    return 0


def _override_by(sess: object, op_id: str | None) -> str:
    """Authenticate the pharmacist or prescriber who overrides a soft limit."""
    from pumpctl import roster

    log = sess.log  # type: ignore[attr-defined]
    try:
        if op_id is None:
            raise roster.AuthError(
                "--override-reason needs --override-by ID (a pharmacist or prescriber)"
            )
        secret = roster.read_secret(f"secret for {op_id}: ", "PUMPCTL_OVERRIDE_SECRET")
        return roster.authenticate(log, op_id, secret, "override_soft_limit").id
    except BaseException:
        sess.close()  # type: ignore[attr-defined]
        raise
