"""The body of ``pumpctl campaign`` (imported only when the command runs: numpy, Dask)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from pumpctl.clock import SystemClock
from pumpctl.errors import InputError
from pumpctl.sim.campaign import (
    DASK_HINT,
    MAX_RUNS,
    CampaignStats,
    campaign,
    dask_available,
    executor_for,
    parse_sweeps,
    plot_histograms,
    pyarrow_available,
    sweep_points,
    sweep_row,
    write_sweep,
)
from pumpctl.sim.scenario import GAP_CAUSES, Scenario, load_scenario

_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+:\d{1,5}$")


class _Progress:
    """A one-line progress bar on stderr: runs, runs/s, time left."""

    def __init__(self, label: str = "") -> None:
        self.clock = SystemClock()  # wall time for the display only
        self.label = label
        self.first: int | None = None
        self.t0 = 0.0
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:  # the first call: runs already done (resume) and the start time
            self.first, self.t0 = done, self.clock.now()
            return
        pct = done * 100 // total
        tty = sys.stderr.isatty()
        step = 1 if tty else 25  # redraw in place on a terminal, a few lines in a log
        if pct // step == self.last and done != total:
            return
        self.last = pct // step
        elapsed = max(self.clock.now() - self.t0, 1e-9)
        rate = (done - self.first) / elapsed
        left = (total - done) / rate if rate > 0 else float("inf")
        bar = "#" * (pct // 4) + "." * (25 - pct // 4)
        line = f"{self.label}[{bar}] {done}/{total} runs, {rate:.0f} runs/s, {_hms(left)} left"
        if tty:
            sys.stderr.write("\r" + line + ("\n" if done == total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _hms(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_scheduler(scheduler: str) -> None:
    if scheduler not in ("local", "dask") and not _ADDRESS.match(scheduler):
        raise InputError(
            f"--scheduler {scheduler!r} is not allowed; allowed: local, dask, or "
            "tcp://HOST:PORT of a running `dask scheduler`"
        )
    if scheduler != "local" and not dask_available():
        raise InputError(f"--scheduler {scheduler} needs Dask distributed; {DASK_HINT}")


def _workers(args: argparse.Namespace) -> int:
    """The worker count: checked, defaulted and capped at min(runs, cores), saying so."""
    cores = _cores()
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers} is not allowed; allowed: 1 or more")
    if args.scheduler.startswith(("tcp://", "tls://")):
        if args.workers is not None:
            print(
                "pumpctl campaign: --workers is ignored with a scheduler address "
                "(its workers were started with `dask worker`)",
                file=sys.stderr,
            )
        return 0
    wanted = (
        args.workers if args.workers is not None else (1 if args.scheduler == "local" else cores)
    )
    cap = min(args.runs, cores)
    if wanted > cap and args.workers is None:
        return cap
    if wanted > cap:
        print(
            f"pumpctl campaign: --workers {wanted} capped at {cap} "
            f"(at most min(runs {args.runs}, cores {cores}))",
            file=sys.stderr,
        )
        return cap
    return wanted


#: What a campaign (or a sweep: ``points/``) leaves in its --out directory to resume from.
CAMPAIGN_FILES = ("runs.parquet", "runs.csv", ".runs.parts", "points", "sweep.json")


def _check_out(out: str | None, resume: bool) -> Path | None:
    """The --out directory, created and proven writable before any run starts."""
    if out is None:
        if resume:
            raise InputError("--resume needs --out DIR (the directory of the interrupted campaign)")
        return None
    p = Path(out)
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"--out {out}: {parent} is a file; allowed: a directory path")
    if resume and not any((p / n).exists() for n in CAMPAIGN_FILES):
        raise InputError(
            f"--resume: nothing to resume in {out}; allowed: a directory with an unfinished "
            "campaign, or leave out --resume"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".pumpctl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"--out {out}: not writable ({exc.strerror}); allowed: a writable directory"
        ) from None
    if not resume:
        taken = [n for n in CAMPAIGN_FILES if (p / n).exists()]
        if taken:
            raise InputError(
                f"--out {out} already holds a campaign ({taken[0]}); allowed: --resume to "
                "continue it, or a new directory"
            )
    return p


def _finish_dir(out_dir: Path, sc: Scenario, summary: dict[str, Any], stats: CampaignStats) -> None:
    """campaign.json and histograms.png, written in a temporary directory then renamed."""
    tmp = out_dir / ".campaign.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "campaign.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_histograms(stats, summary, tmp / "histograms.png")
    for name in ("campaign.json", "histograms.png"):
        os.replace(tmp / name, out_dir / name)
    tmp.rmdir()


def _point_dir(out_dir: Path, i: int, point: dict[str, Any]) -> Path:
    text = "_".join(f"{k}={v}" for k, v in point.items())
    return out_dir / "points" / f"{i:03d}_{re.sub(r'[^A-Za-z0-9_.=-]', '-', text)[:80]}"


def run(args: argparse.Namespace) -> int:
    """Check everything, run the campaign (or the sweep grid), print and write the summary."""
    if not 1 <= args.runs <= MAX_RUNS:
        raise InputError(f"--runs {args.runs} is not allowed; allowed: 1 to {MAX_RUNS}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise InputError(f"--seed {args.seed} is not allowed; allowed: 0 to {2**63 - 1}")
    _check_scheduler(args.scheduler)
    axes = parse_sweeps(args.sweep)
    sc = load_scenario(args.scenario)
    points = sweep_points(sc, axes) if axes else [({}, sc)]
    workers = _workers(args)
    out_dir = _check_out(args.out, args.resume)
    seed = sc.seed if args.seed is None else args.seed
    show = not args.no_progress
    if not pyarrow_available() and out_dir is not None and show:
        print("pumpctl campaign: pyarrow not installed; streaming runs.csv", file=sys.stderr)

    summaries: list[dict[str, Any]] = []
    with executor_for(args.scheduler, workers) as ex:
        for i, (point, psc) in enumerate(points):
            where = out_dir if out_dir is None or not axes else _point_dir(out_dir, i, point)
            label = f"{i + 1}/{len(points)} " if axes else ""
            summary, stats = campaign(
                psc,
                args.runs,
                seed=seed,
                executor=ex,
                out_dir=where,
                resume=args.resume,
                progress=_Progress(label) if show else None,
                point=point or None,
            )
            if where is not None:
                _finish_dir(where, psc, summary, stats)
            summaries.append(summary)

    if axes:
        rows = [sweep_row(p, s) for (p, _), s in zip(points, summaries, strict=True)]
        if out_dir is not None:
            write_sweep(axes, rows, summaries, out_dir)
        if args.json:
            doc = {
                "schema_version": summaries[0]["schema_version"],
                "keys": [k for k, _ in axes],
                "rows": [{"point": p, **s} for (p, _), s in zip(points, summaries, strict=True)],
            }
            print(json.dumps(doc, indent=2))
        else:
            print(format_sweep(axes, rows, sc, seed))
    elif args.json:
        print(json.dumps(summaries[0], indent=2))
    else:
        print(format_summary(summaries[0]))
    return 0 if all(s["failed"] == 0 for s in summaries) else 1


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table: columns of numbers right-aligned, others left-aligned."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [i > 0 and all(_numeric(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if right[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%") or "0")
    except ValueError:
        return False
    return True


_STATS = ("p5", "p50", "p90", "p95", "p99", "min", "max", "mean")


def format_summary(s: dict[str, Any]) -> str:
    """The campaign summary as tables for a terminal."""
    out = [
        f"campaign {s['scenario']} ({s['scenario_path']}), seed {s['seed']}: {s['runs']} runs, "
        f"{s['passed']} pass, {s['failed']} fail; "
        f"{s['share_interrupted'] * 100:.2f}% of runs interrupted "
        f"(limit {s['expect_max_interrupted_s']:g} s per run)",
        "",
    ]
    rows = []
    for name, key, fmt in (
        ("interrupted (s)", "interrupted_s", "{:.1f}"),
        ("dose error (%)", "dose_error_pct", "{:+.3f}"),
        ("wasted (mg)", "wasted_mg", "{:.1f}"),
    ):
        d = s[key]
        rows.append([name] + [fmt.format(d[q]) if q in d else "" for q in _STATS])
    out.append(table(["per run", *_STATS], rows))
    if s["interruption_causes"]:
        out.append("")
        out.append(
            table(
                ["interruption cause", "runs", "share"],
                [
                    [c, k, f"{s['share_interrupted_by_cause'][c] * 100:.2f}%"]
                    for c, k in sorted(s["interruption_causes"].items(), key=lambda kv: -kv[1])
                ],
            )
        )
    if s["worst_runs"]:
        out.append("")
        out.append(
            table(
                ["worst runs: seed", "interrupted s", "dose err %", "causes", "reproduce"],
                [
                    [
                        w["seed"],
                        f"{w['interrupted_s']:.1f}",
                        f"{w['dose_error_pct']:+.3f}",
                        ",".join(w["causes"]) or "-",
                        w["reproduce"],
                    ]
                    for w in s["worst_runs"]
                ],
            )
        )
    return "\n".join(out)


def format_sweep(
    axes: list[tuple[str, list[Any]]], rows: list[dict[str, Any]], sc: Scenario, seed: int
) -> str:
    """One line per grid point."""
    keys = [k for k, _ in axes]
    causes = [c for c in GAP_CAUSES if any(r[f"share_{c}"] for r in rows)]
    head = [*keys, "runs", "pass", "fail", "interrupted", "p95 s", "max s"]
    head += [f"{c} %" for c in causes]
    body = [
        [r[k] for k in keys]
        + [
            r["runs"],
            r["passed"],
            r["failed"],
            f"{r['share_interrupted'] * 100:.2f}%",
            f"{r['interrupted_s_p95']:.1f}",
            f"{r['interrupted_s_max']:.1f}",
        ]
        + [f"{r[f'share_{c}'] * 100:.2f}" for c in causes]
        for r in rows
    ]
    title = f"sweep of {sc.name} ({sc.path}), seed {seed}, {len(rows)} grid points"
    return title + "\n\n" + table(head, body)
