"""PCD-03 (IHE PIV): an ``RGV^O15`` infusion order in, checked as a console order is.

The pump plays the Infusion Order Consumer. ``parse_rgv`` turns the message into a typed
``InfusionOrder`` or raises ``Rejected`` (malformed, or not for this device: ACK ``CR``);
``check_order`` runs the drug library, the pharmacy build and the build-mismatch rules
and says what the ``RRG^O16`` answer is; the caller then programs the controller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import hl7

from pumpctl.errors import InputError, OverrideRequiredError, RefusedError
from pumpctl.hl7 import codec
from pumpctl.hl7.codec import first, seg, segments, val
from pumpctl.order import Build, Order, build, check_limits
from pumpctl.setting import DrugSetting

MDC_DEV_PUMP_INFUS_VMD = "69986"
MDC_ATTR_PT_WEIGHT = "68063"
PIV_PROFILE = ["IHE_PCD_PIV_001"]  # MSH-21 as in the IHE PIV examples


@dataclass(frozen=True)
class Rule:
    """One reason an order is refused: HL7 table 0357 code, local ERR-5 code, MSA code."""

    name: str
    hl7_code: str  # ERR-3, HL7 table 0357
    hl7_text: str
    app_code: str  # ERR-5, local table 99PCTL (9010 as in the IHE PIV example)
    app_text: str
    ack: str  # RRG MSA-1: AR (refused by a rule) or AE (error in the order's data)


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("malformed", "101", "Required field missing", "9020", "Malformed order", "AE"),
        Rule("bad_value", "102", "Data type error", "9021", "Order value not allowed", "AE"),
        Rule("wrong_device", "204", "Unknown key identifier", "9022", "Not for this device", "AR"),
        Rule("unsupported", "200", "Unsupported message type", "9023", "Not an RGV^O15", "AR"),
        Rule("internal", "207", "Application internal error", "9099", "Internal error", "AE"),
        Rule(
            "drug_not_in_library",
            "207",
            "Application internal error",
            "9010",
            "Unable to match medication to drug library",
            "AR",
        ),
        Rule("hard_limit", "207", "Application internal error", "9011", "Hard limit", "AR"),
        Rule(
            "soft_limit",
            "207",
            "Application internal error",
            "9012",
            "Soft limit needs an override at the pump",
            "AR",
        ),
        Rule("no_bag_fits", "207", "Application internal error", "9013", "No bag fits", "AR"),
        Rule(
            "build_mismatch",
            "207",
            "Application internal error",
            "9014",
            "Order differs from the pharmacy build",
            "AR",
        ),
        Rule(
            "pump_refused",
            "207",
            "Application internal error",
            "9015",
            "Pump refused the program",
            "AR",
        ),
    )
}


class Rejected(Exception):
    """An order refused by ``rule``; ``location`` is ERR-2 (segment^sequence^field)."""

    def __init__(self, rule: str, text: str, location: str = "") -> None:
        super().__init__(text)
        self.rule = RULES[rule]
        self.text = text
        self.location = location


@dataclass(frozen=True)
class InfusionOrder:
    """What a PCD-03 order says, in pumpctl units."""

    control_id: str
    sending_app: str
    device_id: str
    drug_id: str
    drug_text: str
    weight_kg: Decimal | None  # OBX 68063; None when the message has none
    dose_mg_per_day: Decimal | None  # None when a per-kg rate comes without a weight
    rate_ml_per_h: Decimal | None  # when the order gives a rate (RXG-15/16 in mL/h)
    vtbi_ml: Decimal | None  # RXG-5/7
    strength_mg: Decimal | None  # RXG-17/18
    drug_volume_ml: Decimal | None  # RXG-23/24
    patient: str = ""  # the PID segment as received, echoed on status messages
    placer_order: str = ""  # ORC-2
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- units
_MASS_MG = {"ug": Decimal("0.001"), "mcg": Decimal("0.001"), "mg": Decimal(1), "g": Decimal(1000)}
_MDC_MASS = {"MICRO_G": "ug", "MILLI_G": "mg", "X_G": "g"}
_PER_DAY = {"min": Decimal(1440), "h": Decimal(24), "d": Decimal(1)}
_UCUM_RATE = re.compile(
    r"^(?P<q>ug|mcg|mg|g|ml|l)(?P<kg>/kg)?/(?P<t>min|h|hr|hour|d|day|24\.?h|\(24\.?h\))$"
)
_MDC_RATE = re.compile(
    r"^MDC_DIM_(?P<q>MICRO_G|MILLI_G|X_G|MILLI_L|X_L)(?P<kg>_PER_KG)?_PER_(?P<t>MIN|HR|DAY)$"
)


@dataclass(frozen=True)
class RateUnit:
    """A rate unit: mL per time (``per_kg`` False) or mass per (kg and) time."""

    volume: bool
    factor: Decimal  # to mL/h (volume) or to mg/day (mass)
    per_kg: bool


def rate_unit(comps: list[str]) -> RateUnit | None:
    """Read a rate unit from any component of a CWE (UCUM text or MDC reference id)."""
    for c in comps:
        text = c.strip()
        m = _UCUM_RATE.match(text.lower().replace(" ", ""))
        if m:
            t = "d" if "24" in m["t"] else {"hr": "h", "hour": "h", "day": "d"}.get(m["t"], m["t"])
            return _rate(m["q"], t, bool(m["kg"]))
        m = _MDC_RATE.match(text.upper())
        if m:
            q = {"MILLI_L": "ml", "X_L": "l"}.get(m["q"]) or _MDC_MASS[m["q"]]
            t = {"MIN": "min", "HR": "h", "DAY": "d"}[m["t"]]
            return _rate(q, t, bool(m["kg"]))
        if text == "265266":  # MDC_DIM_MILLI_L_PER_HR
            return RateUnit(True, Decimal(1), False)
    return None


def _rate(q: str, t: str, per_kg: bool) -> RateUnit:
    if q in ("ml", "l"):
        to_ml = Decimal(1000) if q == "l" else Decimal(1)
        return RateUnit(True, to_ml * _PER_DAY[t] / 24, per_kg)
    return RateUnit(False, _MASS_MG[q] * _PER_DAY[t], per_kg)


def _unit_factor(comps: list[str], table: dict[str, Decimal], what: str, where: str) -> Decimal:
    texts = [c.strip() for c in comps if c.strip()]
    for t in texts:
        key = t.lower()
        if key in table:
            return table[key]
    for t in texts:
        for mdc, short in (("MILLI_G", "mg"), ("MICRO_G", "ug"), ("MILLI_L", "ml"), ("X_G", "g")):
            if t.upper() == f"MDC_DIM_{mdc}" and short in table:
                return table[short]
    got = "^".join(comps).rstrip("^") or "nothing"
    raise Rejected("bad_value", f"{where} unit {got!r} is not a {what} unit", where)


_VOLUME_ML = {"ml": Decimal(1), "l": Decimal(1000), "263762": Decimal(1)}
_MASS = {**_MASS_MG, "263890": Decimal(1)}
_WEIGHT_KG = {
    "kg": Decimal(1),
    "g": Decimal("0.001"),
    "[lb_av]": Decimal("0.45359237"),
    "lb": Decimal("0.45359237"),
    "263875": Decimal(1),
}


def _num(text: str, where: str, *, required: bool = True) -> Decimal | None:
    if not text:
        if required:
            raise Rejected("malformed", f"{where} is empty; allowed: a number", where)
        return None
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise Rejected("bad_value", f"{where} = {text!r} is not a number", where) from None
    if not d.is_finite() or d <= 0:
        raise Rejected("bad_value", f"{where} = {text!r} is not allowed; allowed: > 0", where)
    return d


# --------------------------------------------------------------------------- parse
def message_type(msg: hl7.Message) -> str:
    """MSH-9 as ``RGV^O15``."""
    m = first(msg, "MSH")
    return f"{val(m, 9, 1)}^{val(m, 9, 2)}"


def parse_rgv(msg: hl7.Message, device_id: str | None) -> InfusionOrder:
    """Decode an RGV^O15 addressed to ``device_id`` (any device when None)."""
    msh_seg = first(msg, "MSH")
    control_id = val(msh_seg, 10)
    if message_type(msg) != "RGV^O15":
        raise Rejected(
            "unsupported", f"message type {message_type(msg)!r}; allowed: RGV^O15", "MSH^1^9"
        )
    if not control_id:
        raise Rejected("malformed", "MSH-10 (message control id) is empty", "MSH^1^10")
    rxg = first(msg, "RXG")
    if rxg is None:
        raise Rejected("malformed", "no RXG segment; allowed: one RXG with the order", "RXG")
    if len(segments(msg, "RXG")) > 1:
        raise Rejected("bad_value", "more than one RXG; allowed: one continuous order", "RXG^2")
    obxs = segments(msg, "OBX")
    pump = [o for o in obxs if val(o, 3, 1) == MDC_DEV_PUMP_INFUS_VMD]
    if not pump:
        raise Rejected(
            "malformed", "no OBX 69986^MDC_DEV_PUMP_INFUS_VMD naming the pump in OBX-18", "OBX"
        )
    ids = [val(pump[0], 18, 1), val(pump[0], 18, 3)]
    ids = [i for i in ids if i]
    if not ids:
        raise Rejected("malformed", "OBX-18 of the pump OBX names no device", "OBX^1^18")
    if device_id is not None and device_id not in ids:
        raise Rejected(
            "wrong_device",
            f"OBX-18 names device {ids[-1]!r}; this is device {device_id!r}",
            "OBX^1^18",
        )
    drug = codec.components(rxg, 4)
    if not any(drug):
        raise Rejected("malformed", "RXG-4 (give code: the drug) is empty", "RXG^1^4")
    rate_val = _num(val(rxg, 15), "RXG-15 (give rate amount)")
    unit = rate_unit(codec.components(rxg, 16))
    if unit is None:
        got = "^".join(codec.components(rxg, 16)).rstrip("^") or "nothing"
        raise Rejected(
            "bad_value",
            f"RXG-16 rate unit {got!r} is not allowed; allowed: mL/h or a dose rate such as "
            "mg/d, mg/kg/h, ug/kg/min",
            "RXG^1^16",
        )
    strength = _num(val(rxg, 17), "RXG-17 (give strength)", required=False)
    if strength is not None:
        strength *= _unit_factor(codec.components(rxg, 18), _MASS, "mass", "RXG-18")
    volume = _num(val(rxg, 23), "RXG-23 (give drug strength volume)", required=False)
    if volume is not None:
        volume *= _unit_factor(codec.components(rxg, 24), _VOLUME_ML, "volume", "RXG-24")
    vtbi = _num(val(rxg, 5), "RXG-5 (give amount: VTBI)", required=False)
    if vtbi is not None:
        vtbi *= _unit_factor(codec.components(rxg, 7), _VOLUME_ML, "volume", "RXG-7")
    weight: Decimal | None = None
    weights = [o for o in obxs if val(o, 3, 1) == MDC_ATTR_PT_WEIGHT]
    if weights:
        weight = _num(val(weights[0], 5), "OBX-5 (patient weight)")
        assert weight is not None
        wcomps = codec.components(weights[0], 6)
        if any(wcomps):
            weight *= _unit_factor(wcomps, _WEIGHT_KG, "weight", "OBX-6")
    assert rate_val is not None
    per_kg = weight if unit.per_kg else Decimal(1)
    rate_ml_h: Decimal | None = None
    dose: Decimal | None = None
    if unit.volume:
        if per_kg is not None:
            rate_ml_h = rate_val * unit.factor * per_kg
            if strength is not None and volume is not None:
                dose = rate_ml_h * 24 * strength / volume
    elif per_kg is not None:
        dose = rate_val * unit.factor * per_kg
    pid = first(msg, "PID")
    return InfusionOrder(
        control_id=control_id,
        sending_app=val(msh_seg, 3),
        device_id=ids[0] if device_id is None else device_id,
        drug_id=drug[0],
        drug_text=drug[1],
        weight_kg=weight,
        dose_mg_per_day=dose,
        rate_ml_per_h=rate_ml_h,
        vtbi_ml=vtbi,
        strength_mg=strength,
        drug_volume_ml=volume,
        patient=str(pid) if pid is not None else "",
        placer_order=val(first(msg, "ORC"), 2),
    )


# --------------------------------------------------------------------------- check
def drug_matches(order: InfusionOrder, setting: DrugSetting) -> bool:
    """Is the ordered drug the one in the installed setting?

    RXG-4's identifier or text must be the setting's drug or name, or name the drug as a
    whole word ("Anakinra 100 mg/0.67 mL" is anakinra; "Dopamine" is not).
    """
    names = {setting.drug.strip().lower(), setting.name.strip().lower()}
    word = re.compile(rf"\b{re.escape(setting.drug.strip().lower())}\b")
    for t in (order.drug_id, order.drug_text):
        text = t.strip().lower()
        if text and (text in names or word.search(text)):
            return True
    return False


def to_console_order(order: InfusionOrder, setting: DrugSetting, operator: str) -> Order:
    """The console ``Order`` for this message (bag size from RXG-23 when it is one)."""
    assert order.dose_mg_per_day is not None and order.weight_kg is not None
    bag_ml: int | None = None
    vol = order.drug_volume_ml
    if vol is not None and vol == vol.to_integral_value() and int(vol) in setting.bag_sizes_ml:
        bag_ml = int(vol)
    dose = order.dose_mg_per_day
    if dose.is_finite() and abs(dose) < Decimal("1e9"):  # else the build refuses it as absurd
        dose = dose.quantize(Decimal("0.0001")).normalize()
    return Order(
        dose,
        order.weight_kg,
        bag_ml=bag_ml,
        operator=operator,
    )


def _differs(a: Decimal, b: Decimal, tol: Decimal) -> bool:
    return abs(a - b) > tol


def mismatches(order: InfusionOrder, b: Build, setting: DrugSetting) -> list[str]:
    """Where the message's program differs from the pharmacy build (empty when none)."""
    out: list[str] = []
    half_res = setting.rate_resolution_ml_per_h / 2
    if order.rate_ml_per_h is not None and _differs(order.rate_ml_per_h, b.rate_ml_per_h, half_res):
        out.append(f"rate {_n(order.rate_ml_per_h)} mL/h vs build {_n(b.rate_ml_per_h)} mL/h")
    if order.vtbi_ml is not None and _differs(order.vtbi_ml, b.vtbi_ml, Decimal("0.05")):
        out.append(f"VTBI {_n(order.vtbi_ml)} mL vs build {_n(b.vtbi_ml)} mL")
    if order.strength_mg is not None and _differs(order.strength_mg, b.mg_per_bag, Decimal("0.5")):
        out.append(f"strength {_n(order.strength_mg)} mg vs build {_n(b.mg_per_bag)} mg")
    if order.drug_volume_ml is not None and _differs(
        order.drug_volume_ml, Decimal(b.bag_ml), Decimal("0.05")
    ):
        out.append(f"drug volume {_n(order.drug_volume_ml)} mL vs build {b.bag_ml} mL")
    return out


