"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpctl.setting import DrugSetting, PumpModel, load_pump, load_setting

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def setting() -> DrugSetting:
    return load_setting("anakinra_continuous")


@pytest.fixture(scope="session")
def lvp() -> PumpModel:
    return load_pump("generic_lvp")


@pytest.fixture(scope="session")
def ne1000_model() -> PumpModel:
    return load_pump("newera_ne1000")
