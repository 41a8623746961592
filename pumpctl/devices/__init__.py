"""Simulated devices: pump physics and the NE-1000 emulator (below the drivers)."""