def _n(d: Decimal) -> str:
    return codec.fmt_num(float(d))


def check_order(order: InfusionOrder, setting: DrugSetting, operator: str) -> tuple[Order, Build]:
    """The console checks on a decoded order; raises ``Rejected`` naming the rule."""
    if not drug_matches(order, setting):
        got = order.drug_text or order.drug_id
        raise Rejected(
            "drug_not_in_library",
            f"drug {got!r} is not in the installed drug library; allowed: {setting.drug}",
            "RXG^1^4",
        )
    if order.weight_kg is not None and order.dose_mg_per_day is None:
        raise Rejected(
            "bad_value",
            "a rate order needs the strength RXG-17/18 and the drug volume RXG-23/24; "
            "allowed: both, or a dose rate such as mg/d in RXG-15/16",
            "RXG^1^17",
        )
    if order.weight_kg is None or order.dose_mg_per_day is None:
        raise Rejected(
            "bad_value",
            "no patient weight (OBX 68063^MDC_ATTR_PT_WEIGHT); allowed: an order with the "
            "weight, which the dose limits need",
            "OBX",
        )
    console = to_console_order(order, setting, operator)
    try:
        b = build(console, setting)
    except RefusedError as exc:
        if hasattr(exc, "build"):
            raise Rejected("hard_limit", str(exc), "RXG^1^15") from None
        # No bag fits: if the dose ordered is itself over a hard limit, that is the rule.
        level, why = check_limits(console.dose_mg_per_day, console.weight_kg, setting)
        if level == "hard":
            raise Rejected("hard_limit", f"refused by the hard limit: {why}", "RXG^1^15") from None
        raise Rejected("no_bag_fits", str(exc), "RXG^1^15") from None
    except OverrideRequiredError as exc:
        raise Rejected("soft_limit", str(exc), "RXG^1^15") from None
    except InputError as exc:
        raise Rejected("bad_value", str(exc), "RXG") from None
    diffs = mismatches(order, b, setting)
    if diffs:
        raise Rejected("build_mismatch", "; ".join(diffs), "RXG")
    return console, b


