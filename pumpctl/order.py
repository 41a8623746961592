"""Orders and the pharmacy build: mg/day in, exactly the bag the protocol says out.

Pure functions, decimal arithmetic, no I/O. The same inputs always give the same bag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from pumpctl.errors import InputError, OverrideRequiredError, PumpctlError, RefusedError
from pumpctl.setting import DrugSetting

HOURS_PER_DAY = Decimal(24)


def round_half_up(value: Decimal, quantum: Decimal = Decimal(1)) -> Decimal:
    """Round to a multiple of ``quantum``, halves away from zero (never banker's rounding)."""
    return (value / quantum).quantize(Decimal(1), rounding=ROUND_HALF_UP) * quantum


def to_decimal(value: Any, name: str) -> Decimal:
    """A finite decimal from user input, or an ``InputError`` naming the field."""
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InputError(f"{name} = {value!r} is not a number") from None
    if not d.is_finite():
        raise InputError(f"{name} = {value!r} is not a finite number")
    return d


@dataclass(frozen=True)
class Order:
    """A prescriber's order for a continuous anakinra infusion."""

    dose_mg_per_day: Decimal
    weight_kg: Decimal
    bag_ml: int | None = None
    interval_h: int | None = None  # pharmacist's forced interval; None = choose
    indication: str = ""
    approving_service: str = ""
    override_reason: str | None = None
    operator: str | None = None


@dataclass(frozen=True)
class Build:
    """The pharmacy build of an order: one bag recipe and the program for the pump."""

    ordered_mg_per_day: Decimal
    achieved_mg_per_day: Decimal
    deviation_pct: Decimal
    interval_h: int
    bags_per_day: int
    mg_per_bag: Decimal
    syringes_per_bag: int
    bag_ml: int
    ordered_bag_ml: int
    final_volume_ml: Decimal
    concentration_mg_per_ml: Decimal
    real_concentration_mg_per_ml: Decimal
    rate_ml_per_h: Decimal
    vtbi_ml: Decimal
    bag_duration_h: Decimal
    infused_mg_per_bag: Decimal
    weight_kg: Decimal
    dose_mg_per_kg_per_h: Decimal
    dose_mg_per_kg_per_day: Decimal
    limit: str  # "ok", "soft" or "hard"
    limit_detail: str
    override_reason: str | None
    operator: str | None
    setting_name: str
    setting_version: str
    messages: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; decimals become numbers at a sensible precision."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, Decimal):
                out[key] = _num(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out

    def label(self) -> str:
        """A readable pharmacy label and pump program."""
        lines = [
            f"{self.setting_name}  (setting {self.setting_version})",
            f"  ordered     {self.ordered_mg_per_day} mg/day, {self.weight_kg} kg",
            f"  build       {_num(self.mg_per_bag)} mg ({self.syringes_per_bag} syringe"
            f"{'s' if self.syringes_per_bag != 1 else ''}) in {self.bag_ml} mL NS, "
            f"q{self.interval_h}h, {self.bags_per_day} bags/day",
            f"  achieved    {_num(self.achieved_mg_per_day)} mg/day "
            f"({_signed(self.deviation_pct)}% vs ordered), "
            f"{_num(self.dose_mg_per_kg_per_h)} mg/kg/h",
            f"  bag         final volume {_num(self.final_volume_ml)} mL, "
            f"{_num(self.concentration_mg_per_ml)} mg/mL nominal, "
            f"{_num(self.real_concentration_mg_per_ml)} mg/mL real",
            f"  pump        rate {_num(self.rate_ml_per_h)} mL/h, VTBI {_num(self.vtbi_ml)} mL, "
            f"bag lasts {_hours(self.bag_duration_h)}",
            f"  limit       {self.limit}: {self.limit_detail}",
            "  handling    protect from light (bag AND amber tubing); hand delivery only, "
            "no pneumatic tube",
        ]
        if self.override_reason:
            lines.append(f"  override    by {self.operator}: {self.override_reason}")
        lines += [f"  note        {m}" for m in self.messages]
        return "\n".join(lines)


def _num(value: Decimal) -> float | int:
    q = value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP).normalize()
    return int(q) if q == q.to_integral_value() else float(q)


def _signed(value: Decimal) -> str:
    v = _num(value)
    return f"+{v}" if v > 0 else f"{v}"


def _hours(hours: Decimal) -> str:
    total_min = int(round_half_up(hours * 60))
    return f"{total_min // 60} h {total_min % 60:02d} min ({_num(hours)} h)"


def mg_per_bag_for(dose_mg_per_day: Decimal, bags_per_day: int, syringe_mg: Decimal) -> Decimal:
    """max(one syringe, syringe * round_half_up(dose / n / syringe))."""
    syringes = round_half_up(dose_mg_per_day / bags_per_day / syringe_mg)
    return max(syringe_mg, syringe_mg * syringes)


def _fits(mg: Decimal, bag_ml: int, setting: DrugSetting) -> bool:
    conc = mg / Decimal(bag_ml)
    return setting.conc_min_mg_per_ml <= conc <= setting.conc_max_mg_per_ml


def _pick_bag(mg: Decimal, ordered_ml: int, setting: DrugSetting) -> int | None:
    """The ordered size if it fits, else the fitting size nearest to it (smaller on a tie)."""
    fitting = [s for s in setting.bag_sizes_ml if _fits(mg, s, setting)]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (abs(s - ordered_ml), s))


