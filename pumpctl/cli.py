"""The ``pumpctl`` command. Each sub-command lives in a module with ``register(sub)``.

User errors end in one line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pumpctl import __version__
from pumpctl.errors import PumpctlError

#: Modules that add sub-commands; each defines ``register(subparsers) -> None``.
COMMAND_MODULES = (
    "pumpctl.commands.build",
    "pumpctl.commands.setting",
    "pumpctl.commands.trumpet",
    "pumpctl.commands.run",
    "pumpctl.commands.log",
    "pumpctl.commands.diagram",
    "pumpctl.commands.campaign",
    "pumpctl.commands.pump",
    "pumpctl.commands.console",
    "pumpctl.commands.simulate",
    "pumpctl.commands.report",
    "pumpctl.commands.keys",
    "pumpctl.commands.operator",
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (no usage dump) on a bad argument."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"pumpctl {self.prog.split(' ', 1)[-1]}: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered sub-command."""
    parser = _Parser(prog="pumpctl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pumpctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, turn known errors into one line and an exit code."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad option (one line, exit 2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    try:
        return int(args.func(args) or 0)
    except PumpctlError as exc:
        print(f"pumpctl {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pumpctl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
