"""Golden results: every shipped scenario and a few campaign seeds, bit for bit.

The speed work (issue 12) must not change a single result. ``tests/golden/results.json``
was generated from main before any optimisation with
``python -m tests.test_golden --write``; it holds, per run, the full result JSON (with
the IEC flow-accuracy figures) and every event (exact floats, as ``repr`` keeps them).
Regenerate it only for a deliberate behaviour change, and say so in the commit. Once so
far: the IEC trace is read off the physics' steps instead of clock callbacks that split
them, which moved the trace volumes and the first bag's segment of the traced examples by
at most 2.5e-15 relative (campaign runs and every rounded result figure unchanged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pumpctl.report import with_flow_accuracy
from pumpctl.sim.campaign import one_run, run_seeds
from pumpctl.sim.runner import run_scenario
from pumpctl.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "results.json"
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.toml") if "campaign" not in p.name)
CAMPAIGNS = sorted((ROOT / "examples").glob("campaign*.toml"))
CAMPAIGN_SEEDS = 6  # the first seeds of each campaign's own seed


def _event(ev: Any) -> list[Any]:
    return [ev.seq, ev.t_s, ev.pump, ev.state, str(ev.event), ev.detail, ev.operator]


def _canon(obj: Any) -> Any:
    """JSON round trip: floats keep their exact repr, enums become their strings, and the
    checkout's path is neutral (a golden file made in another checkout still compares)."""
    return json.loads(json.dumps(obj, default=str).replace(str(ROOT), "<root>"))


def example_record(path: Path) -> dict[str, Any]:
    """The full result and event list of one shipped scenario run."""
    run = run_scenario(load_scenario(path))
    events = run.log.events()
    return _canon(
        {
            "result": with_flow_accuracy(run.result, events),
            "events": [_event(e) for e in events],
        }
    )


def campaign_records(path: Path) -> dict[str, Any]:
    """Results and events of the first seeds of a campaign, run as a campaign runs them."""
    sc = load_scenario(path)
    out = {}
    for seed in run_seeds(sc.seed, CAMPAIGN_SEEDS):
        run = run_scenario(sc, seed, trace=False)
        out[str(seed)] = {
            "record": one_run(sc, seed),
            "result": run.result,
            "events": [_event(e) for e in run.log.events()],
        }
    return _canon(out)


def _golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_matches_golden(path: Path) -> None:
    want = _golden()["examples"][path.name]
    got = example_record(path)
    assert got["result"] == want["result"]
    assert len(got["events"]) == len(want["events"])
    for g, w in zip(got["events"], want["events"], strict=True):
        assert g == w


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.stem)
def test_campaign_seeds_match_golden(path: Path) -> None:
    want = _golden()["campaigns"][path.name]
    got = campaign_records(path)
    assert sorted(got) == sorted(want)
    for seed in want:
        assert got[seed]["record"] == want[seed]["record"], seed
        assert got[seed]["result"] == want[seed]["result"], seed
        assert got[seed]["events"] == want[seed]["events"], seed


def test_golden_covers_every_shipped_scenario() -> None:
    g = _golden()
    assert sorted(g["examples"]) == [p.name for p in EXAMPLES]
    assert sorted(g["campaigns"]) == [p.name for p in CAMPAIGNS]


def write_golden() -> None:
    """Regenerate the golden file from the current code."""
    data = {
        "examples": {p.name: example_record(p) for p in EXAMPLES},
        "campaigns": {p.name: campaign_records(p) for p in CAMPAIGNS},
    }
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(data, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_golden()
    else:
        sys.exit("usage: python -m tests.test_golden --write")
