"""IEC 60601-2-24 flow-accuracy analysis: start-up curve and trumpet curve (numpy).

A gravimetric record (cumulative volume against time) is resampled onto a 0.5-min grid;
each sample interval gives a flow Q_i = 60 * dV_i / S (mL/h). Over the analysis period
(by default the second hour) the percentage error of Q_i is averaged over every
observation window of P minutes, sliding one sample at a time; the largest and smallest
of those means are Ep(max) and Ep(min), and A is the error of the mean flow.

Times in a record are measured from its first row (the start of the infusion).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pumpctl.argtypes import input_file
from pumpctl.errors import InputError

FloatArray = npt.NDArray[np.float64]

#: IEC 60601-2-24 sample interval and observation windows.
SAMPLE_MIN = 0.5
WINDOWS_MIN: tuple[float, ...] = (2.0, 5.0, 11.0, 19.0, 31.0)
#: Density of water near 20 degC, the usual test liquid.
WATER_DENSITY_G_PER_ML = 0.998

_TIME_COLUMNS_TO_MIN = {"time_s": 1.0 / 60.0, "t_s": 1.0 / 60.0, "time_min": 1.0, "t_min": 1.0}
_QUANTITY_COLUMNS = ("mass_g", "volume_ml")
# Tolerance for "this time lies on the sample grid", as a fraction of a sample.
_GRID_TOL = 1e-6


@dataclass(frozen=True, eq=False)
class TrumpetResult:
    """Start-up curve and trumpet curve of one record, per IEC 60601-2-24."""

    rate_ml_per_h: float
    sample_min: float
    windows_min: tuple[float, ...]
    ep_max_pct: tuple[float, ...]
    ep_min_pct: tuple[float, ...]
    overall_error_pct: float
    startup_t_min: FloatArray
    startup_flow_ml_per_h: FloatArray
    analysis_start_min: float
    analysis_end_min: float
    windows_skipped_min: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable floats: percentages to 3 decimals, flows to 6 digits."""
        return {
            "rate_ml_per_h": _sig(self.rate_ml_per_h),
            "sample_min": _r3(self.sample_min),
            "analysis_start_min": _r3(self.analysis_start_min),
            "analysis_end_min": _r3(self.analysis_end_min),
            "overall_error_pct": _r3(self.overall_error_pct),
            "windows_min": [_r3(w) for w in self.windows_min],
            "windows": [
                {"window_min": _r3(w), "ep_max_pct": _r3(hi), "ep_min_pct": _r3(lo)}
                for w, hi, lo in zip(
                    self.windows_min, self.ep_max_pct, self.ep_min_pct, strict=True
                )
            ],
            "windows_skipped_min": [_r3(w) for w in self.windows_skipped_min],
            "startup": {
                "t_min": [_r3(t) for t in self.startup_t_min.tolist()],
                "flow_ml_per_h": [_sig(q) for q in self.startup_flow_ml_per_h.tolist()],
            },
        }


def _r3(x: float) -> float:
    """Round to 3 decimals as a plain float (and turn -0.0 into 0.0)."""
    return round(float(x), 3) + 0.0


def _sig(x: float) -> float:
    """Round to 6 significant digits as a plain float."""
    return float(f"{float(x):.6g}") + 0.0


