"""Reports of a simulated infusion: JSON, Markdown and plots (matplotlib, Agg, no pyplot state).

Every figure is built from the run's own record: the pump physics' segments (what reached
the patient), the controller's bags and alarms, and the measured interruptions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pumpctl.errors import InputError
from pumpctl.sim.runner import SimRun
from pumpctl.trumpet import TrumpetResult, plot_trumpet, trumpet

PRIORITY_COLOURS = {"high": "#d62728", "medium": "#e6b800", "low": "#17becf"}


def flow_accuracy(run: SimRun) -> TrumpetResult | None:
    """IEC 60601-2-24 start-up and trumpet curves from the first two hours of simulated flow."""
    samples = run.volume_samples
    bag = run.controller.bags[0] if run.controller.bags else None
    if bag is None or len(samples) < 2:
        return None
    t0 = samples[0][0]
    t_min = np.array([(t - t0) / 60.0 for t, _v in samples])
    v_ml = np.array([v - samples[0][1] for _t, v in samples])
    end_min = float(np.floor(t_min[-1] * 2) / 2)
    start_min = 60.0 if end_min >= 120.0 else max(end_min - 60.0, 0.0)
    try:
        return trumpet(
            t_min, v_ml, bag.rate_ml_per_h, analysis_start_min=start_min, analysis_end_min=end_min
        )
    except InputError:
        return None  # too short a run for the analysis


def result_with_accuracy(run: SimRun) -> dict[str, Any]:
    """The result JSON plus the flow-accuracy numbers (without the long start-up arrays)."""
    out = dict(run.result)
    acc = flow_accuracy(run)
    if acc is not None:
        d = acc.to_dict()
        d.pop("startup", None)
        d["stated_accuracy_pct"] = run.pump.stated_accuracy_pct
        out["flow_accuracy"] = d
    return out


# ---------------------------------------------------------------------------- plots
def _figure(rows: int, height_in: float) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, height_in), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0].tolist()
    return fig, axes


def _shade_gaps(ax: Any, result: dict[str, Any]) -> None:
    for i, g in enumerate(result["interruptions"]):
        ax.axvspan(
            g["start_h"],
            g["end_h"],
            color="#d62728",
            alpha=0.25,
            lw=0,
            label="interruption" if i == 0 else None,
        )


def _step_series(run: SimRun) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment edges (h) and mean flow (mL/h) and dose rate (mg/h) on each segment."""
    segs = run.driver.physics.segments
    edges = [segs[0].start_s] if segs else [0.0]
    flow, dose = [], []
    for s in segs:
        dur_h = (s.end_s - s.start_s) / 3600.0
        edges.append(s.end_s)
        flow.append(s.actual_ml / dur_h if dur_h > 0 else 0.0)
        dose.append(s.drug_mg / dur_h if dur_h > 0 else 0.0)
    return np.array(edges) / 3600.0, np.array(flow), np.array(dose)


def plot_delivery(run: SimRun, path: Path) -> Path:
    """Flow and dose rate with gaps shaded, and cumulative delivered versus ordered dose."""
    result = run.result
    fig, (ax_flow, ax_dose, ax_cum) = _figure(3, 9.5)
    edges, flow, dose = _step_series(run)
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
            label="programmed rate" if b["n"] == 1 else None,
        )
    ordered_mg_per_h = _ordered_steps(run)
    ax_dose.stairs(
        ordered_mg_per_h[1],
        ordered_mg_per_h[0],
        color="k",
        lw=0.8,
        linestyle="--",
        label="ordered dose rate",
    )
    for ax in (ax_flow, ax_dose):
        _shade_gaps(ax, result)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    ax_flow.set_ylabel("flow (mL/h)")
    ax_dose.set_ylabel("dose rate (mg/h)")
    ax_flow.set_title(
        f"{result['scenario']}: flow and dose rate "
        f"(interrupted {result['interrupted_s']:.0f} s, verdict {result['verdict'].upper()})"
    )
    # Cumulative dose.
    cum = np.concatenate([[0.0], np.cumsum([s.drug_mg for s in run.driver.physics.segments])])
    ax_cum.plot(edges[: cum.size], cum, color="#2ca02c", lw=1.5, label="delivered")
    t_ord, mg_per_h = ordered_mg_per_h
    cum_ord = np.concatenate([[0.0], np.cumsum(mg_per_h * np.diff(t_ord))])
    ax_cum.plot(t_ord, cum_ord, color="k", lw=1, ls="--", label="ordered")
    _shade_gaps(ax_cum, result)
    ax_cum.set_ylabel("cumulative dose (mg)")
    ax_cum.set_xlabel("time since order (h)")
    ax_cum.set_title(
        f"delivered {result['delivered_mg']:.1f} mg vs ordered {result['ordered_mg']:.1f} mg "
        f"({result['dose_error_pct']:+.2f}%)"
    )
    ax_cum.grid(alpha=0.3)
    ax_cum.legend(loc="upper left", fontsize=8)
    ax_cum.set_xlim(0, result["duration_h"])
    fig.savefig(path)
    return path


