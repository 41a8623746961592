"""Bad input never crashes (issue 16, item 7): hundreds of bad command lines across every
command, fuzzed TOML and CSV files. Each must end in exactly one line on stderr and an
exit code of 1-5: no traceback, no hang, no silent default."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpctl.cli import main
from pumpctl.errors import InputError
from pumpctl.setting import load_any, load_pump, load_setting, profiles_dir
from pumpctl.sim.scenario import load_scenario
from pumpctl.trumpet import read_gravimetric_csv
from tests.helpers import dump_toml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = profiles_dir() / "anakinra_continuous.toml"
PUMP_PROFILE = profiles_dir() / "pumps" / "generic_lvp.toml"
EXAMPLE_CSV = ROOT / "examples" / "gravimetric_sample.csv"
TIMEOUT_S = 30.0
BAD_CODES = {1, 2, 3, 4, 5}

SCENARIO = """
[scenario]
name = "fuzz"
duration_h = 2
seed = 1
setting = "anakinra_continuous"
pump = "generic_lvp"

[patient]
weight_kg = 70

[order]
dose_mg_per_day = 600
bag_ml = 100

[pharmacy]
compound_min = 10
deliver_min = {dist = "lognormal", median = 5, p95 = 20}

[nurse]
response_min = 2
swap_s = 60
hang_lead_s = 720

[[titrations]]
at_h = 1
dose_mg_per_day = 900

[[faults]]
kind = "occlusion"
at_h = 1.5
duration_min = 3

