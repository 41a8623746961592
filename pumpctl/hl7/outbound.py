"""What the pump tells the hospital: PCD-01 status, PCD-10 infusion events, PCD-04 alarms.

``PumpReporter`` listens to the controller (``controller.listeners``) and turns each
event into zero or more messages through ``ROUTES``, the one table that maps controller
event names to IHE transactions; periodic ``ORU^R01`` status comes from
``controller.snapshot()`` on the controller's clock. Messages go to a ``sink`` (the
outbox of ``pumpctl hl7 serve``, or the stream file of ``pumpctl simulate --hl7-out``).

Codes: MDC terms carry the numeric code where the IHE PCD examples publish one; MDC terms
whose number pumpctl could not confirm are sent with code ``0`` and their MDC reference
id, as the IHE PCD Technical Framework does for codes pending; pumpctl's own concepts use
the local coding system ``99PCTL`` (listed in docs/hl7.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pumpctl.hl7 import codec
from pumpctl.hl7.codec import seg

LOCAL = "99PCTL"

# (code, reference id, coding system): verified numeric MDC codes from the IHE PCD examples.
MDC_DEV_PUMP_INFUS_MDS = ["69985", "MDC_DEV_PUMP_INFUS_MDS", "MDC"]
MDC_DEV_PUMP_INFUS_VMD = ["69986", "MDC_DEV_PUMP_INFUS_VMD", "MDC"]
MDC_DEV_PUMP_INFUS_CHAN_DELIVERY = ["126978", "MDC_DEV_PUMP_INFUS_CHAN_DELIVERY", "MDC"]
MDC_PUMP_STAT = ["184508", "MDC_PUMP_STAT", "MDC"]
MDC_FLOW_FLUID_PUMP = ["157784", "MDC_FLOW_FLUID_PUMP", "MDC"]
MDC_FLOW_FLUID_PUMP_CURRENT = ["158014", "MDC_FLOW_FLUID_PUMP_CURRENT", "MDC"]
MDC_VOL_FLUID_TBI = ["157884", "MDC_VOL_FLUID_TBI", "MDC"]
MDC_VOL_FLUID_DELIV = ["157864", "MDC_VOL_FLUID_DELIV", "MDC"]
MDC_VOL_FLUID_TBI_REMAIN = ["157872", "MDC_VOL_FLUID_TBI_REMAIN", "MDC"]
MDC_TIME_PD_REMAIN = ["157916", "MDC_TIME_PD_REMAIN", "MDC"]
MDC_DRUG_NAME_LABEL = ["184514", "MDC_DRUG_NAME_LABEL", "MDC"]
MDC_CONC_DRUG = ["157760", "MDC_CONC_DRUG", "MDC"]
MDC_RATE_DOSE = ["157924", "MDC_RATE_DOSE", "MDC"]
MDC_PUMP_DRUG_LIBRARY_VERSION = ["184517", "MDC_PUMP_DRUG_LIBRARY_VERSION", "MDC"]
MDC_PUMP_DRUG_LIBRARY_CARE_AREA = ["184516", "MDC_PUMP_DRUG_LIBRARY_CARE_AREA", "MDC"]
MDC_ATTR_PT_WEIGHT = ["68063", "MDC_ATTR_PT_WEIGHT", "MDC"]
MDC_ATTR_EVT_COND = ["68487", "MDC_ATTR_EVT_COND", "MDC"]
MDC_ATTR_EVT_SOURCE = ["68488", "MDC_ATTR_EVT_SOURCE", "MDC"]
MDC_EVT_ALARM = ["196616", "MDC_EVT_ALARM", "MDC"]
MDC_ATTR_ALERT_SOURCE = ["68480", "MDC_ATTR_ALERT_SOURCE", "MDC"]
MDC_ATTR_EVENT_PHASE = ["68481", "MDC_ATTR_EVENT_PHASE", "MDC"]
MDC_ATTR_ALARM_STATE = ["68482", "MDC_ATTR_ALARM_STATE", "MDC"]
MDC_ATTR_ALARM_INACTIVATION_STATE = ["68483", "MDC_ATTR_ALARM_INACTIVATION_STATE", "MDC"]
PCTL_STATE = ["9001", "PCTL_CONTROLLER_STATE", LOCAL]
PCTL_BAG_NUMBER = ["9002", "PCTL_BAG_NUMBER", LOCAL]
PCTL_EVENT_DETAIL = ["9003", "PCTL_EVENT_DETAIL", LOCAL]

UNIT_ML_PER_H = ["265266", "MDC_DIM_MILLI_L_PER_HR", "MDC", "mL/h", "mL/h", "UCUM"]
UNIT_ML = ["263762", "MDC_DIM_MILLI_L", "MDC", "mL", "mL", "UCUM"]
UNIT_MIN = ["264352", "MDC_DIM_MIN", "MDC", "min", "min", "UCUM"]
UNIT_MG_PER_ML = ["264306", "MDC_DIM_MILLI_G_PER_ML", "MDC", "mg/mL", "mg/mL", "UCUM"]
UNIT_KG = ["263875", "MDC_DIM_KILO_G", "MDC", "kg", "kg", "UCUM"]
UNIT_MG_PER_DAY = ["mg/d", "mg/d", "UCUM"]

DEC_PROFILE = ["IHE_PCD_001", "IHE PCD", "1.3.6.1.4.1.19376.1.6.1.1.1", "ISO"]
IPEC_PROFILE = ["IHE_PCD_010", "IHE PCD", "1.3.6.1.4.1.19376.1.6.4.10", "ISO"]
ACM_PROFILE = ["IHE_PCD_ACM_001", "IHE PCD", "1.3.6.1.4.1.19376.1.6.4.4.1", "ISO"]

#: PCD-10 infusion events (MDC_ATTR_EVT_COND values).
INFUSION_EVENTS: dict[str, list[str]] = {
    "delivery_start": ["197288", "MDC_EVT_PUMP_DELIV_START", "MDC"],
    "delivery_stop": ["0", "MDC_EVT_PUMP_DELIV_STOP", "MDC"],
    "delivery_complete": ["0", "MDC_EVT_PUMP_DELIV_COMP", "MDC"],
    "bag_change": ["9101", "PCTL_EVT_BAG_CHANGE", LOCAL],
}

#: PCD-04 alert codes by controller alarm kind, and the IHE alert type (ST technical,
#: SA advisory). Kinds missing here are sent as 9299 PCTL_EVT_ALARM_<KIND>.
ALARM_CODES: dict[str, tuple[list[str], str]] = {
    "occlusion": (["196940", "MDC_EVT_FLUID_LINE_OCCL", "MDC"], "ST"),
    "air_in_line": (["0", "MDC_EVT_FLUID_LINE_AIR", "MDC"], "ST"),
    "pump_failure": (["0", "MDC_EVT_MALF", "MDC"], "ST"),
    "battery_low": (["0", "MDC_EVT_BATT_LO", "MDC"], "ST"),
    "battery_depleted": (["0", "MDC_EVT_BATT_DEPL", "MDC"], "ST"),
    "bag_empty": (["9201", "PCTL_EVT_BAG_EMPTY", LOCAL], "ST"),
    "pump_reset": (["9202", "PCTL_EVT_PUMP_RESET", LOCAL], "ST"),
    "power_loss": (["9203", "PCTL_EVT_MAINS_LOST", LOCAL], "ST"),
    "comm_loss": (["9204", "PCTL_EVT_PUMP_COMM_LOST", LOCAL], "ST"),
    "line_cannot_start": (["9205", "PCTL_EVT_LINE_CANNOT_START", LOCAL], "ST"),
    "pharmacy_request": (["9211", "PCTL_EVT_WD_PHARMACY_REQUEST", LOCAL], "SA"),
    "next_bag_not_at_bedside": (["9212", "PCTL_EVT_WD_BAG_NOT_AT_BEDSIDE", LOCAL], "SA"),
    "prepare_bag_change": (["9213", "PCTL_EVT_WD_PREPARE_BAG_CHANGE", LOCAL], "SA"),
    "no_bag_ready": (["9214", "PCTL_EVT_WD_NO_BAG_READY", LOCAL], "SA"),
    "bag_past_hang_by": (["9215", "PCTL_EVT_BAG_PAST_HANG_BY", LOCAL], "SA"),
    "bag_beyond_use": (["9216", "PCTL_EVT_BAG_BEYOND_USE", LOCAL], "SA"),
    "log_unavailable": (["9221", "PCTL_EVT_LOG_UNAVAILABLE", LOCAL], "ST"),
    "log_tampered": (["9222", "PCTL_EVT_LOG_TAMPERED", LOCAL], "ST"),
}
PRIORITY_FLAG = {"high": "PH", "medium": "PM", "low": "PL"}


@dataclass(frozen=True)
class Route:
    """One row of the event table: controller ``event`` (+ a test on its detail) -> output.

    ``action`` is ``"infusion"`` (PCD-10, ``arg`` a key of INFUSION_EVENTS), ``"alert"``
    (PCD-04, ``arg`` the phase) or ``"none"`` (deliberately not reported).
    """

    event: str
    when: Callable[[dict[str, Any]], bool]
    action: str
    arg: str = ""


def _always(_d: dict[str, Any]) -> bool:
    return True


#: Controller event -> HL7. First matching row wins; an event with no row is not reported.
ROUTES: tuple[Route, ...] = (
    Route(
        "state",
        lambda d: d.get("to") == "infusing" and d.get("trigger") in ("start", "resume"),
        "infusion",
        "delivery_start",
    ),
    Route(
        "state",
        lambda d: d.get("trigger") == "fault" and d.get("cause") == "bag_empty",
        "infusion",
        "delivery_complete",
    ),
    Route("state", lambda d: d.get("trigger") in ("fault", "stop"), "infusion", "delivery_stop"),
    Route(
        "state",
        lambda d: d.get("trigger") == "begin_bag_change" and d.get("reservoir_change") == "stopped",
        "infusion",
        "delivery_stop",
    ),
    Route("bag_hung", lambda d: int(d.get("bag") or 1) > 1, "infusion", "bag_change"),
    Route("alarm", _always, "alert", "start"),
    Route("alarm_acknowledged", _always, "alert", "continue"),
    Route("alarm_silenced", _always, "alert", "continue"),
    Route("alarm_reannunciated", _always, "alert", "continue"),
    Route("alarm_cleared", _always, "alert", "end"),
    # A watchdog stage that raises an alert is reported by its "alarm" row; the stage
    # event itself and the gap bookkeeping are covered by the rows above.
    Route("watchdog", _always, "none"),
    Route("gap_start", _always, "none"),
    Route("gap_end", _always, "none"),
)


def obx(
    n: int | str,
    vtype: str | None,
    code: list[str],
    sub_id: str,
    value: object = None,
    unit: list[str] | None = None,
    *,
    status: str = "R",
    flags: tuple[str, ...] | None = None,
    when: str | None = None,
    device: list[str | None] | None = None,
) -> str:
    """One OBX: set id, value type, code, containment sub-id (OBX-4), value, unit, OBX-8
    abnormal flags, OBX-11 status, OBX-14 time and OBX-18 equipment instance."""
    return seg(
        "OBX",
        n,
        vtype,
        code,
        sub_id,
        value,  # type: ignore[arg-type]
        unit,
        None,
        flags,
        None,
        None,
        status,
        None,
        None,
        when,
        None,
        None,
        None,
        device,
    )


def route(event: str, detail: dict[str, Any]) -> Route | None:
    """The table row for one controller event, or None when it is not reported."""
    for r in ROUTES:
        if r.event == event and r.when(detail):
            return None if r.action == "none" else r
    return None


@dataclass(frozen=True)
class Outbound:
    """One message for the receiver."""

    kind: str  # PCD-01, PCD-04, PCD-10, RRG
    control_id: str
    t_s: float
    er7: str


@dataclass
class OrderContext:
    """What the accepted PCD-03 order said about the patient and the order (echoed)."""

    patient: str = ""  # the PID segment as received
    placer_order: str = ""
    receiving_app: str = ""


class PumpReporter:
    """Turns controller events and snapshots into PCD-01/04/10 messages for ``sink``."""

    def __init__(
        self,
        controller: Any,
        clock: Any,
        sink: Callable[[Outbound], None],
        *,
        device_id: str,
        new_id: Callable[[], str],
        status_period_s: float | None = None,
        context: OrderContext | None = None,
        epoch_s: float | None = None,
    ) -> None:
        self.ctl = controller
        self.epoch_s = epoch_s  # wall time of clock t=0 (default: the clock's own epoch)
        self.clock = clock
        self.sink = sink
        self.device_id = device_id
        self.new_id = new_id
        self.status_period_s = status_period_s
        self.context = context or OrderContext()
        self._pending: list[Any] = []
        self._flush_timer: Any = None
        self._status_timer: Any = None
        self._status_due_s = 0.0
        self._status_seen: Any = None
        self._status_seen_t_s = 0.0
        self.closed = False

    def attach(self) -> PumpReporter:
        """Listen to the controller and start the periodic status."""
        self.ctl.listeners.append(self.on_event)
        if self.status_period_s:
            self._status_due_s = self.clock.now() + self.status_period_s
            self._status_timer = self.clock.call_at(self._status_due_s, self._tick)
        return self

    def close(self) -> None:
        """Stop the periodic status and stop listening."""
        self.closed = True
        if self._status_timer is not None:
            self._status_timer.cancel()
        if self.on_event in self.ctl.listeners:
            self.ctl.listeners.remove(self.on_event)

    # ------------------------------------------------------------------ events
    def on_event(self, ev: Any) -> None:
        """Queue the event; messages are built once the controller's action is complete.

        Runs inside the controller's logging: it never raises into the controller.
        """
        try:
            if route(ev.event, ev.detail) is None:
                return
        except Exception as exc:  # an event detail this table does not understand
            self._report_failure(ev, exc)
            return
        self._pending.append(ev)
        if self._flush_timer is None:
            self._flush_timer = self.clock.call_later(0.0, self.flush)

    def flush(self) -> None:
        """Build and send the messages of the queued events, in order."""
        self._flush_timer = None
        pending, self._pending = self._pending, []
        for ev in pending:
            if self.closed:
                return
            try:
                r = route(ev.event, ev.detail)
                if r is None:
                    continue
                out = self.infusion_event(r.arg, ev) if r.action == "infusion" else None
                if r.action == "alert":
                    out = self.alert(r.arg, ev)
            except Exception as exc:  # one bad event must not stop the others
                self._report_failure(ev, exc)
                continue
            if out is not None:
                self.sink(out)

    def _report_failure(self, ev: Any, exc: Exception) -> None:
        print(
            f"pumpctl hl7: event {ev.event!r} not reported: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )

    def _tick(self) -> None:
        if self.closed:
            return
        self.sink(self.status())
        period = float(self.status_period_s or 0)
        # on a fixed grid from the start (no drift), skipping any slot already missed
        self._status_due_s += period * max(
            1, int((self.clock.now() - self._status_due_s) // period) + 1
        )
        self._status_timer = self.clock.call_at(self._status_due_s, self._tick)

    # ---------------------------------------------------------------- builders
    def _now_epoch(self, t_s: float) -> float:
        epoch = self.clock.wall_epoch() if self.epoch_s is None else self.epoch_s
        return float(epoch) + t_s

    def _header(self, t_s: float, msg_type: list[str], profile: list[str]) -> tuple[str, str]:
        cid = self.new_id()
        recv = self.context.receiving_app or None
        return cid, codec.msh(
            sending_app=["PUMPCTL", self.device_id],
            receiving_app=recv,
            time_s=self._now_epoch(t_s),
            msg_type=msg_type,
            control_id=cid,
            profile=profile,
        )

    def _patient(self) -> list[str]:
        if self.context.patient.startswith("PID"):
            return [self.context.patient]
        return [seg("PID", None, None, ["UNKNOWN", None, None, "PUMPCTL", "PI"])]

    def _volume_now(self, snap: dict[str, Any]) -> float | None:
        """The pump's counter now: last read-back plus the rate since (capped at VTBI)."""
        st = self.ctl.last_status
        if st is None:
            return snap.get("volume_infused_ml")
        now = self.clock.now()
        if st is not self._status_seen:
            self._status_seen, self._status_seen_t_s = st, now
        vol = float(st.volume_infused_ml)
        if st.running:
            vol += st.rate_ml_per_h * max(now - self._status_seen_t_s, 0.0) / 3600.0
            if st.vtbi_ml is not None:
                vol = min(vol, float(st.vtbi_ml))
        return vol

    def metrics(self, t_s: float) -> list[tuple[list[str], str, object, list[str] | None]]:
        """(code, type, value, unit) of every channel metric, from ``controller.snapshot()``."""
        snap = self.ctl.snapshot()
        running = snap.get("run_state") == "running"
        rate = snap.get("rate_ml_per_h")
        vtbi = snap.get("vtbi_ml")
        b = self.ctl.build
        if not rate and b is not None:  # programmed, not yet set on the pump: the program's
            rate = float(b.rate_ml_per_h)
        if vtbi is None and b is not None:
            vtbi = float(b.vtbi_ml)
        delivered = self._volume_now(snap)
        remain = None if vtbi is None or delivered is None else max(vtbi - delivered, 0.0)
        if running and rate and remain is not None:
            minutes: float | None = remain / rate * 60.0
        else:
            minutes = snap.get("min_to_bag_end")
        conc = snap.get("concentration_mg_per_ml")
        if conc is None and self.ctl.build is not None:
            conc = float(self.ctl.build.real_concentration_mg_per_ml)
        order = self.ctl.order
        bag = snap.get("bag") or {}
        out: list[tuple[list[str], str, object, list[str] | None]] = [
            (MDC_PUMP_STAT, "CWE", [None, pump_status(snap)], None),
            (PCTL_STATE, "ST", snap.get("state"), None),
            (MDC_FLOW_FLUID_PUMP, "NM", rate, UNIT_ML_PER_H),
            (MDC_FLOW_FLUID_PUMP_CURRENT, "NM", rate if running else 0.0, UNIT_ML_PER_H),
            (MDC_VOL_FLUID_TBI, "NM", vtbi, UNIT_ML),
            (MDC_VOL_FLUID_DELIV, "NM", delivered, UNIT_ML),
            (MDC_VOL_FLUID_TBI_REMAIN, "NM", remain, UNIT_ML),
            (MDC_TIME_PD_REMAIN, "NM", None if minutes is None else int(minutes), UNIT_MIN),
            (MDC_DRUG_NAME_LABEL, "ST", snap.get("drug"), None),
            (MDC_CONC_DRUG, "NM", conc, UNIT_MG_PER_ML),
            (MDC_RATE_DOSE, "NM", snap.get("achieved_mg_per_day"), UNIT_MG_PER_DAY),
            (MDC_ATTR_PT_WEIGHT, "NM", None if order is None else float(order.weight_kg), UNIT_KG),
            (PCTL_BAG_NUMBER, "NM", bag.get("n"), None),
        ]
        return [m for m in out if m[2] is not None]

    def _device_obx(self, t_s: float, first_n: int, mds_extra: list[str]) -> list[str]:
        """MDS, drug-library version, extra MDS-level rows, VMD and channel containers."""
        snap_setting = self.ctl.setting
        when = codec.hl7_time(self._now_epoch(t_s))
        n = first_n
        device = [self.device_id, None, self.device_id, "PUMPCTL"]
        rows = [
            obx(n, None, MDC_DEV_PUMP_INFUS_MDS, "1.0.0.0", status="X", device=device),
            obx(
                n + 1,
                "ST",
                MDC_PUMP_DRUG_LIBRARY_VERSION,
                "1.0.0.1",
                snap_setting.version,
                when=when,
            ),
        ]
        n += 2
        for extra in mds_extra:
            rows.append(extra.replace("OBX|#|", f"OBX|{n}|", 1))
            n += 1
        care = snap_setting.raw.get("care_area")
        if care:
            sub = f"1.0.0.{n - first_n}"
            rows.append(obx(n, "ST", MDC_PUMP_DRUG_LIBRARY_CARE_AREA, sub, care))
            n += 1
        rows.append(obx(n, None, MDC_DEV_PUMP_INFUS_VMD, "1.1.0.0", status="X"))
        rows.append(obx(n + 1, None, MDC_DEV_PUMP_INFUS_CHAN_DELIVERY, "1.1.1.0", status="X"))
        return rows

    def _metric_obx(self, t_s: float, first_n: int) -> list[str]:
        when = codec.hl7_time(self._now_epoch(t_s))
        rows = []
        for i, (code, vtype, value, unit) in enumerate(self.metrics(t_s)):
            shown = codec.fmt_num(value, 2) if isinstance(value, float) else value
            rows.append(obx(first_n + i, vtype, code, f"1.1.1.{i + 1}", shown, unit, when=when))
        return rows

    def _obr(self, n_set: int, t_s: float, code: list[str] | None, filler: str) -> str:
        drug = self.ctl.setting.drug
        placer = [self.context.placer_order, "PCD-03"] if self.context.placer_order else None
        when = codec.hl7_time(self._now_epoch(t_s))
        return seg(
            "OBR", n_set, placer, [filler, "PUMPCTL"], code or [drug, drug], None, None, when
        )

    def status(self) -> Outbound:
        """PCD-01 ``ORU^R01``: the pump's status now."""
        t_s = self.clock.now()
        cid, head = self._header(t_s, ["ORU", "R01", "ORU_R01"], DEC_PROFILE)
        segs = [head, *self._patient(), self._obr(1, t_s, None, cid)]
        dev = self._device_obx(t_s, 1, [])
        segs += dev + self._metric_obx(t_s, len(dev) + 1)
        return Outbound("PCD-01", cid, t_s, codec.message(segs))

    def infusion_event(self, name: str, ev: Any) -> Outbound:
        """PCD-10 ``ORU^R42``: one infusion event with the channel's metrics."""
        t_s = ev.t_s
        cid, head = self._header(t_s, ["ORU", "R42", "ORU_R01"], IPEC_PROFILE)
        detail = _event_text(ev)
        extra = [
            obx("#", "CWE", MDC_ATTR_EVT_COND, "1.0.0.2", INFUSION_EVENTS[name]),
            obx("#", "ST", MDC_ATTR_EVT_SOURCE, "1.0.0.3", "1.1.1.0"),
            obx("#", "ST", PCTL_EVENT_DETAIL, "1.0.0.4", detail),
        ]
        segs = [head, *self._patient(), self._obr(1, t_s, None, cid)]
        dev = self._device_obx(t_s, 1, extra)
        segs += dev + self._metric_obx(t_s, len(dev) + 1)
        return Outbound("PCD-10", cid, t_s, codec.message(segs))

    def alert(self, phase: str, ev: Any) -> Outbound:
        """PCD-04 ``ORU^R40``: one alert phase (start, continue, end) with its unique id."""
        t_s = ev.t_s
        d = ev.detail
        kind = str(d.get("kind"))
        alarm = self._find_alarm(ev)
        alarm_id = alarm.id if alarm is not None else d.get("id", 0)
        priority = d.get("priority") or (alarm.priority.value if alarm is not None else "low")
        text = d.get("text") or (alarm.spec.text if alarm is not None else kind)
        fallback = (["9299", f"PCTL_EVT_ALARM_{kind.upper()}", LOCAL], "ST")
        code, atype = ALARM_CODES.get(kind, fallback)
        state = "inactive" if phase == "end" else "active"
        inactivation = {
            "alarm_acknowledged": "alert-acknowledged",
            "alarm_silenced": "audio-paused",
        }.get(ev.event, "enabled")
        if phase == "end" and alarm is not None and alarm.acknowledged_s is not None:
            inactivation = "alert-acknowledged"
        cid, head = self._header(t_s, ["ORU", "R40", "ORU_R40"], ACM_PROFILE)
        when = codec.hl7_time(self._now_epoch(t_s))
        alert_id = f"{self.device_id}-AL{alarm_id}"
        obr = seg(
            "OBR", 1, [cid, "PUMPCTL"], [alert_id, "PUMPCTL"], MDC_EVT_ALARM, None, None, when
        )
        segs = [
            head,
            *self._patient(),
            obr,
            obx(
                1,
                "CWE",
                MDC_EVT_ALARM,
                "1.1.1.0.1",
                [*code, *[None] * 5, text],
                status="F",
                flags=(PRIORITY_FLAG.get(str(priority), "PL"), atype),
                when=when,
                device=[self.device_id, None, self.device_id, "PUMPCTL"],
            ),
            obx(
                2,
                "CWE",
                MDC_ATTR_ALERT_SOURCE,
                "1.1.1.0.2",
                MDC_DEV_PUMP_INFUS_VMD,
                status="F",
                when=when,
            ),
            obx(3, "ST", MDC_ATTR_EVENT_PHASE, "1.1.1.0.3", phase, status="F"),
            obx(4, "ST", MDC_ATTR_ALARM_STATE, "1.1.1.0.4", state, status="F"),
            obx(5, "ST", MDC_ATTR_ALARM_INACTIVATION_STATE, "1.1.1.0.5", inactivation, status="F"),
        ]
        return Outbound("PCD-04", cid, t_s, codec.message(segs))

    def _find_alarm(self, ev: Any) -> Any:
        alarms = self.ctl.alarms
        if "id" in ev.detail:
            return alarms.get(int(ev.detail["id"]))
        kind = ev.detail.get("kind")
        for a in reversed(alarms.all):
            if a.kind == kind and abs(a.raised_s - ev.t_s) < 1e-6:
                return a
        return None


def pump_status(snap: dict[str, Any]) -> str:
    """MDC_PUMP_STAT value for a snapshot."""
    state, run = snap.get("state"), snap.get("run_state")
    if state == "alarm":
        return "pump-status-alarm"
    if run == "running":
        return "pump-status-infusing"
    if run == "kvo":
        return "pump-status-kvo"
    if state == "priming":
        return "pump-status-priming"
    if snap.get("bag") is None:
        return "pump-status-standby"
    return "pump-status-paused"


def _event_text(ev: Any) -> str:
    d = ev.detail
    if ev.event == "state":
        extra = d.get("cause") or d.get("reason") or ""
        return f"{d.get('trigger')}: {d.get('from')} -> {d.get('to')}" + (
            f" ({extra})" if extra else ""
        )
    if ev.event == "bag_hung":
        return f"bag {d.get('bag')} hung at {d.get('rate_ml_per_h')} mL/h"
    return ev.event
