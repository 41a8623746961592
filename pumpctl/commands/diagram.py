"""``pumpctl diagram``: the pump state machine as a mermaid diagram."""

from __future__ import annotations

import argparse

from pumpctl.machine import mermaid


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``diagram`` sub-command."""
    p = sub.add_parser("diagram", help="print the pump state machine as mermaid")
    p.set_defaults(func=lambda _args: print(mermaid()) or 0)
