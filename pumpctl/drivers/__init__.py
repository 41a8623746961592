"""Pump drivers: one protocol (``base.PumpDriver``), a simulated pump and the NE-1000."""
