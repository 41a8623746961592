"""Reports made from events: the result JSON, Markdown and plots of any pumpctl log.

A simulated run and a ``pumpctl run`` on a real pump leave the same kinds of events, so
one function turns either into a report. A simulation also logs what reached the patient
(``delivery_segment`` events from the pump physics) and how it was set up (``run_end``):
interruptions then come from the physics (an occlusion counts from the moment the line
closed, not from the alarm). Without segments (a real pump) they come from the
controller's ``gap_start``/``gap_end`` events.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pumpctl.errors import InputError
from pumpctl.events import ChannelState, EventKind, EventLike, fold

SCHEMA_VERSION = 2
PRIORITY_COLOURS = {"high": "#d62728", "medium": "#e6b800", "low": "#17becf"}
_PHYSICS_CAUSE = {
    "vtbi_complete": "bag_empty",
    "stall": "pump_failure",
    "reset": "power_loss",
    "safe_timeout": "pump_failure",
}
# The members as plain attributes: in Python 3.11 every ``EventKind.X`` goes through the
# enum metaclass's ``__getattr__`` hook (~0.25 us), and the report scans every event.
E = SimpleNamespace(**{k.name: k for k in EventKind})


def _h(t_s: float) -> float:
    return round(t_s / 3600.0, 6)


def _segments(events: Sequence[EventLike]) -> list[dict[str, Any]]:
    return [dict(e.detail) for e in events if e.event == E.DELIVERY_SEGMENT]


def _seg_cause(seg: dict[str, Any]) -> str | None:
    if seg.get("occluded"):
        return "occlusion"
    mode = seg["mode"]
    if mode == "running":
        return None
    if mode == "kvo":
        return "bag_empty"
    cause = seg.get("cause") or "stopped"
    return _PHYSICS_CAUSE.get(cause, cause)


def interruptions(
    events: Sequence[EventLike],
    s: ChannelState,
    start_s: float | None,
    end_s: float,
    segs: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Gaps in delivery after the start, with their causes (physics when logged).

    ``segs`` are the log's delivery segments when the caller has already picked them out.
    """
    if start_s is None:
        return [{"start_s": 0.0, "end_s": end_s, "cause": "never_started"}]
    if segs is None:
        segs = _segments(events)
    gaps: list[dict[str, Any]] = []
    if not segs:  # a real pump: the controller's measured gaps
        for g in s.gaps:
            g_end = g.end_s if g.end_s is not None else end_s
            if g_end > start_s:
                gaps.append({"start_s": max(g.start_s, start_s), "end_s": g_end, "cause": g.cause})
        return gaps
    if len({g.get("pump", "A") for g in segs}) > 1:
        return _relay_gaps(segs, s, start_s, end_s)
    for seg in segs:
        if seg["end_s"] <= start_s:
            continue
        cause = _seg_cause(seg)
        if cause is None:
            continue
        if cause == "stopped":  # ask the controller why it stopped the pump
            for g in s.gaps:
                g_end = g.end_s if g.end_s is not None else end_s
                if g.start_s <= seg["start_s"] + 1e-6 and g_end >= seg["start_s"]:
                    cause = g.cause
                    break
        start = max(seg["start_s"], start_s)
        if gaps and abs(gaps[-1]["end_s"] - start) < 1e-6:
            gaps[-1]["end_s"] = seg["end_s"]
        else:
            gaps.append({"start_s": start, "end_s": seg["end_s"], "cause": cause})
    return gaps


def _relay_gaps(
    segs: list[dict[str, Any]], s: ChannelState, start_s: float, end_s: float
) -> list[dict[str, Any]]:
    """Gaps when no pump of a relay delivers: flow is the union of both pumps' flow."""
    by_pump: dict[str, list[dict[str, Any]]] = {}
    for g in segs:
        by_pump.setdefault(g.get("pump", "A"), []).append(g)
    edges = sorted({x for g in segs for x in (g["start_s"], g["end_s"])} | {start_s, end_s})
    gaps: list[dict[str, Any]] = []
    last_on: str | None = None
    idx = dict.fromkeys(by_pump, 0)
    for a, b in zip(edges, edges[1:], strict=False):
        if b <= start_s or a >= end_s or b - a < 1e-6:  # float noise at a hand-over
            continue
        mid = (a + b) / 2
        now: dict[str, dict[str, Any] | None] = {}
        for name, lst in by_pump.items():
            i = idx[name]
            while i < len(lst) and lst[i]["end_s"] <= mid:
                i += 1
            idx[name] = i
            seg = lst[i] if i < len(lst) and lst[i]["start_s"] <= mid else None
            now[name] = seg
        on = [n for n, g in now.items() if g is not None and _seg_cause(g) is None]
        if on:
            last_on = on[0]
            continue
        seg = now.get(last_on or "") if last_on else None
        cause = (_seg_cause(seg) if seg is not None else None) or "stopped"
        lo = max(a, start_s)
        if gaps and abs(gaps[-1]["end_s"] - lo) < 1e-6 and gaps[-1]["cause"] == cause:
            gaps[-1]["end_s"] = b
        else:
            gaps.append({"start_s": lo, "end_s": b, "cause": cause})
    return gaps


