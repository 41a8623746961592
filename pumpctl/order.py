"""Orders and the pharmacy build: mg/day in, exactly the bag the protocol says out.

Pure functions, decimal arithmetic, no I/O. The same inputs always give the same bag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cached_property, lru_cache
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
    if d != 0 and not Decimal("1e-6") <= d.copy_abs() <= Decimal("1e9"):  # no context
        raise InputError(f"{name} = {value!r} is out of range; allowed: 0.000001 to 1000000000")
    return d


@dataclass(frozen=True)
class Order:
    """A prescriber's order for a continuous anakinra infusion.

    The dose is mg/day, or mg/kg/day (``dose_mg_per_kg_per_day``) where the setting takes
    it; ``dose_mg_per_day`` then holds the daily total for the weight.
    """

    dose_mg_per_day: Decimal
    weight_kg: Decimal
    bag_ml: int | None = None
    interval_h: int | None = None  # pharmacist's forced interval; None = choose
    indication: str = ""
    approving_service: str = ""
    override_reason: str | None = None
    operator: str | None = None
    confirm_deviation: str | None = None  # pharmacist's reason to accept a large deviation
    dose_mg_per_kg_per_day: Decimal | None = None

    @classmethod
    def per_kg(cls, mg_per_kg_per_day: Decimal, weight_kg: Decimal, **kw: Any) -> Order:
        """An order written per kg (pediatrics): the daily total follows from the weight."""
        return cls(
            mg_per_kg_per_day * weight_kg, weight_kg, dose_mg_per_kg_per_day=mg_per_kg_per_day, **kw
        )


@dataclass(frozen=True)
class Build:
    """The pharmacy build of an order: one bag recipe and the program for the pump.

    ``achieved_mg_per_day`` is what really infuses: the pump's rate times 24 h times the
    bag's real concentration (overfill and drug volume dilute it; bags are changed as they
    empty, so a rounded rate changes the daily dose). ``dose_mg_per_kg_per_h`` is rate x
    real concentration / weight. ``nominal_mg_per_day`` is bags per day times mg per bag;
    ``deviation_pct`` compares the nominal dose with the order, ``real_deviation_pct`` the
    real one; either beyond ``max_deviation_pct`` needs the pharmacist's confirmation.
    """

    ordered_mg_per_day: Decimal
    nominal_mg_per_day: Decimal
    achieved_mg_per_day: Decimal
    deviation_pct: Decimal
    real_deviation_pct: Decimal
    needs_confirmation: bool
    alternatives: tuple[dict[str, Any], ...]
    interval_h: int
    bags_per_day: int
    mg_per_bag: Decimal
    syringes_per_bag: Decimal
    drug_volume_ml: Decimal
    bag_ml: int
    ordered_bag_ml: int
    overfill_ml: Decimal
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
    deviation_confirmation: str | None
    setting_name: str
    setting_version: str
    messages: tuple[str, ...] = field(default_factory=tuple)
    #: The setting's beyond-use time, for the label's hang-by rule (not in the JSON: its
    #: readers have the setting, and the hang-by time of each bag is in the log).
    beyond_use_h: Decimal = Decimal(12)

    @property
    def hang_within_h(self) -> Decimal:
        """How long after compounding a bag may still be hung: beyond-use - real duration."""
        return self.beyond_use_h - self.bag_duration_h

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; decimals become numbers at a sensible precision."""
        out: dict[str, Any] = {}
        # Fields read directly (no ``asdict`` deep copy): every value is a number, a string
        # or a tuple of strings or of flat dicts, each copied below.
        for key in _BUILD_FIELDS:
            value = getattr(self, key)
            if isinstance(value, Decimal):
                out[key] = _num(value)
            elif key == "alternatives":
                out[key] = [dict(a) for a in value]
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out

    def label(self) -> str:
        """A readable pharmacy label and pump program."""
        n_syr = _num(self.syringes_per_bag)
        lines = [
            f"{self.setting_name}  (setting {self.setting_version[:19]})",
            f"  ordered     {_num(self.ordered_mg_per_day)} mg/day, {_num(self.weight_kg)} kg",
            f"  build       {_num(self.mg_per_bag)} mg ({n_syr} syringe"
            f"{'s' if n_syr != 1 else ''}, {_num(self.drug_volume_ml)} mL) in {self.bag_ml} mL "
            f"NS, q{self.interval_h}h, {self.bags_per_day} bags/day",
            f"  real dose   {_num1(self.achieved_mg_per_day)} mg/day "
            f"({_signed(self.real_deviation_pct)}% vs ordered), "
            f"{_num(self.dose_mg_per_kg_per_h)} mg/kg/h; nominal "
            f"{_num(self.nominal_mg_per_day)} mg/day ({_signed(self.deviation_pct)}%)",
            f"  bag         final volume {_num(self.final_volume_ml)} mL (overfill "
            f"{_num(self.overfill_ml)} mL), {_num(self.real_concentration_mg_per_ml)} mg/mL real, "
            f"{_num(self.concentration_mg_per_ml)} mg/mL nominal; "
            f"{_num1(self.infused_mg_per_bag)} mg infused per bag",
            f"  pump        rate {_num(self.rate_ml_per_h)} mL/h, VTBI {_num(self.vtbi_ml)} mL, "
            f"bag lasts {_hours(self.bag_duration_h)}",
            f"  limit       {self.limit}: {self.limit_detail}",
            "  handling    protect from light (bag AND amber tubing); hand delivery only, "
            "no pneumatic tube",
            f"  use by      beyond use {_num(self.beyond_use_h)} h after compounding; hang within "
            f"{_duration(self.hang_within_h)} of compounding",
        ]
        if self.override_reason:
            lines.append(f"  override    by {self.operator}: {self.override_reason}")
        if self.deviation_confirmation:
            lines.append(
                f"  deviation   {_signed(self.deviation_pct)}% nominal, "
                f"{_signed(self.real_deviation_pct)}% real confirmed by {self.operator}: "
                f"{self.deviation_confirmation} (tell the prescriber)"
            )
        lines += [f"  note        {m}" for m in self.messages]
        return "\n".join(lines)


