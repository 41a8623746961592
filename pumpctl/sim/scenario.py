"""QA scenario files (TOML): strict loading, distributions, per-run sampling.

A number may be a distribution for campaigns, e.g. ``{dist = "lognormal", median = 5,
p95 = 20}``; ``uniform`` (min, max), ``normal`` (mean, sd) and ``triangular`` (min, mode,
max) are also accepted. Each draw is clipped at zero (times cannot be negative).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pumpctl.errors import InputError
from pumpctl.events import GapCause
from pumpctl.setting import Anything, Bool, Num, Spec, Str, Table, read_toml

FAULT_KINDS = (
    "occlusion",
    "air_in_line",
    "pharmacy_late",
    "nurse_absent",
    "power_loss",
    "comm_loss",
)
_Z95 = 1.6448536269514722
#: The simulated nurse finishes a bag change this long before the bag's end: before the
#: watchdog's T-10 escalation, which fires whenever the change has not started.
DEFAULT_HANG_LEAD_S = 720.0
#: Staff times used when the whole table is left out of a scenario (docs/scenarios.md).
#: A table that is given must state its required keys: no silent default inside it.
STAFF_DEFAULTS: dict[str, dict[str, float]] = {
    "pharmacy": {"compound_min": 10, "deliver_min": 15},
    "nurse": {"response_min": 2, "swap_s": 60, "prime_min": 2, "hang_lead_s": DEFAULT_HANG_LEAD_S},
}
#: Distributions whose draws stay within [min, max]: the only ones a fault's time may use.
BOUNDED_DISTS = ("uniform", "triangular")
#: Causes an interruption can have in a report.
GAP_CAUSES = tuple(c.value for c in GapCause)


@dataclass(frozen=True)
class Dist:
    """A number or a distribution of numbers."""

    kind: str  # fixed, lognormal, uniform, normal, triangular
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0

    def sample(self, rng: random.Random) -> float:
        """One draw (the fixed value itself for ``fixed``)."""
        k = self.kind
        if k == "fixed":
            return self.a
        if k == "lognormal":  # a = median, b = p95
            sigma = math.log(self.b / self.a) / _Z95
            return rng.lognormvariate(math.log(self.a), sigma)
        if k == "uniform":
            return rng.uniform(self.a, self.b)
        if k == "normal":
            return max(rng.gauss(self.a, self.b), 0.0)
        return rng.triangular(self.a, self.c, self.b)  # a = min, b = max, c = mode

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def to_json(self) -> Any:
        """The value, or a dict describing the distribution."""
        if self.kind == "fixed":
            return self.a
        names = {
            "lognormal": ("median", "p95"),
            "uniform": ("min", "max"),
            "normal": ("mean", "sd"),
            "triangular": ("min", "max", "mode"),
        }[self.kind]
        return {"dist": self.kind, **dict(zip(names, (self.a, self.b, self.c), strict=False))}


class DistSpec(Spec):
    """A number in [lo, hi], or a distribution table whose parameters lie in [lo, hi]."""

    def __init__(self, lo: float, hi: float, *, required: bool = True) -> None:
        self.num = Num(lo, hi)
        self.required = required
        self.lo, self.hi = lo, hi

    def allowed(self) -> str:
        return f"{self.num.allowed()}, or a distribution table"

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            self.num.check(value, where)
            return value
        kind = value.get("dist")
        params = {
            "lognormal": ("median", "p95"),
            "uniform": ("min", "max"),
            "normal": ("mean", "sd"),
            "triangular": ("min", "mode", "max"),
        }
        if not isinstance(kind, str) or kind not in params:
            raise InputError(
                f"{where}.dist = {kind!r} is not allowed; allowed: "
                + ", ".join(repr(k) for k in params)
            )
        Table({"dist": Str(tuple(params)), **{p: self.num for p in params[kind]}}).check(
            value, where
        )
        if kind == "lognormal" and not 0 < value["median"] < value["p95"]:
            raise InputError(f"{where}: lognormal needs 0 < median < p95, got {value}")
        if kind == "uniform" and not value["min"] <= value["max"]:
            raise InputError(f"{where}: uniform needs min <= max, got {value}")
        if kind == "triangular" and not value["min"] <= value["mode"] <= value["max"]:
            raise InputError(f"{where}: triangular needs min <= mode <= max, got {value}")
        return value


class StaffTable(Table):
    """A staff table: optional as a whole (the defaults apply), but once given, its
    required keys must be there; the missing-key line says so and what is allowed."""

    def __init__(self, name: str, fields: dict[str, Spec]) -> None:
        super().__init__(fields, required=False)
        self.name = name

    def check(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            for key, spec in self.fields.items():
                if spec.required and key not in value:
                    need = [k for k, f in self.fields.items() if f.required]
                    defaults = STAFF_DEFAULTS.get(self.name)
                    absent = (
                        f"without [{self.name}] the defaults apply: "
                        + ", ".join(f"{k} {defaults[k]:g}" for k in need)
                        if defaults
                        else f"without [{self.name}] there is no {self.name.replace('_', ' ')}"
                    )
                    raise InputError(
                        f"missing key '{where}.{key}'; allowed: {spec.allowed()} "
                        f"({' and '.join(need)} {'are' if len(need) > 1 else 'is'} required "
                        f"when [{self.name}] is given; {absent})"
                    )
        return super().check(value, where)


def to_dist(value: Any) -> Dist:
    """A checked TOML value as a ``Dist``."""
    if not isinstance(value, dict):
        return Dist("fixed", float(value))
    k = value["dist"]
    if k == "lognormal":
        return Dist(k, float(value["median"]), float(value["p95"]))
    if k == "uniform":
        return Dist(k, float(value["min"]), float(value["max"]))
    if k == "normal":
        return Dist(k, float(value["mean"]), float(value["sd"]))
    return Dist(k, float(value["min"]), float(value["max"]), float(value["mode"]))


SCENARIO_SCHEMA = Table(
    {
        "scenario": Table(
            {
                "name": Str(required=False),
                "description": Str(required=False),
                "duration_h": Num(0, 24 * 30, lo_open=True),
                "seed": Num(0, 2**63 - 1, integer=True),
                "setting": Str(),
                "pump": Str(),
                "relay": Bool(required=False),
            }
        ),
        "patient": Table({"weight_kg": Num(0, 1000, lo_open=True)}),
        "order": Table(
            {
                "dose_mg_per_day": Num(0, 1e6, lo_open=True),
                "bag_ml": Num(1, 5000, integer=True, required=False),
                "interval_h": Num(1, 24, integer=True, required=False),
                "override_reason": Str(required=False),
                "confirm_deviation": Str(required=False),
                "operator": Str(required=False),
            }
        ),
        "titrations": Anything(required=False),  # checked item by item below
        "pharmacy": StaffTable(
            "pharmacy",
            {"compound_min": DistSpec(0, 24 * 60), "deliver_min": DistSpec(0, 24 * 60)},
        ),
        "nurse": StaffTable(
            "nurse",
            {
                "response_min": DistSpec(0, 24 * 60),
                "swap_s": DistSpec(0, 3600),
                "prime_min": DistSpec(0, 120, required=False),
                "hang_lead_s": Num(0, 3600, required=False),
            },
        ),
        "charge_nurse": StaffTable("charge_nurse", {"response_min": DistSpec(0, 24 * 60)}),
        "faults": Anything(required=False),
        "expect": Table(
            {
                "max_interrupted_s": Num(0, 1e9, required=False),
                "dose_tolerance_pct": Num(0, 100, required=False),
                "alarms": Anything(required=False),
                "no_alarms": Anything(required=False),
                "causes": Anything(required=False),
                "bags": Num(0, 10000, integer=True, required=False),
                "min_interruptions": Num(0, 10000, integer=True, required=False),
                "max_start_h": Num(0, 24 * 30, required=False),
            },
            required=False,
        ),
    }
)

_TITRATION = Table(
    {
        "at_h": Num(0, 24 * 30),
        "dose_mg_per_day": Num(0, 1e6, lo_open=True),
        "bag_ml": Num(1, 5000, integer=True, required=False),
        "override_reason": Str(required=False),
        "confirm_deviation": Str(required=False),
        "operator": Str(required=False),
    }
)
_FAULT = Table(
    {
        "at_h": DistSpec(0, 24 * 30),
        "kind": Str(FAULT_KINDS),
        "duration_min": DistSpec(0, 24 * 60 * 30),
    }
)


@dataclass(frozen=True)
class Titration:
    """A dose change at ``at_h``."""

    at_h: float
    dose_mg_per_day: float
    bag_ml: int | None = None
    override_reason: str | None = None
    operator: str | None = None
    confirm_deviation: str | None = None


@dataclass(frozen=True)
class Fault:
    """A fault at ``at_h`` lasting ``duration_min`` (either may be a distribution)."""

    kind: str
    at_h: Dist
    duration_min: Dist


@dataclass(frozen=True)
class Scenario:
    """A validated QA scenario."""

    path: str
    name: str
    duration_h: float
    seed: int
    setting: str
    pump: str
    weight_kg: float
    dose_mg_per_day: float
    bag_ml: int | None
    interval_h: int | None
    override_reason: str | None
    operator: str | None
    titrations: tuple[Titration, ...]
    compound_min: Dist
    deliver_min: Dist
    response_min: Dist
    swap_s: Dist
    prime_min: Dist
    hang_lead_s: float
    faults: tuple[Fault, ...]
    max_interrupted_s: float
    dose_tolerance_pct: float
    expect_alarms: tuple[str, ...]
    expect_no_alarms: tuple[str, ...]
    expect_causes: tuple[str, ...]
    expect_bags: int | None
    expect_min_interruptions: int | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    confirm_deviation: str | None = None
    charge_response_min: Dist | None = None
    relay: bool = False
    expect_max_start_h: float | None = None

    @property
    def has_distributions(self) -> bool:
        """True when a campaign would draw different values run to run."""
        dists = [
            self.compound_min,
            self.deliver_min,
            self.response_min,
            self.swap_s,
            self.prime_min,
        ]
        dists += [f.at_h for f in self.faults] + [f.duration_min for f in self.faults]
        return any(not d.is_fixed for d in dists)

    def resolve_path(self, value: str) -> str:
        """A setting/pump reference: a shipped name, or a path relative to the scenario."""
        if not ("/" in value or value.endswith(".toml")):
            return value  # a shipped name (the usual case: no path objects)
        p = Path(value)
        if not p.is_absolute():
            rel = Path(self.path).parent / p
            if rel.exists():
                return str(rel)
        return value


def _list_of(value: Any, where: str, spec: Table) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InputError(f"{where} = {value!r} has the wrong type; allowed: [[{where}]] tables")
    for i, item in enumerate(value):
        spec.check(item, f"{where}[{i}]")
    return value


def examples_dir() -> Path | None:
    """The example scenarios shipped with pumpctl (package copy or source tree), if any."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg / "examples", pkg.parent / "examples"):
        if cand.is_dir():
            return cand
    return None


