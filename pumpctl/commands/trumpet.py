"""``pumpctl trumpet``: IEC 60601-2-24 start-up and trumpet curves from a balance record."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pumpctl.argtypes import number
from pumpctl.errors import InputError

if TYPE_CHECKING:
    from pumpctl.trumpet import TrumpetResult

log = logging.getLogger("pumpctl.trumpet")

#: Same as ``pumpctl.trumpet.WATER_DENSITY_G_PER_ML`` (not imported here: it needs numpy).
DEFAULT_DENSITY_G_PER_ML = 0.998


def register(sub: Any) -> None:
    """Add the ``trumpet`` sub-command to an argparse subparsers object."""
    p = sub.add_parser(
        "trumpet",
        help="flow accuracy (IEC 60601-2-24 start-up and trumpet curves) from a balance CSV",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "csv",
        metavar="CSV",
        type=Path,
        help="header row; time_s|time_min|t_s|t_min and mass_g|volume_ml columns",
    )
    p.add_argument(
        "--rate-ml-per-h",
        type=number(0.001, 10_000, "mL/h"),
        required=True,
        help="programmed rate (mL/h)",
    )
    p.add_argument(
        "--density-g-per-ml",
        type=number(0.1, 25, "g/mL"),
        default=DEFAULT_DENSITY_G_PER_ML,
        metavar="G_PER_ML",
        help=f"liquid density in g/mL, to turn mass_g into mL (default {DEFAULT_DENSITY_G_PER_ML})",
    )
    p.add_argument(
        "--analysis-start-min",
        type=number(0, 100_000, "min"),
        default=60.0,
        help="start of the trumpet analysis period (default 60)",
    )
    p.add_argument(
        "--analysis-end-min",
        type=number(0, 100_000, "min", lo_open=True),
        default=120.0,
        help="end of the trumpet analysis period (default 120)",
    )
    p.add_argument(
        "--stated-pct",
        type=number(0.01, 100, "%"),
        default=5.0,
        help="the pump's stated flow accuracy, +/- %% (default 5, typical of a large-volume "
        "pump): drawn as a band; the verdict is pass when the mean flow error A is within it",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to write trumpet.png and trumpet.json into (created)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Analyse the record, print a table or JSON, optionally write the PNG and JSON."""
    from pumpctl.trumpet import plot_trumpet, read_gravimetric_csv, trumpet

    t_min, volume_ml = read_gravimetric_csv(args.csv, args.density_g_per_ml)
    result = trumpet(
        t_min,
        volume_ml,
        args.rate_ml_per_h,
        analysis_start_min=args.analysis_start_min,
        analysis_end_min=args.analysis_end_min,
    )
    doc = result.to_dict()
    within = abs(result.overall_error_pct) <= args.stated_pct
    doc.update(stated_pct=args.stated_pct, verdict="pass" if within else "fail")
    written: list[Path] = []
    if args.out is not None:
        out_dir: Path = args.out
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            json_path = out_dir / "trumpet.json"
            json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            png_path = plot_trumpet(
                result,
                out_dir / "trumpet.png",
                stated_pct=args.stated_pct,
                title=f"{args.csv.name} at {result.rate_ml_per_h:g} mL/h: "
                f"{'PASS' if within else 'FAIL'}, A {result.overall_error_pct:+.2f} % "
                f"{'within' if within else 'outside'} the stated +/-{args.stated_pct:g} %",
            )
        except OSError as exc:
            raise InputError(f"cannot write to {out_dir}: {exc.strerror or exc}") from exc
        written = [png_path, json_path]
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(result, args.csv.name))
        print(
            f"verdict {doc['verdict'].upper()}: A {result.overall_error_pct:+.3f} % against the "
            f"stated +/-{args.stated_pct:g} %"
        )
    for path in written:
        log.info("wrote %s", path)
    return 0 if within else 1


def format_table(result: TrumpetResult, source: str = "") -> str:
    """The trumpet curve as a plain-text table, A on the last line."""
    head = f"{source}: " if source else ""
    lines = [
        f"{head}programmed {result.rate_ml_per_h:g} mL/h, {result.sample_min:g}-min samples, "
        f"analysis {result.analysis_start_min:g}-{result.analysis_end_min:g} min",
        f"{'window min':>10}  {'Ep max %':>9}  {'Ep min %':>9}",
    ]
    for w, hi, lo in zip(result.windows_min, result.ep_max_pct, result.ep_min_pct, strict=True):
        lines.append(f"{w:>10g}  {hi:>+9.3f}  {lo:>+9.3f}")
    if result.windows_skipped_min:
        skipped = ", ".join(f"{w:g}" for w in result.windows_skipped_min)
        lines.append(f"(windows {skipped} min are longer than the analysis period; left out)")
    lines.append(f"overall A = {result.overall_error_pct:+.3f} %")
    return "\n".join(lines)