def _ordered_steps(run: SimRun) -> tuple[np.ndarray, np.ndarray]:
    """Ordered dose rate (mg/h) as steps from the start to the end."""
    sc = run.scenario
    start_h = (run.start_s or 0.0) / 3600.0
    pts = [(start_h, sc.dose_mg_per_day / 24.0)]
    for t in sorted(sc.titrations, key=lambda t: t.at_h):
        if t.at_h > start_h:
            pts.append((t.at_h, t.dose_mg_per_day / 24.0))
        else:
            pts[0] = (start_h, t.dose_mg_per_day / 24.0)
    edges = np.array([p[0] for p in pts] + [sc.duration_h])
    return edges, np.array([p[1] for p in pts])


def plot_bags(run: SimRun, path: Path) -> Path:
    """Volume left to infuse in each bag, with bag changes and pharmacy requests marked."""
    result = run.result
    fig, (ax,) = _figure(1, 4.2)
    for b in result["bags"]:
        t = np.linspace(b["hung_h"], b["end_h"], 50)
        left = np.clip(b["bag_ml"] - b["rate_ml_per_h"] * (t - b["hung_h"]), 0, None)
        ax.plot(t, left, lw=1.5, label=f"bag {b['n']}" if len(result["bags"]) <= 10 else None)
        ax.axvline(b["hung_h"], color="k", lw=0.6, ls=":")
    req = [e.t_s / 3600 for e in run.log.events() if e.event == "pharmacy_request"]
    got = [e.t_s / 3600 for e in run.log.events() if e.event == "bag_at_bedside"]
    ax.plot(req, [2] * len(req), "v", color="#17becf", ms=8, label="pharmacy request")
    ax.plot(got, [6] * len(got), "^", color="#9467bd", ms=8, label="bag at bedside")
    _shade_gaps(ax, result)
    ax.set_ylabel("volume left to infuse (mL)")
    ax.set_xlabel("time since order (h)  (dotted lines: bag hung)")
    ax.set_title(f"bags: {len(result['bags'])} hung; {len(req)} pharmacy requests")
    ax.set_xlim(0, result["duration_h"])
    ax.set_ylim(-5, max([b["bag_ml"] for b in result["bags"]] + [50]) * 1.08)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncol=12, frameon=False)
    fig.savefig(path)
    return path


def plot_alarms(run: SimRun, path: Path) -> Path:
    """Alarm timeline by IEC 60601-1-8 priority: raised to cleared, acknowledged marked."""
    result = run.result
    fig, (ax,) = _figure(1, 3.6)
    levels = {"low": 0, "medium": 1, "high": 2}
    for a in result["alarms"]:
        y = levels[a["priority"]]
        end = a["cleared_h"] if a["cleared_h"] is not None else result["duration_h"]
        c = PRIORITY_COLOURS[a["priority"]]
        ax.hlines(y, a["t_h"], max(end, a["t_h"] + 0.05), colors=c, lw=6, alpha=0.8)
        if a["acknowledged_h"] is not None:
            ax.plot(a["acknowledged_h"], y, "k|", ms=14)
    kinds_by_level: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    for a in result["alarms"]:
        kinds_by_level[levels[a["priority"]]].add(a["kind"])
    ax.set_yticks(
        [0, 1, 2],
        [f"{p}\n" + ", ".join(sorted(kinds_by_level[i])) for p, i in levels.items()],
        fontsize=7,
    )
    ax.set_ylim(-0.6, 2.6)
    ax.set_xlim(0, result["duration_h"])
    _shade_gaps(ax, result)
    ax.set_xlabel("time since order (h)   (| acknowledged)")
    ax.set_title(f"alarms by priority ({len(result['alarms'])} raised)")
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path)
    return path


