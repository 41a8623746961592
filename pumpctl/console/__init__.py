"""Nurse console (Textual): a smart pump's channel screen on top of the controller.

``ConsoleApp`` and friends live in ``pumpctl.console.app``; they are imported lazily so
``python -m pumpctl.console.app`` runs without importing the module twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AutoNurse", "ConsoleApp", "ConsoleSession"]


def __getattr__(name: str) -> Any:
    """Import the app module on first use of one of its names."""
    if name in __all__:
        from pumpctl.console import app

        return getattr(app, name)
    raise AttributeError(f"module 'pumpctl.console' has no attribute {name!r}")
