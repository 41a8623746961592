"""``pumpctl hl7 serve|send``: IHE PCD orders in, status, events and alarms out, over MLLP."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from pumpctl.errors import InputError, PumpctlError
from pumpctl.hl7 import codec


class ReceiverError(PumpctlError):
    """The HL7 receiver did not answer (exit 5)."""

    exit_code = 5


class NotAcceptedError(PumpctlError):
    """The receiver answered with a reject or an error (exit 3)."""

    exit_code = 3


def _positive(flag: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{flag} {value:g} is not allowed; allowed: a number > 0")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``hl7`` sub-command and its ``serve`` and ``send`` actions."""
    p = sub.add_parser(
        "hl7",
        help="HL7 v2 / IHE PCD over MLLP: take orders, report status, events and alarms",
        description="IHE PCD interfaces: PCD-03 orders in (RGV^O15 -> ACK^O15 + RRG^O16), "
        "PCD-01 status, PCD-10 infusion events and PCD-04 alarms out, over MLLP.",
    )
    hsub = p.add_subparsers(dest="hl7_command", required=True, parser_class=type(p))
    s = hsub.add_parser(
        "serve",
        help="run the controller behind an MLLP server",
        description="Take PCD-03 orders on --listen, answer ACK^O15 on the same connection, "
        "and send RRG^O16, PCD-01, PCD-10 and PCD-04 to --forward. Outbound messages are "
        "kept in the database until acknowledged, and re-sent in order.",
    )
    s.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0 picks one")
    s.add_argument("--db", required=True, metavar="PATH", help="the run's event log (SQLite)")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="the simulated pump")
    where.add_argument("--port", metavar="URL", help="NE-1000 serial port or socket:// URL")
    s.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="simulated time runs X times faster (with --sim only; default 1)",
    )
    s.add_argument("--pump", metavar="PROFILE", help="pump model profile (name or path)")
    s.add_argument(
        "--device-id",
        metavar="ID",
        help="this pump's id: orders must name it in OBX-18 (default: accept any id and "
        "report as the id of the programmed order)",
    )
    s.add_argument("--forward", metavar="HOST:PORT", help="receiver of RRG^O16 and ORU")
    s.add_argument(
        "--status-period-s",
        type=float,
        default=60.0,
        metavar="S",
        help="PCD-01 status period in pump-clock seconds (default 60)",
    )
    s.add_argument(
        "--retry-s", type=float, default=2.0, metavar="S", help="wait between send attempts"
    )
    s.add_argument(
        "--ack-timeout-s", type=float, default=10.0, metavar="S", help="wait for each ACK"
    )
    s.add_argument(
        "--no-staff",
        action="store_true",
        help="no simulated pharmacy and nurse (by default they compound, hang and start)",
    )
    s.set_defaults(func=serve)
    t = hsub.add_parser(
        "send",
        help="send one message over MLLP and print the acknowledgement",
        description="Send one ER7 message (segments on lines or joined by carriage "
        "returns; '#' lines are ignored). Exit 0 when the answer accepts it (AA/CA), 3 when "
        "it rejects it, 5 when nobody answers, 2 for a bad file.",
    )
    t.add_argument("file", metavar="FILE", help="one HL7 v2 message (ER7)")
    t.add_argument("--to", required=True, metavar="HOST:PORT", help="the MLLP receiver")
    t.add_argument(
        "--timeout-s", type=float, default=10.0, metavar="S", help="wait this long for the ACK"
    )
    t.set_defaults(func=send)
    r = hsub.add_parser(
        "listen",
        help="a bench receiver: acknowledge (AA) and print every message",
        description="Listen for MLLP messages (e.g. the --forward stream of 'pumpctl hl7 "
        "serve'), answer MSA AA to each, print one line per message and optionally keep "
        "them all in a file.",
    )
    r.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="where to listen (port 0 picks one)"
    )
    r.add_argument("--out", metavar="FILE", help="append every message to FILE")
    r.set_defaults(func=listen)


def serve(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    from pumpctl.hl7.server import Hl7Server, ServeConfig

    if args.port and args.speed != 1.0:
        raise InputError(
            f"--speed {args.speed:g} with --port: a real pump runs in real time; "
            "allowed: --speed only with --sim"
        )
    _positive("--speed", args.speed)
    _positive("--status-period-s", args.status_period_s)
    _positive("--retry-s", args.retry_s)
    _positive("--ack-timeout-s", args.ack_timeout_s)
    if args.device_id is not None and not args.device_id.strip():
        raise InputError("--device-id is empty; allowed: the pump's id as orders name it")
    cfg = ServeConfig(
        db=args.db,
        listen=codec.parse_hostport(args.listen, "--listen"),
        forward=None if args.forward is None else codec.parse_hostport(args.forward, "--forward"),
        port=args.port,
        pump=args.pump,
        speed=args.speed,
        device_id=args.device_id,
        status_period_s=args.status_period_s,
        staff=not args.no_staff,
        retry_s=args.retry_s,
        ack_timeout_s=args.ack_timeout_s,
    )
    srv = Hl7Server(cfg)
    try:
        asyncio.run(srv.run(signals=True))
    except OSError as exc:
        raise InputError(f"--listen {args.listen}: cannot listen: {exc.strerror or exc}") from None
    return 0


def send(args: argparse.Namespace) -> int:
    """Send FILE to --to and print the answer with one segment a line."""
    host, port = codec.parse_hostport(args.to, "--to")
    _positive("--timeout-s", args.timeout_s)
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    msgs = codec.split_messages(text)
    if len(msgs) != 1:
        raise InputError(f"{path}: holds {len(msgs)} messages; allowed: exactly one")
    try:
        msg = codec.parse_er7(msgs[0])
    except codec.Hl7FormatError as exc:
        raise InputError(f"{path}: {exc}") from None
    try:
        ack = asyncio.run(codec.send_and_wait(host, port, str(msg), args.timeout_s))
    except TimeoutError:
        raise ReceiverError(f"{host}:{port} did not answer within {args.timeout_s:g} s") from None
    except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
        if isinstance(exc, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(exc, asyncio.IncompleteReadError | EOFError):
            why = "the connection was closed"
        else:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ReceiverError(f"{host}:{port}: no acknowledgement: {why}") from None
    except (codec.Hl7FormatError, ValueError) as exc:
        raise ReceiverError(f"{host}:{port}: the answer is not an HL7 message: {exc}") from None
    print("\n".join(str(ack).split("\r")))
    code, _ref, text_ = codec.ack_code(ack)
    if code in ("AA", "CA"):
        return 0
    raise NotAcceptedError(f"{host}:{port} answered {code or 'no MSA'}: {text_ or 'no reason'}")


def listen(args: argparse.Namespace) -> int:
    """Receive until SIGINT/SIGTERM."""
    from pumpctl.hl7.listener import listen as run_listener

    host, port = codec.parse_hostport(args.listen, "--listen")
    out = None
    if args.out:
        try:
            out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"--out {args.out}: cannot write: {exc.strerror}") from None
    try:
        asyncio.run(run_listener(host, port, say=lambda line: print(line, flush=True), out=out))
    except OSError as exc:
        raise InputError(f"--listen {args.listen}: cannot listen: {exc.strerror or exc}") from None
    finally:
        if out is not None:
            out.close()
    return 0
