"""Every kind of event in a pumpctl log, and every cause a gap can have (no dependencies)."""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    """Every kind of event in a pumpctl log."""

    SETTING_INSTALL = "setting_install"
    PROGRAM = "program"
    TITRATION = "titration"
    OVERRIDE = "override"
    DEVIATION_CONFIRMED = "deviation_confirmed"
    PHARMACY_REQUEST = "pharmacy_request"
    BAG_COMPOUNDED = "bag_compounded"
    BAG_AT_BEDSIDE = "bag_at_bedside"
    BAG_HUNG = "bag_hung"
    BAG_DISCARDED = "bag_discarded"
    BAG_RELEASED = "bag_released"
    RELAY_ARMED = "relay_armed"  # the next reservoir is loaded on the idle pump of a relay
    STATE = "state"
    RATE_CHANGE = "rate_change"
    REFUSED = "refused"
    PUMP_COMMAND = "pump_command"
    PUMP_REFUSED = "pump_refused"
    ALARM = "alarm"
    ALARM_ACKNOWLEDGED = "alarm_acknowledged"
    ALARM_SILENCED = "alarm_silenced"
    ALARM_REANNUNCIATED = "alarm_reannunciated"
    ALARM_CLEARED = "alarm_cleared"
    WATCHDOG = "watchdog"
    PROJECTION = "projection"
    GAP_START = "gap_start"
    GAP_END = "gap_end"
    COMM_RESTORED = "comm_restored"
    RESUME = "resume"
    DELIVERY_SEGMENT = "delivery_segment"  # what reached the patient (simulated pump)
    FLOW_TRACE = "flow_trace"  # IEC 60601-2-24 samples of the first two hours (simulated)
    RUN_END = "run_end"
    # trust and storage (pumpctl.library, pumpctl.roster, pumpctl.lease, pumpctl.eventlog)
    SETTING_ACCEPT = "setting_accept"
    KEY_TRUST = "key_trust"
    OPERATOR_ADD = "operator_add"
    OPERATOR_REMOVE = "operator_remove"
    LEASE_TAKEOVER = "lease_takeover"
    STORAGE_RESTORED = "storage_restored"


class GapCause(enum.StrEnum):
    """Why the drug did not reach the patient at the ordered rate."""

    BAG_EMPTY = "bag_empty"
    BAG_CHANGE = "bag_change"
    OCCLUSION = "occlusion"
    AIR_IN_LINE = "air_in_line"
    POWER_LOSS = "power_loss"
    BATTERY_DEPLETED = "battery_depleted"
    PUMP_FAILURE = "pump_failure"
    PUMP_RESET = "pump_reset"
    PUMP_STOPPED = "pump_stopped"
    RELAY_HANDOVER = "relay_handover"  # a real relay found its running pump stopped late
    STOPPED = "stopped"
    NEVER_STARTED = "never_started"
