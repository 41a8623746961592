"""Load and strictly validate pump settings (drug library entries) and pump model profiles.

Every error names the file, the key, the value and what is allowed. The version of a
setting is a content hash of its normalised contents (comments and layout do not count),
shown wherever the setting is used.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

from pumpctl.errors import InputError

try:  # CPython's own SHA-256: the same digest as hashlib's, without loading OpenSSL (~5 ms
    # of every command that reads a setting)
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - another Python
    from hashlib import sha256 as _sha256

SCHEMA_VERSION = 1
_PKG_DIR = Path(__file__).resolve().parent


def profiles_dir() -> Path:
    """The ``firmware_profiles/`` shipped with pumpctl (package copy or source tree)."""
    if _PROFILES_DIR:
        return _PROFILES_DIR[0]
    for cand in (_PKG_DIR / "firmware_profiles", _PKG_DIR.parent / "firmware_profiles"):
        if cand.is_dir():
            _PROFILES_DIR.append(cand)  # where the package is does not change while it runs
            return cand
    raise InputError("cannot find pumpctl's firmware_profiles/ directory")


_PROFILES_DIR: list[Path] = []


# ---------------------------------------------------------------------------
# A small strict schema language
# ---------------------------------------------------------------------------
class Spec:
    required = True

    def allowed(self) -> str:
        """What the key takes, for the "missing key" line."""
        return "a value"

    def check(self, value: Any, where: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class Num(Spec):
    """A number within [lo, hi] (``integer`` for whole numbers only)."""

    def __init__(
        self,
        lo: float,
        hi: float,
        *,
        integer: bool = False,
        lo_open: bool = False,
        required: bool = True,
    ) -> None:
        self.lo, self.hi, self.integer, self.lo_open, self.required = (
            lo,
            hi,
            integer,
            lo_open,
            required,
        )

    def allowed(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        lo = f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"
        return f"{kind} {lo} and <= {self.hi:g}"

    def check(self, value: Any, where: str) -> Any:
        ok_type = isinstance(value, int) if self.integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            raise InputError(f"{where} = {value!r} has the wrong type; allowed: {self.allowed()}")
        if not math.isfinite(value):
            raise InputError(f"{where} = {value!r} is not finite; allowed: {self.allowed()}")
        too_low = value <= self.lo if self.lo_open else value < self.lo
        if too_low or value > self.hi:
            raise InputError(f"{where} = {value!r} is out of range; allowed: {self.allowed()}")
        return value


class Str(Spec):
    """A non-empty string, optionally one of ``choices``."""

    def __init__(self, choices: tuple[str, ...] = (), *, required: bool = True) -> None:
        self.choices, self.required = choices, required

    def allowed(self) -> str:
        return " or ".join(repr(c) for c in self.choices) if self.choices else "a non-empty string"

    def check(self, value: Any, where: str) -> Any:
        allowed = self.allowed()
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where} = {value!r} has the wrong type; allowed: {allowed}")
        if self.choices and value not in self.choices:
            raise InputError(f"{where} = {value!r} is not allowed; allowed: {allowed}")
        return value


class Anything(Spec):
    """Any value; the caller checks it further (lists of tables)."""

    def __init__(self, *, required: bool = True) -> None:
        self.required = required

    def check(self, value: Any, where: str) -> Any:
        return value


class Bool(Spec):
    """true or false."""

    def __init__(self, *, required: bool = True) -> None:
        self.required = required

    def allowed(self) -> str:
        return "true or false"

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, bool):
            raise InputError(f"{where} = {value!r} has the wrong type; allowed: true or false")
        return value


class NumList(Spec):
    """A non-empty list of distinct numbers, each checked by ``item``."""

    def __init__(self, item: Num, *, required: bool = True) -> None:
        self.item, self.required = item, required

    def allowed(self) -> str:
        return f"a non-empty list of numbers, each {self.item.allowed()}"

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, list) or not value:
            raise InputError(
                f"{where} = {value!r} has the wrong type; allowed: a non-empty list of "
                f"numbers, each {self.item.allowed()}"
            )
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")
        if len(set(value)) != len(value):
            raise InputError(f"{where} = {value!r} repeats a value; allowed: distinct values")
        return value


class Table(Spec):
    """A TOML table with a fixed set of keys; unknown keys are errors."""

    def __init__(self, fields: dict[str, Spec], *, required: bool = True) -> None:
        self.fields, self.required = fields, required

    def allowed(self) -> str:
        return f"a table with the keys {', '.join(self.fields)}"

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise InputError(f"{where} = {value!r} has the wrong type; allowed: a table")
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in self.fields:
                raise InputError(
                    f"unknown key '{prefix}{key}'; allowed keys here: {', '.join(self.fields)}"
                )
        for key, spec in self.fields.items():
            if key not in value:
                if spec.required:
                    raise InputError(f"missing key '{prefix}{key}'; allowed: {spec.allowed()}")
                continue
            spec.check(value[key], f"{prefix}{key}")
        return value


def _key_where(where: str) -> str:
    return f"key '{where}'"


# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------
LIMIT_LEVELS = ("lower_hard", "lower_soft", "upper_soft", "upper_hard")
LIMIT_UNITS = ("mg_per_day", "mg_per_kg_per_day", "mg_per_kg_per_h")

_LIMIT_FIELDS: dict[str, Spec] = {
    f"{level}_{unit}": Num(0, 1e6, lo_open=True, required=False)
    for level in LIMIT_LEVELS
    for unit in LIMIT_UNITS
}

#: ``drug.dose_resolution_mg``: required by ``measure = "partial"`` (checked in ``_check_drug``)
_DOSE_RESOLUTION = Num(0, 10000, lo_open=True, required=False)

DRUG_SCHEMA = Table(
    {
        "schema_version": Num(1, 1, integer=True),
        "kind": Str(("drug_setting",)),
        "name": Str(),
        "care_area": Str(required=False),
        "drug": Table(
            {
                "name": Str(),
                "diluent": Str(),
                "syringe_mg": Num(0, 10000, lo_open=True),
                "syringe_ml": Num(0, 100, lo_open=True),
                "restricted_formulary": Bool(),
                # "whole_syringes": whole syringes only; "partial": measured to dose_resolution_mg
                "measure": Str(("whole_syringes", "partial"), required=False),
                "dose_resolution_mg": _DOSE_RESOLUTION,
            }
        ),
        "dosing": Table(
            # which order forms the setting takes: mg/day, mg/kg/day, or both
            {"dose_forms": Str(("mg_per_day", "mg_per_kg_per_day", "both"))},
            required=False,
        ),
        "build": Table(
            {
                "bag_sizes_ml": NumList(Num(1, 5000, integer=True)),
                "default_bag_ml": Num(1, 5000, integer=True),
                "intervals_h": NumList(Num(1, 24, integer=True)),
                "default_interval_h": Num(1, 24, integer=True),
                "concentration_min_mg_per_ml": Num(0, 1000, lo_open=True),
                "concentration_max_mg_per_ml": Num(0, 1000, lo_open=True),
                "rate_resolution_ml_per_h": Num(0.001, 10),
                # {bag size = mL}, checked below; absent: no bag size has any overfill
                "overfill_ml": Anything(required=False),
                "max_deviation_pct": Num(0, 100),
            }
        ),
        "patient": Table(
            {
                "weight_min_kg": Num(0.1, 1000),
                "weight_max_kg": Num(0.1, 1000),
                "reference_weight_kg": Num(0.1, 1000),
            }
        ),
        "limits": Table(_LIMIT_FIELDS),
        "handling": Table(
            {
                "light_protection": Bool(),
                "hand_delivery": Bool(),
                "compounding_target_min": Num(0, 24 * 60),
                "beyond_use_h": Num(0, 24 * 30, lo_open=True),
                "bag_change_interval_min_h": Num(1, 24),
                "bag_change_interval_max_h": Num(1, 24),
            }
        ),
        "watchdog": Table(
            {
                "pharmacy_request_min": Num(1, 24 * 60),
                "not_at_bedside_min": Num(1, 24 * 60),
                "prepare_change_min": Num(1, 24 * 60),
                "escalate_min": Num(0, 24 * 60, lo_open=True),
                "silence_max_min": Num(0, 2, lo_open=True),
                "plan_percentile": Num(50, 100),
                "plan_margin_min": Num(0, 24 * 60),
                "pharmacy_turnaround_seed_min": Num(0, 24 * 60),
                "nurse_response_seed_min": Num(0, 24 * 60),
                "plan_min_observations": Num(1, 1000, integer=True),
            }
        ),
        "titration": Table(
            {
                "mode": Str(("now", "next_bag")),
                "rate_change_margin_min": Num(0, 24 * 60),
            },
        ),
    }
)

#: ``[serial]``: the link keys are optional for ``protocol = "none"`` (nothing reads them)
#: and required for ``"newera"`` (checked in ``_pump_from_raw``).
_SERIAL = Table(
    {
        "protocol": Str(("none", "newera")),
        "baud": Num(300, 115200, integer=True, required=False),
        "address": Num(0, 99, integer=True, required=False),
        "syringe_diameter_mm": Num(0.1, 100, required=False),
        "safe_timeout_s": Num(0, 255, integer=True, required=False),
    }
)

PUMP_SCHEMA = Table(
    {
        "schema_version": Num(1, 1, integer=True),
        "kind": Str(("pump_model",)),
        "name": Str(),
        "model": Str(),
        "rate": Table(
            {
                "min_ml_per_h": Num(0, 10000, lo_open=True),
                "max_ml_per_h": Num(0, 10000, lo_open=True),
                "resolution_ml_per_h": Num(0.001, 10),
                "max_vtbi_ml": Num(1, 100000),
            }
        ),
        "accuracy": Table(
            {
                "stated_pct": Num(0, 50),
                "bias_pct": Num(-50, 50),
                "ripple_pct": Num(0, 50),
                "ripple_period_s": Num(0, 3600),
                "startup_tau_min": Num(0, 60),
            }
        ),
        "reservoir": Table(
            {
                "change": Str(("running", "stopped")),
                "buffer_ml": Num(0, 50),
                "capacity_ml": Num(0, 100000, lo_open=True),
            }
        ),
        "line": Table({"prime_ml": Num(0, 100)}),
        "vtbi_complete": Table({"action": Str(("kvo", "stop")), "kvo_ml_per_h": Num(0, 50)}),
        "occlusion": Table(
            {
                "threshold_mmhg": Num(1, 2000),
                "time_to_alarm_s": Num(0, 3600),
                "bolus_after_release_ml": Num(0, 10),
            }
        ),
        "air": Table({"detect_ul": Num(0, 10000)}),
        "battery": Table({"capacity_min": Num(0, 24 * 60), "low_warning_min": Num(0, 24 * 60)}),
        "serial": _SERIAL,
    }
)


# ---------------------------------------------------------------------------
# Loaded objects
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RateLimits:
    """Rate range and resolution of a pump model (from its profile)."""

    min_ml_per_h: float
    max_ml_per_h: float
    resolution_ml_per_h: float
    max_vtbi_ml: float = 9999.0


@dataclass(frozen=True)
class Limit:
    """One dose limit: level (e.g. ``upper_hard``), value and unit."""

    level: str
    value: Decimal
    unit: str

    def label(self) -> str:
        """Human text such as ``2 mg/kg/h``."""
        unit = self.unit.replace("_per_", "/").replace("mg/kg/h", "mg/kg/h")
        return f"{self.value.normalize():f} {unit}"

    def mg_per_day(self, weight_kg: Decimal) -> Decimal:
        """The limit as mg/day for a patient of ``weight_kg``."""
        if self.unit == "mg_per_day":
            return self.value
        if self.unit == "mg_per_kg_per_day":
            return self.value * weight_kg
        return self.value * weight_kg * 24


@dataclass(frozen=True)
class DrugSetting:
    """A validated drug library entry such as "anakinra IV infusion"."""

    path: str
    version: str
    raw: dict[str, Any]

    @cached_property
    def memo(self) -> dict[Any, Any]:
        """Per-object cache for figures derived from the content (e.g. achievable doses)."""
        return {}

    def _d(self, *keys: str) -> Decimal:
        node: Any = self.raw
        for k in keys:
            node = node[k]
        return Decimal(str(node))

    @cached_property
    def name(self) -> str:
        return str(self.raw["name"])

    @cached_property
    def drug(self) -> str:
        return str(self.raw["drug"]["name"])

    @cached_property
    def syringe_mg(self) -> Decimal:
        return self._d("drug", "syringe_mg")

    @cached_property
    def syringe_ml(self) -> Decimal:
        return self._d("drug", "syringe_ml")

    @cached_property
    def bag_sizes_ml(self) -> tuple[int, ...]:
        return tuple(sorted(self.raw["build"]["bag_sizes_ml"]))

    @cached_property
    def default_bag_ml(self) -> int:
        return int(self.raw["build"]["default_bag_ml"])

    @cached_property
    def intervals_h(self) -> tuple[int, ...]:
        return tuple(self.raw["build"]["intervals_h"])

    @cached_property
    def default_interval_h(self) -> int:
        return int(self.raw["build"]["default_interval_h"])

    @cached_property
    def conc_min_mg_per_ml(self) -> Decimal:
        return self._d("build", "concentration_min_mg_per_ml")

    @cached_property
    def conc_max_mg_per_ml(self) -> Decimal:
        return self._d("build", "concentration_max_mg_per_ml")

    @cached_property
    def rate_resolution_ml_per_h(self) -> Decimal:
        return self._d("build", "rate_resolution_ml_per_h")

    @cached_property
    def bag_change_interval_max_h(self) -> Decimal:
        """The longest a bag may hang (``handling.bag_change_interval_max_h``)."""
        return self._d("handling", "bag_change_interval_max_h")

    def rate_for(self, bag_ml: int, interval_h: int) -> tuple[Decimal, bool]:
        """The pump rate of a bag: (rate mL/h, whether it was rounded up for the cap).

        Diluent mL / interval h rounded half up to the rate resolution; if that makes the
        bag last longer than ``bag_change_interval_max_h``, the next resolution step up
        instead (the bag then ends sooner, never later than the maximum interval).
        """
        key = ("rate_for", bag_ml, interval_h)
        hit = self.memo.get(key)
        if hit is None:
            res = self.rate_resolution_ml_per_h
            steps = Decimal(bag_ml) / Decimal(interval_h) / res
            rate = steps.quantize(Decimal(1), rounding=ROUND_HALF_UP) * res
            raised = False
            if rate <= 0 or Decimal(bag_ml) / rate > self.bag_change_interval_max_h:
                rate = steps.quantize(Decimal(1), rounding=ROUND_CEILING) * res
                raised = True
            hit = self.memo[key] = (rate, raised)
        return hit

    @cached_property
    def weight_min_kg(self) -> Decimal:
        return self._d("patient", "weight_min_kg")

    @cached_property
    def weight_max_kg(self) -> Decimal:
        return self._d("patient", "weight_max_kg")

    @property
    def limits(self) -> dict[str, Limit]:
        """Configured limits by level (a fresh dict of the immutable limits)."""
        return dict(self._limits)

    @cached_property
    def _limits(self) -> dict[str, Limit]:
        out: dict[str, Limit] = {}
        for key, value in self.raw["limits"].items():
            for level in LIMIT_LEVELS:
                if key.startswith(level + "_"):
                    out[level] = Limit(level, Decimal(str(value)), key[len(level) + 1 :])
        return out

    @cached_property
    def restricted_formulary(self) -> bool:
        return bool(self.raw["drug"]["restricted_formulary"])

    @cached_property
    def measure(self) -> str:
        """ "whole_syringes" (the adult protocol, also when the key is absent) or "partial"
        (measured doses)."""
        return str(self.raw["drug"].get("measure", "whole_syringes"))

    @cached_property
    def dose_resolution_mg(self) -> Decimal:
        """Smallest dose step in a bag: one syringe, or the measured resolution."""
        if self.measure == "partial":
            return self._d("drug", "dose_resolution_mg")
        return self.syringe_mg

    @cached_property
    def dose_forms(self) -> str:
        """Order forms accepted: mg_per_day, mg_per_kg_per_day or both (no ``[dosing]``
        table: mg_per_day only, the narrower choice)."""
        return str(self.raw.get("dosing", {}).get("dose_forms", "mg_per_day"))

    def overfill_ml(self, bag_ml: int) -> Decimal:
        """Manufacturer's overfill of a bag size: its ``build.overfill_ml`` entry (the table
        has one for every bag size); a setting without the table has no overfill at all."""
        table = self.raw["build"].get("overfill_ml")
        return Decimal(0) if table is None else Decimal(str(table[str(bag_ml)]))

    @cached_property
    def max_deviation_pct(self) -> Decimal:
        """Largest build deviation from the order accepted without confirmation."""
        return self._d("build", "max_deviation_pct")

    @cached_property
    def compounding_target_min(self) -> float:
        """Pharmacy aims to finish compounding this long before the hang."""
        return float(self.raw["handling"]["compounding_target_min"])

    @cached_property
    def beyond_use_h(self) -> float:
        """Beyond-use time of a compounded bag (USP <797> Category 1, room temperature)."""
        return float(self.raw["handling"]["beyond_use_h"])

    @cached_property
    def titration_mode(self) -> str:
        """ "now" (rate change or STAT bag) or "next_bag" (the old behaviour)."""
        return str(self.raw["titration"]["mode"])

    @cached_property
    def titration_margin_min(self) -> float:
        """A rate change must leave the bag this much longer than the pharmacy lead."""
        return float(self.raw["titration"]["rate_change_margin_min"])

    @property
    def plan(self) -> dict[str, float]:
        """How the watchdog plans its leads from observed staff times."""
        w = self.raw["watchdog"]
        return {
            "percentile": float(w["plan_percentile"]),
            "margin_min": float(w["plan_margin_min"]),
            "pharmacy_seed_min": float(w["pharmacy_turnaround_seed_min"]),
            "nurse_seed_min": float(w["nurse_response_seed_min"]),
            "min_observations": float(w["plan_min_observations"]),
        }

    @cached_property
    def light_protection(self) -> bool:
        return bool(self.raw["handling"]["light_protection"])

    @property
    def watchdog_min(self) -> dict[str, float]:
        """Watchdog lead times and the silence cap, minutes."""
        return {k: float(v) for k, v in self.raw["watchdog"].items()}

    def max_bag_duration_h(self) -> Decimal:
        """The longest a bag of this setting can run (largest bag at its slowest rate)."""
        hit = self.memo.get("max_bag_duration_h")
        if hit is None:
            hit = self.memo["max_bag_duration_h"] = self._max_bag_duration_h()
        return hit

    def _max_bag_duration_h(self) -> Decimal:
        worst = Decimal(0)
        for bag in self.bag_sizes_ml:
            for iv in self.intervals_h:
                worst = max(worst, Decimal(bag) / self.rate_for(bag, iv)[0])
        return worst


@dataclass(frozen=True)
class PumpModel:
    """A validated pump model profile."""

    path: str
    version: str
    name: str
    model: str
    limits: RateLimits
    stated_accuracy_pct: float
    bias_pct: float
    ripple_pct: float
    ripple_period_s: float
    startup_tau_s: float
    reservoir_change: str
    buffer_ml: float
    reservoir_capacity_ml: float
    prime_ml: float
    vtbi_action: str
    kvo_ml_per_h: float
    occlusion_time_to_alarm_s: float
    bolus_after_release_ml: float
    air_detect_ul: float
    battery_capacity_min: float
    battery_low_min: float
    serial: dict[str, Any]


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
def _normalise(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _normalise(v) for k, v in sorted(node.items())}
    if isinstance(node, list):
        return [_normalise(v) for v in node]
    if isinstance(node, int) and not isinstance(node, bool):
        return float(node)
    return node


def content_version(raw: dict[str, Any]) -> str:
    """The library version: ``sha256:`` and the full hex SHA-256 of the normalised content."""
    canon = json.dumps(_normalise(raw), sort_keys=True, separators=(",", ":"))
    return "sha256:" + _sha256(canon.encode()).hexdigest()


def short_version(version: str) -> str:
    """A version's label form (``sha256:`` and 12 hex digits); the full one is the identity."""
    return version[: len("sha256:") + 12]


