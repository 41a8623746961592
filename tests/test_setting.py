"""Setting and pump-profile validation: every broken file names the key; versions are stable."""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pumpctl.cli import main
from pumpctl.errors import InputError
from pumpctl.setting import load_pump, load_setting, profiles_dir
from tests.helpers import dump_toml

SETTING = profiles_dir() / "anakinra_continuous.toml"
LVP = profiles_dir() / "pumps" / "generic_lvp.toml"


def mutate(tmp_path: Path, src: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert re.search(old, text, re.M), old
    out = tmp_path / src.name
    out.write_text(re.sub(old, new, text, count=1, flags=re.M))
    return out


def test_shipped_files_load(setting, lvp, ne1000_model):
    assert setting.name == "anakinra IV infusion"
    assert str(setting.syringe_ml) == "0.67" and setting.bag_sizes_ml == (50, 100, 250)
    assert setting.limits["upper_hard"].unit == "mg_per_kg_per_h"
    assert lvp.reservoir_change == "running" and ne1000_model.reservoir_change == "stopped"


def test_version_ignores_comments_and_layout(tmp_path):
    text = SETTING.read_text()
    other = tmp_path / "s.toml"
    other.write_text("# a comment\n" + text.replace(" = ", "=") + "\n\n")
    assert load_setting(other).version == load_setting(SETTING).version
    changed = mutate(tmp_path, SETTING, r"^beyond_use_h = 12", "beyond_use_h = 11")
    assert load_setting(changed).version != load_setting(SETTING).version


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        (r"^syringe_mg = 100", 'syringe_mg = "100"', "drug.syringe_mg"),
        (r"^\[drug\]", "[drug]\ncolour = 'red'", "drug.colour"),
        (r"^upper_soft_mg_per_day = 2400", "upper_soft_mg_per_day = 99999", "limits.upper_soft"),
        (r"^syringe_ml = 0.67", "", "drug.syringe_ml"),
        (r"^name = \"anakinra\"", "name = [unclosed", "TOML"),
        (
            r"^concentration_min_mg_per_ml = 1.0",
            "concentration_min_mg_per_ml = -1",
            "concentration_min",
        ),
        (r"^bag_sizes_ml = .*", "bag_sizes_ml = [50, 100, 7]", "bag_sizes_ml"),
        (r"^default_bag_ml = 100", "default_bag_ml = 75", "default_bag_ml"),
        (r"^escalate_min = 10", "escalate_min = 20", "watchdog.escalate_min"),
        (r"^silence_max_min = 2", "silence_max_min = 5", "watchdog.silence_max_min"),
        (r"^schema_version = 1", "schema_version = 2", "schema_version"),
        (r"^upper_hard_mg_per_kg_per_h = 2", "", "limits.upper_hard"),
        (r"^light_protection = true", "light_protection = 1", "handling.light_protection"),
    ],
)
def test_broken_setting_names_the_key(tmp_path, capsys, old, new, key):
    bad = mutate(tmp_path, SETTING, old, new)
    with pytest.raises(InputError, match=re.escape(key)) as exc:
        load_setting(bad)
    assert str(bad) in str(exc.value)
    assert main(["setting", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        (r"^change = \"running\"", 'change = "sideways"', "reservoir.change"),
        (r"^min_ml_per_h = 0.1", "min_ml_per_h = 1000.0", "rate.min_ml_per_h"),
        (r"^bias_pct = 0.8", "bias_pct = 80", "accuracy.bias_pct"),
        (r"^\[air\]", "[air]\nsensor = 1", "air.sensor"),
    ],
)
def test_broken_pump_profile_names_the_key(tmp_path, old, new, key):
    with pytest.raises(InputError, match=re.escape(key)):
        load_pump(mutate(tmp_path, LVP, old, new))


def test_check_prints_versions(capsys):
    assert main(["setting", "check", str(SETTING), str(LVP)]) == 0
    out = capsys.readouterr().out
    assert out.count("version sha256:") == 2


def test_unknown_setting_name_lists_shipped():
    with pytest.raises(InputError, match="anakinra_continuous"):
        load_setting("no_such_setting")