def validate_order(order: Order, setting: DrugSetting) -> None:
    """Reject missing or absurd input with one line naming the field and what is allowed."""
    if order.dose_mg_per_day <= 0:
        raise InputError(
            f"dose_mg_per_day = {order.dose_mg_per_day} is not allowed; allowed: a number > 0"
        )
    lo, hi = setting.weight_min_kg, setting.weight_max_kg
    if not lo <= order.weight_kg <= hi:
        raise InputError(f"weight_kg = {order.weight_kg} is out of range; allowed: {lo}-{hi} kg")
    if order.bag_ml is not None and order.bag_ml not in setting.bag_sizes_ml:
        allowed = ", ".join(str(s) for s in setting.bag_sizes_ml)
        raise InputError(f"bag_ml = {order.bag_ml} is not a bag size; allowed: {allowed} mL")
    if order.interval_h is not None and order.interval_h not in setting.intervals_h:
        allowed = " or ".join(str(i) for i in setting.intervals_h)
        raise InputError(f"interval_h = {order.interval_h} is not allowed; allowed: {allowed} h")
    if order.override_reason is not None and not order.override_reason.strip():
        raise InputError("override reason is empty; allowed: a non-empty reason")
    if order.override_reason and not (order.operator and order.operator.strip()):
        raise InputError("an override reason needs an operator id (--operator)")


