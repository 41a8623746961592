"""The bag plan and the bag ledger.

A ``Recipe`` is what the pharmacy build makes of one order: the bag every request
compounds until the order changes. A ``Bag`` is one physical bag from its request to its
end, with its recipe, its compounding and hang-by times and what became of it. The ledger
changes only by applying logged events (``pumpctl.events.apply``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pumpctl.order import Build


class BagStatus(enum.StrEnum):
    """Where a bag is in its life."""

    REQUESTED = "requested"
    COMPOUNDED = "compounded"
    DELIVERED = "delivered"  # at the bedside
    HUNG = "hung"
    ENDED = "ended"
    DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class Recipe:
    """One bag as the pharmacy build makes it (real figures, floats for the fast path)."""

    plan: int  # which order (program or titration) it belongs to
    mg: float
    bag_ml: int
    content_ml: float  # diluent + overfill + drug volume
    conc_mg_per_ml: float  # real concentration
    vtbi_ml: float  # programmed volume to be infused (the diluent volume)
    rate_ml_per_h: float  # the protocol's standard rate for this bag
    interval_h: int
    achieved_mg_per_day: float  # what really infuses per day at the standard rate
    nominal_mg_per_day: float

    @property
    def dose_mg_per_h(self) -> float:
        """Real dose rate at the standard rate."""
        return self.rate_ml_per_h * self.conc_mg_per_ml

    def to_json(self) -> dict[str, Any]:
        """Plain dict (the event detail form; the fields are plain numbers, no deep copy)."""
        return {  # written out: every bag request logs one (a test checks every field, in order)
            "plan": self.plan,
            "mg": self.mg,
            "bag_ml": self.bag_ml,
            "content_ml": self.content_ml,
            "conc_mg_per_ml": self.conc_mg_per_ml,
            "vtbi_ml": self.vtbi_ml,
            "rate_ml_per_h": self.rate_ml_per_h,
            "interval_h": self.interval_h,
            "achieved_mg_per_day": self.achieved_mg_per_day,
            "nominal_mg_per_day": self.nominal_mg_per_day,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Recipe:
        """Back from an event detail."""
        return cls(
            plan=int(d["plan"]),
            mg=float(d["mg"]),
            bag_ml=int(d["bag_ml"]),
            content_ml=float(d["content_ml"]),
            conc_mg_per_ml=float(d["conc_mg_per_ml"]),
            vtbi_ml=float(d["vtbi_ml"]),
            rate_ml_per_h=float(d["rate_ml_per_h"]),
            interval_h=int(d["interval_h"]),
            achieved_mg_per_day=float(d["achieved_mg_per_day"]),
            nominal_mg_per_day=float(d["nominal_mg_per_day"]),
        )

    @classmethod
    def from_build(cls, plan: int, b: Build) -> Recipe:
        """The recipe of a pharmacy build."""
        return cls(
            plan=plan,
            mg=float(b.mg_per_bag),
            bag_ml=b.bag_ml,
            content_ml=float(b.final_volume_ml),
            conc_mg_per_ml=float(b.real_concentration_mg_per_ml),
            vtbi_ml=float(b.vtbi_ml),
            rate_ml_per_h=float(b.rate_ml_per_h),
            interval_h=b.interval_h,
            achieved_mg_per_day=float(b.achieved_mg_per_day),
            nominal_mg_per_day=float(b.nominal_mg_per_day),
        )


@dataclass(slots=True)
class Bag:
    """One bag from pharmacy request to its end."""

    n: int
    recipe: Recipe
    requested_s: float
    stat: bool = False
    needed_by_s: float | None = None
    compounded_s: float | None = None
    hang_by_s: float | None = None
    delivered_s: float | None = None
    hung_s: float | None = None
    ended_s: float | None = None
    discarded_s: float | None = None
    released_by: str | None = None  # pharmacist who released it past its hang-by time
    vtbi_ml: float | None = None  # programmed at the hang (the first bag loses the prime)
    rate_ml_per_h: float | None = None  # rate it runs at now
    light_protected: bool = False
    wasted_mg: float = 0.0

    @property
    def status(self) -> BagStatus:
        """Requested, compounded, delivered (at the bedside), hung, ended or discarded."""
        if self.discarded_s is not None:
            return BagStatus.DISCARDED
        if self.ended_s is not None:
            return BagStatus.ENDED
        if self.hung_s is not None:
            return BagStatus.HUNG
        if self.delivered_s is not None:
            return BagStatus.DELIVERED
        if self.compounded_s is not None:
            return BagStatus.COMPOUNDED
        return BagStatus.REQUESTED

    # Convenience views used by the screen, staff and reports.
    @property
    def mg(self) -> float:
        return self.recipe.mg

    @property
    def bag_ml(self) -> int:
        return self.recipe.bag_ml

    @property
    def content_ml(self) -> float:
        return self.recipe.content_ml

    @property
    def real_conc_mg_per_ml(self) -> float:
        return self.recipe.conc_mg_per_ml

    def to_json(self) -> dict[str, Any]:
        """Plain dict (the recipe's figures also at the top level, for screens)."""
        d = {f: getattr(self, f) for f in _BAG_FIELDS}
        r = self.recipe
        d["recipe"] = r.to_json()
        d.update(
            status=self.status.value,
            mg=r.mg,
            bag_ml=r.bag_ml,
            content_ml=r.content_ml,
            conc_mg_per_ml=r.conc_mg_per_ml,
            rate_ml_per_h=r.rate_ml_per_h if self.rate_ml_per_h is None else self.rate_ml_per_h,
            vtbi_ml=r.vtbi_ml if self.vtbi_ml is None else self.vtbi_ml,
        )
        return d


_BAG_FIELDS = tuple(f.name for f in fields(Bag))