def _dose_timeline(events: Sequence[EventLike]) -> list[tuple[float, float, float]]:
    """(time, ordered mg/day, planned real mg/day) at the program and every titration."""
    out: list[tuple[float, float, float]] = []
    for e in events:
        if e.event in (E.PROGRAM, E.TITRATION):
            d = e.detail
            out.append(
                (
                    e.t_s,
                    float(d["order"]["dose_mg_per_day"]),
                    float(d["recipe"]["achieved_mg_per_day"]),
                )
            )
    return out


def _integrate(timeline: list[tuple[float, float, float]], col: int, t0: float, t1: float) -> float:
    """mg over [t0, t1] of the dose in column ``col`` of the timeline."""
    total = 0.0
    for i, row in enumerate(timeline):
        a = max(row[0], t0)
        b = timeline[i + 1][0] if i + 1 < len(timeline) else t1
        b = min(b, t1)
        if i == 0:
            a = t0
        if b > a:
            total += row[col] * (b - a) / 86400.0
    return total


def build_result(
    events: Sequence[EventLike],
    *,
    end_s: float | None = None,
    state: ChannelState | None = None,
) -> dict[str, Any]:
    """The report JSON of a log: interruptions, dose, bags, alarms, waste and a verdict.

    ``state`` is ``fold(events)`` when the caller already has it (a simulation's live
    controller built it by applying exactly these events), to save a second fold.
    """
    if not events:
        raise InputError("the event log is empty; allowed: a log with a programmed infusion")
    s = fold(events) if state is None else state
    meta: dict[str, Any] = {}
    last_t = 0.0
    start_s: float | None = None
    prime_ml: float | None = None
    first: dict[str, Any] | None = None  # the first program's detail
    segs: list[dict[str, Any]] = []  # delivery segments (read, never changed)
    doses: list[EventLike] = []  # the program and the titrations
    install: str | None = None  # the active setting: installed, or accepted at the pump
    run_end, segment, state_kind, program = E.RUN_END, E.DELIVERY_SEGMENT, E.STATE, E.PROGRAM
    titration, setting_install, setting_accept = E.TITRATION, E.SETTING_INSTALL, E.SETTING_ACCEPT
    read = {state_kind, run_end, program, titration, setting_install, setting_accept}
    for e in events:  # one pass for what is read off single events
        kind = e.event
        if kind == segment:
            segs.append(e.detail)
            continue
        if e.t_s > last_t:
            last_t = e.t_s
        if kind not in read:
            continue  # most events: only their time counts here
        if kind == state_kind:
            trigger = e.detail.get("trigger")
            if trigger == "start" and start_s is None:
                start_s = e.t_s
            elif trigger == "primed" and prime_ml is None:
                prime_ml = float(e.detail.get("prime_ml", 0.0))
        elif kind == run_end:
            meta = dict(e.detail)
        elif kind in (program, titration):
            doses.append(e)
            if kind == program and first is None:
                first = e.detail
        elif kind == setting_accept or not e.detail.get("pending"):  # (pending: not yet)
            install = e.detail.get("version")
    if meta.get("controller_stopped"):  # a live run: it went on until its last event
        end = max(float(meta["end_s"]), last_t)
    else:
        end = float(meta.get("end_s", end_s if end_s is not None else last_t))
    gaps = interruptions(events, s, start_s, end, segs)
    interrupted_s = sum(g["end_s"] - g["start_s"] for g in gaps)
    timeline = _dose_timeline(doses)
    if segs:
        delivered = sum(float(g["drug_mg"]) for g in segs)
        delivered_ml = sum(float(g["actual_ml"]) for g in segs)
    else:  # a real pump: programmed rate x real concentration while not interrupted
        delivered, delivered_ml = _delivered_from_events(events, s, end)
    ordered = planned = 0.0
    if start_s is not None and timeline:
        ordered = _integrate(timeline, 1, start_s, end)
        planned = _integrate(timeline, 2, start_s, end)
    err_pct = (delivered - ordered) / ordered * 100.0 if ordered else -100.0
    delivery_err = (delivered - planned) / planned * 100.0 if planned else -100.0
    by_bag: dict[str, float] = {}
    for g in segs:
        by_bag[g.get("bag", "")] = by_bag.get(g.get("bag", ""), 0.0) + float(g["drug_mg"])
    if prime_ml is None:
        prime_ml = 0.0
    bags = []
    hung = s.hung_bags
    for b in hung:
        ended = b.ended_s is not None
        b_end = b.ended_s if ended else (s.projected_end_s or end)
        got = by_bag.get(f"bag {b.n}")
        lost_to_prime = prime_ml * b.recipe.conc_mg_per_ml if b is hung[0] else 0.0
        residual = None if got is None or not ended else max(b.recipe.mg - got - lost_to_prime, 0.0)
        bags.append(
            {
                "n": b.n,
                "hung_h": _h(b.hung_s or 0.0),
                "end_h": _h(min(b_end if b_end is not None else end, end)),
                "ended": ended,
                "mg": b.recipe.mg,
                "ml": round(b.recipe.content_ml, 4),
                "bag_ml": b.recipe.bag_ml,
                "conc_mg_per_ml": round(b.recipe.conc_mg_per_ml, 6),
                "rate_ml_per_h": b.rate_ml_per_h,
                "vtbi_ml": b.vtbi_ml,
                "stat": b.stat,
                "compounded_min_before_hang": None
                if b.compounded_s is None or b.hung_s is None
                else round((b.hung_s - b.compounded_s) / 60.0, 2),
                "hang_by_h": None if b.hang_by_s is None else _h(b.hang_by_s),
                "released_past_hang_by": b.released_by is not None,
                "light_protected": b.light_protected,
                "delivered_mg": None if got is None else round(got, 3),
                "residual_mg": None if residual is None else round(residual, 3),
                "wasted_mg": round(b.wasted_mg, 3),
            }
        )
    discarded = [
        {"n": b.n, "discarded_h": _h(b.discarded_s or 0.0), "wasted_mg": round(b.wasted_mg, 3)}
        for b in s.bags.values()
        if b.discarded_s is not None
    ]
    wasted = sum(float(d["wasted_mg"]) for d in discarded) + sum(
        float(b["wasted_mg"] or 0.0) for b in bags
    )
    last = hung[-1] if hung else None
    line_mg = prime_ml * last.recipe.conc_mg_per_ml if last else 0.0
    alarms = [
        {
            "id": a.id,
            "t_h": _h(a.raised_s),
            "kind": a.kind._value_,
            "priority": a.priority._value_,
            "acknowledged_h": None if a.acknowledged_s is None else _h(a.acknowledged_s),
            "cleared_h": None if a.cleared_s is None else _h(a.cleared_s),
            "bag": a.bag_n,
        }
        for a in s.alarms.all
    ]
    by_priority = {"high": 0, "medium": 0, "low": 0}
    for a in alarms:
        if a["priority"] in by_priority:
            by_priority[a["priority"]] += 1
    exp = meta.get("expect", {})
    max_int = float(exp.get("max_interrupted_s", 0.0))
    tol = float(exp.get("dose_tolerance_pct", 5.0))
    failed: list[str] = []
    if interrupted_s > max_int + 1e-6:
        failed.append(f"interrupted {_hms(interrupted_s)} > allowed {_hms(max_int)}")
    if abs(delivery_err) > tol:
        failed.append(f"delivered {delivery_err:+.2f}% vs the planned dose, outside +/-{tol:g}%")
    kinds = {a["kind"] for a in alarms}
    failed += [
        f"expected alarm '{k}' never raised" for k in exp.get("alarms", []) if k not in kinds
    ]
    failed += [
        f"alarm '{k}' raised but not allowed" for k in exp.get("no_alarms", []) if k in kinds
    ]
    causes = {g["cause"] for g in gaps}
    failed += [f"no interruption caused by '{c}'" for c in exp.get("causes", []) if c not in causes]
    if exp.get("bags") is not None and len(bags) != exp["bags"]:
        failed.append(f"{len(bags)} bags hung, expected {exp['bags']}")
    if exp.get("min_interruptions") is not None and len(gaps) < exp["min_interruptions"]:
        failed.append(f"{len(gaps)} interruptions, expected at least {exp['min_interruptions']}")
    max_start = exp.get("max_start_h")
    if max_start is not None and start_s is not None and start_s / 3600.0 > max_start + 1e-9:
        failed.append(
            f"the infusion started at {start_s / 3600.0:.2f} h, later than allowed "
            f"{float(max_start):g} h"
        )
    refused = meta.get("titrations_refused") or []
    failed += [
        f"titration at {float(t['t_s']) / 3600.0:.2f} h ({float(t['dose_mg_per_day']):g} "
        f"mg/day) refused: {t['why']}"
        for t in refused
    ]
    if start_s is None:
        failed.append("the infusion never started")
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": meta.get("scenario", "pumpctl run"),
        "scenario_path": meta.get("scenario_path"),
        "seed": meta.get("seed"),
        "verdict": "fail" if failed else "pass",
        "expectations_met": not failed,
        "failed_expectations": failed,
        "duration_h": round(end / 3600.0, 6),
        "start_h": None if start_s is None else _h(start_s),
        "ordered_mg": round(ordered, 3),
        "planned_mg": round(planned, 3),
        "delivered_mg": round(delivered, 3),
        "dose_error_pct": round(err_pct, 3),
        "delivery_error_pct": round(delivery_err, 3),
        "delivered_ml": round(delivered_ml, 3),
        "interrupted_s": round(interrupted_s, 3),
        "interruptions": [
            {
                "start_h": _h(g["start_s"]),
                "end_h": _h(g["end_s"]),
                "length_s": round(g["end_s"] - g["start_s"], 3),
                "cause": g["cause"],
            }
            for g in gaps
        ],
        "bags": bags,
        "discarded_bags": discarded,
        "wasted_mg": round(wasted, 3),
        "line_residual_mg": round(line_mg, 3),
        "alarms": alarms,
        "alarms_by_priority": by_priority,
        "titrations": _titrations(doses, refused),
        "setting": meta.get("setting"),
        "setting_version": meta.get("setting_version", install),
        "pump": meta.get("pump"),
        "pump_version": meta.get("pump_version"),
        "program": None
        if first is None
        else {
            "mg_per_bag": first["recipe"]["mg"],
            "bag_ml": first["recipe"]["bag_ml"],
            "interval_h": first["recipe"]["interval_h"],
            "rate_ml_per_h": first["recipe"]["rate_ml_per_h"],
            "achieved_mg_per_day": first["recipe"]["achieved_mg_per_day"],
            "nominal_mg_per_day": first["recipe"]["nominal_mg_per_day"],
        },
        "events": len(events),
        "flow_accuracy": meta.get("flow_accuracy"),
        "stated_accuracy_pct": meta.get("stated_accuracy_pct"),
    }