def build(order: Order, setting: DrugSetting) -> Build:
    """The pharmacy build (docs/protocol.md); raises Refused/OverrideRequired/InputError."""
    validate_order(order, setting)
    dose = order.dose_mg_per_day
    syringe_mg = setting.syringe_mg
    ordered_ml = order.bag_ml if order.bag_ml is not None else setting.default_bag_ml
    messages: list[str] = []

    # Step 2: interval. Candidates in the setting's order (default first wins ties).
    intervals = list(setting.intervals_h)
    intervals.sort(key=lambda iv: iv != setting.default_interval_h)
    candidates = [(iv, mg_per_bag_for(dose, 24 // iv, syringe_mg)) for iv in intervals]
    if order.interval_h is not None:
        ranked = [c for c in candidates if c[0] == order.interval_h]
        messages.append(f"interval q{order.interval_h}h set by the pharmacist")
    else:
        ranked = sorted(
            candidates, key=lambda c: abs((24 // c[0]) * c[1] - dose)
        )  # stable: default interval first on a tie

    # Step 3: a bag size inside the concentration window, falling back as the protocol says.
    chosen: tuple[int, Decimal, int] | None = None
    for rank, (iv, mg) in enumerate(ranked):
        bag = _pick_bag(mg, ordered_ml, setting)
        if bag is None:
            if rank + 1 < len(ranked):
                messages.append(
                    f"no bag size holds {_num(mg)} mg at q{iv}h within "
                    f"{_num(setting.conc_min_mg_per_ml)}-{_num(setting.conc_max_mg_per_ml)} "
                    f"mg/mL; tried q{ranked[rank + 1][0]}h instead"
                )
            continue
        chosen = (iv, mg, bag)
        break
    if chosen is None:
        iv, mg = ranked[0]
        cmax, cmin = setting.conc_max_mg_per_ml, setting.conc_min_mg_per_ml
        need_ml = mg / cmax
        sizes = setting.bag_sizes_ml
        if need_ml > sizes[-1]:
            why = f"{_num(mg)} mg per bag needs more than {sizes[-1]} mL at {_num(cmax)} mg/mL"
        else:
            why = f"{_num(mg)} mg per bag is below {_num(cmin)} mg/mL in every bag size"
        tried = ", ".join(f"q{c[0]}h" for c in ranked)
        raise RefusedError(f"no bag size fits ({tried}): {why}")
    iv, mg, bag = chosen
    if bag != ordered_ml:
        messages.append(
            f"ordered {ordered_ml} mL bag gives {_num(mg / ordered_ml)} mg/mL, outside "
            f"{_num(setting.conc_min_mg_per_ml)}-{_num(setting.conc_max_mg_per_ml)} mg/mL; "
            f"using {bag} mL"
        )
    n = 24 // iv
    achieved = n * mg
    if order.interval_h is None and iv != setting.default_interval_h:
        messages.append(
            f"q{iv}h chosen: {_num(achieved)} mg/day is nearer the ordered "
            f"{_num(dose)} mg/day than q{setting.default_interval_h}h"
        )

    # Steps 4-5: rate, real duration, final volume, real concentration.
    syringes = int(mg / syringe_mg)
    rate = round_half_up(Decimal(bag) / Decimal(iv), setting.rate_resolution_ml_per_h)
    vtbi = Decimal(bag)
    duration_h = vtbi / rate
    final_ml = Decimal(bag) + syringes * setting.syringe_ml
    real_conc = mg / final_ml
    infused_mg_per_bag = vtbi * real_conc
    if rate * iv != Decimal(bag):
        messages.append(
            f"rate rounded to {_num(rate)} mL/h; each bag really lasts {_hours(duration_h)}"
        )

    # Limits, on the dose that will be infused.
    weight = order.weight_kg
    mg_kg_h = achieved / HOURS_PER_DAY / weight
    limit, detail = check_limits(achieved, weight, setting)
    if limit != "soft" and order.override_reason:
        messages.append("override reason given but no soft limit is exceeded; not needed")
    deviation = (achieved - dose) / dose * 100
    result = Build(
        ordered_mg_per_day=dose,
        achieved_mg_per_day=achieved,
        deviation_pct=deviation,
        interval_h=iv,
        bags_per_day=n,
        mg_per_bag=mg,
        syringes_per_bag=syringes,
        bag_ml=bag,
        ordered_bag_ml=ordered_ml,
        final_volume_ml=final_ml,
        concentration_mg_per_ml=mg / Decimal(bag),
        real_concentration_mg_per_ml=real_conc,
        rate_ml_per_h=rate,
        vtbi_ml=vtbi,
        bag_duration_h=duration_h,
        infused_mg_per_bag=infused_mg_per_bag,
        weight_kg=weight,
        dose_mg_per_kg_per_h=mg_kg_h,
        dose_mg_per_kg_per_day=achieved / weight,
        limit=limit,
        limit_detail=detail,
        override_reason=order.override_reason if limit == "soft" else None,
        operator=order.operator if limit == "soft" else None,
        setting_name=setting.name,
        setting_version=setting.version,
        messages=tuple(messages),
    )
    exc: PumpctlError | None = None
    if limit == "hard":
        exc = RefusedError(f"refused by the hard limit: {detail}; no override possible")
    elif limit == "soft" and not order.override_reason:
        exc = OverrideRequiredError(
            f"soft limit exceeded: {detail}; give --override-reason TEXT and --operator ID"
        )
    if exc is not None:
        exc.build = result  # type: ignore[attr-defined]  # so --json can still show it
        raise exc
    return result


def check_limits(mg_per_day: Decimal, weight_kg: Decimal, setting: DrugSetting) -> tuple[str, str]:
    """Classify a daily dose against the setting's limits: ("ok"|"soft"|"hard", why)."""
    lims = setting.limits
    per_h = mg_per_day / HOURS_PER_DAY / weight_kg
    dose_txt = f"{_num(mg_per_day)} mg/day = {_num(per_h)} mg/kg/h at {_num(weight_kg)} kg"
    for level, word, cmp in (
        ("upper_hard", "above", lambda d, lim: d > lim),
        ("lower_hard", "below", lambda d, lim: d < lim),
        ("upper_soft", "above", lambda d, lim: d > lim),
        ("lower_soft", "below", lambda d, lim: d < lim),
    ):
        lim = lims.get(level)
        if lim is not None and cmp(mg_per_day, lim.mg_per_day(weight_kg)):
            kind = "hard" if level.endswith("hard") else "soft"
            return kind, f"{dose_txt} is {word} the {level.replace('_', ' ')} limit {lim.label()}"
    return "ok", f"{dose_txt} is within the limits"