#: Deepest nesting of arrays and tables a TOML file may have (Python's parser recurses).
MAX_TOML_DEPTH = 64


def _read_bytes(path: Path) -> bytes:
    """A file's bytes; missing, a directory, a loop or unreadable: one line."""
    from pumpctl.argtypes import input_file

    path = input_file(path, "TOML file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_toml(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable, non-UTF-8, malformed or absurdly nested
    file is one ``InputError`` line naming the file."""
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; allowed: a TOML file") from None
    if _nesting(text) > MAX_TOML_DEPTH:
        raise InputError(
            f"{path}: arrays or tables nested more than {MAX_TOML_DEPTH} deep; allowed: "
            "a flat TOML file"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply; allowed: a flat TOML file") from None


def _nesting(text: str) -> int:
    """An upper bound of the bracket nesting of a TOML text (brackets in strings count too)."""
    depth = most = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            most = max(most, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return most


_read_toml = read_toml


def resolve(name_or_path: str, *, pump: bool = False) -> Path:
    """A path, or the name of a file in the shipped ``firmware_profiles/`` (``.toml`` optional)."""
    if os.path.exists(name_or_path):
        return Path(name_or_path)
    base = profiles_dir() / ("pumps" if pump else "")
    stem = name_or_path[:-5] if name_or_path.endswith(".toml") else name_or_path
    cand = os.path.join(base, f"{stem}.toml")
    if "/" not in name_or_path and os.path.exists(cand):
        return Path(cand)
    shipped = sorted(q.stem for q in base.glob("*.toml") if not q.name.endswith(".sig.toml"))
    raise InputError(
        f"no {'pump profile' if pump else 'setting'} '{name_or_path}': not a file, "
        f"and the shipped ones are: {', '.join(shipped)}"
    )


def _fail(path: Path, exc: InputError) -> InputError:
    return InputError(f"{path}: {exc}")


def _check_drug(raw: dict[str, Any]) -> None:
    """Cross-checks that a per-key schema cannot express."""
    b, p, h, w = raw["build"], raw["patient"], raw["handling"], raw["watchdog"]
    if b["default_bag_ml"] not in b["bag_sizes_ml"]:
        raise InputError(
            f"key 'build.default_bag_ml' = {b['default_bag_ml']} is not one of "
            f"build.bag_sizes_ml {b['bag_sizes_ml']}"
        )
    if b["default_interval_h"] not in b["intervals_h"]:
        raise InputError(
            f"key 'build.default_interval_h' = {b['default_interval_h']} is not one of "
            f"build.intervals_h {b['intervals_h']}"
        )
    cmin = Decimal(str(b["concentration_min_mg_per_ml"]))
    cmax = Decimal(str(b["concentration_max_mg_per_ml"]))
    if cmin > cmax:
        raise InputError(
            f"key 'build.concentration_min_mg_per_ml' = {cmin} is above "
            f"build.concentration_max_mg_per_ml = {cmax}; allowed: min <= max"
        )
    syringe_mg = Decimal(str(raw["drug"]["syringe_mg"]))
    measure = raw["drug"].get("measure", "whole_syringes")
    if measure == "partial":
        if "dose_resolution_mg" not in raw["drug"]:
            raise InputError(
                "missing key 'drug.dose_resolution_mg' (needed by measure 'partial'); allowed: "
                + _DOSE_RESOLUTION.allowed()
            )
        syringe_mg = Decimal(str(raw["drug"]["dose_resolution_mg"]))
    over = b.get("overfill_ml")  # absent: no bag size has any overfill
    if over is not None and not isinstance(over, dict):
        raise InputError(
            f"key 'build.overfill_ml' = {over!r} has the wrong type; allowed: a table of "
            "bag size = overfill mL"
        )
    for key, value in (over or {}).items():
        if not key.isdigit() or int(key) not in b["bag_sizes_ml"]:
            raise InputError(
                f"key 'build.overfill_ml.{key}' is not one of build.bag_sizes_ml; allowed: "
                + ", ".join(str(x) for x in b["bag_sizes_ml"])
            )
        Num(0, 1000).check(value, f"build.overfill_ml.{key}")
    for bag in b["bag_sizes_ml"]:
        if over is not None and str(bag) not in over:
            raise InputError(
                f"missing key 'build.overfill_ml.{bag}'; allowed: {Num(0, 1000).allowed()} "
                "(the table has an entry for every bag size)"
            )
    for bag in b["bag_sizes_ml"]:
        k = max(1, -(-(cmin * bag) // syringe_mg))  # fewest syringes reaching cmin
        if k * syringe_mg / bag > cmax:
            raise InputError(
                f"key 'build.bag_sizes_ml' has {bag} mL, which cannot hold a whole number "
                f"of {syringe_mg} mg syringes within {cmin}-{cmax} mg/mL"
            )
    lo_h, hi_h = h["bag_change_interval_min_h"], h["bag_change_interval_max_h"]
    for iv in b["intervals_h"]:
        if not lo_h <= iv <= hi_h:
            raise InputError(
                f"key 'build.intervals_h' has {iv} h, outside handling.bag_change_interval "
                f"{lo_h}-{hi_h} h"
            )
    if not p["weight_min_kg"] < p["weight_max_kg"]:
        raise InputError(
            f"key 'patient.weight_min_kg' = {p['weight_min_kg']} is not below "
            f"patient.weight_max_kg = {p['weight_max_kg']}"
        )
    if not p["weight_min_kg"] <= p["reference_weight_kg"] <= p["weight_max_kg"]:
        raise InputError(
            f"key 'patient.reference_weight_kg' = {p['reference_weight_kg']} is outside "
            f"patient.weight_min_kg-weight_max_kg"
        )
    # Limits: at most one unit per level, both upper limits present, ordered.
    lim = raw["limits"]
    by_level: dict[str, tuple[str, Any]] = {}
    for key, value in lim.items():
        level = next(lv for lv in LIMIT_LEVELS if key.startswith(lv + "_"))
        if level in by_level:
            raise InputError(
                f"key 'limits.{key}' sets {level} a second time (also limits.{by_level[level][0]})"
                "; allowed: one unit per limit"
            )
        by_level[level] = (key, value)
    for needed in LIMIT_LEVELS:
        if needed not in by_level:
            raise InputError(
                f"missing key 'limits.{needed}_<unit>'; allowed units: {', '.join(LIMIT_UNITS)}"
            )
    ref = Decimal(str(p["reference_weight_kg"]))
    order = [lv for lv in LIMIT_LEVELS if lv in by_level]
    values = {
        lv: Limit(lv, Decimal(str(by_level[lv][1])), by_level[lv][0][len(lv) + 1 :]) for lv in order
    }
    for lower, upper in zip(order, order[1:], strict=False):
        a, c = values[lower], values[upper]
        same = a.unit == c.unit
        va = a.value if same else a.mg_per_day(ref)
        vc = c.value if same else c.mg_per_day(ref)
        if va >= vc:
            at = "" if same else f" (compared at the {ref} kg reference weight)"
            raise InputError(
                f"key 'limits.{by_level[lower][0]}' = {by_level[lower][1]} is not below "
                f"limits.{by_level[upper][0]} = {by_level[upper][1]}{at}; allowed: "
                "lower hard < lower soft < upper soft < upper hard"
            )
    # Hang-by rule: a bag requested at the pharmacy lead (at most the lead plus the longest
    # planned turnaround before the hang) must end its infusion inside its beyond-use time.
    bud_min = float(h["beyond_use_h"]) * 60.0
    iv_max = max(b["intervals_h"]) * 60.0
    if w["pharmacy_request_min"] + iv_max > bud_min:
        raise InputError(
            f"key 'watchdog.pharmacy_request_min' = {w['pharmacy_request_min']} plus the "
            f"longest bag ({iv_max / 60:g} h) exceeds handling.beyond_use_h = {bud_min / 60:g} h; "
            "allowed: a lead that keeps every bag inside its beyond-use time"
        )
    leads = ["pharmacy_request_min", "not_at_bedside_min", "prepare_change_min", "escalate_min"]
    for a_key, b_key in zip(leads, leads[1:], strict=False):
        if not w[a_key] > w[b_key]:
            raise InputError(
                f"key 'watchdog.{b_key}' = {w[b_key]} is not below watchdog.{a_key} = "
                f"{w[a_key]}; allowed: lead times that shrink toward the bag end"
            )


#: Validated files by (kind, path): the file's stamp (mtime, ctime, size, inode), its exact
#: content and the object. A campaign parses, validates and hashes each file once, not once
#: per run; a changed stamp re-reads the file, and only changed content is parsed again.
_LOADED: dict[tuple[str, str], tuple[tuple[int, int, int, int], bytes, Any]] = {}
_LOADED_MAX = 64
#: Shipped names already resolved: (kind, name) -> path.
_SHIPPED: dict[tuple[str, str], str] = {}


def _stat(path: str) -> os.stat_result | None:
    """The file's stat, or None where ``os.path.exists`` would say False."""
    try:
        return os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None


def _locate(kind: str, name: str) -> tuple[str, os.stat_result | None]:
    """The path ``resolve`` gives for ``name``, and its stat; a shipped name is looked up
    once (then one failed ``stat`` checks that no file of that name has appeared here)."""
    st = _stat(name)
    if st is not None:
        return name, st
    path_s = _SHIPPED.get((kind, name))
    if path_s is not None and (st := _stat(path_s)) is not None:
        return path_s, st
    path_s = str(resolve(name, pump=kind == "pump"))  # or the one-line refusal
    st = _stat(path_s)
    if st is not None:
        _SHIPPED[kind, name] = path_s
    return path_s, st


def _cached(kind: str, name: str, make: Callable[[dict[str, Any], Path], Any]) -> Any:
    """The validated object for the named file's current content (parsed once per content).

    ``name`` is a path or a shipped name (``resolve``); ``make(raw, path)`` builds the
    object. A name that is an existing file is its own path (as ``resolve`` would say), so
    the usual call costs one ``stat`` and no path objects.
    """
    path_s, st = _locate(kind, name)
    key = (kind, path_s)
    stamp = None if st is None else (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    hit = _LOADED.get(key)
    if hit is not None and stamp is not None and hit[0] == stamp:
        return hit[2]
    path = Path(path_s)
    data = _read_bytes(path)
    obj = hit[2] if hit is not None and hit[1] == data else make(_read_toml(path, data), path)
    if stamp is not None:
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.clear()
        _LOADED[key] = (stamp, data, obj)
    return obj


def load_setting(name_or_path: str | Path) -> DrugSetting:
    """Load and validate a drug setting; raise ``InputError`` naming file and key.

    The result is shared between calls for the same file content: treat it as read-only.
    """
    return _cached("setting", str(name_or_path), lambda raw, path: setting_from_raw(raw, str(path)))


def setting_from_raw(raw: Any, path: str) -> DrugSetting:
    """Validate parsed setting content (a file's, or the copy stored in the database)."""
    try:
        DRUG_SCHEMA.check(raw, "")
        _check_drug(raw)
    except InputError as exc:
        raise _fail(Path(path), exc) from None
    return DrugSetting(path, content_version(raw), raw)


def load_pump(name_or_path: str | Path) -> PumpModel:
    """Load and validate a pump model profile (shared per file content: read-only)."""
    return _cached("pump", str(name_or_path), _pump_from_raw)


def _pump_from_raw(raw: dict[str, Any], path: Path) -> PumpModel:
    try:
        PUMP_SCHEMA.check(raw, "")
        r = raw["rate"]
        if not r["min_ml_per_h"] < r["max_ml_per_h"]:
            raise InputError(
                f"key 'rate.min_ml_per_h' = {r['min_ml_per_h']} is not below rate.max_ml_per_h"
            )
        bat = raw["battery"]
        if bat["capacity_min"] and bat["low_warning_min"] >= bat["capacity_min"]:
            raise InputError(
                f"key 'battery.low_warning_min' = {bat['low_warning_min']} is not below "
                f"battery.capacity_min = {bat['capacity_min']}"
            )
        if raw["serial"]["protocol"] == "newera":
            for key in ("baud", "address", "syringe_diameter_mm", "safe_timeout_s"):
                if key not in raw["serial"]:
                    raise InputError(
                        f"missing key 'serial.{key}' (needed by protocol 'newera'); allowed: "
                        + _SERIAL.fields[key].allowed()
                    )
            if raw["serial"]["baud"] not in (300, 1200, 2400, 9600, 19200):
                raise InputError(
                    f"key 'serial.baud' = {raw['serial']['baud']} is not allowed; allowed: "
                    "300, 1200, 2400, 9600, 19200"
                )
    except InputError as exc:
        raise _fail(path, exc) from None
    a, res, occ = raw["accuracy"], raw["reservoir"], raw["occlusion"]
    return PumpModel(
        path=str(path),
        version=content_version(raw),
        name=raw["name"],
        model=raw["model"],
        limits=RateLimits(
            float(r["min_ml_per_h"]),
            float(r["max_ml_per_h"]),
            float(r["resolution_ml_per_h"]),
            float(r["max_vtbi_ml"]),
        ),
        stated_accuracy_pct=float(a["stated_pct"]),
        bias_pct=float(a["bias_pct"]),
        ripple_pct=float(a["ripple_pct"]),
        ripple_period_s=float(a["ripple_period_s"]),
        startup_tau_s=float(a["startup_tau_min"]) * 60.0,
        reservoir_change=res["change"],
        buffer_ml=float(res["buffer_ml"]),
        reservoir_capacity_ml=float(res["capacity_ml"]),
        prime_ml=float(raw["line"]["prime_ml"]),
        vtbi_action=raw["vtbi_complete"]["action"],
        kvo_ml_per_h=float(raw["vtbi_complete"]["kvo_ml_per_h"]),
        occlusion_time_to_alarm_s=float(occ["time_to_alarm_s"]),
        bolus_after_release_ml=float(occ["bolus_after_release_ml"]),
        air_detect_ul=float(raw["air"]["detect_ul"]),
        battery_capacity_min=float(bat["capacity_min"]),
        battery_low_min=float(bat["low_warning_min"]),
        serial=dict(raw["serial"]),
    )


def programmable_vtbi_ml(
    content_ml: float, prime_ml: float, stated_pct: float, step_ml: float
) -> float:
    """The most a pump may be told to infuse from a bag holding ``content_ml``: what is left
    after priming the line (``prime_ml``: the first bag of a line; 0 for the others), at
    the pump's worst stated over-delivery (``stated_pct``, e.g. 5 for +/-5 %), rounded down
    to the pump's step. Zero or less: the bag cannot start the line."""
    usable = (content_ml - prime_ml) / (1.0 + stated_pct / 100.0)
    return math.floor(usable / step_ml + 1e-9) * step_ml


def smallest_content_ml(setting: DrugSetting, bag_ml: int) -> Decimal:
    """The least a bag of this size can hold: the bag, its overfill and the fewest dose
    steps (syringes, or measured ``dose_resolution_mg``) that reach the lowest concentration."""
    step = setting.dose_resolution_mg
    k = max(Decimal(1), -(-(setting.conc_min_mg_per_ml * bag_ml) // step))
    drug_ml = k * step / setting.syringe_mg * setting.syringe_ml
    return Decimal(bag_ml) + setting.overfill_ml(bag_ml) + drug_ml


def check_fits(setting: DrugSetting, model: PumpModel) -> None:
    """Every bag of the setting (with overfill and drug) must fit the pump's reservoir, and
    even its smallest content must prime the pump's line and leave a volume to infuse."""
    step = model.limits.resolution_ml_per_h
    fits = (  # all the check depends on
        "fits_pump",
        model.reservoir_capacity_ml,
        model.prime_ml,
        model.stated_accuracy_pct,
        step,
    )
    if setting.memo.get(fits):
        return
    for bag in setting.bag_sizes_ml:
        least = smallest_content_ml(setting, bag)
        if programmable_vtbi_ml(float(least), model.prime_ml, model.stated_accuracy_pct, step) <= 0:
            need = model.prime_ml + step * (1.0 + model.stated_accuracy_pct / 100.0)
            raise InputError(
                f"{setting.path}: a {bag} mL bag may hold only {least.normalize():f} mL, which "
                f"cannot prime the {model.prime_ml:g} mL line of pump '{model.name}' "
                f"({model.path}) and leave a volume to infuse at its +/-"
                f"{model.stated_accuracy_pct:g} % accuracy; allowed: bag sizes that always "
                f"hold at least {need:g} mL"
            )
        most_mg = setting.conc_max_mg_per_ml * bag
        drug_ml = most_mg / setting.syringe_mg * setting.syringe_ml
        full = Decimal(bag) + setting.overfill_ml(bag) + drug_ml
        if full > Decimal(str(model.reservoir_capacity_ml)):
            raise InputError(
                f"{setting.path}: a {bag} mL bag holds up to {full.normalize():f} mL, more than "
                f"the {model.reservoir_capacity_ml:g} mL reservoir of pump '{model.name}' "
                f"({model.path}); allowed: bag sizes that fit the reservoir"
            )
    setting.memo[fits] = True


def load_any(path: str | Path) -> DrugSetting | PumpModel:
    """Load a file as a drug setting or a pump profile, by its ``kind``."""
    p = Path(path)
    raw = _read_toml(p)
    kind = raw.get("kind")
    if kind == "pump_model":
        return load_pump(p)
    if kind == "drug_setting":
        return load_setting(p)
    if "kind" not in raw:
        raise InputError(f"{p}: missing key 'kind'; allowed: 'drug_setting' or 'pump_model'")
    raise InputError(
        f"{p}: key 'kind' = {kind!r} is not allowed; allowed: 'drug_setting' or 'pump_model'"
    )