def test_check_refuses_a_bag_that_does_not_fit_the_reservoir(capsys):
    ne = profiles_dir() / "pumps" / "newera_ne1000.toml"
    assert main(["setting", "check", str(SETTING), str(ne)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "60 mL reservoir" in err[0] and "New Era NE-1000" in err[0]
    syringe = profiles_dir() / "anakinra_continuous_syringe.toml"
    assert main(["setting", "check", str(syringe), str(ne)]) == 0


def test_scenario_with_a_bag_bigger_than_the_reservoir_is_bad_input(tmp_path, capsys):
    from tests.helpers import write_scenario

    sc = write_scenario(tmp_path, pump="newera_ne1000")
    assert main(["simulate", str(sc), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reservoir" in err[0]


def test_hang_by_rule_checked_at_install(tmp_path):
    bad = mutate(tmp_path, SETTING, r"^pharmacy_request_min = 60", "pharmacy_request_min = 300")
    with pytest.raises(InputError, match="beyond-use"):
        load_setting(bad)


def test_check_json_lists_every_file_and_the_reservoir_problem(capsys):
    import json

    ne = profiles_dir() / "pumps" / "newera_ne1000.toml"
    assert main(["setting", "check", str(SETTING), str(ne), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1 and doc["ok"] is False
    assert [f["kind"] for f in doc["files"]] == ["setting", "pump"]
    assert len(doc["problems"]) == 1 and "reservoir" in doc["problems"][0]


# -- every key the product reads is required ------------------------------------------
NE1000 = profiles_dir() / "pumps" / "newera_ne1000.toml"
#: Keys of the shipped files that docs/settings.md documents as optional (with what their
#: absence means); every other key, and every table, is required.
OPTIONAL = {"care_area", "build.overfill_ml"}


def _paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _paths(value, f"{prefix}{key}.")
    return out


def _without(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    node = new
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    del node[last]
    return new


def _required(src: Path) -> list[tuple[Path, str]]:
    raw = tomllib.loads(src.read_text())
    return [(src, p) for p in _paths(raw) if p not in OPTIONAL]


@pytest.mark.parametrize(
    ("src", "key"),
    _required(SETTING) + _required(LVP) + _required(NE1000),
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_every_missing_key_is_one_line_naming_it(tmp_path, capsys, src, key):
    """No key is silently defaulted: removing any one is exit 2 and one line naming it."""
    bad = tmp_path / src.name
    bad.write_text(dump_toml(_without(tomllib.loads(src.read_text()), key)))
    assert main(["setting", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    named = key.split("_mg_per")[0] if key.startswith("limits.") else key  # LEVEL_<unit>
    assert len(err) == 1, err
    assert f"missing key '{named}" in err[0] and "allowed" in err[0], err[0]


def test_optional_keys_mean_what_the_docs_say(tmp_path):
    """The few optional keys: no overfill table is no overfill; no care area, no
    [dosing], no measure are a label left out, mg/day orders only, whole syringes."""
    raw = tomllib.loads(SETTING.read_text())
    f = tmp_path / "s.toml"
    f.write_text(dump_toml(_without(_without(raw, "build.overfill_ml"), "care_area")))
    s = load_setting(f)
    assert all(s.overfill_ml(bag) == 0 for bag in s.bag_sizes_ml)
    assert s.dose_forms == "mg_per_day" and s.measure == "whole_syringes"
    shipped = load_setting(SETTING)
    assert [shipped.overfill_ml(b) for b in shipped.bag_sizes_ml] == [5, 8, 15]


def test_missing_watchdog_plan_key_is_not_replaced_by_a_weaker_default(tmp_path):
    """The tester's case: no plan_percentile used to plan at the 95th percentile (99.9
    shipped) without a word."""
    bad = mutate(tmp_path, SETTING, r"^plan_percentile = 99.9\n", "")
    with pytest.raises(InputError) as exc:
        load_setting(bad)
    assert str(exc.value) == (
        f"{bad}: missing key 'watchdog.plan_percentile'; allowed: a number >= 50 and <= 100"
    )


# -- a bag must be able to prime the pump's line ------------------------------------
PEDIATRIC = profiles_dir() / "anakinra_continuous_pediatric.toml"


def test_check_refuses_a_bag_that_cannot_prime_the_line(capsys):
    """Pediatric 10 mL bags (10.067 mL at the least) on the LVP's 15 mL line: the first
    bag's VTBI would be (10.067 - 15) / 1.05 < 0. Refused by `setting check SETTING PUMP`."""
    assert main(["setting", "check", str(PEDIATRIC), str(LVP)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "a 10 mL bag may hold only 10.067 mL" in err[0]
    assert "15 mL line of pump 'Generic LVP'" in err[0]
    assert "allowed: bag sizes that always hold at least 15.105 mL" in err[0]


def test_prime_check_uses_the_controllers_vtbi_figures(setting, lvp):
    """The smallest adult bag (50 mL + 5 overfill + one 0.67 mL syringe = 55.67 mL) at
    +/-5 % and a 0.1 mL step: a 55.5 mL prime leaves 0.1 mL to infuse, 55.6 mL nothing."""
    from pumpctl.setting import check_fits, programmable_vtbi_ml, smallest_content_ml

    assert smallest_content_ml(setting, 50) == Decimal("55.67")
    assert programmable_vtbi_ml(55.67, 55.5, 5.0, 0.1) == pytest.approx(0.1)
    check_fits(setting, dataclasses.replace(lvp, prime_ml=55.5))
    with pytest.raises(InputError, match="a 50 mL bag may hold only 55.67 mL"):
        check_fits(setting, dataclasses.replace(lvp, prime_ml=55.6))


def test_scenario_whose_bag_cannot_prime_the_line_is_bad_input(tmp_path, capsys):
    """The tester's scenario: 2.5 kg, 30 mg/day in 10 mL bags, pediatric setting, LVP."""
    from tests.helpers import write_scenario

    sc = write_scenario(tmp_path, duration_h=24, dose=30)
    text = sc.read_text().replace('"anakinra_continuous"', '"anakinra_continuous_pediatric"')
    sc.write_text(text.replace("bag_ml = 100", "bag_ml = 10").replace("= 70\n", "= 2.5\n"))
    assert main(["simulate", str(sc), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot prime the 15 mL line" in err[0], err


def test_the_pediatric_setting_has_a_shipped_pump_whose_line_its_bags_can_prime(capsys):
    """The standard 15 mL set is refused for the pediatric setting's 10 mL bags; the
    microbore profile, otherwise the same pump, takes every bag size."""
    from pumpctl.setting import check_fits

    ped = load_setting(profiles_dir() / "anakinra_continuous_pediatric.toml")
    micro = load_pump(profiles_dir() / "pumps" / "generic_lvp_microbore.toml")
    std = load_pump(profiles_dir() / "pumps" / "generic_lvp.toml")
    check_fits(ped, micro)  # no refusal
    with pytest.raises(InputError, match="10 mL bag"):
        check_fits(ped, std)
    assert micro.prime_ml < float(min(ped.bag_sizes_ml)) < std.prime_ml
    assert micro.limits == std.limits and micro.bias_pct == std.bias_pct
