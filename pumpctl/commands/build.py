"""``pumpctl build``: the pharmacy build of an order, as a label or JSON."""

from __future__ import annotations

import argparse
import json

from pumpctl.errors import OverrideRequiredError, RefusedError
from pumpctl.order import Order, build, to_decimal
from pumpctl.setting import load_setting


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``build`` sub-command."""
    p = sub.add_parser(
        "build",
        help="pharmacy build of an anakinra order",
        description="Turn a mg/day order into the bag and pump program the protocol says. "
        "Exit 0 built, 2 bad input, 3 refused (hard limit or no bag fits), "
        "4 soft limit without an override reason.",
    )
    p.add_argument(
        "--dose-mg-per-day", required=True, metavar="D", help="ordered dose in mg/day (required)"
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
        help="hours per bag: force q8h or q6h (default: q8h unless q6h rounds nearer)",
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
    p.add_argument("--operator", metavar="ID", help="who gives the override (logged with it)")
    p.add_argument("--json", action="store_true", help="print the build as JSON")
    p.set_defaults(func=run)


def order_from_args(args: argparse.Namespace) -> Order:
    """An ``Order`` from parsed command-line arguments."""
    return Order(
        dose_mg_per_day=to_decimal(args.dose_mg_per_day, "--dose-mg-per-day"),
        weight_kg=to_decimal(args.weight_kg, "--weight-kg"),
        bag_ml=args.bag_ml,
        interval_h=args.interval_h,
        override_reason=args.override_reason,
        operator=args.operator,
    )


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