def write_plots(run: SimRun, out: Path) -> list[Path]:
    """All plots of a run into ``out``."""
    paths = [
        plot_delivery(run, out / "delivery.png"),
        plot_bags(run, out / "bags.png"),
        plot_alarms(run, out / "alarms.png"),
    ]
    acc = flow_accuracy(run)
    if acc is not None:
        paths.append(
            plot_trumpet(
                acc,
                out / "flow_accuracy.png",
                stated_pct=run.pump.stated_accuracy_pct,
                title=f"IEC 60601-2-24 flow accuracy, {run.pump.name} (simulated)",
            )
        )
    return paths


# ------------------------------------------------------------------------- markdown
def markdown(result: dict[str, Any]) -> str:
    """A readable report."""
    r = result
    lines = [
        f"# Simulation report: {r['scenario']}",
        "",
        f"**Verdict: {r['verdict'].upper()}**"
        + ("" if not r["failed_expectations"] else " - " + "; ".join(r["failed_expectations"])),
        "",
        "| | |",
        "|---|---|",
        f"| scenario | `{r['scenario_path']}` (seed {r['seed']}) |",
        f"| setting | {r['setting']} `{r['setting_version']}` |",
        f"| pump | {r['pump']} `{r['pump_version']}` |",
        f"| duration | {r['duration_h']} h (infusion started at {r['start_h']} h) |",
        f"| ordered | {r['ordered_mg']:.1f} mg |",
        f"| delivered | {r['delivered_mg']:.1f} mg ({r['dose_error_pct']:+.2f}%) |",
        f"| interrupted | {r['interrupted_s']:.1f} s in {len(r['interruptions'])} gaps |",
        f"| bags hung | {len(r['bags'])} |",
        f"| alarms | {len(r['alarms'])} |",
    ]
    if r.get("program"):
        p = r["program"]
        lines.append(
            f"| program | {p['mg_per_bag']:g} mg in {p['bag_ml']} mL q{p['interval_h']}h at "
            f"{p['rate_ml_per_h']:g} mL/h ({p['achieved_mg_per_day']:g} mg/day) |"
        )
    lines += ["", "## Interruptions", ""]
    if r["interruptions"]:
        lines += ["| start (h) | end (h) | length (s) | cause |", "|---|---|---|---|"]
        lines += [
            f"| {g['start_h']:.4f} | {g['end_h']:.4f} | {g['length_s']:.1f} | {g['cause']} |"
            for g in r["interruptions"]
        ]
    else:
        lines.append("None: the drug reached the patient at the ordered rate throughout.")
    lines += [
        "",
        "## Bags",
        "",
        "| n | hung (h) | end (h) | mg | mL | rate (mL/h) | compounded before hang (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {b['n']} | {b['hung_h']:.3f} | {b['end_h']:.3f}{'' if b['ended'] else ' (running)'} | "
        f"{b['mg']:g} | {b['ml']:g} | {b['rate_ml_per_h']:g} | {b['compounded_min_before_hang']} |"
        for b in r["bags"]
    ]
    lines += [
        "",
        "## Alarms",
        "",
        "| raised (h) | kind | priority | acknowledged (h) | cleared (h) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {a['t_h']:.4f} | {a['kind']} | {a['priority']} | {a['acknowledged_h']} "
        f"| {a['cleared_h']} |"
        for a in r["alarms"]
    ]
    acc = r.get("flow_accuracy")
    if acc:
        lines += [
            "",
            "## Flow accuracy (IEC 60601-2-24, simulated)",
            "",
            f"Overall error A over {acc['analysis_start_min']:g}-{acc['analysis_end_min']:g} min: "
            f"{acc['overall_error_pct']:+.3f}% (stated +/-{acc['stated_accuracy_pct']:g}%)",
            "",
            "| window (min) | Ep max (%) | Ep min (%) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {w['window_min']:g} | {w['ep_max_pct']:+.3f} | {w['ep_min_pct']:+.3f} |"
            for w in acc["windows"]
        ]
    lines += ["", "_pumpctl is a simulator for QA and bench rigs, not a medical device._", ""]
    return "\n".join(lines)


def write_report(run: SimRun, out: Path, *, plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md, events.db and (optionally) the plots into ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    result = result_with_accuracy(run)
    if plots:
        result["plots"] = [p.name for p in write_plots(run, out)]
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    db = out / "events.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    run.log.write_sqlite(db)
    return result