def _check_record(
    t_min: Sequence[float] | FloatArray, volume_ml: Sequence[float] | FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Validate a cumulative record: 1-D, same length, finite, time strictly increasing."""
    t = np.asarray(t_min, dtype=np.float64)
    v = np.asarray(volume_ml, dtype=np.float64)
    if t.ndim != 1 or v.ndim != 1:
        raise InputError("time and volume must be 1-D sequences")
    if t.shape != v.shape:
        raise InputError(f"time has {t.size} values but volume has {v.size}; they must match")
    if t.size < 2:
        raise InputError(f"record has {t.size} rows; at least 2 are needed")
    for name, arr in (("time", t), ("volume", v)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise InputError(
                f"{name} value at index {bad[0]} is {arr[bad[0]]}; must be a finite number"
            )
    back = np.flatnonzero(np.diff(t) <= 0)
    if back.size:
        i = int(back[0]) + 1
        raise InputError(
            f"time does not increase at index {i} ({t[i]:g} min after "
            f"{t[i - 1]:g} min); times must be strictly increasing"
        )
    return t, v


def _check_sample(sample_min: float) -> float:
    """A sample interval must be a positive finite number of minutes."""
    s = float(sample_min)
    if not math.isfinite(s) or s <= 0:
        raise InputError(f"sample_min is {sample_min}; must be a positive number of minutes")
    return s


def flow_from_cumulative(
    t_min: Sequence[float] | FloatArray,
    volume_ml: Sequence[float] | FloatArray,
    sample_min: float = SAMPLE_MIN,
) -> tuple[FloatArray, FloatArray]:
    """Resample cumulative volume onto a ``sample_min`` grid from the first time; flow per interval.

    Returns (end time of each interval in min, Q_i in mL/h) with Q_i = 60 * dV_i / sample_min,
    both the same length. Volume at grid points is linearly interpolated, so timestamps may be
    irregular; a partial interval at the end of the record is dropped.
    """
    t, v = _check_record(t_min, volume_ml)
    s = _check_sample(sample_min)
    n_intervals = int(math.floor((t[-1] - t[0]) / s + _GRID_TOL))
    if n_intervals < 1:
        raise InputError(
            f"record covers {t[-1] - t[0]:g} min; at least one {s:g}-min sample interval is needed"
        )
    grid = t[0] + s * np.arange(n_intervals + 1, dtype=np.float64)
    v_grid = np.interp(grid, t, v)
    flow = 60.0 * np.diff(v_grid) / s
    return grid[1:], flow


def trumpet(
    t_min: Sequence[float] | FloatArray,
    volume_ml: Sequence[float] | FloatArray,
    rate_ml_per_h: float,
    *,
    sample_min: float = SAMPLE_MIN,
    windows_min: Sequence[float] = WINDOWS_MIN,
    analysis_start_min: float = 60.0,
    analysis_end_min: float = 120.0,
) -> TrumpetResult:
    """IEC 60601-2-24 start-up and trumpet curves of a cumulative record at a programmed rate.

    Windows longer than the analysis period are left out and listed in
    ``windows_skipped_min``; at least the smallest window must fit.
    """
    r = float(rate_ml_per_h)
    if not math.isfinite(r) or r <= 0:
        raise InputError(f"programmed rate is {rate_ml_per_h} mL/h; must be a positive number")
    s = _check_sample(sample_min)
    t, v = _check_record(t_min, volume_ml)
    elapsed = t - t[0]
    t_end, flow = flow_from_cumulative(elapsed, v, s)

    start, end = float(analysis_start_min), float(analysis_end_min)
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise InputError(
            f"analysis period {analysis_start_min}-{analysis_end_min} min is not "
            "valid; need 0 <= start < end"
        )
    i0, i1 = _grid_index(start, s, "analysis start"), _grid_index(end, s, "analysis end")
    if i1 > flow.size:
        raise InputError(
            f"record covers {elapsed[-1]:g} min but the analysis period ends at "
            f"{end:g} min; record longer or choose an earlier analysis end"
        )

    windows = tuple(float(w) for w in windows_min)
    if not windows:
        raise InputError("no observation windows given")
    for w in windows:
        if not math.isfinite(w) or w <= 0:
            raise InputError(f"observation window {w} min must be a positive number")
        _grid_index(w, s, f"observation window {w:g} min")
    span = end - start
    if min(windows) > span + _GRID_TOL * s:
        raise InputError(
            f"analysis period {start:g}-{end:g} min ({span:g} min) is shorter than "
            f"the smallest observation window ({min(windows):g} min)"
        )

    err_pct = 100.0 * (flow[i0:i1] - r) / r
    kept: list[float] = []
    skipped: list[float] = []
    ep_max: list[float] = []
    ep_min: list[float] = []
    for w in windows:
        m = int(round(w / s))
        if m > err_pct.size:
            skipped.append(w)
            continue
        means = np.lib.stride_tricks.sliding_window_view(err_pct, m).mean(axis=1)
        kept.append(w)
        ep_max.append(float(means.max()))
        ep_min.append(float(means.min()))

    mean_flow = float(flow[i0:i1].mean())
    overall = 100.0 * (mean_flow - r) / r

    startup_t = t_end.copy()
    startup_q = flow.copy()
    startup_t.setflags(write=False)
    startup_q.setflags(write=False)
    return TrumpetResult(
        rate_ml_per_h=r,
        sample_min=s,
        windows_min=tuple(kept),
        ep_max_pct=tuple(ep_max),
        ep_min_pct=tuple(ep_min),
        overall_error_pct=overall,
        startup_t_min=startup_t,
        startup_flow_ml_per_h=startup_q,
        analysis_start_min=start,
        analysis_end_min=end,
        windows_skipped_min=tuple(skipped),
    )


def _grid_index(x_min: float, sample_min: float, what: str) -> int:
    """Index of a time on the sample grid; refuse times that fall between samples."""
    k = x_min / sample_min
    n = int(round(k))
    if abs(k - n) > _GRID_TOL:
        raise InputError(
            f"{what} ({x_min:g} min) is not a whole number of {sample_min:g}-min samples"
        )
    return n


def read_gravimetric_csv(
    path: str | Path, density_g_per_ml: float = WATER_DENSITY_G_PER_ML
) -> tuple[FloatArray, FloatArray]:
    """Read a balance record (header row; time_s/time_min/t_s/t_min and mass_g/volume_ml).

    Returns (t_min, volume_ml); mass is converted with ``density_g_per_ml``. Every problem
    raises InputError naming the file, the line or column, and what is allowed.
    """
    p = input_file(path, "CSV file")  # missing, a directory, a loop: one line
    d = float(density_g_per_ml)
    if not math.isfinite(d) or d <= 0:
        raise InputError(f"density is {density_g_per_ml} g/mL; must be a positive number")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            rows = [
                (i, row)
                for i, row in enumerate(csv.reader(fh), start=1)
                if any(cell.strip() for cell in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from exc
    if not rows:
        raise InputError(f"{p}: empty file; need a header row and at least 3 data rows")

    header_line, header = rows[0]
    names = [cell.strip().lower() for cell in header]
    time_cols = [n for n in names if n in _TIME_COLUMNS_TO_MIN]
    qty_cols = [n for n in names if n in _QUANTITY_COLUMNS]
    allowed_t = ", ".join(_TIME_COLUMNS_TO_MIN)
    allowed_q = ", ".join(_QUANTITY_COLUMNS)
    if len(time_cols) != 1:
        found = "none" if not time_cols else ", ".join(time_cols)
        raise InputError(
            f"{p}: line {header_line}: need exactly one time column ({allowed_t}); found {found}"
        )
    if len(qty_cols) != 1:
        found = "none" if not qty_cols else ", ".join(qty_cols)
        raise InputError(
            f"{p}: line {header_line}: need exactly one quantity column "
            f"({allowed_q}); found {found}"
        )
    t_col, q_col = time_cols[0], qty_cols[0]
    ti, qi = names.index(t_col), names.index(q_col)

    data = rows[1:]
    if len(data) < 3:
        raise InputError(f"{p}: {len(data)} data rows; at least 3 are needed")
    t = np.empty(len(data), dtype=np.float64)
    q = np.empty(len(data), dtype=np.float64)
    for k, (line, row) in enumerate(data):
        for col, idx, out in ((t_col, ti, t), (q_col, qi, q)):
            if idx >= len(row):
                raise InputError(
                    f"{p}: line {line}: no value in column {col} "
                    f"(row has {len(row)} cells, header has {len(names)})"
                )
            cell = row[idx].strip()
            try:
                value = float(cell)
            except ValueError:
                raise InputError(
                    f"{p}: line {line}, column {col}: {cell!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise InputError(f"{p}: line {line}, column {col}: {cell!r} is not a finite number")
            out[k] = value
        if k and t[k] <= t[k - 1]:
            raise InputError(
                f"{p}: line {line}, column {t_col}: time {t[k]:g} is not after "
                f"{t[k - 1]:g} on the line before; times must strictly increase"
            )

    t_min = t * _TIME_COLUMNS_TO_MIN[t_col]
    if t_min[0] < 0 or t_min[-1] > MAX_RECORD_MIN:
        raise InputError(
            f"{p}: times run from {t_min[0]:g} to {t_min[-1]:g} min; allowed: 0 to "
            f"{MAX_RECORD_MIN:g} min (a balance record of at most a week)"
        )
    _check_no_hole(p, t_min, [line for line, _row in data], t_col)
    volume_ml = q / d if q_col == "mass_g" else q
    return t_min, volume_ml


#: The longest record the analysis accepts (a week, in minutes).
MAX_RECORD_MIN = 7 * 24 * 60.0
#: A step longer than this many median sample intervals is a hole in the record.
MAX_STEP_OVER_MEDIAN = 10.0


def _check_no_hole(p: Path, t_min: FloatArray, lines: list[int], t_col: str) -> None:
    """Refuse a record with a hole: a step longer than ten median sample intervals.

    The start-up and trumpet curves assume the balance was read at a steady interval;
    a missing stretch would be averaged over silently and hide a stop in flow.
    """
    steps = np.diff(t_min)
    median = float(np.median(steps))
    k = int(np.argmax(steps))
    if steps[k] > MAX_STEP_OVER_MEDIAN * median:
        raise InputError(
            f"{p}: line {lines[k + 1]}, column {t_col}: a gap in the record from "
            f"{t_min[k]:g} min to {t_min[k + 1]:g} min ({steps[k]:g} min without a sample; the "
            f"usual interval is {median * 60:g} s); allowed: steps of at most "
            f"{MAX_STEP_OVER_MEDIAN:g} times the usual interval"
        )


def plot_trumpet(
    result: TrumpetResult,
    path: str | Path,
    *,
    stated_pct: float | None = None,
    title: str | None = None,
) -> Path:
    """Write one PNG: start-up curve (top) and trumpet curve (bottom). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 9.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax_su, ax_tr = fig.subplots(2, 1)
    r = result.rate_ml_per_h
    head = title or f"IEC 60601-2-24 flow accuracy at {r:g} mL/h"
    fig.suptitle(head, fontsize=13)

    ax_su.plot(
        result.startup_t_min,
        result.startup_flow_ml_per_h,
        drawstyle="steps-pre",
        color="tab:blue",
        linewidth=1.0,
        label=f"flow per {result.sample_min:g}-min sample",
    )
    ax_su.axhline(
        r, color="black", linestyle="--", linewidth=1.2, label=f"programmed rate {r:g} mL/h"
    )
    ax_su.axvspan(
        result.analysis_start_min,
        result.analysis_end_min,
        color="tab:green",
        alpha=0.08,
        label="analysis period",
    )
    ax_su.set_title("Start-up curve")
    ax_su.set_xlabel("time (min)")
    ax_su.set_ylabel("flow (mL/h)")
    ax_su.set_xlim(0, max(float(result.startup_t_min[-1]), result.analysis_end_min))
    ax_su.set_ylim(bottom=min(0.0, float(np.min(result.startup_flow_ml_per_h))))
    ax_su.grid(True, alpha=0.3)
    ax_su.legend(loc="lower right", fontsize=9)

    w = np.asarray(result.windows_min)
    ax_tr.plot(w, result.ep_max_pct, marker="^", color="tab:red", label="Ep(max)")
    ax_tr.plot(w, result.ep_min_pct, marker="v", color="tab:blue", label="Ep(min)")
    ax_tr.axhline(
        result.overall_error_pct,
        color="black",
        linewidth=1.2,
        label=f"A = {result.overall_error_pct:+.2f} %",
    )
    ax_tr.axhline(0.0, color="grey", linewidth=0.8)
    if stated_pct is not None:
        band = abs(float(stated_pct))
        ax_tr.axhspan(-band, band, color="tab:green", alpha=0.08)
        ax_tr.axhline(
            band,
            color="tab:green",
            linestyle="--",
            linewidth=1.0,
            label=f"stated accuracy \u00b1{band:g} %",
        )
        ax_tr.axhline(-band, color="tab:green", linestyle="--", linewidth=1.0)
    ax_tr.set_title(
        f"Trumpet curve ({result.analysis_start_min:g}-{result.analysis_end_min:g} min)"
    )
    ax_tr.set_xlabel("observation window (min)")
    ax_tr.set_ylabel("flow error (%)")
    if w.size:
        ax_tr.set_xticks(w)
        ax_tr.set_xlim(0, float(w.max()) + 2)
    # Room above the data for the legend, so it never hides a curve or the stated band.
    band_pct = abs(float(stated_pct)) if stated_pct is not None else 0.0
    values = [*result.ep_max_pct, *result.ep_min_pct, result.overall_error_pct, 0.0]
    y_lo, y_hi = min(*values, -band_pct), max(*values, band_pct)
    y_span = (y_hi - y_lo) or 1.0
    ax_tr.set_ylim(y_lo - 0.1 * y_span, y_hi + 0.45 * y_span)
    ax_tr.grid(True, alpha=0.3)
    ax_tr.legend(loc="upper right", fontsize=9)

    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    return out
