"""Command round trips of the NE-1000 driver against the emulator over a real pseudo-terminal.

For each command: the bytes on the wire (request + reply), the time those bytes take on
a real 8N1 line at 19200 baud (10 bits per byte), and the measured round trip, median
(p50) and 95th percentile, twice: on the bare pty (no line time at all, so the round trip *is* the
software overhead: driver, pty, emulator) and with the emulator pacing its replies as a
19200-baud line would (overhead = round trip - line time).

    .venv/bin/python benchmarks/bench_serial.py [--rounds 300] [--baud 19200] [--pumps 2]
                                                [--in-process]

By default the emulator runs as on a bench rig: in its own process (``pumpctl
emulate``), as a real pump is its own device. ``--in-process`` serves it from a thread of
the benchmark's own process instead; the two threads then share one interpreter lock, and
that hand-over is part of every round trip.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pumpctl.clock import SystemClock  # noqa: E402
from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator  # noqa: E402
from pumpctl.devices.newera_codec import Reply, ReplyDecoder  # noqa: E402
from pumpctl.drivers.newera import NewEraBus  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(drv: Any, fn: Callable[[], object], rounds: int) -> tuple[list[float], float]:
    """Round-trip times (s) of ``fn`` and the mean bytes it put on the wire (both ways)."""
    fn()  # warm up
    b0 = drv.stats["bytes_sent"] + drv.stats["bytes_received"]
    times: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    b1 = drv.stats["bytes_sent"] + drv.stats["bytes_received"]
    return times, (b1 - b0) / rounds


@contextlib.contextmanager
def emulator_url(pace_baud: int | None, pumps: int, in_process: bool) -> Iterator[str]:
    """The line to open: an emulator in this process, or ``pumpctl emulate``."""
    if in_process:
        clock = SystemClock()
        emus = [Ne1000Emulator(clock=clock, pace_baud=pace_baud, address=a) for a in range(pumps)]
        with EmulatorServer(emus) as server:
            yield server.url
        return
    cmd = [sys.executable, "-m", "pumpctl", "emulate", "--pumps", str(pumps)]
    if pace_baud:
        cmd += ["--pace-baud", str(pace_baud)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def bare_round_trips(url: str, frames: list[bytes], address: int, rounds: int) -> list[float]:
    """Round trips (s) of the same request bytes sent by a bare client: one write, then
    wait and read until a reply from ``address`` is decoded; no driver at all.

    Against the same emulator and pty this is the floor the driver's figure stands on (the
    pty's hand-over in both directions and the emulator's timing); the driver's own cost is
    the difference.
    """
    fd = os.open(url, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        decoder = ReplyDecoder()
        times: list[float] = []
        for k in range(rounds + 1):  # the first one warms up
            frame = frames[k % len(frames)]
            t0 = time.perf_counter()
            os.write(fd, frame)
            done = False
            while not done:
                if not select.select([fd], [], [], 1.0)[0]:
                    raise RuntimeError(f"no reply to {frame!r} within 1 s")
                for item in decoder.feed(os.read(fd, 4096)):
                    done = done or (isinstance(item, Reply) and item.address == address)
            if k:
                times.append(time.perf_counter() - t0)
        return times
    finally:
        os.close(fd)


def run_config(
    safe_timeout_s: int,
    pace_baud: int | None,
    rounds: int,
    pumps: int = 1,
    in_process: bool = False,
    floor: dict[str, list[float]] | None = None,
) -> dict[str, tuple[list[float], float]]:
    """Time each command for one mode and one pacing (on the last of ``pumps`` pumps).

    With ``floor``, also time each command's request bytes sent by a bare client
    (``bare_round_trips``) on the same line, into ``floor[command]``.
    """
    out: dict[str, tuple[list[float], float]] = {}
    sent: dict[str, list[bytes]] = {}
    with emulator_url(pace_baud, pumps, in_process) as url:
        bus = NewEraBus(url, timeout_s=1.0)
        others = [bus.driver(a, safe_timeout_s=safe_timeout_s) for a in range(pumps - 1)]
        for other in others:
            other.set_rate(50.0)
            other.start()  # the other pumps on the line are running
        drv = bus.driver(pumps - 1, safe_timeout_s=safe_timeout_s)
        drv.identify()
        drv.set_rate(12.5)
        rate = [12.5, 12.6]
        i = [0]

        def set_rate() -> None:
            i[0] ^= 1
            drv.set_rate(rate[i[0]])

        commands: dict[str, Callable[[], object]] = {
            "status (heartbeat)": drv.heartbeat,
            "VER (identify)": drv.identify,
            "DIS (status())": drv.status,
            "RAT query": drv.read_rate_ml_per_h,
            "RAT set (set_rate)": set_rate,
        }
        write = drv._write
        for name, fn in commands.items():
            frames = sent[name] = []

            def capture(frame: bytes, frames: list[bytes] = frames) -> None:
                frames.append(frame)
                write(frame)

            drv._write = capture  # type: ignore[method-assign]
            out[name] = measure(drv, fn, rounds)
            drv._write = write  # type: ignore[method-assign]
        errors = drv.frame_errors
        for d in (*others, drv):
            d.close()
        bus.close()
        if floor is not None:
            for name, frames in sent.items():
                if len(frames) == rounds + 1:  # one exchange per call (the first: warm-up)
                    floor[name] = bare_round_trips(url, frames[1:], pumps - 1, rounds)
    if errors:
        print(f"warning: {errors} frame errors during the run", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--baud", type=int, default=19200)
    ap.add_argument(
        "--pumps", type=int, default=1, help="pumps on the line; commands go to the last one"
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="serve the emulator from a thread of this process (default: its own process)",
    )
    args = ap.parse_args()
    bit_s = 10.0 / args.baud
    head = (
        f"{'mode':5} {'command':20} {'bytes':>5} {'line ms':>8} | {'pty p50':>7} {'p95':>6} | "
        f"{'paced p50':>9} {'p95':>6} | {'overhead p50':>12} {'p95':>6} | "
        f"{'floor p50':>9} {'driver p50':>10}"
    )
    where = "a thread of this process" if args.in_process else "its own process"
    print(
        f"NE-1000 driver <-> emulator ({where}) over a pty ({args.pumps} pump(s) on the line), "
        f"{args.rounds} rounds per command; "
        f"line time at {args.baud} baud, 8N1 (10 bits/byte); times in ms"
    )
    print(head)
    print("-" * len(head))
    for mode, saf in (("basic", 0), ("safe", 10)):
        bare = run_config(saf, None, args.rounds, args.pumps, args.in_process)
        floor: dict[str, list[float]] = {}
        paced = run_config(saf, args.baud, args.rounds, args.pumps, args.in_process, floor)
        for name, (times, nbytes) in bare.items():
            ptimes, _ = paced[name]
            line_ms = nbytes * bit_s * 1e3
            p50, p95 = _pct(ptimes, 0.5) * 1e3, _pct(ptimes, 0.95) * 1e3
            split = f"{'-':>9} {'-':>10}"  # a call of several exchanges: no like-for-like floor
            if name in floor:
                f50 = _pct(floor[name], 0.5) * 1e3 - line_ms
                split = f"{f50:9.3f} {p50 - line_ms - f50:10.3f}"
            print(
                f"{mode:5} {name:20} {nbytes:5.1f} {line_ms:8.2f} | "
                f"{_pct(times, 0.5) * 1e3:7.3f} {_pct(times, 0.95) * 1e3:6.3f} | "
                f"{p50:9.2f} {p95:6.2f} | {p50 - line_ms:12.3f} {p95 - line_ms:6.3f} | {split}"
            )
    print(
        "pty = software overhead alone (a pty adds no line time); "
        "overhead = paced round trip - line time;\n"
        "floor = the same overhead for the same request bytes sent by a bare client (no "
        "driver: the pty's hand-over both ways and the emulator's timing); "
        "driver = overhead - floor"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