# --------------------------------------------------------------------------- answers
def err_segment(rej: Rejected) -> str:
    """ERR: location, HL7 error code (0357), severity E, local code, user message."""
    r = rej.rule
    loc = rej.location.split("^") if rej.location else None
    return seg(
        "ERR",
        None,
        loc,
        [r.hl7_code, r.hl7_text, "HL70357"],
        "E",
        [r.app_code, r.app_text, "99PCTL"],
        None,
        None,
        rej.text[:250],
    )


def _reply_msh(
    incoming: hl7.Message | None, msg_type: list[str], control_id: str, now_s: float, app: str
) -> str:
    m = first(incoming, "MSH") if incoming is not None else None
    return codec.msh(
        sending_app=[app],
        receiving_app=codec.components(m, 3)[:3] if m is not None else None,
        receiving_facility=codec.components(m, 4)[:3] if m is not None else None,
        time_s=now_s,
        msg_type=msg_type,
        control_id=control_id,
        profile=PIV_PROFILE,
        accept_ack="NE",
        app_ack="NE",
    )


def accept_ack(
    incoming: hl7.Message | None,
    code: str,
    control_id: str,
    now_s: float,
    app: str,
    rej: Rejected | None = None,
) -> str:
    """``ACK^O15``: MSA-1 ``CA`` or ``CR``, MSA-2 the order's control id, ERR when ``CR``."""
    orig = val(first(incoming, "MSH"), 10) if incoming is not None else ""
    segs = [
        _reply_msh(incoming, ["ACK", "O15", "ACK"], control_id, now_s, app),
        seg("MSA", code, orig),
    ]
    if rej is not None:
        segs.append(err_segment(rej))
    return codec.message(segs)


def app_ack(
    incoming: hl7.Message,
    code: str,
    control_id: str,
    now_s: float,
    app: str,
    rej: Rejected | None = None,
    b: Build | None = None,
) -> str:
    """``RRG^O16``: MSA ``AA`` (programmed) or ``AR``/``AE`` with ERR naming the rule."""
    orig = val(first(incoming, "MSH"), 10)
    segs = [
        _reply_msh(incoming, ["RRG", "O16", "RRG_O16"], control_id, now_s, app),
        seg("MSA", code, orig),
    ]
    if rej is not None:
        segs.append(err_segment(rej))
    pid = first(incoming, "PID")
    if pid is not None:
        segs.append(str(pid))
    orc = first(incoming, "ORC")
    segs.append(seg("ORC", "OK" if code == "AA" else "UA", val(orc, 2), val(orc, 3)))
    rxg = first(incoming, "RXG")
    if rxg is not None:
        segs.append(str(rxg))
    return codec.message(segs)