_BUILD_FIELDS = tuple(f.name for f in fields(Build) if f.name != "beyond_use_h")


@lru_cache(maxsize=4096)
def _num(value: Decimal) -> float | int:
    """A decimal as a JSON number at 4 places (kept: the same figures recur every run)."""
    q = value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP).normalize()
    return int(q) if q == q.to_integral_value() else float(q)


def _num1(value: Decimal) -> float | int:
    q = value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP).normalize()
    return int(q) if q == q.to_integral_value() else float(q)


def _signed(value: Decimal) -> str:
    v = _num1(value)
    return f"+{v}" if v > 0 else f"{v}"


def _duration(hours: Decimal) -> str:
    """Hours as "7 h 56 min" (to the minute, half up)."""
    total_min = int(round_half_up(hours * 60))
    return f"{total_min // 60} h {total_min % 60:02d} min"


def _hours(hours: Decimal) -> str:
    return f"{_duration(hours)} ({_num(hours)} h)"


def mg_per_bag_for(dose_mg_per_day: Decimal, bags_per_day: int, step_mg: Decimal) -> Decimal:
    """max(one step, step * round_half_up(dose / n / step)); a step is a syringe or less."""
    steps = round_half_up(dose_mg_per_day / bags_per_day / step_mg)
    return max(step_mg, step_mg * steps)


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
    if not order.dose_mg_per_day.is_finite() or order.dose_mg_per_day <= 0:
        raise InputError(
            f"dose_mg_per_day = {order.dose_mg_per_day} is not allowed; allowed: a number > 0"
        )
    if order.dose_mg_per_day > 10**6:
        raise InputError(
            f"dose_mg_per_day = {order.dose_mg_per_day} is not allowed; allowed: up to 1000000"
        )
    if order.dose_mg_per_kg_per_day is not None and setting.dose_forms == "mg_per_day":
        raise InputError(
            f"setting '{setting.name}' takes orders in mg/day only; allowed: --dose-mg-per-day "
            "(use the pediatric setting for mg/kg/day)"
        )
    if order.dose_mg_per_kg_per_day is None and setting.dose_forms == "mg_per_kg_per_day":
        raise InputError(
            f"setting '{setting.name}' takes orders in mg/kg/day only; allowed: "
            "--dose-mg-per-kg-per-day"
        )
    lo, hi = setting.weight_min_kg, setting.weight_max_kg
    if not order.weight_kg.is_finite() or not lo <= order.weight_kg <= hi:
        raise InputError(f"weight_kg = {order.weight_kg} is out of range; allowed: {lo}-{hi} kg")
    if order.bag_ml is not None and order.bag_ml not in setting.bag_sizes_ml:
        allowed = ", ".join(str(s) for s in setting.bag_sizes_ml)
        raise InputError(f"bag_ml = {order.bag_ml} is not a bag size; allowed: {allowed} mL")
    if order.interval_h is not None and order.interval_h not in setting.intervals_h:
        allowed = " or ".join(str(i) for i in setting.intervals_h)
        raise InputError(f"interval_h = {order.interval_h} is not allowed; allowed: {allowed} h")
    for what, text in (
        ("override reason", order.override_reason),
        ("deviation confirmation", order.confirm_deviation),
    ):
        if text is not None and not text.strip():
            raise InputError(f"{what} is empty; allowed: a non-empty reason")
        if text and not (order.operator and order.operator.strip()):
            article = "an" if what[0] in "aeiou" else "a"
            raise InputError(f"{article} {what} needs an operator id (--operator)")