def shipped_examples() -> list[str]:
    """Names of the shipped example scenarios, runnable as ``pumpctl simulate NAME``."""
    where = examples_dir()
    return [] if where is None else sorted(q.stem for q in where.glob("*.toml"))


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A scenario file: a path that exists, or the name of a shipped example (``.toml``
    optional); otherwise one line naming the shipped examples."""
    p = Path(name_or_path)
    if p.exists():
        return p
    text = str(name_or_path)
    where = examples_dir()
    if where is not None and "/" not in text and "\\" not in text:
        cand = where / f"{text.removesuffix('.toml')}.toml"
        if cand.is_file():
            return cand
    raise InputError(
        f"{p}: no such file, and not the name of a shipped example; shipped: "
        + (", ".join(shipped_examples()) or "none")
    )


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario; every error names the file, key, value and what is allowed.

    ``path`` may also be the bare name of a shipped example, e.g. ``anakinra_72h``.
    """
    p = resolve_scenario(path)
    raw = read_toml(p)  # a directory, symlink loop, bad bytes or deep nesting: one line
    return scenario_from_raw(raw, p)


def scenario_from_raw(raw: dict[str, Any], path: str | Path) -> Scenario:
    """Validate a parsed scenario table (e.g. a file's, modified for a sweep) into a Scenario.

    ``path`` names the scenario in errors and anchors relative setting/pump paths.
    """
    from pumpctl.alarms import KINDS

    p = Path(path)
    try:
        SCENARIO_SCHEMA.check(raw, "")
        titrations = _list_of(raw.get("titrations", []), "titrations", _TITRATION)
        faults = _list_of(raw.get("faults", []), "faults", _FAULT)
        exp = raw.get("expect", {})
        lists: dict[str, tuple[str, ...]] = {}
        for key, allowed in (("alarms", KINDS), ("no_alarms", KINDS), ("causes", GAP_CAUSES)):
            kinds = exp.get(key, [])
            if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
                raise InputError(
                    f"key 'expect.{key}' = {kinds!r} has the wrong type; allowed: a list of "
                    f"names from {', '.join(allowed)}"
                )
            for i, k in enumerate(kinds):
                if k not in allowed:
                    raise InputError(
                        f"key 'expect.{key}[{i}]' = {k!r} is not allowed; allowed: "
                        + ", ".join(allowed)
                    )
            lists[key] = tuple(kinds)
        dur = raw["scenario"]["duration_h"]
        for i, t in enumerate(titrations):
            if t["at_h"] > dur:
                raise InputError(
                    f"key 'titrations[{i}].at_h' = {t['at_h']} is after the end of the "
                    f"scenario; allowed: 0-{dur} h"
                )
        for i, f in enumerate(faults):
            at = f["at_h"]
            if not isinstance(at, dict):
                if at > dur:
                    raise InputError(
                        f"key 'faults[{i}].at_h' = {at} is after the end of the scenario; "
                        f"allowed: 0-{dur} h"
                    )
            elif at["dist"] not in BOUNDED_DISTS:
                # A normal or lognormal draw has no upper bound: it could fall past the end.
                raise InputError(
                    f"key 'faults[{i}].at_h.dist' = {at['dist']!r} is not allowed for a "
                    f"fault's time (its draws have no upper bound); allowed: a number 0-{dur}, "
                    "or a uniform or triangular distribution within the scenario"
                )
            elif at["max"] > dur:
                raise InputError(
                    f"key 'faults[{i}].at_h.max' = {at['max']} is after the end of the "
                    f"scenario; allowed: 0-{dur} h (a draw may be the max)"
                )
        max_start = exp.get("max_start_h")
        if max_start is not None and max_start > dur:
            raise InputError(
                f"key 'expect.max_start_h' = {max_start} is after the end of the scenario; "
                f"allowed: 0-{dur} h"
            )
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None
    sc, ph, nu = raw["scenario"], raw.get("pharmacy", {}), raw.get("nurse", {})
    o = raw["order"]
    pd, nd = STAFF_DEFAULTS["pharmacy"], STAFF_DEFAULTS["nurse"]
    return Scenario(
        path=str(p),
        name=sc.get("name", p.stem),
        duration_h=float(sc["duration_h"]),
        seed=int(sc["seed"]),
        setting=sc["setting"],
        pump=sc["pump"],
        weight_kg=float(raw["patient"]["weight_kg"]),
        dose_mg_per_day=float(o["dose_mg_per_day"]),
        bag_ml=o.get("bag_ml"),
        interval_h=o.get("interval_h"),
        override_reason=o.get("override_reason"),
        operator=o.get("operator"),
        titrations=tuple(
            Titration(
                float(t["at_h"]),
                float(t["dose_mg_per_day"]),
                t.get("bag_ml"),
                t.get("override_reason"),
                t.get("operator"),
                t.get("confirm_deviation"),
            )
            for t in titrations
        ),
        compound_min=to_dist(ph.get("compound_min", pd["compound_min"])),
        deliver_min=to_dist(ph.get("deliver_min", pd["deliver_min"])),
        response_min=to_dist(nu.get("response_min", nd["response_min"])),
        swap_s=to_dist(nu.get("swap_s", nd["swap_s"])),
        prime_min=to_dist(nu.get("prime_min", nd["prime_min"])),
        hang_lead_s=float(nu.get("hang_lead_s", nd["hang_lead_s"])),
        faults=tuple(
            Fault(f["kind"], to_dist(f["at_h"]), to_dist(f["duration_min"])) for f in faults
        ),
        max_interrupted_s=float(exp.get("max_interrupted_s", 0)),
        dose_tolerance_pct=float(exp.get("dose_tolerance_pct", 5)),
        expect_alarms=lists["alarms"],
        expect_no_alarms=lists["no_alarms"],
        expect_causes=lists["causes"],
        expect_bags=exp.get("bags"),
        expect_min_interruptions=exp.get("min_interruptions"),
        raw=raw,
        confirm_deviation=o.get("confirm_deviation"),
        charge_response_min=None
        if "charge_nurse" not in raw
        else to_dist(raw["charge_nurse"]["response_min"]),
        relay=bool(sc.get("relay", False)),
        expect_max_start_h=None if max_start is None else float(max_start),
    )


