"""``pumpctl run``: the headless controller on the simulated pump or a real one."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from pumpctl.argtypes import (
    BAG_ML,
    INTERVAL_H,
    SPEED,
    UNTIL_H,
    add_link_arguments,
)
from pumpctl.errors import InputError

log = logging.getLogger("pumpctl.run")


#: Above this --speed the run is not time-faithful: a timer fires a few ms late and a
#: callback takes a few ms of wall time; multiplied by the speed that becomes seconds of
#: simulated time, so short events (60 s gaps, 2 min silences, the nurse's bag-change
#: margin) drift, and a bag can run dry that ``pumpctl simulate`` would not show.
#: Measured on a busy 2-core machine, timers fire late by (simulated) p95 0.09 s / max
#: 0.3 s at 60x, p95 1.8 s / max 4.9 s at 600x, p95 13 s / max 37 s at 3600x.
FAITHFUL_SPEED_MAX = 60.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` sub-command."""
    p = sub.add_parser(
        "run",
        help="headless controller (simulated pump, or a real pump on --port)",
        description="Run the continuous infusion in real time (or --speed times faster), "
        "printing one line per state change, bag step and alarm (or, with --json, one JSON "
        "object per event). Restarting with the same --db resumes from the log and the "
        "pump: the pump is never restarted or programmed twice. Stop with Ctrl-C; the pump "
        "keeps its last state.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="the simulated pump")
    where.add_argument("--port", metavar="URL", help="NE-1000 serial port or socket:// URL")
    p.add_argument(
        "--dose-mg-per-day", metavar="D", help="ordered dose in mg/day (a new run needs it)"
    )
    p.add_argument("--weight-kg", metavar="W", help="patient weight in kg (a new run needs it)")
    p.add_argument(
        "--bag-ml",
        type=BAG_ML,
        metavar="V",
        help="bag size in mL: 50, 100 or 250 (default: the setting's, 100 mL)",
    )
    p.add_argument(
        "--interval-h",
        type=INTERVAL_H,
        metavar="8|6",
        help="hours per bag: force q8h or q6h (default: q8h unless q6h rounds nearer)",
    )
    p.add_argument(
        "--override-reason",
        metavar="TEXT",
        help="why a soft limit is exceeded (logged with --operator)",
    )
    p.add_argument(
        "--confirm-deviation",
        metavar="REASON",
        help="the pharmacist accepts a build further from the order than the setting allows "
        "(default 10 %%); given with --override-by",
    )
    p.add_argument(
        "--override-by",
        metavar="ID",
        help="the pharmacist or prescriber who overrides a soft limit or confirms a deviation; "
        "their secret comes "
        "from PUMPCTL_OVERRIDE_SECRET or a prompt",
    )
    p.add_argument(
        "--operator",
        metavar="ID",
        help="the nurse programming or resuming (a new run needs one); the secret comes from "
        "PUMPCTL_OPERATOR_SECRET or a prompt",
    )
    p.add_argument(
        "--db",
        required=True,
        metavar="PATH",
        help="event log (SQLite) with the installed setting: see 'pumpctl setting install'",
    )
    p.add_argument(
        "--speed",
        type=SPEED,
        default=1.0,
        metavar="X",
        help="simulated time runs X times faster than real time (--sim only; default 1). "
        f"Above {FAITHFUL_SPEED_MAX:g} the run is not time-faithful: a few ms of timer and "
        "callback delay become seconds of simulated time, so short gaps and the bag-change "
        "margin drift; use 'pumpctl simulate' for exact accelerated runs",
    )
    p.add_argument(
        "--pump",
        metavar="PROFILE",
        help="pump model profile, shipped name or path (default: generic_lvp with --sim, "
        "newera_ne1000 with --port; a resumed run keeps its pump)",
    )
    add_link_arguments(p)
    p.add_argument(
        "--relay",
        action="store_true",
        help="two NE-1000 pumps on one line, at --address and the next address, take turns "
        "across syringe changes with no gap (needs --port)",
    )
    p.add_argument(
        "--until-h",
        type=UNTIL_H,
        metavar="H",
        help="stop the controller at this simulated time in hours (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--no-staff",
        action="store_true",
        help="no simulated pharmacy and nurse (by default they prime, start and change bags; "
        "on a real pump at the bench the physical steps are yours)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line for every event (for machines), not text lines",
    )
    p.set_defaults(func=run)


class EventPrinter:
    """A controller listener: one line per state change, bag step and alarm on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, ev: Any) -> None:
        from pumpctl.eventtext import ROUTINE, describe, hms

        if self.as_json:
            print(json.dumps(event_json(ev), separators=(",", ":")), flush=True)
        elif str(ev.event) not in ROUTINE:
            text, _style = describe(ev)
            print(f"{hms(ev.t_s):>9}  {ev.operator:<13} {text}", flush=True)


def event_json(ev: Any) -> dict[str, Any]:
    """An event as one JSON object (the same fields as ``pumpctl log --json``, and text)."""
    from pumpctl.eventtext import describe

    out = ev.to_json() if hasattr(ev, "to_json") else {"event": str(ev.event)}
    out["text"] = describe(ev)[0]
    return out


def run(args: argparse.Namespace) -> int:
    """Open or resume the session and run the clock until interrupted."""
    from pumpctl.eventtext import hms, resume_text
    from pumpctl.order import Order, to_decimal
    from pumpctl.session import open_session

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
        relay=args.relay,
    )
    ctl = sess.controller
    if sess.demo and args.json:
        print(json.dumps({"event": "demo_database", "demo": True}), flush=True)
    elif sess.demo:
        print("DEMO database: demo keys and roster (pumpctl setting install --demo)")
    printer = EventPrinter(args.json)
    if sess.resumed is None:
        if args.dose_mg_per_day is None or args.weight_kg is None:
            sess.close()
            raise InputError("a new run needs --dose-mg-per-day and --weight-kg")
        override_by = None
        if args.override_reason is not None or args.confirm_deviation is not None:
            override_by = _override_by(sess, args.override_by)
        order = Order(
            to_decimal(args.dose_mg_per_day, "--dose-mg-per-day"),
            to_decimal(args.weight_kg, "--weight-kg"),
            bag_ml=args.bag_ml,
            interval_h=args.interval_h,
            override_reason=args.override_reason,
            confirm_deviation=args.confirm_deviation,
            operator=override_by,
        )
        ctl.listeners.append(printer)
        reason = ctl.program(order, args.operator)
        if reason is not None:
            sess.close()
            raise InputError(f"order refused: {reason}")
    else:
        resumed = [e for e in ctl.log.events() if e.event == "resume"]
        if args.json and resumed:
            printer(resumed[-1])
        elif not args.json:
            print(f"{args.db}: {resume_text(sess.resumed)}", flush=True)
        ctl.listeners.append(printer)

    if args.speed > FAITHFUL_SPEED_MAX:
        log.warning(
            "--speed %g is above %gx: the run is not time-faithful (timer and callback "
            "delays of a few ms become seconds of simulated time); use 'pumpctl simulate' "
            "for exact accelerated runs",
            args.speed,
            FAITHFUL_SPEED_MAX,
        )

    def on_signal(signum: int, _frame: object) -> None:
        sess.clock.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    until_s = None if args.until_h is None else args.until_h * 3600.0
    try:
        sess.clock.run(until_s)
    finally:
        if printer in ctl.listeners:
            ctl.listeners.remove(printer)
    ctl.stop_record()
    snap = ctl.snapshot()
    if args.json:
        stopped = {
            "event": "controller_stopped",
            "t_s": round(snap["t_s"], 3),
            "state": snap["state"],
            "interrupted_s": round(snap["interrupted_s"], 3),
        }
        print(json.dumps(stopped, separators=(",", ":")), flush=True)
    else:
        print(
            f"controller stopped at {hms(snap['t_s'])} (simulated h:mm:ss): state "
            f"{snap['state']}, interrupted {hms(snap['interrupted_s'])}; the pump keeps its "
            "last state",
            flush=True,
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
                "--override-reason or --confirm-deviation needs --override-by ID "
                "(a pharmacist or prescriber)"
            )
        secret = roster.read_secret(f"secret for {op_id}: ", "PUMPCTL_OVERRIDE_SECRET")
        return roster.authenticate(log, op_id, secret, "override_soft_limit").id
    except BaseException:
        sess.close()  # type: ignore[attr-defined]
        raise
