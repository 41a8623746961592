"""Test helpers: a controller on the simulated pump and small scenario files."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from pumpctl import signing
from pumpctl.cli import main
from pumpctl.clock import SimClock
from pumpctl.controller import Controller
from pumpctl.drivers.sim import SimDriver
from pumpctl.eventlog import MemoryEventLog
from pumpctl.order import Order
from pumpctl.setting import DrugSetting, PumpModel, load_setting, profiles_dir

SHIPPED_SETTING = profiles_dir() / "anakinra_continuous.toml"

BASE_SCENARIO = """
[scenario]
duration_h = {duration_h}
seed = 1
setting = "anakinra_continuous"
pump = "{pump}"

[patient]
weight_kg = 70

[order]
dose_mg_per_day = {dose}
bag_ml = 100
"""


def write_scenario(
    tmp: Path,
    extra: str = "",
    *,
    duration_h: float = 72,
    dose: float = 600,
    pump: str = "generic_lvp",
    name: str = "s.toml",
) -> Path:
    """A scenario file with the default order plus ``extra`` TOML."""
    p = tmp / name
    p.write_text(BASE_SCENARIO.format(duration_h=duration_h, dose=dose, pump=pump) + extra)
    return p


class Rig:
    """A controller on a simulated pump and clock, with the setting installed."""

    def __init__(
        self,
        setting: DrugSetting,
        model: PumpModel,
        *,
        install: bool = True,
        poll_s: float | None = None,
    ) -> None:
        self.clock = SimClock()
        self.log = MemoryEventLog()
        if install:
            self.log.install_setting(setting, "biomed")
        self.driver = SimDriver(model, self.clock)
        self.ctl = Controller(
            self.clock,
            self.driver,
            self.log,
            setting,
            model=model,
            poll_s=poll_s,
        )

    def order(self, dose: str = "600", weight: str = "70", **kw: object) -> Order:
        return Order(Decimal(dose), Decimal(weight), bag_ml=100, **kw)  # type: ignore[arg-type]

    def deliver_next(self) -> None:
        assert self.ctl.bag_compounded("pharm") is None
        assert self.ctl.bag_delivered("tech") is None

    def connect_next(self) -> None:
        nb = self.ctl.next_bag
        assert nb is not None
        self.driver.world("connect_bag", nb.content_ml, nb.real_conc_mg_per_ml, f"bag {nb.n}")

    def start_infusion(self, dose: str = "600") -> None:
        """Program, deliver, prime and start (all at the current time)."""
        assert self.ctl.program(self.order(dose), "md1") is None
        self.deliver_next()
        self.connect_next()
        assert self.ctl.prime("rn1", light_protected=True) is None
        assert self.ctl.primed("rn1") is None
        assert self.ctl.start("rn1") is None

    def events(self, name: str) -> list:
        return [e for e in self.log.events() if e.event == name]


def signed_variant(tmp: Path, *edits: tuple[str, str], name: str = "lib.toml") -> Path:
    """The shipped setting with ``edits`` (old, new text), signed by the demo keys."""
    text = SHIPPED_SETTING.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / name
    path.write_text(text)
    for role in signing.SIGN_ROLES:
        key = signing.DEMO_KEY_DIR / f"demo_{role}.key"
        assert main(["setting", "sign", str(path), "--key", str(key), "--role", role]) == 0
    return path


def db_with_pending_library(
    tmp: Path, *edits: tuple[str, str], run_h: float | None = None
) -> tuple[Path, DrugSetting]:
    """A DEMO database with a run of 600 mg/day at 70 kg by ``rn-demo`` and, installed
    after it by ``biomed-demo``, the shipped setting with ``edits``: pending.

    ``run_h``: the run goes on ``pumpctl run --sim --speed 3600`` for that many hours
    (staff simulated); None: only programmed, at speed 1. The caller sets
    ``PUMPCTL_OPERATOR_SECRET=demo``.
    """
    from pumpctl.session import open_session

    db = tmp / "run.db"
    assert main(["setting", "install", str(SHIPPED_SETTING), "--db", str(db), "--demo"]) == 0
    if run_h is None:
        sess = open_session(db, speed=1.0)
        try:
            assert sess.controller.program(Order(Decimal(600), Decimal(70)), "rn-demo") is None
        finally:
            sess.close()
    else:
        run = ["run", "--sim", "--db", str(db), "--speed", "3600", "--until-h", str(run_h)]
        order = ["--dose-mg-per-day", "600", "--weight-kg", "70", "--operator", "rn-demo"]
        assert main([*run, *order]) == 0
    lib = signed_variant(tmp, *edits)
    assert main(["setting", "install", str(lib), "--db", str(db), "--operator", "biomed-demo"]) == 0
    return db, load_setting(lib)


class FakePort:
    """The receive side of a fake serial port: bytes queued in ``rx`` and read from it as
    pyserial's ``Serial`` would. Subclasses decide what a ``write`` makes arrive."""

    def __init__(self, port: str) -> None:
        self.rx = bytearray()
        self.timeout: float | None = None
        self.port = port
        self.closed = False

    def write(self, data: bytes) -> int:
        raise NotImplementedError

    @property
    def in_waiting(self) -> int:
        return len(self.rx)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self.rx[:size])
        del self.rx[:size]
        return out

    def close(self) -> None:
        self.closed = True


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dump_toml(doc: dict[str, Any]) -> str:
    """A tiny TOML writer (inline tables), enough for the documents these tests make."""
    return "".join(f'"{k}" = {_toml_value(v)}\n' for k, v in doc.items())
