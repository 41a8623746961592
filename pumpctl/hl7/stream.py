"""The outbound HL7 stream of a simulated run, on the simulation clock (for replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pumpctl.hl7.outbound import OrderContext, Outbound, PumpReporter


class StreamRecorder:
    """An observer for ``run_scenario``: records every outbound message of the run."""

    def __init__(
        self,
        *,
        device_id: str = "SIM-PUMP",
        status_period_s: float | None = 300.0,
        patient_id: str = "SIM-PATIENT",
        epoch_s: float | None = None,
    ) -> None:
        self.epoch_s = epoch_s
        self.device_id = device_id
        self.status_period_s = status_period_s
        self.patient_id = patient_id
        self.messages: list[Outbound] = []
        self.reporter: PumpReporter | None = None
        self._n = 0

    def _new_id(self) -> str:
        self._n += 1
        return f"SIM{self._n:07d}"

    def __call__(self, controller: Any, clock: Any) -> None:
        """Attach to the controller (called by ``run_scenario`` before programming)."""
        pid = f"PID|||{self.patient_id}^^^PUMPCTL^PI||Simulated^Patient^^^^^L"
        self.reporter = PumpReporter(
            controller,
            clock,
            self.messages.append,
            device_id=self.device_id,
            new_id=self._new_id,
            status_period_s=self.status_period_s,
            context=OrderContext(patient=pid),
            epoch_s=self.epoch_s,
        ).attach()

    def finish(self) -> None:
        """Send what is still queued (events of the last instant) and stop."""
        if self.reporter is not None:
            self.reporter.flush()
            self.reporter.close()

    def write(self, path: str | Path) -> int:
        """Write the stream: one segment a line, a blank line between messages."""
        self.finish()
        text = "\n\n".join("\n".join(m.er7.split("\r")) for m in self.messages)
        Path(path).write_text(text + ("\n" if text else ""), encoding="utf-8")
        return len(self.messages)