[expect]
max_interrupted_s = 0
dose_tolerance_pct = 5
no_alarms = ["bag_empty"]
causes = []
bags = 1
"""


class Hang(BaseException):
    """The command did not finish within TIMEOUT_S."""


def _on_alarm(_signum: int, _frame: object) -> None:
    raise Hang()


# -- the files the bad command lines point at -----------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    mp = pytest.MonkeyPatch()
    mp.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    mp.delenv("PUMPCTL_KEY_DIR", raising=False)
    demo_db = d / "demo.db"
    assert main(["setting", "install", str(SHIPPED), "--db", str(demo_db), "--demo"]) == 0
    mp.undo()
    (d / "adir").mkdir()
    (d / "adir" / "x.toml").write_text("")
    loop = d / "loop.toml"
    loop.symlink_to(loop)
    (d / "regular").write_text("just text\n")
    (d / "binary.toml").write_bytes(b"\xff\xfe\x00garbage\x80\x81[scenario]\n")
    (d / "empty.toml").write_text("")
    (d / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (d / "deep_table.toml").write_text("a = " + "{b = " * 5_000 + "1" + "}" * 5_000 + "\n")
    (d / "notoml.toml").write_text("this is = = not toml\n")
    (d / "scenario.toml").write_text(SCENARIO)
    (d / "wrongkind.toml").write_text('kind = "pizza"\n')
    (d / "foreign.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    (d / "unicode_ß.toml").write_text(SCENARIO.replace('"fuzz"', '"füzz ☃"'))
    (d / "nan_scenario.toml").write_text(SCENARIO.replace("weight_kg = 70", "weight_kg = nan"))
    (d / "inf_scenario.toml").write_text(SCENARIO.replace("duration_h = 2", "duration_h = inf"))
    (d / "huge_scenario.toml").write_text(
        SCENARIO.replace("seed = 1", "seed = 99999999999999999999")
    )
    lines = EXAMPLE_CSV.read_text().splitlines()
    (d / "ok.csv").write_text("\n".join(lines) + "\n")
    # A 4-hour record at 30-s samples with a 2-hour hole: nothing from 30 min to 150 min.
    holed = [f"{t},{t / 360:.5f}" for t in range(0, 4 * 3600 + 1, 30) if not 1800 < t < 9000]
    (d / "hole.csv").write_text("time_s,volume_ml\n" + "\n".join(holed) + "\n")
    (d / "nan.csv").write_text("time_s,mass_g\n0,0\n30,nan\n60,0.1\n90,0.2\n")
    (d / "one.csv").write_text("time_s,mass_g\n0,0\n")
    (d / "nohead.csv").write_text("1,2\n3,4\n5,6\n7,8\n")
    (d / "back.csv").write_text("time_s,mass_g\n0,0\n60,0.1\n30,0.2\n90,0.3\n")
    (d / "bin.csv").write_bytes(b"time_s,mass_g\n\xff\xfe,\x80\n")
    (d / "huge.csv").write_text("time_s,mass_g\n0,0\n1e308,1\n1.5e308,2\n1.7e308,3\n")
    return {
        "d": str(d),
        "db": str(demo_db),
        "dir": str(d / "adir"),
        "loop": str(loop),
        "file": str(d / "regular"),
        "bin": str(d / "binary.toml"),
        "empty": str(d / "empty.toml"),
        "deep": str(d / "deep.toml"),
        "deept": str(d / "deep_table.toml"),
        "notoml": str(d / "notoml.toml"),
        "sc": str(d / "scenario.toml"),
        "kind": str(d / "wrongkind.toml"),
        "foreign": str(d / "foreign.db"),
        "uni": str(d / "unicode_ß.toml"),
        "nansc": str(d / "nan_scenario.toml"),
        "infsc": str(d / "inf_scenario.toml"),
        "hugesc": str(d / "huge_scenario.toml"),
        "csv": str(d / "ok.csv"),
        "hole": str(d / "hole.csv"),
        "nancsv": str(d / "nan.csv"),
        "onecsv": str(d / "one.csv"),
        "nohead": str(d / "nohead.csv"),
        "back": str(d / "back.csv"),
        "bincsv": str(d / "bin.csv"),
        "hugecsv": str(d / "huge.csv"),
        "missing": str(d / "no" / "such" / "file.toml"),
    }


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process with a time limit: (exit code, stdout, stderr)."""
    old_alarm = signal.signal(signal.SIGALRM, _on_alarm)
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    try:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    except Hang:
        pytest.fail(f"hung for {TIMEOUT_S} s: pumpctl {' '.join(argv)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, argv: list[str], codes: set[int] = BAD_CODES) -> None:
    cmd = "pumpctl " + " ".join(argv)
    assert "Traceback" not in err, f"{cmd}: traceback\n{err}"
    assert code in codes, f"{cmd}: exit {code}, stderr {err!r}"
    assert err.count("\n") == 1 and err.endswith("\n"), f"{cmd}: stderr is not one line: {err!r}"


# -- the bad command lines ----------------------------------------------------------

BAD_FLOATS = ["nan", "inf", "-inf", "1e308", "1e30", "-1", "", "abc", "1e999", "--", "0x10"]
BAD_INTS = ["99999999999999999999", "-99999999999999999999", "1.5", "", "abc", "nan", "1e3"]
BAD_INTS += ["9" * 5000]
BAD_DECIMALS = ["1e30", "1e-300", "nan", "inf", "-inf", "-0", "0", "", "abc", "1e999999999"]
BAD_DECIMALS += ["99999999999999999999", "١٢٣e400", "-600", "1_0e9999"]


def _cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []

    def add(name: str, *argv: str) -> None:
        cases.append((name, list(argv)))

    build = ["build", "--weight-kg", "70", "--dose-mg-per-day", "600"]
    for v in BAD_DECIMALS:
        add(f"build-dose-{v}", "build", "--weight-kg", "70", "--dose-mg-per-day", v)
        add(f"build-weight-{v}", "build", "--weight-kg", v, "--dose-mg-per-day", "600")
        add(f"build-perkg-{v}", "build", "--weight-kg", "20", "--dose-mg-per-kg-per-day", v,
            "--setting", "anakinra_continuous_pediatric")  # fmt: skip
    for v in BAD_INTS + ["0", "-1", "7", "100000"]:
        add(f"build-bag-{v}", *build, "--bag-ml", v)
        add(f"build-interval-{v}", *build, "--interval-h", v)
    for key in ("dir", "loop", "file", "bin", "empty", "deep", "deept", "notoml", "kind"):
        add(f"build-setting-{key}", *build, "--setting", f"{{{key}}}")
    add("build-setting-missing", *build, "--setting", "{missing}")
    add("build-setting-pump", *build, "--setting", str(PUMP_PROFILE))
    add("build-setting-empty-path", *build, "--setting", "")
    add("build-setting-under-file", *build, "--setting", "{file}/sub.toml")
    add("build-no-weight", "build", "--dose-mg-per-day", "600")
    add("build-both-doses", *build, "--dose-mg-per-kg-per-day", "8")
    add("build-hard-limit", "build", "--weight-kg", "2", "--dose-mg-per-day", "2000")
    add("build-unknown-flag", *build, "--frobnicate")

    # setting check|sign|install|show
    for key in ("dir", "loop", "bin", "empty", "deep", "deept", "notoml", "kind", "missing"):
        add(f"check-{key}", "setting", "check", f"{{{key}}}")
        add(f"sign-{key}", "setting", "sign", f"{{{key}}}", "--key", "{file}", "--role", "author")
        add(f"install-{key}", "setting", "install", f"{{{key}}}", "--db", "{d}/i.db",
            "--operator", "biomed-demo")  # fmt: skip
    add("check-under-file", "setting", "check", "{file}/x.toml")
    add("check-empty-path", "setting", "check", "")
    add("check-sc", "setting", "check", "{sc}")
    for key in ("dir", "loop", "bin", "empty", "missing", "file"):
        add(f"sign-key-{key}", "setting", "sign", str(SHIPPED), "--key", f"{{{key}}}",
            "--role", "author")  # fmt: skip
    add("sign-role", "setting", "sign", str(SHIPPED), "--key", "{file}", "--role", "boss")
    for key in ("dir", "loop", "foreign", "bin", "file"):
        add(f"install-db-{key}", "setting", "install", str(SHIPPED), "--db", f"{{{key}}}",
            "--operator", "biomed-demo")  # fmt: skip
        add(f"show-db-{key}", "setting", "show", "--db", f"{{{key}}}")
    add("install-db-under-file", "setting", "install", str(SHIPPED), "--db", "{file}/x.db",
        "--demo")  # fmt: skip
    add("install-no-operator", "setting", "install", str(SHIPPED), "--db", "{d}/new.db")
    add("install-unknown-op", "setting", "install", str(SHIPPED), "--db", "{db}",
        "--operator", "nobody")  # fmt: skip
    add("install-empty-op", "setting", "install", str(SHIPPED), "--db", "{db}", "--operator", "")
    add("install-unicode-op", "setting", "install", str(SHIPPED), "--db", "{db}",
        "--operator", "ßiomed\u202e")  # fmt: skip
    add("show-missing", "setting", "show", "--db", "{missing}")
    add("show-empty", "setting", "show", "--db", "")
    add("setting-none", "setting")
    add("setting-bogus", "setting", "bogus")

    # keys
    for key in ("dir", "loop", "file", "missing", "foreign"):
        add(f"keys-trust-db-{key}", "keys", "trust", "ed25519:AAAA", "--role", "author",
            "--db", f"{{{key}}}", "--operator", "biomed-demo")  # fmt: skip
        add(f"keys-list-{key}", "keys", "list", "--db", f"{{{key}}}")
        add(f"keys-trust-key-{key}", "keys", "trust", f"{{{key}}}", "--role", "author",
            "--db", "{db}", "--operator", "biomed-demo")  # fmt: skip
    for bad in ("", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:" + "A" * 10_000, "☃"):
        add(f"keys-trust-bad-{bad[:12]}", "keys", "trust", bad, "--role", "approver",
            "--db", "{db}", "--operator", "biomed-demo")  # fmt: skip
    add("keys-gen-dir", "keys", "generate", "{dir}")
    add("keys-gen-under-file", "keys", "generate", "{file}/k")
    add("keys-gen-missing-dir", "keys", "generate", "{d}/no/such/dir/k")
    add("keys-gen-empty", "keys", "generate", "")
    add("keys-trust-nurse", "keys", "trust", "ed25519:AAAA", "--role", "author", "--db", "{db}",
        "--operator", "rn-demo")  # fmt: skip

    # operator
    for bad_id in ("", " ", "a b", "x" * 10_000, "☃\n", "\t"):
        add(f"op-add-id-{bad_id[:8]!r}", "operator", "add", bad_id, "--role", "nurse",
            "--db", "{db}", "--by", "biomed-demo")  # fmt: skip
    for key in ("dir", "loop", "file", "foreign"):
        add(f"op-add-db-{key}", "operator", "add", "n1", "--role", "biomed", "--db", f"{{{key}}}")
        add(f"op-list-db-{key}", "operator", "list", "--db", f"{{{key}}}")
        add(f"op-remove-db-{key}", "operator", "remove", "n1", "--db", f"{{{key}}}",
            "--by", "biomed-demo")  # fmt: skip
    add("op-add-role", "operator", "add", "n1", "--role", "janitor", "--db", "{db}")
    add("op-add-no-by", "operator", "add", "n1", "--role", "nurse", "--db", "{db}")
    add("op-add-nurse-by", "operator", "add", "n1", "--role", "nurse", "--db", "{db}",
        "--by", "rn-demo")  # fmt: skip
    add("op-remove-unknown", "operator", "remove", "ghost", "--db", "{db}", "--by", "biomed-demo")
    add("op-list-missing", "operator", "list", "--db", "{missing}")

    # run (every bad value must be refused before the clock runs)
    run = ["run", "--sim", "--db", "{d}/run.db", "--dose-mg-per-day", "600", "--weight-kg",
           "70", "--operator", "rn-demo", "--until-h", "0"]  # fmt: skip
    for v in BAD_FLOATS + ["0", "-0", "1e-300", "1e6"]:
        add(f"run-speed-{v}", *run, "--speed", v)
    for v in ["nan", "inf", "-inf", "1e308", "-1", "", "abc", "1e999", "99999999"]:
        add(f"run-until-{v}", *run, "--until-h", v)
    for v in BAD_DECIMALS:
        add(f"run-dose-{v}", *run, "--dose-mg-per-day", v)
        add(f"run-weight-{v}", *run, "--weight-kg", v)
    for v in BAD_INTS + ["-1", "100"]:
        add(f"run-address-{v}", *run, "--address", v)
    for v in ["0", "7", "-1", "99999999999999999999", "abc"]:
        add(f"run-baud-{v}", *run, "--baud", v)
        add(f"run-bag-{v}", *run, "--bag-ml", v)
        add(f"run-interval-{v}", *run, "--interval-h", v)
    for v in ["-1", "256", "99999999999999999999", "nan"]:
        add(f"run-safe-timeout-{v}", *run, "--safe-timeout", v)
    for key in ("dir", "loop", "foreign", "bin", "file"):
        add(f"run-db-{key}", "run", "--sim", "--db", f"{{{key}}}", "--operator", "rn-demo",
            "--dose-mg-per-day", "600", "--weight-kg", "70")  # fmt: skip
    add("run-db-under-file", "run", "--sim", "--db", "{file}/x.db", "--operator", "rn-demo")
    add("run-db-empty", "run", "--sim", "--db", "", "--operator", "rn-demo")
    add("run-no-db", "run", "--sim")
    add("run-sim-and-port", "run", "--sim", "--port", "socket://x:1", "--db", "{db}")
    add("run-port-speed", "run", "--port", "socket://127.0.0.1:1", "--db", "{db}",
        "--speed", "10")  # fmt: skip
    add("run-empty-operator", *run[:-6], "--operator", "", "--weight-kg", "70")
    add("run-unknown-operator", *run[:-6], "--operator", "nobody")
    add("run-no-operator", "run", "--sim", "--db", "{d}/run.db", "--dose-mg-per-day", "600",
        "--weight-kg", "70")  # fmt: skip
    for key in ("dir", "loop", "bin", "empty", "deep", "notoml", "missing"):
        add(f"run-pump-{key}", *run, "--pump", f"{{{key}}}")
    add("run-pump-setting", *run, "--pump", str(SHIPPED))
    add("run-hard-limit", "run", "--sim", "--db", "{d}/hl.db", "--dose-mg-per-day", "2000",
        "--weight-kg", "2", "--operator", "rn-demo")  # fmt: skip

    # log / report
    for key in ("dir", "loop", "foreign", "bin", "file", "missing", "empty"):
        add(f"log-{key}", "log", "--db", f"{{{key}}}")
        add(f"log-verify-{key}", "log", "--db", f"{{{key}}}", "--verify")
        add(f"report-{key}", "report", f"{{{key}}}")
    add("log-empty-path", "log", "--db", "")
    add("log-event-unknown", "log", "--db", "{db}", "--event", "☃")
    add("report-empty-path", "report", "")
    add("report-out-under-file", "report", "{db}", "--out", "{file}/sub")

    # simulate / campaign
    for key in ("dir", "loop", "bin", "empty", "deep", "deept", "notoml", "missing",
                "nansc", "infsc", "hugesc", "kind"):  # fmt: skip
        add(f"simulate-{key}", "simulate", f"{{{key}}}")
        add(f"campaign-{key}", "campaign", f"{{{key}}}", "--runs", "2")
    add("simulate-empty-path", "simulate", "")
    add("simulate-under-file", "simulate", "{file}/s.toml")
    add("simulate-setting-as-scenario", "simulate", str(SHIPPED))
    for v in BAD_INTS + ["-1"]:
        add(f"simulate-seed-{v}", "simulate", "{sc}", "--seed", v)
        add(f"campaign-seed-{v}", "campaign", "{sc}", "--runs", "2", "--seed", v)
        add(f"campaign-runs-{v}", "campaign", "{sc}", "--runs", v)
        if v != "99999999999999999999":  # a huge worker count is capped, not refused
            add(f"campaign-workers-{v}", "campaign", "{sc}", "--runs", "2", "--workers", v)
    add("campaign-runs-0", "campaign", "{sc}", "--runs", "0")
    add("campaign-workers-0", "campaign", "{sc}", "--runs", "2", "--workers", "0")
    add("simulate-out-under-file", "simulate", "{sc}", "--out", "{file}/sub")
    add("simulate-out-file", "simulate", "{sc}", "--out", "{file}")
    add("campaign-out-under-file", "campaign", "{sc}", "--runs", "2", "--out", "{file}/sub")
    add("campaign-out-file", "campaign", "{sc}", "--runs", "2", "--out", "{file}")
    add("campaign-out-loop", "campaign", "{sc}", "--runs", "2", "--out", "{loop}/x")

    # trumpet
    tr = ["trumpet", "{csv}", "--rate-ml-per-h", "10"]
    for v in BAD_FLOATS + ["0", "-0", "1e-300", "1e6"]:
        add(f"trumpet-rate-{v}", "trumpet", "{csv}", "--rate-ml-per-h", v)
        add(f"trumpet-density-{v}", *tr, "--density-g-per-ml", v)
        add(f"trumpet-stated-{v}", *tr, "--stated-pct", v)
    for v in ["nan", "inf", "-1", "1e308", "abc"]:
        add(f"trumpet-start-{v}", *tr, "--analysis-start-min", v)
        add(f"trumpet-end-{v}", *tr, "--analysis-end-min", v)
    add("trumpet-start-after-end", *tr, "--analysis-start-min", "120", "--analysis-end-min", "60")
    add("trumpet-end-beyond-record", *tr, "--analysis-end-min", "100000")
    for key in ("hole", "nancsv", "onecsv", "nohead", "back", "bincsv", "hugecsv", "dir",
                "loop", "missing", "file", "empty"):  # fmt: skip
        add(f"trumpet-csv-{key}", "trumpet", f"{{{key}}}", "--rate-ml-per-h", "10")
    add("trumpet-csv-under-file", "trumpet", "{file}/x.csv", "--rate-ml-per-h", "10")
    add("trumpet-out-under-file", *tr, "--out", "{file}/sub")
    add("trumpet-out-file", *tr, "--out", "{file}")

    # pump / emulate (no pump is there: each is refused before or at the port)
    pump = ["pump", "--port", "socket://127.0.0.1:9"]
    for v in BAD_INTS + ["-1", "100"]:
        add(f"pump-address-{v}", *pump, "--address", v, "status")
        add(f"emulate-address-{v}", "emulate", "--address", v)
    for v in ["0", "7", "115200", "abc", "99999999999999999999"]:
        add(f"pump-baud-{v}", *pump, "--baud", v, "status")
    for v in ["-1", "256", "99999999999999999999"]:
        add(f"pump-safe-{v}", *pump, "--safe-timeout", v, "status")
    for v in ["nan", "inf", "-1", "0", "1e308", "abc", "", "1e-300"]:
        add(f"pump-rate-{v}", *pump, "rate", v)
        add(f"pump-vtbi-{v}", *pump, "vtbi", v)
    add("pump-run-value", *pump, "run", "5")
    add("pump-action", *pump, "explode")
    add("pump-no-port", "pump", "status")
    add("pump-dead-port", *pump, "status")
    add("pump-dir-port", "pump", "--port", "{dir}", "status")
    add("pump-bad-url", "pump", "--port", "bogus://nowhere", "status")
    add("pump-empty-port", "pump", "--port", "", "status")
    for link in ("tcp:99999999", "tcp:-1", "tcp:abc", "udp:5", "", "tcp:", "pty:x"):
        add(f"emulate-link-{link}", "emulate", "--link", link)
    add("emulate-model", "emulate", "--model", "NE9999")

    # console: argument parsing only (every case is refused before the screen starts)
    for v in BAD_FLOATS + ["0", "-0", "1e-300", "1e6"]:
        add(f"console-speed-{v}", "console", "--sim", "--db", "{d}/c.db", "--speed", v)
    for v in ["-1", "100", "99999999999999999999", "abc"]:
        add(f"console-address-{v}", "console", "--sim", "--address", v)
        add(f"console-safe-{v}", "console", "--sim", "--safe-timeout", v + "9")
        add(f"console-baud-{v}", "console", "--sim", "--baud", v)
    add("console-port-no-db", "console", "--port", "socket://127.0.0.1:9")
    add("console-auto-nurse-port", "console", "--port", "x", "--db", "{db}", "--auto-nurse")
    add("console-operator-empty", "console", "--sim", "--db", "{db}", "--operator", "")
    add("console-operator-space", "console", "--sim", "--db", "{db}", "--operator", "a b")
    for key in ("dir", "loop", "foreign", "file"):
        add(f"console-db-{key}", "console", "--sim", "--db", f"{{{key}}}")
    add("console-none", "console")

    # diagram and the frame
    add("diagram-extra", "diagram", "extra")
    add("no-command", "--frobnicate")
    add("unknown-command", "frobnicate")
    add("empty-command", "")
    return cases


CASES = _cases()


def test_at_least_300_bad_command_lines_across_every_command() -> None:
    commands = {argv[0] for _, argv in CASES if argv}
    wanted = {"build", "setting", "keys", "operator", "run", "log", "report", "simulate",
              "campaign", "trumpet", "pump", "emulate", "console", "diagram"}  # fmt: skip
    assert wanted <= commands
    assert len(CASES) >= 300
    assert len({name for name, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "argv"), CASES, ids=[n for n, _ in CASES])
def test_bad_command_line_is_one_line_and_an_exit_code(
    name: str,
    argv: list[str],
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    monkeypatch.setenv("PUMPCTL_OVERRIDE_SECRET", "demo")
    monkeypatch.setenv("PUMPCTL_NEW_OPERATOR_SECRET", "new-secret")
    monkeypatch.delenv("PUMPCTL_KEY_DIR", raising=False)
    real = [a.format(**files) if "{" in a and "}" in a and "=" not in a else a for a in argv]
    code, _out, err = run_cli(real, capsys)
    assert_one_line(code, err, real)


# -- specific contracts -------------------------------------------------------------


@pytest.mark.parametrize("key", ["setting", "pump"])
def test_a_nul_in_a_setting_or_pump_name_is_one_line(key, tmp_path, capsys):
    """A NUL is not a file name: the usual 'no such setting' line, not a ValueError."""
    example = Path(__file__).resolve().parent.parent / "examples" / "anakinra_72h.toml"
    text = example.read_text()
    old = {"setting": 'setting = "anakinra_continuous"', "pump": 'pump = "generic_lvp"'}[key]
    assert old in text
    sc = tmp_path / "nul.toml"
    sc.write_text(text.replace(old, old[:-1] + '\\u0000x"'))
    code, _out, err = run_cli(["simulate", str(sc), "--out", str(tmp_path / "out")], capsys)
    assert_one_line(code, err, ["simulate", str(sc)])
    assert f"no {'pump profile' if key == 'pump' else 'setting'} '" in err
    with pytest.raises(InputError, match="not a file"):
        (load_pump if key == "pump" else load_setting)("generic_lvp\x00")


def test_gravimetric_csv_with_a_two_hour_hole_names_the_gap(files, capsys):
    code, _out, err = run_cli(["trumpet", files["hole"], "--rate-ml-per-h", "10"], capsys)
    assert_one_line(code, err, ["trumpet"])
    assert code == 2
    assert "30 min" in err and "150 min" in err and "gap" in err


def test_trumpet_rate_1e308_and_stated_pct_nan_are_refused_up_front(files, capsys):
    for extra in (["--rate-ml-per-h", "1e308"], ["--rate-ml-per-h", "10", "--stated-pct", "nan"]):
        code, out, err = run_cli(["trumpet", files["csv"], *extra], capsys)
        assert code == 2 and out == "" and "allowed" in err, err
        assert "inf" not in out


def test_speed_and_until_refused_before_the_database_is_touched(files, capsys, monkeypatch):
    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    db = Path(files["d"]) / "untouched.db"
    for opt, v in (("--speed", "nan"), ("--speed", "inf"), ("--speed", "1e308"),
                   ("--until-h", "nan"), ("--until-h", "inf")):  # fmt: skip
        argv = ["run", "--sim", "--db", str(db), "--operator", "rn-demo", opt, v]
        code, _out, err = run_cli(argv, capsys)
        assert code == 2 and opt in err, err
        assert not db.exists() and not Path(str(db) + ".lease").exists()


def test_a_failed_first_run_saves_nothing(files, capsys, monkeypatch):
    """A refused first order leaves no speed, no lease and no run behind: a later run with
    another speed starts normally."""
    import shutil

    from pumpctl.eventlog import EventLog

    monkeypatch.setenv("PUMPCTL_OPERATOR_SECRET", "demo")
    db = Path(files["d"]) / "failed_first.db"
    shutil.copy(files["db"], db)
    with contextlib.suppress(FileNotFoundError):
        Path(str(db) + ".key").unlink()
    key = Path(files["db"] + ".key")
    if key.exists():
        shutil.copy(key, str(db) + ".key")
    before = sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name))
    argv = ["run", "--sim", "--db", str(db), "--operator", "rn-demo", "--speed", "3600",
            "--dose-mg-per-day", "2000", "--weight-kg", "2", "--until-h", "0.01"]  # fmt: skip
    code, _out, err = run_cli(argv, capsys)
    assert code in BAD_CODES and err.count("\n") == 1, err
    with EventLog(db, readonly=True) as log:
        assert log.meta_get("speed") is None
        assert log.meta_get("epoch_wall_s") is None
        assert log.meta_get("pump") is None
        assert not [e for e in log.events() if e.event == "program"]
    after = sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert not [n for n in after if n.endswith(".lease")] or before == after
    argv = ["run", "--sim", "--db", str(db), "--operator", "rn-demo", "--speed", "7200",
            "--dose-mg-per-day", "600", "--weight-kg", "70", "--until-h", "0.001"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "programmed 600 mg/day" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--sim", "--db", "{d}/sp.db", "--speed", "nan"],
        ["run", "--sim", "--db", "{d}/sp.db", "--until-h", "nan"],
        ["campaign", "{sc}", "--runs", "99999999999999999999"],
        ["simulate", "{loop}"],
        ["trumpet", "{hole}", "--rate-ml-per-h", "10"],
        ["setting", "check", "{deep}"],
        ["build", "--weight-kg", "70", "--dose-mg-per-day", "1e-300"],
        ["emulate", "--link", "tcp:99999999"],
    ],
)
def test_as_a_subprocess(argv, files):
    real = [a.format(**files) for a in argv]
    env = {**os.environ, "PUMPCTL_OPERATOR_SECRET": "demo"}
    proc = subprocess.run(
        [sys.executable, "-m", "pumpctl.cli", *real],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert_one_line(proc.returncode, proc.stderr, real)


# -- fuzzed files: TOML loaders and the CSV reader ----------------------------------


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            out += _leaves(v, (*path, k))
        return out
    if isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        out = []
        for i, v in enumerate(node):
            out += _leaves(v, (*path, i))
        return out
    return [path]


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    import copy

    new = copy.deepcopy(doc)
    node = new
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return new


def _wrong_types(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return ["yes", 1, [True]]
    if isinstance(value, int | float):
        return ["70", True, [value], {"x": 1}]
    if isinstance(value, str):
        return [1, True, [value], {"x": "y"}]
    if isinstance(value, list):
        return ["x", 1, {"x": 1}]
    return ["x", 1]


def _load_each(loader: Any, base: dict[str, Any], tmp: Path) -> None:
    """Every key replaced by every wrong type: an InputError naming the key, or a valid load."""
    n = 0
    for path in _leaves(base):
        if path[-1] in ("dist",):
            continue
        for bad in _wrong_types(_get(base, path)):
            f = tmp / f"w{n}.toml"
            n += 1
            f.write_text(dump_toml(_replaced(base, path, bad)))
            key = str(next(p for p in reversed(path) if isinstance(p, str)))
            try:
                loader(f)
            except InputError as exc:
                msg = str(exc)
                assert "\n" not in msg and key in msg, (path, bad, msg)
            else:  # a free-text key that takes a number's text is not an error
                assert isinstance(bad, str) or path[-1] in ("name",), (path, bad)
    assert n > 20


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def test_scenario_every_key_with_a_wrong_type_is_named(tmp_path):
    base = tomllib.loads(SCENARIO)
    _load_each(load_scenario, base, tmp_path)


def test_setting_every_key_with_a_wrong_type_is_named(tmp_path):
    base = tomllib.loads(SHIPPED.read_text())
    _load_each(load_setting, base, tmp_path)


def test_pump_profile_every_key_with_a_wrong_type_is_named(tmp_path):
    base = tomllib.loads(PUMP_PROFILE.read_text())
    _load_each(load_pump, base, tmp_path)


@pytest.mark.parametrize("loader", [load_scenario, load_setting, load_pump, load_any])
@pytest.mark.parametrize("depth", [50, 1_000, 100_000])
def test_deeply_nested_toml_is_one_line(tmp_path, loader, depth):
    for i, text in enumerate(
        ("a = " + "[" * depth + "]" * depth, "a = " + "{b = " * depth + "1" + "}" * depth)
    ):
        f = tmp_path / f"deep{i}.toml"
        f.write_text(text + "\n")
        with pytest.raises(InputError) as info:
            loader(f)
        assert "\n" not in str(info.value)


_scalars = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.booleans()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "scenario",
        "patient",
        "order",
        "nurse",
        "pharmacy",
        "faults",
        "titrations",
        "expect",
        "kind",
        "name",
        "drug",
        "limits",
        "rate",
        "bags",
        "serial",
        "dist",
        "x",
    ]  # fmt: skip
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _mutated_docs() -> st.SearchStrategy[dict[str, Any]]:
    """Start from a valid document and replace or add keys at random depths."""
    bases = [tomllib.loads(SCENARIO), tomllib.loads(SHIPPED.read_text()),
             tomllib.loads(PUMP_PROFILE.read_text())]  # fmt: skip

    @st.composite
    def mutate(draw: st.DrawFn) -> dict[str, Any]:
        doc = draw(st.sampled_from(bases))
        for _ in range(draw(st.integers(1, 4))):
            leaves = _leaves(doc)
            path = draw(st.sampled_from(leaves))
            if draw(st.booleans()):
                doc = _replaced(doc, path, draw(_values))
            else:
                doc = {**doc, draw(_keys): draw(_values)}
        return doc

    return mutate()


def _loads_or_one_line(loader: Any, path: Path) -> None:
    try:
        loader(path)
    except InputError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(doc=_mutated_docs())
def test_fuzzed_toml_documents_load_or_fail_in_one_line(tmp_path_factory, doc):
    f = tmp_path_factory.mktemp("fz") / "doc.toml"
    f.write_text(dump_toml(doc))
    for loader in (load_scenario, load_setting, load_pump, load_any):
        _loads_or_one_line(loader, f)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_as_toml_is_one_line(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("ft") / "t.toml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    for loader in (load_scenario, load_setting, load_pump, load_any):
        _loads_or_one_line(loader, f)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_toml_and_csv_are_one_line(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("fb")
    f = d / "b.toml"
    f.write_bytes(data)
    for loader in (load_scenario, load_setting, load_pump, load_any, read_gravimetric_csv):
        _loads_or_one_line(loader, f)


_cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=6),
    st.just(""),
)


@FUZZ
@given(
    header=st.sampled_from(["time_s,mass_g", "t_min,volume_ml", "time_s", "mass_g,time_s", ""]),
    rows=st.lists(st.lists(_cells, min_size=0, max_size=3), max_size=30),
)
def test_fuzzed_gravimetric_csv_is_read_or_refused_in_one_line(tmp_path_factory, header, rows):
    f = tmp_path_factory.mktemp("fc") / "g.csv"
    body = "\n".join(",".join(c.replace(",", ";").replace("\n", " ") for c in r) for r in rows)
    f.write_text(header + "\n" + body + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        t_min, vol = read_gravimetric_csv(f)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(t_min) >= 3 and all(math.isfinite(x) for x in [*t_min, *vol])


@FUZZ
@given(
    step_s=st.sampled_from([1.0, 10.0, 30.0, 60.0]),
    hole_min=st.floats(min_value=30, max_value=600),
)
def test_any_hole_of_half_an_hour_or_more_is_refused(tmp_path_factory, step_s, hole_min):
    f = tmp_path_factory.mktemp("fh") / "g.csv"
    times = [i * step_s for i in range(int(3600 / step_s))]
    times += [times[-1] + hole_min * 60 + i * step_s for i in range(1, 20)]
    f.write_text("time_s,volume_ml\n" + "".join(f"{t},{t / 360:.5f}\n" for t in times))
    with pytest.raises(InputError, match="gap"):
        read_gravimetric_csv(f)