@dataclass(frozen=True)
class _Candidate:
    interval_h: int
    mg: Decimal
    bag_ml: int

    @cached_property
    def n(self) -> int:
        return 24 // self.interval_h

    @cached_property
    def nominal(self) -> Decimal:
        return self.n * self.mg

    @cached_property
    def fluid_ml_per_day(self) -> int:
        return self.n * self.bag_ml


def _tie_key(c: _Candidate, dose: Decimal, ordered_ml: int, default_iv: int) -> tuple[Any, ...]:
    """Nearest to the order; then the ordered bag size; then less fluid a day; then q8h."""
    return (
        abs(c.nominal - dose),
        c.bag_ml != ordered_ml,
        c.fluid_ml_per_day,
        c.interval_h != default_iv,
    )


def _real(c: _Candidate, setting: DrugSetting) -> dict[str, Decimal]:
    """Real figures of a candidate bag: drug volume, content, concentration, rate, dose.

    The real daily dose is what the pump really runs: rate x 24 h x real concentration,
    computed as (rate x interval) x concentration x bags per day, which is the same figure
    and, when rate x interval is the bag's volume, bit for bit the VTBI's drug x bags/day.
    """
    drug_ml = c.mg / setting.syringe_mg * setting.syringe_ml
    overfill = setting.overfill_ml(c.bag_ml)
    content = Decimal(c.bag_ml) + overfill + drug_ml
    conc = c.mg / content
    vtbi = Decimal(c.bag_ml)
    infused = vtbi * conc
    rate, raised = setting.rate_for(c.bag_ml, c.interval_h)
    ml_per_interval = rate * c.interval_h
    real = infused * c.n if ml_per_interval == vtbi else ml_per_interval * conc * c.n
    return {
        "drug_ml": drug_ml,
        "overfill": overfill,
        "content": content,
        "conc": conc,
        "vtbi": vtbi,
        "infused": infused,
        "rate": rate,
        "raised": Decimal(raised),
        "real": real,
    }


def achievable(setting: DrugSetting, ordered_ml: int, intervals: list[int]) -> list[_Candidate]:
    """Every daily dose the build can make (one candidate per dose, by the tie rule).

    Computed once per setting object and bag/interval choice (settings are read-only and
    shared per file content), not once per run.
    """
    key = ("achievable", ordered_ml, tuple(intervals))
    memo = setting.memo
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = tuple(_achievable(setting, ordered_ml, intervals))
    return list(hit)


def _achievable(setting: DrugSetting, ordered_ml: int, intervals: list[int]) -> list[_Candidate]:
    step = setting.dose_resolution_mg
    biggest = setting.conc_max_mg_per_ml * max(setting.bag_sizes_ml)
    best: dict[Decimal, _Candidate] = {}
    for iv in intervals:
        k = 1
        while k * step <= biggest:
            mg = k * step
            bag = _pick_bag(mg, ordered_ml, setting)
            if bag is not None:
                c = _Candidate(iv, mg, bag)
                old = best.get(c.nominal)
                key = (c.bag_ml != ordered_ml, c.fluid_ml_per_day, iv != setting.default_interval_h)
                if old is None or key < (
                    old.bag_ml != ordered_ml,
                    old.fluid_ml_per_day,
                    old.interval_h != setting.default_interval_h,
                ):
                    best[c.nominal] = c
            k += 1
    return [best[d] for d in sorted(best)]


def _deviations(c: _Candidate, dose: Decimal, setting: DrugSetting) -> tuple[Decimal, Decimal]:
    """(nominal, real) deviation of a candidate from the ordered daily dose, %."""
    return (c.nominal - dose) / dose * 100, (_real(c, setting)["real"] - dose) / dose * 100