def _parse_index(part: str, where: str) -> int:
    if not part.isdigit():
        raise InputError(f"key '{where}': {part!r} is not a list index; allowed: 0, 1, ...")
    return int(part)


def with_values(sc: Scenario, values: dict[str, Any]) -> Scenario:
    """A copy of ``sc`` with dotted keys set (``nurse.response_min``, ``faults.0.at_h``).

    For sweeps: the raw table is copied, changed and validated again, so a swept value
    gets the same checks as one written in the file. Unknown keys are errors.
    """
    raw = copy.deepcopy(sc.raw)
    for key, value in values.items():
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise InputError(
                f"sweep key {key!r} is not allowed; allowed: a dotted scenario key such as "
                "nurse.response_min, order.dose_mg_per_day or faults.0.duration_min"
            )
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                idx = _parse_index(part, where)
                if idx >= len(node):
                    raise InputError(
                        f"key '{where}': the scenario has {len(node)} entries; "
                        f"allowed: 0-{len(node) - 1}"
                    )
                node = node[idx]
            elif isinstance(node, dict):
                if part not in node:
                    if part in ("faults", "titrations"):
                        raise InputError(f"key '{where}': the scenario has no [[{part}]]")
                    node[part] = {}
                node = node[part]
            else:
                raise InputError(f"key '{where}' is a value, not a table")
        last = parts[-1]
        if isinstance(node, list):
            raise InputError(f"sweep key {key!r} names a list, not a value")
        if not isinstance(node, dict):
            raise InputError(f"key '{'.'.join(parts[:-1])}' is a value, not a table")
        node[last] = value
    return scenario_from_raw(raw, sc.path)
