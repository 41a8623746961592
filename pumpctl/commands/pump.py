"""``pumpctl pump`` (talk to a New Era NE-1000 at the bench) and ``pumpctl emulate``.

``pump`` opens the port with pyserial's ``serial_for_url`` (a device path,
``socket://host:port`` or ``spy://...``), runs one action and exits; errors end in one
line: exit 2 for bad input, 5 when the pump does not answer or refuses.
``emulate`` serves a byte-exact NE-1000 emulator on a pseudo-terminal or a TCP port and
prints the URL to open as the first line of standard output.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from pumpctl.drivers.base import PumpStatus, RateLimits
from pumpctl.errors import CommunicationError, InputError, PumpCommandError

ACTIONS = ("identify", "status", "rate", "vtbi", "run", "stop", "dispensed")
#: Per-attempt reply time-out and retries of the bench command: 2 x 0.5 s = 1.0 s in all.
PUMP_TIMEOUT_S = 0.5
PUMP_RETRIES = 1
MODELS = ("NE1000", "NE500", "NE501", "NE1010")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: Most pumps ``emulate --pumps`` puts on one line.
MAX_EMULATED_PUMPS = 10


def register(sub: Any) -> None:
    """Add the ``pump`` and ``emulate`` sub-commands."""
    p = sub.add_parser(
        "pump",
        help="talk to a New Era NE-1000 syringe pump (bench and QA rigs only)",
        description="One command to a New Era NE-1000 over RS-232 (or a socket:// bridge).",
    )
    p.add_argument(
        "--port",
        required=True,
        metavar="URL",
        help="device path, socket://host:port or spy://... (pyserial URL)",
    )
    p.add_argument("--address", type=int, default=0, metavar="A", help="pump address 0-99")
    p.add_argument(
        "--baud",
        type=int,
        default=19200,
        metavar="B",
        help="baud rate: 300, 1200, 2400, 9600 or 19200 (default 19200)",
    )
    p.add_argument(
        "--safe-timeout",
        type=int,
        default=0,
        metavar="S",
        help="safe mode with an S-second time-out (1-255); the pump stops S s "
        "after the last command unless something keeps it alive; 0 = basic",
    )
    p.add_argument(
        "action",
        choices=ACTIONS,
        metavar="ACTION",
        help="identify | status | rate [ML_PER_H] | vtbi [ML] | run | stop | dispensed",
    )
    p.add_argument(
        "value",
        nargs="?",
        default=None,
        metavar="VALUE",
        help="mL/h for rate, mL for vtbi (omit to read the pump's setting)",
    )
    p.set_defaults(func=run_pump)

    e = sub.add_parser(
        "emulate",
        help="serve a byte-exact New Era NE-1000 emulator on a pty or TCP port",
        description="Emulate a New Era NE-1000 on a pseudo-terminal (default) or TCP; "
        "prints the device path or socket URL first, then runs until stopped.",
    )
    e.add_argument(
        "--link",
        default="pty",
        metavar="pty|tcp:PORT",
        help="pty (default) or tcp:PORT on 127.0.0.1",
    )
    e.add_argument(
        "--address",
        type=int,
        default=0,
        metavar="A",
        help="pump address 0-99 (with --pumps N: the first of N consecutive addresses)",
    )
    e.add_argument(
        "--pumps",
        type=int,
        default=1,
        metavar="N",
        help="pumps on the line, 1-10 (NE-1000 network mode: addresses A..A+N-1, each "
        "answering only its own address; default 1)",
    )
    e.add_argument(
        "--pace-baud",
        type=int,
        default=None,
        metavar="B",
        help="hold each reply for the line time at B baud (300-19200); default: no pacing",
    )
    e.add_argument(
        "--model",
        default="NE1000",
        type=str.upper,
        choices=MODELS,
        help="model reported by VER (default NE1000)",
    )
    e.set_defaults(func=run_emulate)


def _value(args: argparse.Namespace) -> float | None:
    if args.value is None:
        return None
    if args.action not in ("rate", "vtbi"):
        raise InputError(f"'{args.action}' takes no value (got {args.value!r})")
    try:
        value = float(args.value)
    except ValueError:
        raise InputError(f"{args.action} value {args.value!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise InputError(f"{args.action} value {args.value!r} must be a number > 0")
    return value


def _check_value(action: str, value: float | None, limits: RateLimits) -> None:
    """Values outside what the pump profile allows are the user's mistake (exit 2)."""
    if value is None:
        return
    if action == "rate":
        steps = value / limits.resolution_ml_per_h
        if (
            not limits.min_ml_per_h <= value <= limits.max_ml_per_h
            or abs(steps - round(steps)) > 1e-6
        ):
            raise InputError(
                f"rate {value:g} mL/h is not allowed; allowed: {limits.min_ml_per_h:g}-"
                f"{limits.max_ml_per_h:g} mL/h in steps of {limits.resolution_ml_per_h:g}"
            )
    elif action == "vtbi" and not 0 < value <= limits.max_vtbi_ml:
        raise InputError(
            f"vtbi {value:g} mL is not allowed; allowed: up to {limits.max_vtbi_ml:g} mL"
        )


def _check_common(args: argparse.Namespace) -> None:
    if not 0 <= args.address <= 99:
        raise InputError(f"--address {args.address} is not allowed; allowed: 0-99")


def format_status(st: PumpStatus) -> str:
    """A pump read-back as a few aligned lines."""
    vtbi = "none" if st.vtbi_ml is None else f"{st.vtbi_ml:g} mL"
    alarms = ", ".join(sorted(a.value for a in st.alarms)) or "none"
    return "\n".join(
        [
            f"state      {st.run_state.value}",
            f"rate       {st.rate_ml_per_h:g} mL/h",
            f"vtbi       {vtbi}",
            f"infused    {st.volume_infused_ml:.3f} mL",
            f"alarms     {alarms}",
        ]
    )