def _within(c: _Candidate, dose: Decimal, setting: DrugSetting) -> bool:
    """Both the nominal and the real daily dose within ``max_deviation_pct`` of the order."""
    return all(abs(d) <= setting.max_deviation_pct for d in _deviations(c, dose, setting))


def _alt_text(a: dict[str, Any], dose: Decimal) -> str:
    real_dev = (Decimal(str(a["real_mg_per_day"])) - dose) / dose * 100
    over = ", over the hard limit" if a["limit"] == "hard" else ""
    return (
        f"{a['mg_per_day']} mg/day nominal ({a['deviation_pct']:+}%), "
        f"{a['real_mg_per_day']} real ({_signed(real_dev)}%{over})"
    )


def _alternative(c: _Candidate, dose: Decimal, setting: DrugSetting, w: Decimal) -> dict[str, Any]:
    real = _real(c, setting)["real"]
    limit, _ = check_limits(real, w, setting)
    return {
        "mg_per_day": _num(c.nominal),
        "interval_h": c.interval_h,
        "mg_per_bag": _num(c.mg),
        "bag_ml": c.bag_ml,
        "deviation_pct": _num1((c.nominal - dose) / dose * 100),
        "real_mg_per_day": _num1(real),
        "limit": limit,
    }


def build(order: Order, setting: DrugSetting) -> Build:
    """The pharmacy build; raises Refused / OverrideRequired / InputError with one line.

    A build is a pure function of the order and the (read-only) setting, so a successful
    one is kept on the setting per exact order (``repr`` tells ``600`` from ``600.0``).
    """
    key = ("build", repr(order))
    memo = setting.memo
    hit = memo.get(key)
    if hit is None:
        hit = _build(order, setting)
        if len(memo) > 512:
            memo.clear()
        memo[key] = hit
    return hit


