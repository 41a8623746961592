"""``pumpctl diagram``: the pump state machine as a mermaid diagram."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``diagram`` sub-command."""
    p = sub.add_parser(
        "diagram",
        help="print the pump state machine as mermaid",
        description="Print the pump state machine (states, triggers, guards) as a mermaid "
        "stateDiagram; paste it into any mermaid viewer.",
    )
    p.set_defaults(func=run)


def run(_args: argparse.Namespace) -> int:
    """Print the diagram."""
    from pumpctl.machine import mermaid

    print(mermaid())
    return 0