def run_pump(args: argparse.Namespace) -> int:
    """Open the pump, do one action, print the result."""
    from pumpctl.drivers.base import RunState
    from pumpctl.drivers.newera import BAUD_RATES, NewEraDriver

    _check_common(args)
    if args.baud not in BAUD_RATES:
        raise InputError(
            f"--baud {args.baud} is not allowed; allowed: {', '.join(map(str, BAUD_RATES))}"
        )
    if not 0 <= args.safe_timeout <= 255:
        raise InputError(f"--safe-timeout {args.safe_timeout} is not allowed; allowed: 0-255")
    value = _value(args)
    drv = NewEraDriver(
        args.port,
        address=args.address,
        baud=args.baud,
        safe_timeout_s=args.safe_timeout,
        timeout_s=PUMP_TIMEOUT_S,
        retries=PUMP_RETRIES,
        program_phases=False,
    )
    try:
        act = args.action
        _check_value(act, value, drv.limits)
        if act == "identify":
            ident = drv.identify()
            print(
                f"{ident.model} firmware {ident.firmware or '?'} at address {ident.address} "
                f"on {args.port}"
            )
        elif act == "status":
            print(format_status(drv.status()))
        elif act == "rate":
            if value is None:
                print(f"rate {drv.read_rate_ml_per_h():g} mL/h")
            else:
                drv.set_rate(value)
                print(f"rate set to {value:g} mL/h")
        elif act == "vtbi":
            if value is None:
                vol = drv.read_vol_ml()
                print(f"pump VOL {vol:g} mL per run" if vol else "pump VOL 0 (runs until stopped)")
            else:
                drv.set_vtbi(value)
                st = drv.status()
                print(
                    f"VTBI set to {st.vtbi_ml:g} mL (counted from the last clear; "
                    f"{st.volume_infused_ml:.3f} mL infused so far, pump VOL "
                    f"{drv.read_vol_ml():g} mL)"
                )
        elif act == "run":
            drv.start()
            try:
                st = drv.status()
            except CommunicationError as exc:
                raise CommunicationError(
                    f"RUN was confirmed (the pump is running) but reading its status failed: {exc}"
                ) from None
            if st.run_state is not RunState.RUNNING:
                raise PumpCommandError(f"the pump did not start: it reports {st.run_state.value}")
            print(f"{st.run_state.value} at {st.rate_ml_per_h:g} mL/h")
        elif act == "stop":
            drv.stop()
            print(f"{drv.status().run_state.value}")
        elif act == "dispensed":
            print(f"infused {drv.status().volume_infused_ml:.3f} mL")
    finally:
        drv.close()
    return 0


def run_emulate(args: argparse.Namespace) -> int:
    """Serve the emulator until SIGINT or SIGTERM; the first stdout line is the URL."""
    from pumpctl.clock import SystemClock
    from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator
    from pumpctl.drivers.newera import BAUD_RATES
    from pumpctl.setting import load_pump

    _check_common(args)
    try:
        EmulatorServer.parse_link(args.link)
    except ValueError as exc:
        raise InputError(f"--link: {exc}") from None
    if not 1 <= args.pumps <= MAX_EMULATED_PUMPS:
        raise InputError(f"--pumps {args.pumps} is not allowed; allowed: 1-{MAX_EMULATED_PUMPS}")
    addresses = list(range(args.address, args.address + args.pumps))
    if addresses[-1] > 99:
        raise InputError(
            f"--address {args.address} with --pumps {args.pumps} needs addresses up to "
            f"{addresses[-1]}; allowed: 0-99"
        )
    if args.pace_baud is not None and args.pace_baud not in BAUD_RATES:
        raise InputError(
            f"--pace-baud {args.pace_baud} is not allowed; allowed: "
            f"{', '.join(map(str, BAUD_RATES))}"
        )
    model, clock = load_pump("newera_ne1000"), SystemClock()
    emus = [
        Ne1000Emulator(
            model, clock, address=a, model_number=args.model[2:], pace_baud=args.pace_baud
        )
        for a in addresses
    ]
    server = EmulatorServer(emus, args.link, log=_log_line)
    # Wait for SIGINT/SIGTERM without polling: the signal handler writes the signal number
    # to a pipe (whichever thread the kernel picks), and the main thread blocks reading it.
    # Installing handlers also undoes a shell's "ignore SIGINT" for background jobs.
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    old_fd = signal.set_wakeup_fd(wfd)
    old_handlers = {s: signal.signal(s, _ignore) for s in STOP_SIGNALS}
    try:
        try:
            url = server.start()
        except OSError as exc:
            raise InputError(f"cannot open {args.link}: {exc.strerror or exc}") from None
        print(url, flush=True)
        where = (
            f"at address {args.address}"
            if args.pumps == 1
            else f"x{args.pumps} on one line at addresses {', '.join(map(str, addresses))}"
        )
        print(
            f"emulating New Era {args.model} {where}; stop with Ctrl-C",
            file=sys.stderr,
            flush=True,
        )
        while os.read(rfd, 1)[0] not in STOP_SIGNALS:
            pass
    finally:
        server.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(old_fd)
        os.close(rfd)
        os.close(wfd)
    return 0


def _ignore(_signum: int, _frame: object) -> None:
    return None


def _log_line(message: str) -> None:
    """The emulator's notices (a refused second client) on standard error."""
    print(f"pumpctl emulate: {message}", file=sys.stderr, flush=True)