def _delivered_from_events(
    events: Sequence[EventLike], s: ChannelState, end_s: float
) -> tuple[float, float]:
    """Delivered mg and mL from programmed rates while infusing (a real pump's run)."""
    mg = ml = 0.0
    rate = conc = 0.0
    t_prev: float | None = None
    flowing = False
    for e in events:
        if t_prev is not None and flowing:
            dt_h = (e.t_s - t_prev) / 3600.0
            ml += rate * dt_h
            mg += rate * conc * dt_h
        t_prev = e.t_s
        if e.event == E.BAG_HUNG:
            rate = float(e.detail["rate_ml_per_h"])
            conc = s.bags[int(e.detail["bag"])].recipe.conc_mg_per_ml
        elif e.event == E.RATE_CHANGE:
            rate = float(e.detail["rate_ml_per_h"])
        elif e.event == E.STATE:
            flowing = e.detail["to"] in ("infusing", "bag_change") and not e.detail.get(
                "stops_flow"
            )
        elif e.event == E.GAP_START:
            if flowing and "start_s" in e.detail:  # dated back: no flow since its start
                back_h = max(e.t_s - float(e.detail["start_s"]), 0.0) / 3600.0
                ml -= rate * back_h
                mg -= rate * conc * back_h
            flowing = False
        elif e.event == E.GAP_END:
            flowing = True
    if t_prev is not None and flowing and end_s > t_prev:
        dt_h = (end_s - t_prev) / 3600.0
        ml += rate * dt_h
        mg += rate * conc * dt_h
    return mg, ml


