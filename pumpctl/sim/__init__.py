"""Simulation: pump physics, faults, staff behaviour, scenarios, campaigns, NE-1000 emulator."""