def _build(order: Order, setting: DrugSetting) -> Build:
    validate_order(order, setting)
    dose = order.dose_mg_per_day
    weight = order.weight_kg
    ordered_ml = order.bag_ml if order.bag_ml is not None else setting.default_bag_ml
    messages: list[str] = []
    max_dev = setting.max_deviation_pct

    # Lower limits on the ordered dose, before any rounding: a typo is caught here.
    low_kind, low_detail = check_limits(dose, weight, setting, lower_only=True)
    if low_kind == "hard":
        raise RefusedError(f"refused by the lower hard limit: ordered {low_detail}")

    # Interval and mg per bag: the nearest achievable dose, by the tie rule.
    intervals = list(setting.intervals_h)
    if order.interval_h is not None:
        intervals = [order.interval_h]
        messages.append(f"interval q{order.interval_h}h set by the pharmacist")
    step = setting.dose_resolution_mg
    ranked: list[_Candidate] = []
    unfit: list[tuple[int, Decimal]] = []
    for iv in intervals:
        mg = mg_per_bag_for(dose, 24 // iv, step)
        bag = _pick_bag(mg, ordered_ml, setting)
        if bag is None:
            unfit.append((iv, mg))
        else:
            ranked.append(_Candidate(iv, mg, bag))
    ranked.sort(key=lambda c: _tie_key(c, dose, ordered_ml, setting.default_interval_h))
    if not ranked:
        iv, mg = unfit[0]
        cmax, cmin = setting.conc_max_mg_per_ml, setting.conc_min_mg_per_ml
        sizes = setting.bag_sizes_ml
        if mg / cmax > sizes[-1]:
            why = f"{_num(mg)} mg per bag needs more than {sizes[-1]} mL at {_num(cmax)} mg/mL"
        else:
            why = f"{_num(mg)} mg per bag is below {_num(cmin)} mg/mL in every bag size"
        tried = ", ".join(f"q{i}h" for i, _ in unfit)
        raise RefusedError(f"no bag size fits ({tried}): {why}")
    for iv, mg in unfit:
        messages.append(
            f"no bag size holds {_num(mg)} mg at q{iv}h within "
            f"{_num(setting.conc_min_mg_per_ml)}-{_num(setting.conc_max_mg_per_ml)} mg/mL; "
            f"tried q{ranked[0].interval_h}h instead"
        )
    chosen = ranked[0]
    if len(ranked) > 1:
        other = ranked[1]
        tie = abs(other.nominal - dose) == abs(chosen.nominal - dose)
        if tie and (
            other.nominal != chosen.nominal or chosen.interval_h != setting.default_interval_h
        ):
            why = (
                "it keeps the ordered bag size"
                if (chosen.bag_ml == ordered_ml) != (other.bag_ml == ordered_ml)
                else f"it uses less fluid ({chosen.fluid_ml_per_day} vs "
                f"{other.fluid_ml_per_day} mL/day)"
                if chosen.fluid_ml_per_day != other.fluid_ml_per_day
                else f"q{setting.default_interval_h}h is the default"
            )
            messages.append(
                f"tie: q{chosen.interval_h}h ({_num(chosen.nominal)} mg/day) and "
                f"q{other.interval_h}h ({_num(other.nominal)} mg/day) are as near the order; "
                f"q{chosen.interval_h}h "
                f"chosen because {why}"
            )
        elif (
            not tie and chosen.interval_h != setting.default_interval_h and order.interval_h is None
        ):
            messages.append(
                f"q{chosen.interval_h}h chosen: {_num(chosen.nominal)} mg/day is nearer the "
                f"ordered {_num(dose)} mg/day than q{other.interval_h}h"
            )

    # Never round up across the hard limit when rounding down stays within the deviation.
    options = achievable(setting, ordered_ml, intervals)
    if check_limits(_real(chosen, setting)["real"], weight, setting)[0] == "hard":
        below = [
            c
            for c in options
            if c.nominal < chosen.nominal
            and abs(c.nominal - dose) / dose * 100 <= max_dev
            and check_limits(_real(c, setting)["real"], weight, setting)[0] != "hard"
        ]
        if below:
            lower = below[-1]
            dev_n, dev_r = _deviations(lower, dose, setting)
            if _within(lower, dose, setting):
                how = f"within {_num(max_dev)}% of the order"
            else:
                how = (
                    f"nominal {_signed(dev_n)}%, real {_signed(dev_r)}% from the order: "
                    "the pharmacist confirms"
                )
            messages.append(
                f"{_num(chosen.nominal)} mg/day would cross the hard limit; rounded down to "
                f"{_num(lower.nominal)} mg/day ({how})"
            )
            chosen = lower

    iv, mg, bag, n = chosen.interval_h, chosen.mg, chosen.bag_ml, chosen.n
    if bag != ordered_ml:
        messages.append(
            f"ordered {ordered_ml} mL bag gives {_num(mg / ordered_ml)} mg/mL, outside "
            f"{_num(setting.conc_min_mg_per_ml)}-{_num(setting.conc_max_mg_per_ml)} mg/mL; "
            f"using {bag} mL"
        )
    nominal = chosen.nominal
    real = _real(chosen, setting)
    achieved = real["real"]
    deviation = (nominal - dose) / dose * 100
    real_deviation = (achieved - dose) / dose * 100
    off = [
        f"the {what} dose ({_num1(mg)} mg/day) is {_signed(dev)}%"
        for what, mg, dev in (("nominal", nominal, deviation), ("real", achieved, real_deviation))
        if abs(dev) > max_dev
    ]
    needs_confirmation = bool(off)
    alternatives: list[dict[str, Any]] = []
    below_opts = [c for c in options if c.nominal <= dose]
    above_opts = [c for c in options if c.nominal >= dose]
    if below_opts:
        alternatives.append(_alternative(below_opts[-1], dose, setting, weight))
    if above_opts and (not below_opts or above_opts[0].nominal != below_opts[-1].nominal):
        alternatives.append(_alternative(above_opts[0], dose, setting, weight))

    # Rate, real duration, final volume (overfill and drug), real concentration and dose.
    rate = real["rate"]
    vtbi = real["vtbi"]
    duration_h = vtbi / rate
    max_h = setting.bag_change_interval_max_h
    if duration_h > max_h:  # pragma: no cover - rate_for rounds up to prevent it
        raise RefusedError(
            f"no rate lets {bag} mL last at most {_num(max_h)} h at q{iv}h; "
            f"{_num(rate)} mL/h gives {_hours(duration_h)}"
        )
    if real["raised"]:
        messages.append(
            f"rate rounded up to {_num(rate)} mL/h (half up, {bag} mL would last more than "
            f"the {_num(max_h)} h maximum bag interval); each bag really lasts "
            f"{_hours(duration_h)}"
        )
    elif rate * iv != Decimal(bag):
        messages.append(
            f"rate rounded to {_num(rate)} mL/h; each bag really lasts {_hours(duration_h)}"
        )
    mg_kg_h = achieved / HOURS_PER_DAY / weight
    limit, detail = check_limits(achieved, weight, setting)
    if limit == "ok" and low_kind == "soft":
        limit, detail = "soft", f"ordered {low_detail}"
    if limit != "soft" and order.override_reason:
        messages.append("override reason given but no soft limit is exceeded; not needed")
    if needs_confirmation:
        messages.append(
            f"{' and '.join(off)} from the order (more than {_num(max_dev)}%): "
            "the pharmacist confirms and the prescriber is told; nearest achievable: "
            + "; ".join(
                f"{_alt_text(a, dose)} (q{a['interval_h']}h, {a['mg_per_bag']} mg in "
                f"{a['bag_ml']} mL)"
                for a in alternatives
            )
        )
    result = Build(
        ordered_mg_per_day=dose,
        nominal_mg_per_day=nominal,
        achieved_mg_per_day=achieved,
        deviation_pct=deviation,
        real_deviation_pct=real_deviation,
        needs_confirmation=needs_confirmation,
        alternatives=tuple(alternatives),
        interval_h=iv,
        bags_per_day=n,
        mg_per_bag=mg,
        syringes_per_bag=mg / setting.syringe_mg,
        drug_volume_ml=real["drug_ml"],
        bag_ml=bag,
        ordered_bag_ml=ordered_ml,
        overfill_ml=real["overfill"],
        final_volume_ml=real["content"],
        concentration_mg_per_ml=mg / Decimal(bag),
        real_concentration_mg_per_ml=real["conc"],
        rate_ml_per_h=rate,
        vtbi_ml=vtbi,
        bag_duration_h=duration_h,
        infused_mg_per_bag=real["infused"],
        weight_kg=weight,
        dose_mg_per_kg_per_h=mg_kg_h,
        dose_mg_per_kg_per_day=achieved / weight,
        limit=limit,
        limit_detail=detail,
        override_reason=order.override_reason if limit == "soft" else None,
        operator=order.operator if (limit == "soft" or needs_confirmation) else None,
        deviation_confirmation=order.confirm_deviation if needs_confirmation else None,
        setting_name=setting.name,
        setting_version=setting.version,
        messages=tuple(messages),
        beyond_use_h=Decimal(str(setting.beyond_use_h)),
    )
    exc: PumpctlError | None = None
    needs: list[str] = []
    if limit == "hard":
        exc = RefusedError(f"refused by the hard limit: {detail}; no override possible")
    else:
        if limit == "soft" and not order.override_reason:
            needs.append(f"soft limit exceeded: {detail}; give --override-reason TEXT")
        if needs_confirmation and not order.confirm_deviation:
            alts = "; ".join(_alt_text(a, dose) for a in alternatives)
            needs.append(
                f"{' and '.join(off)} from the ordered {_num(dose)} mg/day, more than "
                f"{_num(max_dev)}%; nearest achievable: {alts}; give --confirm-deviation REASON"
            )
        if needs:
            exc = OverrideRequiredError("; ".join(needs) + " and --operator ID")
    if exc is not None:
        exc.build = result  # type: ignore[attr-defined]  # so --json can still show it
        raise exc
    return result


def check_limits(
    mg_per_day: Decimal, weight_kg: Decimal, setting: DrugSetting, *, lower_only: bool = False
) -> tuple[str, str]:
    """Classify a daily dose against the setting's limits: ("ok"|"soft"|"hard", why)."""
    lims = setting.limits
    per_h = mg_per_day / HOURS_PER_DAY / weight_kg
    dose_txt = f"{_num1(mg_per_day)} mg/day = {_num(per_h)} mg/kg/h at {_num(weight_kg)} kg"
    levels = (
        ("upper_hard", "above", lambda d, lim: d > lim),
        ("lower_hard", "below", lambda d, lim: d < lim),
        ("upper_soft", "above", lambda d, lim: d > lim),
        ("lower_soft", "below", lambda d, lim: d < lim),
    )
    for level, word, cmp in levels:
        if lower_only and level.startswith("upper"):
            continue
        lim = lims.get(level)
        if lim is not None and cmp(mg_per_day, lim.mg_per_day(weight_kg)):
            kind = "hard" if level.endswith("hard") else "soft"
            return kind, f"{dose_txt} is {word} the {level.replace('_', ' ')} limit {lim.label()}"
    return "ok", f"{dose_txt} is within the limits"
