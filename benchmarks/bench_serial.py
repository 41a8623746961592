"""Command round trips of the NE-1000 driver against the emulator over a real pseudo-terminal.

For each command: the bytes on the wire (request + reply), the time those bytes take on
a real 8N1 line at 19200 baud (10 bits per byte), and the measured round trip, mean and
95th percentile, twice: on the bare pty (no line time at all, so the round trip *is* the
software overhead: driver, pty, emulator) and with the emulator pacing its replies as a
19200-baud line would (overhead = round trip - line time).

    .venv/bin/python benchmarks/bench_serial.py [--rounds 300] [--baud 19200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pumpctl.clock import SystemClock  # noqa: E402
from pumpctl.drivers.newera import NewEraDriver  # noqa: E402
from pumpctl.devices.ne1000 import EmulatorServer, Ne1000Emulator  # noqa: E402


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def measure(drv: NewEraDriver, fn: Callable[[], object], rounds: int) -> tuple[list[float], float]:
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


def run_config(
    safe_timeout_s: int, pace_baud: int | None, rounds: int
) -> dict[str, tuple[list[float], float]]:
    """Time each command for one mode and one pacing."""
    emu = Ne1000Emulator(clock=SystemClock(), pace_baud=pace_baud)
    out: dict[str, tuple[list[float], float]] = {}
    with EmulatorServer(emu) as server:
        drv = NewEraDriver(server.url, safe_timeout_s=safe_timeout_s, timeout_s=1.0)
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
        for name, fn in commands.items():
            out[name] = measure(drv, fn, rounds)
        errors = drv.frame_errors
        drv.close()
    if errors:
        print(f"warning: {errors} frame errors during the run", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--baud", type=int, default=19200)
    args = ap.parse_args()
    bit_s = 10.0 / args.baud
    head = (
        f"{'mode':5} {'command':20} {'bytes':>5} {'line ms':>8} | {'pty mean':>8} "
        f"{'p95':>6} | {'paced mean':>10} {'p95':>6} {'overhead':>8}"
    )
    print(
        f"NE-1000 driver <-> emulator over a pty, {args.rounds} rounds per command; "
        f"line time at {args.baud} baud, 8N1 (10 bits/byte); times in ms"
    )
    print(head)
    print("-" * len(head))
    for mode, saf in (("basic", 0), ("safe", 10)):
        bare = run_config(saf, None, args.rounds)
        paced = run_config(saf, args.baud, args.rounds)
        for name, (times, nbytes) in bare.items():
            ptimes, _ = paced[name]
            line_ms = nbytes * bit_s * 1e3
            pm = statistics.fmean(ptimes) * 1e3
            print(
                f"{mode:5} {name:20} {nbytes:5.1f} {line_ms:8.2f} | "
                f"{statistics.fmean(times) * 1e3:8.3f} {_p95(times) * 1e3:6.3f} | "
                f"{pm:10.2f} {_p95(ptimes) * 1e3:6.2f} {pm - line_ms:8.3f}"
            )
    print(
        "pty mean = software overhead alone (a pty adds no line time); "
        "overhead = paced mean - line time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
