"""pumpctl: continuous IV anakinra smart-pump simulator and controller (QA and bench rigs only)."""

__version__ = "0.1.0"
