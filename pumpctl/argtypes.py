"""Checked argparse types for numeric options and paths: one line, before any arithmetic.

A bad value ends in argparse's one-line error (exit 2) naming the option, the value and
what is allowed (with units), so no command ever computes with nan, inf or 1e308.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pumpctl.errors import InputError


def _range_text(lo: float, hi: float, unit: str, lo_open: bool, whole: bool) -> str:
    kind = "a whole number" if whole else "a number"
    low = f"> {lo:g}" if lo_open else f">= {lo:g}"
    return f"{kind} {low} and <= {hi:g}{f' {unit}' if unit else ''}"


def number(
    lo: float, hi: float, unit: str = "", *, lo_open: bool = False
) -> Callable[[str], float]:
    """A finite float in [lo, hi] (or (lo, hi] with ``lo_open``), as an argparse type."""
    allowed = _range_text(lo, hi, unit, lo_open, False)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; allowed: {allowed}"
            ) from None
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {allowed}")
        return value + 0.0  # -0.0 -> 0.0

    parse.__name__ = "number"
    return parse


def whole(lo: int, hi: int, unit: str = "") -> Callable[[str], int]:
    """An int in [lo, hi], as an argparse type (huge or non-numeric text is one line)."""
    allowed = _range_text(lo, hi, unit, False, True)

    def parse(text: str) -> int:
        s = text.strip()
        if len(s) > 40:  # int() of thousands of digits is slow, or refused by Python
            raise argparse.ArgumentTypeError(f"{text[:20]!r}... is not allowed; allowed: {allowed}")
        try:
            value = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; allowed: {allowed}"
            ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {allowed}")
        return value

    parse.__name__ = "whole number"
    return parse


def one_of(values: Iterable[int], unit: str = "") -> Callable[[str], int]:
    """An int from a fixed set (e.g. baud rates), as an argparse type."""
    allowed_set = tuple(values)
    allowed = ", ".join(map(str, allowed_set)) + (f" {unit}" if unit else "")

    def parse(text: str) -> int:
        try:
            value = int(text.strip()) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value not in allowed_set:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not allowed; allowed: {allowed}")
        return value

    parse.__name__ = "choice"
    return parse


#: Options shared by several commands.
SPEED = number(0, 100_000, "times real time", lo_open=True)
SEED = whole(0, 2**63 - 1)
ADDRESS = whole(0, 99)
SAFE_TIMEOUT_S = whole(0, 255, "s")
UNTIL_H = number(0, 24 * 366, "h")
BAUD = one_of((300, 1200, 2400, 9600, 19200), "baud")
BAG_ML = whole(1, 5000, "mL")
INTERVAL_H = whole(1, 24, "h")
RUNS = whole(1, 1_000_000, "runs")
WORKERS = whole(1, 1024, "worker processes")


def input_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a readable regular file; otherwise ``InputError`` in one line
    (``PATH: cannot read: WHY; allowed: a WHAT``)."""
    p = Path(path)
    why = ""
    if str(path) in ("", "."):
        why = "an empty path"
    else:
        try:
            p.stat()
        except FileNotFoundError:
            why = "no such file"
        except NotADirectoryError:
            why = "a part of the path is a file, not a directory"
        except OSError as exc:  # symlink loop, name too long, permission
            why = str(exc.strerror or exc)
        else:
            if os.path.isdir(p):
                why = "is a directory"
            elif not os.access(p, os.R_OK):
                why = "permission denied"
    if why:
        name = repr(str(path)) if why == "an empty path" else str(p)
        raise InputError(f"{name}: cannot read: {why}; allowed: a {what}")
    return p


def output_dir(path: str | Path) -> Path:
    """Create ``path`` (a directory for outputs) or say in one line why it cannot be."""
    p = Path(path)
    if str(path) == "":
        raise InputError("an empty output directory; allowed: a directory path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{p}: exists and is not a directory; allowed: a directory") from None
    except NotADirectoryError:
        raise InputError(f"{p}: a part of the path is a file, not a directory") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot create: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"{p}: cannot write there (permission denied)")
    return p


def add_link_arguments(p: Any) -> None:
    """The NE-1000 serial-link options a controller command takes (``run``, ``console``)."""
    p.add_argument(
        "--address", type=ADDRESS, default=0, metavar="A", help="pump address 0-99 (default 0)"
    )
    p.add_argument(
        "--baud",
        type=BAUD,
        metavar="B",
        help="baud rate: 300, 1200, 2400, 9600 or 19200 (default: the pump profile's, 19200)",
    )
    p.add_argument(
        "--safe-timeout",
        type=SAFE_TIMEOUT_S,
        metavar="S",
        help="NE-1000 safe mode time-out in s, 1-255, or 0 for basic mode "
        "(default: the pump profile's, 10 s)",
    )
