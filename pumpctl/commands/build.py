"""``pumpctl build``: the pharmacy build of an order, as a label or JSON."""

from __future__ import annotations

import argparse
import json

from pumpctl.errors import InputError, OverrideRequiredError, RefusedError
from pumpctl.order import Order, build, to_decimal
from pumpctl.setting import load_setting


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``build`` sub-command."""
    p = sub.add_parser(
        "build",
        help="pharmacy build of an anakinra order",
        description="Turn a mg/day (or mg/kg/day) order into the bag and pump program the "
        "protocol says, with the real dose that bag infuses. Exit 0 built, 2 bad input, "
        "3 refused (hard limit or no bag fits), 4 soft limit without an override reason or "
        "a deviation over the setting's limit without a pharmacist's confirmation.",
    )
    dose = p.add_mutually_exclusive_group(required=True)
    dose.add_argument("--dose-mg-per-day", metavar="D", help="ordered dose in mg/day")
    dose.add_argument(
        "--dose-mg-per-kg-per-day",
        metavar="D",
        help="ordered dose in mg/kg/day (settings that take it, e.g. the pediatric one)",
    )
    p.add_argument(
        "--weight-kg",
        required=True,
        metavar="W",
        help="patient weight in kg, for the per-kg limits (required)",
    )
    p.add_argument(
        "--bag-ml",
        type=int,
        metavar="50|100|250",
        help="bag size in mL (default: the setting's, 100 mL; if the concentration "
        "falls outside 1-5 mg/mL the nearest bag size that fits is used)",
    )
    p.add_argument(
        "--interval-h",
        type=int,
        metavar="8|6",
        help="hours per bag: force q8h or q6h (default: the nearer dose; on a tie the one "
        "that keeps the ordered bag, then the one with less fluid a day)",
    )
    p.add_argument(
        "--setting",
        default="anakinra_continuous",
        metavar="NAME_OR_PATH",
        help="drug setting: a shipped name or a TOML file (default anakinra_continuous)",
    )
    p.add_argument(
        "--override-reason",
        metavar="TEXT",
        help="why a soft limit is exceeded (without it such an order exits 4)",
    )
    p.add_argument(
        "--confirm-deviation",
        metavar="REASON",
        help="pharmacist accepts a build further from the order than the setting's "
        "max_deviation_pct (default 10 %%); without it such an order exits 4 and lists the "
        "nearest achievable doses; logged with --operator, the prescriber is told",
    )
    p.add_argument(
        "--operator", metavar="ID", help="who gives the override or confirmation (logged)"
    )
    p.add_argument("--json", action="store_true", help="print the build as JSON")
    p.set_defaults(func=run)


def order_from_args(args: argparse.Namespace) -> Order:
    """An ``Order`` from parsed command-line arguments (mg/day or mg/kg/day)."""
    weight = to_decimal(args.weight_kg, "--weight-kg")
    extra = {
        "bag_ml": args.bag_ml,
        "interval_h": args.interval_h,
        "override_reason": args.override_reason,
        "operator": args.operator,
        "confirm_deviation": getattr(args, "confirm_deviation", None),
    }
    per_kg = getattr(args, "dose_mg_per_kg_per_day", None)
    if per_kg is not None:
        d = to_decimal(per_kg, "--dose-mg-per-kg-per-day")
        if d <= 0 or d > 10000:
            raise InputError(f"--dose-mg-per-kg-per-day {per_kg}; allowed: > 0 and <= 10000")
        return Order.per_kg(d, weight, **extra)
    return Order(to_decimal(args.dose_mg_per_day, "--dose-mg-per-day"), weight, **extra)


def run(args: argparse.Namespace) -> int:
    """Build and print; errors propagate to the CLI as one line and an exit code."""
    setting = load_setting(args.setting)
    order = order_from_args(args)
    try:
        result = build(order, setting)
    except (RefusedError, OverrideRequiredError) as exc:
        if args.json:  # scripts still get the build and its limit class on stdout
            partial = getattr(exc, "build", None)
            out = (
                partial.to_json()
                if partial is not None
                else {
                    "ordered_mg_per_day": float(order.dose_mg_per_day),
                    "limit": None,
                    "setting_version": setting.version,
                    "messages": [],
                }
            )
            out["refused"] = str(exc)
            print(json.dumps(out, indent=2))
        raise
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.label())
    return 0