def _titrations(doses: Sequence[EventLike], refused: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The titrations in time order; one the controller refused has ``mode`` "refused"."""
    rows = [
        (
            e.t_s,
            {
                "t_h": _h(e.t_s),
                "dose_mg_per_day": e.detail["order"]["dose_mg_per_day"],
                "mode": e.detail.get("mode"),
                "why": (e.detail.get("plan") or {}).get("why"),
            },
        )
        for e in doses
        if e.event == E.TITRATION
    ]
    rows += [
        (
            float(t["t_s"]),
            {
                "t_h": _h(float(t["t_s"])),
                "dose_mg_per_day": t["dose_mg_per_day"],
                "mode": "refused",
                "why": t["why"],
            },
        )
        for t in refused
    ]
    rows.sort(key=lambda r: r[0])  # stable: same-time rows keep their order
    return [r for _t, r in rows]


def _hms(seconds: float) -> str:
    """h:mm:ss (durations for people)."""
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


# ---------------------------------------------------------------------------- plots
def _figure(rows: int, height_in: float, *, sharex: bool = True) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height_in), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0].tolist()
    return fig, axes


def _shade_gaps(ax: Any, result: dict[str, Any], label: bool = True) -> None:
    """Gaps of any length visible: at least 0.4 % of the axis wide, labelled with length."""
    span_h = max(result["duration_h"], 1e-6)
    min_w = span_h * 0.004
    for i, g in enumerate(result["interruptions"]):
        a, b = g["start_h"], g["end_h"]
        if b - a < min_w:
            mid = (a + b) / 2
            a, b = mid - min_w / 2, mid + min_w / 2
        ax.axvspan(
            a,
            b,
            color="#d62728",
            alpha=0.3,
            lw=0,
            label="interruption" if (i == 0 and label) else None,
        )


def _label_gaps(ax: Any, result: dict[str, Any]) -> None:
    ymax = ax.get_ylim()[1]
    for g in result["interruptions"]:
        ax.annotate(
            _hms(g["length_s"]),
            ((g["start_h"] + g["end_h"]) / 2, ymax),
            xytext=(0, -2),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=7,
            color="#a01010",
            rotation=90,
        )


def _step_series(result: dict[str, Any], segs: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    import numpy as np

    end_h = result["duration_h"]
    edges: list[float] = []
    flow: list[float] = []
    dose: list[float] = []
    for s in segs:
        if s["start_s"] / 3600.0 >= end_h:
            break
        dur_h = (s["end_s"] - s["start_s"]) / 3600.0
        if not edges:
            edges.append(s["start_s"] / 3600.0)
        edges.append(min(s["end_s"] / 3600.0, end_h))
        flow.append(s["actual_ml"] / dur_h if dur_h > 0 else 0.0)
        dose.append(s["drug_mg"] / dur_h if dur_h > 0 else 0.0)
    return np.array(edges), np.array(flow), np.array(dose)


def _ordered_steps(result: dict[str, Any], events: Sequence[EventLike]) -> tuple[Any, Any, Any]:
    import numpy as np

    start_h = result["start_h"] or 0.0
    tl = _dose_timeline(events)
    pts = [(max(_h(t), start_h), o / 24.0, p / 24.0) for t, o, p in tl] or [(start_h, 0.0, 0.0)]
    pts[0] = (start_h, pts[0][1], pts[0][2])
    edges = np.array([p[0] for p in pts] + [result["duration_h"]])
    return edges, np.array([p[1] for p in pts]), np.array([p[2] for p in pts])


def _programmed_rates(
    result: dict[str, Any], events: Sequence[EventLike]
) -> tuple[list[float], list[float]]:
    """The rate programmed on the pump over time (bag hangs and rate changes)."""
    t: list[float] = []
    v: list[float] = []
    for e in events:
        if e.event in (E.BAG_HUNG, E.RATE_CHANGE) and "rate_ml_per_h" in e.detail:
            if t and abs(_h(e.t_s) - t[-1]) < 1e-9:
                v[-1] = float(e.detail["rate_ml_per_h"])
                continue
            t.append(_h(e.t_s))
            v.append(float(e.detail["rate_ml_per_h"]))
    if not t:
        return [], []
    return [*t, result["duration_h"]], v


def _bag_marks(ax: Any, result: dict[str, Any], label: bool) -> None:
    for i, b in enumerate(result["bags"]):
        ax.axvline(
            b["hung_h"],
            color="#555555",
            lw=0.7,
            ls=":",
            label="bag hung" if (label and i == 0) else None,
        )


def plot_delivery(result: dict[str, Any], events: Sequence[EventLike], path: Path) -> Path:
    """Flow and dose rate with gaps and bag changes, and cumulative delivered vs ordered."""
    import numpy as np

    fig, (ax_flow, ax_dose, ax_cum) = _figure(3, 9.5)
    segs = _segments(events)
    edges, flow, dose = _step_series(result, segs)
    if flow.size:
        ax_flow.stairs(flow, edges, color="#1f77b4", lw=1.2, label="flow to patient")
        ax_dose.stairs(dose, edges, color="#2ca02c", lw=1.2, label="dose rate delivered")
    for b in result["bags"]:
        ax_flow.hlines(
            b["rate_ml_per_h"],
            b["hung_h"],
            b["end_h"],
            colors="k",
            lw=0.8,
            linestyles="--",
            label="programmed rate" if b["n"] == result["bags"][0]["n"] else None,
        )
    t_ord, ord_h, plan_h = _ordered_steps(result, events)
    ax_dose.stairs(ord_h, t_ord, color="k", lw=0.8, linestyle="--", label="ordered dose rate")
    ax_dose.stairs(
        plan_h, t_ord, color="#9467bd", lw=0.8, linestyle=":", label="planned (real) dose rate"
    )
    for ax in (ax_flow, ax_dose):
        _shade_gaps(ax, result)
        _bag_marks(ax, result, ax is ax_flow)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _label_gaps(ax_flow, result)
    ax_flow.set_ylabel("flow (mL/h)")
    ax_dose.set_ylabel("dose rate (mg/h)")
    verdict = "expectations met" if result["expectations_met"] else "expectations NOT met"
    ax_flow.set_title(
        f"{result['scenario']}: flow and dose rate (interrupted {_hms(result['interrupted_s'])} "
        f"in {len(result['interruptions'])} gap(s); {verdict})"
    )
    cum_t = [edges[0]] if edges.size else [0.0]
    cum = [0.0]
    for s in segs:
        if s["start_s"] / 3600.0 >= result["duration_h"]:
            break
        cum_t.append(min(s["end_s"] / 3600.0, result["duration_h"]))
        cum.append(cum[-1] + s["drug_mg"])
    ax_cum.plot(cum_t, cum, color="#2ca02c", lw=1.5, label="delivered")
    cum_ord = np.concatenate([[0.0], np.cumsum(ord_h * np.diff(t_ord))])
    cum_plan = np.concatenate([[0.0], np.cumsum(plan_h * np.diff(t_ord))])
    ax_cum.plot(t_ord, cum_ord, color="k", lw=1, ls="--", label="ordered")
    ax_cum.plot(t_ord, cum_plan, color="#9467bd", lw=1, ls=":", label="planned (real)")
    _shade_gaps(ax_cum, result)
    ax_cum.set_ylabel("cumulative dose (mg)")
    ax_cum.set_xlabel("time since order (h)")
    ax_cum.set_title(
        f"delivered {result['delivered_mg']:.1f} mg: {result['dose_error_pct']:+.2f}% vs ordered "
        f"{result['ordered_mg']:.1f} mg, {result['delivery_error_pct']:+.2f}% vs planned "
        f"{result['planned_mg']:.1f} mg"
    )
    ax_cum.grid(alpha=0.3)
    ax_cum.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax_cum.set_xlim(0, result["duration_h"])
    fig.savefig(path)
    return path


def plot_bags(result: dict[str, Any], events: Sequence[EventLike], path: Path) -> Path:
    """Volume left to infuse in each bag, with requests, deliveries and hang-by marked."""
    import numpy as np

    fig, (ax,) = _figure(1, 4.4)
    cmap = ["#1f77b4", "#ff7f0e"]
    for i, b in enumerate(result["bags"]):
        t = np.linspace(b["hung_h"], b["end_h"], 50)
        vtbi = b["vtbi_ml"] or b["bag_ml"]
        left = np.clip(vtbi - b["rate_ml_per_h"] * (t - b["hung_h"]), 0, None)
        ax.plot(t, left, lw=1.6, color=cmap[i % 2])
        ax.annotate(
            f"{b['n']}", (b["hung_h"], vtbi), xytext=(2, 2), textcoords="offset points", fontsize=7
        )
    req = [e.t_s / 3600 for e in events if e.event == E.PHARMACY_REQUEST]
    got = [e.t_s / 3600 for e in events if e.event == E.BAG_AT_BEDSIDE]
    ax.plot(req, [2] * len(req), "v", color="#17becf", ms=8, label="pharmacy request")
    ax.plot(got, [6] * len(got), "^", color="#9467bd", ms=8, label="bag at bedside")
    hb = [b["hang_by_h"] for b in result["bags"] if b["hang_by_h"] is not None]
    ax.plot(hb, [10] * len(hb), "x", color="k", ms=6, label="hang-by time")
    _shade_gaps(ax, result)
    _bag_marks(ax, result, True)
    ax.set_ylabel("volume left to infuse (mL)")
    ax.set_xlabel("time since order (h)   (numbers: bag)")
    ax.set_title(
        f"bags: {len(result['bags'])} hung, {len(result['discarded_bags'])} discarded, "
        f"{len(req)} pharmacy requests; wasted {result['wasted_mg']:.1f} mg"
    )
    ax.set_xlim(0, result["duration_h"])
    ax.set_ylim(-5, max([b["bag_ml"] for b in result["bags"]] + [50]) * 1.12)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def plot_alarms(result: dict[str, Any], path: Path) -> Path:
    """Alarm timeline: one row per kind, IEC 60601-1-8 colours, acknowledgements marked."""
    alarms = result["alarms"]
    rank = {"high": 0, "medium": 1, "low": 2}
    kinds = sorted({(rank[a["priority"]], a["kind"]) for a in alarms}, reverse=True)
    rows = {k: i for i, (_r, k) in enumerate(kinds)}
    fig, (ax,) = _figure(1, max(2.4, 1.2 + 0.38 * len(rows)))
    span = max(result["duration_h"], 1e-6)
    for a in alarms:
        y = rows[a["kind"]]
        end = a["cleared_h"] if a["cleared_h"] is not None else result["duration_h"]
        c = PRIORITY_COLOURS[a["priority"]]
        ax.hlines(y, a["t_h"], max(end, a["t_h"] + span * 0.003), colors=c, lw=7, alpha=0.85)
        if a["acknowledged_h"] is not None:
            ax.plot(a["acknowledged_h"], y, "k|", ms=12)
    prio = {a["kind"]: a["priority"] for a in alarms}
    ax.set_yticks(list(rows.values()), [f"{k} ({prio[k]})" for k in rows], fontsize=8)
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.set_xlim(0, result["duration_h"])
    _shade_gaps(ax, result)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=6, label=p) for p, c in PRIORITY_COLOURS.items()]
    handles.append(Line2D([], [], color="k", marker="|", ls="", ms=10, label="acknowledged"))
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )
    ax.set_xlabel("time since order (h)")
    bp = result["alarms_by_priority"]
    ax.set_title(
        f"alarms: {len(alarms)} raised ({bp['high']} high, {bp['medium']} medium, {bp['low']} low)"
    )
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path)
    return path


def flow_accuracy_result(events: Sequence[EventLike]) -> Any:
    """IEC 60601-2-24 analysis of the logged flow trace (first two hours), or None."""
    trace = next((e.detail for e in events if e.event == "flow_trace"), None)
    if trace is None or len(trace["t_s"]) < 2:
        return None
    import numpy as np

    from pumpctl.trumpet import trumpet

    t = np.asarray(trace["t_s"], dtype=float)
    v = np.asarray(trace["volume_ml"], dtype=float)
    t_min = (t - t[0]) / 60.0
    v_ml = v - v[0]
    end_min = float(np.floor(t_min[-1] * 2) / 2)
    start_min = 60.0 if end_min >= 120.0 else max(end_min - 60.0, 0.0)
    try:
        return trumpet(
            t_min,
            v_ml,
            float(trace["rate_ml_per_h"]),
            analysis_start_min=start_min,
            analysis_end_min=end_min,
        )
    except InputError:
        return None


def write_plots(result: dict[str, Any], events: Sequence[EventLike], out: Path) -> list[Path]:
    """Every plot of a run into ``out``."""
    paths = [plot_delivery(result, events, out / "delivery.png")]
    if result["bags"]:
        paths.append(plot_bags(result, events, out / "bags.png"))
    paths.append(plot_alarms(result, out / "alarms.png"))
    acc = flow_accuracy_result(events)
    if acc is not None:
        from pumpctl.trumpet import plot_trumpet

        paths.append(
            plot_trumpet(
                acc,
                out / "flow_accuracy.png",
                stated_pct=result.get("stated_accuracy_pct"),
                title=f"IEC 60601-2-24 flow accuracy, {result['pump']} (simulated)",
            )
        )
    return paths


# ------------------------------------------------------------------------- markdown
def _opt(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(result: dict[str, Any]) -> str:
    """A readable report."""
    r = result
    met = r["expectations_met"]
    gaps = r["interruptions"]
    head = (
        "**Expectations met.**"
        if met
        else "**Expectations NOT met:** " + "; ".join(r["failed_expectations"]) + "."
    )
    never = r["start_h"] is None  # no bag ever ran: no flow to be interrupted, no dose
    if never:
        head += " The infusion never started: nothing reached the patient."
    elif gaps:
        head += (
            f" Interrupted {_hms(r['interrupted_s'])} in {len(gaps)} gap"
            f"{'s' if len(gaps) != 1 else ''} ("
            + ", ".join(f"{g['cause']} {_hms(g['length_s'])}" for g in gaps[:6])
            + (", ..." if len(gaps) > 6 else "")
            + ")."
        )
    else:
        head += " No interruption: flow to the patient never stopped."
    # The dose is a separate question from the flow: say how far it is from the order.
    if not never:
        head += (
            f" Delivered {r['delivered_mg']:.1f} mg, {r['dose_error_pct']:+.2f}% vs ordered "
            f"({r['delivery_error_pct']:+.2f}% vs the real dose of the builds)."
        )
    bp = r["alarms_by_priority"]
    lines = [
        f"# Infusion report: {r['scenario']}{' [DEMO database]' if r.get('demo') else ''}",
        "",
        head,
        "",
        "| | |",
        "|---|---|",
        f"| scenario | `{r['scenario_path'] or '-'}` (seed {_opt(r['seed'])}) |",
        f"| setting | {r['setting'] or '-'} `{(r['setting_version'] or '-')[:19]}` |",
        f"| pump | {r['pump'] or '-'} |",
        f"| duration | {r['duration_h']:.2f} h (infusion started at "
        f"{_opt(r['start_h'], '{:.2f}')} h) |",
        "| ordered | - (counted from the start of the infusion, which never came) |"
        if never
        else f"| ordered | {r['ordered_mg']:.1f} mg |",
        "| planned (real dose of the builds) | - |"
        if never
        else f"| planned (real dose of the builds) | {r['planned_mg']:.1f} mg |",
        f"| delivered | {r['delivered_mg']:.1f} mg |"
        if never
        else f"| delivered | {r['delivered_mg']:.1f} mg ({r['dose_error_pct']:+.2f}% vs ordered, "
        f"{r['delivery_error_pct']:+.2f}% vs planned) |",
        f"| interrupted | {_hms(r['interrupted_s'])} in {len(gaps)} gap(s) |",
        f"| bags | {len(r['bags'])} hung, {len(r['discarded_bags'])} discarded |",
        f"| drug wasted | {r['wasted_mg']:.1f} mg of the programmed VTBI (bags changed early "
        f"or discarded, by the pump's count); left in the bags taken down "
        f"{sum(b['residual_mg'] or 0.0 for b in r['bags']):.1f} mg (overfill and syringe "
        f"volume included); in the line at the end {r['line_residual_mg']:.1f} mg |",
        f"| alarms | {len(r['alarms'])} ({bp['high']} high, {bp['medium']} medium, "
        f"{bp['low']} low) |",
    ]
    if r.get("program"):
        p = r["program"]
        lines.append(
            f"| program | {p['mg_per_bag']:g} mg in {p['bag_ml']} mL q{p['interval_h']}h at "
            f"{p['rate_ml_per_h']:g} mL/h ({p['achieved_mg_per_day']:.1f} mg/day real, "
            f"{p['nominal_mg_per_day']:g} nominal) |"
        )
    if r["titrations"]:
        lines += ["", "## Titrations", "", "| at (h) | mg/day | how | why |", "|---|---|---|---|"]
        lines += [
            f"| {t['t_h']:.2f} | {t['dose_mg_per_day']:g} | {t['mode']} | {t['why'] or ''} |"
            for t in r["titrations"]
        ]
    lines += ["", "## Interruptions", ""]
    if gaps:
        lines += ["| start (h) | end (h) | length | cause |", "|---|---|---|---|"]
        lines += [
            f"| {g['start_h']:.3f} | {g['end_h']:.3f} | {_hms(g['length_s'])} | {g['cause']} |"
            for g in gaps
        ]
    else:
        lines.append("None.")
    lines += [
        "",
        "## Bags",
        "",
        "| n | hung (h) | end (h) | mg | content mL | rate mL/h | compounded before hang (min) "
        "| hang-by (h) | residual mg | wasted mg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {b['n']}{' STAT' if b['stat'] else ''} | {b['hung_h']:.2f} | {b['end_h']:.2f}"
        f"{'' if b['ended'] else ' (running)'} | {b['mg']:g} | {b['ml']:.2f} | "
        f"{b['rate_ml_per_h']:g} | {_opt(b['compounded_min_before_hang'], '{:.0f}')} | "
        f"{_opt(b['hang_by_h'], '{:.2f}')}{' (released)' if b['released_past_hang_by'] else ''} | "
        f"{_opt(b['residual_mg'], '{:.1f}')} | {b['wasted_mg']:.1f} |"
        for b in r["bags"]
    ]
    if r["discarded_bags"]:
        lines += [
            "",
            "Discarded: "
            + ", ".join(
                f"bag {d['n']} at {d['discarded_h']:.2f} h ({d['wasted_mg']:.0f} mg)"
                for d in r["discarded_bags"]
            ),
        ]
    lines += ["", "## Alarms", ""]
    by_kind: dict[tuple[str, str], int] = {}
    for a in r["alarms"]:
        by_kind[(a["priority"], a["kind"])] = by_kind.get((a["priority"], a["kind"]), 0) + 1
    if by_kind:
        lines += ["| priority | kind | count |", "|---|---|---|"]
        order = {"high": 0, "medium": 1, "low": 2}
        lines += [
            f"| {p} | {k} | {n} |"
            for (p, k), n in sorted(by_kind.items(), key=lambda x: (order[x[0][0]], x[0][1]))
        ]
        lines += [
            "",
            "| raised (h) | kind | priority | acknowledged (h) | cleared (h) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['t_h']:.3f} | {a['kind']} | {a['priority']} | "
            f"{_opt(a['acknowledged_h'], '{:.3f}')} | {_opt(a['cleared_h'], '{:.3f}')} |"
            for a in r["alarms"]
        ]
    else:
        lines.append("None.")
    acc = r.get("flow_accuracy")
    if acc:
        lines += [
            "",
            "## Flow accuracy (IEC 60601-2-24, simulated)",
            "",
            f"Overall error A over {acc['analysis_start_min']:g}-{acc['analysis_end_min']:g} min: "
            f"{acc['overall_error_pct']:+.3f}% (stated +/-{_opt(r.get('stated_accuracy_pct'))}%)",
            "",
            "| window (min) | Ep max (%) | Ep min (%) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {w['window_min']:g} | {w['ep_max_pct']:+.3f} | {w['ep_min_pct']:+.3f} |"
            for w in acc["windows"]
        ]
    lines += [
        "",
        "_pumpctl is a simulator and controller for QA and bench rigs, not a medical device._",
        "",
    ]
    return "\n".join(lines)


def with_flow_accuracy(result: dict[str, Any], events: Sequence[EventLike]) -> dict[str, Any]:
    """The result plus the IEC flow-accuracy figures (without the long start-up arrays)."""
    out = dict(result)
    acc = flow_accuracy_result(events)
    if acc is not None:
        d = acc.to_dict()
        d.pop("startup", None)
        d["stated_accuracy_pct"] = result.get("stated_accuracy_pct")
        out["flow_accuracy"] = d
    return out


#: Every file ``simulate --out`` and ``report --out`` write. A directory holding only these
#: (a previous report) may be replaced; anything else in it is never deleted.
OUTPUT_FILES = (
    "report.json",
    "report.md",
    "events.db",
    "events.db.key",
    "delivery.png",
    "bags.png",
    "alarms.png",
    "flow_accuracy.png",
)
_OUT_ALLOWED = "allowed: an empty or new directory, or a previous pumpctl report output"


def check_out_dir(out: Path) -> None:
    """Raise ``InputError`` unless ``--out`` may be written: absent, an empty directory, or
    one that holds only the files a pumpctl report writes (``OUTPUT_FILES``).

    The working directory and its parents are refused (they cannot be replaced), and so is
    a directory holding anything pumpctl did not write: it is named, nothing is deleted.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory; {_OUT_ALLOWED}")
    try:
        here = Path.cwd().resolve()
        inside = here == out.resolve() or out.resolve() in here.parents
    except OSError:
        inside = False
    if inside:
        raise InputError(
            f"--out {out}: is the current directory or one of its parents, which the report "
            f"would replace; {_OUT_ALLOWED}"
        )
    try:
        names = sorted(os.listdir(out))
    except OSError as exc:
        raise InputError(f"--out {out}: cannot read the directory ({exc.strerror})") from None
    for name in names:
        if name not in OUTPUT_FILES or not (out / name).is_file() or (out / name).is_symlink():
            raise InputError(
                f"--out {out}: holds {name!r}, which pumpctl did not write; nothing was "
                f"changed; {_OUT_ALLOWED} ({', '.join(OUTPUT_FILES)})"
            )


def write_report(
    result: dict[str, Any],
    events: Sequence[EventLike],
    out: Path,
    *,
    plots: bool = True,
    write_db: Any = None,
) -> dict[str, Any]:
    """Write report.json, report.md, events.db (``write_db(path)``) and plots into ``out``.

    Everything is written to a temporary directory beside ``out`` and renamed when
    complete, so a crash never leaves a half-written report. An existing ``out`` is
    replaced only when it holds nothing but a previous report (``check_out_dir``).
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    check_out_dir(out)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    try:
        result = with_flow_accuracy(result, events)
        if plots:
            result["plots"] = [p.name for p in write_plots(result, events, tmp)]
        (tmp / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(result))
        if write_db is not None:
            write_db(tmp / "events.db")
        check_out_dir(out)  # again: something may have been put there during the run
        try:
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
                try:
                    os.rename(out, old / "x")
                except OSError:
                    old.rmdir()
                    raise
                try:
                    os.rename(tmp, out)
                except OSError:
                    os.rename(old / "x", out)  # put the previous report back
                    old.rmdir()
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
        except OSError as exc:
            raise InputError(
                f"--out {out}: cannot replace the directory ({exc.strerror}); nothing was changed"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
